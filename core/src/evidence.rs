//! Which windows a round looks at: complete ones, and for impressions, complete ones.
//!
//! A window's allocation events arrive within seconds of its end (the edge's batching, a
//! retry), so it counts as complete [`Policy::lateness_ms`] after its end. Impressions
//! come later: the app reports the ad once it has shown it, seconds to a minute after
//! the decision, and the report is dated to its allocation. Read at the allocations'
//! lateness, the newest window still lacks its late impressions, and every share
//! measured on impressions is a few percent low. The status would publish intervals that
//! miss the truth, and feedback would learn the shortfall as a bias to correct. So a
//! placement that measures anything on impressions is looked at up to
//! [`Policy::impression_lateness_ms`] after its windows end: one window further back
//! when that is later than the allocations' lateness.
//!
//! This is the one place that decides it: the origin's rounds, preview, history and
//! status, and the simulator, all read [`Policy::windows_to_read`] and keep what
//! [`Policy::evidence`] selects.

use crate::controller::patterns_of;
use crate::solver::Patterns;
use crate::stats::MAX_STRAGGLERS;
use crate::{CampaignId, DeliveryBasis, Policy, Targets, WindowStats};

/// The windows a round looks at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// The index of the newest of them; `None` before the first window ended.
    pub last_index: Option<u64>,
    /// `recent_windows` windows, newest first (missing ones empty).
    pub windows: Vec<WindowStats>,
    /// Those windows merged.
    pub recent: WindowStats,
}

/// How many standard errors apart a pattern's frequency must be, between a window and
/// the newer windows merged, for the traffic mix to count as shifted between them. A
/// round tests every pattern of every window it reads, so the bar is high: a false
/// shift costs precision (the mix is then known from fewer windows), a missed small one
/// costs little, and a real shift (a platform's share doubling) is dozens of errors.
pub const MIX_SHIFT_SIGMAS: f64 = 5.0;

impl Evidence {
    /// The newest window, if anything was counted in it.
    pub fn last(&self) -> Option<&WindowStats> {
        self.windows.first().filter(|w| w.requests.n > 0 || !w.campaigns.is_empty())
    }

    /// The share of the newest window's impressions of `campaign` still to come: of its
    /// impressions in the windows before, those counted after their window was read for
    /// impressions
    /// ([`CampaignCounts::late_impressions`](crate::stats::CampaignCounts::late_impressions)),
    /// less the newest's own already in, within `[0, MAX_STRAGGLERS]`. An app reports
    /// an impression once it has shown the ad, and a slow network or a backgrounded app
    /// reports it later than the impression lateness; a share measured on impressions
    /// would otherwise read low, and its census interval claim an exactness the count
    /// lacks. Unlike requests, impressions come late a few at a time from every app, so
    /// an average over the windows before is their measure. No prior: the published
    /// share itself is scaled up by what is still to come, so a pseudo-count would lift
    /// a small campaign's share, not widen it. Without windows before the newest (a
    /// placement's first), nothing is known and nothing is allowed for.
    pub fn impressions_to_come(&self, campaign: &CampaignId) -> f64 {
        let counts = |w: &WindowStats| {
            let c = w.campaigns.get(campaign).copied().unwrap_or_default();
            (c.late_impressions.ht, c.impressions.ht)
        };
        let share = |(late, all): (f64, f64)| if all > 0.0 { late / all } else { 0.0 };
        let older = self.windows.iter().skip(1).map(counts).fold((0.0, 0.0), |(l, a), (wl, wa)| (l + wl, a + wa));
        let arrived = self.windows.first().map_or(0.0, |w| share(counts(w)));
        (share(older) - arrived).clamp(0.0, MAX_STRAGGLERS)
    }

    /// The newest window as the status and history publish it: its counts, allowing
    /// for the share `stragglers` of its requests still to come
    /// ([`Stragglers::allowance`](crate::stragglers::Stragglers::allowance): the newest cannot tell by
    /// itself, its own are still on their way; `WindowStats::with_stragglers`). Its
    /// [`impressions_to_come`](Self::impressions_to_come) are allowed for in the
    /// intervals (`estimate::published`), not in the counts.
    pub fn last_reading(&self, stragglers: f64) -> WindowStats {
        self.windows.first().map(|w| w.with_stragglers(stragglers)).unwrap_or_default()
    }

