//! End to end: forward, backward, AdamW with warm-up and cosine decay, and sampling together
//! teach a tiny model a deterministic task (continue "digits counting up, wrapping at 9").

use autodidact_core::CharTokenizer;
use autodidact_nn::{
    Activations, AdamWConfig, ForwardOptions, Gradients, Rng, SamplingConfig, TokenBatch,
    TransformerConfig,
};

#[test]
fn tiny_model_learns_to_count() {
    let tok = CharTokenizer::new("0123456789").unwrap();
    let mut cfg = TransformerConfig::tiny(tok.vocab_size());
    cfg.num_layers = 2;
    cfg.context_length = 16;
    let mut model = cfg.build(1).unwrap();
    // Warm-up over 20 steps to 3e-3, cosine decay to a tenth of it at step 300.
    let lr_at = |step: u64| -> f32 {
        if step < 20 {
            return 3e-3 * (step + 1) as f32 / 20.0;
        }
        let progress = (step - 20).min(280) as f64 / 280.0;
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        3e-4 + 2.7e-3 * cos as f32
    };
    let mut opt = AdamWConfig::default().build(&model).unwrap();
    let mut act = Activations::new();
    let mut grads = Gradients::new(&model);
    let mut rng = Rng::new(3);
    let seq = |start: u64, len: usize| -> Vec<u32> {
        let text: String = (0..len)
            .map(|i| char::from(b'0' + ((start as usize + i) % 10) as u8))
            .collect();
        tok.encode_with_bos(&text).unwrap()
    };
    let mut first = None;
    let mut last = 0.0;
    for step in 0..300 {
        // Rows of different lengths, so packing and padding are exercised.
        let seqs: Vec<Vec<u32>> = (0..16)
            .map(|_| seq(rng.below(10), 4 + rng.below(11) as usize))
            .collect();
        let b = TokenBatch::from_sequences(&seqs).unwrap();
        let out = model
            .forward(&b, ForwardOptions::default(), &mut act)
            .unwrap();
        let n = b.num_tokens() as f32;
        let loss = -out.logprobs.iter().sum::<f32>() / n;
        first.get_or_insert(loss);
        last = loss;
        grads.zero();
        model
            .backward(
                &mut act,
                &vec![1.0 / n; b.batch_size() * b.seq_len()],
                None,
                &mut grads,
            )
            .unwrap();
        grads.clip_global_norm(1.0);
        opt.step(model.params_mut(), &grads.data, lr_at(step))
            .unwrap();
    }
    let first = first.unwrap();
    println!("loss {first:.3} → {last:.4}");
    // Every token but the first digit after <bos> is determined, so the loss can approach ln(10)/len.
    assert!(first > 2.0 && last < 0.35, "loss {first} → {last}");

    let prompts = vec![
        tok.encode_with_bos("3456").unwrap(),
        tok.encode_with_bos("89").unwrap(),
    ];
    let out = model
        .sample(&prompts, &[0, 1], &SamplingConfig::greedy(6, vec![]))
        .unwrap();
    assert_eq!(tok.decode(&out[0].tokens).unwrap(), "789012");
    assert_eq!(tok.decode(&out[1].tokens).unwrap(), "012345");
}
