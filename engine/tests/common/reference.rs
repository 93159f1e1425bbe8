//! Naive Rust references of the ops under test: n-d indexing and broadcasting, reductions,
//! matmul, softmax, norms, RoPE, attention, convolution, quantization and special functions.
#![allow(dead_code)]

use super::*;

// --- n-d index helpers ----------------------------------------------------------------------

pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0usize; shape.len()];
    for i in (0..shape.len()).rev() {
        idx[i] = flat % shape[i];
        flat /= shape[i];
    }
    idx
}

pub fn ushape(shape: &[i32]) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}

/// NumPy broadcasting of two shapes.
pub fn broadcast_shapes(a: &[i32], b: &[i32]) -> Vec<i32> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            assert!(da == db || da == 1 || db == 1, "shapes {a:?} and {b:?} do not broadcast");
            da.max(db)
        })
        .collect()
}

/// Flat index into an array of `shape` for output index `idx` of a broadcast result.
pub fn broadcast_index(idx: &[usize], shape: &[i32]) -> usize {
    let off = idx.len() - shape.len();
    let st = strides_of(&ushape(shape));
    shape.iter().enumerate().map(|(i, &d)| if d == 1 { 0 } else { idx[off + i] * st[i] }).sum()
}

/// Element-wise `f(a, b)` with broadcasting; returns the values and the output shape.
pub fn broadcast_binary<T: Copy, U>(
    a: &[T],
    ash: &[i32],
    b: &[T],
    bsh: &[i32],
    f: impl Fn(T, T) -> U,
) -> (Vec<U>, Vec<i32>) {
    let out = broadcast_shapes(ash, bsh);
    let ou = ushape(&out);
    let v = (0..numel(&out))
        .map(|flat| {
            let idx = unravel(flat, &ou);
            f(a[broadcast_index(&idx, ash)], b[broadcast_index(&idx, bsh)])
        })
        .collect();
    (v, out)
}

/// Reduces `data` of `shape` over `axes` (all when empty) with `f` over each lane's values.
pub fn reduce_ref<T: Copy, U>(
    data: &[T],
    shape: &[i32],
    axes: &[i32],
    keepdims: bool,
    f: impl Fn(&[T]) -> U,
) -> (Vec<U>, Vec<i32>) {
    let nd = shape.len();
    let axes: Vec<usize> = if axes.is_empty() {
        (0..nd).collect()
    } else {
        axes.iter().map(|&a| if a < 0 { (a + nd as i32) as usize } else { a as usize }).collect()
    };
    let keep_shape: Vec<i32> = (0..nd).map(|i| if axes.contains(&i) { 1 } else { shape[i] }).collect();
    let us = ushape(shape);
    let mut lanes: Vec<Vec<T>> = vec![Vec::new(); numel(&keep_shape)];
    let kst = strides_of(&ushape(&keep_shape));
    for (flat, &x) in data.iter().enumerate() {
        let idx = unravel(flat, &us);
        let o: usize = (0..nd).map(|i| if axes.contains(&i) { 0 } else { idx[i] * kst[i] }).sum();
        lanes[o].push(x);
    }
    let out: Vec<U> = lanes.iter().map(|l| f(l)).collect();
    let out_shape =
        if keepdims { keep_shape } else { (0..nd).filter(|i| !axes.contains(i)).map(|i| shape[i]).collect() };
    (out, out_shape)
}

/// Applies `f` to every lane along `axis` (which it may transform in place), in place.
pub fn map_lanes<T: Copy>(data: &mut [T], shape: &[i32], axis: i32, mut f: impl FnMut(&mut Vec<T>)) {
    let nd = shape.len() as i32;
    let ax = if axis < 0 { axis + nd } else { axis } as usize;
    let us = ushape(shape);
    let st = strides_of(&us);
    let n = us[ax];
    let outer: usize = us[..ax].iter().product();
    let inner: usize = us[ax + 1..].iter().product();
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            let mut lane: Vec<T> = (0..n).map(|k| data[base + k * st[ax]]).collect();
            f(&mut lane);
            for (k, v) in lane.into_iter().enumerate() {
                data[base + k * st[ax]] = v;
            }
        }
    }
}

