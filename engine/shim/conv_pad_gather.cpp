// Ops added in ABI 1.1: 1-D convolution, padding, gathered (mixture-of-experts) matmuls, and the
// graph count used to measure kernels per step.

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_set>

#include "mlx/ops.h"
#include "mlx/primitives.h"

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

namespace {

// The primitives that evaluating `arrays` would run: unevaluated nodes reachable from them,
// the outputs of one multi-output primitive once.
std::vector<mx::array> pending_primitives(const Handle* arrays, size_t n) {
  if (arrays == nullptr && n > 0) {
    fail("graph_primitives: null 'arrays' with n > 0");
  }
  std::unordered_set<std::uintptr_t> seen_nodes;
  std::unordered_set<std::uintptr_t> counted;
  std::vector<mx::array> found;
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
    // Siblings (outputs of one multi-output primitive) are one kernel, counted once. The
    // primitive's address cannot tell nodes apart: every replay of a compiled function shares
    // the traced primitive objects.
    bool sibling_counted = false;
    for (const auto& s : a.siblings()) {
      sibling_counted = sibling_counted || counted.count(s.id()) > 0;
    }
    if (!sibling_counted) {
      counted.insert(a.id());
      found.push_back(a);
    }
    for (const auto& in : a.inputs()) {
      stack.push_back(in);
    }
  }
  return found;
}

}  // namespace

Status mlxe_graph_primitives(const Handle* arrays, size_t n, size_t* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    *out = pending_primitives(arrays, n).size();
  });
}

// Not in the ops table (a diagnostic of the engine's): the primitives of `arrays` by name, one
// "name<TAB>count" line each, most frequent first. `*len` is the text's full length; at most
// `cap` bytes of it are written to `buf`.
MLXE_EXPORT Status mlxe_graph_census(
    const Handle* arrays, size_t n, char* buf, size_t cap, size_t* len) noexcept {
  return guard([&] {
    out_ptr(len, "len");
    std::map<std::string, size_t> by_name;
    for (const auto& a : pending_primitives(arrays, n)) {
      by_name[a.primitive().name()] += 1;
    }
    std::vector<std::pair<std::string, size_t>> rows(by_name.begin(), by_name.end());
    std::stable_sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) { return x.second > y.second; });
    std::string text;
    for (const auto& [name, count] : rows) {
      text += name + "\t" + std::to_string(count) + "\n";
    }
    *len = text.size();
    if (buf != nullptr) {
      std::memcpy(buf, text.data(), std::min(cap, text.size()));
    }
  });
}
