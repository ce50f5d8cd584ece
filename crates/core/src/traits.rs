//! The interfaces stages are written against: tasks, policies, trainable policies.

use crate::types::{Completion, Example, Problem, SamplingParams, Verdict};
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which side of a task's fixed train / held-out partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Eval,
}

/// A source of problems with a verifier.
pub trait Task: Send + Sync {
    /// Short name (`"addition"`).
    fn name(&self) -> &str;

    /// Every character a prompt, hinted prompt or solution of this task can contain (the
    /// vocabulary of a character-level model trained on it).
    fn alphabet(&self) -> String;

    /// Upper bounds on the characters of a prompt (hinted prompts included) and of a
    /// reference solution: what the model's context must hold.
    fn max_chars(&self) -> (usize, usize);

    /// `count` distinct problems of `split`, deterministic for `seed`. The two splits are
    /// disjoint by construction, whatever the seeds.
    fn problems(&self, split: Split, count: usize, seed: u64) -> Result<Vec<Problem>>;

    /// Judges a completion: parses the answer out of arbitrary text.
    fn verify(&self, problem: &Problem, completion: &str) -> Verdict;

    /// Judges many completions at once (a verifier in other processes pipelines them);
    /// verdicts come back in input order. Fails only when the verifier cannot run at all
    /// (a completion it cannot grade gets an `ungradable` verdict with the reason).
    fn verify_batch(&self, items: &[(&Problem, &str)]) -> Result<Vec<Verdict>> {
        Ok(items.iter().map(|(p, c)| self.verify(p, c)).collect())
    }

    /// Where the task may write logs from now on (a run's `logs/` directory): an external
    /// verifier's stderr, for one. By default it writes none.
    fn set_log_dir(&self, _dir: &std::path::Path) -> Result<()> {
        Ok(())
    }

    /// The prompt with the reference answer given as a hint (STaR's rationalization), if the
    /// task supports it; by default `[answer]prompt` when the problem has an answer.
    fn hinted_prompt(&self, problem: &Problem) -> Option<String> {
        Some(format!("[{}]{}", problem.answer.as_ref()?, problem.prompt))
    }

    /// A regular expression after each match of which a completion's step ends (the trace's
    /// separators), for process rewards and step credit; None when the task's completions
    /// have no step structure it knows of (a pattern must then be given).
    fn step_pattern(&self) -> Option<&str> {
        None
    }

    /// What a chat model is asked after its first attempt in a two-attempt episode (the
    /// self-correction recipes): to check its solution and answer again, in the form this
    /// task's verifier reads. A model trained from scratch is asked by a marker instead
    /// (`autodidact_engine::episode`).
    fn review_instruction(&self) -> String {
        REVIEW_INSTRUCTION.to_string()
    }
}

/// [`Task::review_instruction`] of a task that says nothing more about its answers.
pub const REVIEW_INSTRUCTION: &str = "Check your solution above step by step. If you find a mistake, correct it; if it is right, keep it. Then write the complete solution again, ending with the final answer in the same form as before.";

/// Text to token ids and back, as a policy reads and writes it.
pub trait Tokenizer {
    /// The ids of `text`, without special tokens; an error names what cannot be encoded.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;

    /// The text of `ids` (special tokens left out).
    fn decode(&self, ids: &[u32]) -> Result<String>;

    fn vocab_size(&self) -> usize;

    /// The tokens that end a completion; the first is appended to training completions.
    fn stop_tokens(&self) -> Vec<u32>;

    /// The ids of `text` as a prompt is fed to the model: with the special tokens the model
    /// expects before it (a BOS token, for most).
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text)
    }

    /// Whether [`Tokenizer::chat_prompt`] renders the model's own chat template (a pretrained
    /// chat model) rather than the built-in format.
    fn has_chat_template(&self) -> bool {
        false
    }

    /// `messages` as a prompt for the assistant's next turn, in the model's chat format.
    fn chat_prompt(&self, messages: &[crate::types::ChatMessage]) -> Result<String> {
        Ok(crate::types::plain_chat_prompt(messages))
    }
}

/// Sees completions grow during [`Policy::sample_watched`]; called from the sampling
/// threads.
pub trait SampleWatch: Sync {
    /// Whether row `row` (its index among the call's prompts) is shown its text as it grows
    /// ([`SampleWatch::grew`]); decoding it after every token has a cost, so rows that are
    /// not streamed are only asked [`SampleWatch::cancelled`].
    fn streams(&self, row: usize) -> bool;

