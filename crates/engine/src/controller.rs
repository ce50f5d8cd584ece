//! The controller: reads the monitors after every round and steers the next one.
//!
//! - **Alarms** (`[[controller.alarms]]`), each a condition on the round's metrics with an
//!   action: `warn` (noted on the terminal, recorded in the manifest and the report), `stop`
//!   (the run ends after this round, status `stopped`), or `rollback` (the next round starts
//!   from the best round so far by held-out pass@1 instead of this one). Conditions:
//!   - `proxy_gold_divergence`: since round 1 the proxy reward rose more than the gold reward,
//!     `(proxy_r − proxy_1) − (gold_r − gold_1) > threshold` (recipes with a proxy reward);
//!   - `exploration_collapse`: `explore/answer_entropy < threshold` (a problem's samples
//!     nearly all give one answer);
//!   - `entropy_collapse`: `drift/token_entropy < threshold`;
//!   - `kl_budget`: `drift/kl_to_seed > threshold`;
//!   - `ensemble_disagreement`: a reward-model ensemble's disagreement on the held-out samples
//!     rose since the first round that has it, `dis_r − dis_first > threshold`
//!     (`proxy/eval_disagreement`; needs no gold labels, so it guards runs without a
//!     verifier: the policy is moving where the reward models were not trained).
//! - **Early stopping** (`patience`): stop when held-out pass@1 has not beaten its best for
//!   `patience` rounds.
//! - **B-STaR balancing** (`balance`, recipe `star`): before sampling a round, probe each
//!   temperature of `temperatures` on `probe_problems` pool problems and sample the round at
//!   the one with the highest balance score ([`crate::monitor::balance_score`]). The paper
//!   also tunes a reward threshold; with a 0/1 verifier there is none to tune.
//!
//! Every decision is written to the round's manifest before the journal records the round,
//! so a resumed run makes the same ones.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an alarm watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    ProxyGoldDivergence,
    ExplorationCollapse,
    EntropyCollapse,
    KlBudget,
    EnsembleDisagreement,
}

impl AlarmKind {
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::ProxyGoldDivergence => "proxy_gold_divergence",
            AlarmKind::ExplorationCollapse => "exploration_collapse",
            AlarmKind::EntropyCollapse => "entropy_collapse",
            AlarmKind::KlBudget => "kl_budget",
            AlarmKind::EnsembleDisagreement => "ensemble_disagreement",
        }
    }
}

/// What a fired alarm does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmAction {
    #[default]
    Warn,
    Rollback,
    Stop,
}

/// One alarm (`[[controller.alarms]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    pub kind: AlarmKind,
    pub threshold: f64,
    #[serde(default)]
    pub action: AlarmAction,
}

/// An alarm that fired in a round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    pub kind: AlarmKind,
    pub value: f64,
    pub threshold: f64,
    pub action: AlarmAction,
    pub message: String,
}

/// The controller's decision after a round (`manifest.json`'s `controller`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<Fired>,
    /// The run ends after this round (a `stop` alarm or early stopping), and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// The round the next one starts from, when it is not this one (a `rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_parent: Option<u32>,
    /// The sampling temperature B-STaR balancing chose for this round, and the balance score
    /// of each probed temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe: Vec<(f32, f64)>,
}

/// The value an alarm watches in `history` (rounds 0..=r, the last is the current round),
/// if the round logged it.
pub fn alarm_value(kind: AlarmKind, history: &[BTreeMap<String, f64>]) -> Option<f64> {
    let now = history.last()?;
    match kind {
        AlarmKind::ProxyGoldDivergence => {
            let first = history
                .iter()
                .find(|m| m.contains_key("proxy/reward") && m.contains_key("gold/reward"))?;
            let d = |m: &BTreeMap<String, f64>, k: &str| Some(m.get(k)? - first.get(k)?);
            Some(d(now, "proxy/reward")? - d(now, "gold/reward")?)
        }
        AlarmKind::ExplorationCollapse => now.get("explore/answer_entropy").copied(),
        AlarmKind::EntropyCollapse => now.get("drift/token_entropy").copied(),
        AlarmKind::KlBudget => now.get("drift/kl_to_seed").copied(),
        AlarmKind::EnsembleDisagreement => {
            const KEY: &str = "proxy/eval_disagreement";
            let first = history.iter().find_map(|m| m.get(KEY))?;
            Some(now.get(KEY)? - first)
        }
    }
}

