//! KV-cache sampling against full recomputation, row independence, and stopping rules.

use autodidact_nn::sample::pick;
use autodidact_nn::{
    Activations, FinishReason, ForwardOptions, Rng, Sample, SamplingConfig, TokenBatch,
    Transformer, TransformerConfig,
};

fn model() -> Transformer {
    model_with(32, 4)
}

/// `hidden / heads` is the head dimension: 8 exercises the 8-lane path of decode attention,
/// 12 its remainder path too.
fn model_with(hidden: usize, heads: usize) -> Transformer {
    let cfg = TransformerConfig {
        vocab_size: 13,
        hidden_size: hidden,
        num_layers: 2,
        num_heads: heads,
        num_kv_heads: heads,
        intermediate_size: 48,
        context_length: 24,
        rope_theta: 10_000.0,
        rope_scaling: None,
        qkv_bias: false,
        rms_norm_eps: 1e-5,
        tie_embeddings: false,
        // Large enough that the next-token distributions are far from uniform.
        initializer_range: 0.3,
    };
    cfg.build(42).unwrap()
}

fn prompts(n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            (0..1 + rng.below(6) as usize)
                .map(|_| rng.below(13) as u32)
                .collect()
        })
        .collect()
}

/// Sampling without a cache: the whole sequence is re-run through the training forward pass
/// for every new token, and the same token picker and per-row generator are used.
fn sample_by_recomputation(
    m: &Transformer,
    prompt: &[u32],
    seed: u64,
    cfg: &SamplingConfig,
) -> Sample {
    let v = m.config().vocab_size;
    let mut rng = Rng::new(seed);
    let mut seq = prompt.to_vec();
    let mut act = Activations::new();
    let mut out = Sample {
        tokens: vec![],
        logprobs: vec![],
        finish: FinishReason::Length,
        top: vec![],
    };
    loop {
        let n = seq.len();
        // Inputs are the whole sequence; targets are unused here.
        let batch = TokenBatch::new(seq.clone(), vec![0; n], vec![n], n).unwrap();
        let f = m
            .forward(
                &batch,
                ForwardOptions {
                    entropy: false,
                    logits: true,
                },
                &mut act,
            )
            .unwrap();
        let logits = &f.logits.unwrap()[(n - 1) * v..n * v];
        let tok = pick(logits, cfg, &mut rng);
        let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = mx + logits.iter().map(|z| (z - mx).exp()).sum::<f32>().ln();
        out.tokens.push(tok);
        out.logprobs.push(logits[tok as usize] - lse);
        if cfg.top_logprobs > 0 {
            // Every token by log-prob, most likely first, ties by lower id.
            let mut all: Vec<(u32, f32)> = (0..v as u32)
                .map(|i| (i, logits[i as usize] - lse))
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(cfg.top_logprobs);
            out.top.push(all);
        }
        seq.push(tok);
        if cfg.stop_tokens.contains(&tok) {
            out.finish = FinishReason::Stop;
            return out;
        }
        if out.tokens.len() >= cfg.max_new_tokens {
            return out;
        }
        if seq.len() >= m.config().context_length {
            out.finish = FinishReason::ContextFull;
            return out;
        }
    }
}

fn configs() -> Vec<SamplingConfig> {
    let base = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 30,
        stop_tokens: vec![2],
        top_logprobs: 0,
    };
    vec![
        SamplingConfig {
            temperature: 0.0,
            ..base.clone()
        },
        base.clone(),
        SamplingConfig {
            temperature: 0.7,
            top_k: 5,
            top_logprobs: 3,
            ..base.clone()
        },
        SamplingConfig {
            temperature: 1.3,
            top_p: 0.8,
            max_new_tokens: 7,
            ..base.clone()
        },
    ]
}

#[test]
fn kv_cache_sampling_equals_full_recomputation() {
    for m in [model_with(32, 4), model_with(24, 2)] {
        check_cache_against_recomputation(&m);
    }
}

