//! The decode loop behind every sampling call: a KV cache of row slots, one forward pass
//! per step over the new tokens of every live row, and rows that join and leave between
//! steps (continuous batching).
//!
//! [`Transformer::sample_each`] hands the loop all of its rows at once;
//! [`Transformer::sample_stream`] lets a [`RowFeed`] hand it rows while others decode and
//! gives each row back the step it ends, which is how a server keeps its decode batch full
//! when requests arrive at different times. A row's tokens depend only on its prompt,
//! settings and seed, never on which rows share its steps.
//!
//! A row joins at the start of a step: its prompt is prefilled in the same forward pass as
//! the other rows' next tokens (the pass takes runs of new tokens per slot, [`Segment`]s).
//! Slots are as many as the caller allows; the cache grows (its slots, or its positions
//! for a longer row) by copying, and a row that would take it past its memory budget waits
//! until rows end. With enough slots, each thread runs a loop of its own over its share of
//! the rows with single-threaded kernels, so the many small steps need no synchronization.

use crate::kernels::{self, grow};
use crate::model::{LayerIo, Stages, Transformer};
use crate::rng::Rng;
use crate::sample::{pick, top_logprobs, FinishReason, Sample, SamplingConfig};
use crate::Result;
use rayon::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A row for the decode loop.
pub struct StreamRow<T> {
    /// Prompt tokens: at least one, fewer than the context length.
    pub prompt: Vec<u32>,
    /// Seeds the row's own generator.
    pub seed: u64,
    pub cfg: SamplingConfig,
    /// What the feed knows the row by.
    pub tag: T,
}

/// Where the decode loop gets its rows, and where it hands them back. Called from the
/// sampling threads.
pub trait RowFeed: Sync {
    /// What the feed knows a row by.
    type Tag: Send;

    /// Up to `max` rows to start now (`max` ≥ 1; none is fine). With `wait` (the loop has
    /// nothing else to do), blocks until there is at least one. `None`: no more rows will
    /// come; the loop finishes the rows it has and returns.
    fn take(&self, max: usize, wait: bool) -> Option<Vec<StreamRow<Self::Tag>>>;

    /// Whether the row ends after `generated`, its tokens so far (a stop string, a client
    /// that went away). Asked after every token that did not already end it.
    fn stopped(&self, tag: &Self::Tag, generated: &[u32]) -> bool;

    /// The row has ended, or could not start (its prompt or settings are invalid).
    fn finished(&self, tag: Self::Tag, sample: Result<Sample>);
}

/// When a loop's kernels may use the thread pool.
#[derive(Clone, Copy)]
pub(crate) enum Par<'a> {
    Never,
    Always,
    /// While no other loop has rows (the count of loops that have).
    WhenAlone(&'a AtomicUsize),
}

/// Rows taken from the feed and not yet started, shared by the loops so that each starts
/// its share: a loop that took for itself whatever had arrived would leave the others idle
/// while its own steps grow long. One idle loop waits on the feed; the others wait here.
struct Lobby<'f, F: RowFeed> {
    feed: &'f F,
    loops: usize,
    /// Slots of each loop.
    slots: usize,
    max_rows: usize,
    state: Mutex<LobbyState<F::Tag>>,
    /// Rows came, the feed closed, or the loop waiting on the feed is back.
    arrived: Condvar,
    /// Rows started and not yet ended, over all loops.
    live: AtomicUsize,
}

struct LobbyState<T> {
    rows: VecDeque<StreamRow<T>>,
    closed: bool,
    /// A loop is waiting on the feed.
    waiter: bool,
}

impl<F: RowFeed> Lobby<'_, F> {
    fn lock(&self) -> MutexGuard<'_, LobbyState<F::Tag>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds what the feed gave; wakes the loops waiting here.
    fn arrive(&self, st: &mut LobbyState<F::Tag>, got: Option<Vec<StreamRow<F::Tag>>>) {
        match got {
            Some(rows) => st.rows.extend(rows),
            None => st.closed = true,
        }
        self.arrived.notify_all();
    }
}

