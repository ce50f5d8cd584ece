//! Monitors: what a round's samples say about exploration, exploitation and drift.
//!
//! Every function here is a pure computation on groups (or on slices) with a closed form that
//! the unit tests check. The engine computes, every round (docs/design.md, "The loop"):
//!
//! - `explore/*` from the round's training samples: `pass@k` for k = 1…n (unbiased estimator),
//!   distinct correct answers and distinct correct traces per problem, the entropy of the
//!   parsed-answer distribution (nats; no answer is one more outcome), and distinct-3 (unique
//!   character 3-grams / all 3-grams among a problem's completions).
//! - `exploit/*`, how well the round's reward picks correct samples, against the gold
//!   verifier: precision, recall and F1 of the curation rule (what the recipe selected for
//!   training), AUROC of the reward as a classifier of correctness, and B-STaR's balance score
//!   (Zeng et al., 2024): per problem with a selected sample,
//!   `min(n′/n*, 1) · n′/n` with n the distinct selected samples and n′ the correct ones among
//!   them, averaged over those problems (as `cal_modi_acc_soft` in the paper's code).
//! - `gap/best_of_n`: accuracy of the highest-reward sample of each problem minus the mean
//!   sample accuracy (the generation–verification gap of the reward).
//! - `drift/*` on the held-out prompts (see [`mean_kl`]; the run's eval stage computes them).

use crate::eval::pass_at_k;
use autodidact_core::Group;
use autodidact_objectives::{sequence_kl, KlEstimator};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Mean of `f` over the groups (0 for none).
fn mean_over(groups: &[Group], f: impl Fn(&Group) -> f64) -> f64 {
    if groups.is_empty() {
        return 0.0;
    }
    groups.iter().map(f).sum::<f64>() / groups.len() as f64
}

/// Entropy (nats) of the distribution of `items`, summed over the distinct items in order of
/// first appearance (a hash map's order differs between processes, and with it the last bit
/// of the sum: the same run must give the same bytes).
pub fn entropy<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> f64 {
    let mut index: HashMap<T, usize> = HashMap::new();
    let mut counts: Vec<usize> = Vec::new();
    let mut n = 0usize;
    for x in items {
        let i = *index.entry(x).or_insert_with(|| {
            counts.push(0);
            counts.len() - 1
        });
        counts[i] += 1;
        n += 1;
    }
    counts
        .iter()
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.ln()
        })
        .sum()
}

/// Unique character n-grams over all n-grams of `texts` (1 when there is none).
pub fn distinct_ngrams(texts: &[&str], n: usize) -> f64 {
    let mut seen = HashSet::new();
    let mut total = 0usize;
    for t in texts {
        let chars: Vec<char> = t.chars().collect();
        for w in chars.windows(n) {
            seen.insert(w.to_vec());
            total += 1;
        }
    }
    if total == 0 {
        1.0
    } else {
        seen.len() as f64 / total as f64
    }
}