    /// Row `row` has generated `tokens`; `text` is as much of their text as is final: never
    /// a stop string or a part of one, nor a character that a later token could still
    /// change. Returning true ends the row now (a client that went away).
    fn grew(&self, row: usize, tokens: &[u32], text: &str) -> bool;

    /// Whether row `row` should end now (its client went away); asked after every token.
    fn cancelled(&self, _row: usize) -> bool {
        false
    }
}

/// Checks a [`Policy::sample_each`] request: one seed and one setting per prompt.
pub fn check_each(prompts: &[String], seeds: &[u64], params: &[SamplingParams]) -> Result<()> {
    if params.len() != prompts.len() || seeds.len() != prompts.len() {
        return Err(crate::Error::invalid(
            "sampling request",
            format!(
                "{} prompts, {} seeds and {} settings; give one of each per row",
                prompts.len(),
                seeds.len(),
                params.len()
            ),
        ));
    }
    Ok(())
}

/// A row of [`Policy::sample_stream`].
#[derive(Clone, Debug, PartialEq)]
pub struct FeedRow {
    /// What the feed knows the row by: [`RowFeed::finished`] and the [`SampleWatch`]
    /// methods name rows by it.
    pub id: usize,
    pub prompt: String,
    pub seed: u64,
    pub params: SamplingParams,
}

/// How long [`RowFeed::take`] may wait for rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Not at all: the rows waiting now, perhaps none.
    Never,
    /// Until there is one.
    ForOne,
    /// Until there is one, then a moment more for the rows that arrive with it (for a
    /// backend that cannot add rows to a running batch).
    ForBatch,
}

/// What a feed may need of the policy to turn requests into rows.
pub struct StreamModel<'a> {
    pub tokenizer: &'a dyn Tokenizer,
    pub context_length: usize,
}

/// Where [`Policy::sample_stream`] gets its rows and hands them back: a server's queue.
/// Its [`SampleWatch`] methods take a row's id. Called from the sampling threads.
pub trait RowFeed: SampleWatch {
    /// At most `max` rows to start now, waiting as `wait` says. `None`: no more rows will
    /// come; the policy finishes the rows it has and returns.
    fn take(&self, max: usize, wait: Wait, model: &StreamModel) -> Option<Vec<FeedRow>>;

    /// Row `id` has ended, or could not be sampled (why, as text).
    fn finished(
        &self,
        id: usize,
        result: std::result::Result<Completion, String>,
        model: &StreamModel,
    );
}

/// A watch over a subset of a call's rows, seen under their indices in the whole call.
struct Remapped<'a> {
    watch: &'a dyn SampleWatch,
    /// The call's row of each of the subset's.
    rows: &'a [usize],
}

impl SampleWatch for Remapped<'_> {
    fn streams(&self, row: usize) -> bool {
        self.watch.streams(self.rows[row])
    }
    fn grew(&self, row: usize, tokens: &[u32], text: &str) -> bool {
        self.watch.grew(self.rows[row], tokens, text)
    }
    fn cancelled(&self, row: usize) -> bool {
        self.watch.cancelled(self.rows[row])
    }
}

