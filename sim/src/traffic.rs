//! Traffic: how many requests arrive each second, and what they look like.
//!
//! Requests arrive as a Poisson process whose rate follows the scenario: a level, a
//! day's sinusoid, and noise that changes every few minutes (so the control loop sees
//! traffic it cannot predict from the last window). Each request has a *profile* — the
//! attributes the edge sees (platform, country) and whether its app reports impressions
//! — drawn from a mix that may rotate over the day (countries asleep at night) or jump
//! (a burst on one platform, a lasting shift).

use rand::Rng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Poisson};

/// What the edge learns about a request, and whether its app reports what it showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub platform: &'static str,
    pub country: &'static str,
    pub reports_impressions: bool,
}

/// The arrival rate of one placement, requests per second.
#[derive(Debug, Clone, Copy)]
pub struct Arrivals {
    /// Mean requests per second.
    pub mean: f64,
    /// Relative amplitude of the daily sinusoid (0: flat). Its minimum is at `t = 0`.
    pub daily: f64,
    /// Standard deviation of the log of a multiplicative noise redrawn every
    /// `noise_every_s` seconds (0: none).
    pub noise: f64,
    pub noise_every_s: u64,
}

impl Arrivals {
    pub fn flat(mean: f64) -> Self {
        Self { mean, daily: 0.0, noise: 0.0, noise_every_s: 300 }
    }

    /// The rate at `t` without noise.
    pub fn level(&self, t: u64) -> f64 {
        let phase = std::f64::consts::TAU * (t % 86_400) as f64 / 86_400.0;
        self.mean * (1.0 - self.daily * phase.cos())
    }
}

/// Something that changes the traffic mix over time.
#[derive(Debug, Clone)]
pub enum MixEffect {
    /// These countries' weight follows the day: full at noon, `night` × at midnight.
    Daylight { countries: Vec<&'static str>, night: f64 },
    /// Requests of `platform` arrive `factor` × as often during `[from_s, until_s)`
    /// (they add to the traffic: a burst). `until_s = u64::MAX`: a lasting shift.
    Platform { platform: &'static str, factor: f64, from_s: u64, until_s: u64 },
}

/// The traffic of one placement: per profile, requests per second over time.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub arrivals: Arrivals,
    /// Base weight of each profile of the scenario's catalogue (any scale).
    pub weights: Vec<f64>,
    pub effects: Vec<MixEffect>,
    /// The noise multipliers, one per `noise_every_s` block (drawn per run).
    noise: Vec<f64>,
}

impl Traffic {
    pub fn new(arrivals: Arrivals, weights: Vec<f64>, effects: Vec<MixEffect>) -> Self {
        Self { arrivals, weights, effects, noise: Vec::new() }
    }

    /// Draws this run's noise for `duration_s` seconds.
    pub fn draw_noise(&mut self, rng: &mut SmallRng, duration_s: u64) {
        let every = self.arrivals.noise_every_s.max(1);
        let sd = self.arrivals.noise;
        self.noise = (0..=duration_s / every)
            .map(|_| if sd > 0.0 { (sd * standard_normal(rng) - sd * sd / 2.0).exp() } else { 1.0 })
            .collect();
    }

