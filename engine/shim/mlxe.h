// Exported entry points of the mlx-engine shim, one per field of `OpsTable`
// (plugin-api/src/ops_table.rs), in table order. Rust declares the same signatures in
// engine/src/mlx/ffi.rs; keep the three in step (append only).
#pragma once

#include <cstddef>
#include <cstdint>

#include "shim.h"

using mlxe::BundleHandle;
using mlxe::Handle;
using mlxe::Status;

// --- errors and lifetime -----------------------------------------------------------------------
MLXE_EXPORT void mlxe_last_error(const char** msg, size_t* len) noexcept;
MLXE_EXPORT void mlxe_array_free(Handle a) noexcept;
MLXE_EXPORT Status mlxe_array_clone(Handle a, Handle* out) noexcept;

// --- construction and read-back ----------------------------------------------------------------
MLXE_EXPORT Status mlxe_array_from_data(
    const void* data, size_t nbytes, const int32_t* shape, size_t ndim, uint32_t dtype,
    Handle* out) noexcept;
MLXE_EXPORT Status mlxe_array_full(
    const int32_t* shape, size_t ndim, double value, uint32_t dtype, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_array_arange(
    double start, double stop, double step, uint32_t dtype, Handle* out) noexcept;
MLXE_EXPORT size_t mlxe_array_ndim(Handle a) noexcept;
MLXE_EXPORT size_t mlxe_array_shape(Handle a, int32_t* out, size_t cap) noexcept;
MLXE_EXPORT uint32_t mlxe_array_dtype(Handle a) noexcept;
MLXE_EXPORT size_t mlxe_array_size(Handle a) noexcept;
MLXE_EXPORT Status mlxe_array_read(Handle a, void* out, size_t nbytes) noexcept;
MLXE_EXPORT Status mlxe_astype(Handle a, uint32_t dtype, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_eval(const Handle* arrays, size_t n) noexcept;
MLXE_EXPORT Status mlxe_async_eval(const Handle* arrays, size_t n) noexcept;

// --- element-wise -------------------------------------------------------------------------------
MLXE_EXPORT Status mlxe_unary(uint32_t op, Handle a, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_binary(uint32_t op, Handle a, Handle b, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_where_(Handle cond, Handle a, Handle b, Handle* out) noexcept;

// --- linear algebra and quantization ------------------------------------------------------------
MLXE_EXPORT Status mlxe_matmul(Handle a, Handle b, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_addmm(
    Handle c, Handle a, Handle b, float alpha, float beta, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_quantize(
    Handle w, int32_t group_size, int32_t bits, Handle* out_wq, Handle* out_scales,
    Handle* out_biases) noexcept;
MLXE_EXPORT Status mlxe_dequantize(
    Handle wq, Handle scales, Handle biases, int32_t group_size, int32_t bits,
    Handle* out) noexcept;
MLXE_EXPORT Status mlxe_quantized_matmul(
    Handle x, Handle wq, Handle scales, Handle biases, bool transpose, int32_t group_size,
    int32_t bits, Handle* out) noexcept;

// --- shape --------------------------------------------------------------------------------------
MLXE_EXPORT Status mlxe_reshape(Handle a, const int32_t* shape, size_t ndim, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_transpose(Handle a, const int32_t* axes, size_t n, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_swapaxes(Handle a, int32_t axis1, int32_t axis2, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_expand_dims(Handle a, const int32_t* axes, size_t n, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_squeeze(Handle a, const int32_t* axes, size_t n, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_broadcast_to(
    Handle a, const int32_t* shape, size_t ndim, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_concatenate(
    const Handle* arrays, size_t n, int32_t axis, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_split(
    Handle a, const int32_t* indices, size_t n_indices, int32_t axis, Handle* out,
    size_t out_cap) noexcept;
MLXE_EXPORT Status mlxe_slice(
    Handle a, const int32_t* start, const int32_t* stop, const int32_t* strides, size_t n,
    Handle* out) noexcept;
MLXE_EXPORT Status mlxe_slice_update(
    Handle src, Handle update, const int32_t* start, const int32_t* stop, const int32_t* strides,
    size_t n, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_take(Handle a, Handle indices, int32_t axis, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_take_along_axis(
    Handle a, Handle indices, int32_t axis, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_put_along_axis(
    Handle a, Handle indices, Handle values, int32_t axis, Handle* out) noexcept;

// --- reductions, sorting, scans -----------------------------------------------------------------
MLXE_EXPORT Status mlxe_reduce(
    uint32_t op, Handle a, const int32_t* axes, size_t n, bool keepdims, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_softmax(
    Handle a, const int32_t* axes, size_t n, bool precise, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_logsumexp(
    Handle a, const int32_t* axes, size_t n, bool keepdims, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_argmax(Handle a, int32_t axis, bool keepdims, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_argmin(Handle a, int32_t axis, bool keepdims, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_sort(Handle a, int32_t axis, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_argsort(Handle a, int32_t axis, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_argpartition(Handle a, int32_t kth, int32_t axis, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_topk(Handle a, int32_t k, int32_t axis, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_cumsum(
    Handle a, int32_t axis, bool reverse, bool inclusive, Handle* out) noexcept;

// --- fused kernels (mlx::core::fast) ------------------------------------------------------------
MLXE_EXPORT Status mlxe_rms_norm(Handle x, Handle weight, float eps, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_layer_norm(
    Handle x, Handle weight, Handle bias, float eps, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_rope(
    Handle x, int32_t dims, bool traditional, float base, float scale, int32_t offset,
    Handle freqs, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_sdpa(
    Handle q, Handle k, Handle v, float scale, uint32_t mask_mode, Handle mask,
    Handle* out) noexcept;

// --- random -------------------------------------------------------------------------------------
MLXE_EXPORT Status mlxe_random_seed(uint64_t seed) noexcept;
MLXE_EXPORT Status mlxe_random_key(uint64_t seed, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_random_split(Handle key, int32_t num, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_random_categorical(
    Handle logits, int32_t axis, Handle key, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_random_uniform(
    const int32_t* shape, size_t ndim, double low, double high, uint32_t dtype, Handle key,
    Handle* out) noexcept;
MLXE_EXPORT Status mlxe_random_normal(
    const int32_t* shape, size_t ndim, double loc, double scale, uint32_t dtype, Handle key,
    Handle* out) noexcept;

// --- convolution --------------------------------------------------------------------------------
MLXE_EXPORT Status mlxe_conv2d(
    Handle x, Handle w, const int32_t* stride, const int32_t* padding, const int32_t* dilation,
    int32_t groups, Handle* out) noexcept;

// --- files --------------------------------------------------------------------------------------
MLXE_EXPORT Status mlxe_load_safetensors(const char* path, size_t len, BundleHandle* out) noexcept;
MLXE_EXPORT Status mlxe_load_gguf(const char* path, size_t len, BundleHandle* out) noexcept;
MLXE_EXPORT void mlxe_bundle_free(BundleHandle b) noexcept;
MLXE_EXPORT size_t mlxe_bundle_num_arrays(BundleHandle b) noexcept;
MLXE_EXPORT Status mlxe_bundle_array(
    BundleHandle b, size_t i, const char** name, size_t* name_len, Handle* out) noexcept;
MLXE_EXPORT size_t mlxe_bundle_num_meta(BundleHandle b) noexcept;
MLXE_EXPORT Status mlxe_bundle_meta(
    BundleHandle b, size_t i, const char** key, size_t* key_len, uint32_t* kind,
    size_t* n_strings, Handle* out) noexcept;
MLXE_EXPORT Status mlxe_bundle_meta_string(
    BundleHandle b, size_t i, size_t j, const char** s, size_t* len) noexcept;
MLXE_EXPORT Status mlxe_save_safetensors(
    const char* path, size_t path_len, const char* const* names, const size_t* name_lens,
    const Handle* arrays, size_t n, const char* const* meta_keys, const size_t* meta_key_lens,
    const char* const* meta_values, const size_t* meta_value_lens, size_t n_meta) noexcept;

// --- memory -------------------------------------------------------------------------------------
MLXE_EXPORT size_t mlxe_memory(uint32_t counter) noexcept;
MLXE_EXPORT void mlxe_reset_peak_memory() noexcept;
MLXE_EXPORT void mlxe_clear_cache() noexcept;
MLXE_EXPORT size_t mlxe_set_memory_limit(size_t bytes) noexcept;
MLXE_EXPORT size_t mlxe_set_cache_limit(size_t bytes) noexcept;

// --- devices and streams ------------------------------------------------------------------------
MLXE_EXPORT bool mlxe_device_available(uint32_t device) noexcept;
MLXE_EXPORT Status mlxe_set_default_device(uint32_t device) noexcept;
MLXE_EXPORT uint32_t mlxe_default_device() noexcept;
MLXE_EXPORT Status mlxe_new_stream(uint32_t device, int32_t* out_index) noexcept;
MLXE_EXPORT Status mlxe_set_default_stream(uint32_t device, int32_t index) noexcept;
MLXE_EXPORT Status mlxe_default_stream(uint32_t device, int32_t* out_index) noexcept;
MLXE_EXPORT Status mlxe_synchronize(uint32_t device, int32_t index) noexcept;