/// Issue 14: grouped-query attention (4 query heads sharing 2 and 1 key/value heads), q/k/v
/// biases and Llama-3 rope scaling in the cached path.
#[test]
fn issue14_kv_cache_with_gqa_bias_and_rope_scaling() {
    for kv in [2, 1] {
        let mut cfg = model_with(32, 4).config().clone();
        cfg.num_kv_heads = kv;
        cfg.qkv_bias = true;
        cfg.rope_scaling = Some(autodidact_nn::RopeScaling::Llama3 {
            factor: 4.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8,
        });
        let mut m = cfg.build(7).unwrap();
        // Non-zero biases, so the check covers them.
        let mut rng = Rng::new(3);
        for t in m.layout().tensors.clone() {
            if t.kind == autodidact_nn::TensorKind::Bias {
                for x in &mut m.params_mut()[t.range()] {
                    *x = rng.normal() * 0.3;
                }
            }
        }
        check_cache_against_recomputation(&m);
    }
}

fn check_cache_against_recomputation(m: &Transformer) {
    for cfg in configs() {
        for batch_size in [1, 3, 8] {
            let ps = prompts(batch_size, batch_size as u64);
            let seeds: Vec<u64> = (0..batch_size as u64).map(|i| 1000 + i).collect();
            let cached = m.sample(&ps, &seeds, &cfg).unwrap();
            let mut finishes = vec![];
            for (i, (p, s)) in ps.iter().zip(&cached).enumerate() {
                let want = sample_by_recomputation(m, p, seeds[i], &cfg);
                assert_eq!(s.tokens, want.tokens, "row {i} of {batch_size}, {cfg:?}");
                assert_eq!(s.finish, want.finish);
                // Issue 15: the top alternatives of each position, as recomputed.
                assert_eq!(s.top.len(), want.top.len());
                for (a, b) in s.top.iter().zip(&want.top) {
                    assert_eq!(a.len(), cfg.top_logprobs);
                    for (x, y) in a.iter().zip(b) {
                        assert_eq!(x.0, y.0, "alternatives {a:?} vs {b:?}");
                        assert!((x.1 - y.1).abs() < 1e-4, "{a:?} vs {b:?}");
                    }
                }
                for (a, b) in s.logprobs.iter().zip(&want.logprobs) {
                    assert!((a - b).abs() < 1e-4, "logprob {a} vs {b}");
                }
                finishes.push(s.finish);
            }
            println!(
                "batch {batch_size}, T={}: finishes {finishes:?}",
                cfg.temperature
            );
        }
    }
}

#[test]
fn a_rows_sample_does_not_depend_on_its_batch() {
    let m = model();
    let cfg = &configs()[1];
    let ps = prompts(6, 77);
    let seeds: Vec<u64> = (0..6).map(|i| 500 + i).collect();
    let together = m.sample(&ps, &seeds, cfg).unwrap();
    for i in 0..6 {
        let alone = m.sample(&ps[i..i + 1], &seeds[i..i + 1], cfg).unwrap();
        assert_eq!(alone[0].tokens, together[i].tokens, "row {i}");
    }
    // And a different neighbour order does not change it either.
    let rev_p: Vec<_> = ps.iter().rev().cloned().collect();
    let rev_s: Vec<_> = seeds.iter().rev().copied().collect();
    let reversed = m.sample(&rev_p, &rev_s, cfg).unwrap();
    for i in 0..6 {
        assert_eq!(reversed[5 - i].tokens, together[i].tokens);
    }
}

#[test]
fn rows_finish_independently() {
    let m = model();
    let v = m.config().vocab_size as u32;
    // Every token stops: each row stops after one token.
    let all_stop = SamplingConfig {
        stop_tokens: (0..v).collect(),
        ..configs()[1].clone()
    };
    let out = m.sample(&prompts(4, 1), &[1, 2, 3, 4], &all_stop).unwrap();
    assert!(out
        .iter()
        .all(|s| s.tokens.len() == 1 && s.finish == FinishReason::Stop));
    // No stop tokens: rows run to max_new_tokens or to the end of the context.
    let cfg = SamplingConfig {
        stop_tokens: vec![],
        max_new_tokens: 20,
        ..configs()[1].clone()
    };
    let ps = vec![vec![1u32], vec![1u32; 10]];
    let out = m.sample(&ps, &[5, 6], &cfg).unwrap();
    assert_eq!(
        (out[0].tokens.len(), out[0].finish),
        (20, FinishReason::Length)
    );
    assert_eq!(
        (out[1].tokens.len(), out[1].finish),
        (14, FinishReason::ContextFull)
    );
}