impl<F: RowFeed> RowFeed for Lobby<'_, F> {
    type Tag = F::Tag;

    /// `max` is the calling loop's free slots, so it holds `slots − max` rows.
    fn take(&self, max: usize, wait: bool) -> Option<Vec<StreamRow<F::Tag>>> {
        let mine = self.slots.saturating_sub(max);
        let mut st = self.lock();
        if !st.closed && !st.waiter {
            // What has arrived, without waiting.
            drop(st);
            let got = self.feed.take(self.max_rows, false);
            st = self.lock();
            self.arrive(&mut st, got);
        }
        while st.rows.is_empty() && !st.closed {
            if !wait {
                return Some(Vec::new());
            }
            if st.waiter {
                st = self.arrived.wait(st).unwrap_or_else(|e| e.into_inner());
            } else {
                st.waiter = true;
                drop(st);
                let got = self.feed.take(self.max_rows, true);
                st = self.lock();
                st.waiter = false;
                self.arrive(&mut st, got);
            }
        }
        if st.rows.is_empty() {
            return None; // closed, and nothing left to start
        }
        // An even share of the rows live and waiting; a loop without rows takes one at least.
        let fair = (self.live.load(Ordering::SeqCst) + st.rows.len()).div_ceil(self.loops);
        let k = fair
            .saturating_sub(mine)
            .max(usize::from(mine == 0))
            .min(max)
            .min(st.rows.len());
        self.live.fetch_add(k, Ordering::SeqCst);
        Some(st.rows.drain(..k).collect())
    }

    fn stopped(&self, tag: &F::Tag, generated: &[u32]) -> bool {
        self.feed.stopped(tag, generated)
    }

    fn finished(&self, tag: F::Tag, sample: Result<Sample>) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.feed.finished(tag, sample);
    }
}

/// A row in a cache slot.
struct Live<T> {
    tag: T,
    cfg: SamplingConfig,
    rng: Rng,
    out: Sample,
}

/// Keys and values of every layer for each row slot, `ctx · W` values per (layer, slot), with
/// `W` the key width (`num_kv_heads · head_dim`) and `ctx` the positions the slots' rows can
/// reach (prompt plus `max_new_tokens`, at most the context length) rounded up to a multiple
/// of 8. Values are stored by position, `(ctx, W)`; keys transposed, `(W, ctx)`, so that the
/// scores of one query against all cached keys are contiguous multiply-adds over positions.
#[derive(Default)]
struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    rows: usize,
    ctx: usize,
    width: usize,
}

impl KvCache {
    /// Start of the (layer, row) block.
    fn offset(&self, layer: usize, row: usize) -> usize {
        (layer * self.rows + row) * self.ctx * self.width
    }

    /// Bytes of a cache of `rows` slots of `ctx` positions.
    fn bytes(layers: usize, rows: usize, ctx: usize, width: usize) -> u64 {
        (2 * 4 * layers * rows * ctx * width) as u64
    }

    /// Lays the cache out for `rows` slots of `ctx` positions (neither smaller than now),
    /// keeping what the slots marked in `keep` hold.
    fn reshape(&mut self, layers: usize, rows: usize, ctx: usize, width: usize, keep: &[bool]) {
        let len = layers * rows * ctx * width;
        if !keep.contains(&true) {
            grow(&mut self.k, len);
            grow(&mut self.v, len);
            (self.rows, self.ctx, self.width) = (rows, ctx, width);
            return;
        }
        let old = std::mem::replace(
            self,
            Self {
                k: vec![0.0; len],
                v: vec![0.0; len],
                rows,
                ctx,
                width,
            },
        );
        let (oc, w) = (old.ctx, width);
        for l in 0..layers {
            for (r, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
                let (from, to) = (old.offset(l, r), self.offset(l, r));
                // Keys (W, ctx): each dimension's positions; values (ctx, W): one run.
                for e in 0..w {
                    self.k[to + e * ctx..to + e * ctx + oc]
                        .copy_from_slice(&old.k[from + e * oc..from + (e + 1) * oc]);
                }
                self.v[to..to + oc * w].copy_from_slice(&old.v[from..from + oc * w]);
            }
        }
    }
}

