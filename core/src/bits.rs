//! The set bits of an eligibility mask: the one way the pick, the spread and the solver
//! walk a pattern's campaigns.

/// The indices of a mask's set bits, lowest first (plan order, on which ties and the
/// rounding of sums depend). A pattern usually holds a few of a plan's campaigns, so
/// walking its bits beats walking the plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ones(pub(crate) u64);

impl Iterator for Ones {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::Ones;

    #[test]
    fn walks_the_set_bits_lowest_first() {
        assert_eq!(Ones(0).count(), 0);
        assert_eq!(Ones(0b1010_0101).collect::<Vec<_>>(), [0, 2, 5, 7]);
        assert_eq!(Ones(1 << 63 | 1).collect::<Vec<_>>(), [0, 63]);
        assert_eq!(Ones(u64::MAX).count(), 64);
    }
}
