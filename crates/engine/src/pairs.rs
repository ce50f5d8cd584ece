//! Preference pairs from groups of samples, and how good they are against the gold verifier.
//!
//! Four ways to pick (chosen, rejected) from one problem's group:
//! - [`verified_pairs`] (`dpo-verified`): a verifier-correct against a verifier-incorrect
//!   completion — uses labels; the upper bound of the label-free recipes.
//! - [`vote_pairs`] (`scpo`): Self-Consistency Preference Optimization (Prasad et al., 2024).
//!   Each completion votes for its parsed final answer; a completion of the most-voted answer
//!   is chosen over one of the least-voted answer (completions without an answer count as
//!   0 votes), the pair weighted by the vote margin (V⁺ − V⁻)/k. Differences from the paper:
//!   the paper samples until the vote is decisive and filters on a threshold of V⁺; here k is
//!   fixed, a tie for the top answer builds no pair, and `min_vote_share` is the threshold.
//!   Only the parsed answers are read — never the verdict's grade.
//! - [`judged_pairs`] (`self-rewarding`): the highest against the lowest self-judged score
//!   (Yuan et al., 2024), when they differ by at least a margin.
//! - [`spin_pairs`] (`spin`): the gold demonstration against the model's own generation
//!   (Chen et al., 2024), when they differ.
//!
//! A group that yields no pair is counted, never an error: all votes equal, all judged
//! scores equal, no correct or no incorrect sample, or the model reproduces the gold.

use autodidact_core::Group;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One preference pair. Serialized as a line of `train.jsonl` in TRL's preference format
/// (`prompt`, `chosen`, `rejected`) plus what it was built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub problem_id: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Per-pair loss weight (ScPO's vote margin; 1 otherwise).
    pub weight: f32,
    /// The proxy reward of each side (vote share, judged score; 1/0 for verified and gold).
    pub chosen_reward: f32,
    pub rejected_reward: f32,
    /// Whether each side is correct by the gold verifier (recorded, never used to build
    /// label-free pairs).
    pub chosen_correct: bool,
    pub rejected_correct: bool,
}

/// Why groups gave no pair, and how many pairs were built.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairCounts {
    pub groups: usize,
    pub pairs: usize,
    /// Groups that gave no pair, by reason.
    pub no_pair: BTreeMap<String, usize>,
}

impl PairCounts {
    fn skip(&mut self, reason: &str) {
        *self.no_pair.entry(reason.to_string()).or_insert(0) += 1;
    }
    pub fn groups_without_pair(&self) -> usize {
        self.no_pair.values().sum()
    }
}

fn pair(g: &Group, c: usize, r: usize, weight: f32, rewards: (f32, f32)) -> Pair {
    Pair {
        problem_id: g.problem.id.clone(),
        prompt: g.problem.prompt.clone(),
        chosen: g.completions[c].text.clone(),
        rejected: g.completions[r].text.clone(),
        weight,
        chosen_reward: rewards.0,
        rejected_reward: rewards.1,
        chosen_correct: g.verdicts[c].is_correct(),
        rejected_correct: g.verdicts[r].is_correct(),
    }
}

/// Distinct verifier-correct completions against distinct incorrect ones, up to `per_problem`.
pub fn verified_pairs(groups: &[Group], per_problem: usize) -> (Vec<Pair>, PairCounts) {
    let mut counts = PairCounts::default();
    let mut pairs = Vec::new();
    for g in groups {
        counts.groups += 1;
        let good = g.distinct_correct();
        let bad = g.distinct(|i| !g.verdicts[i].is_correct());
        if good.is_empty() || bad.is_empty() {
            counts.skip(if good.is_empty() {
                "no_correct"
            } else {
                "no_incorrect"
            });
            continue;
        }
        for (&c, &r) in good.iter().zip(&bad).take(per_problem) {
            pairs.push(pair(g, c, r, 1.0, (1.0, 0.0)));
        }
    }
    counts.pairs = pairs.len();
    (pairs, counts)
}

