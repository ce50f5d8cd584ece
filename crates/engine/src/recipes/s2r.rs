//! `s2r` (S²R, Ma et al. 2025): the model verifies its own answer, and corrects it only when
//! its verification says it is wrong. An episode is three actions, each a sequence of its own
//! ([`crate::episode::verified_episodes`]): the first attempt; the verification, `Y`/`N`
//! after `¿` natively, `Yes`/`No` to [`crate::episode::VERIFY_INSTRUCTION`] in chat; and,
//! after a `N`, the second attempt. The episode's answer is the second attempt's where there
//! is one, else the first's.
//!
//! Training, per round:
//! - the first `init_rounds` rounds are S²R's behaviour initialization: supervised
//!   fine-tuning (`[correct.sft]`'s `train` and `max_per_problem`; its `source`,
//!   `keep_right` and `first_attempts` do not apply) on verifications written from the
//!   verifier's grades of the round's own first attempts (each distinct first attempt
//!   followed by the verdict it deserves) and, after each distinct wrong one and the verdict
//!   `N`, a right sample of the same problem as the correction ([`init_examples`]);
//! - later rounds run a policy gradient on every action of the round's episodes, with the
//!   update settings of `[correct.score]` (epochs, batch sizes, clip range, `beta` and its
//!   KL estimator; `alpha` and the `stage_one_*` settings do not apply). `reward` chooses the
//!   credit ([`S2rReward`]): `outcome` gives every action of an episode the episode's final
//!   correctness less its mean over the problem's episodes; `process` gives each action its
//!   own reward less the mean of that action's rewards over the problem's episodes: a
//!   solution its correctness, a verification 1 when it agrees with the verifier.
//!
//! How this differs from the paper:
//! - S²R's trajectories may verify and correct several times; an episode here stops after
//!   one correction (two attempts), the setting SCoRe and the held-out measures share.
//! - S²R builds its initialization data with a stronger model's help and filters it; here
//!   it comes from the policy's own samples graded by the task's verifier, with no help.
//! - The RL step is the engine's clipped offline policy gradient over the round's episodes
//!   (as `score`), with the group mean as the baseline (S²R uses RLOO for outcome rewards and
//!   a per-action group baseline for process rewards, which is what `process` does).
//! - A verification that says neither `Y` nor `N` ends the episode: its answer stands, and
//!   the verification earns 0 under `process`.

use super::correct::{centred, pair_corrections, rollout_line, SftSettings};
use crate::episode::{EpisodeFormat, Verified};
use crate::trainer::RolloutLine;
use crate::Result;
use autodidact_core::{Example, Group, Task, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How `s2r`'s policy gradient credits an episode's actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum S2rReward {
    /// Every action gets the episode's final correctness, less its mean over the problem's
    /// episodes.
    #[default]
    Outcome,
    /// Each action gets its own reward (a solution its correctness, a verification its
    /// agreement with the verifier), less that action's mean over the problem's episodes.
    Process,
}

/// `s2r`'s settings (`[correct.s2r]`); its policy-gradient update is `[correct.score]`'s.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2rSettings {
    /// Rounds of behaviour initialization (supervised, `[correct.sft]`) before the policy
    /// gradient rounds.
    pub init_rounds: u32,
    pub reward: S2rReward,
}

