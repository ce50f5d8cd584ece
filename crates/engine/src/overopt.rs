//! The functional forms of reward over-optimization (Gao, Schulman and Hilton, "Scaling Laws
//! for Reward Model Overoptimization", 2022), fitted to measured gold rewards.
//!
//! With `d = √KL(π ‖ π_init)` and rewards measured relative to the initial policy's (so
//! `R(0) = 0`), the paper fits gold reward as
//! - best-of-n: `R(d) = d·(α − β·d)`, where best-of-n's KL is `log n − (n − 1)/n`;
//! - reinforcement learning: `R(d) = d·(α − β·log d)`.
//!
//! Both are linear in (α, β), so each fit is ordinary least squares on two features, solved
//! in closed form. How this differs from the paper: it fits each run's points alone (the
//! paper also fits how α and β scale with reward-model size), by unweighted least squares.

use serde::Serialize;

/// The analytic KL of best-of-n sampling to the policy it samples from: `log n − (n − 1)/n`
/// (Stiennon et al., 2020; exact for continuous rewards without ties).
pub fn best_of_n_kl(n: u32) -> f64 {
    let n = n.max(1) as f64;
    n.ln() - (n - 1.0) / n
}

/// Which of the paper's forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// `d·(α − β·d)`.
    BestOfN,
    /// `d·(α − β·log d)`.
    Rl,
}

/// A fitted curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fit {
    pub form: Form,
    pub alpha: f64,
    pub beta: f64,
    /// Coefficient of determination of the fit on its points (1 − SS_res / SS_tot).
    pub r2: f64,
    /// Where the curve peaks (`d*`) and its value there, when it rises and then falls
    /// (`β > 0`, and for RL `α/β − 1` within the range of `f64`).
    pub peak: Option<(f64, f64)>,
}

impl Fit {
    /// The curve's value at `d`.
    pub fn at(&self, d: f64) -> f64 {
        match self.form {
            Form::BestOfN => d * (self.alpha - self.beta * d),
            Form::Rl if d <= 0.0 => 0.0,
            Form::Rl => d * (self.alpha - self.beta * d.ln()),
        }
    }
}

/// Fits `form` to the points `(d, gold)`: `d = √KL` and gold reward minus the initial
/// policy's. Needs two points with different, positive `d`; returns `None` otherwise.
pub fn fit(form: Form, points: &[(f64, f64)]) -> Option<Fit> {
    // Features: R = α·x1 − β·x2.
    let features = |d: f64| -> (f64, f64) {
        match form {
            Form::BestOfN => (d, d * d),
            Form::Rl => (d, if d > 0.0 { d * d.ln() } else { 0.0 }),
        }
    };
    let (mut s11, mut s12, mut s22, mut s1y, mut s2y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(d, y) in points {
        let (x1, x2) = features(d);
        s11 += x1 * x1;
        s12 += x1 * x2;
        s22 += x2 * x2;
        s1y += x1 * y;
        s2y += x2 * y;
    }
    // Normal equations for (α, −β).
    let det = s11 * s22 - s12 * s12;
    let singular = det.abs() <= 1e-12 * (s11 * s22).max(f64::MIN_POSITIVE);
    if singular || det.is_nan() {
        return None;
    }
    let alpha = (s1y * s22 - s2y * s12) / det;
    let beta = -(s11 * s2y - s12 * s1y) / det;
    let mut f = Fit {
        form,
        alpha,
        beta,
        r2: 0.0,
        peak: None,
    };
    let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let ss_tot: f64 = points.iter().map(|p| (p.1 - mean).powi(2)).sum();
    let ss_res: f64 = points.iter().map(|&(d, y)| (y - f.at(d)).powi(2)).sum();
    f.r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        1.0
    };
    f.peak = match form {
        _ if beta <= 0.0 => None,
        // α ≤ 0: the curve falls from the start, with no peak beyond it.
        Form::BestOfN => Some(alpha / (2.0 * beta)).filter(|d| *d > 0.0),
        // d/dd [d(α − β log d)] = α − β(log d + 1) = 0.
        Form::Rl => Some((alpha / beta - 1.0).exp()).filter(|d| d.is_finite() && *d > 0.0),
    }
    .map(|d| (d, f.at(d)));
    Some(f)
}