/// Area under the ROC curve of `scores` as a classifier of `labels` (the probability that a
/// random positive scores above a random negative, ties counting ½); `None` without both.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (pos, neg) = labels.iter().fold(
        (0usize, 0usize),
        |(p, n), &l| {
            if l {
                (p + 1, n)
            } else {
                (p, n + 1)
            }
        },
    );
    if pos == 0 || neg == 0 {
        return None;
    }
    // Mann–Whitney U with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&k| labels[idx[k]]).count() as f64 * avg;
        i = j + 1;
    }
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// B-STaR's balance score over the groups with at least one selected sample (`None` if none).
pub fn balance_score(groups: &[Group], selected: &[Vec<bool>], n_star: usize) -> Option<f64> {
    let mut scores = Vec::new();
    for (g, sel) in groups.iter().zip(selected) {
        let chosen = g.distinct(|i| sel[i]);
        let n = chosen.len();
        let right = chosen
            .iter()
            .filter(|&&i| g.verdicts[i].is_correct())
            .count();
        if n > 0 {
            let explore = (right as f64 / n_star.max(1) as f64).min(1.0);
            scores.push(explore * right as f64 / n as f64);
        }
    }
    (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
}

/// `explore/*` of a round's groups (all of the same size n).
pub fn exploration(groups: &[Group]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let n = groups
        .iter()
        .map(|g| g.completions.len())
        .min()
        .unwrap_or(0);
    for k in 1..=n {
        m.insert(
            format!("explore/pass@{k}"),
            mean_over(groups, |g| {
                let c = g.verdicts[..n].iter().filter(|v| v.is_correct()).count();
                pass_at_k(n, c, k)
            }),
        );
    }
    m.insert(
        "explore/distinct_correct_answers".into(),
        mean_over(groups, |g| {
            let answers: HashSet<_> = g
                .verdicts
                .iter()
                .filter(|v| v.is_correct())
                .map(|v| &v.answer)
                .collect();
            answers.len() as f64
        }),
    );
    m.insert(
        "explore/distinct_correct_traces".into(),
        mean_over(groups, |g| g.distinct_correct().len() as f64),
    );
    m.insert(
        "explore/answer_entropy".into(),
        mean_over(groups, |g| {
            entropy(g.verdicts.iter().map(|v| v.answer.as_deref()))
        }),
    );
    m.insert(
        "explore/distinct_3grams".into(),
        mean_over(groups, |g| {
            let texts: Vec<&str> = g.completions.iter().map(|c| c.text.as_str()).collect();
            distinct_ngrams(&texts, 3)
        }),
    );
    m
}

/// `exploit/*` and `gap/best_of_n` of a round's rewards (each group's `rewards`: what the
/// recipe rewarded) and selection (`selected`: per completion, whether the recipe trained on
/// it as a positive) against the verifier.
pub fn exploitation(
    groups: &[Group],
    selected: &[Vec<bool>],
    n_star: usize,
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    let (mut best, mut mean_acc) = (0.0, 0.0);
    for (g, sel) in groups.iter().zip(selected) {
        let r = &g.rewards;
        for ((v, &x), &chosen) in g.verdicts.iter().zip(r).zip(sel) {
            let ok = v.is_correct();
            tp += (chosen && ok) as usize;
            fp += (chosen && !ok) as usize;
            fneg += (!chosen && ok) as usize;
            scores.push(x);
            labels.push(ok);
        }
        if let Some(top) = (0..r.len()).reduce(|a, b| if r[b] > r[a] { b } else { a }) {
            best += g.verdicts[top].is_correct() as u8 as f64;
        }
        mean_acc += g.verdicts.iter().filter(|v| v.is_correct()).count() as f64
            / g.verdicts.len().max(1) as f64;
    }
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fneg) as f64;
    m.insert("exploit/precision".into(), precision);
    m.insert("exploit/recall".into(), recall);
    m.insert(
        "exploit/f1".into(),
        2.0 * precision * recall / (precision + recall),
    );
    if let Some(a) = auroc(&scores, &labels) {
        m.insert("exploit/auroc".into(), a);
    }
    if let Some(b) = balance_score(groups, selected, n_star) {
        m.insert("exploit/balance_score".into(), b);
    }
    let n = groups.len().max(1) as f64;
    m.insert("gap/best_of_n".into(), (best - mean_acc) / n);
    // Undefined ratios (nothing selected, nothing correct) are left out, not written as NaN.
    m.retain(|_, v| v.is_finite());
    m
}

/// Every training-sample monitor of a round: [`exploration`] and [`exploitation`].
pub fn round_monitors(
    groups: &[Group],
    selected: &[Vec<bool>],
    n_star: usize,
) -> BTreeMap<String, f64> {
    let mut m = exploration(groups);
    m.extend(exploitation(groups, selected, n_star));
    m
}

