//! The product of a decoding step: `y (m, n) (+)= x (m, k) · wᵀ` for a few rows (m ≤ 64) and a
//! large weight matrix `w (n, k)` stored as `nn.Linear` stores it.
//!
//! A general GEMM packs `w` into panels on every call. With thousands of rows that cost is
//! amortised; with a decoding step's 64 it is not, and because `w` is row-major the packing
//! is a strided gather from memory the weights have just been evicted from. Measured on
//! SmolLM2-135M (batch-64 sampling, 2 threads), the `gemm` crate spent more time packing
//! the weights than multiplying them.
//!
//! Here the small operand is packed instead: `x` is transposed once per call into `xt
//! (k, mp)`, `mp` the rows rounded up to whole vectors (16 lanes with AVX-512, 8 without). The
//! kernel then walks `NR` rows of `w` side by side along `k`, broadcasting one weight of each
//! against a vector of 16 rows of `xt`: each weight is read from memory exactly once per call,
//! in order, in `NR` sequential streams the hardware prefetcher follows.
//!
//! Every output is one fused multiply-add chain over `k` in order, starting from zero; with
//! `accumulate` that sum is then added to `y`. So a row's result does not depend on how many
//! rows share the call or which tile it fell in, and the AVX-512, AVX2 and scalar paths give
//! the same bits.

use super::SendPtr;
use std::cell::RefCell;

/// Rows of `x` up to which [`super::linear`] uses this kernel.
pub(crate) const MAX_ROWS: usize = 64;

/// Weight matrices from this many values (1 MiB) on may use this kernel; smaller matrices
/// (every built-in preset's) stay on the `gemm` crate, so their numbers do not change.
pub(crate) const MIN_WEIGHTS: usize = 1 << 18;

/// Rows of `w` per parallel task: enough work to amortise a task (at k = 576, 96 rows are
/// about 0.2 MB of weights), few enough to balance the smallest matrices over two threads.
const COLS_PER_TASK: usize = 96;