/// Best-of-n from a fixed pool of samples, without drawing: the expected proxy and gold
/// reward of the sample with the highest proxy among `n` drawn without replacement from each
/// problem's `N` samples, averaged over problems. The sample `j`-th lowest in proxy is the
/// best of a random `n`-subset with probability `C(j, n−1) / C(N, n)` (ties go to the later
/// sample), so every `n ≤ N` is read off one pool exactly (the unbiased estimator of Nakano
/// et al., 2021, as the over-optimization paper uses it).
pub fn best_of_n(proxy: &[Vec<f32>], gold: &[Vec<f32>], n: usize) -> Option<(f64, f64)> {
    let (mut p_sum, mut g_sum, mut problems) = (0.0, 0.0, 0usize);
    for (p, g) in proxy.iter().zip(gold) {
        let big_n = p.len();
        if n == 0 || n > big_n || g.len() != big_n {
            return None;
        }
        let mut order: Vec<usize> = (0..big_n).collect();
        order.sort_by(|&a, &b| p[a].total_cmp(&p[b]).then(a.cmp(&b)));
        let ln_fact: Vec<f64> = std::iter::once(0.0)
            .chain((1..=big_n).scan(0.0, |acc, k| {
                *acc += (k as f64).ln();
                Some(*acc)
            }))
            .collect();
        let ln_choose = |a: usize, b: usize| ln_fact[a] - ln_fact[b] - ln_fact[a - b];
        let total = ln_choose(big_n, n);
        for (j, &i) in order.iter().enumerate().skip(n - 1) {
            let w = (ln_choose(j, n - 1) - total).exp();
            p_sum += w * p[i] as f64;
            g_sum += w * g[i] as f64;
        }
        problems += 1;
    }
    (problems > 0).then(|| (p_sum / problems as f64, g_sum / problems as f64))
}

/// `(d, gold, proxy)`: one point of a [`Curve`].
pub type Point = (f64, f64, Option<f64>);

/// One over-optimization curve: gold and proxy reward against `d = √KL`, with the fit of
/// the gold's rise over its first point.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub name: String,
    /// `(d, gold, proxy)`, the first at the initial policy; proxy is None for a run
    /// against the verifier (a reference).
    pub points: Vec<Point>,
    pub fit: Option<Fit>,
}

impl Curve {
    /// The curve of `points` (first at `d = 0`), with `form` fitted to gold minus the first
    /// point's gold.
    pub fn new(name: impl Into<String>, form: Form, points: Vec<Point>) -> Self {
        let base = points.first().map_or(0.0, |p| p.1);
        let rel: Vec<(f64, f64)> = points.iter().skip(1).map(|p| (p.0, p.1 - base)).collect();
        Self {
            name: name.into(),
            fit: fit(form, &rel),
            points,
        }
    }

    /// A run's curve from its per-round metrics: gold is held-out pass@1 (`eval/pass@1`),
    /// proxy its reward model's mean score of the held-out samples (`proxy/eval_reward`, absent
    /// for a run against the verifier), and `d` the square root of `drift/kl_to_seed` (0 at
    /// round 0, the start). Rounds without gold or KL are left out; None when fewer than two
    /// rounds have them.
    pub fn of_run(
        name: impl Into<String>,
        rounds: &[std::collections::BTreeMap<String, f64>],
    ) -> Option<Self> {
        let points: Vec<Point> = rounds
            .iter()
            .filter_map(|m| {
                let kl = match m.get("round") {
                    Some(&0.0) => 0.0,
                    _ => *m.get("drift/kl_to_seed")?,
                };
                let proxy = m.get("proxy/eval_reward").copied();
                Some((kl.max(0.0).sqrt(), *m.get("eval/pass@1")?, proxy))
            })
            .collect();
        (points.len() >= 2 && points[0].0 == 0.0).then(|| Self::new(name, Form::Rl, points))
    }

