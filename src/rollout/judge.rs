//! The canary judge: whether a candidate cohort does worse than the stable cohort over the same
//! window of a route's traffic, on failure rate and on ack latency, with tests that hold for the
//! sample sizes a canary step sees, and "inconclusive" until the traffic says enough.
//!
//! Pure: the rollout's task counts each cohort's deliveries, failures and ack latencies over a
//! step and asks [`judge`] at each look; what it does with the verdict (hold, promote, roll
//! back) is its own.
//!
//! - **Failure rate** (nacks, dead letters and missed ack deadlines per delivery): a one-sided
//!   test of `candidate - stable > tolerance` on the Agresti-Caffo adjusted proportions (one
//!   success and one failure added to each cohort), whose Wald statistic stays sound for the
//!   small counts and zero failures a first step sees. The candidate *fails* when that is
//!   significant at `alpha`, and *passes* the metric only once the one-sided upper bound of the
//!   difference at `pass_confidence` is below the tolerance (non-inferiority shown, not merely
//!   not refuted): a candidate with few deliveries stays inconclusive.
//! - **Latency**: Mann-Whitney U (ranks, ties averaged and corrected for) between the
//!   candidate's latencies and the stable cohort's scaled by `1 + latency_tolerance`, one-sided:
//!   the candidate fails when it is slower than that tolerance allows, significant at `alpha`
//!   (as Kayenta's judge pairs Mann-Whitney with an effect-size tolerance, so a large sample
//!   does not fail a canary for a difference nobody would act on).
//!
//! A rollout looks many times (every few seconds of every step); `alpha` is per look, so it is
//! small by default (1e-4, z > 3.72): a good candidate looked at a few hundred times in a
//! rollout still fails wrongly with a probability under a few percent even if the looks were
//! independent (they are strongly correlated, since each adds a little to the same counts).

/// What one cohort did over the judged window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CohortSample {
    /// Deliveries settled (acked or failed) in the window.
    pub deliveries: u64,
    /// Of those, failed: nacked, dead-lettered or past their ack deadline.
    pub failures: u64,
    /// Ack latencies in milliseconds of (a sample of) the acked deliveries.
    pub latencies_ms: Vec<f64>,
}

/// How the judge decides; see the module's doc for what each means.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Settled deliveries each cohort needs before the candidate may pass.
    pub min_deliveries: u64,
    /// Settled deliveries the candidate needs before it may fail: a handful of unlucky
    /// messages is not evidence, however the statistic reads.
    pub min_failure_sample: u64,
    /// Significance of a failure, per look (one-sided).
    pub alpha: f64,
    /// Confidence of the non-inferiority bound a pass needs (one-sided).
    pub pass_confidence: f64,
    /// How much higher the candidate's failure rate may be, absolute (0.02: two points).
    pub failure_rate_tolerance: f64,
    /// How much slower the candidate may be, relative (0.25: a quarter).
    pub latency_tolerance: f64,
    /// And absolute, in milliseconds, on top: a few milliseconds come and go with a cohort's
    /// share of the traffic alone (a subscriber at a tenth of the rate waits longer to fill
    /// an ack batch), and nobody rolls back a queue consumer for them.
    pub latency_allowance_ms: f64,
    /// Latencies each cohort needs before latency is judged at all.
    pub min_latencies: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_deliveries: 200,
            min_failure_sample: 30,
            alpha: 1e-4,
            pass_confidence: 0.95,
            failure_rate_tolerance: 0.02,
            latency_tolerance: 0.25,
            latency_allowance_ms: 10.0,
            min_latencies: 30,
        }
    }
}

/// One metric's comparison: the observed effect and the one-sided p-value that the
/// candidate is worse than the tolerance allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Failure rate: candidate's minus stable's. Latency: the probability that a candidate
    /// latency exceeds a (tolerance-scaled) stable one, 0.5 when they are alike.
    pub effect: f64,
    /// The test statistic (a z-score; positive: the candidate looks worse).
    pub z: f64,
    /// One-sided p-value of "worse than the tolerance".
    pub p_worse: f64,
}

/// What a look at the window concludes.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Enough traffic, and the candidate is not worse on any metric.
    Pass,
    /// The candidate is worse on at least one metric; each named.
    Fail(Vec<Finding>),
    /// Not enough traffic yet to pass (nothing failed either): wait.
    Inconclusive(Wait),
}

impl Verdict {
    /// The verdict's name in logs, status and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Inconclusive(_) => "inconclusive",
        }
    }
}

/// A metric the candidate failed on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Finding {
    FailureRate { candidate: f64, stable: f64, p: f64 },
    Latency { candidate_median_ms: f64, stable_median_ms: f64, p: f64 },
}

