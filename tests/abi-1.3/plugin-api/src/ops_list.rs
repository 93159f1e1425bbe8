//! The one list of the ops table's entries. Everything else about an op is generated from it:
//! the [`OpsTable`](crate::ops_table::OpsTable) struct and its per-minor layout (here), the
//! engine's `extern "C"` bindings and the table it fills (`engine/src/mlx/ffi.rs`), and the C++
//! declarations of the shim (`mlxe.h`, written by `engine/build.rs` from this file's text). So
//! adding an op touches this list and its C++ body, nothing else.
//!
//! Format (parsed by `engine/build.rs` too, so keep to it): groups `MINOR => { ... }` in
//! increasing minor, each a sequence of `fn name(arg: Type, ...) -> Ret;` with `///` docs; the
//! types are the ones `c_type` in `engine/build.rs` knows (`Handle`, `BundleHandle`,
//! `CompiledHandle`, `GroupHandle`, `CompileFn`, `FreePayloadFn`, `Status`, `c_char`, `c_void`, `bool`, `u32`,
//! `i32`, `u64`, `usize`, `f32`, `f64`, and raw pointers to those). The shim exports each entry as `mlxe_<name>`.

/// Invokes `$callback!` with the whole list (see the module docs for its shape).
#[doc(hidden)]
#[macro_export]
macro_rules! for_each_op {
    ($callback:ident) => {
        $callback! {
        0 => {
            // --- errors and lifetime -------------------------------------------------------------
            /// Message of the last failed call on this thread (UTF-8, not NUL-terminated).
            fn last_error(msg: *mut *const c_char, len: *mut usize);
            fn array_free(a: Handle);
            /// A second handle to the same (immutable) array.
            fn array_clone(a: Handle, out: *mut Handle) -> Status;

            // --- construction and read-back -------------------------------------------------------
            /// Copies `nbytes` from `data`; `nbytes` must equal product(shape) * itemsize(dtype).
            fn array_from_data(
                data: *const c_void,
                nbytes: usize,
                shape: *const i32,
                ndim: usize,
                dtype: u32,
                out: *mut Handle,
            ) -> Status;
            fn array_full(shape: *const i32, ndim: usize, value: f64, dtype: u32, out: *mut Handle) -> Status;
            fn array_arange(start: f64, stop: f64, step: f64, dtype: u32, out: *mut Handle) -> Status;
            fn array_ndim(a: Handle) -> usize;
            /// Writes up to `cap` dimensions into `out` and returns the number of dimensions.
            fn array_shape(a: Handle, out: *mut i32, cap: usize) -> usize;
            fn array_dtype(a: Handle) -> u32;
            fn array_size(a: Handle) -> usize;
            /// Evaluates `a`, and copies its elements in row-major order into `out`; `nbytes` must equal
            /// size * itemsize of the array's own dtype.
            fn array_read(a: Handle, out: *mut c_void, nbytes: usize) -> Status;
            fn astype(a: Handle, dtype: u32, out: *mut Handle) -> Status;
            fn eval(arrays: *const Handle, n: usize) -> Status;
            fn async_eval(arrays: *const Handle, n: usize) -> Status;

            // --- element-wise -----------------------------------------------------------------------
            fn unary(op: u32, a: Handle, out: *mut Handle) -> Status;
            fn binary(op: u32, a: Handle, b: Handle, out: *mut Handle) -> Status;
            fn where_(cond: Handle, a: Handle, b: Handle, out: *mut Handle) -> Status;

            // --- linear algebra and quantization ----------------------------------------------------
            fn matmul(a: Handle, b: Handle, out: *mut Handle) -> Status;
            /// `beta * c + alpha * (a @ b)`.
            fn addmm(c: Handle, a: Handle, b: Handle, alpha: f32, beta: f32, out: *mut Handle) -> Status;
            /// Affine quantization of `w` along its last axis.
            fn quantize(
                w: Handle,
                group_size: i32,
                bits: i32,
                out_wq: *mut Handle,
                out_scales: *mut Handle,
                out_biases: *mut Handle,
            ) -> Status;
            fn dequantize(
                wq: Handle,
                scales: Handle,
                biases: Handle,
                group_size: i32,
                bits: i32,
                out: *mut Handle,
            ) -> Status;
            fn quantized_matmul(
                x: Handle,
                wq: Handle,
                scales: Handle,
                biases: Handle,
                transpose: bool,
                group_size: i32,
                bits: i32,
                out: *mut Handle,
            ) -> Status;

            // --- shape ------------------------------------------------------------------------------
            fn reshape(a: Handle, shape: *const i32, ndim: usize, out: *mut Handle) -> Status;
            /// `n == 0` reverses the axes.
            fn transpose(a: Handle, axes: *const i32, n: usize, out: *mut Handle) -> Status;
            fn swapaxes(a: Handle, axis1: i32, axis2: i32, out: *mut Handle) -> Status;
            fn expand_dims(a: Handle, axes: *const i32, n: usize, out: *mut Handle) -> Status;
            /// `n == 0` removes every axis of size 1.
            fn squeeze(a: Handle, axes: *const i32, n: usize, out: *mut Handle) -> Status;
            fn broadcast_to(a: Handle, shape: *const i32, ndim: usize, out: *mut Handle) -> Status;
            fn concatenate(arrays: *const Handle, n: usize, axis: i32, out: *mut Handle) -> Status;
            /// Splits at `indices` along `axis` into `n_indices + 1` parts written to `out[..]`;
            /// `out_cap` must be at least `n_indices + 1`.
            fn split(
                a: Handle,
                indices: *const i32,
                n_indices: usize,
                axis: i32,
                out: *mut Handle,
                out_cap: usize,
            ) -> Status;
            /// Strided slice with one `start/stop/stride` per axis (`n == ndim`).
            fn slice(
                a: Handle,
                start: *const i32,
                stop: *const i32,
                strides: *const i32,
                n: usize,
                out: *mut Handle,
            ) -> Status;
            /// Copy of `src` with the strided region replaced by `update`.
            fn slice_update(
                src: Handle,
                update: Handle,
                start: *const i32,
                stop: *const i32,
                strides: *const i32,
                n: usize,
                out: *mut Handle,
            ) -> Status;
            fn take(a: Handle, indices: Handle, axis: i32, out: *mut Handle) -> Status;
            fn take_along_axis(a: Handle, indices: Handle, axis: i32, out: *mut Handle) -> Status;
            fn put_along_axis(a: Handle, indices: Handle, values: Handle, axis: i32, out: *mut Handle) -> Status;

            // --- reductions, sorting, scans ---------------------------------------------------------
            /// `n == 0` reduces over every axis.
            fn reduce(
                op: u32,
                a: Handle,
                axes: *const i32,
                n: usize,
                keepdims: bool,
                out: *mut Handle,
            ) -> Status;
            fn softmax(a: Handle, axes: *const i32, n: usize, precise: bool, out: *mut Handle) -> Status;
            fn logsumexp(a: Handle, axes: *const i32, n: usize, keepdims: bool, out: *mut Handle) -> Status;
            fn argmax(a: Handle, axis: i32, keepdims: bool, out: *mut Handle) -> Status;
            fn argmin(a: Handle, axis: i32, keepdims: bool, out: *mut Handle) -> Status;
            fn sort(a: Handle, axis: i32, out: *mut Handle) -> Status;
            fn argsort(a: Handle, axis: i32, out: *mut Handle) -> Status;
            fn argpartition(a: Handle, kth: i32, axis: i32, out: *mut Handle) -> Status;
            /// The `k` largest values along `axis` (unordered, as MLX returns them).
            fn topk(a: Handle, k: i32, axis: i32, out: *mut Handle) -> Status;
            fn cumsum(a: Handle, axis: i32, reverse: bool, inclusive: bool, out: *mut Handle) -> Status;

            // --- fused kernels (mlx::core::fast) ----------------------------------------------------
            /// `weight` may be null (no scaling).
            fn rms_norm(x: Handle, weight: Handle, eps: f32, out: *mut Handle) -> Status;
            /// `weight` and `bias` may be null.
            fn layer_norm(x: Handle, weight: Handle, bias: Handle, eps: f32, out: *mut Handle) -> Status;
            /// Rotary embedding over the last axis' first `dims` features at absolute position
            /// `offset` + index along axis -2. With `freqs` non-null, `base` is ignored.
            fn rope(
                x: Handle,
                dims: i32,
                traditional: bool,
                base: f32,
                scale: f32,
                offset: i32,
                freqs: Handle,
                out: *mut Handle,
            ) -> Status;
            /// `q [B, Hq, Lq, D]`, `k`/`v [B, Hkv, Lk, D]` (grouped-query heads allowed).
            fn sdpa(
                q: Handle,
                k: Handle,
                v: Handle,
                scale: f32,
                mask_mode: u32,
                mask: Handle,
                out: *mut Handle,
            ) -> Status;

            // --- random -----------------------------------------------------------------------------
            fn random_seed(seed: u64) -> Status;
            fn random_key(seed: u64, out: *mut Handle) -> Status;
            /// `num` new keys as an array of shape `[num, 2]`.
            fn random_split(key: Handle, num: i32, out: *mut Handle) -> Status;
            /// Samples indices along `axis` from unnormalised log-probabilities; `key` may be null.
            fn random_categorical(logits: Handle, axis: i32, key: Handle, out: *mut Handle) -> Status;
            fn random_uniform(
                shape: *const i32,
                ndim: usize,
                low: f64,
                high: f64,
                dtype: u32,
                key: Handle,
                out: *mut Handle,
            ) -> Status;
            fn random_normal(
                shape: *const i32,
                ndim: usize,
                loc: f64,
                scale: f64,
                dtype: u32,
                key: Handle,
                out: *mut Handle,
            ) -> Status;

            // --- convolution ------------------------------------------------------------------------
            /// NHWC input, `[C_out, KH, KW, C_in / groups]` weight; `stride`, `padding`, `dilation`
            /// point at two values each.
            fn conv2d(
                x: Handle,
                w: Handle,
                stride: *const i32,
                padding: *const i32,
                dilation: *const i32,
                groups: i32,
                out: *mut Handle,
            ) -> Status;

            // --- files ------------------------------------------------------------------------------
            fn load_safetensors(path: *const c_char, len: usize, out: *mut BundleHandle) -> Status;
            fn load_gguf(path: *const c_char, len: usize, out: *mut BundleHandle) -> Status;
            fn bundle_free(b: BundleHandle);
            fn bundle_num_arrays(b: BundleHandle) -> usize;
            /// Entry `i`: its name (borrowed from the bundle) and a new owned handle.
            fn bundle_array(
                b: BundleHandle,
                i: usize,
                name: *mut *const c_char,
                name_len: *mut usize,
                out: *mut Handle,
            ) -> Status;
            fn bundle_num_meta(b: BundleHandle) -> usize;
            /// Metadata entry `i`: key (borrowed), [`MetaKind`], the number of strings (for `Strings`,
            /// 1 for `String`), and for `Array` a new owned handle.
            fn bundle_meta(
                b: BundleHandle,
                i: usize,
                key: *mut *const c_char,
                key_len: *mut usize,
                kind: *mut u32,
                n_strings: *mut usize,
                out: *mut Handle,
            ) -> Status;
            /// String `j` of metadata entry `i` (borrowed from the bundle).
            fn bundle_meta_string(b: BundleHandle, i: usize, j: usize, s: *mut *const c_char, len: *mut usize) -> Status;
            /// Writes `n` arrays and `n_meta` string metadata entries as one safetensors file.
            fn save_safetensors(
                path: *const c_char,
                path_len: usize,
                names: *const *const c_char,
                name_lens: *const usize,
                arrays: *const Handle,
                n: usize,
                meta_keys: *const *const c_char,
                meta_key_lens: *const usize,
                meta_values: *const *const c_char,
                meta_value_lens: *const usize,
                n_meta: usize,
            ) -> Status;

            // --- memory -----------------------------------------------------------------------------
            fn memory(counter: u32) -> usize;
            fn reset_peak_memory();
            fn clear_cache();
            /// Returns the previous limit.
            fn set_memory_limit(bytes: usize) -> usize;
            /// Returns the previous limit.
            fn set_cache_limit(bytes: usize) -> usize;

            // --- devices and streams ----------------------------------------------------------------
            fn device_available(device: u32) -> bool;
            fn set_default_device(device: u32) -> Status;
            fn default_device() -> u32;
            /// A new stream on `device`; writes its index.
            fn new_stream(device: u32, out_index: *mut i32) -> Status;
            /// Makes stream `index` (on `device`) this thread's default for its device.
            fn set_default_stream(device: u32, index: i32) -> Status;
            /// This thread's default stream index for `device`.
            fn default_stream(device: u32, out_index: *mut i32) -> Status;
            /// Waits for all work on stream `index` (`-1`: this thread's default stream) of `device`.
            fn synchronize(device: u32, index: i32) -> Status;
        }
        1 => {
            // --- convolution and padding ------------------------------------------------------------
            /// NLC input, `[C_out, K, C_in / groups]` weight.
            fn conv1d(x: Handle, w: Handle, stride: i32, padding: i32, dilation: i32, groups: i32, out: *mut Handle) -> Status;
            /// Pads `axes[i]` with `low[i]` before and `high[i]` after; [`PadMode`] `mode`, with
            /// `value` (converted to `a`'s dtype) for `Constant`.
            fn pad(
                a: Handle,
                axes: *const i32,
                low: *const i32,
                high: *const i32,
                n: usize,
                value: f64,
                mode: u32,
                out: *mut Handle,
            ) -> Status;

            // --- positions -------------------------------------------------------------------------
            /// [`rope`](OpsTable::rope) with the position of each row's first token given per row:
            /// `offsets` is `[B]` int32 (or a scalar) for `x` `[B, ..., L, D]`.
            fn rope_offsets(
                x: Handle,
                dims: i32,
                traditional: bool,
                base: f32,
                scale: f32,
                offsets: Handle,
                freqs: Handle,
                out: *mut Handle,
            ) -> Status;

            // --- mixture of experts -----------------------------------------------------------------
            /// `a[lhs_indices] @ b[rhs_indices]` over the batch dimensions; either index array may be
            /// null (the identity). `sorted` promises `rhs_indices` is sorted (a faster kernel).
            fn gather_mm(a: Handle, b: Handle, lhs_indices: Handle, rhs_indices: Handle, sorted: bool, out: *mut Handle) -> Status;
            /// [`quantized_matmul`](OpsTable::quantized_matmul) with the experts of `w`/`scales`/
            /// `biases` picked per batch entry, as `gather_mm`. `biases` may be null.
            fn gather_qmm(
                x: Handle,
                wq: Handle,
                scales: Handle,
                biases: Handle,
                lhs_indices: Handle,
                rhs_indices: Handle,
                transpose: bool,
                group_size: i32,
                bits: i32,
                sorted: bool,
                out: *mut Handle,
            ) -> Status;

            // --- compiled graphs ----------------------------------------------------------------------
            /// Compiles `fun` (called with `payload` while MLX traces; see [`CompileFn`]), which takes
            /// `n_inputs` arrays and returns `n_outputs`. The compiled function owns `payload` and
            /// releases it with `free_payload` in [`compiled_free`](OpsTable::compiled_free).
            /// `shapeless`: no retrace when input shapes change (element-wise functions only).
            fn compile(
                fun: CompileFn,
                payload: *mut c_void,
                free_payload: FreePayloadFn,
                n_inputs: usize,
                n_outputs: usize,
                shapeless: bool,
                out: *mut CompiledHandle,
            ) -> Status;
            /// Applies a compiled function: `n_inputs` borrowed handles in, `n_outputs` owned out.
            fn compiled_call(f: CompiledHandle, inputs: *const Handle, n_inputs: usize, outputs: *mut Handle, n_outputs: usize) -> Status;
            fn compiled_free(f: CompiledHandle);

            // --- diagnostics --------------------------------------------------------------------------
            /// The number of primitives (kernels) evaluating `arrays` would run: unevaluated nodes
            /// reachable from them, siblings counted once.
            fn graph_primitives(arrays: *const Handle, n: usize, out: *mut usize) -> Status;
        }
        2 => {
            // --- distributed (mlx::core::distributed) --------------------------------------------------
            /// Whether MLX in this process can initialise `backend` (`any`, `ring`, `mpi`, `nccl`,
            /// `jaccl`; UTF-8, not NUL-terminated).
            fn dist_is_available(backend: *const c_char, len: usize, out: *mut bool) -> Status;
            /// MLX's `distributed::init(strict, backend)`: the group of every process the backend
            /// finds from its environment (`MLX_RANK` / `MLX_HOSTFILE` for ring, ...). With `strict`
            /// false, a backend that cannot start gives the singleton group (rank 0 of 1).
            fn dist_init(backend: *const c_char, len: usize, strict: bool, out: *mut GroupHandle) -> Status;
            /// A second handle to the same group.
            fn dist_group_clone(g: GroupHandle, out: *mut GroupHandle) -> Status;
            fn dist_group_free(g: GroupHandle);
            fn dist_group_rank(g: GroupHandle, out: *mut i32) -> Status;
            fn dist_group_size(g: GroupHandle, out: *mut i32) -> Status;
            /// Element-wise sum of `x` over the group's ranks (every rank gets the same result).
            fn all_sum(x: Handle, g: GroupHandle, out: *mut Handle) -> Status;
            /// The ranks' `x` concatenated along axis 0, in rank order.
            fn all_gather(x: Handle, g: GroupHandle, out: *mut Handle) -> Status;
            /// Sends `x` to rank `dst`; the result (a copy of `x`) must be evaluated for the send to happen.
            fn send(x: Handle, dst: i32, g: GroupHandle, out: *mut Handle) -> Status;
            /// Receives an array of `shape` and `dtype` from rank `src`.
            fn recv(shape: *const i32, ndim: usize, dtype: u32, src: i32, g: GroupHandle, out: *mut Handle) -> Status;
        }
        }
    };
}