    /// Expected requests per second of each profile at `t`, written into `out`.
    pub fn rates(&self, profiles: &[Profile], t: u64, out: &mut Vec<f64>) {
        out.clear();
        let every = self.arrivals.noise_every_s.max(1);
        let noise = self.noise.get((t / every) as usize).copied().unwrap_or(1.0);
        let day = 0.5 - 0.5 * (std::f64::consts::TAU * (t % 86_400) as f64 / 86_400.0).cos();
        out.extend(profiles.iter().zip(&self.weights).map(|(p, w)| {
            let mut w = *w;
            for e in &self.effects {
                if let MixEffect::Daylight { countries, night } = e
                    && countries.contains(&p.country)
                {
                    w *= night + (1.0 - night) * day;
                }
            }
            w
        }));
        let total: f64 = out.iter().sum();
        let level = self.arrivals.level(t) * noise;
        for (r, p) in out.iter_mut().zip(profiles) {
            *r = if total > 0.0 { *r / total * level } else { 0.0 };
            for e in &self.effects {
                if let MixEffect::Platform { platform, factor, from_s, until_s } = e
                    && *platform == p.platform
                    && (*from_s..*until_s).contains(&t)
                {
                    *r *= factor;
                }
            }
        }
    }
}

/// A Poisson count with mean `mean` (0 for a non-positive or non-finite mean).
pub fn poisson(rng: &mut SmallRng, mean: f64) -> u64 {
    if !(mean.is_finite() && mean > 0.0) {
        return 0;
    }
    Poisson::new(mean).map_or(0, |d| d.sample(rng) as u64)
}

pub fn standard_normal(rng: &mut SmallRng) -> f64 {
    rand_distr::StandardNormal.sample(rng)
}

/// A log-normal draw with the given median and 99th percentile.
pub fn log_normal(rng: &mut SmallRng, median: f64, p99: f64) -> f64 {
    let sigma = if p99 > median && median > 0.0 { (p99 / median).ln() / 2.326_348 } else { 0.0 };
    median * (sigma * standard_normal(rng)).exp()
}

/// A uniform draw in `[0, 1)`.
pub fn uniform(rng: &mut SmallRng) -> f64 {
    rng.random::<f64>()
}

/// `n` values following Zipf's law with exponent `s`, the largest `top`: `top / k^s`.
pub fn zipf(n: usize, s: f64, top: f64) -> Vec<f64> {
    (1..=n).map(|k| top / (k as f64).powf(s)).collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn profiles() -> Vec<Profile> {
        ["DE", "US"]
            .into_iter()
            .flat_map(|country| {
                ["ios", "web"].into_iter().map(move |platform| Profile { platform, country, reports_impressions: true })
            })
            .collect()
    }

    #[test]
    fn daily_level_and_daylight_mix() {
        let a = Arrivals { mean: 11_000.0, daily: 9.0 / 11.0, noise: 0.0, noise_every_s: 300 };
        assert!((a.level(0) - 2_000.0).abs() < 1e-6);
        assert!((a.level(43_200) - 20_000.0).abs() < 1e-6);
        let t = Traffic::new(a, vec![1.0; 4], vec![MixEffect::Daylight { countries: vec!["DE"], night: 0.2 }]);
        let mut r = Vec::new();
        t.rates(&profiles(), 43_200, &mut r);
        assert!((r.iter().sum::<f64>() - 20_000.0).abs() < 1e-6);
        assert!((r[0] - 5_000.0).abs() < 1e-6, "{r:?}");
        t.rates(&profiles(), 0, &mut r);
        // At midnight DE weighs 0.2 against US's 1.
        assert!((r[0] / r[2] - 0.2).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn bursts_add_traffic_and_noise_keeps_the_mean() {
        let burst = MixEffect::Platform { platform: "ios", factor: 3.0, from_s: 10, until_s: 20 };
        let t = Traffic::new(Arrivals::flat(400.0), vec![1.0; 4], vec![burst]);
        let mut r = Vec::new();
        t.rates(&profiles(), 15, &mut r);
        assert_eq!(r, vec![300.0, 100.0, 300.0, 100.0]);
        t.rates(&profiles(), 20, &mut r);
        assert_eq!(r, vec![100.0; 4]);

        let mut rng = SmallRng::seed_from_u64(1);
        let mut noisy = Traffic::new(Arrivals { noise: 0.2, ..Arrivals::flat(1.0) }, vec![1.0], vec![]);
        noisy.draw_noise(&mut rng, 3_000_000);
        let mean = noisy.noise.iter().sum::<f64>() / noisy.noise.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
    }

    #[test]
    fn draws() {
        let mut rng = SmallRng::seed_from_u64(2);
        let n = 20_000;
        let mean = (0..n).map(|_| poisson(&mut rng, 3.5)).sum::<u64>() as f64 / n as f64;
        assert!((mean - 3.5).abs() < 0.05, "{mean}");
        assert_eq!(poisson(&mut rng, 0.0), 0);
        assert_eq!(poisson(&mut rng, f64::NAN), 0);
        let mut d: Vec<f64> = (0..n).map(|_| log_normal(&mut rng, 10.0, 90.0)).collect();
        d.sort_by(f64::total_cmp);
        assert!((d[n / 2] - 10.0).abs() < 0.5, "{}", d[n / 2]);
        assert!((d[n * 99 / 100] / 90.0 - 1.0).abs() < 0.15, "{}", d[n * 99 / 100]);
        assert_eq!(zipf(3, 1.0, 60.0), vec![60.0, 30.0, 20.0]);
    }
}
