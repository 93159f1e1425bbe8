//! Safe operations on [`Array`]: each builds a lazy graph node through the ops table and
//! returns MLX's own message when the inputs do not fit.

use crate::array::{call1, check, ops, Array};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::ops_table::{BinaryOp, Handle, PadMode, ReduceOp, UnaryOp};

fn raw_or_null(a: Option<&Array>) -> Handle {
    a.map_or(std::ptr::null_mut(), Array::as_raw)
}

macro_rules! unary_methods {
    ($($name:ident => $op:ident),* $(,)?) => {$(
        pub fn $name(&self) -> Result<Array> { self.unary(UnaryOp::$op) }
    )*};
}

macro_rules! binary_methods {
    ($($name:ident => $op:ident),* $(,)?) => {$(
        pub fn $name(&self, other: &Array) -> Result<Array> { self.binary(BinaryOp::$op, other) }
    )*};
}

impl Array {
    pub fn unary(&self, op: UnaryOp) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().unary)(op as u32, self.as_raw(), out) })
    }

    pub fn binary(&self, op: BinaryOp, other: &Array) -> Result<Array> {
        // SAFETY: live handles in, owned handle out.
        call1(|out| unsafe { (ops().binary)(op as u32, self.as_raw(), other.as_raw(), out) })
    }

    unary_methods! {
        neg => Neg, exp => Exp, log => Log, sqrt => Sqrt, rsqrt => Rsqrt, tanh => Tanh,
        erf => Erf, sigmoid => Sigmoid, abs => Abs, square => Square, sin => Sin, cos => Cos,
        floor => Floor, ceil => Ceil, logical_not => LogicalNot, contiguous => Contiguous,
        log1p => Log1p, sign => Sign, round => Round, stop_gradient => StopGradient,
        reciprocal => Reciprocal, erfinv => Erfinv, isnan => IsNan,
    }

    binary_methods! {
        add => Add, subtract => Subtract, multiply => Multiply, divide => Divide,
        maximum => Maximum, minimum => Minimum, power => Power, equal => Equal,
        not_equal => NotEqual, less => Less, less_equal => LessEqual, greater => Greater,
        greater_equal => GreaterEqual, logical_and => LogicalAnd, logical_or => LogicalOr,
        floor_divide => FloorDivide, remainder => Remainder,
    }

    /// A scalar of this array's dtype (f32 for non-float arrays), for broadcasting with it.
    pub fn scalar_like(&self, value: f64) -> Result<Array> {
        let dt = if self.dtype().is_float() { self.dtype() } else { Dtype::F32 };
        Array::scalar(value, dt)
    }

    /// `x * sigmoid(x)`.
    pub fn silu(&self) -> Result<Array> {
        self.multiply(&self.sigmoid()?)
    }

    /// GELU, exact (erf) form: `0.5 x (1 + erf(x / sqrt 2))`.
    pub fn gelu(&self) -> Result<Array> {
        let inner = self.multiply(&self.scalar_like(std::f64::consts::FRAC_1_SQRT_2)?)?.erf()?;
        let one = self.scalar_like(1.0)?;
        self.multiply(&inner.add(&one)?)?.multiply(&self.scalar_like(0.5)?)
    }

    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    pub fn gelu_approx(&self) -> Result<Array> {
        let c = self.scalar_like((2.0 / std::f64::consts::PI).sqrt())?;
        let x3 = self.multiply(&self.square()?)?.multiply(&self.scalar_like(0.044715)?)?;
        let t = self.add(&x3)?.multiply(&c)?.tanh()?;
        let half = self.scalar_like(0.5)?;
        self.multiply(&half)?.multiply(&t.add(&self.scalar_like(1.0)?)?)
    }

    pub fn matmul(&self, other: &Array) -> Result<Array> {
        // SAFETY: live handles in, owned handle out.
        call1(|out| unsafe { (ops().matmul)(self.as_raw(), other.as_raw(), out) })
    }

    /// `beta * self + alpha * (a @ b)`.
    pub fn addmm(&self, a: &Array, b: &Array, alpha: f32, beta: f32) -> Result<Array> {
        // SAFETY: live handles in, owned handle out.
        call1(|out| unsafe { (ops().addmm)(self.as_raw(), a.as_raw(), b.as_raw(), alpha, beta, out) })
    }

    pub fn reshape(&self, shape: &[i32]) -> Result<Array> {
        // SAFETY: live handle and slice in, owned handle out.
        call1(|out| unsafe { (ops().reshape)(self.as_raw(), shape.as_ptr(), shape.len(), out) })
    }

    /// Permutes axes; an empty `axes` reverses them.
    pub fn transpose(&self, axes: &[i32]) -> Result<Array> {
        // SAFETY: live handle and slice in, owned handle out.
        call1(|out| unsafe { (ops().transpose)(self.as_raw(), axes.as_ptr(), axes.len(), out) })
    }

    /// Reverses the axes (matrix transpose for 2-D).
    pub fn t(&self) -> Result<Array> {
        self.transpose(&[])
    }

    pub fn swapaxes(&self, axis1: i32, axis2: i32) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().swapaxes)(self.as_raw(), axis1, axis2, out) })
    }

    pub fn expand_dims(&self, axes: &[i32]) -> Result<Array> {
        // SAFETY: live handle and slice in, owned handle out.
        call1(|out| unsafe { (ops().expand_dims)(self.as_raw(), axes.as_ptr(), axes.len(), out) })
    }

    /// Removes the given size-1 axes; an empty `axes` removes all of them.
    pub fn squeeze(&self, axes: &[i32]) -> Result<Array> {
        // SAFETY: live handle and slice in, owned handle out.
        call1(|out| unsafe { (ops().squeeze)(self.as_raw(), axes.as_ptr(), axes.len(), out) })
    }

    pub fn broadcast_to(&self, shape: &[i32]) -> Result<Array> {
        // SAFETY: live handle and slice in, owned handle out.
        call1(|out| unsafe { (ops().broadcast_to)(self.as_raw(), shape.as_ptr(), shape.len(), out) })
    }

    /// Splits at `indices` along `axis` into `indices.len() + 1` parts.
    pub fn split_at(&self, indices: &[i32], axis: i32) -> Result<Vec<Array>> {
        let mut outs: Vec<Handle> = vec![std::ptr::null_mut(); indices.len() + 1];
        // SAFETY: `outs` has room for every part; inputs are live.
        check(unsafe {
            (ops().split)(self.as_raw(), indices.as_ptr(), indices.len(), axis, outs.as_mut_ptr(), outs.len())
        })?;
        // SAFETY: on success each slot holds a new owned handle.
        outs.into_iter().map(|h| unsafe { Array::from_raw(h) }).collect()
    }

    /// Splits into `parts` equal parts along `axis`.
    pub fn split_equal(&self, parts: i32, axis: i32) -> Result<Vec<Array>> {
        let n = self.dim(axis)?;
        if parts <= 0 || n % parts != 0 {
            return Err(Error::Array(format!(
                "cannot split axis {axis} of size {n} (shape {:?}) into {parts} equal parts",
                self.shape()
            )));
        }
        let step = n / parts;
        let idx: Vec<i32> = (1..parts).map(|i| i * step).collect();
        self.split_at(&idx, axis)
    }

    /// Strided slice: one `start/stop/stride` per axis.
    pub fn slice(&self, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<Array> {
        let n = self.ndim();
        if start.len() != n || stop.len() != n || strides.len() != n {
            return Err(Error::Array(format!(
                "slice needs one start/stop/stride per axis of shape {:?}, got {}/{}/{}",
                self.shape(),
                start.len(),
                stop.len(),
                strides.len()
            )));
        }
        // SAFETY: the three slices have `n` elements each.
        call1(|out| unsafe { (ops().slice)(self.as_raw(), start.as_ptr(), stop.as_ptr(), strides.as_ptr(), n, out) })
    }

    /// `[start, stop)` along one axis, everything along the others.
    pub fn slice_axis(&self, axis: i32, start: i32, stop: i32) -> Result<Array> {
        let shape = self.shape();
        let a = if axis < 0 { axis + shape.len() as i32 } else { axis } as usize;
        if a >= shape.len() {
            return Err(Error::Array(format!("axis {axis} is out of range for shape {shape:?}")));
        }
        let mut lo = vec![0; shape.len()];
        let mut hi = shape.clone();
        lo[a] = start;
        hi[a] = stop;
        self.slice(&lo, &hi, &vec![1; shape.len()])
    }

    /// A copy of `self` with the strided region replaced by `update`.
    pub fn slice_update(&self, update: &Array, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<Array> {
        let n = self.ndim();
        if start.len() != n || stop.len() != n || strides.len() != n {
            return Err(Error::Array(format!(
                "slice_update needs one start/stop/stride per axis of shape {:?}",
                self.shape()
            )));
        }
        // SAFETY: the three slices have `n` elements each.
        call1(|out| unsafe {
            (ops().slice_update)(
                self.as_raw(),
                update.as_raw(),
                start.as_ptr(),
                stop.as_ptr(),
                strides.as_ptr(),
                n,
                out,
            )
        })
    }

    pub fn take(&self, indices: &Array, axis: i32) -> Result<Array> {
        // SAFETY: live handles in, owned handle out.
        call1(|out| unsafe { (ops().take)(self.as_raw(), indices.as_raw(), axis, out) })
    }

    pub fn take_along_axis(&self, indices: &Array, axis: i32) -> Result<Array> {
        // SAFETY: live handles in, owned handle out.
        call1(|out| unsafe { (ops().take_along_axis)(self.as_raw(), indices.as_raw(), axis, out) })
    }

    pub fn put_along_axis(&self, indices: &Array, values: &Array, axis: i32) -> Result<Array> {
        // SAFETY: live handles in, owned handle out.
        call1(|out| unsafe { (ops().put_along_axis)(self.as_raw(), indices.as_raw(), values.as_raw(), axis, out) })
    }

    /// Reduces over `axes` (all axes when empty).
    pub fn reduce(&self, op: ReduceOp, axes: &[i32], keepdims: bool) -> Result<Array> {
        // SAFETY: live handle and slice in, owned handle out.
        call1(|out| unsafe { (ops().reduce)(op as u32, self.as_raw(), axes.as_ptr(), axes.len(), keepdims, out) })
    }

    pub fn sum(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
        self.reduce(ReduceOp::Sum, axes, keepdims)
    }
    pub fn max(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
        self.reduce(ReduceOp::Max, axes, keepdims)
    }
    pub fn min(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
        self.reduce(ReduceOp::Min, axes, keepdims)
    }
    pub fn mean(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
        self.reduce(ReduceOp::Mean, axes, keepdims)
    }

    /// Softmax over `axes`; `precise` accumulates in f32 for low-precision inputs.
    pub fn softmax(&self, axes: &[i32], precise: bool) -> Result<Array> {
        // SAFETY: live handle and slice in, owned handle out.
        call1(|out| unsafe { (ops().softmax)(self.as_raw(), axes.as_ptr(), axes.len(), precise, out) })
    }

    pub fn logsumexp(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
        // SAFETY: live handle and slice in, owned handle out.
        call1(|out| unsafe { (ops().logsumexp)(self.as_raw(), axes.as_ptr(), axes.len(), keepdims, out) })
    }

    /// `x - logsumexp(x)` along `axis`.
    pub fn log_softmax(&self, axis: i32) -> Result<Array> {
        self.subtract(&self.logsumexp(&[axis], true)?)
    }

    /// Index of the largest element along `axis` (uint32).
    pub fn argmax(&self, axis: i32, keepdims: bool) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().argmax)(self.as_raw(), axis, keepdims, out) })
    }

    pub fn argmin(&self, axis: i32, keepdims: bool) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().argmin)(self.as_raw(), axis, keepdims, out) })
    }

    pub fn sort(&self, axis: i32) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().sort)(self.as_raw(), axis, out) })
    }

    pub fn argsort(&self, axis: i32) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().argsort)(self.as_raw(), axis, out) })
    }

    /// Indices that put the `kth` element in sorted position, smaller ones before it.
    pub fn argpartition(&self, kth: i32, axis: i32) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().argpartition)(self.as_raw(), kth, axis, out) })
    }

    /// The `k` largest values along `axis`, in no particular order.
    pub fn topk(&self, k: i32, axis: i32) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().topk)(self.as_raw(), k, axis, out) })
    }

    pub fn cumsum(&self, axis: i32, reverse: bool, inclusive: bool) -> Result<Array> {
        // SAFETY: live handle in, owned handle out.
        call1(|out| unsafe { (ops().cumsum)(self.as_raw(), axis, reverse, inclusive, out) })
    }

    /// 2-D convolution, NHWC input and `[C_out, KH, KW, C_in / groups]` weight.
    pub fn conv2d(
        &self,
        weight: &Array,
        stride: [i32; 2],
        padding: [i32; 2],
        dilation: [i32; 2],
        groups: i32,
    ) -> Result<Array> {
        // SAFETY: the three arrays have two elements each; handles are live.
        call1(|out| unsafe {
            (ops().conv2d)(
                self.as_raw(),
                weight.as_raw(),
                stride.as_ptr(),
                padding.as_ptr(),
                dilation.as_ptr(),
                groups,
                out,
            )
        })
    }

    /// 1-D convolution, NLC input and `[C_out, K, C_in / groups]` weight (ABI 1.1).
    pub fn conv1d(&self, weight: &Array, stride: i32, padding: i32, dilation: i32, groups: i32) -> Result<Array> {
        // SAFETY: live handles in, owned handle out.
        call1(|out| unsafe { (ops().conv1d)(self.as_raw(), weight.as_raw(), stride, padding, dilation, groups, out) })
    }

    /// Pads each axis of `widths` (`(axis, before, after)`) with `value` (ABI 1.1).
    pub fn pad(&self, widths: &[(i32, i32, i32)], value: f64) -> Result<Array> {
        self.pad_with(widths, PadMode::Constant, value)
    }

    /// Pads each axis of `widths` (`(axis, before, after)`) as `mode` says; `value` is used by
    /// [`PadMode::Constant`] only (ABI 1.1).
    pub fn pad_with(&self, widths: &[(i32, i32, i32)], mode: PadMode, value: f64) -> Result<Array> {
        let axes: Vec<i32> = widths.iter().map(|w| w.0).collect();
        let low: Vec<i32> = widths.iter().map(|w| w.1).collect();
        let high: Vec<i32> = widths.iter().map(|w| w.2).collect();
        // SAFETY: three arrays of `widths.len()` values; live handle in, owned handle out.
        call1(|out| unsafe {
            (ops().pad)(self.as_raw(), axes.as_ptr(), low.as_ptr(), high.as_ptr(), axes.len(), value, mode as u32, out)
        })
    }
}

