// Ops added in ABI 1.1: 1-D convolution, padding, gathered (mixture-of-experts) matmuls, and the
// graph count used to measure kernels per step.

#include <unordered_set>

#include "mlx/ops.h"

#include "mlxe.h"

using namespace mlxe;

Status mlxe_conv1d(
    Handle x, Handle w, int32_t stride, int32_t padding, int32_t dilation, int32_t groups,
    Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::conv1d(arr(x, "x"), arr(w, "w"), stride, padding, dilation, groups));
  });
}

Status mlxe_pad(
    Handle a, const int32_t* axes, const int32_t* low, const int32_t* high, size_t n, double value,
    uint32_t mode, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    const auto& x = arr(a, "a");
    std::string m;
    switch (mode) {
      case 0: m = "constant"; break;
      case 1: m = "edge"; break;
      default: fail("pad: unknown mode " + std::to_string(mode));
    }
    for (size_t i = 0; i < n; ++i) {
      if ((low != nullptr && low[i] < 0) || (high != nullptr && high[i] < 0)) {
        fail("pad: the widths 'low' and 'high' must not be negative (axis " +
             std::to_string(axes == nullptr ? 0 : axes[i]) + ")");
      }
    }
    put(out,
        mx::pad(
            x, to_ints(axes, n, "axes"), to_shape(low, n, "low"), to_shape(high, n, "high"),
            scalar(value, x.dtype()), m));
  });
}

Status mlxe_gather_mm(
    Handle a, Handle b, Handle lhs_indices, Handle rhs_indices, bool sorted, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out,
        mx::gather_mm(
            arr(a, "a"), arr(b, "b"), opt_arr(lhs_indices), opt_arr(rhs_indices), sorted));
  });
}

Status mlxe_gather_qmm(
    Handle x, Handle wq, Handle scales, Handle biases, Handle lhs_indices, Handle rhs_indices,
    bool transpose, int32_t group_size, int32_t bits, bool sorted, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out,
        mx::gather_qmm(
            arr(x, "x"), arr(wq, "wq"), arr(scales, "scales"), opt_arr(biases),
            opt_arr(lhs_indices), opt_arr(rhs_indices), transpose, group_size, bits, "affine",
            std::nullopt, sorted));
  });
}

Status mlxe_graph_primitives(const Handle* arrays, size_t n, size_t* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    if (arrays == nullptr && n > 0) {
      fail("graph_primitives: null 'arrays' with n > 0");
    }
    std::unordered_set<std::uintptr_t> seen_nodes;
    std::unordered_set<std::uintptr_t> seen_prims;
    std::vector<mx::array> stack;
    for (size_t i = 0; i < n; ++i) {
      stack.push_back(arr(arrays[i], "arrays[i]"));
    }
    // Iterative, because a long decode graph would overflow a recursive walk.
    while (!stack.empty()) {
      mx::array a = std::move(stack.back());
      stack.pop_back();
      if (!seen_nodes.insert(a.id()).second) {
        continue;
      }
      if (!a.has_primitive() || a.status() != mx::array::Status::unscheduled) {
        continue;
      }
      // Siblings (outputs of one multi-output primitive) share the primitive: one kernel.
      seen_prims.insert(a.primitive_id());
      for (const auto& in : a.inputs()) {
        stack.push_back(in);
      }
    }
    *out = seen_prims.size();
  });
}
