//! The reward-model losses against their references, on the fixed arrays of
//! `fixtures/reward_reference.json` (written by `reference/make_reward_reference.py`):
//! Bradley–Terry as TRL 1.16's `RewardTrainer` computes it (with and without margins and
//! reward centering), and the outcome loss as PyTorch's `binary_cross_entropy_with_logits`,
//! with gradients by autograd.

use autodidact_objectives::{bradley_terry, outcome_bce};
use serde_json::Value;

mod common;
use common::{close, vec1};

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/reward_reference.json")).unwrap()
}

#[test]
fn issue18_bradley_terry_matches_trl_reward_trainer() {
    let f = fixture();
    let (c, r, m) = (vec1(&f["chosen"]), vec1(&f["rejected"]), vec1(&f["margin"]));
    let center = f["center"].as_f64().unwrap() as f32;
    for (key, margins, center) in [
        ("plain", None, 0.0),
        ("margin_center", Some(&m[..]), center),
    ] {
        let want = &f[key];
        let got = bradley_terry(&c, &r, margins, center);
        close(
            got.loss,
            want["loss"].as_f64().unwrap(),
            &format!("{key} loss"),
        );
        for (i, (g, w)) in got
            .grad_chosen
            .iter()
            .zip(vec1(&want["grad_chosen"]))
            .enumerate()
        {
            close(*g as f64, w as f64, &format!("{key} grad_chosen[{i}]"));
        }
        for (i, (g, w)) in got
            .grad_rejected
            .iter()
            .zip(vec1(&want["grad_rejected"]))
            .enumerate()
        {
            close(*g as f64, w as f64, &format!("{key} grad_rejected[{i}]"));
        }
        close(got.accuracy, want["accuracy"].as_f64().unwrap(), "accuracy");
        close(got.margin, want["margin"].as_f64().unwrap(), "margin");
    }
}

#[test]
fn issue18_outcome_loss_matches_pytorch_bce_with_logits() {
    let f = &fixture()["bce"];
    let got = outcome_bce(&vec1(&f["scores"]), &vec1(&f["labels"]));
    close(got.loss, f["loss"].as_f64().unwrap(), "bce loss");
    for (i, (g, w)) in got.grad.iter().zip(vec1(&f["grad"])).enumerate() {
        close(*g as f64, w as f64, &format!("bce grad[{i}]"));
    }
}