/// `a[lhs_indices] @ b[rhs_indices]`: a matmul per batch entry with the operands picked by
/// index along the batch dimensions (`None` = the identity), as mixture-of-experts layers use
/// it. `sorted`: `rhs_indices` is sorted, which allows a faster kernel (ABI 1.1).
pub fn gather_mm(
    a: &Array,
    b: &Array,
    lhs_indices: Option<&Array>,
    rhs_indices: Option<&Array>,
    sorted: bool,
) -> Result<Array> {
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe {
        (ops().gather_mm)(a.as_raw(), b.as_raw(), raw_or_null(lhs_indices), raw_or_null(rhs_indices), sorted, out)
    })
}

/// [`quantized_matmul`] with the experts of `wq`/`scales`/`biases` picked by index, as
/// [`gather_mm`] (ABI 1.1).
#[allow(clippy::too_many_arguments)]
pub fn gather_qmm(
    x: &Array,
    wq: &Array,
    scales: &Array,
    biases: Option<&Array>,
    lhs_indices: Option<&Array>,
    rhs_indices: Option<&Array>,
    transpose: bool,
    group_size: i32,
    bits: i32,
    sorted: bool,
) -> Result<Array> {
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe {
        (ops().gather_qmm)(
            x.as_raw(),
            wq.as_raw(),
            scales.as_raw(),
            raw_or_null(biases),
            raw_or_null(lhs_indices),
            raw_or_null(rhs_indices),
            transpose,
            group_size,
            bits,
            sorted,
            out,
        )
    })
}

