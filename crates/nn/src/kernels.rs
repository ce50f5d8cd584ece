//! CPU kernels: GEMM through the `gemm` crate, and fused row-wise kernels
//! (RMSNorm, rotary positions, SwiGLU, softmax, attention) written so that LLVM
//! vectorizes their inner loops. Every kernel works on caller-owned buffers:
//! nothing here allocates per call except the small per-task scratch of
//! attention backward.

use gemm_common::Parallelism;

/// Grows `buf` to at least `len` values (never shrinks), so reused buffers allocate once.
pub(crate) fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// A strided read-only matrix view: element (i, j) is at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    /// Row-major with leading dimension `ld`.
    pub fn rows(s: &[f32], ld: usize) -> Self {
        View {
            ptr: s.as_ptr(),
            rs: ld as isize,
            cs: 1,
        }
    }
    pub fn at(ptr: *const f32, ld: usize) -> Self {
        View {
            ptr,
            rs: ld as isize,
            cs: 1,
        }
    }
    /// The view starting at element (`row`, `col`).
    ///
    /// # Safety
    /// The element must be inside the allocation the view points into.
    pub unsafe fn offset(self, row: usize, col: usize) -> Self {
        View {
            ptr: self
                .ptr
                .offset(row as isize * self.rs + col as isize * self.cs),
            ..self
        }
    }
    /// The transpose of this view.
    pub fn t(self) -> Self {
        View {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `dst[m×n] (row stride ld) = (accumulate ? dst : 0) + scale · a[m×k] · b[k×n]`.
///
/// # Safety
/// Every element addressed through `dst`, `a` and `b` must be in bounds, and `dst`
/// must not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    a: View,
    b: View,
    scale: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * ld), n).fill(0.0);
            }
        }
        return;
    }
    let par = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // The microkernels want a column-major destination, and ours is row-major: compute the
    // transpose, dstᵀ (n×m, column-major) = bᵀ·aᵀ, as the `gemm` crate's front end does.
    // Arguments: m, n, k, dst, dst col stride, dst row stride, read dst, lhs (col, row stride),
    // rhs (col, row stride), alpha (dst scale), beta (product scale), conjugations, threads.
    gemm_f32::gemm::f32::get_gemm_fn()(
        n,
        m,
        k,
        dst,
        ld as isize,
        1,
        accumulate,
        b.ptr,
        b.rs,
        b.cs,
        a.ptr,
        a.rs,
        a.cs,
        1.0,
        scale,
        false,
        false,
        false,
        par,
    );
}

/// `y (n, out) (+)= x (n, inp) · wᵀ`, with `w` stored `(out, inp)` as in `nn.Linear`;
/// `accumulate` adds to `y` (a residual connection fused into the GEMM); `par` lets the GEMM
/// use the thread pool.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    accumulate: bool,
    par: bool,
) {
    assert!(y.len() >= n * out && x.len() >= n * inp && w.len() >= out * inp);
    if n <= decode::MAX_ROWS && out * inp >= decode::MIN_WEIGHTS {
        return decode::linear_rows(y, x, w, n, inp, out, accumulate, par);
    }
    unsafe {
        gemm(
            n,
            out,
            inp,
            y.as_mut_ptr(),
            out,
            accumulate,
            View::rows(x, inp),
            View::rows(w, inp).t(),
            1.0,
            par,
        )
    }
}

/// `dx (n, inp) (+)= dy (n, out) · w (out, inp)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_backward_input(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    accumulate: bool,
    par: bool,
) {
    assert!(dx.len() >= n * inp && dy.len() >= n * out && w.len() >= out * inp);
    unsafe {
        gemm(
            n,
            inp,
            out,
            dx.as_mut_ptr(),
            inp,
            accumulate,
            View::rows(dy, out),
            View::rows(w, inp),
            1.0,
            par,
        )
    }
}

/// `dw (out, inp) += dyᵀ (out, n) · x (n, inp)`.
pub(crate) fn linear_backward_weight(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    par: bool,
) {
    assert!(dw.len() >= out * inp && dy.len() >= n * out && x.len() >= n * inp);
    unsafe {
        gemm(
            out,
            inp,
            n,
            dw.as_mut_ptr(),
            inp,
            true,
            View::rows(dy, out).t(),
            View::rows(x, inp),
            1.0,
            par,
        )
    }
}

