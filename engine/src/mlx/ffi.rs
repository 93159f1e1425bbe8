//! Raw bindings to the C++ shim over MLX (`engine/shim/*.cpp`), and the [`OpsTable`] filled
//! with them.
//!
//! Every `mlxe_*` function has exactly the signature of the `OpsTable` field of the same name
//! (see `mlx_engine_plugin_api::ops_table` for the conventions: borrowed inputs, owned outputs,
//! status 0 = success, thread-local last error). The shim catches every C++ exception, so none
//! crosses into Rust.

use std::ffi::{c_char, c_void};

use mlx_engine_plugin_api::ops_table::{BundleHandle, Handle, OpsTable, Status};

// The declarations follow the field order of `OpsTable` (and `engine/shim/mlxe.h`).
unsafe extern "C" {
    // --- errors and lifetime -------------------------------------------------------------
    pub fn mlxe_last_error(msg: *mut *const c_char, len: *mut usize);
    pub fn mlxe_array_free(a: Handle);
    pub fn mlxe_array_clone(a: Handle, out: *mut Handle) -> Status;

    // --- construction and read-back -------------------------------------------------------
    pub fn mlxe_array_from_data(
        data: *const c_void,
        nbytes: usize,
        shape: *const i32,
        ndim: usize,
        dtype: u32,
        out: *mut Handle,
    ) -> Status;
    pub fn mlxe_array_full(shape: *const i32, ndim: usize, value: f64, dtype: u32, out: *mut Handle) -> Status;
    pub fn mlxe_array_arange(start: f64, stop: f64, step: f64, dtype: u32, out: *mut Handle) -> Status;
    pub fn mlxe_array_ndim(a: Handle) -> usize;
    pub fn mlxe_array_shape(a: Handle, out: *mut i32, cap: usize) -> usize;
    pub fn mlxe_array_dtype(a: Handle) -> u32;
    pub fn mlxe_array_size(a: Handle) -> usize;
    pub fn mlxe_array_read(a: Handle, out: *mut c_void, nbytes: usize) -> Status;
    pub fn mlxe_astype(a: Handle, dtype: u32, out: *mut Handle) -> Status;
    pub fn mlxe_eval(arrays: *const Handle, n: usize) -> Status;
    pub fn mlxe_async_eval(arrays: *const Handle, n: usize) -> Status;

    // --- element-wise -----------------------------------------------------------------------
    pub fn mlxe_unary(op: u32, a: Handle, out: *mut Handle) -> Status;
    pub fn mlxe_binary(op: u32, a: Handle, b: Handle, out: *mut Handle) -> Status;
    pub fn mlxe_where_(cond: Handle, a: Handle, b: Handle, out: *mut Handle) -> Status;

    // --- linear algebra and quantization ----------------------------------------------------
    pub fn mlxe_matmul(a: Handle, b: Handle, out: *mut Handle) -> Status;
    pub fn mlxe_addmm(c: Handle, a: Handle, b: Handle, alpha: f32, beta: f32, out: *mut Handle) -> Status;
    pub fn mlxe_quantize(
        w: Handle,
        group_size: i32,
        bits: i32,
        out_wq: *mut Handle,
        out_scales: *mut Handle,
        out_biases: *mut Handle,
    ) -> Status;
    pub fn mlxe_dequantize(
        wq: Handle,
        scales: Handle,
        biases: Handle,
        group_size: i32,
        bits: i32,
        out: *mut Handle,
    ) -> Status;
    pub fn mlxe_quantized_matmul(
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
    pub fn mlxe_reshape(a: Handle, shape: *const i32, ndim: usize, out: *mut Handle) -> Status;
    pub fn mlxe_transpose(a: Handle, axes: *const i32, n: usize, out: *mut Handle) -> Status;
    pub fn mlxe_swapaxes(a: Handle, axis1: i32, axis2: i32, out: *mut Handle) -> Status;
    pub fn mlxe_expand_dims(a: Handle, axes: *const i32, n: usize, out: *mut Handle) -> Status;
    pub fn mlxe_squeeze(a: Handle, axes: *const i32, n: usize, out: *mut Handle) -> Status;
    pub fn mlxe_broadcast_to(a: Handle, shape: *const i32, ndim: usize, out: *mut Handle) -> Status;
    pub fn mlxe_concatenate(arrays: *const Handle, n: usize, axis: i32, out: *mut Handle) -> Status;
    pub fn mlxe_split(
        a: Handle,
        indices: *const i32,
        n_indices: usize,
        axis: i32,
        out: *mut Handle,
        out_cap: usize,
    ) -> Status;
    pub fn mlxe_slice(
        a: Handle,
        start: *const i32,
        stop: *const i32,
        strides: *const i32,
        n: usize,
        out: *mut Handle,
    ) -> Status;
    pub fn mlxe_slice_update(
        src: Handle,
        update: Handle,
        start: *const i32,
        stop: *const i32,
        strides: *const i32,
        n: usize,
        out: *mut Handle,
    ) -> Status;
    pub fn mlxe_take(a: Handle, indices: Handle, axis: i32, out: *mut Handle) -> Status;
    pub fn mlxe_take_along_axis(a: Handle, indices: Handle, axis: i32, out: *mut Handle) -> Status;
    pub fn mlxe_put_along_axis(a: Handle, indices: Handle, values: Handle, axis: i32, out: *mut Handle) -> Status;

    // --- reductions, sorting, scans ---------------------------------------------------------
    pub fn mlxe_reduce(op: u32, a: Handle, axes: *const i32, n: usize, keepdims: bool, out: *mut Handle) -> Status;
    pub fn mlxe_softmax(a: Handle, axes: *const i32, n: usize, precise: bool, out: *mut Handle) -> Status;
    pub fn mlxe_logsumexp(a: Handle, axes: *const i32, n: usize, keepdims: bool, out: *mut Handle) -> Status;
    pub fn mlxe_argmax(a: Handle, axis: i32, keepdims: bool, out: *mut Handle) -> Status;
    pub fn mlxe_argmin(a: Handle, axis: i32, keepdims: bool, out: *mut Handle) -> Status;
    pub fn mlxe_sort(a: Handle, axis: i32, out: *mut Handle) -> Status;
    pub fn mlxe_argsort(a: Handle, axis: i32, out: *mut Handle) -> Status;
    pub fn mlxe_argpartition(a: Handle, kth: i32, axis: i32, out: *mut Handle) -> Status;
    pub fn mlxe_topk(a: Handle, k: i32, axis: i32, out: *mut Handle) -> Status;
    pub fn mlxe_cumsum(a: Handle, axis: i32, reverse: bool, inclusive: bool, out: *mut Handle) -> Status;

    // --- fused kernels (mlx::core::fast) ----------------------------------------------------
    pub fn mlxe_rms_norm(x: Handle, weight: Handle, eps: f32, out: *mut Handle) -> Status;
    pub fn mlxe_layer_norm(x: Handle, weight: Handle, bias: Handle, eps: f32, out: *mut Handle) -> Status;
    pub fn mlxe_rope(
        x: Handle,
        dims: i32,
        traditional: bool,
        base: f32,
        scale: f32,
        offset: i32,
        freqs: Handle,
        out: *mut Handle,
    ) -> Status;
    pub fn mlxe_sdpa(
        q: Handle,
        k: Handle,
        v: Handle,
        scale: f32,
        mask_mode: u32,
        mask: Handle,
        out: *mut Handle,
    ) -> Status;

    // --- random -----------------------------------------------------------------------------
    pub fn mlxe_random_seed(seed: u64) -> Status;
    pub fn mlxe_random_key(seed: u64, out: *mut Handle) -> Status;
    pub fn mlxe_random_split(key: Handle, num: i32, out: *mut Handle) -> Status;
    pub fn mlxe_random_categorical(logits: Handle, axis: i32, key: Handle, out: *mut Handle) -> Status;
    pub fn mlxe_random_uniform(
        shape: *const i32,
        ndim: usize,
        low: f64,
        high: f64,
        dtype: u32,
        key: Handle,
        out: *mut Handle,
    ) -> Status;
    pub fn mlxe_random_normal(
        shape: *const i32,
        ndim: usize,
        loc: f64,
        scale: f64,
        dtype: u32,
        key: Handle,
        out: *mut Handle,
    ) -> Status;

    // --- convolution ------------------------------------------------------------------------
    pub fn mlxe_conv2d(
        x: Handle,
        w: Handle,
        stride: *const i32,
        padding: *const i32,
        dilation: *const i32,
        groups: i32,
        out: *mut Handle,
    ) -> Status;

    // --- files ------------------------------------------------------------------------------
    pub fn mlxe_load_safetensors(path: *const c_char, len: usize, out: *mut BundleHandle) -> Status;
    pub fn mlxe_load_gguf(path: *const c_char, len: usize, out: *mut BundleHandle) -> Status;
    pub fn mlxe_bundle_free(b: BundleHandle);
    pub fn mlxe_bundle_num_arrays(b: BundleHandle) -> usize;
    pub fn mlxe_bundle_array(
        b: BundleHandle,
        i: usize,
        name: *mut *const c_char,
        name_len: *mut usize,
        out: *mut Handle,
    ) -> Status;
    pub fn mlxe_bundle_num_meta(b: BundleHandle) -> usize;
    pub fn mlxe_bundle_meta(
        b: BundleHandle,
        i: usize,
        key: *mut *const c_char,
        key_len: *mut usize,
        kind: *mut u32,
        n_strings: *mut usize,
        out: *mut Handle,
    ) -> Status;
    pub fn mlxe_bundle_meta_string(
        b: BundleHandle,
        i: usize,
        j: usize,
        s: *mut *const c_char,
        len: *mut usize,
    ) -> Status;
    pub fn mlxe_save_safetensors(
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
    pub fn mlxe_memory(counter: u32) -> usize;
    pub fn mlxe_reset_peak_memory();
    pub fn mlxe_clear_cache();
    pub fn mlxe_set_memory_limit(bytes: usize) -> usize;
    pub fn mlxe_set_cache_limit(bytes: usize) -> usize;

    // --- devices and streams ----------------------------------------------------------------
    pub fn mlxe_device_available(device: u32) -> bool;
    pub fn mlxe_set_default_device(device: u32) -> Status;
    pub fn mlxe_default_device() -> u32;
    pub fn mlxe_new_stream(device: u32, out_index: *mut i32) -> Status;
    pub fn mlxe_set_default_stream(device: u32, index: i32) -> Status;
    pub fn mlxe_default_stream(device: u32, out_index: *mut i32) -> Status;
    pub fn mlxe_synchronize(device: u32, index: i32) -> Status;
}

/// The engine's table. Storing the functions as the field types also checks at compile time
/// that every declaration above has the field's exact signature.
static OPS_TABLE: OpsTable = OpsTable {
    size: std::mem::size_of::<OpsTable>(),

    last_error: mlxe_last_error,
    array_free: mlxe_array_free,
    array_clone: mlxe_array_clone,

    array_from_data: mlxe_array_from_data,
    array_full: mlxe_array_full,
    array_arange: mlxe_array_arange,
    array_ndim: mlxe_array_ndim,
    array_shape: mlxe_array_shape,
    array_dtype: mlxe_array_dtype,
    array_size: mlxe_array_size,
    array_read: mlxe_array_read,
    astype: mlxe_astype,
    eval: mlxe_eval,
    async_eval: mlxe_async_eval,

    unary: mlxe_unary,
    binary: mlxe_binary,
    where_: mlxe_where_,

    matmul: mlxe_matmul,
    addmm: mlxe_addmm,
    quantize: mlxe_quantize,
    dequantize: mlxe_dequantize,
    quantized_matmul: mlxe_quantized_matmul,

    reshape: mlxe_reshape,
    transpose: mlxe_transpose,
    swapaxes: mlxe_swapaxes,
    expand_dims: mlxe_expand_dims,
    squeeze: mlxe_squeeze,
    broadcast_to: mlxe_broadcast_to,
    concatenate: mlxe_concatenate,
    split: mlxe_split,
    slice: mlxe_slice,
    slice_update: mlxe_slice_update,
    take: mlxe_take,
    take_along_axis: mlxe_take_along_axis,
    put_along_axis: mlxe_put_along_axis,

    reduce: mlxe_reduce,
    softmax: mlxe_softmax,
    logsumexp: mlxe_logsumexp,
    argmax: mlxe_argmax,
    argmin: mlxe_argmin,
    sort: mlxe_sort,
    argsort: mlxe_argsort,
    argpartition: mlxe_argpartition,
    topk: mlxe_topk,
    cumsum: mlxe_cumsum,

    rms_norm: mlxe_rms_norm,
    layer_norm: mlxe_layer_norm,
    rope: mlxe_rope,
    sdpa: mlxe_sdpa,

    random_seed: mlxe_random_seed,
    random_key: mlxe_random_key,
    random_split: mlxe_random_split,
    random_categorical: mlxe_random_categorical,
    random_uniform: mlxe_random_uniform,
    random_normal: mlxe_random_normal,

    conv2d: mlxe_conv2d,

    load_safetensors: mlxe_load_safetensors,
    load_gguf: mlxe_load_gguf,
    bundle_free: mlxe_bundle_free,
    bundle_num_arrays: mlxe_bundle_num_arrays,
    bundle_array: mlxe_bundle_array,
    bundle_num_meta: mlxe_bundle_num_meta,
    bundle_meta: mlxe_bundle_meta,
    bundle_meta_string: mlxe_bundle_meta_string,
    save_safetensors: mlxe_save_safetensors,

    memory: mlxe_memory,
    reset_peak_memory: mlxe_reset_peak_memory,
    clear_cache: mlxe_clear_cache,
    set_memory_limit: mlxe_set_memory_limit,
    set_cache_limit: mlxe_set_cache_limit,

    device_available: mlxe_device_available,
    set_default_device: mlxe_set_default_device,
    default_device: mlxe_default_device,
    new_stream: mlxe_new_stream,
    set_default_stream: mlxe_set_default_stream,
    default_stream: mlxe_default_stream,
    synchronize: mlxe_synchronize,
};

/// The ops table of this engine, filled with the shim's functions. It lives for the whole
/// process, so plugins may keep the pointer.
pub fn ops_table() -> &'static OpsTable {
    &OPS_TABLE
}