/// Something that samples and scores text.
pub trait Policy {
    /// One completion per prompt; `seeds[i]` seeds row i, so a row's sample does not depend
    /// on the other rows.
    fn sample(
        &mut self,
        prompts: &[String],
        seeds: &[u64],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>>;

    /// [`Policy::sample`] that shows `watch` each row's completion as it grows (a server
    /// streaming tokens to its clients). A backend that cannot report tokens as they come
    /// shows each row once, whole, after sampling: this default.
    fn sample_watched(
        &mut self,
        prompts: &[String],
        seeds: &[u64],
        params: &SamplingParams,
        watch: &dyn SampleWatch,
    ) -> Result<Vec<Completion>> {
        let out = self.sample(prompts, seeds, params)?;
        for (row, c) in out.iter().enumerate() {
            if watch.streams(row) {
                watch.grew(row, &c.tokens, &c.text);
            }
        }
        Ok(out)
    }

    /// [`Policy::sample_watched`] with settings of each row's own (`params[i]` for row i,
    /// as many as prompts): requests that ask for different settings share one batch where
    /// the backend can. By default rows with equal settings are sampled together, one call
    /// per distinct setting.
    fn sample_each(
        &mut self,
        prompts: &[String],
        seeds: &[u64],
        params: &[SamplingParams],
        watch: &dyn SampleWatch,
    ) -> Result<Vec<Completion>> {
        check_each(prompts, seeds, params)?;
        let mut out: Vec<Option<Completion>> = vec![None; prompts.len()];
        let mut done = vec![false; prompts.len()];
        for first in 0..prompts.len() {
            if done[first] {
                continue;
            }
            let rows: Vec<usize> = (first..prompts.len())
                .filter(|&r| !done[r] && params[r] == params[first])
                .collect();
            let ps: Vec<String> = rows.iter().map(|&r| prompts[r].clone()).collect();
            let ss: Vec<u64> = rows.iter().map(|&r| seeds[r]).collect();
            let remap = Remapped { watch, rows: &rows };
            for (&r, c) in rows
                .iter()
                .zip(self.sample_watched(&ps, &ss, &params[first], &remap)?)
            {
                out[r] = Some(c);
                done[r] = true;
            }
        }
        Ok(out
            .into_iter()
            .map(|c| c.expect("every row sampled"))
            .collect())
    }

    /// Samples rows from `feed` as they come, at most `max_rows` at a time, until it closes
    /// ([`RowFeed::take`] returns `None`). A backend that can add rows to a running batch
    /// does so (continuous batching) and hands each row back the moment it ends; this
    /// default samples the rows waiting together as one [`Policy::sample_each`] call at a
    /// time.
    fn sample_stream(&mut self, feed: &dyn RowFeed, max_rows: usize) -> Result<()> {
        loop {
            let model = StreamModel {
                tokenizer: self.tokenizer(),
                context_length: self.context_length(),
            };
            let Some(rows) = feed.take(max_rows.max(1), Wait::ForBatch, &model) else {
                return Ok(());
            };
            let ids: Vec<usize> = rows.iter().map(|r| r.id).collect();
            let prompts: Vec<String> = rows.iter().map(|r| r.prompt.clone()).collect();
            let seeds: Vec<u64> = rows.iter().map(|r| r.seed).collect();
            let params: Vec<SamplingParams> = rows.into_iter().map(|r| r.params).collect();
            let watch = Remapped {
                watch: feed,
                rows: &ids,
            };
            let out = self.sample_each(&prompts, &seeds, &params, &watch);
            let model = StreamModel {
                tokenizer: self.tokenizer(),
                context_length: self.context_length(),
            };
            match out {
                Ok(out) => ids
                    .iter()
                    .zip(out)
                    .for_each(|(&id, c)| feed.finished(id, Ok(c), &model)),
                Err(e) => ids
                    .iter()
                    .for_each(|&id| feed.finished(id, Err(e.to_string()), &model)),
            }
        }
    }

    /// Per-token log-probs of each example's completion (followed by the stop token) given
    /// its prompt.
    fn logprobs(&mut self, examples: &[Example]) -> Result<Vec<Vec<f32>>>;

    /// `log p(token | prompt)` of each of `candidates` as the next token after each prompt:
    /// one row per prompt, one value per candidate, from one pass over the prompts (how a
    /// judge reads a verdict from the logits).
    fn next_token_logprobs(
        &mut self,
        prompts: &[String],
        candidates: &[u32],
    ) -> Result<Vec<Vec<f32>>>;

    /// Largest prompt + completion length in tokens the policy accepts.
    fn context_length(&self) -> usize;

    /// What serving cost since the last call, as metrics named `serving/…` (requests,
    /// retries, errors by kind, tokens, latency percentiles); none for a local model.
    fn take_serving_stats(&mut self) -> std::collections::BTreeMap<String, f64> {
        std::collections::BTreeMap::new()
    }

    /// The policy's tokenizer.
    fn tokenizer(&self) -> &dyn Tokenizer;
}

/// Per-token outputs of [`TrainablePolicy::forward`].
#[derive(Clone, Debug, PartialEq)]
pub struct TokenScores {
    pub logprobs: Vec<Vec<f32>>,
    pub entropies: Option<Vec<Vec<f32>>>,
}

/// Optimizer settings a trainer passes to a [`TrainablePolicy`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSettings {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// A policy that also trains, in the three steps of docs/design.md's "Objectives are
/// token weights": [`TrainablePolicy::forward`] returns per-token log-probs, an objective turns them
/// into weights, [`TrainablePolicy::backward`] accumulates the gradient of `−Σ w·log p`.
pub trait TrainablePolicy: Policy {
    /// Starts a fresh optimizer (moments at zero) and clears accumulated gradients.
    fn reset_optimizer(&mut self, settings: &OptimizerSettings) -> Result<()>;

