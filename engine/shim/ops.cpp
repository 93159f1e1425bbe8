// Array operations: element-wise, linear algebra and quantization, shape, indexing,
// reductions, sorting and scans.

#include "mlx/ops.h"

#include "mlxe.h"

using namespace mlxe;

namespace {

// Codes: `UnaryOp` in plugin-api/src/ops_table.rs.
mx::array apply_unary(uint32_t op, const mx::array& a) {
  switch (op) {
    case 0: return mx::negative(a);
    case 1: return mx::exp(a);
    case 2: return mx::log(a);
    case 3: return mx::sqrt(a);
    case 4: return mx::rsqrt(a);
    case 5: return mx::tanh(a);
    case 6: return mx::erf(a);
    case 7: return mx::sigmoid(a);
    case 8: return mx::abs(a);
    case 9: return mx::square(a);
    case 10: return mx::sin(a);
    case 11: return mx::cos(a);
    case 12: return mx::floor(a);
    case 13: return mx::ceil(a);
    case 14: return mx::logical_not(a);
    case 15: return mx::contiguous(a);
    case 16: return mx::log1p(a);
    case 17: return mx::sign(a);
    case 18: return mx::round(a, 0);
    case 19: return mx::stop_gradient(a);
    case 20: return mx::reciprocal(a);
    case 21: return mx::erfinv(a);
    case 22: return mx::isnan(a);
    default: fail("unknown unary op code " + std::to_string(op));
  }
}

// Codes: `BinaryOp` in plugin-api/src/ops_table.rs.
mx::array apply_binary(uint32_t op, const mx::array& a, const mx::array& b) {
  switch (op) {
    case 0: return mx::add(a, b);
    case 1: return mx::subtract(a, b);
    case 2: return mx::multiply(a, b);
    case 3: return mx::divide(a, b);
    case 4: return mx::maximum(a, b);
    case 5: return mx::minimum(a, b);
    case 6: return mx::power(a, b);
    case 7: return mx::equal(a, b);
    case 8: return mx::not_equal(a, b);
    case 9: return mx::less(a, b);
    case 10: return mx::less_equal(a, b);
    case 11: return mx::greater(a, b);
    case 12: return mx::greater_equal(a, b);
    case 13: return mx::logical_and(a, b);
    case 14: return mx::logical_or(a, b);
    case 15: return mx::floor_divide(a, b);
    case 16: return mx::remainder(a, b);
    default: fail("unknown binary op code " + std::to_string(op));
  }
}

// Codes: `ReduceOp` in plugin-api/src/ops_table.rs. An empty axis list reduces every axis.
mx::array apply_reduce(uint32_t op, const mx::array& a, const std::vector<int>& axes, bool keep) {
  const bool all_axes = axes.empty();
  switch (op) {
    case 0: return all_axes ? mx::sum(a, keep) : mx::sum(a, axes, keep);
    case 1: return all_axes ? mx::max(a, keep) : mx::max(a, axes, keep);
    case 2: return all_axes ? mx::min(a, keep) : mx::min(a, axes, keep);
    case 3: return all_axes ? mx::mean(a, keep) : mx::mean(a, axes, keep);
    case 4: return all_axes ? mx::prod(a, keep) : mx::prod(a, axes, keep);
    case 5: return all_axes ? mx::all(a, keep) : mx::all(a, axes, keep);
    case 6: return all_axes ? mx::any(a, keep) : mx::any(a, axes, keep);
    default: fail("unknown reduce op code " + std::to_string(op));
  }
}

} // namespace

// --- element-wise -------------------------------------------------------------------------------

Status mlxe_unary(uint32_t op, Handle a, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, apply_unary(op, arr(a, "a")));
  });
}

Status mlxe_binary(uint32_t op, Handle a, Handle b, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, apply_binary(op, arr(a, "a"), arr(b, "b")));
  });
}

Status mlxe_where_(Handle cond, Handle a, Handle b, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::where(arr(cond, "cond"), arr(a, "a"), arr(b, "b")));
  });
}

// --- linear algebra and quantization ------------------------------------------------------------