/// Why the judge waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Fewer settled deliveries than `min_deliveries` in a cohort.
    TooFewDeliveries,
    /// Enough deliveries, but the failure rates are not yet shown to be within the tolerance.
    FailureRateUnclear,
    /// Fewer latencies than `min_latencies` in a cohort.
    TooFewLatencies,
}

/// Judges `candidate` against `stable` over the same window.
pub fn judge(stable: &CohortSample, candidate: &CohortSample, t: &Thresholds) -> Verdict {
    let mut findings = Vec::new();
    let rate = failure_rate(stable, candidate, t.failure_rate_tolerance);
    if candidate.deliveries >= t.min_failure_sample && stable.deliveries > 0 && rate.p_worse < t.alpha {
        findings.push(Finding::FailureRate {
            candidate: share(candidate.failures, candidate.deliveries),
            stable: share(stable.failures, stable.deliveries),
            p: rate.p_worse,
        });
    }
    let enough_latencies =
        stable.latencies_ms.len() >= t.min_latencies && candidate.latencies_ms.len() >= t.min_latencies;
    if enough_latencies {
        let slow = latency(&stable.latencies_ms, &candidate.latencies_ms, t.latency_tolerance, t.latency_allowance_ms);
        if slow.p_worse < t.alpha {
            findings.push(Finding::Latency {
                candidate_median_ms: median(&candidate.latencies_ms),
                stable_median_ms: median(&stable.latencies_ms),
                p: slow.p_worse,
            });
        }
    }
    if !findings.is_empty() {
        return Verdict::Fail(findings);
    }
    if stable.deliveries < t.min_deliveries || candidate.deliveries < t.min_deliveries {
        return Verdict::Inconclusive(Wait::TooFewDeliveries);
    }
    if failure_rate_upper_bound(stable, candidate, t.pass_confidence) >= t.failure_rate_tolerance {
        return Verdict::Inconclusive(Wait::FailureRateUnclear);
    }
    if !enough_latencies {
        return Verdict::Inconclusive(Wait::TooFewLatencies);
    }
    Verdict::Pass
}

fn share(part: u64, whole: u64) -> f64 {
    part as f64 / whole.max(1) as f64
}

/// The Agresti-Caffo adjusted rates and the standard error of their difference.
fn adjusted(stable: &CohortSample, candidate: &CohortSample) -> (f64, f64, f64) {
    let adjust = |s: &CohortSample| {
        let n = s.deliveries.max(s.failures) as f64 + 2.0;
        ((s.failures as f64 + 1.0) / n, n)
    };
    let (ps, ns) = adjust(stable);
    let (pc, nc) = adjust(candidate);
    let se = (ps * (1.0 - ps) / ns + pc * (1.0 - pc) / nc).sqrt();
    (ps, pc, se)
}

/// One-sided test that the candidate's failure rate exceeds the stable one's by more than
/// `tolerance`.
pub fn failure_rate(stable: &CohortSample, candidate: &CohortSample, tolerance: f64) -> Comparison {
    let (ps, pc, se) = adjusted(stable, candidate);
    let z = (pc - ps - tolerance) / se;
    Comparison {
        effect: share(candidate.failures, candidate.deliveries) - share(stable.failures, stable.deliveries),
        z,
        p_worse: normal_sf(z),
    }
}

/// The one-sided upper confidence bound, at `confidence`, of the candidate's failure rate
/// minus the stable one's.
pub fn failure_rate_upper_bound(stable: &CohortSample, candidate: &CohortSample, confidence: f64) -> f64 {
    let (ps, pc, se) = adjusted(stable, candidate);
    pc - ps + normal_quantile(confidence) * se
}