#[test]
fn bad_requests_are_rejected_with_the_reason() {
    let m = model();
    let cfg = &configs()[0];
    let e = m.sample(&[vec![]], &[0], cfg).unwrap_err().to_string();
    assert!(e.contains("prompt 0 has 0 tokens"), "{e}");
    let e = m.sample(&[vec![1; 24]], &[0], cfg).unwrap_err().to_string();
    assert!(e.contains("context_length 24"), "{e}");
    let e = m.sample(&[vec![99]], &[0], cfg).unwrap_err().to_string();
    assert!(e.contains("token id 99"), "{e}");
    let e = m.sample(&[vec![1]], &[], cfg).unwrap_err().to_string();
    assert!(e.contains("one seed per prompt"), "{e}");
}

/// Issue 11: a request larger than the workspace budget is sampled in chunks of rows and
/// gives exactly the samples of row-by-row sampling, with the workspace bounded.
#[test]
fn issue11_large_requests_are_chunked_to_bounded_memory_with_the_same_samples() {
    let m = model();
    let cfg = m.config().clone();
    let per_row = cfg.sample_row_bytes(6, 9);
    // A budget of 40 rows: a request of 83 rows runs as three chunks.
    let budget = 40 * per_row;
    let rows = (2 * budget / per_row) as usize + 3;
    let p = prompts(rows, 5);
    let seeds: Vec<u64> = (0..rows as u64).map(|s| s * 7 + 1).collect();
    let sc = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 3,
        stop_tokens: vec![],
        top_logprobs: 0,
    };
    let mut ws = autodidact_nn::SampleWorkspace::with_budget(budget);
    let all = m.sample_with(&p, &seeds, &sc, &mut ws).unwrap();
    assert_eq!(all.len(), rows);
    assert!(
        ws.allocated_bytes() as u64 <= budget + 4 * per_row,
        "{} bytes for {rows} rows",
        ws.allocated_bytes()
    );
    for i in [0, rows / 2, rows - 1] {
        // The same tokens; log-probs to rounding (a GEMM over one row rounds differently).
        let one = m.sample(&p[i..i + 1], &seeds[i..i + 1], &sc).unwrap();
        assert_eq!(one[0].tokens, all[i].tokens, "row {i}");
        for (a, b) in one[0].logprobs.iter().zip(&all[i].logprobs) {
            assert!((a - b).abs() < 1e-4, "row {i}: logprob {a} vs {b}");
        }
    }
}

/// Issue 11: the estimates the memory guards use bound what the buffers really take, and
/// not by much (they would refuse workloads that fit otherwise).
#[test]
fn issue11_memory_estimates_bound_the_real_buffers() {
    let m = model();
    let cfg = m.config().clone();
    let (rows, t) = (16, cfg.context_length);
    let seqs: Vec<Vec<u32>> = (0..rows)
        .map(|r| (0..=t).map(|i| ((r + i) % 13) as u32).collect())
        .collect();
    let batch = TokenBatch::from_sequences(&seqs).unwrap();
    let mut act = Activations::new();
    m.forward(&batch, ForwardOptions::default(), &mut act)
        .unwrap();
    let mut grads = autodidact_nn::Gradients::new(&m);
    let w = vec![1.0 / (rows * t) as f32; rows * t];
    m.backward(&mut act, &w, None, &mut grads).unwrap();
    let real = act.allocated_bytes() as u64;
    let est = cfg.train_activation_bytes(rows, t);
    assert!(
        real <= est && est <= 2 * real,
        "training: real {real}, estimate {est}"
    );

    let p: Vec<Vec<u32>> = (0..rows).map(|_| vec![1, 2, 3, 4, 5, 6]).collect();
    let seeds: Vec<u64> = (0..rows as u64).collect();
    let sc = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 8,
        stop_tokens: vec![],
        top_logprobs: 0,
    };
    let mut ws = autodidact_nn::SampleWorkspace::new();
    m.sample_with(&p, &seeds, &sc, &mut ws).unwrap();
    let real = ws.allocated_bytes() as u64;
    let est = rows as u64 * cfg.sample_row_bytes(6, 6 + 8);
    assert!(
        real <= est && est <= 2 * real,
        "sampling: real {real}, estimate {est}"
    );
}