/// Each completion's vote share: the fraction of the group whose parsed answer equals its
/// own (0 for a completion without an answer).
pub fn vote_shares(g: &Group) -> Vec<f32> {
    let k = g.completions.len().max(1) as f32;
    let answers: Vec<Option<&str>> = g.verdicts.iter().map(|v| v.answer.as_deref()).collect();
    answers
        .iter()
        .map(|a| match a {
            Some(a) => answers.iter().filter(|b| **b == Some(*a)).count() as f32 / k,
            None => 0.0,
        })
        .collect()
}

/// The unique most-voted answer's completion index, if there is one, given the group's
/// [`vote_shares`].
pub fn majority_index(g: &Group, shares: &[f32]) -> Option<usize> {
    let top = shares.iter().cloned().fold(0.0f32, f32::max);
    if top == 0.0 {
        return None;
    }
    let first = shares.iter().position(|&s| s == top)?;
    let top_answer = &g.verdicts[first].answer;
    let tied = shares
        .iter()
        .zip(&g.verdicts)
        .any(|(&s, v)| s == top && v.answer != *top_answer);
    (!tied).then_some(first)
}

/// ScPO pairs: most-voted against least-voted answer (see the module comment), from each
/// group's [`vote_shares`].
pub fn vote_pairs(
    groups: &[Group],
    shares: &[Vec<f32>],
    per_problem: usize,
    min_share: f32,
    weight_by_margin: bool,
) -> (Vec<Pair>, PairCounts) {
    let mut counts = PairCounts::default();
    let mut pairs = Vec::new();
    for (g, shares) in groups.iter().zip(shares) {
        counts.groups += 1;
        let Some(top) = majority_index(g, shares) else {
            counts.skip(if shares.iter().all(|&s| s == 0.0) {
                "no_answers"
            } else {
                "tied_top"
            });
            continue;
        };
        let top_answer = g.verdicts[top].answer.as_deref();
        let others = |i: usize| g.verdicts[i].answer.as_deref() != top_answer;
        let Some(low_share) = (0..shares.len())
            .filter(|&i| others(i))
            .map(|i| shares[i])
            .reduce(f32::min)
        else {
            counts.skip("unanimous");
            continue;
        };
        if shares[top] < min_share {
            counts.skip("below_min_vote_share");
            continue;
        }
        let chosen = g.distinct(|i| !others(i));
        let rejected = g.distinct(|i| others(i) && shares[i] == low_share);
        let weight = if weight_by_margin {
            shares[top] - low_share
        } else {
            1.0
        };
        for (&c, &r) in chosen.iter().zip(&rejected).take(per_problem) {
            pairs.push(pair(g, c, r, weight, (shares[c], shares[r])));
        }
    }
    counts.pairs = pairs.len();
    (pairs, counts)
}

/// Self-Rewarding pairs from judged scores (one per completion, aligned with the groups'
/// completions): the i-th best against the i-th worst distinct completion while their scores
/// differ by at least `margin`.
pub fn judged_pairs(
    groups: &[Group],
    scores: &[Vec<f32>],
    per_problem: usize,
    margin: f32,
) -> (Vec<Pair>, PairCounts) {
    let mut counts = PairCounts::default();
    let mut pairs = Vec::new();
    for (g, s) in groups.iter().zip(scores) {
        counts.groups += 1;
        let mut idx = g.distinct(|_| true);
        // Best first; ties keep sampling order.
        idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
        let mut built = 0;
        for i in 0..per_problem.min(idx.len() / 2) {
            let (c, r) = (idx[i], idx[idx.len() - 1 - i]);
            if s[c] - s[r] < margin || s[c] == s[r] {
                break;
            }
            pairs.push(pair(g, c, r, 1.0, (s[c], s[r])));
            built += 1;
        }
        if built == 0 {
            counts.skip(if idx.len() < 2 {
                "one_distinct_completion"
            } else {
                "below_judge_margin"
            });
        }
    }
    counts.pairs = pairs.len();
    (pairs, counts)
}