Status mlxe_matmul(Handle a, Handle b, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::matmul(arr(a, "a"), arr(b, "b")));
  });
}

Status mlxe_addmm(Handle c, Handle a, Handle b, float alpha, float beta, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::addmm(arr(c, "c"), arr(a, "a"), arr(b, "b"), alpha, beta));
  });
}

Status mlxe_quantize(
    Handle w, int32_t group_size, int32_t bits, Handle* out_wq, Handle* out_scales,
    Handle* out_biases) noexcept {
  return guard([&] {
    out_ptr(out_wq, "out_wq");
    out_ptr(out_scales, "out_scales");
    out_ptr(out_biases, "out_biases");
    auto parts = mx::quantize(arr(w, "w"), group_size, bits, "affine");
    if (parts.size() != 3) {
      fail("quantize: expected 3 outputs from MLX, got " + std::to_string(parts.size()));
    }
    // Allocate all three handles before publishing any, so a failure leaks nothing.
    auto* wq = new mx::array(std::move(parts[0]));
    mx::array* scales = nullptr;
    mx::array* biases = nullptr;
    try {
      scales = new mx::array(std::move(parts[1]));
      biases = new mx::array(std::move(parts[2]));
    } catch (...) {
      delete wq;
      delete scales;
      throw;
    }
    *out_wq = wq;
    *out_scales = scales;
    *out_biases = biases;
  });
}

Status mlxe_dequantize(
    Handle wq, Handle scales, Handle biases, int32_t group_size, int32_t bits,
    Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out,
        mx::dequantize(
            arr(wq, "wq"), arr(scales, "scales"), opt_arr(biases), group_size, bits, "affine"));
  });
}

Status mlxe_quantized_matmul(
    Handle x, Handle wq, Handle scales, Handle biases, bool transpose, int32_t group_size,
    int32_t bits, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out,
        mx::quantized_matmul(
            arr(x, "x"),
            arr(wq, "wq"),
            arr(scales, "scales"),
            opt_arr(biases),
            transpose,
            group_size,
            bits,
            "affine"));
  });
}

// --- shape --------------------------------------------------------------------------------------

Status mlxe_reshape(Handle a, const int32_t* shape, size_t ndim, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::reshape(arr(a, "a"), to_shape(shape, ndim)));
  });
}

Status mlxe_transpose(Handle a, const int32_t* axes, size_t n, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    const auto& x = arr(a, "a");
    put(out, n == 0 ? mx::transpose(x) : mx::transpose(x, to_ints(axes, n)));
  });
}

Status mlxe_swapaxes(Handle a, int32_t axis1, int32_t axis2, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::swapaxes(arr(a, "a"), axis1, axis2));
  });
}

Status mlxe_expand_dims(Handle a, const int32_t* axes, size_t n, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::expand_dims(arr(a, "a"), to_ints(axes, n)));
  });
}

Status mlxe_squeeze(Handle a, const int32_t* axes, size_t n, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    const auto& x = arr(a, "a");
    put(out, n == 0 ? mx::squeeze(x) : mx::squeeze(x, to_ints(axes, n)));
  });
}

Status mlxe_broadcast_to(Handle a, const int32_t* shape, size_t ndim, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::broadcast_to(arr(a, "a"), to_shape(shape, ndim)));
  });
}

Status mlxe_concatenate(const Handle* arrays, size_t n, int32_t axis, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    if (n > 0 && arrays == nullptr) {
      fail("concatenate: null array list with nonzero length");
    }
    std::vector<mx::array> v;
    v.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      v.push_back(arr(arrays[i], "arrays[i]"));
    }
    put(out, mx::concatenate(std::move(v), axis));
  });
}