/// Issue 14: a caller's stop check sees each row by its index in the whole call, across
/// chunks of rows and thread shards, and ends exactly the rows it names, where it names.
#[test]
fn issue14_stop_checks_end_the_rows_they_name_across_chunks() {
    struct EndRows;
    impl autodidact_nn::StopCheck for EndRows {
        // Row r ends after r % 5 + 1 tokens when r is a multiple of 3.
        fn stopped(&self, row: usize, generated: &[u32]) -> bool {
            row.is_multiple_of(3) && generated.len() == row % 5 + 1
        }
    }
    let m = model();
    let per_row = m.config().sample_row_bytes(6, 14);
    let rows = 50;
    let p = prompts(rows, 9);
    let seeds: Vec<u64> = (0..rows as u64).map(|s| 3 * s + 2).collect();
    let sc = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: 8,
        stop_tokens: vec![],
        top_logprobs: 0,
    };
    let free = m.sample(&p, &seeds, &sc).unwrap();
    // A budget of 16 rows: four chunks, each sharded over the threads.
    let mut ws = autodidact_nn::SampleWorkspace::with_budget(16 * per_row);
    let cut = m.sample_until(&p, &seeds, &sc, &mut ws, &EndRows).unwrap();
    for (r, (f, c)) in free.iter().zip(&cut).enumerate() {
        if r.is_multiple_of(3) {
            let n = r % 5 + 1;
            assert_eq!(c.tokens, f.tokens[..n], "row {r}");
            assert_eq!(c.finish, FinishReason::Stop, "row {r}");
        } else {
            assert_eq!(c.tokens, f.tokens, "row {r}");
            assert_eq!(c.finish, f.finish, "row {r}");
        }
    }
}

/// Issue 15: rows with settings of their own (temperature, top-k/p, length, stop tokens,
/// alternatives) share one call and sample what each samples alone.
#[test]
fn issue15_rows_with_their_own_settings_sample_as_alone() {
    let m = model();
    let rows = 9;
    let ps = prompts(rows, 31);
    let seeds: Vec<u64> = (0..rows as u64).map(|s| 40 + s).collect();
    let cfgs: Vec<SamplingConfig> = (0..rows)
        .map(|i| {
            let c = configs()[i % 4].clone();
            SamplingConfig {
                max_new_tokens: 3 + i,
                stop_tokens: if i % 2 == 0 { vec![2] } else { vec![] },
                top_logprobs: i % 3,
                ..c
            }
        })
        .collect();
    let mut ws = autodidact_nn::SampleWorkspace::new();
    let together = m
        .sample_each(&ps, &seeds, &cfgs, &mut ws, &autodidact_nn::NoStop)
        .unwrap();
    for i in 0..rows {
        let alone = m.sample(&ps[i..i + 1], &seeds[i..i + 1], &cfgs[i]).unwrap();
        assert_eq!(together[i].tokens, alone[0].tokens, "row {i}");
        assert_eq!(together[i].finish, alone[0].finish, "row {i}");
        assert_eq!(
            together[i].top.len(),
            if i % 3 > 0 { alone[0].tokens.len() } else { 0 }
        );
        assert!(together[i].tokens.len() <= 3 + i);
    }
    let e = m
        .sample_each(&ps, &seeds, &cfgs[..2], &mut ws, &autodidact_nn::NoStop)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 settings for 9 prompts"), "{e}");
}

/// Rows that arrive while others decode (continuous batching), released by a schedule of
/// `take` calls; each hands back its sample the step it ends.
struct Staggered {
    rows: std::sync::Mutex<Vec<(usize, autodidact_nn::StreamRow<usize>)>>,
    takes: std::sync::atomic::AtomicUsize,
    out: std::sync::Mutex<Vec<(usize, autodidact_nn::Result<Sample>)>>,
    /// Whether `stopped` was asked about each row.
    asked: Vec<std::sync::atomic::AtomicBool>,
}

impl autodidact_nn::RowFeed for Staggered {
    type Tag = usize;

    fn take(&self, max: usize, wait: bool) -> Option<Vec<autodidact_nn::StreamRow<usize>>> {
        let now = self.takes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut rows = self.rows.lock().unwrap();
        if rows.is_empty() {
            return None;
        }
        // Waiting (nothing else to do) moves time on to the next arrival.
        let due = if wait { now.max(rows[0].0) } else { now };
        let n = rows.iter().take(max).take_while(|r| r.0 <= due).count();
        Some(rows.drain(..n).map(|r| r.1).collect())
    }