/// A run of new tokens for one cache row: positions `start..start + len`.
#[derive(Clone, Copy)]
struct Segment {
    row: usize,
    start: usize,
    len: usize,
}

/// Reused buffers of the cached forward pass.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    rstd: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    probs: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    last: Vec<f32>,
    logits: Vec<f32>,
}

/// The KV caches and scratch buffers of [`Transformer::sample_with`], one per shard of rows.
/// Keeping one across calls avoids re-allocating (and page-faulting in) the cache for every
/// batch; buffers only grow.
pub struct SampleWorkspace {
    pub(crate) shards: Vec<Shard>,
    /// Bytes a call plans to hold; larger requests are sampled in chunks of rows.
    pub(crate) budget: u64,
}

impl Default for SampleWorkspace {
    fn default() -> Self {
        Self::with_budget(SAMPLE_WORKSPACE_BYTES)
    }
}

#[derive(Default)]
pub(crate) struct Shard {
    cache: KvCache,
    scratch: Scratch,
}

impl SampleWorkspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// A workspace that plans to hold at most `bytes` (at least two rows per thread are
    /// always sampled together).
    pub fn with_budget(bytes: u64) -> Self {
        Self {
            shards: Vec::new(),
            budget: bytes,
        }
    }

    /// Bytes held by the caches and scratch buffers.
    pub fn allocated_bytes(&self) -> usize {
        let s = |v: &Vec<f32>| 4 * v.capacity();
        self.shards
            .iter()
            .map(|sh| {
                let (c, x) = (&sh.cache, &sh.scratch);
                s(&c.k)
                    + s(&c.v)
                    + s(&x.x)
                    + s(&x.normed)
                    + s(&x.rstd)
                    + s(&x.qkv)
                    + s(&x.att)
                    + s(&x.probs)
                    + s(&x.gu)
                    + s(&x.act)
                    + s(&x.last)
                    + s(&x.logits)
            })
            .sum()
    }
}

/// The most a sampling call's workspace is planned to take by default: larger requests are
/// sampled in chunks of rows (the same tokens; rows are independent). Large enough that the engine's
/// 512-row calls are never split for the built-in presets (`base` takes ~1.6 MB a row), so
/// their numbers do not change; GEMM rounding depends on how many rows a call has.
pub const SAMPLE_WORKSPACE_BYTES: u64 = 1 << 30;

impl Transformer {
    /// Samples rows from `feed` as they come, up to `max_rows` at a time, until the feed
    /// closes ([`RowFeed::take`] returns `None`) and every row has ended: continuous
    /// batching. Each row is handed back through [`RowFeed::finished`] the step it ends.
    pub fn sample_stream<F: RowFeed>(&self, feed: &F, max_rows: usize, ws: &mut SampleWorkspace) {
        let threads = rayon::current_num_threads();
        let max_rows = max_rows.max(1);
        let loops = if max_rows >= 2 * threads { threads } else { 1 };
        if ws.shards.len() < loops {
            ws.shards.resize_with(loops, Shard::default);
        }
        let busy = AtomicUsize::new(0);
        // One loop uses the pool's threads for its kernels; several do while alone. (Kernels
        // on a pool of one thread would only add a hand-off per kernel.)
        let par = match (loops, threads) {
            (_, 1) => Par::Never,
            (1, _) => Par::Always,
            _ => Par::WhenAlone(&busy),
        };
        let (slots, budget) = (max_rows.div_ceil(loops), ws.budget / loops as u64);
        let lobby = Lobby {
            feed,
            loops,
            slots,
            max_rows,
            state: Mutex::new(LobbyState {
                rows: VecDeque::new(),
                closed: false,
                waiter: false,
            }),
            arrived: Condvar::new(),
            live: AtomicUsize::new(0),
        };
        let lobby = &lobby;
        // Threads of their own, not the pool's: a loop that waits for rows must not hold a
        // worker that another loop's parallel kernels could use.
        std::thread::scope(|s| {
            for shard in &mut ws.shards[..loops] {
                s.spawn(move || self.decode(lobby, shard, slots, budget, par));
            }
        });
    }

