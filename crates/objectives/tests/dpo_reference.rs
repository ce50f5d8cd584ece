//! The DPO family against TRL 1.16's `DPOTrainer._compute_loss`, on the fixed arrays of
//! `fixtures/dpo_reference.json` (written by `reference/make_dpo_reference.py`, which runs
//! TRL's method on a stand-in model and takes the token weights by autograd).

use autodidact_objectives::{dpo, DpoInputs, DpoLoss, DpoSettings};
use serde_json::Value;

mod common;
use common::{close, vec1, vec2};

#[test]
fn dpo_family_matches_trl() {
    let f: Value = serde_json::from_str(include_str!("fixtures/dpo_reference.json")).unwrap();
    let chosen = vec2(&f["chosen"]);
    let rejected = vec2(&f["rejected"]);
    let ref_chosen = vec1(&f["ref_chosen"]);
    let ref_rejected = vec1(&f["ref_rejected"]);
    let pairs = chosen.len();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 17);
    for case in cases {
        let name = case["loss_type"].as_str().unwrap();
        let loss = DpoLoss::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .unwrap_or_else(|| panic!("unknown loss {name}"));
        let s = DpoSettings {
            loss,
            beta: case["beta"].as_f64().unwrap() as f32,
            label_smoothing: case["label_smoothing"].as_f64().unwrap() as f32,
        };
        let what = format!("{name} β={} ε={}", s.beta, s.label_smoothing);
        let out = dpo(
            &s,
            &DpoInputs {
                chosen: &chosen,
                rejected: &rejected,
                ref_chosen: &ref_chosen,
                ref_rejected: &ref_rejected,
                weights: None,
            },
            pairs,
        );
        close(
            out.loss,
            case["loss"].as_f64().unwrap(),
            &format!("{what} loss"),
        );
        // TRL's rows are [chosen..., rejected...], zero-padded to the longest completion.
        let want = vec2(&case["weights"]);
        let got = out.chosen_weights.iter().chain(&out.rejected_weights);
        for (i, (g, w)) in got.zip(&want).enumerate() {
            assert!(w[g.len()..].iter().all(|&x| x == 0.0));
            for (t, (a, b)) in g.iter().zip(w).enumerate() {
                close(
                    *a as f64,
                    *b as f64,
                    &format!("{what} weight row {i} token {t}"),
                );
            }
        }
        if let Some(m) = case["metrics"].as_object() {
            let ours = out.stats.metrics();
            assert_eq!(ours.len(), m.len(), "{what}: metric names");
            for (k, v) in m {
                close(ours[k], v.as_f64().unwrap(), &format!("{what} {k}"));
            }
        }
    }
}

/// Per-pair weights scale each pair's loss and weights (ScPO's vote margin).
#[test]
fn pair_weights_scale_each_pair() {
    let c = vec![vec![-1.0f32, -2.0], vec![-0.5]];
    let r = vec![vec![-1.5f32], vec![-0.7, -0.1]];
    let (rc, rr) = ([-2.5f32, -0.4], [-1.0f32, -1.0]);
    let s = DpoSettings::default();
    let run = |w: Option<&[f32]>| {
        dpo(
            &s,
            &DpoInputs {
                chosen: &c,
                rejected: &r,
                ref_chosen: &rc,
                ref_rejected: &rr,
                weights: w,
            },
            2,
        )
    };
    let plain = run(None);
    let weighted = run(Some(&[0.5, 0.0]));
    assert_eq!(weighted.chosen_weights[1], vec![0.0]);
    assert_eq!(weighted.rejected_weights[1], vec![0.0, 0.0]);
    assert!((weighted.chosen_weights[0][0] - 0.5 * plain.chosen_weights[0][0]).abs() < 1e-9);
    // The metrics describe the pairs whatever their weights.
    assert_eq!(weighted.stats, plain.stats);
}