    fn stopped(&self, tag: &usize, _generated: &[u32]) -> bool {
        self.asked[*tag].store(true, std::sync::atomic::Ordering::SeqCst);
        false
    }

    fn finished(&self, tag: usize, sample: autodidact_nn::Result<Sample>) {
        self.out.lock().unwrap().push((tag, sample));
    }
}

/// Issue 15: rows that join a running decode batch at different steps, with their own
/// settings and lengths (longer rows grow the cache while others are live), sample exactly
/// what each samples alone, with one slot loop or several, and in a memory budget that
/// makes rows wait; a row that cannot start is handed back with the reason.
#[test]
fn issue15_rows_joining_a_running_batch_sample_as_alone() {
    let m = model();
    let rows = 14;
    let ps = prompts(rows, 5);
    let cfgs: Vec<SamplingConfig> = (0..rows)
        .map(|i| SamplingConfig {
            // Early rows are short; later ones need the whole context.
            max_new_tokens: if i < 4 { 2 + i } else { 5 + 3 * i },
            top_logprobs: i % 3,
            ..configs()[i % 4].clone()
        })
        .collect();
    let arrive = |i: usize| [0, 0, 1, 3, 3, 4, 9, 9, 10, 15, 30, 31, 31, 60][i];
    let bad = rows; // one more row, with a token outside the vocabulary
    for (max_rows, budget) in [(4, None), (3, Some(6_000)), (64, None)] {
        let mut queue: Vec<(usize, autodidact_nn::StreamRow<usize>)> = (0..rows)
            .map(|i| {
                let row = autodidact_nn::StreamRow {
                    prompt: ps[i].clone(),
                    seed: 90 + i as u64,
                    cfg: cfgs[i].clone(),
                    tag: i,
                };
                (arrive(i), row)
            })
            .collect();
        queue.insert(
            7,
            (
                9,
                autodidact_nn::StreamRow {
                    prompt: vec![1, 99],
                    seed: 0,
                    cfg: cfgs[0].clone(),
                    tag: bad,
                },
            ),
        );
        let feed = Staggered {
            rows: std::sync::Mutex::new(queue),
            takes: Default::default(),
            out: Default::default(),
            asked: (0..=rows).map(|_| Default::default()).collect(),
        };
        let mut ws = match budget {
            Some(b) => autodidact_nn::SampleWorkspace::with_budget(b),
            None => autodidact_nn::SampleWorkspace::new(),
        };
        m.sample_stream(&feed, max_rows, &mut ws);
        let mut out = feed.out.into_inner().unwrap();
        assert_eq!(out.len(), rows + 1, "every row comes back once");
        out.sort_by_key(|o| o.0);
        let (tag, e) = out.pop().unwrap();
        assert_eq!(tag, bad);
        let e = e.unwrap_err().to_string();
        assert!(e.contains("99"), "{e}");
        for (i, got) in out {
            let got = got.unwrap();
            let alone = m.sample(&ps[i..i + 1], &[90 + i as u64], &cfgs[i]).unwrap();
            let what = format!("row {i}, {max_rows} rows at most, budget {budget:?}");
            assert_eq!(got.tokens, alone[0].tokens, "{what}");
            assert_eq!(got.finish, alone[0].finish, "{what}");
            // Log-probs to rounding: a GEMM's rounding depends on how many rows it has.
            let near = |a: f32, b: f32| (a - b).abs() < 1e-5;
            assert_eq!(got.top.len(), alone[0].top.len(), "{what}");
            for (a, b) in got.top.iter().zip(&alone[0].top) {
                let same = a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && near(x.1, y.1));
                assert!(same, "{what}: alternatives {a:?} vs {b:?}");
            }
            for (a, b) in got.logprobs.iter().zip(&alone[0].logprobs) {
                assert!(near(*a, *b), "{what}: logprob {a} vs {b}");
            }
            // The feed's stop check is asked unless a stop token ended the row at once.
            let asked = feed.asked[i].load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(
                asked,
                !cfgs[i].stop_tokens.contains(&got.tokens[0]),
                "{what}"
            );
        }
    }
}