/// Elementwise selection: `cond ? a : b` (broadcasting).
pub fn where_(cond: &Array, a: &Array, b: &Array) -> Result<Array> {
    // SAFETY: live handles in, owned handle out.
    call1(|out| unsafe { (ops().where_)(cond.as_raw(), a.as_raw(), b.as_raw(), out) })
}

pub fn concatenate(arrays: &[&Array], axis: i32) -> Result<Array> {
    let handles: Vec<Handle> = arrays.iter().map(|a| a.as_raw()).collect();
    // SAFETY: `handles` are live borrowed handles.
    call1(|out| unsafe { (ops().concatenate)(handles.as_ptr(), handles.len(), axis, out) })
}

/// Affine quantization of `w` along its last axis: `(wq, scales, biases)`.
pub fn quantize(w: &Array, group_size: i32, bits: i32) -> Result<(Array, Array, Array)> {
    let (mut q, mut s, mut b): (Handle, Handle, Handle) =
        (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: three out-slots, live input.
    check(unsafe { (ops().quantize)(w.as_raw(), group_size, bits, &mut q, &mut s, &mut b) })?;
    // SAFETY: on success each slot holds a new owned handle.
    unsafe { Ok((Array::from_raw(q)?, Array::from_raw(s)?, Array::from_raw(b)?)) }
}

pub fn dequantize(wq: &Array, scales: &Array, biases: Option<&Array>, group_size: i32, bits: i32) -> Result<Array> {
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe { (ops().dequantize)(wq.as_raw(), scales.as_raw(), raw_or_null(biases), group_size, bits, out) })
}