/// Every action of every episode as a rollout line, with its advantage under `reward` and
/// the KL coefficient `beta`; lines that would train nothing are left out.
pub(super) fn s2r_lines(
    firsts: &[Group],
    v: &Verified,
    reward: S2rReward,
    beta: f32,
) -> (Vec<RolloutLine>, BTreeMap<String, f64>) {
    let mut lines = Vec::new();
    for (g, a) in firsts.iter().enumerate() {
        let k = a.completions.len();
        let r1: Vec<f32> = a.verdicts.iter().map(|v| v.score).collect();
        let rv: Vec<f32> = (0..k)
            .map(|j| (v.checks[g][j].says_right == Some(a.verdicts[j].is_correct())) as u8 as f32)
            .collect();
        let fin: Vec<f32> = (0..k)
            .map(|j| v.final_verdict(firsts, g, j).score)
            .collect();
        let r2: Vec<f32> = v.seconds[g]
            .iter()
            .flatten()
            .map(|s| s.verdict.score)
            .collect();
        let mean2 = r2.iter().sum::<f32>() / r2.len().max(1) as f32;
        let (adv1, advv) = match reward {
            S2rReward::Outcome => (centred(&fin), centred(&fin)),
            S2rReward::Process => (centred(&r1), centred(&rv)),
        };
        for j in 0..k {
            let check = &v.checks[g][j];
            lines.extend(rollout_line(
                &a.problem.prompt,
                &a.completions[j],
                r1[j],
                adv1[j],
                beta,
            ));
            lines.extend(rollout_line(
                &check.prompt,
                &check.completion,
                rv[j],
                advv[j],
                beta,
            ));
            if let Some(s) = &v.seconds[g][j] {
                let adv = match reward {
                    S2rReward::Outcome => adv1[j],
                    S2rReward::Process => s.verdict.score - mean2,
                };
                lines.extend(rollout_line(
                    &s.prompt,
                    &s.completion,
                    s.verdict.score,
                    adv,
                    beta,
                ));
            }
        }
    }
    let m = BTreeMap::from([("s2r/trained".to_string(), lines.len() as f64)]);
    (lines, m)
}

