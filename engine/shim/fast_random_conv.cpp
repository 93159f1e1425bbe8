// Fused kernels (mlx::core::fast), random numbers and convolution.

#include "mlx/fast.h"
#include "mlx/ops.h"
#include "mlx/random.h"

#include "mlxe.h"

using namespace mlxe;

// --- fused kernels ------------------------------------------------------------------------------

Status mlxe_rms_norm(Handle x, Handle weight, float eps, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::fast::rms_norm(arr(x, "x"), opt_arr(weight), eps));
  });
}

Status mlxe_layer_norm(Handle x, Handle weight, Handle bias, float eps, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::fast::layer_norm(arr(x, "x"), opt_arr(weight), opt_arr(bias), eps));
  });
}

namespace {
// MLX accepts exactly one of `base` and `freqs`.
std::optional<float> rope_base(const std::optional<mx::array>& freqs, float base) {
  return freqs ? std::nullopt : std::optional<float>(base);
}
} // namespace

Status mlxe_rope(
    Handle x, int32_t dims, bool traditional, float base, float scale, int32_t offset,
    Handle freqs, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    auto f = opt_arr(freqs);
    put(out, mx::fast::rope(arr(x, "x"), dims, traditional, rope_base(f, base), scale, offset, f));
  });
}

Status mlxe_rope_offsets(
    Handle x, int32_t dims, bool traditional, float base, float scale, Handle offsets,
    Handle freqs, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    auto f = opt_arr(freqs);
    put(out,
        mx::fast::rope(
            arr(x, "x"), dims, traditional, rope_base(f, base), scale, arr(offsets, "offsets"), f));
  });
}

Status mlxe_sdpa(
    Handle q, Handle k, Handle v, float scale, uint32_t mask_mode, Handle mask,
    Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    std::string mode;
    std::optional<mx::array> mask_arr;
    switch (mask_mode) {
      case 0: // None
        if (mask != nullptr) {
          fail("sdpa: a mask array was given with mask_mode None");
        }
        break;
      case 1: // Causal
        if (mask != nullptr) {
          fail("sdpa: a mask array was given with mask_mode Causal");
        }
        mode = "causal";
        break;
      case 2: // Array: MLX takes the array with an empty mode string.
        mask_arr = arr(mask, "mask");
        break;
      default:
        fail("sdpa: unknown mask_mode " + std::to_string(mask_mode));
    }
    put(out,
        mx::fast::scaled_dot_product_attention(
            arr(q, "q"), arr(k, "k"), arr(v, "v"), scale, mode, mask_arr));
  });
}

// --- random -------------------------------------------------------------------------------------

Status mlxe_random_seed(uint64_t seed) noexcept {
  return guard([&] { mx::random::seed(seed); });
}

Status mlxe_random_key(uint64_t seed, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::random::key(seed));
  });
}

Status mlxe_random_split(Handle key, int32_t num, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::random::split(arr(key, "key"), num));
  });
}

Status mlxe_random_categorical(Handle logits, int32_t axis, Handle key, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::random::categorical(arr(logits, "logits"), axis, opt_arr(key)));
  });
}

Status mlxe_random_uniform(
    const int32_t* shape, size_t ndim, double low, double high, uint32_t dtype, Handle key,
    Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    auto dt = to_dtype(dtype);
    put(out,
        mx::random::uniform(
            scalar(low, dt), scalar(high, dt), to_shape(shape, ndim), dt, opt_arr(key)));
  });
}

Status mlxe_random_normal(
    const int32_t* shape, size_t ndim, double loc, double scale, uint32_t dtype, Handle key,
    Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    auto dt = to_dtype(dtype);
    std::optional<mx::array> loc_a;
    std::optional<mx::array> scale_a;
    if (loc != 0.0) {
      loc_a = scalar(loc, dt);
    }
    if (scale != 1.0) {
      scale_a = scalar(scale, dt);
    }
    put(out, mx::random::normal(to_shape(shape, ndim), dt, loc_a, scale_a, opt_arr(key)));
  });
}

// --- convolution --------------------------------------------------------------------------------

Status mlxe_conv2d(
    Handle x, Handle w, const int32_t* stride, const int32_t* padding, const int32_t* dilation,
    int32_t groups, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    if (stride == nullptr || padding == nullptr || dilation == nullptr) {
      fail("conv2d: stride, padding and dilation must each point at two values");
    }
    put(out,
        mx::conv2d(
            arr(x, "x"),
            arr(w, "w"),
            {stride[0], stride[1]},
            {padding[0], padding[1]},
            {dilation[0], dilation[1]},
            groups));
  });
}
