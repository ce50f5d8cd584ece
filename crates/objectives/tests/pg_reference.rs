//! Advantages and the GRPO-family loss against TRL 1.16's implementation, on the fixed arrays
//! of `fixtures/pg_reference.json` (written by `reference/make_pg_reference.py`, which runs
//! TRL's formulas and TRL's `nanstd` in PyTorch and takes gradients by autograd).

use autodidact_objectives::{
    advantages, policy_gradient, Advantage, AdvantageEstimator, BatchShape, KlEstimator,
    LossAggregation, PgInputs, PgSettings, RewardScaling,
};
use serde_json::Value;

mod common;
use common::{close, vec1, vec2};

fn fixture() -> Value {
    let text = include_str!("fixtures/pg_reference.json");
    serde_json::from_str(text).unwrap()
}

#[test]
fn advantages_match_trl() {
    let f = fixture();
    let rewards = vec1(&f["rewards"]);
    let g = f["group_size"].as_u64().unwrap() as usize;
    let cases = [
        ("grpo_group", AdvantageEstimator::Grpo, RewardScaling::Group),
        ("grpo_batch", AdvantageEstimator::Grpo, RewardScaling::Batch),
        ("grpo_none", AdvantageEstimator::Grpo, RewardScaling::None),
        (
            "grpo_none",
            AdvantageEstimator::DrGrpo,
            RewardScaling::Group,
        ),
        ("rloo", AdvantageEstimator::Rloo, RewardScaling::Group),
        (
            "reinforce",
            AdvantageEstimator::Reinforce,
            RewardScaling::Group,
        ),
    ];
    for (key, est, scale) in cases {
        let got = advantages(&rewards, g, est, scale);
        let want = vec1(&f["advantages"][key]);
        for (a, b) in got.values.iter().zip(&want) {
            close(*a as f64, *b as f64, key);
        }
        assert_eq!(
            got.zero_std,
            [false, true],
            "the second group's rewards are all equal"
        );
    }
}

#[test]
fn clipped_surrogate_with_kl_and_entropy_matches_trl() {
    let f = fixture();
    let lp = vec2(&f["logprobs"]);
    let old = vec2(&f["old_logprobs"]);
    let refp = vec2(&f["ref_logprobs"]);
    let ent = vec2(&f["entropies"]);
    let adv = vec1(&f["advantages"]["grpo_group"]);
    let mut shape = BatchShape::of(&lp);
    shape.max_len = f["max_completion_length"].as_u64().unwrap() as usize;
    for case in f["cases"].as_array().unwrap() {
        let s = PgSettings {
            epsilon_low: case["epsilon_low"].as_f64().unwrap() as f32,
            epsilon_high: case["epsilon_high"].as_f64().unwrap() as f32,
            aggregation: serde_json::from_value::<LossAggregation>(case["aggregation"].clone())
                .unwrap(),
            beta: case["beta"].as_f64().unwrap() as f32,
            kl_estimator: serde_json::from_value::<KlEstimator>(case["kl_estimator"].clone())
                .unwrap(),
            entropy_coef: case["entropy_coef"].as_f64().unwrap() as f32,
        };
        let name = format!("{s:?}");
        let inputs = PgInputs {
            logprobs: &lp,
            old_logprobs: &old,
            ref_logprobs: Some(&refp),
            entropies: Some(&ent),
            advantages: Advantage::PerSequence(&adv),
            kl_coefs: None,
        };
        let out = policy_gradient(&s, &inputs, shape);
        close(
            out.loss,
            case["loss"].as_f64().unwrap(),
            &format!("loss {name}"),
        );
        for (row, want) in out.weights.iter().zip(vec2(&case["weights"])) {
            for (a, b) in row.iter().zip(&want) {
                close(*a as f64, *b as f64, &format!("weight {name}"));
            }
        }
        match (&out.entropy_coefs, case["entropy_coefs"].is_null()) {
            (None, true) => {}
            (Some(c), false) => {
                for (row, want) in c.iter().zip(vec2(&case["entropy_coefs"])) {
                    for (a, b) in row.iter().zip(&want) {
                        close(*a as f64, *b as f64, &format!("entropy coef {name}"));
                    }
                }
            }
            _ => panic!("{name}: entropy coefficients present in one and not the other"),
        }
        assert_eq!(
            out.stats.clipped_low as u64,
            case["clipped_low"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            out.stats.clipped_high as u64,
            case["clipped_high"].as_u64().unwrap(),
            "{name}"
        );
        close(
            out.stats.kl,
            case["kl_sum"].as_f64().unwrap(),
            &format!("kl {name}"),
        );
    }
}