/// The lanes along `axis`, in row-major order of the other axes.
pub fn lanes<T: Copy>(data: &[T], shape: &[i32], axis: i32) -> Vec<Vec<T>> {
    let nd = shape.len() as i32;
    let ax = if axis < 0 { axis + nd } else { axis } as usize;
    let us = ushape(shape);
    let n = us[ax];
    let outer: usize = us[..ax].iter().product();
    let inner: usize = us[ax + 1..].iter().product();
    let mut out = Vec::new();
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            out.push((0..n).map(|k| data[base + k * inner]).collect());
        }
    }
    out
}

// --- naive references -----------------------------------------------------------------------

/// `[M, K] @ [K, N]` in f64.
pub fn matmul_ref(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += a[i * k + p] as f64 * b[p * n + j] as f64;
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}

/// Batched matmul with broadcasting of the batch dimensions (both inputs at least 2-D).
pub fn batched_matmul_ref(a: &[f32], ash: &[i32], b: &[f32], bsh: &[i32]) -> (Vec<f32>, Vec<i32>) {
    let (m, k) = (ash[ash.len() - 2] as usize, ash[ash.len() - 1] as usize);
    let (k2, n) = (bsh[bsh.len() - 2] as usize, bsh[bsh.len() - 1] as usize);
    assert_eq!(k, k2);
    let abatch = &ash[..ash.len() - 2];
    let bbatch = &bsh[..bsh.len() - 2];
    let batch = broadcast_shapes(abatch, bbatch);
    let ub = ushape(&batch);
    let mut out = Vec::with_capacity(numel(&batch) * m * n);
    for flat in 0..numel(&batch) {
        let idx = unravel(flat, &ub);
        let ai = if abatch.is_empty() { 0 } else { broadcast_index(&idx, abatch) };
        let bi = if bbatch.is_empty() { 0 } else { broadcast_index(&idx, bbatch) };
        out.extend(matmul_ref(&a[ai * m * k..(ai + 1) * m * k], &b[bi * k * n..(bi + 1) * k * n], m, k, n));
    }
    let mut shape = batch;
    shape.push(m as i32);
    shape.push(n as i32);
    (out, shape)
}

pub fn transpose2(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = a[r * cols + c];
        }
    }
    out
}

/// Softmax of one lane in f64.
pub fn softmax_lane(x: &[f32]) -> Vec<f32> {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&v| (v / s) as f32).collect()
}

pub fn logsumexp_lane(x: &[f32]) -> f32 {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    (m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()) as f32
}

/// Softmax along `axis`.
pub fn softmax_ref(x: &[f32], shape: &[i32], axis: i32) -> Vec<f32> {
    let mut out = x.to_vec();
    map_lanes(&mut out, shape, axis, |lane| *lane = softmax_lane(lane));
    out
}

/// RMS norm over the last axis of `[rows, d]`: `x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm_ref(x: &[f32], d: usize, w: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + eps as f64).sqrt();
        for (i, &v) in row.iter().enumerate() {
            out.push((v as f64 * r * w.map_or(1.0, |w| w[i] as f64)) as f32);
        }
    }
    out
}

/// Layer norm over the last axis: `(x - mean) / sqrt(var + eps) * w + b` (biased variance).
pub fn layer_norm_ref(x: &[f32], d: usize, w: Option<&[f32]>, b: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let r = 1.0 / (var + eps as f64).sqrt();
        for (i, &v) in row.iter().enumerate() {
            let y = (v as f64 - mean) * r * w.map_or(1.0, |w| w[i] as f64) + b.map_or(0.0, |b| b[i] as f64);
            out.push(y as f32);
        }
    }
    out
}

