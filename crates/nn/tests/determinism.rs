//! Training and sampling are bit-for-bit reproducible for a fixed thread count: resumed runs
//! depend on it (issue 3).

use autodidact_nn::{
    Activations, AdamWConfig, ForwardOptions, Gradients, Rng, SamplingConfig, TokenBatch,
    TransformerConfig,
};

fn train(batch: usize, steps: usize) -> Vec<f32> {
    let mut model = TransformerConfig::tiny(20).build(1).unwrap();
    let mut opt = AdamWConfig::default().build(&model).unwrap();
    let mut act = Activations::new();
    let mut grads = Gradients::new(&model);
    let mut rng = Rng::new(5);
    for _ in 0..steps {
        let seqs: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                (0..10 + rng.below(30) as usize)
                    .map(|_| rng.below(20) as u32)
                    .collect()
            })
            .collect();
        let tb = TokenBatch::from_sequences(&seqs).unwrap();
        let out = model
            .forward(&tb, ForwardOptions::default(), &mut act)
            .unwrap();
        let w = vec![1.0 / tb.num_tokens() as f32; out.logprobs.len()];
        model.backward(&mut act, &w, None, &mut grads).unwrap();
        grads.clip_global_norm(0.5);
        opt.step(model.params_mut(), &grads.data, 1e-3).unwrap();
        grads.zero();
    }
    model.params().to_vec()
}

#[test]
fn training_is_bitwise_reproducible() {
    for batch in [1, 3, 32] {
        let a = train(batch, 6);
        for _ in 0..3 {
            let b = train(batch, 6);
            let diff = a
                .iter()
                .zip(&b)
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            assert_eq!(
                diff, 0,
                "batch {batch}: {diff} parameters differ between identical runs"
            );
        }
    }
}

#[test]
fn sampling_is_bitwise_reproducible() {
    let model = TransformerConfig::tiny(20).build(2).unwrap();
    let prompts: Vec<Vec<u32>> = (0..40).map(|i| vec![1, 3 + (i % 15) as u32, 4]).collect();
    let seeds: Vec<u64> = (0..40).collect();
    let cfg = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 30,
        stop_tokens: vec![2],
        top_logprobs: 0,
    };
    let a = model.sample(&prompts, &seeds, &cfg).unwrap();
    for _ in 0..3 {
        assert_eq!(model.sample(&prompts, &seeds, &cfg).unwrap(), a);
    }
}