/// SPIN pairs: the problem's gold solution against distinct generations that differ from it.
pub fn spin_pairs(groups: &[Group], per_problem: usize) -> (Vec<Pair>, PairCounts) {
    let mut counts = PairCounts::default();
    let mut pairs = Vec::new();
    for g in groups {
        counts.groups += 1;
        let Some(gold) = g.problem.solution.as_deref() else {
            counts.skip("no_demonstration");
            continue;
        };
        let own = g.distinct(|i| g.completions[i].text != gold);
        if own.is_empty() {
            counts.skip("reproduces_gold");
            continue;
        }
        for &r in own.iter().take(per_problem) {
            pairs.push(Pair {
                problem_id: g.problem.id.clone(),
                prompt: g.problem.prompt.clone(),
                chosen: gold.to_string(),
                rejected: g.completions[r].text.clone(),
                weight: 1.0,
                chosen_reward: 1.0,
                rejected_reward: 0.0,
                chosen_correct: true,
                rejected_correct: g.verdicts[r].is_correct(),
            });
        }
    }
    counts.pairs = pairs.len();
    (pairs, counts)
}

/// `vote/*`: how often the unique majority answer is correct by the gold verifier
/// (`majority_accuracy`), its mean vote share (`top_share`), and the fraction of groups with a
/// unique majority (`decided_fraction`).
pub fn vote_metrics(groups: &[Group], shares: &[Vec<f32>]) -> BTreeMap<String, f64> {
    let (mut decided, mut right, mut share) = (0usize, 0usize, 0.0f64);
    for (g, s) in groups.iter().zip(shares) {
        if let Some(i) = majority_index(g, s) {
            decided += 1;
            right += g.verdicts[i].is_correct() as usize;
            share += s[i] as f64;
        }
    }
    let d = decided.max(1) as f64;
    BTreeMap::from([
        ("vote/majority_accuracy".to_string(), right as f64 / d),
        ("vote/top_share".to_string(), share / d),
        (
            "vote/decided_fraction".to_string(),
            decided as f64 / groups.len().max(1) as f64,
        ),
    ])
}