/// Drift of a policy on completions it sampled: the k3 estimate of KL(π‖ref) summed over each
/// completion's tokens ([`sequence_kl`]) and averaged over completions. With samples drawn
/// from π at temperature 1 each term is an unbiased, non-negative estimate of the per-token KL.
pub fn mean_kl(logprobs: &[Vec<f32>], ref_logprobs: &[Vec<f32>]) -> f64 {
    let per_sequence = sequence_kl(logprobs, ref_logprobs, KlEstimator::K3);
    per_sequence.iter().sum::<f64>() / per_sequence.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::group;

    /// issue 12: the full-size spin example differed in the last bit of
    /// `explore/answer_entropy` between two processes, because the sum ran in hash order.
    #[test]
    fn issue12_entropy_sums_in_first_appearance_order() {
        let items = ["a", "b", "a", "c", "d", "b", "e", "a", "f", "g"];
        let n = items.len() as f64;
        let mut want = 0.0;
        for c in [3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0] {
            let p: f64 = c / n;
            want += -p * p.ln();
        }
        assert_eq!(entropy(items).to_bits(), want.to_bits());
    }

    #[test]
    fn auroc_in_closed_form() {
        // Perfect, reversed, uninformative (all tied), and one swapped pair of 2×2.
        assert_eq!(
            auroc(&[0.9, 0.8, 0.1, 0.2], &[true, true, false, false]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.1, 0.2, 0.9, 0.8], &[true, true, false, false]),
            Some(0.0)
        );
        assert_eq!(auroc(&[0.5; 4], &[true, false, true, false]), Some(0.5));
        assert_eq!(
            auroc(&[0.9, 0.3, 0.5, 0.1], &[true, true, false, false]),
            Some(0.75)
        );
        assert_eq!(auroc(&[0.9, 0.3], &[true, true]), None);
    }

    #[test]
    fn entropy_and_distinct_ngrams_in_closed_form() {
        assert_eq!(entropy(["a", "a", "a"]), 0.0);
        assert!((entropy(["a", "b", "a", "b"]) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((entropy([1, 2, 3, 4]) - 4f64.ln()).abs() < 1e-12);
        // "abcd" has abc, bcd; "abcx" has abc, bcx: 3 unique of 4.
        assert_eq!(distinct_ngrams(&["abcd", "abcx"], 3), 0.75);
        assert_eq!(distinct_ngrams(&["ab"], 3), 1.0);
    }

    #[test]
    fn exploration_of_a_known_group() {
        // 4 samples: two correct traces of the same answer, one wrong answer, one unparsed.
        let g = group(
            "p",
            &[
                ("x#7", Some("7"), true),
                ("y#7", Some("7"), true),
                ("z#8", Some("8"), false),
                ("?", None, false),
            ],
        );
        let m = exploration(std::slice::from_ref(&g));
        assert_eq!(m["explore/pass@1"], 0.5);
        // 1 − C(2,2)/C(4,2) = 1 − 1/6.
        assert!((m["explore/pass@2"] - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(m["explore/pass@3"], 1.0);
        assert_eq!(m["explore/distinct_correct_answers"], 1.0);
        assert_eq!(m["explore/distinct_correct_traces"], 2.0);
        // Answers 7, 7, 8, none: p = ½, ¼, ¼.
        let h = -(0.5f64 * 0.5f64.ln() + 2.0 * 0.25 * 0.25f64.ln());
        assert!((m["explore/answer_entropy"] - h).abs() < 1e-12);
    }

    #[test]
    fn exploitation_and_balance_in_closed_form() {
        let mut g = group(
            "p",
            &[
                ("a#1", Some("1"), true),
                ("a#1", Some("1"), true),
                ("b#2", Some("2"), false),
                ("c#1", Some("1"), true),
            ],
        );
        // Select the first three: 2 correct (1 distinct correct text) + 1 incorrect selected,
        // 1 correct left out.
        g.rewards = vec![0.9, 0.9, 0.6, 0.2];
        let selected = vec![vec![true, true, true, false]];
        let m = exploitation(std::slice::from_ref(&g), &selected, 4);
        assert!((m["exploit/precision"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m["exploit/recall"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((m["exploit/f1"] - 2.0 / 3.0).abs() < 1e-12);
        // Correct scores {0.9, 0.9, 0.2} vs incorrect {0.6}: 2 of 3 pairs ordered.
        assert!((m["exploit/auroc"] - 2.0 / 3.0).abs() < 1e-12);
        // Distinct selected: a#1 (correct), b#2: n = 2, n′ = 1 → min(1/4, 1) · 1/2.
        assert!((m["exploit/balance_score"] - 0.125).abs() < 1e-12);
        // Best by reward is correct (1) against a mean accuracy of 3/4.
        assert!((m["gap/best_of_n"] - 0.25).abs() < 1e-12);
        // Nothing selected: precision undefined and left out; no balance score.
        let none = vec![vec![false; 4]];
        let m = exploitation(std::slice::from_ref(&g), &none, 4);
        assert!(!m.contains_key("exploit/precision"));
        assert!(!m.contains_key("exploit/balance_score"));
        assert_eq!(m["exploit/recall"], 0.0);
    }

    #[test]
    fn mean_kl_is_zero_at_the_reference_and_matches_k3() {
        let same = [vec![0.0f32, 0.0], vec![0.0]];
        assert_eq!(mean_kl(&same, &same), 0.0);
        let r = -0.5f64;
        let want = (r.exp() - 1.0 - r) * 2.0 / 2.0;
        let got = mean_kl(&[vec![0.0, 0.0], vec![]], &[vec![-0.5, -0.5], vec![]]);
        assert!((got - want).abs() < 1e-7);
    }
}