    /// The newest windows whose traffic mix agrees, merged: what the controller models
    /// the next window's traffic on. Going back from the newest, a window joins while
    /// the frequency of every eligibility pattern of `targets` in it is within
    /// [`MIX_SHIFT_SIGMAS`] of the windows already merged; the first that is not (the
    /// mix shifted there for good, or a burst began or ended) ends the merge. Merging
    /// across a lasting shift would plan the windows after it on a mix that is mostly
    /// the old one for as many rounds as windows are merged, and feedback would take the
    /// gap for a bias.
    pub fn mix(&self, targets: &Targets) -> WindowStats {
        let mut merged = WindowStats::default();
        for w in &self.windows {
            if merged.requests.n > 0 && w.requests.n > 0 && mix_shifted(targets, &merged, w) {
                break;
            }
            merged.merge(w);
        }
        merged
    }
}

/// Whether some eligibility pattern's frequency differs between `a` and `b` by more
/// than [`MIX_SHIFT_SIGMAS`] standard errors (two-proportion test on their effective
/// sample sizes, which account for the sample rate changing within a window).
fn mix_shifted(targets: &Targets, a: &WindowStats, b: &WindowStats) -> bool {
    let (na, nb) = (a.effective_samples(), b.effective_samples());
    if na < 1.0 || nb < 1.0 {
        return false;
    }
    let (pa, pb) = (patterns_of(targets, a), patterns_of(targets, b));
    // `Patterns` keeps its masks sorted: a search, not a scan, per mask.
    let freq = |p: &Patterns, mask: u64| p.masks.binary_search(&mask).map_or(0.0, |i| p.freqs[i]);
    pa.masks.iter().chain(&pb.masks).any(|&mask| {
        let (fa, fb) = (freq(&pa, mask), freq(&pb, mask));
        let pooled = (fa * na + fb * nb) / (na + nb);
        let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
        se > 0.0 && (fa - fb).abs() > MIX_SHIFT_SIGMAS * se
    })
}

impl Policy {
    /// The windows complete for impressions at `now_ms` lag the complete ones by this
    /// many: 0 or 1 (the impression lateness is at most a period past the lateness).
    fn impression_lag(&self, now_ms: u64) -> u64 {
        let later = self.last_complete(now_ms, self.impression_lateness_ms.max(self.lateness_ms));
        match (self.last_window(now_ms), later) {
            (Some(a), Some(i)) => (a - i).min(1),
            (Some(_), None) => 1,
            _ => 0,
        }
    }

    /// The newest window a round at `now_ms` reads for impressions, if any.
    fn last_impression_window(&self, now_ms: u64) -> Option<u64> {
        self.last_window(now_ms)?.checked_sub(self.impression_lag(now_ms))
    }

    /// Whether impressions of window `index` counted at `now_ms` came too late for the
    /// round that reads it for impressions: the aggregator marks them
    /// ([`WindowStats::mark_impressions_late`]), so the windows after tell how many
    /// impressions a window still lacks when it is read
    /// ([`Evidence::impressions_to_come`]).
    pub fn is_late_for_impressions(&self, index: u64, now_ms: u64) -> bool {
        self.last_impression_window(now_ms).is_some_and(|last| index <= last)
    }

    /// The indices to read at `now_ms` for `recent_windows` windows, newest first: from
    /// the last complete window back, with one more for a placement whose impressions
    /// still arrive. Empty before the first window ended.
    pub fn windows_to_read(&self, now_ms: u64, recent_windows: u64) -> Vec<u64> {
        let Some(last) = self.last_window(now_ms) else { return Vec::new() };
        let n = recent_windows + self.impression_lag(now_ms);
        (0..n).filter_map(|i| last.checked_sub(i)).collect()
    }