Status mlxe_split(
    Handle a, const int32_t* indices, size_t n_indices, int32_t axis, Handle* out,
    size_t out_cap) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    if (out_cap < n_indices + 1) {
      fail("split: out_cap " + std::to_string(out_cap) + " is less than n_indices + 1 = " +
           std::to_string(n_indices + 1));
    }
    auto parts = mx::split(arr(a, "a"), to_shape(indices, n_indices, "indices"), axis);
    if (parts.size() != n_indices + 1) {
      fail("split: MLX returned " + std::to_string(parts.size()) + " parts, expected " +
           std::to_string(n_indices + 1));
    }
    std::vector<mx::array*> owned;
    owned.reserve(parts.size());
    try {
      for (auto& p : parts) {
        owned.push_back(new mx::array(std::move(p)));
      }
    } catch (...) {
      for (auto* p : owned) {
        delete p;
      }
      throw;
    }
    for (size_t i = 0; i < owned.size(); ++i) {
      out[i] = owned[i];
    }
  });
}

Status mlxe_slice(
    Handle a, const int32_t* start, const int32_t* stop, const int32_t* strides, size_t n,
    Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    const auto& x = arr(a, "a");
    if (n != x.ndim()) {
      fail("slice: got " + std::to_string(n) + " start/stop/stride triples for an array of " +
           std::to_string(x.ndim()) + " dimensions");
    }
    put(out,
        mx::slice(
            x, to_shape(start, n, "start"), to_shape(stop, n, "stop"),
            to_shape(strides, n, "strides")));
  });
}

Status mlxe_slice_update(
    Handle src, Handle update, const int32_t* start, const int32_t* stop, const int32_t* strides,
    size_t n, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    const auto& x = arr(src, "src");
    if (n != x.ndim()) {
      fail("slice_update: got " + std::to_string(n) +
           " start/stop/stride triples for an array of " + std::to_string(x.ndim()) +
           " dimensions");
    }
    put(out,
        mx::slice_update(
            x, arr(update, "update"), to_shape(start, n, "start"), to_shape(stop, n, "stop"),
            to_shape(strides, n, "strides")));
  });
}

Status mlxe_take(Handle a, Handle indices, int32_t axis, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::take(arr(a, "a"), arr(indices, "indices"), axis));
  });
}

Status mlxe_take_along_axis(Handle a, Handle indices, int32_t axis, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::take_along_axis(arr(a, "a"), arr(indices, "indices"), axis));
  });
}

Status mlxe_put_along_axis(
    Handle a, Handle indices, Handle values, int32_t axis, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::put_along_axis(arr(a, "a"), arr(indices, "indices"), arr(values, "values"), axis));
  });
}

// --- reductions, sorting, scans -----------------------------------------------------------------

Status mlxe_reduce(
    uint32_t op, Handle a, const int32_t* axes, size_t n, bool keepdims, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, apply_reduce(op, arr(a, "a"), to_ints(axes, n), keepdims));
  });
}

Status mlxe_softmax(
    Handle a, const int32_t* axes, size_t n, bool precise, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    const auto& x = arr(a, "a");
    put(out, n == 0 ? mx::softmax(x, precise) : mx::softmax(x, to_ints(axes, n), precise));
  });
}

Status mlxe_logsumexp(
    Handle a, const int32_t* axes, size_t n, bool keepdims, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    const auto& x = arr(a, "a");
    put(out,
        n == 0 ? mx::logsumexp(x, keepdims) : mx::logsumexp(x, to_ints(axes, n), keepdims));
  });
}

Status mlxe_argmax(Handle a, int32_t axis, bool keepdims, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::argmax(arr(a, "a"), axis, keepdims));
  });
}

Status mlxe_argmin(Handle a, int32_t axis, bool keepdims, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::argmin(arr(a, "a"), axis, keepdims));
  });
}

Status mlxe_sort(Handle a, int32_t axis, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::sort(arr(a, "a"), axis));
  });
}

Status mlxe_argsort(Handle a, int32_t axis, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::argsort(arr(a, "a"), axis));
  });
}

Status mlxe_argpartition(Handle a, int32_t kth, int32_t axis, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::argpartition(arr(a, "a"), kth, axis));
  });
}

Status mlxe_topk(Handle a, int32_t k, int32_t axis, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::topk(arr(a, "a"), k, axis));
  });
}

Status mlxe_cumsum(Handle a, int32_t axis, bool reverse, bool inclusive, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::cumsum(arr(a, "a"), axis, reverse, inclusive));
  });
}