/// The alarms that fire on the last round of `history`.
pub fn check_alarms(history: &[BTreeMap<String, f64>], alarms: &[AlarmConfig]) -> Vec<Fired> {
    alarms
        .iter()
        .filter_map(|a| {
            let v = alarm_value(a.kind, history)?;
            let (fires, rel) = match a.kind {
                AlarmKind::ProxyGoldDivergence
                | AlarmKind::KlBudget
                | AlarmKind::EnsembleDisagreement => (v > a.threshold, ">"),
                AlarmKind::ExplorationCollapse | AlarmKind::EntropyCollapse => {
                    (v < a.threshold, "<")
                }
            };
            fires.then(|| Fired {
                kind: a.kind,
                value: v,
                threshold: a.threshold,
                action: a.action,
                message: format!("{} {v:.4} {rel} {}", a.kind.name(), a.threshold),
            })
        })
        .collect()
}

/// The round with the best held-out pass@1 in `history` (the earliest on ties).
pub fn best_round(history: &[BTreeMap<String, f64>]) -> Option<u32> {
    history
        .iter()
        .filter_map(|m| Some((*m.get("round")? as u32, *m.get("eval/pass@1")?)))
        .reduce(|a, b| if b.1 > a.1 { b } else { a })
        .map(|(r, _)| r)
}