/// Behaviour-initialization examples from a round's own first attempts: each distinct first
/// attempt (at most `max_per_problem` right and as many wrong ones per problem, 0: all)
/// under its verification prompt, followed by the verdict the verifier gives it; and the
/// Pair-SFT corrections after the verdict `N` ([`pair_corrections`]).
pub(super) fn init_examples(
    firsts: &[Group],
    s: &SftSettings,
    format: EpisodeFormat,
    tok: &dyn Tokenizer,
    task: &dyn Task,
) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for g in firsts {
        for right in [true, false] {
            let kept = super::star::capped(
                g.distinct(|i| g.verdicts[i].is_correct() == right),
                s.max_per_problem,
            );
            for i in kept {
                out.push(Example::new(
                    format.verify_prompt(tok, &g.problem, &g.completions[i].text)?,
                    format.verdict(right).to_string(),
                ));
            }
        }
    }
    let corrections = SftSettings {
        keep_right: false,
        ..s.clone()
    };
    let check = format.verdict(false);
    out.extend(pair_corrections(firsts, &corrections, |p, first| {
        format.corrected_prompt(tok, task, p, first, check)
    })?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::{Attempt, Check};
    use crate::testutil::group;
    use autodidact_core::{Completion, FinishReason};

    fn completion(text: &str) -> Completion {
        Completion {
            text: text.into(),
            tokens: vec![3; text.len()],
            logprobs: vec![-0.5; text.len()],
            finish: FinishReason::Stop,
            top_logprobs: Vec::new(),
        }
    }

    /// One episode: (first, right?, verification says right?, second and right?).
    type Episode<'a> = (&'a str, bool, Option<bool>, Option<(&'a str, bool)>);

    /// One problem's episodes.
    fn episodes(items: &[Episode]) -> (Vec<Group>, Verified) {
        let ans = |ok: bool| Some(if ok { "1" } else { "0" });
        let rows: Vec<(&str, Option<&str>, bool)> =
            items.iter().map(|&(t, ok, ..)| (t, ans(ok), ok)).collect();
        let mut a = group("p", &rows);
        a.completions = items.iter().map(|(t, ..)| completion(t)).collect();
        let checks = items
            .iter()
            .map(|&(t, _, says, _)| Check {
                prompt: format!("p={t}¿"),
                completion: completion(match says {
                    Some(true) => "Y",
                    Some(false) => "N",
                    None => "?",
                }),
                says_right: says,
            })
            .collect();
        let seconds = items
            .iter()
            .map(|&(t, _, _, second)| {
                second.map(|(s, ok)| {
                    let g = group("p", &[(s, ans(ok), ok)]);
                    Attempt {
                        prompt: format!("p={t}¿N↺"),
                        completion: completion(s),
                        verdict: g.verdicts[0].clone(),
                    }
                })
            })
            .collect();
        (
            vec![a],
            Verified {
                checks: vec![checks],
                seconds: vec![seconds],
            },
        )
    }

    /// Outcome and process credit in closed form, and the measures of the verifications.
    #[test]
    fn issue20_s2r_rewards_in_closed_form() {
        // wrong, caught, corrected; right, confirmed; right, false alarm, spoiled; wrong,
        // missed; wrong, unreadable verification.
        let (firsts, v) = episodes(&[
            ("a", false, Some(false), Some(("b", true))),
            ("c", true, Some(true), None),
            ("d", true, Some(false), Some(("e", false))),
            ("f", false, Some(true), None),
            ("g", false, None, None),
        ]);
        // Final correctness 1, 1, 0, 0, 0: mean 0.4.
        let d = v.deltas(&firsts);
        assert_eq!((d.t1, d.t2), (0.4, 0.4));
        assert_eq!((d.i_to_c, d.c_to_i), (0.2, 0.2));
        let st = v.stats(&firsts);
        assert_eq!(st.accuracy, 0.4); // a and c agree
        assert_eq!(st.flagged, 0.4);
        assert!((st.error_recall - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(st.false_alarm, 0.5);
        assert_eq!(st.unread, 0.2);
        assert_eq!(v.stats(&firsts).metrics("eval/").len(), 5);

        let (lines, m) = s2r_lines(&firsts, &v, S2rReward::Outcome, 0.0);
        let adv: BTreeMap<String, f32> = lines
            .iter()
            .map(|l| (format!("{}{}", l.prompt, l.completion), l.advantage))
            .collect();
        let close = |k: &str, want: f32| {
            assert!((adv[k] - want).abs() < 1e-6, "{k}: {} vs {want}", adv[k]);
        };
        // Every action of an episode shares its final advantage.
        for k in ["p=a", "p=a¿N", "p=a¿N↺b", "p=c", "p=c¿Y"] {
            close(k, 0.6);
        }
        for k in ["p=d", "p=d¿N", "p=d¿N↺e", "p=f", "p=f¿Y", "p=g", "p=g¿?"] {
            close(k, -0.4);
        }
        assert_eq!(lines.len(), 12);
        assert_eq!(m["s2r/trained"], 12.0);

        let (lines, _) = s2r_lines(&firsts, &v, S2rReward::Process, 0.1);
        let adv: BTreeMap<String, (f32, f32, Option<f32>)> = lines
            .iter()
            .map(|l| {
                (
                    format!("{}{}", l.prompt, l.completion),
                    (l.reward, l.advantage, l.kl_coef),
                )
            })
            .collect();
        let close = |k: &str, reward: f32, want: f32| {
            let (r, a, c) = adv[k];
            assert!(
                (a - want).abs() < 1e-6 && r == reward,
                "{k}: {r} {a} vs {reward} {want}"
            );
            assert_eq!(c, Some(0.1));
        };
        // First attempts: 0, 1, 1, 0, 0 (mean 0.4).
        close("p=a", 0.0, -0.4);
        close("p=c", 1.0, 0.6);
        // Verifications agree 1, 1, 0, 0, 0 (mean 0.4).
        close("p=a¿N", 1.0, 0.6);
        close("p=d¿N", 0.0, -0.4);
        close("p=g¿?", 0.0, -0.4);
        // Second attempts 1 and 0 (mean 0.5).
        close("p=a¿N↺b", 1.0, 0.5);
        close("p=d¿N↺e", 0.0, -0.5);
        assert_eq!(lines.len(), 12);
    }

    /// Initialization examples: every distinct first attempt with the verdict it deserves,
    /// then the corrections after `N`.
    #[test]
    fn issue20_s2r_init_examples() {
        let g = group(
            "p",
            &[
                ("w1", Some("0"), false),
                ("r1", Some("1"), true),
                ("w1", Some("0"), false),
                ("w2", None, false),
            ],
        );
        let task = autodidact_tasks::AdditionConfig::default().build().unwrap();
        let tok = autodidact_core::CharTokenizer::new("p=wr12¿YN↺").unwrap();
        let ex = init_examples(
            std::slice::from_ref(&g),
            &SftSettings::default(),
            EpisodeFormat::of(&tok),
            &tok,
            &task,
        )
        .unwrap();
        let got: Vec<(&str, &str)> = ex
            .iter()
            .map(|e| (e.prompt.as_str(), e.completion.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("p=r1¿", "Y"),
                ("p=w1¿", "N"),
                ("p=w2¿", "N"),
                ("p=w1¿N↺", "r1"),
                ("p=w2¿N↺", "r1"),
            ]
        );
    }
}