    /// The fitted gold at `steps + 1` even points over the curve's range of `d`.
    pub fn fitted(&self, steps: usize) -> Vec<(f64, f64)> {
        let (Some(f), Some(first)) = (&self.fit, self.points.first()) else {
            return Vec::new();
        };
        let top = self.points.iter().map(|p| p.0).fold(0.0, f64::max);
        (0..=steps)
            .map(|i| {
                let d = top * i as f64 / steps.max(1) as f64;
                (d, first.1 + f.at(d))
            })
            .collect()
    }
}

/// One line on a fit: its coefficients and where gold peaks, if it does.
pub fn describe(fit: Option<&Fit>) -> String {
    let Some(f) = fit else {
        return "too few points to fit".into();
    };
    let form = match f.form {
        Form::BestOfN => "d(α − βd)",
        Form::Rl => "d(α − β log d)",
    };
    let head = format!("{form}: α {:.4}, β {:.4} (r² {:.3})", f.alpha, f.beta, f.r2);
    match f.peak {
        Some((d, v)) => format!("{head}; gold peaks at √KL {d:.2}, {v:+.3} over the start"),
        None if f.alpha <= 0.0 => format!("{head}; gold falls from the start (α ≤ 0)"),
        None => format!("{head}; no peak in the fitted form"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed form against every n-subset, enumerated.
    #[test]
    fn issue18_best_of_n_is_the_mean_over_every_subset() {
        let proxy = vec![
            vec![0.3, -1.0, 2.0, 0.3, 0.7, 1.5],
            vec![1.0, 0.0, 0.5, 0.2, 0.9, 0.1],
        ];
        let gold = vec![
            vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0],
            vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0],
        ];
        for n in 1..=6 {
            let (mut ps, mut gs, mut count) = (0.0, 0.0, 0.0);
            for (p, g) in proxy.iter().zip(&gold) {
                for mask in 0u32..64 {
                    if mask.count_ones() as usize != n {
                        continue;
                    }
                    // The best of the subset, ties to the later sample.
                    let best = (0..6)
                        .filter(|i| mask & (1 << i) != 0)
                        .reduce(|a, b| if p[b] >= p[a] { b } else { a })
                        .unwrap();
                    ps += p[best] as f64;
                    gs += g[best] as f64;
                    count += 1.0;
                }
            }
            let (bp, bg) = best_of_n(&proxy, &gold, n).unwrap();
            assert!(
                (bp - ps / count).abs() < 1e-9 && (bg - gs / count).abs() < 1e-9,
                "n {n}"
            );
        }
        // n = 1 is the mean sample; n beyond the pool has no estimate.
        let (_, g1) = best_of_n(&proxy, &gold, 1).unwrap();
        assert!((g1 - 7.0 / 12.0).abs() < 1e-12);
        assert_eq!(best_of_n(&proxy, &gold, 7), None);
    }

    #[test]
    fn issue18_best_of_n_kl_is_the_closed_form() {
        assert_eq!(best_of_n_kl(1), 0.0);
        assert!((best_of_n_kl(2) - (2f64.ln() - 0.5)).abs() < 1e-15);
        assert!((best_of_n_kl(1000) - (1000f64.ln() - 0.999)).abs() < 1e-12);
        // Monotone in n.
        assert!((1..64).all(|n| best_of_n_kl(n + 1) > best_of_n_kl(n)));
    }

    #[test]
    fn issue18_fits_recover_known_curves_and_their_peaks() {
        let ds: Vec<f64> = (1..=12).map(|i| i as f64 * 0.25).collect();
        for (form, alpha, beta) in [(Form::BestOfN, 0.9, 0.3), (Form::Rl, 0.5, 0.4)] {
            let truth = Fit {
                form,
                alpha,
                beta,
                r2: 1.0,
                peak: None,
            };
            // Exact points: the fit is the curve.
            let points: Vec<(f64, f64)> = ds.iter().map(|&d| (d, truth.at(d))).collect();
            let f = fit(form, &points).unwrap();
            assert!(
                (f.alpha - alpha).abs() < 1e-9 && (f.beta - beta).abs() < 1e-9,
                "{f:?}"
            );
            assert!((f.r2 - 1.0).abs() < 1e-12);
            let (d_star, top) = f.peak.unwrap();
            let want = match form {
                Form::BestOfN => alpha / (2.0 * beta),
                Form::Rl => (alpha / beta - 1.0).exp(),
            };
            assert!((d_star - want).abs() < 1e-9, "{form:?}: {d_star}");
            // The peak is the curve's highest point.
            assert!([0.9, 1.1].iter().all(|k| f.at(d_star * k) < top));
            // Noisy points: close, with r2 below 1.
            let noisy: Vec<(f64, f64)> = points
                .iter()
                .enumerate()
                .map(|(i, &(d, y))| (d, y + if i % 2 == 0 { 0.01 } else { -0.01 }))
                .collect();
            let g = fit(form, &noisy).unwrap();
            assert!(
                (g.alpha - alpha).abs() < 0.05 && (g.beta - beta).abs() < 0.05,
                "{g:?}"
            );
            assert!(g.r2 < 1.0 && g.r2 > 0.9);
        }
        // A curve that only rises has no peak.
        let rising: Vec<(f64, f64)> = ds.iter().map(|&d| (d, d * (0.5 + 0.1 * d))).collect();
        assert_eq!(fit(Form::BestOfN, &rising).unwrap().peak, None);
        // One distinct d cannot fix two coefficients.
        assert_eq!(fit(Form::BestOfN, &[(1.0, 0.3), (1.0, 0.4)]), None);
        assert_eq!(fit(Form::Rl, &[]), None);
    }

    /// A run's curve reads gold, proxy and √KL per round (round 0 at d = 0), fits the RL
    /// form to gold's change, and recovers a curve it was drawn from.
    #[test]
    fn issue18_a_runs_curve_fits_gold_against_root_kl() {
        let truth = Fit {
            form: Form::Rl,
            alpha: 0.3,
            beta: 0.2,
            r2: 1.0,
            peak: None,
        };
        let rounds: Vec<std::collections::BTreeMap<String, f64>> = (0..6)
            .map(|r| {
                let kl = (r * r) as f64 * 0.5;
                let mut m = std::collections::BTreeMap::from([
                    ("round".to_string(), r as f64),
                    ("eval/pass@1".to_string(), 0.25 + truth.at(kl.sqrt())),
                    ("proxy/eval_reward".to_string(), -2.0 + r as f64 * 0.1),
                ]);
                if r > 0 {
                    m.insert("drift/kl_to_seed".into(), kl);
                }
                m
            })
            .collect();
        let c = Curve::of_run("run", &rounds).unwrap();
        assert_eq!(c.points.len(), 6);
        assert_eq!(c.points[0], (0.0, 0.25, Some(-2.0)));
        let f = c.fit.clone().unwrap();
        assert!(
            (f.alpha - 0.3).abs() < 1e-9 && (f.beta - 0.2).abs() < 1e-9,
            "{f:?}"
        );
        let line = describe(Some(&f));
        assert!(line.contains("gold peaks at √KL"), "{line}");
        // A best-of-n curve that falls from the start has no peak.
        let falls: Vec<(f64, f64)> = [0.5, 1.0, 1.5]
            .iter()
            .map(|&d| (d, d * (-0.01 - 0.02 * d)))
            .collect();
        let f = fit(Form::BestOfN, &falls).unwrap();
        assert!(
            f.peak.is_none() && describe(Some(&f)).contains("falls from the start"),
            "{f:?}"
        );
        let fitted = c.fitted(4);
        assert_eq!(fitted.len(), 5);
        assert!((fitted[4].1 - c.points[5].1).abs() < 1e-9);
        // Without the KL monitor there is nothing to plot against.
        let bare: Vec<_> = rounds
            .iter()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| *k != "drift/kl_to_seed")
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            })
            .collect();
        assert!(Curve::of_run("bare", &bare).is_none());
        assert!(describe(None).contains("too few"));
    }
}