/// The decision after the last round of `history`: alarms, early stopping after `patience`
/// rounds without a new best pass@1 (0: never), and the next round's parent.
pub fn decide(
    history: &[BTreeMap<String, f64>],
    alarms: &[AlarmConfig],
    patience: u32,
) -> Decision {
    let mut d = Decision {
        alarms: check_alarms(history, alarms),
        ..Decision::default()
    };
    let round = history
        .last()
        .and_then(|m| m.get("round"))
        .map_or(0, |&r| r as u32);
    let best = best_round(history).unwrap_or(round);
    if let Some(a) = d.alarms.iter().find(|a| a.action == AlarmAction::Stop) {
        d.stop = Some(format!("alarm {}", a.message));
    } else if patience > 0 && round >= best + patience {
        d.stop = Some(format!(
            "held-out pass@1 has not improved on round {best} for {patience} rounds"
        ));
    }
    if d.stop.is_none()
        && best != round
        && d.alarms.iter().any(|a| a.action == AlarmAction::Rollback)
    {
        d.next_parent = Some(best);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn alarm(kind: AlarmKind, threshold: f64, action: AlarmAction) -> AlarmConfig {
        AlarmConfig {
            kind,
            threshold,
            action,
        }
    }

    #[test]
    fn issue18_disagreement_alarm_is_the_rise_since_the_first_round_that_has_it() {
        let h = vec![
            line(&[("round", 0.0), ("proxy/eval_disagreement", 0.40)]),
            line(&[("round", 1.0), ("proxy/eval_disagreement", 0.41)]),
            line(&[("round", 2.0), ("proxy/eval_disagreement", 0.43)]),
        ];
        let v = alarm_value(AlarmKind::EnsembleDisagreement, &h).unwrap();
        assert!((v - 0.03).abs() < 1e-12);
        let alarm = |threshold| AlarmConfig {
            kind: AlarmKind::EnsembleDisagreement,
            threshold,
            action: AlarmAction::Stop,
        };
        assert_eq!(check_alarms(&h, &[alarm(0.02)]).len(), 1);
        assert!(check_alarms(&h[..2], &[alarm(0.02)]).is_empty());
        // Without an ensemble there is nothing to watch.
        assert_eq!(
            alarm_value(AlarmKind::EnsembleDisagreement, &[line(&[("round", 1.0)])]),
            None
        );
    }

    #[test]
    fn divergence_is_proxy_gain_minus_gold_gain_since_round_one() {
        let h = vec![
            line(&[("round", 0.0), ("eval/pass@1", 0.3)]),
            line(&[("round", 1.0), ("proxy/reward", 0.5), ("gold/reward", 0.4)]),
            line(&[("round", 2.0), ("proxy/reward", 0.7), ("gold/reward", 0.3)]),
        ];
        let v = alarm_value(AlarmKind::ProxyGoldDivergence, &h).unwrap();
        assert!((v - 0.3).abs() < 1e-12);
        let a = [alarm(
            AlarmKind::ProxyGoldDivergence,
            0.25,
            AlarmAction::Warn,
        )];
        assert_eq!(check_alarms(&h, &a).len(), 1);
        let a = [alarm(
            AlarmKind::ProxyGoldDivergence,
            0.35,
            AlarmAction::Warn,
        )];
        assert!(check_alarms(&h, &a).is_empty());
        // Without a proxy the alarm has nothing to watch.
        assert_eq!(alarm_value(AlarmKind::ProxyGoldDivergence, &h[..1]), None);
    }

    #[test]
    fn collapse_alarms_fire_below_and_budgets_above() {
        let h = vec![line(&[
            ("round", 3.0),
            ("explore/answer_entropy", 0.01),
            ("drift/token_entropy", 0.2),
            ("drift/kl_to_seed", 12.0),
        ])];
        let fired = check_alarms(
            &h,
            &[
                alarm(AlarmKind::ExplorationCollapse, 0.05, AlarmAction::Warn),
                alarm(AlarmKind::EntropyCollapse, 0.05, AlarmAction::Warn),
                alarm(AlarmKind::KlBudget, 10.0, AlarmAction::Warn),
            ],
        );
        let kinds: Vec<_> = fired.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![AlarmKind::ExplorationCollapse, AlarmKind::KlBudget]
        );
        assert_eq!(fired[1].message, "kl_budget 12.0000 > 10");
    }

    #[test]
    fn decisions_stop_roll_back_and_stop_early() {
        let h = vec![
            line(&[("round", 0.0), ("eval/pass@1", 0.2)]),
            line(&[
                ("round", 1.0),
                ("eval/pass@1", 0.5),
                ("drift/kl_to_seed", 1.0),
            ]),
            line(&[
                ("round", 2.0),
                ("eval/pass@1", 0.4),
                ("drift/kl_to_seed", 5.0),
            ]),
        ];
        let kl = |action| [alarm(AlarmKind::KlBudget, 3.0, action)];
        let d = decide(&h, &kl(AlarmAction::Rollback), 0);
        assert_eq!((d.next_parent, d.stop.is_none()), (Some(1), true));
        let d = decide(&h, &kl(AlarmAction::Stop), 0);
        assert!(d.stop.unwrap().contains("kl_budget"));
        assert_eq!(d.next_parent, None);
        // Warn only: no change of course; patience 1 stops (round 2 did not beat round 1).
        let d = decide(&h, &kl(AlarmAction::Warn), 1);
        assert_eq!(d.alarms.len(), 1);
        assert!(d.stop.unwrap().contains("round 1 for 1 rounds"));
        assert_eq!(decide(&h, &[], 2).stop, None);
        // A rollback to the current round (the best so far) is no rollback.
        let d = decide(
            &h[..2],
            &[alarm(AlarmKind::KlBudget, 0.5, AlarmAction::Rollback)],
            0,
        );
        assert_eq!((d.alarms.len(), d.next_parent), (1, None));
    }
}
