//! CPU kernels: GEMM through the `gemm` crate, and fused row-wise kernels
//! (RMSNorm, rotary positions, SwiGLU, softmax, attention) written so that LLVM
//! vectorizes their inner loops. Every kernel works on caller-owned buffers:
//! nothing here allocates per call except the small per-task scratch of
//! attention backward.

use gemm::Parallelism;

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
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ld as isize,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        1.0,
        scale,
        false,
        false,
        false,
        par,
    );
}

/// `y (n, out) = x (n, inp) · wᵀ`, with `w` stored `(out, inp)` as in `nn.Linear`.
pub(crate) fn linear(y: &mut [f32], x: &[f32], w: &[f32], n: usize, inp: usize, out: usize) {
    assert!(y.len() >= n * out && x.len() >= n * inp && w.len() >= out * inp);
    unsafe {
        gemm(
            n,
            out,
            inp,
            y.as_mut_ptr(),
            out,
            false,
            View::rows(x, inp),
            View::rows(w, inp).t(),
            1.0,
            true,
        )
    }
}

/// `dx (n, inp) (+)= dy (n, out) · w (out, inp)`.
pub(crate) fn linear_backward_input(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    accumulate: bool,
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
            true,
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
            true,
        )
    }
}

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

/// RMSNorm of each row: `y = x · rstd · w` with `rstd = 1/sqrt(mean(x²) + eps)`, saved per row.
pub(crate) fn rmsnorm(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let c = w.len();
    for ((yr, r), xr) in y
        .chunks_exact_mut(c)
        .zip(rstd.iter_mut())
        .zip(x.chunks_exact(c))
    {
        let ms = sum_sq(xr) / c as f32;
        let rs = 1.0 / (ms + eps).sqrt();
        *r = rs;
        for ((yi, xi), wi) in yr.iter_mut().zip(xr).zip(w) {
            *yi = xi * rs * wi;
        }
    }
}

/// Backward of [`rmsnorm`]: `dx (+)= ∂/∂x`, `dw += ∂/∂w` given `dy`.
pub(crate) fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    rstd: &[f32],
    w: &[f32],
    accumulate: bool,
) {
    let c = w.len();
    for (((dxr, dyr), xr), &r) in dx
        .chunks_exact_mut(c)
        .zip(dy.chunks_exact(c))
        .zip(x.chunks_exact(c))
        .zip(rstd)
    {
        // dot = Σ dy·w·x
        let mut dot = 0.0;
        for ((dyi, wi), xi) in dyr.iter().zip(w).zip(xr) {
            dot += dyi * wi * xi;
        }
        let k = dot * r * r * r / c as f32;
        for (((dxi, dyi), wi), xi) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
            let g = r * dyi * wi - k * xi;
            *dxi = if accumulate { *dxi + g } else { g };
        }
        for ((dwi, dyi), xi) in dw.iter_mut().zip(dyr).zip(xr) {
            *dwi += dyi * xi * r;
        }
    }
}

fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for i in 0..8 {
            acc[i] += ch[i] * ch[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| v * v).sum::<f32>()
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
    pub fn new(head_dim: usize, context: usize, theta: f32) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(context * half);
        let mut sin = Vec::with_capacity(context * half);
        for pos in 0..context {
            for i in 0..half {
                // As transformers computes it: inv_freq in f32, angle = pos · inv_freq in f32.
                let inv_freq = 1.0 / theta.powf((2 * i) as f32 / head_dim as f32);
                let angle = pos as f32 * inv_freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Rope { half, cos, sin }
    }

    /// Rotates every head of `x` (`heads · 2·half` values) to position `pos`; `inverse` applies the transpose
    /// (the backward pass).
    #[inline]
    pub fn apply(&self, x: &mut [f32], pos: usize, inverse: bool) {
        let h = self.half;
        let cos = &self.cos[pos * h..(pos + 1) * h];
        let sin = &self.sin[pos * h..(pos + 1) * h];
        for head in x.chunks_exact_mut(2 * h) {
            let (a, b) = head.split_at_mut(h);
            for i in 0..h {
                let (x0, x1, c, s) = (a[i], b[i], cos[i], sin[i]);
                if inverse {
                    a[i] = x0 * c + x1 * s;
                    b[i] = x1 * c - x0 * s;
                } else {
                    a[i] = x0 * c - x1 * s;
                    b[i] = x1 * c + x0 * s;
                }
            }
        }
    }
}

/// SwiGLU: `a = silu(g) · u` for rows laid out as `[g (F) | u (F)]`.
pub(crate) fn swiglu(a: &mut [f32], gu: &[f32], f: usize) {
    for (ar, gur) in a.chunks_exact_mut(f).zip(gu.chunks_exact(2 * f)) {
        let (g, u) = gur.split_at(f);
        for i in 0..f {
            ar[i] = g[i] * sigmoid(g[i]) * u[i];
        }
    }
}

/// Backward of [`swiglu`]: writes `dgu = [dg | du]` from `da`.
pub(crate) fn swiglu_backward(dgu: &mut [f32], da: &[f32], gu: &[f32], f: usize) {
    for ((dr, dar), gur) in dgu
        .chunks_exact_mut(2 * f)
        .zip(da.chunks_exact(f))
        .zip(gu.chunks_exact(2 * f))
    {
        let (g, u) = gur.split_at(f);
        let (dg, du) = dr.split_at_mut(f);
        for i in 0..f {
            let s = sigmoid(g[i]);
            let silu = g[i] * s;
            du[i] = dar[i] * silu;
            dg[i] = dar[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        }
    }
}

/// In-place log-softmax of one row; returns its entropy `−Σ p log p`.
pub(crate) fn log_softmax_row(z: &mut [f32]) -> f32 {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0f32;
    for v in z.iter() {
        s += exp(v - m);
    }
    let lse = m + s.ln();
    let mut ent = 0.0;
    for v in z.iter_mut() {
        *v -= lse;
        ent -= exp(*v) * *v;
    }
    ent
}

/// Softmax in place over the first `valid` entries of `row`, zeroing the rest (the causal mask).
#[inline]
pub(crate) fn masked_softmax_row(row: &mut [f32], valid: usize) {
    let (live, dead) = row.split_at_mut(valid);
    let m = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for v in live.iter_mut() {
        *v = exp(*v - m);
        s += *v;
    }
    let inv = 1.0 / s;
    live.iter_mut().for_each(|v| *v *= inv);
    dead.fill(0.0);
}

/// One (sequence, head) of causal attention.
///
/// Queries are rows `0..n_q` of `q`, sitting at positions `offset..offset+n_q`; keys and
/// values are rows `0..n_kv` of `k`, `v` (positions `0..n_kv`). Query i sees keys
/// `0..=offset+i`. `probs` (n_q × n_kv) receives the attention weights; `out` rows receive
/// `probs · v`.
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
    n_q: usize,
    n_kv: usize,
    offset: usize,
    head_dim: usize,
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    gemm(
        n_q,
        n_kv,
        head_dim,
        probs.as_mut_ptr(),
        n_kv,
        false,
        q,
        k.t(),
        scale,
        false,
    );
    for (i, row) in probs.chunks_exact_mut(n_kv).take(n_q).enumerate() {
        masked_softmax_row(row, (offset + i + 1).min(n_kv));
    }
    gemm(
        n_q,
        head_dim,
        n_kv,
        out,
        out_ld,
        false,
        View::rows(probs, n_kv),
        v,
        1.0,
        false,
    );
}

/// Backward of [`attention_head`] for the training case (`offset = 0`, `n_q = n_kv = n`).
/// Writes `dq`, `dk`, `dv` (each `n × head_dim`, row stride `d_ld`); `scratch` holds `n²` floats.
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
    scratch: &mut [f32],
    n: usize,
    head_dim: usize,
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    let p = View::rows(probs, n);
    // dV = Pᵀ dO
    gemm(n, head_dim, n, dv, d_ld, false, p.t(), dout, 1.0, false);
    // dP = dO Vᵀ
    gemm(
        n,
        n,
        head_dim,
        scratch.as_mut_ptr(),
        n,
        false,
        dout,
        v.t(),
        1.0,
        false,
    );
    // dS = P ∘ (dP − rowsum(P ∘ dP)); masked entries have P = 0 and so dS = 0.
    for i in 0..n {
        let pr = &probs[i * n..i * n + i + 1];
        let dr = &mut scratch[i * n..(i + 1) * n];
        let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
        for j in 0..=i {
            dr[j] = pr[j] * (dr[j] - dot);
        }
        dr[i + 1..].fill(0.0);
    }
    let ds = View::rows(scratch, n);
    // dQ = scale · dS K ; dK = scale · dSᵀ Q
    gemm(n, head_dim, n, dq, d_ld, false, ds, k, scale, false);
    gemm(n, head_dim, n, dk, d_ld, false, ds.t(), q, scale, false);
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
        linear(&mut y, &a, &bt, 2, 3, 2);
        assert_eq!(y, [-2.0, 4.0, -2.0, 13.0]);
        let mut dw = [0.0; 6];
        linear_backward_weight(&mut dw, &y, &a, 2, 3, 2);
        // dw = yᵀ a
        assert_eq!(dw, [-10.0, -14.0, -18.0, 56.0, 73.0, 90.0]);
    }

    #[test]
    fn rope_inverse_undoes_forward() {
        let rope = Rope::new(8, 16, 10_000.0);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.37 - 2.0).collect();
        let mut x = orig.clone();
        rope.apply(&mut x, 11, false);
        assert!(x.iter().zip(&orig).any(|(a, b)| (a - b).abs() > 1e-3));
        rope.apply(&mut x, 11, true);
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