thread_local! {
    /// `xt`, reused between calls: decoding calls this kernel hundreds of times per token.
    static XT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y (m, n) (+)= x (m, k) · wᵀ`, `w (n, k)`; `par` splits the rows of `w` over the thread
/// pool. Callers keep `m ≤` [`MAX_ROWS`] (any `m` is correct; the tiles are sized for it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_rows(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    par: bool,
) {
    assert!(y.len() >= m * n && x.len() >= m * k && w.len() >= n * k);
    if m == 0 || n == 0 {
        return;
    }
    let lanes = if avx512() { 16 } else { 8 };
    let mp = m.div_ceil(lanes) * lanes;
    XT.with_borrow_mut(|xt| {
        // xt[p·mp + i] = x[i·k + p], zero past row m; every value is written below.
        xt.resize(k * mp, 0.0);
        // Column by column of x: the writes run in order, and the m rows being read stay in
        // L1 across the 16 columns each cache line holds.
        for (p, col) in xt[..k * mp].chunks_exact_mut(mp).enumerate() {
            for (i, v) in col[..m].iter_mut().enumerate() {
                *v = x[i * k + p];
            }
            col[m..].fill(0.0);
        }
        let xt = &xt[..k * mp];
        let dst = SendPtr(y.as_mut_ptr());
        let task = |t: usize| {
            let cols = t * COLS_PER_TASK..((t + 1) * COLS_PER_TASK).min(n);
            // SAFETY: `y` holds m × n values (asserted above) and each task writes only its
            // own columns.
            unsafe { cols_dispatch(dst, xt, w, m, mp, k, n, cols, accumulate) }
        };
        let tasks = n.div_ceil(COLS_PER_TASK);
        if par && tasks > 1 {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    });
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Writes a finished tile: `acc[u][s]` holds the sums of rows `i0 + L·u ..` of column `j + s`.
/// Rows from `m` on and columns from `j + nr` on are padding and are dropped.
///
/// # Safety
/// Rows `i0..m` and columns `j..j + nr` lie inside `y (·, n)`, which no other thread writes
/// there.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn store_tile<const L: usize, const NR: usize, const V: usize>(
    y: SendPtr,
    n: usize,
    m: usize,
    i0: usize,
    j: usize,
    nr: usize,
    acc: &[[[f32; L]; NR]; V],
    accumulate: bool,
) {
    for (u, au) in acc.iter().enumerate() {
        let r0 = i0 + L * u;
        for (r, i) in (r0..m.min(r0 + L)).enumerate() {
            for (s, a) in au.iter().enumerate().take(nr) {
                let d = unsafe { y.ptr().add(i * n + j + s) };
                unsafe { *d = if accumulate { *d + a[r] } else { a[r] } };
            }
        }
    }
}

/// Columns `cols` of the product on the widest path the CPU has.
///
/// # Safety
/// As [`store_tile`] for every row below `m` and column in `cols`; `xt` holds `k · mp`
/// values and `w` holds `n · k`.
#[allow(clippy::too_many_arguments)]
unsafe fn cols_dispatch(
    y: SendPtr,
    xt: &[f32],
    w: &[f32],
    m: usize,
    mp: usize,
    k: usize,
    n: usize,
    cols: std::ops::Range<usize>,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if mp.is_multiple_of(16) && avx512() {
        // SAFETY: the CPU has AVX-512F; the rest is the caller's promise.
        return unsafe { avx512::cols(y, xt, w, m, mp, k, n, cols, accumulate) };
    }
    portable::cols(y, xt, w, m, mp, k, n, cols, accumulate)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{store_tile, SendPtr};
    use std::arch::x86_64::*;

    /// Rows of `w` per tile for `V` vectors of 16 rows of `x`: `V · NR` accumulators plus `V`
    /// loaded vectors within the 32 registers, and at most 8 weight streams.
    const fn nr(v: usize) -> usize {
        if v >= 4 {
            6
        } else {
            8
        }
    }

    /// See [`super::cols_dispatch`]; `mp` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn cols(
        y: SendPtr,
        xt: &[f32],
        w: &[f32],
        m: usize,
        mp: usize,
        k: usize,
        n: usize,
        cols: std::ops::Range<usize>,
        accumulate: bool,
    ) {
        let mut i0 = 0;
        // Vectors of rows in groups of at most four.
        while i0 < mp {
            let v = ((mp - i0) / 16).min(4);
            unsafe {
                match v {
                    4 => tiles::<4, { nr(4) }>(y, xt, w, m, mp, k, n, i0, &cols, accumulate),
                    3 => tiles::<3, { nr(3) }>(y, xt, w, m, mp, k, n, i0, &cols, accumulate),
                    2 => tiles::<2, { nr(2) }>(y, xt, w, m, mp, k, n, i0, &cols, accumulate),
                    _ => tiles::<1, { nr(1) }>(y, xt, w, m, mp, k, n, i0, &cols, accumulate),
                }
            }
            i0 += 16 * v;
        }
    }

    /// Rows `i0..i0 + 16·V` (clipped to `m` when stored) by columns `cols`, in tiles of `NR`
    /// columns; a last partial tile repeats its last row of `w` and drops the copies.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles<const V: usize, const NR: usize>(
        y: SendPtr,
        xt: &[f32],
        w: &[f32],
        m: usize,
        mp: usize,
        k: usize,
        n: usize,
        i0: usize,
        cols: &std::ops::Range<usize>,
        accumulate: bool,
    ) {
        debug_assert!(xt.len() >= k * mp && i0 + 16 * V <= mp && w.len() >= n * k);
        let mut j = cols.start;
        while j < cols.end {
            let nr = NR.min(cols.end - j);
            let wr: [*const f32; NR] =
                std::array::from_fn(|s| unsafe { w.as_ptr().add((j + s.min(nr - 1)) * k) });
            let mut acc = [[_mm512_setzero_ps(); NR]; V];
            let mut xp = unsafe { xt.as_ptr().add(i0) };
            for p in 0..k {
                // SAFETY: p < k, so xt[p·mp + i0 .. + 16·V] and w[(j + s)·k + p] are in bounds.
                let xv: [__m512; V] =
                    std::array::from_fn(|u| unsafe { _mm512_loadu_ps(xp.add(16 * u)) });
                for s in 0..NR {
                    let b = _mm512_set1_ps(unsafe { *wr[s].add(p) });
                    for (a, x) in acc.iter_mut().zip(&xv) {
                        a[s] = _mm512_fmadd_ps(*x, b, a[s]);
                    }
                }
                xp = unsafe { xp.add(mp) };
            }
            let mut sums = [[[0.0f32; 16]; NR]; V];
            for (su, au) in sums.iter_mut().zip(&acc) {
                for (ss, a) in su.iter_mut().zip(au) {
                    unsafe { _mm512_storeu_ps(ss.as_mut_ptr(), *a) };
                }
            }
            unsafe { store_tile(y, n, m, i0, j, nr, &sums, accumulate) };
            j += nr;
        }
    }
}

mod portable {
    use super::{store_tile, SendPtr};

    /// Rows of `w` per tile: with up to 3 vectors of 8 rows, 12 accumulators, which AVX2's 16
    /// registers hold.
    const NR: usize = 4;

    simd_kernel! {
        /// See [`super::cols_dispatch`]; `mp` is a multiple of 8. The same sums as the AVX-512
        /// path, in the same order.
        pub(super) fn cols(
            y: SendPtr,
            xt: &[f32],
            w: &[f32],
            m: usize,
            mp: usize,
            k: usize,
            n: usize,
            cols: std::ops::Range<usize>,
            accumulate: bool,
        ) {
            let mut i0 = 0;
            while i0 < mp {
                let v = ((mp - i0) / 8).min(3);
                match v {
                    3 => tiles::<3>(y, xt, w, m, mp, k, n, i0, &cols, accumulate),
                    2 => tiles::<2>(y, xt, w, m, mp, k, n, i0, &cols, accumulate),
                    _ => tiles::<1>(y, xt, w, m, mp, k, n, i0, &cols, accumulate),
                }
                i0 += 8 * v;
            }
        }
    }

    /// Rows `i0..i0 + 8·V` (clipped to `m` when stored) by columns `cols`, as the AVX-512
    /// path tiles them.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn tiles<const V: usize>(
        y: SendPtr,
        xt: &[f32],
        w: &[f32],
        m: usize,
        mp: usize,
        k: usize,
        n: usize,
        i0: usize,
        cols: &std::ops::Range<usize>,
        accumulate: bool,
    ) {
        let mut j = cols.start;
        while j < cols.end {
            let nr = NR.min(cols.end - j);
            let wr: [&[f32]; NR] = std::array::from_fn(|s| &w[(j + s.min(nr - 1)) * k..][..k]);
            let mut acc = [[[0.0f32; 8]; NR]; V];
            for p in 0..k {
                let xr = &xt[p * mp + i0..][..8 * V];
                for u in 0..V {
                    let xv: [f32; 8] = xr[8 * u..8 * u + 8].try_into().unwrap();
                    for s in 0..NR {
                        let b = wr[s][p];
                        for l in 0..8 {
                            acc[u][s][l] = xv[l].mul_add(b, acc[u][s][l]);
                        }
                    }
                }
            }
            // SAFETY: rows below m and columns in `cols`, the caller's promise.
            unsafe { store_tile(y, n, m, i0, j, nr, &acc, accumulate) };
            j += nr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{gemm, View};
    use super::*;

    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0.0; m * n];
        // SAFETY: y is m × n, x is m × k and w is n × k.
        unsafe {
            gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                n,
                false,
                View::rows(x, k),
                View::rows(w, k).t(),
                1.0,
                false,
            )
        };
        y
    }

    /// Issue 14: the decoding product matches the `gemm` crate for every row count up to and
    /// past a tile, accumulates, and gives each row the same bits whatever else is in the
    /// call, on the AVX-512 and the portable path alike.
    #[test]
    fn issue14_linear_rows_matches_gemm_and_rows_are_independent() {
        let (k, n) = (37, 203); // n: 2 tasks and a partial tile of every width
        let mut rng = crate::rng::Rng::new(3);
        let x: Vec<f32> = (0..70 * k).map(|_| rng.normal()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
        let alone: Vec<Vec<f32>> = (0..70)
            .map(|r| {
                let mut one = vec![0.0; n];
                linear_rows(&mut one, &x[r * k..(r + 1) * k], &w, 1, k, n, false, false);
                one
            })
            .collect();
        for m in [1, 7, 9, 16, 17, 33, 48, 64, 70] {
            let want = reference(&x, &w, m, k, n);
            for par in [false, true] {
                let mut y = vec![0.0; m * n];
                linear_rows(&mut y, &x, &w, m, k, n, false, par);
                for (a, b) in y.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "m {m}: {a} vs {b}");
                }
                for r in 0..m {
                    assert_eq!(alone[r], y[r * n..(r + 1) * n], "m {m} row {r}");
                }
                let mut twice = y.clone();
                linear_rows(&mut twice, &x, &w, m, k, n, true, par);
                for (a, b) in twice.iter().zip(&y) {
                    assert_eq!(*a, b + b);
                }
            }
            // The portable kernel (AVX2 or scalar) gives the same bits as the dispatched one.
            let mp = m.div_ceil(16) * 16;
            let mut xt = vec![0.0; k * mp];
            for i in 0..m {
                for p in 0..k {
                    xt[p * mp + i] = x[i * k + p];
                }
            }
            let mut y = vec![0.0; m * n];
            portable::cols(SendPtr(y.as_mut_ptr()), &xt, &w, m, mp, k, n, 0..n, false);
            for r in 0..m {
                assert_eq!(alone[r], y[r * n..(r + 1) * n], "portable, m {m} row {r}");
            }
        }
    }

    /// Throughput of this kernel against the `gemm` crate at SmolLM2-135M's decoding shapes,
    /// with the weights read from memory as in a decoding step (not a check; run with
    /// `cargo test --release -p autodidact-nn --lib decode_throughput -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn decode_throughput() {
        for (m, k, n) in [
            (64, 576, 960),
            (64, 576, 576),
            (64, 576, 3072),
            (64, 1536, 576),
            (64, 576, 49152),
            (16, 576, 3072),
        ] {
            let x = vec![0.5f32; m * k];
            // Enough copies of the weights (≥ 256 MiB) that no call finds them in cache.
            let copies = (1usize << 26).div_ceil(n * k).max(2);
            let w = vec![0.25f32; copies * n * k];
            let ws: Vec<&[f32]> = w.chunks_exact(n * k).collect();
            let mut y = vec![0.0f32; m * n];
            let reps = (4e9 / (2 * m * k * n) as f64).ceil() as usize;
            let gflops = |t: std::time::Instant| {
                2e-9 * (m * k * n * reps) as f64 / t.elapsed().as_secs_f64()
            };
            for par in [false, true] {
                let t = std::time::Instant::now();
                for r in 0..reps {
                    linear_rows(&mut y, &x, ws[r % copies], m, k, n, false, par);
                }
                let rows = gflops(t);
                let t = std::time::Instant::now();
                for r in 0..reps {
                    let w = View::rows(ws[r % copies], k).t();
                    // SAFETY: y is m × n, x is m × k and w is n × k.
                    unsafe {
                        gemm(
                            m,
                            n,
                            k,
                            y.as_mut_ptr(),
                            n,
                            false,
                            View::rows(&x, k),
                            w,
                            1.0,
                            par,
                        )
                    };
                }
                let g = gflops(t);
                println!("m {m} k {k} n {n} par {par}: linear_rows {rows:.1}, gemm {g:.1} GFLOP/s");
            }
        }
    }
}