/// `x @ dequantize(w).T` when `transpose`, else `x @ dequantize(w)`.
pub fn quantized_matmul(
    x: &Array,
    wq: &Array,
    scales: &Array,
    biases: Option<&Array>,
    transpose: bool,
    group_size: i32,
    bits: i32,
) -> Result<Array> {
    // SAFETY: live handles (or null) in, owned handle out.
    call1(|out| unsafe {
        (ops().quantized_matmul)(
            x.as_raw(),
            wq.as_raw(),
            scales.as_raw(),
            raw_or_null(biases),
            transpose,
            group_size,
            bits,
            out,
        )
    })
}

pub(crate) fn opt_raw(a: Option<&Array>) -> Handle {
    raw_or_null(a)
}

macro_rules! std_binop {
    ($tr:ident, $m:ident, $op:ident) => {
        impl std::ops::$tr<&Array> for &Array {
            type Output = Result<Array>;
            fn $m(self, rhs: &Array) -> Result<Array> {
                self.binary(BinaryOp::$op, rhs)
            }
        }
        impl std::ops::$tr<f32> for &Array {
            type Output = Result<Array>;
            fn $m(self, rhs: f32) -> Result<Array> {
                self.binary(BinaryOp::$op, &self.scalar_like(rhs as f64)?)
            }
        }
        impl std::ops::$tr<&Array> for f32 {
            type Output = Result<Array>;
            fn $m(self, rhs: &Array) -> Result<Array> {
                rhs.scalar_like(self as f64)?.binary(BinaryOp::$op, rhs)
            }
        }
    };
}

std_binop!(Add, add, Add);
std_binop!(Sub, sub, Subtract);
std_binop!(Mul, mul, Multiply);
std_binop!(Div, div, Divide);

impl std::ops::Neg for &Array {
    type Output = Result<Array>;
    fn neg(self) -> Result<Array> {
        self.unary(UnaryOp::Neg)
    }
}