/// Mann-Whitney U, one-sided: whether `candidate` latencies are larger than `stable`'s
/// scaled by `1 + tolerance`, plus `allowance` (same unit). Normal approximation with the tie correction; the samples a
/// judge sees (tens to thousands) are well inside where it holds.
pub fn latency(stable: &[f64], candidate: &[f64], tolerance: f64, allowance: f64) -> Comparison {
    let scale = 1.0 + tolerance.max(0.0);
    let allowance = allowance.max(0.0);
    // (value, from the candidate)
    let mut all: Vec<(f64, bool)> = stable
        .iter()
        .map(|&v| (v * scale + allowance, false))
        .chain(candidate.iter().map(|&v| (v, true)))
        .filter(|(v, _)| v.is_finite())
        .collect();
    let n1 = all.iter().filter(|(_, c)| *c).count() as f64;
    let n2 = all.len() as f64 - n1;
    if n1 == 0.0 || n2 == 0.0 {
        return Comparison { effect: 0.5, z: 0.0, p_worse: 1.0 };
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len() as f64;
    // Ranks from 1, ties given their average rank; the tie term for the variance.
    let (mut rank_sum, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let count = (j - i + 1) as f64;
        rank_sum += rank * all[i..=j].iter().filter(|(_, c)| *c).count() as f64;
        ties += count * count * count - count;
        i = j + 1;
    }
    let u = rank_sum - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let z = if variance > 0.0 { (u - mean) / variance.sqrt() } else { 0.0 };
    Comparison { effect: u / (n1 * n2), z, p_worse: normal_sf(z) }
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// P(Z > z) for a standard normal Z.
pub fn normal_sf(z: f64) -> f64 {
    if z.is_nan() {
        return 1.0;
    }
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function, by its Chebyshev fit (fractional error below 1.2e-7
/// everywhere: Numerical Recipes' `erfcc`).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// The standard normal quantile at `p` (0 < p < 1), by bisection on [`normal_sf`]: called
/// once per look, precision to 1e-9 is ample.
pub fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        // P(Z <= mid) = 1 - sf(mid)
        if 1.0 - normal_sf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-9 {
            break;
        }
    }
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn sample(deliveries: u64, failures: u64, latencies_ms: Vec<f64>) -> CohortSample {
        CohortSample { deliveries, failures, latencies_ms }
    }

    #[test]
    fn the_normal_tail_matches_its_tables() {
        for (z, p) in [(0.0, 0.5), (1.0, 0.158_655), (1.959_964, 0.025), (3.719, 1.0e-4), (-1.644_854, 0.95)] {
            assert!((normal_sf(z) - p).abs() < 2e-6, "sf({z}) = {} not {p}", normal_sf(z));
        }
        assert!((normal_quantile(0.95) - 1.644_854).abs() < 1e-5);
        assert!((normal_quantile(0.5)).abs() < 1e-6);
        assert_eq!(normal_sf(f64::NAN), 1.0);
    }

    #[test]
    fn a_candidate_that_nacks_a_fifth_fails_on_failure_rate_within_a_hundred_deliveries() {
        let stable = sample(900, 9, vec![]);
        let candidate = sample(100, 20, vec![]);
        match judge(&stable, &candidate, &Thresholds::default()) {
            Verdict::Fail(f) => assert!(matches!(f[..], [Finding::FailureRate { .. }]), "{f:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_few_failures_among_a_handful_are_no_evidence() {
        // 3 of 10 failed: a high rate, but fewer deliveries than a failure needs.
        let v = judge(&sample(900, 9, vec![]), &sample(10, 3, vec![]), &Thresholds::default());
        assert_eq!(v, Verdict::Inconclusive(Wait::TooFewDeliveries));
    }

    #[test]
    fn a_like_candidate_passes_once_there_is_enough_traffic_and_waits_before() {
        let lat = |n: usize, base: f64| (0..n).map(|i| base + (i % 10) as f64).collect::<Vec<_>>();
        let t = Thresholds::default();
        assert_eq!(
            judge(&sample(1_000, 10, lat(500, 5.0)), &sample(100, 1, lat(100, 5.0)), &t),
            Verdict::Inconclusive(Wait::TooFewDeliveries)
        );
        // Enough deliveries, but the upper bound of the difference is not below 2 points yet.
        assert_eq!(
            judge(&sample(1_000, 10, lat(500, 5.0)), &sample(200, 4, lat(200, 5.0)), &t),
            Verdict::Inconclusive(Wait::FailureRateUnclear)
        );
        assert_eq!(judge(&sample(4_000, 40, lat(500, 5.0)), &sample(1_000, 10, lat(500, 5.0)), &t), Verdict::Pass);
        // No latencies (nothing acked with a latency yet): not a pass.
        assert_eq!(
            judge(&sample(4_000, 40, vec![]), &sample(1_000, 10, vec![]), &t),
            Verdict::Inconclusive(Wait::TooFewLatencies)
        );
    }

    #[test]
    fn a_candidate_five_times_slower_fails_on_latency_and_a_bit_slower_does_not() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut lat =
            |n: usize, scale: f64| (0..n).map(|_| scale * (2.0 + rng.random::<f64>() * 6.0)).collect::<Vec<_>>();
        let stable = sample(1_000, 0, lat(500, 1.0));
        let slow = sample(60, 0, lat(60, 5.0));
        match judge(&stable, &slow, &Thresholds::default()) {
            Verdict::Fail(f) => assert!(matches!(f[..], [Finding::Latency { .. }]), "{f:?}"),
            other => panic!("{other:?}"),
        }
        // 10% slower is inside the 25% tolerance, however many samples.
        let a_bit = sample(5_000, 0, lat(5_000, 1.1));
        let stable = sample(5_000, 0, lat(5_000, 1.0));
        assert_eq!(judge(&stable, &a_bit, &Thresholds::default()), Verdict::Pass);
    }

    #[test]
    fn a_few_milliseconds_slower_is_within_the_allowance_however_large_in_ratio() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut lat = |n: usize, add: f64| (0..n).map(|_| add + 1.0 + rng.random::<f64>()).collect::<Vec<_>>();
        let stable = sample(2_000, 0, lat(2_000, 0.0));
        // About 1.5 ms against 6.5 ms: four times slower, by 5 ms.
        let candidate = sample(300, 0, lat(300, 5.0));
        assert_eq!(judge(&stable, &candidate, &Thresholds::default()), Verdict::Pass);
        let strict = Thresholds { latency_allowance_ms: 0.0, ..Thresholds::default() };
        assert!(matches!(judge(&stable, &candidate, &strict), Verdict::Fail(_)));
    }

    #[test]
    fn mann_whitney_counts_ties_and_knows_which_side_is_slower() {
        let same = latency(&[1.0, 2.0, 3.0, 3.0], &[1.0, 2.0, 3.0, 3.0], 0.0, 0.0);
        assert!((same.effect - 0.5).abs() < 1e-12 && same.z.abs() < 1e-12, "{same:?}");
        let slower = latency(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0], 0.0, 0.0);
        assert_eq!(slower.effect, 1.0);
        assert!(slower.z > 1.9, "{slower:?}");
        let faster = latency(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0], 0.0, 0.0);
        assert!(faster.z < -1.9 && faster.p_worse > 0.95, "{faster:?}");
        // Everything tied: no variance, no evidence.
        let flat = latency(&[2.0; 5], &[2.0; 5], 0.0, 0.0);
        assert!(flat.z == 0.0 && (flat.p_worse - 0.5).abs() < 1e-6, "{flat:?}");
        assert_eq!(latency(&[], &[1.0], 0.0, 0.0).p_worse, 1.0);
    }

    /// The rollout's looks, simulated: a good candidate (the stable cohort's 1% failures and
    /// latencies) looked at after every 20 deliveries of a 10% step, then a 50% one, never
    /// fails in 200 seeded rollouts; a bad one (20% failures) fails in every one of them, half
    /// by its 100th delivery and all by its 300th (at alpha 1e-4 and a tolerance of 2 points,
    /// z = 0.17 / sqrt(0.16 / n) passes 3.72 at n = 77 on average; the slowest seeds saw a
    /// low rate early).
    #[test]
    fn looked_at_all_along_a_good_candidate_never_fails_and_a_bad_one_always_does_early() {
        let t = Thresholds::default();
        let mut caught_at = Vec::new();
        for seed in 0..200u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            for (bad, rate) in [(false, 0.01), (true, 0.20)] {
                let (mut stable, mut candidate) = (CohortSample::default(), CohortSample::default());
                let mut failed_at = None;
                'steps: for share in [0.10, 0.50] {
                    for _ in 0..100 {
                        for _ in 0..20 {
                            let to_candidate = rng.random::<f64>() < share;
                            let (cohort, p) = if to_candidate { (&mut candidate, rate) } else { (&mut stable, 0.01) };
                            cohort.deliveries += 1;
                            if rng.random::<f64>() < p {
                                cohort.failures += 1;
                            } else {
                                // A bounded sample, as a rollout keeps one.
                                let latency = 2.0 + rng.random::<f64>() * 6.0;
                                if cohort.latencies_ms.len() < 200 {
                                    cohort.latencies_ms.push(latency);
                                } else {
                                    let i = rng.random_range(0..200);
                                    cohort.latencies_ms[i] = latency;
                                }
                            }
                        }
                        if let Verdict::Fail(f) = judge(&stable, &candidate, &t) {
                            failed_at = Some((candidate.deliveries, f));
                            break 'steps;
                        }
                    }
                }
                if bad {
                    let (at, _) = failed_at.clone().unwrap_or_else(|| panic!("seed {seed}: the bad candidate passed"));
                    caught_at.push(at);
                } else {
                    assert_eq!(failed_at, None, "seed {seed}: a good candidate failed");
                }
            }
        }
        caught_at.sort_unstable();
        let (median, worst) = (caught_at[caught_at.len() / 2], caught_at[caught_at.len() - 1]);
        assert!(median <= 100 && worst <= 300, "caught at a median of {median} deliveries, at worst {worst}");
    }
}
