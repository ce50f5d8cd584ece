// Printed by check_hf_reward_load.py (transformers 5.24.0, torch 2.15.0+cu132).
#[allow(clippy::excessive_precision)]
const HF_REWARD_SCORES: [f32; 2] = [-4.158268451690674, 4.14553165435791];