    /// From the windows read as [`windows_to_read`](Self::windows_to_read) said (same
    /// order), what the round looks at: the newest `recent_windows` of them, or, when any
    /// campaign is measured on impressions, the newest complete for impressions.
    pub fn evidence(&self, now_ms: u64, recent_windows: u64, read: Vec<WindowStats>) -> Evidence {
        let Some(last) = self.last_window(now_ms) else { return Evidence::default() };
        let mut all = WindowStats::default();
        read.iter().for_each(|w| all.merge(w));
        let on_impressions = all.campaigns.keys().any(|c| DeliveryBasis::of(&all, c) == DeliveryBasis::Impressions);
        let skip = if on_impressions { self.impression_lag(now_ms) } else { 0 };
        let Some(last_index) = last.checked_sub(skip) else { return Evidence::default() };
        let windows: Vec<WindowStats> =
            read.into_iter().skip(skip as usize).take(recent_windows.max(1) as usize).collect();
        let mut recent = WindowStats::default();
        windows.iter().for_each(|w| recent.merge(w));
        Evidence { last_index: Some(last_index), windows, recent }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;
    use crate::event::tests::allocation;

    const MIN: u64 = 60_000;

    fn policy() -> Policy {
        Policy { period_ms: MIN, lateness_ms: 10_000, impression_lateness_ms: 60_000, ..Policy::default() }
    }

    /// Window `i`: 100 requests, A allocated in 40; `shown` of them reported.
    fn window(i: u64, shown: usize) -> WindowStats {
        let mut s = WindowStats::default();
        for r in 0..100 {
            let ad = (r < 40).then_some("A");
            s.fold(&allocation(&format!("w{i}-{r}"), ad, &["A"], 1.0));
            if r < shown {
                let mut e = allocation(&format!("w{i}-{r}"), Some("A"), &[], 1.0);
                e.kind = EventKind::Impression;
                s.fold(&e);
            }
        }
        s
    }

    #[test]
    fn allocations_read_the_last_complete_window() {
        let p = policy();
        // 10 s into window 5 (window 4 just complete).
        let now = 5 * MIN + 10_000;
        assert_eq!(p.windows_to_read(now, 3), [4, 3, 2, 1]);
        let read = vec![window(4, 0), window(3, 0), window(2, 0), window(1, 0)];
        let e = p.evidence(now, 3, read.clone());
        assert_eq!(e.last_index, Some(4));
        assert_eq!(e.windows, read[..3]);
        assert_eq!(e.recent.requests.n, 300);
        assert_eq!(e.last(), Some(&read[0]));
    }

    #[test]
    fn impressions_read_the_last_window_complete_for_them() {
        let p = policy();
        let now = 5 * MIN + 10_000;
        // Window 4 has only part of its impressions yet; 3 and back have them all.
        let read = vec![window(4, 30), window(3, 36), window(2, 36), window(1, 36)];
        let e = p.evidence(now, 3, read.clone());
        assert_eq!(e.last_index, Some(3));
        assert_eq!(e.windows, read[1..]);
        let a = CampaignId::parse("A").unwrap();
        assert_eq!(e.recent.campaigns[&a].impressions.n, 3 * 36);
        // A minute after window 4 ended, its impressions are complete: no lag.
        let later = 6 * MIN;
        assert_eq!(p.windows_to_read(later, 3), [4, 3, 2]);
        assert_eq!(p.evidence(later, 3, read[..3].to_vec()).last_index, Some(4));
    }

    #[test]
    fn impressions_are_late_once_their_window_was_read_for_them() {
        let p = policy();
        // 10 s into window 5: window 4 is read for allocations, 3 for impressions.
        let now = 5 * MIN + 10_000;
        assert!(p.is_late(4, now) && !p.is_late_for_impressions(4, now));
        assert!(p.is_late_for_impressions(3, now) && p.is_late_for_impressions(0, now));
        // A minute after window 4 ended, it is read for impressions too.
        assert!(!p.is_late_for_impressions(4, 6 * MIN - 1) && p.is_late_for_impressions(4, 6 * MIN));
        assert!(!p.is_late_for_impressions(5, 6 * MIN));
        assert!(!p.is_late_for_impressions(0, MIN + 10_000), "nothing is read for impressions yet");
        assert!(!Policy::default().is_late_for_impressions(0, u64::MAX), "no period, no rounds by window");
    }

    /// `window(i, shown)` with `late` of its impressions counted after it was read.
    fn with_late_impressions(i: u64, shown: usize, late: usize) -> WindowStats {
        let mut s = window(i, shown - late);
        let mut l = WindowStats::default();
        for r in 0..late {
            let mut e = allocation(&format!("late{i}-{r}"), Some("A"), &[], 1.0);
            e.kind = EventKind::Impression;
            l.fold(&e);
        }
        l.mark_impressions_late();
        s.merge(&l);
        s
    }

    #[test]
    fn impressions_to_come_are_learnt_from_the_windows_before_the_newest() {
        let a = CampaignId::parse("A").unwrap();
        // Of the 80 impressions of windows 3 and 2, 4 came late; 4 has none of its own yet.
        let e = evidence_of(vec![window(4, 38), with_late_impressions(3, 40, 3), with_late_impressions(2, 40, 1)]);
        assert!((e.impressions_to_come(&a) - 4.0 / 80.0).abs() < 1e-12);
        // The counts are kept as they are; the published share allows for the rest, up
        // to A's allocations.
        let reading = e.last_reading(0.0);
        assert_eq!(reading.campaigns[&a].impressions.n, 38);
        let (basis, share) = crate::estimate::published(&reading, &a, e.impressions_to_come(&a), 1.96);
        assert_eq!(basis, crate::DeliveryBasis::Impressions);
        assert!((share.share - 0.40).abs() < 1e-9 && share.low < 0.39 && share.high <= 0.40, "{share:?}");
        // Read later, the newest has some of its late impressions: only the rest.
        let later = evidence_of(vec![with_late_impressions(4, 40, 1), with_late_impressions(3, 40, 3), window(2, 40)]);
        assert!((later.impressions_to_come(&a) - (3.0 / 80.0 - 1.0 / 40.0)).abs() < 1e-12);
        // On time, or a flood sent late on purpose: nothing, or at most the cap.
        assert_eq!(evidence_of(vec![window(4, 40), window(3, 40)]).impressions_to_come(&a), 0.0);
        let flood = evidence_of(vec![window(4, 40), with_late_impressions(3, 40, 40)]);
        assert_eq!(flood.impressions_to_come(&a), MAX_STRAGGLERS);
        // Another campaign's impressions came on time: its share is not touched.
        assert_eq!(flood.impressions_to_come(&CampaignId::parse("B").unwrap()), 0.0);
    }

    #[test]
    fn the_impression_lag_is_at_most_one_window_and_never_before_the_first() {
        // An impression lateness of an hour still waits one window only.
        let p = Policy { impression_lateness_ms: 3_600_000, ..policy() };
        assert_eq!(p.windows_to_read(5 * MIN + 10_000, 2), [4, 3, 2]);
        // Shorter than the lateness: the lateness.
        let p = Policy { impression_lateness_ms: 0, ..policy() };
        assert_eq!(p.windows_to_read(5 * MIN + 10_000, 2), [4, 3]);
        // Window 0 just complete, nothing complete for impressions yet.
        let p = policy();
        let now = MIN + 10_000;
        assert_eq!(p.windows_to_read(now, 2), [0]);
        assert_eq!(p.evidence(now, 2, vec![window(0, 36)]), Evidence::default());
        assert_eq!(p.evidence(now, 2, vec![window(0, 0)]).last_index, Some(0));
        assert!(p.windows_to_read(5_000, 2).is_empty());
        assert_eq!(p.evidence(5_000, 2, vec![]), Evidence::default());
    }

    /// 1000 requests at rate 0.5, `ios` of them from iOS, the rest from web.
    fn mixed(tag: &str, ios: usize) -> WindowStats {
        let mut s = WindowStats::default();
        for r in 0..1000 {
            let mut e = allocation(&format!("{tag}-{r}"), None, &[], 0.5);
            e.platform = Some(if r < ios { "ios" } else { "web" }.into());
            s.fold(&e);
        }
        s
    }

    fn evidence_of(windows: Vec<WindowStats>) -> Evidence {
        let mut recent = WindowStats::default();
        windows.iter().for_each(|w| recent.merge(w));
        Evidence { last_index: Some(9), windows, recent }
    }

    #[test]
    fn the_mix_is_taken_from_the_windows_since_it_last_shifted() {
        let targets = crate::Targets::parse(
            serde_json::from_value(serde_json::json!({"campaigns": [
                {"id": "A", "rate": 0.1, "eligibility": {"platforms": ["ios"]}},
                {"id": "B", "rate": 0.2},
            ]}))
            .unwrap(),
        )
        .unwrap();
        // Noise: 30 % iOS give or take a few requests. Everything is merged.
        let steady = evidence_of(vec![mixed("a", 310), mixed("b", 290), mixed("c", 300), mixed("d", 305)]);
        assert_eq!(steady.mix(&targets), steady.recent);
        // iOS doubled two windows ago: only those two describe the traffic to come.
        let shifted = evidence_of(vec![mixed("a", 600), mixed("b", 590), mixed("c", 300), mixed("d", 305)]);
        let mix = shifted.mix(&targets);
        assert_eq!(mix.requests.n, 2000);
        assert_eq!(mix.profiles["ios:DE"], 2.0 * 1190.0);
        // A pattern nobody matched before (a rule now names web) is a shift as well.
        let web = crate::Targets::parse(
            serde_json::from_value(serde_json::json!({"campaigns": [
                {"id": "A", "rate": 0.1, "eligibility": {"platforms": ["web"]}},
            ]}))
            .unwrap(),
        )
        .unwrap();
        let only_ios = evidence_of(vec![mixed("a", 500), mixed("b", 1000)]);
        assert_eq!(only_ios.mix(&web).requests.n, 1000);
        // Nothing counted yet, or an empty window in between: nothing to compare.
        assert_eq!(Evidence::default().mix(&targets), WindowStats::default());
        let gap = evidence_of(vec![mixed("a", 300), WindowStats::default(), mixed("c", 300)]);
        assert_eq!(gap.mix(&targets).requests.n, 2000);
    }
}