    /// Forward pass over a micro-batch; returns, per example, the log-probs of its completion
    /// tokens (see [`Example`]) and, with `entropy`, the entropy of the policy's next-token
    /// distribution at each of them; keeps what backward needs.
    fn forward(&mut self, batch: &[Example], entropy: bool) -> Result<TokenScores>;

    /// Accumulates the gradient of `−Σ w_t log p_t − Σ c_t H_t` for the last forward pass;
    /// `weights` (and `entropy_coefs`, which needs a forward pass with entropies) have the
    /// shape forward returned.
    fn backward(&mut self, weights: &[Vec<f32>], entropy_coefs: Option<&[Vec<f32>]>) -> Result<()>;

    /// Clips the accumulated gradient to `max_grad_norm` (0: no clipping), applies one
    /// optimizer update at learning rate `lr`, clears the gradient; returns the norm before
    /// clipping.
    fn step(&mut self, lr: f32, max_grad_norm: f32) -> Result<f32>;

    /// Writes the weights (and what is needed to load them, and the optimizer state when
    /// there is one) to `dir`, atomically.
    fn save(&self, dir: &Path) -> Result<()>;

    /// Restores the optimizer state saved beside the checkpoint in `dir`, with `settings`;
    /// returns false (and changes nothing) when `dir` holds none.
    fn restore_optimizer(&mut self, dir: &Path, settings: &OptimizerSettings) -> Result<bool>;
}

/// A learned reward model: a scalar score of each (prompt, completion), higher meaning better
/// (a proxy for a verifier where there is none). It trains as a [`TrainablePolicy`] does, from
/// the gradient of a loss in its scores (Bradley–Terry on pairs, BCE on outcome labels:
/// `autodidact_objectives::reward`).
pub trait RewardModel: Send {
    /// The score of each example (prompt, completion and its stop token); the pass is kept
    /// for [`RewardModel::backward`].
    fn scores(&mut self, batch: &[Example]) -> Result<Vec<f32>>;

    /// Accumulates the gradient of `Σ_b dscores_b · score_b` for the last
    /// [`RewardModel::scores`].
    fn backward(&mut self, dscores: &[f32]) -> Result<()>;

    /// Starts a fresh optimizer (moments at zero) and clears accumulated gradients.
    fn reset_optimizer(&mut self, settings: &OptimizerSettings) -> Result<()>;

    /// One optimizer step at `lr`, gradients clipped to `max_grad_norm` (0: none); returns the
    /// norm before clipping.
    fn step(&mut self, lr: f32, max_grad_norm: f32) -> Result<f32>;

    /// Writes the model (and its optimizer state, when it has one) to `dir`, replacing what
    /// is there; a load of `dir` gives the same scores.
    fn save(&self, dir: &Path) -> Result<()>;
    /// Bytes the loaded model holds, with what a scoring pass over `rows` sequences leaves
    /// allocated: what a run that scores with it must budget for.
    fn memory_bytes(&self, rows: usize) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FinishReason;
    use std::sync::Mutex;

    /// Writes each row's prompt, seed and temperature as its text; counts its calls.
    struct Echo {
        calls: usize,
        tok: crate::CharTokenizer,
    }

    impl Policy for Echo {
        fn sample(
            &mut self,
            prompts: &[String],
            seeds: &[u64],
            p: &SamplingParams,
        ) -> Result<Vec<Completion>> {
            self.calls += 1;
            Ok(prompts
                .iter()
                .zip(seeds)
                .map(|(pr, s)| Completion {
                    text: format!("{pr}/{s}/{}", p.temperature),
                    tokens: vec![],
                    logprobs: vec![],
                    finish: FinishReason::Stop,
                    top_logprobs: vec![],
                })
                .collect())
        }
        fn logprobs(&mut self, _: &[Example]) -> Result<Vec<Vec<f32>>> {
            unreachable!()
        }
        fn next_token_logprobs(&mut self, _: &[String], _: &[u32]) -> Result<Vec<Vec<f32>>> {
            unreachable!()
        }
        fn context_length(&self) -> usize {
            8
        }
        fn tokenizer(&self) -> &dyn Tokenizer {
            &self.tok
        }
    }

    struct Seen(Mutex<Vec<(usize, String)>>);