/// Rotary embedding of `x` with shape `[..., L, D]`.
///
/// The first `dims` features of each position `p` (index along axis -2) are rotated by angles
/// `(offset + p) * scale * inv_freq[i]`, `i < dims / 2`; features past `dims` pass through.
/// `traditional` pairs features `(2i, 2i+1)`; otherwise `(i, i + dims/2)`.
/// `inv_freq` is `base^(-2i/dims)` for a base, or `1 / freqs[i]` for MLX's explicit `freqs`
/// (MLX's `freqs` are periods like `base^(2i/dims)`, which positions are divided by).
pub fn rope_ref(
    x: &[f32],
    shape: &[i32],
    dims: usize,
    traditional: bool,
    inv_freq: &[f64],
    scale: f64,
    offset: i64,
) -> Vec<f32> {
    let d = *shape.last().unwrap() as usize;
    let l = shape[shape.len() - 2] as usize;
    let half = dims / 2;
    assert_eq!(inv_freq.len(), half);
    let mut out = x.to_vec();
    for (row_i, row) in x.chunks(d).enumerate() {
        let p = (row_i % l) as i64 + offset;
        let o = &mut out[row_i * d..(row_i + 1) * d];
        for (i, &f) in inv_freq.iter().enumerate() {
            let theta = p as f64 * scale * f;
            let (s, c) = theta.sin_cos();
            let (a, b) = if traditional { (2 * i, 2 * i + 1) } else { (i, i + half) };
            let (x1, x2) = (row[a] as f64, row[b] as f64);
            o[a] = (x1 * c - x2 * s) as f32;
            o[b] = (x1 * s + x2 * c) as f32;
        }
    }
    out
}

/// `base^(-2i/dims)` for `i < dims/2`.
pub fn rope_inv_freq(base: f64, dims: usize) -> Vec<f64> {
    (0..dims / 2).map(|i| base.powf(-(2.0 * i as f64) / dims as f64)).collect()
}

/// The mask of [`sdpa_ref`].
pub enum RefMask<'a> {
    None,
    /// Query `i` of `Lq` sees key `j` iff `j <= i + Lk - Lq`.
    Causal,
    /// `[Lq, Lk]`, true = attend (the same for every batch and head).
    Bool(&'a [bool]),
    /// `[Lq, Lk]` added to the scores.
    Additive(&'a [f32]),
}

/// Attention with q `[B, Hq, Lq, D]`, k/v `[B, Hkv, Lk, D]`; query head `h` uses kv head
/// `h / (Hq / Hkv)`.
#[allow(clippy::too_many_arguments)]
pub fn sdpa_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    scale: f32,
    mask: &RefMask<'_>,
) -> Vec<f32> {
    let groups = hq / hkv;
    let mut out = vec![0f32; b * hq * lq * d];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / groups;
            for i in 0..lq {
                let qrow = &q[((bi * hq + h) * lq + i) * d..][..d];
                let mut scores = vec![f64::NEG_INFINITY; lk];
                for (j, s) in scores.iter_mut().enumerate() {
                    let krow = &k[((bi * hkv + kh) * lk + j) * d..][..d];
                    let dot: f64 = qrow.iter().zip(krow).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mut val = dot * scale as f64;
                    match mask {
                        RefMask::None => {}
                        RefMask::Causal => {
                            if j > i + lk - lq {
                                val = f64::NEG_INFINITY;
                            }
                        }
                        RefMask::Bool(m) => {
                            if !m[i * lk + j] {
                                val = f64::NEG_INFINITY;
                            }
                        }
                        RefMask::Additive(m) => val += m[i * lk + j] as f64,
                    }
                    *s = val;
                }
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|&s| (s - mx).exp()).collect();
                let tot: f64 = e.iter().sum();
                let o = &mut out[((bi * hq + h) * lq + i) * d..][..d];
                for (c, oc) in o.iter_mut().enumerate() {
                    let mut acc = 0f64;
                    for j in 0..lk {
                        acc += e[j] / tot * v[((bi * hkv + kh) * lk + j) * d + c] as f64;
                    }
                    *oc = acc as f32;
                }
            }
        }
    }
    out
}