/// Defines a kernel compiled twice, for the baseline target and with AVX2 + FMA, and
/// picks the variant at run time (the check is a cached CPUID bit). Bodies are plain
/// loops over slices; with AVX2 enabled LLVM vectorizes them 8 wide. Reductions are
/// written with explicit 8-lane accumulators ([`sum`], [`dot`]), so both variants
/// round identically.
macro_rules! simd_kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the running CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}

mod decode;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `exp(x)` to about 1 ulp over the float range, branch-free so loops over it vectorize.
/// Inputs are clamped to [-87, 88] (results below ~1.6e-38 flush to that value's exp).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x·log2(e) to the nearest integer with the 1.5·2²³ trick (no libm call).
    let n = (x * LOG2E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| ≤ ln2/2: Taylor polynomial to degree 7 (error < 1e-8 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Combines 8 lane accumulators in a fixed order.
#[inline(always)]
fn fold8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// Σ x, in 8 lanes.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ch = x.chunks_exact(8);
    let tail: f32 = ch.remainder().iter().sum();
    for c in ch {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    fold8(acc) + tail
}

/// Σ a·b, in 8 lanes.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    fold8(acc) + tail
}

/// `log Σ exp(z)`, stably (max subtracted), in 8 lanes.
#[inline(always)]
pub(crate) fn log_sum_exp(z: &[f32]) -> f32 {
    let m = max(z);
    let mut acc = [0.0f32; 8];
    let ch = z.chunks_exact(8);
    let tail: f32 = ch.remainder().iter().map(|&x| exp(x - m)).sum();
    for c in ch {
        for l in 0..8 {
            acc[l] += exp(c[l] - m);
        }
    }
    m + (fold8(acc) + tail).ln()
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let ch = x.chunks_exact(8);
    let tail = ch
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in ch {
        for l in 0..8 {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

simd_kernel! {
    /// RMSNorm of each row: `y = x · rstd · w` with `rstd = 1/sqrt(mean(x²) + eps)`, saved per row.
    pub(crate) fn rmsnorm(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        let c = w.len();
        for ((yr, r), xr) in y.chunks_exact_mut(c).zip(rstd.iter_mut()).zip(x.chunks_exact(c)) {
            let rs = 1.0 / (dot(xr, xr) / c as f32 + eps).sqrt();
            *r = rs;
            for ((yi, xi), wi) in yr.iter_mut().zip(xr).zip(w) {
                *yi = xi * rs * wi;
            }
        }
    }
}

simd_kernel! {
    /// Backward of [`rmsnorm`]: `dx (+)= ∂/∂x`, `dw += ∂/∂w` given `dy`; `tmp` holds `C` floats.
    pub(crate) fn rmsnorm_backward(
        dx: &mut [f32],
        dw: &mut [f32],
        dy: &[f32],
        x: &[f32],
        rstd: &[f32],
        w: &[f32],
        tmp: &mut [f32],
        accumulate: bool,
    ) {
        let c = w.len();
        let tmp = &mut tmp[..c];
        for (((dxr, dyr), xr), &r) in dx.chunks_exact_mut(c).zip(dy.chunks_exact(c)).zip(x.chunks_exact(c)).zip(rstd) {
            // tmp = dy·w ; k = r³/C · Σ dy·w·x
            for ((t, dyi), wi) in tmp.iter_mut().zip(dyr).zip(w) {
                *t = dyi * wi;
            }
            let k = dot(tmp, xr) * r * r * r / c as f32;
            if accumulate {
                for ((dxi, ti), xi) in dxr.iter_mut().zip(tmp.iter()).zip(xr) {
                    *dxi += r * ti - k * xi;
                }
            } else {
                for ((dxi, ti), xi) in dxr.iter_mut().zip(tmp.iter()).zip(xr) {
                    *dxi = r * ti - k * xi;
                }
            }
            for ((dwi, dyi), xi) in dw.iter_mut().zip(dyr).zip(xr) {
                *dwi += dyi * xi * r;
            }
        }
    }
}

/// Cos/sin tables of rotary positions: `(context, head_dim/2)` each, Hugging Face's
/// "rotate_half" convention (dimension i pairs with i + head_dim/2).
#[derive(Clone, Debug)]
pub(crate) struct Rope {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        context: usize,
        theta: f32,
        scaling: Option<&crate::config::RopeScaling>,
    ) -> Self {
        let half = head_dim / 2;
        // As transformers computes it: inv_freq in f32, angle = pos · inv_freq in f32.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
                scaling.map_or(f, |s| s.apply(f))
            })
            .collect();
        let mut cos = Vec::with_capacity(context * half);
        let mut sin = Vec::with_capacity(context * half);
        for pos in 0..context {
            for &inv_freq in &inv_freq {
                let angle = pos as f32 * inv_freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Rope { half, cos, sin }
    }

    /// Rotates the first `width` values (whole heads) of each row of `rows` (row stride
    /// `stride`) to the row's position; `inverse` applies the transpose (the backward pass).
    pub fn apply_rows(
        &self,
        rows: &mut [f32],
        stride: usize,
        width: usize,
        positions: &[u32],
        inverse: bool,
    ) {
        rope_rows(
            rows, stride, width, positions, &self.cos, &self.sin, self.half, inverse,
        );
    }
}

simd_kernel! {
    fn rope_rows(
        rows: &mut [f32],
        stride: usize,
        width: usize,
        positions: &[u32],
        cos: &[f32],
        sin: &[f32],
        h: usize,
        inverse: bool,
    ) {
        // A rotation by −θ is the transpose of the rotation by θ.
        let sign = if inverse { -1.0f32 } else { 1.0 };
        for (row, &pos) in rows.chunks_mut(stride).zip(positions) {
            let pos = pos as usize;
            let cos = &cos[pos * h..(pos + 1) * h];
            let sin = &sin[pos * h..(pos + 1) * h];
            for head in row[..width].chunks_exact_mut(2 * h) {
                let (a, b) = head.split_at_mut(h);
                for i in 0..h {
                    let (x0, x1, c, s) = (a[i], b[i], cos[i], sign * sin[i]);
                    a[i] = x0 * c - x1 * s;
                    b[i] = x1 * c + x0 * s;
                }
            }
        }
    }
}

simd_kernel! {
    /// SwiGLU: `a = silu(g) · u` for rows laid out as `[g (F) | u (F)]`.
    pub(crate) fn swiglu(a: &mut [f32], gu: &[f32], f: usize) {
        for (ar, gur) in a.chunks_exact_mut(f).zip(gu.chunks_exact(2 * f)) {
            let (g, u) = gur.split_at(f);
            for ((ai, gi), ui) in ar.iter_mut().zip(g).zip(u) {
                *ai = gi * sigmoid(*gi) * ui;
            }
        }
    }
}

simd_kernel! {
    /// [`swiglu`] that also saves `σ(g)` for the backward pass.
    pub(crate) fn swiglu_train(a: &mut [f32], sig: &mut [f32], gu: &[f32], f: usize) {
        for ((ar, sr), gur) in a.chunks_exact_mut(f).zip(sig.chunks_exact_mut(f)).zip(gu.chunks_exact(2 * f)) {
            let (g, u) = gur.split_at(f);
            for (((ai, si), gi), ui) in ar.iter_mut().zip(sr.iter_mut()).zip(g).zip(u) {
                *si = sigmoid(*gi);
                *ai = gi * *si * ui;
            }
        }
    }
}

simd_kernel! {
    /// Backward of [`swiglu`]: writes `dgu = [dg | du]` from `da`, with `sig = σ(g)` saved by
    /// [`swiglu_train`]: `du = da·g·σ`, `dg = da·u·σ·(1 + g·(1 − σ))`.
    pub(crate) fn swiglu_backward(dgu: &mut [f32], da: &[f32], gu: &[f32], sig: &[f32], f: usize) {
        for (((dr, dar), gur), sr) in
            dgu.chunks_exact_mut(2 * f).zip(da.chunks_exact(f)).zip(gu.chunks_exact(2 * f)).zip(sig.chunks_exact(f))
        {
            let (g, u) = gur.split_at(f);
            let (dg, du) = dr.split_at_mut(f);
            for (((((dgi, dui), &a), &gi), &ui), &s) in dg.iter_mut().zip(du.iter_mut()).zip(dar).zip(g).zip(u).zip(sr) {
                *dui = a * gi * s;
                *dgi = a * ui * s * (1.0 + gi * (1.0 - s));
            }
        }
    }
}

simd_kernel! {
    /// In-place log-softmax of each row of `z` (rows of `v`); writes each row's entropy `−Σ p log p`.
    pub(crate) fn log_softmax_rows(z: &mut [f32], v: usize, entropy: &mut [f32]) {
        for (row, e) in z.chunks_exact_mut(v).zip(entropy.iter_mut()) {
            let lse = log_sum_exp(row);
            let mut acc = [0.0f32; 8];
            let mut ch = row.chunks_exact_mut(8);
            for c in &mut ch {
                for l in 0..8 {
                    c[l] -= lse;
                    acc[l] -= exp(c[l]) * c[l];
                }
            }
            let mut tail = 0.0;
            for x in ch.into_remainder() {
                *x -= lse;
                tail -= exp(*x) * *x;
            }
            *e = fold8(acc) + tail;
        }
    }
}

simd_kernel! {
    /// Gradient of `−w·log p(y) − c·H` with respect to the logits, per row:
    /// `w (p − onehot(y)) + c p (log p + H)`, from the saved log-softmax `logp` and entropy.
    pub(crate) fn logits_backward(
        dl: &mut [f32],
        logp: &[f32],
        v: usize,
        weights: &[(f32, f32)],
        targets: &[u32],
        entropy: &[f32],
    ) {
        for (((row, lp), &(w, c)), (&y, &h)) in
            dl.chunks_exact_mut(v).zip(logp.chunks_exact(v)).zip(weights).zip(targets.iter().zip(entropy))
        {
            for (g, &l) in row.iter_mut().zip(lp) {
                let p = exp(l);
                *g = w * p + c * p * (l + h);
            }
            row[y as usize] -= w;
        }
    }
}

simd_kernel! {
    /// Causal softmax in place over `n_q` rows of `n_kv` scores: row i keeps its first
    /// `offset + i + 1` entries and zeroes the rest.
    pub(crate) fn causal_softmax(probs: &mut [f32], n_q: usize, n_kv: usize, offset: usize) {
        for (i, row) in probs.chunks_exact_mut(n_kv).take(n_q).enumerate() {
            let (live, dead) = row.split_at_mut((offset + i + 1).min(n_kv));
            let m = max(live);
            for x in live.iter_mut() {
                *x = exp(*x - m);
            }
            let inv = 1.0 / sum(live);
            for x in live.iter_mut() {
                *x *= inv;
            }
            dead.fill(0.0);
        }
    }
}

simd_kernel! {
    /// Softmax backward for causal rows: `ds = p ∘ (dp − Σ p∘dp)` in place of `dp`, for rows
    /// `offset..` of an n × n block (row i keeps its first `offset + i + 1` entries).
    pub(crate) fn causal_softmax_backward(dp: &mut [f32], probs: &[f32], n: usize, offset: usize) {
        for (i, (dr, pr)) in dp.chunks_exact_mut(n).zip(probs.chunks_exact(n)).enumerate() {
            let (live, dead) = dr.split_at_mut(offset + i + 1);
            let pl = &pr[..offset + i + 1];
            let d = dot(pl, live);
            for (x, &p) in live.iter_mut().zip(pl) {
                *x = p * (*x - d);
            }
            dead.fill(0.0);
        }
    }
}

simd_kernel! {
    /// One AdamW update of a slice (see `optim.rs` for the formula).
    pub(crate) fn adamw_update(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        decay: &[bool],
        b1: f32,
        b2: f32,
        eps: f32,
        shrink: f32,
        step_size: f32,
        bc2_sqrt: f32,
    ) {
        for i in 0..p.len().min(g.len()).min(m.len()).min(v.len()).min(decay.len()) {
            let pi = if decay[i] { p[i] * shrink } else { p[i] };
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            p[i] = pi - step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
        }
    }
}

simd_kernel! {
    /// Causal attention of a few new tokens of one sequence against its KV cache, all heads,
    /// with plain loops: at decode time (one query per row) the setup cost of a GEMM call
    /// exceeds the work.
    ///
    /// Row i of `q` (stride `q_ld`, first `heads·d` values) sits at position `offset + i` and
    /// attends to cached positions `0..=offset + i`. Query head h reads key/value head
    /// `h / (heads / kv_heads)`. `k_t` holds the keys transposed, `(kv_heads·d, ctx)`; `v` the
    /// values by position, `(ctx, kv_heads·d)`; `ctx` is a multiple of 8 (scores are computed 8
    /// positions at a time, in registers). Writes row i of `out` (stride `heads·d`). `scores`
    /// holds at least `ctx` floats.
    pub(crate) fn attention_cached(
        q: &[f32],
        q_ld: usize,
        k_t: &[f32],
        v: &[f32],
        ctx: usize,
        out: &mut [f32],
        scores: &mut [f32],
        n_q: usize,
        offset: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
    ) {
        let (c, w, group) = (heads * d, kv_heads * d, heads / kv_heads);
        let scale = 1.0 / (d as f32).sqrt();
        for i in 0..n_q {
            let n_kv = offset + i + 1;
            let qr = &q[i * q_ld..i * q_ld + c];
            let orow = &mut out[i * c..(i + 1) * c];
            for h in 0..heads {
                let (qh, kh) = (&qr[h * d..(h + 1) * d], &k_t[h / group * d * ctx..]);
                // 32 positions at a time (four independent 8-lane chains), then 8 at a time.
                let n8 = n_kv.div_ceil(8) * 8;
                let n32 = n8 / 32 * 32;
                let (wide, narrow) = scores[..n8].split_at_mut(n32);
                for (jb, sc) in wide.chunks_exact_mut(32).enumerate() {
                    let mut acc = [0.0f32; 32];
                    for (e, &qe) in qh.iter().enumerate() {
                        let kk = &kh[e * ctx + jb * 32..e * ctx + jb * 32 + 32];
                        for l in 0..32 {
                            acc[l] += qe * kk[l];
                        }
                    }
                    for l in 0..32 {
                        sc[l] = acc[l] * scale;
                    }
                }
                for (jb, sc) in narrow.chunks_exact_mut(8).enumerate() {
                    let j0 = n32 + jb * 8;
                    let mut acc = [0.0f32; 8];
                    for (e, &qe) in qh.iter().enumerate() {
                        let kk = &kh[e * ctx + j0..e * ctx + j0 + 8];
                        for l in 0..8 {
                            acc[l] += qe * kk[l];
                        }
                    }
                    for l in 0..8 {
                        sc[l] = acc[l] * scale;
                    }
                }
                let s = &mut scores[..n_kv];
                causal_softmax(s, 1, n_kv, n_kv - 1);
                // O = Σ_j p_j v_j, 8 dimensions at a time so the accumulators stay in registers
                // (two chains, even and odd positions, to hide the add latency).
                let oh = &mut orow[h * d..(h + 1) * d];
                let mut chunks = oh.chunks_exact_mut(8);
                for (ci, oc) in (&mut chunks).enumerate() {
                    let lo = h / group * d + ci * 8;
                    let (mut a0, mut a1) = ([0.0f32; 8], [0.0f32; 8]);
                    let mut pairs = s.chunks_exact(2);
                    let mut j = 0;
                    for pj in &mut pairs {
                        let v0 = &v[j * w + lo..j * w + lo + 8];
                        let v1 = &v[(j + 1) * w + lo..(j + 1) * w + lo + 8];
                        for l in 0..8 {
                            a0[l] += pj[0] * v0[l];
                            a1[l] += pj[1] * v1[l];
                        }
                        j += 2;
                    }
                    if let [p_last] = pairs.remainder() {
                        let vl = &v[j * w + lo..j * w + lo + 8];
                        for l in 0..8 {
                            a0[l] += p_last * vl[l];
                        }
                    }
                    for l in 0..8 {
                        oc[l] = a0[l] + a1[l];
                    }
                }
                // Head dimensions beyond a multiple of 8.
                let rest = chunks.into_remainder();
                let (lo, r) = (h / group * d + d / 8 * 8, rest.len());
                rest.fill(0.0);
                for (j, &p) in s.iter().enumerate() {
                    for (o, &x) in rest.iter_mut().zip(&v[j * w + lo..j * w + lo + r]) {
                        *o += p * x;
                    }
                }
            }
        }
    }
}

/// Rows per block of the causal attention GEMMs: a block of query rows multiplies only the
/// keys it can see, which skips about a quarter of the work at 64 positions and more beyond.
const ATT_BLOCK: usize = 32;

/// One (sequence, head) of causal self-attention over `n` positions.
///
/// `q`, `k`, `v` are `n × head_dim` views; query i sees keys `0..=i`. `probs` (n × n, row-major)
/// receives the attention weights (zero above the diagonal); `out` rows (stride `out_ld`)
/// receive `probs · v`.
///
/// # Safety
/// All views must address valid memory for the sizes given, and `out` must not overlap the inputs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attention_head(
    q: View,
    k: View,
    v: View,
    out: *mut f32,
    out_ld: usize,
    probs: &mut [f32],
    n: usize,
    head_dim: usize,
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    for r0 in (0..n).step_by(ATT_BLOCK) {
        let r1 = (r0 + ATT_BLOCK).min(n);
        // Rows r0..r1 see keys 0..r1: S = scale · Q Kᵀ, then the causal softmax (which zeroes
        // the rest of each row), then O = P V.
        let rows = probs[r0 * n..].as_mut_ptr();
        gemm(
            r1 - r0,
            r1,
            head_dim,
            rows,
            n,
            false,
            q.offset(r0, 0),
            k.t(),
            scale,
            false,
        );
        causal_softmax(&mut probs[r0 * n..r1 * n], r1 - r0, n, r0);
        let p = View::rows(&probs[r0 * n..], n);
        gemm(
            r1 - r0,
            head_dim,
            r1,
            out.add(r0 * out_ld),
            out_ld,
            false,
            p,
            v,
            1.0,
            false,
        );
    }
}

/// Backward of [`attention_head`]. Writes `dq`, `dk`, `dv` (each `n × head_dim`, row stride
/// `d_ld`), or with `accumulate_kv` adds to `dk` and `dv` (the query heads of a grouped-query
/// attention group share them); `scratch` holds `n²` floats.
///
/// # Safety
/// As for [`attention_head`]; the three outputs must not overlap each other or the inputs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attention_head_backward(
    q: View,
    k: View,
    v: View,
    probs: &[f32],
    dout: View,
    dq: *mut f32,
    dk: *mut f32,
    dv: *mut f32,
    d_ld: usize,
    accumulate_kv: bool,
    scratch: &mut [f32],
    n: usize,
    head_dim: usize,
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    let p = View::rows(probs, n);
    let ds = View::rows(scratch, n);
    for r0 in (0..n).step_by(ATT_BLOCK) {
        let r1 = (r0 + ATT_BLOCK).min(n);
        // dP = dO Vᵀ for rows r0..r1 (keys 0..r1), then dS = P ∘ (dP − rowsum(P ∘ dP)).
        let rows = scratch[r0 * n..].as_mut_ptr();
        gemm(
            r1 - r0,
            r1,
            head_dim,
            rows,
            n,
            false,
            dout.offset(r0, 0),
            v.t(),
            1.0,
            false,
        );
        causal_softmax_backward(&mut scratch[r0 * n..r1 * n], &probs[r0 * n..r1 * n], n, r0);
    }
    for c0 in (0..n).step_by(ATT_BLOCK) {
        let c1 = (c0 + ATT_BLOCK).min(n);
        // Rows c0..c1 of dQ = scale · dS K use keys 0..c1.
        gemm(
            c1 - c0,
            head_dim,
            c1,
            dq.add(c0 * d_ld),
            d_ld,
            false,
            ds.offset(c0, 0),
            k,
            scale,
            false,
        );
        // Keys c0..c1 are seen by queries c0..n: dV = Pᵀ dO and dK = scale · dSᵀ Q over those rows.
        let (pt, dst) = (p.offset(c0, c0).t(), ds.offset(c0, c0).t());
        gemm(
            c1 - c0,
            head_dim,
            n - c0,
            dv.add(c0 * d_ld),
            d_ld,
            accumulate_kv,
            pt,
            dout.offset(c0, 0),
            1.0,
            false,
        );
        gemm(
            c1 - c0,
            head_dim,
            n - c0,
            dk.add(c0 * d_ld),
            d_ld,
            accumulate_kv,
            dst,
            q.offset(c0, 0),
            scale,
            false,
        );
    }
}

/// A raw pointer that may cross threads; each task writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Method access, so closures capture the whole (Send) wrapper rather than the raw field.
    #[inline(always)]
    pub fn ptr(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocked causal attention (several row blocks, the last one partial) against a direct
    /// implementation of softmax(QKᵀ/√d)·V and of its gradients.
    #[test]
    fn blocked_attention_matches_direct_formulas() {
        let (n, d) = (2 * ATT_BLOCK + 7, 8);
        let mut rng = crate::Rng::new(5);
        let mut mat = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.normal()).collect() };
        let (q, k, v, dout) = (mat(n * d), mat(n * d), mat(n * d), mat(n * d));
        let scale = 1.0 / (d as f32).sqrt();
        // Direct forward.
        let mut p_ref = vec![0.0f64; n * n];
        for i in 0..n {
            let s: Vec<f64> = (0..=i)
                .map(|j| {
                    (0..d)
                        .map(|e| (q[i * d + e] * k[j * d + e]) as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for j in 0..=i {
                p_ref[i * n + j] = (s[j] - m).exp() / z;
            }
        }
        let mut probs = vec![f32::NAN; n * n];
        let mut out = vec![0.0f32; n * d];
        unsafe {
            attention_head(
                View::at(q.as_ptr(), d),
                View::at(k.as_ptr(), d),
                View::at(v.as_ptr(), d),
                out.as_mut_ptr(),
                d,
                &mut probs,
                n,
                d,
            );
        }
        for i in 0..n {
            for j in 0..n {
                assert!(
                    (probs[i * n + j] as f64 - p_ref[i * n + j]).abs() < 1e-5,
                    "P[{i},{j}]"
                );
            }
            for e in 0..d {
                let o: f64 = (0..n).map(|j| p_ref[i * n + j] * v[j * d + e] as f64).sum();
                assert!((out[i * d + e] as f64 - o).abs() < 1e-4, "O[{i},{e}]");
            }
        }
        // Direct backward: dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − rowsum(P ∘ dP)), dQ = scale dS K, dK = scale dSᵀ Q.
        let mut ds = vec![0.0f64; n * n];
        for i in 0..n {
            let dp: Vec<f64> = (0..n)
                .map(|j| {
                    (0..d)
                        .map(|e| (dout[i * d + e] * v[j * d + e]) as f64)
                        .sum()
                })
                .collect();
            let r: f64 = (0..n).map(|j| p_ref[i * n + j] * dp[j]).sum();
            for j in 0..n {
                ds[i * n + j] = p_ref[i * n + j] * (dp[j] - r);
            }
        }
        let (mut dq, mut dk, mut dv) = (
            vec![0.0f32; n * d],
            vec![0.0f32; n * d],
            vec![0.0f32; n * d],
        );
        let mut scratch = vec![f32::NAN; n * n];
        unsafe {
            attention_head_backward(
                View::at(q.as_ptr(), d),
                View::at(k.as_ptr(), d),
                View::at(v.as_ptr(), d),
                &probs,
                View::at(dout.as_ptr(), d),
                dq.as_mut_ptr(),
                dk.as_mut_ptr(),
                dv.as_mut_ptr(),
                d,
                false,
                &mut scratch,
                n,
                d,
            );
        }
        for a in 0..n {
            for e in 0..d {
                let want_dv: f64 = (0..n)
                    .map(|i| p_ref[i * n + a] * dout[i * d + e] as f64)
                    .sum();
                let want_dq: f64 = (0..n)
                    .map(|j| ds[a * n + j] * k[j * d + e] as f64)
                    .sum::<f64>()
                    * scale as f64;
                let want_dk: f64 = (0..n)
                    .map(|i| ds[i * n + a] * q[i * d + e] as f64)
                    .sum::<f64>()
                    * scale as f64;
                assert!((dv[a * d + e] as f64 - want_dv).abs() < 1e-4, "dV[{a},{e}]");
                assert!((dq[a * d + e] as f64 - want_dq).abs() < 1e-4, "dQ[{a},{e}]");
                assert!((dk[a * d + e] as f64 - want_dk).abs() < 1e-4, "dK[{a},{e}]");
            }
        }
    }

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), (-87.0f32).exp().max(exp(-87.0)));
    }

    #[test]
    fn gemm_transposes() {
        // a (2×3), b (3×2) given as bᵀ stored (2×3)
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bt = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let mut y = [0.0; 4];
        linear(&mut y, &a, &bt, 2, 3, 2, false, false);
        assert_eq!(y, [-2.0, 4.0, -2.0, 13.0]);
        let mut dw = [0.0; 6];
        linear_backward_weight(&mut dw, &y, &a, 2, 3, 2, false);
        // dw = yᵀ a
        assert_eq!(dw, [-10.0, -14.0, -18.0, 56.0, 73.0, 90.0]);
    }

    #[test]
    fn rope_inverse_undoes_forward() {
        let rope = Rope::new(8, 16, 10_000.0, None);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.37 - 2.0).collect();
        let mut x = orig.clone();
        rope.apply_rows(&mut x, 16, 16, &[11], false);
        assert!(x.iter().zip(&orig).any(|(a, b)| (a - b).abs() > 1e-3));
        rope.apply_rows(&mut x, 16, 16, &[11], true);
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