    impl SampleWatch for Seen {
        fn streams(&self, row: usize) -> bool {
            row != 1
        }
        fn grew(&self, row: usize, _: &[u32], text: &str) -> bool {
            self.0.lock().unwrap().push((row, text.to_string()));
            false
        }
    }

    #[test]
    fn issue15_sample_each_by_default_groups_equal_settings_in_row_order() {
        let mut p = Echo {
            calls: 0,
            tok: crate::CharTokenizer::new("ab").unwrap(),
        };
        let t = |temperature| SamplingParams {
            temperature,
            ..SamplingParams::greedy(4)
        };
        let prompts: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let params = [t(0.5), t(1.0), t(0.5), t(1.0)];
        let seen = Seen(Mutex::new(Vec::new()));
        let out = p
            .sample_each(&prompts, &[1, 2, 3, 4], &params, &seen)
            .unwrap();
        let texts: Vec<&str> = out.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["a/1/0.5", "b/2/1", "c/3/0.5", "d/4/1"]);
        assert_eq!(p.calls, 2, "one call per distinct setting");
        // The watch sees rows by their index in the whole call (row 1 is not streamed).
        let mut seen = seen.0.into_inner().unwrap();
        seen.sort();
        assert_eq!(
            seen,
            [
                (0, "a/1/0.5".into()),
                (2, "c/3/0.5".into()),
                (3, "d/4/1".into())
            ]
        );
        assert!(p
            .sample_each(
                &prompts,
                &[1, 2, 3, 4],
                &params[..3],
                &Seen(Mutex::new(vec![]))
            )
            .is_err());
    }

    /// Hands out batches of rows, then closes; records what comes back and what the watch
    /// was asked.
    struct Batches {
        batches: Mutex<Vec<Vec<FeedRow>>>,
        waits: Mutex<Vec<Wait>>,
        done: Mutex<Vec<(usize, std::result::Result<String, String>)>>,
        grown: Mutex<Vec<usize>>,
    }

    impl SampleWatch for Batches {
        fn streams(&self, id: usize) -> bool {
            id.is_multiple_of(2)
        }
        fn grew(&self, id: usize, _: &[u32], _: &str) -> bool {
            self.grown.lock().unwrap().push(id);
            false
        }
    }

    impl RowFeed for Batches {
        fn take(&self, max: usize, wait: Wait, model: &StreamModel) -> Option<Vec<FeedRow>> {
            assert_eq!((max, model.context_length), (3, 8));
            self.waits.lock().unwrap().push(wait);
            let mut b = self.batches.lock().unwrap();
            (!b.is_empty()).then(|| b.remove(0))
        }
        fn finished(
            &self,
            id: usize,
            result: std::result::Result<Completion, String>,
            _: &StreamModel,
        ) {
            self.done.lock().unwrap().push((id, result.map(|c| c.text)));
        }
    }

    /// Issue 15: without continuous batching, a policy samples the rows of each take as one
    /// batch (gathered: `Wait::ForBatch`), each with its own settings, and hands every row
    /// back under its id until the feed closes.
    #[test]
    fn issue15_sample_stream_by_default_samples_each_take_as_a_batch() {
        let mut p = Echo {
            calls: 0,
            tok: crate::CharTokenizer::new("ab").unwrap(),
        };
        let row = |id: usize, temperature| FeedRow {
            id,
            prompt: format!("p{id}"),
            seed: 100 + id as u64,
            params: SamplingParams {
                temperature,
                ..SamplingParams::greedy(4)
            },
        };
        let feed = Batches {
            batches: Mutex::new(vec![
                vec![row(10, 0.5), row(11, 1.0), row(12, 0.5)],
                vec![row(20, 0.5)],
            ]),
            waits: Mutex::new(Vec::new()),
            done: Mutex::new(Vec::new()),
            grown: Mutex::new(Vec::new()),
        };
        p.sample_stream(&feed, 3).unwrap();
        assert_eq!(
            p.calls, 3,
            "two settings in the first take, one in the second"
        );
        let done = feed.done.into_inner().unwrap();
        assert_eq!(
            done,
            [
                (10, Ok("p10/110/0.5".into())),
                (11, Ok("p11/111/1".into())),
                (12, Ok("p12/112/0.5".into())),
                (20, Ok("p20/120/0.5".into())),
            ]
        );
        assert_eq!(feed.waits.into_inner().unwrap(), [Wait::ForBatch; 3]);
        let mut grown = feed.grown.into_inner().unwrap();
        grown.sort();
        assert_eq!(grown, [10, 12, 20], "the watch sees rows by id");
    }
}