/// 2-D convolution: x `[N, H, W, Cin]`, w `[Cout, KH, KW, Cin/groups]`, output NHWC.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_ref(
    x: &[f32],
    xs: [usize; 4],
    w: &[f32],
    ws: [usize; 4],
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    groups: usize,
) -> (Vec<f32>, [usize; 4]) {
    let [n, h, wd, cin] = xs;
    let [cout, kh, kw, cg] = ws;
    assert_eq!(cin, cg * groups);
    let oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) / stride[0] + 1;
    let ow = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) / stride[1] + 1;
    let cout_g = cout / groups;
    let mut out = vec![0f32; n * oh * ow * cout];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..cout {
                    let g = co / cout_g;
                    let mut acc = 0f64;
                    for ky in 0..kh {
                        let iy = (oy * stride[0] + ky * dil[0]) as isize - pad[0] as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * stride[1] + kx * dil[1]) as isize - pad[1] as isize;
                            if ix < 0 || ix >= wd as isize {
                                continue;
                            }
                            for c in 0..cg {
                                let xv = x[((b * h + iy as usize) * wd + ix as usize) * cin + g * cg + c];
                                let wv = w[((co * kh + ky) * kw + kx) * cg + c];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((b * oh + oy) * ow + ox) * cout + co] = acc as f32;
                }
            }
        }
    }
    (out, [n, oh, ow, cout])
}

/// Unpacks the quantized codes of a `[rows, cols]` matrix from MLX's packed uint32 words
/// `[rows, cols * bits / 32]`: each row is a little-endian bit stream and element `j` holds bits
/// `[j * bits, (j + 1) * bits)` of it. For 2, 4 and 8 bits that is bits `(j % (32/bits)) * bits`
/// of word `j / (32/bits)`; 3- and 6-bit codes may straddle words.
pub fn unpack_codes(wq: &[u32], rows: usize, cols: usize, bits: usize) -> Vec<u32> {
    let words_per_row = cols * bits / 32;
    assert_eq!(wq.len(), rows * words_per_row, "packed length");
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let row = &wq[r * words_per_row..(r + 1) * words_per_row];
        for j in 0..cols {
            let bit = j * bits;
            let (w, off) = (bit / 32, bit % 32);
            let mut v = (row[w] as u64) >> off;
            if off + bits > 32 {
                v |= (row[w + 1] as u64) << (32 - off);
            }
            out.push((v & ((1u64 << bits) - 1)) as u32);
        }
    }
    out
}

/// `scale * q + bias` per group of `group` consecutive elements of each row.
pub fn dequantize_ref(
    codes: &[u32],
    scales: &[f32],
    biases: &[f32],
    rows: usize,
    cols: usize,
    group: usize,
) -> Vec<f32> {
    let gpr = cols / group;
    (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let g = r * gpr + c / group;
            scales[g] * codes[i] as f32 + biases[g]
        })
        .collect()
}

/// Cumulative sum of one lane.
pub fn cumsum_lane(x: &[f32], reverse: bool, inclusive: bool) -> Vec<f32> {
    let n = x.len();
    let mut out = vec![0f32; n];
    let mut acc = 0f64;
    let order: Vec<usize> = if reverse { (0..n).rev().collect() } else { (0..n).collect() };
    for &i in &order {
        if inclusive {
            acc += x[i] as f64;
            out[i] = acc as f32;
        } else {
            out[i] = acc as f32;
            acc += x[i] as f64;
        }
    }
    out
}

/// The error function in f64 (Taylor series for |x| < 3, accurate to ~1e-13 there; saturated
/// tails beyond).
pub fn erf_ref(x: f64) -> f64 {
    if x.abs() >= 6.0 {
        return x.signum();
    }
    if x.abs() > 3.0 {
        // Continued fraction for erfc on the tail.
        let a = x.abs();
        let mut f = 0.0;
        for n in (1..60).rev() {
            f = (n as f64 / 2.0) / (a + f);
        }
        let erfc = (-a * a).exp() / (std::f64::consts::PI.sqrt() * (a + f));
        return x.signum() * (1.0 - erfc);
    }
    let mut term = x;
    let mut sum = x;
    for n in 1..200 {
        term *= -x * x / n as f64;
        let t = term / (2 * n + 1) as f64;
        sum += t;
        if t.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Inverse error function by bisection then Newton on [`erf_ref`] (for |y| < 1).
pub fn erfinv_ref(y: f64) -> f64 {
    let (mut lo, mut hi) = (-6.0f64, 6.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if erf_ref(mid) < y {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut x = 0.5 * (lo + hi);
    for _ in 0..3 {
        let d = 2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp();
        x -= (erf_ref(x) - y) / d;
    }
    x
}

/// Reads f32 metadata-free bytes as little-endian f32 values.
pub fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