    /// The loop: admits rows from `feed` into at most `slots` cache slots (growing the cache
    /// within `budget` bytes), runs one step over every live row, hands back the rows that
    /// ended, until the feed closes and no row is left.
    pub(crate) fn decode<F: RowFeed>(
        &self,
        feed: &F,
        shard: &mut Shard,
        slots: usize,
        budget: u64,
        par: Par,
    ) {
        let mc = &self.config;
        let (w, nl, v) = (mc.kv_dim(), mc.num_layers, mc.vocab_size);
        let Shard { cache, scratch } = shard;
        let mut live: Vec<Option<Live<F::Tag>>> = Vec::new(); // by slot
        let mut active = 0;
        let mut waiting: VecDeque<StreamRow<F::Tag>> = VecDeque::new();
        let mut closing = false;
        let mut segs: Vec<Segment> = Vec::new();
        let mut tokens: Vec<u32> = Vec::new();
        loop {
            // Between steps: take rows, and place as many as fit.
            if !closing && waiting.is_empty() && active < slots {
                match feed.take(slots - active, active == 0) {
                    // A row that cannot start goes back at once, with the reason.
                    Some(rows) => rows.into_iter().for_each(|row| match self.check_row(&row) {
                        Ok(()) => waiting.push_back(row),
                        Err(e) => feed.finished(row.tag, Err(e)),
                    }),
                    None => closing = true,
                }
            }
            let was_active = active > 0;
            if !waiting.is_empty() {
                if active == 0 {
                    // An empty cache starts over at the size its rows need.
                    (cache.rows, cache.ctx) = (0, 0);
                    live.clear();
                }
                let free: Vec<usize> = (0..slots)
                    .filter(|&s| live.get(s).is_none_or(Option::is_none))
                    .collect();
                let (mut rows, mut ctx, mut placed) = (cache.rows, cache.ctx, 0);
                while placed < waiting.len().min(free.len()) {
                    let row = &waiting[placed];
                    // A row is ended when its last token is sampled, never fed back, so it
                    // needs at most prompt + max_new_tokens − 1 positions.
                    let need = (row.prompt.len() + row.cfg.max_new_tokens)
                        .min(mc.context_length)
                        .div_ceil(8)
                        * 8;
                    let (r, c) = (rows.max(free[placed] + 1), ctx.max(need));
                    let fits = KvCache::bytes(nl, r, c, w) <= budget;
                    if !fits && (active > 0 || placed > 0) {
                        break; // waits for rows to end
                    }
                    (rows, ctx) = (r, c);
                    placed += 1;
                }
                if (rows, ctx) != (cache.rows, cache.ctx) {
                    // Room for the slots to come too, if the budget allows.
                    let per_slot = KvCache::bytes(nl, 1, ctx, w).max(1);
                    let rows = rows.max(slots.min((budget / per_slot) as usize));
                    let keep: Vec<bool> = live.iter().map(Option::is_some).collect();
                    cache.reshape(nl, rows, ctx, w, &keep);
                }
                for slot in free.into_iter().take(placed) {
                    let row = waiting.pop_front().expect("placed rows are waiting");
                    segs.push(Segment {
                        row: slot,
                        start: 0,
                        len: row.prompt.len(),
                    });
                    tokens.extend_from_slice(&row.prompt);
                    if live.len() <= slot {
                        live.resize_with(slot + 1, || None);
                    }
                    live[slot] = Some(Live {
                        tag: row.tag,
                        cfg: row.cfg,
                        rng: Rng::new(row.seed),
                        out: Sample {
                            tokens: Vec::new(),
                            logprobs: Vec::new(),
                            finish: FinishReason::Length,
                            top: Vec::new(),
                        },
                    });
                    active += 1;
                }
            }
            if let Par::WhenAlone(busy) = par {
                match (was_active, active > 0) {
                    (false, true) => _ = busy.fetch_add(1, Ordering::SeqCst),
                    (true, false) => _ = busy.fetch_sub(1, Ordering::SeqCst),
                    _ => {}
                }
            }
            if active == 0 {
                if closing && waiting.is_empty() {
                    return;
                }
                continue;
            }

            let par_now = match par {
                Par::Never => false,
                Par::Always => true,
                Par::WhenAlone(busy) => busy.load(Ordering::SeqCst) <= 1,
            };
            self.forward_cached(&segs, &tokens, cache, scratch, par_now);
            let mut next_segs = Vec::with_capacity(segs.len());
            tokens.clear();
            for (si, seg) in segs.iter().enumerate() {
                let logits = &scratch.logits[si * v..(si + 1) * v];
                let l = live[seg.row].as_mut().expect("a segment's slot is live");
                let tok = pick(logits, &l.cfg, &mut l.rng);
                let o = &mut l.out;
                o.tokens.push(tok);
                let lse = kernels::log_sum_exp(logits);
                o.logprobs.push(logits[tok as usize] - lse);
                if l.cfg.top_logprobs > 0 {
                    o.top.push(top_logprobs(logits, lse, l.cfg.top_logprobs));
                }
                let pos = seg.start + seg.len; // position the new token would occupy
                let finish = if l.cfg.stop_tokens.contains(&tok) || feed.stopped(&l.tag, &o.tokens)
                {
                    Some(FinishReason::Stop)
                } else if o.tokens.len() >= l.cfg.max_new_tokens {
                    Some(FinishReason::Length)
                } else if pos + 1 >= mc.context_length {
                    Some(FinishReason::ContextFull)
                } else {
                    None
                };
                match finish {
                    Some(f) => {
                        let mut l = live[seg.row].take().expect("checked above");
                        l.out.finish = f;
                        active -= 1;
                        feed.finished(l.tag, Ok(l.out));
                    }
                    None => {
                        next_segs.push(Segment {
                            row: seg.row,
                            start: pos,
                            len: 1,
                        });
                        tokens.push(tok);
                    }
                }
            }
            segs = next_segs;
            if active == 0 {
                if let Par::WhenAlone(busy) = par {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// What [`Transformer::sample_each`] checks of every row, for rows that come one by one.
    fn check_row<T>(&self, row: &StreamRow<T>) -> Result<()> {
        let mc = &self.config;
        row.cfg.validate(mc.vocab_size)?;
        crate::sample::check_prompt(self, 0, &row.prompt)
    }

    /// Runs the new tokens of `segs` through the model, appending their keys and values to
    /// `cache`, and leaves the logits of each segment's last token in `scratch.logits` (S, V).
    fn forward_cached(
        &self,
        segs: &[Segment],
        tokens: &[u32],
        cache: &mut KvCache,
        s: &mut Scratch,
        par: bool,
    ) {
        let mc = &self.config;
        let (c, f, v, h, d) = (
            mc.hidden_size,
            mc.intermediate_size,
            mc.vocab_size,
            mc.num_heads,
            mc.head_dim(),
        );
        let (q, w) = (mc.qkv_dim(), mc.kv_dim());
        let m = tokens.len();
        grow(&mut s.x, m * c);
        grow(&mut s.normed, m * c);
        grow(&mut s.rstd, m);
        grow(&mut s.qkv, m * q);
        grow(&mut s.att, m * c);
        grow(&mut s.gu, m * 2 * f);
        grow(&mut s.act, m * f);
        // First packed token of each segment.
        let mut seg_tok = Vec::with_capacity(segs.len());
        let mut tok0 = 0;
        for seg in segs {
            seg_tok.push(tok0);
            tok0 += seg.len;
        }
        grow(&mut s.probs, segs.len() * cache.ctx);
        let positions: Vec<u32> = segs
            .iter()
            .flat_map(|sg| sg.start as u32..(sg.start + sg.len) as u32)
            .collect();

        self.embed(tokens, &mut s.x[..m * c]);
        for l in 0..mc.num_layers {
            let scores = &mut s.probs[..segs.len() * cache.ctx];
            let cache = &mut *cache;
            // Appends each segment's keys and values to its row's cache, then attends over
            // everything cached for the row; one task per segment.
            let attend = |qkv: &[f32], att: &mut [f32]| {
                for (si, seg) in segs.iter().enumerate() {
                    for i in 0..seg.len {
                        let src = &qkv[(seg_tok[si] + i) * q..(seg_tok[si] + i + 1) * q];
                        let (o, pos, ctx) = (cache.offset(l, seg.row), seg.start + i, cache.ctx);
                        // Key dimension e (head e / D, index e % D) goes to row e of the (W, ctx) block.
                        for (e, &kv) in src[c..c + w].iter().enumerate() {
                            cache.k[o + e * ctx + pos] = kv;
                        }
                        cache.v[o + pos * w..o + (pos + 1) * w].copy_from_slice(&src[c + w..]);
                    }
                }
                let kv_len = cache.ctx * w;
                let cache = &*cache;
                // Each task owns its segment's rows of `att` and its slice of `scores`.
                let mut tasks: Vec<(&Segment, &mut [f32], &mut [f32])> =
                    Vec::with_capacity(segs.len());
                let (mut att_rest, mut score_rest) = (att, scores);
                for seg in segs {
                    let (a, ar) = std::mem::take(&mut att_rest).split_at_mut(seg.len * c);
                    let (sc, sr) = std::mem::take(&mut score_rest).split_at_mut(cache.ctx);
                    tasks.push((seg, a, sc));
                    att_rest = ar;
                    score_rest = sr;
                }
                let run =
                    |((seg, out, scores), &t0): ((&Segment, &mut [f32], &mut [f32]), &usize)| {
                        let kv0 = cache.offset(l, seg.row);
                        kernels::attention_cached(
                            &qkv[t0 * q..(t0 + seg.len) * q],
                            q,
                            &cache.k[kv0..kv0 + kv_len],
                            &cache.v[kv0..kv0 + kv_len],
                            cache.ctx,
                            out,
                            scores,
                            seg.len,
                            seg.start,
                            h,
                            mc.num_kv_heads,
                            d,
                        );
                    };
                if par {
                    tasks.into_par_iter().zip(seg_tok.par_iter()).for_each(run);
                } else {
                    tasks.into_iter().zip(seg_tok.iter()).for_each(run);
                }
            };
            // One residual buffer updated in place; every stage's scratch is reused.
            let io = LayerIo {
                resid: Stages::reused(&mut s.x, m * c),
                normed: Stages::reused(&mut s.normed, m * c),
                rstd: Stages::reused(&mut s.rstd, m),
                qkv: &mut s.qkv[..m * q],
                att: &mut s.att[..m * c],
                gu: &mut s.gu[..m * 2 * f],
                act: &mut s.act[..m * f],
                sig: None,
                positions: &positions,
            };
            self.layer_forward(l, io, attend, par);
        }
        // Last token of each segment → final norm → logits. (S, V)
        let ns = segs.len();
        grow(&mut s.last, ns * c);
        for (si, seg) in segs.iter().enumerate() {
            let t = seg_tok[si] + seg.len - 1;
            s.last[si * c..(si + 1) * c].copy_from_slice(&s.x[t * c..(t + 1) * c]);
        }
        grow(&mut s.logits, ns * v);
        self.head(
            &s.last[..ns * c],
            &mut s.normed[..ns * c],
            &mut s.rstd[..ns],
            &mut s.logits[..ns * v],
            par,
        );
    }
}