/// Gold-truth metrics of a round's pairs (`pairs/*`), the gold reward of its samples
/// (`gold/reward`) and, when the recipe has a proxy reward, the proxy beside it (`proxy/*`).
pub fn truth_metrics(
    groups: &[Group],
    proxy: Option<&[Vec<f32>]>,
    pairs: &[Pair],
    counts: &PairCounts,
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let n = pairs.len().max(1) as f64;
    m.insert("pairs/count".into(), pairs.len() as f64);
    m.insert(
        "pairs/groups_without_pair".into(),
        counts.groups_without_pair() as f64,
    );
    for (reason, c) in &counts.no_pair {
        m.insert(format!("pairs/no_pair/{reason}"), *c as f64);
    }
    let frac = |f: &dyn Fn(&Pair) -> bool| pairs.iter().filter(|p| f(p)).count() as f64 / n;
    m.insert(
        "pairs/chosen_gold_accuracy".into(),
        frac(&|p| p.chosen_correct),
    );
    m.insert(
        "pairs/rejected_gold_accuracy".into(),
        frac(&|p| p.rejected_correct),
    );
    m.insert(
        "pairs/gold_ordered".into(),
        frac(&|p| p.chosen_correct && !p.rejected_correct),
    );
    m.insert(
        "pairs/mean_weight".into(),
        pairs.iter().map(|p| p.weight as f64).sum::<f64>() / n,
    );
    let verdicts = || groups.iter().flat_map(|g| &g.verdicts);
    let samples = verdicts().count().max(1) as f64;
    m.insert(
        "gold/reward".into(),
        verdicts().map(|v| v.score as f64).sum::<f64>() / samples,
    );
    // The proxy over every sample, and split by gold correctness.
    if let Some(proxy) = proxy {
        let (mut all, mut good, mut bad) = ((0.0, 0), (0.0, 0), (0.0, 0));
        for (g, p) in groups.iter().zip(proxy) {
            for (v, &r) in g.verdicts.iter().zip(p) {
                let side = if v.is_correct() { &mut good } else { &mut bad };
                for acc in [&mut all, side] {
                    acc.0 += r as f64;
                    acc.1 += 1;
                }
            }
        }
        // A mean over no sample is left out, not written as NaN.
        for (k, (s, c)) in [
            ("proxy/reward", all),
            ("proxy/reward_gold_correct", good),
            ("proxy/reward_gold_incorrect", bad),
        ] {
            if c > 0 {
                m.insert(k.into(), s / c as f64);
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::group;

    #[test]
    fn votes_pick_majority_over_minority_with_margin_weight() {
        // 5 votes for 7 (correct), 2 for 8, 1 unparsable: chosen is a 7, rejected the
        // unparsable one (0 votes), weight 5/8 − 0.
        let g = group(
            "a",
            &[
                ("x#8", Some("8"), false),
                ("y#7", Some("7"), true),
                ("y#7", Some("7"), true),
                ("z#7", Some("7"), true),
                ("q", None, false),
                ("y#7", Some("7"), true),
                ("w#8", Some("8"), false),
                ("y#7", Some("7"), true),
            ],
        );
        assert_eq!(
            vote_shares(&g),
            vec![0.25, 0.625, 0.625, 0.625, 0.0, 0.625, 0.25, 0.625]
        );
        let (pairs, counts) =
            vote_pairs(std::slice::from_ref(&g), &[vote_shares(&g)], 2, 0.5, true);
        // Only one completion has the fewest votes, so the second chosen text has no partner.
        assert_eq!(counts.pairs, 1);
        assert_eq!(pairs[0].chosen, "y#7");
        assert_eq!(pairs[0].rejected, "q");
        assert_eq!(pairs[0].weight, 0.625);
        assert!(pairs[0].chosen_correct && !pairs[0].rejected_correct);
        // A higher threshold drops the group, counted.
        let (none, counts) =
            vote_pairs(std::slice::from_ref(&g), &[vote_shares(&g)], 1, 0.75, true);
        assert!(none.is_empty());
        assert_eq!(counts.no_pair["below_min_vote_share"], 1);
    }

    #[test]
    fn unanimous_and_tied_groups_give_no_pair_and_are_counted() {
        let unanimous = group("u", &[("a#1", Some("1"), true), ("b#1", Some("1"), true)]);
        let tied = group("t", &[("a#1", Some("1"), true), ("b#2", Some("2"), false)]);
        let silent = group("s", &[("a", None, false), ("b", None, false)]);
        let groups = [unanimous, tied, silent];
        let shares: Vec<Vec<f32>> = groups.iter().map(vote_shares).collect();
        let (pairs, counts) = vote_pairs(&groups, &shares, 1, 0.0, true);
        assert!(pairs.is_empty());
        assert_eq!(counts.groups, 3);
        assert_eq!(counts.groups_without_pair(), 3);
        assert_eq!(counts.no_pair["unanimous"], 1);
        assert_eq!(counts.no_pair["tied_top"], 1);
        assert_eq!(counts.no_pair["no_answers"], 1);
    }

    #[test]
    fn vote_metrics_in_closed_form() {
        // Majority right (2 of 3 for 1), majority wrong (2 of 2 for 9), tied (no majority).
        let right = group(
            "r",
            &[
                ("a#1", Some("1"), true),
                ("b#1", Some("1"), true),
                ("c#2", Some("2"), false),
            ],
        );
        let wrong = group("w", &[("a#9", Some("9"), false), ("b#9", Some("9"), false)]);
        let tied = group("t", &[("a#1", Some("1"), true), ("b#2", Some("2"), false)]);
        let groups = [right, wrong, tied];
        let shares: Vec<Vec<f32>> = groups.iter().map(vote_shares).collect();
        let m = vote_metrics(&groups, &shares);
        assert_eq!(m["vote/majority_accuracy"], 0.5);
        assert!((m["vote/top_share"] - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-6);
        assert!((m["vote/decided_fraction"] - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn verified_pairs_need_both_sides() {
        let mixed = group(
            "m",
            &[
                ("a#1", Some("1"), true),
                ("b#2", Some("2"), false),
                ("a#1", Some("1"), true),
                ("c#1", Some("1"), true),
                ("d", None, false),
            ],
        );
        let all_right = group("r", &[("a#1", Some("1"), true)]);
        let (pairs, counts) = verified_pairs(&[mixed, all_right], 3);
        // Distinct correct {a, c} × distinct incorrect {b, d}: two pairs.
        assert_eq!(
            pairs
                .iter()
                .map(|p| (p.chosen.as_str(), p.rejected.as_str()))
                .collect::<Vec<_>>(),
            vec![("a#1", "b#2"), ("c#1", "d")]
        );
        assert_eq!(counts.no_pair["no_incorrect"], 1);
    }

    #[test]
    fn judged_pairs_respect_the_margin() {
        let g = group(
            "j",
            &[
                ("a", Some("1"), true),
                ("b", Some("2"), false),
                ("c", Some("3"), false),
            ],
        );
        let scores = vec![vec![0.9, 0.2, 0.5]];
        let (pairs, _) = judged_pairs(std::slice::from_ref(&g), &scores, 1, 0.5);
        assert_eq!(
            (pairs[0].chosen.as_str(), pairs[0].rejected.as_str()),
            ("a", "b")
        );
        assert_eq!(
            (pairs[0].chosen_reward, pairs[0].rejected_reward),
            (0.9, 0.2)
        );
        let flat = vec![vec![0.5, 0.5, 0.5]];
        let (none, counts) = judged_pairs(std::slice::from_ref(&g), &flat, 1, 0.0);
        assert!(none.is_empty());
        assert_eq!(counts.no_pair["below_judge_margin"], 1);
    }

    #[test]
    fn spin_pairs_gold_against_own_generation() {
        let g = group(
            "s",
            &[("gold", Some("1"), true), ("mine", Some("2"), false)],
        );
        let (pairs, _) = spin_pairs(std::slice::from_ref(&g), 2);
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            (pairs[0].chosen.as_str(), pairs[0].rejected.as_str()),
            ("gold", "mine")
        );
        let same = group("s", &[("gold", Some("1"), true)]);
        let (none, counts) = spin_pairs(std::slice::from_ref(&same), 2);
        assert!(none.is_empty());
        assert_eq!(counts.no_pair["reproduces_gold"], 1);
    }

    #[test]
    fn truth_metrics_compare_proxy_with_gold() {
        let g = group("m", &[("a#1", Some("1"), true), ("b#2", Some("2"), false)]);
        let (pairs, counts) = verified_pairs(std::slice::from_ref(&g), 1);
        let m = truth_metrics(
            std::slice::from_ref(&g),
            Some(&[vec![0.8, 0.4]]),
            &pairs,
            &counts,
        );
        assert_eq!(m["pairs/count"], 1.0);
        assert_eq!(m["pairs/chosen_gold_accuracy"], 1.0);
        assert_eq!(m["pairs/rejected_gold_accuracy"], 0.0);
        assert!((m["proxy/reward"] - 0.6).abs() < 1e-6);
        assert_eq!(m["gold/reward"], 0.5);
        assert!((m["proxy/reward_gold_correct"] - 0.8).abs() < 1e-6);
    }
}
