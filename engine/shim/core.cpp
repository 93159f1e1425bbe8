// Core of the shim: errors, handle lifetime, conversions, construction and read-back, evaluation,
// memory counters, devices and streams.

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "mlx/memory.h"
#include "mlx/ops.h"
#include "mlx/stream.h"
#include "mlx/transforms.h"
#include "mlx/types/half_types.h"

#include "mlxe.h"

namespace mlxe {

namespace {
thread_local std::string g_last_error;
} // namespace

void set_error(const char* msg) noexcept {
  try {
    g_last_error.assign(msg == nullptr ? "" : msg);
  } catch (...) {
    // Out of memory while storing the message: keep whatever was there.
  }
}

// Dtype codes: plugin-api/src/dtype.rs (append only).
mx::Dtype to_dtype(uint32_t code) {
  switch (code) {
    case 0: return mx::bool_;
    case 1: return mx::uint8;
    case 2: return mx::uint16;
    case 3: return mx::uint32;
    case 4: return mx::uint64;
    case 5: return mx::int8;
    case 6: return mx::int16;
    case 7: return mx::int32;
    case 8: return mx::int64;
    case 9: return mx::float16;
    case 10: return mx::float32;
    case 11: return mx::bfloat16;
    case 12: return mx::float64;
    case 13: return mx::complex64;
    default: fail("unknown dtype code " + std::to_string(code));
  }
}

uint32_t from_dtype(mx::Dtype d) {
  switch (d.val()) {
    case mx::Dtype::Val::bool_: return 0;
    case mx::Dtype::Val::uint8: return 1;
    case mx::Dtype::Val::uint16: return 2;
    case mx::Dtype::Val::uint32: return 3;
    case mx::Dtype::Val::uint64: return 4;
    case mx::Dtype::Val::int8: return 5;
    case mx::Dtype::Val::int16: return 6;
    case mx::Dtype::Val::int32: return 7;
    case mx::Dtype::Val::int64: return 8;
    case mx::Dtype::Val::float16: return 9;
    case mx::Dtype::Val::float32: return 10;
    case mx::Dtype::Val::bfloat16: return 11;
    case mx::Dtype::Val::float64: return 12;
    case mx::Dtype::Val::complex64: return 13;
  }
  fail("MLX dtype has no ABI code (value " + std::to_string(static_cast<int>(d.val())) + ")");
}

mx::Device to_device(uint32_t code) {
  switch (code) {
    case 0: return mx::Device(mx::Device::cpu, 0);
    case 1: return mx::Device(mx::Device::gpu, 0);
    default: fail("unknown device code " + std::to_string(code));
  }
}

uint32_t from_device(const mx::Device& d) {
  return d.type == mx::Device::DeviceType::cpu ? 0u : 1u;
}

mx::Shape to_shape(const int32_t* p, size_t n, const char* what) {
  if (n > 0 && p == nullptr) {
    fail(std::string("null pointer for '") + what + "' with nonzero length");
  }
  mx::Shape s;
  s.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    s.push_back(p[i]);
  }
  return s;
}

std::vector<int> to_ints(const int32_t* p, size_t n, const char* what) {
  if (n > 0 && p == nullptr) {
    fail(std::string("null pointer for '") + what + "' with nonzero length");
  }
  return n == 0 ? std::vector<int>{} : std::vector<int>(p, p + n);
}

std::string to_string(const char* p, size_t n, const char* what) {
  if (n > 0 && p == nullptr) {
    fail(std::string("null pointer for '") + what + "' with nonzero length");
  }
  return n == 0 ? std::string() : std::string(p, n);
}

mx::array from_bytes(const void* data, size_t nbytes, mx::Shape shape, mx::Dtype dtype) {
  size_t count = 1;
  for (auto d : shape) {
    if (d < 0) {
      fail("negative dimension in shape");
    }
    if (d != 0 && count > std::numeric_limits<size_t>::max() / static_cast<size_t>(d)) {
      fail("shape too large");
    }
    count *= static_cast<size_t>(d);
  }
  size_t itemsize = mx::size_of(dtype);
  if (count > std::numeric_limits<size_t>::max() / itemsize) {
    fail("shape too large");
  }
  size_t expected = count * itemsize;
  if (nbytes != expected) {
    fail("array_from_data: got " + std::to_string(nbytes) + " bytes, shape and dtype need " +
         std::to_string(expected));
  }
  if (nbytes > 0 && data == nullptr) {
    fail("array_from_data: null data pointer");
  }
  // allocator::malloc hands back MLX-owned memory (freed by MLX's allocator, no deleter
  // callback into this library); array(Data, Shape, Dtype) is an exported constructor.
  mx::allocator::Data buf = mx::allocator::malloc(nbytes);
  if (nbytes > 0) {
    void* dst = buf.buffer().raw_ptr();
    if (dst == nullptr) {
      throw std::bad_alloc();
    }
    std::memcpy(dst, data, nbytes);
  }
  return mx::array(std::move(buf), std::move(shape), dtype);
}

namespace {

template <class T>
T saturate(double v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v != 0.0;
  } else if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(v);
  } else {
    if (std::isnan(v)) {
      return T(0);
    }
    constexpr double lo = static_cast<double>(std::numeric_limits<T>::min());
    constexpr double hi = static_cast<double>(std::numeric_limits<T>::max());
    if (v <= lo) {
      return std::numeric_limits<T>::min();
    }
    // `hi` may round up to 2^64 / 2^63 as a double; compare with >= to stay in range.
    if (v >= hi) {
      return std::numeric_limits<T>::max();
    }
    return static_cast<T>(v);
  }
}

template <class T>
mx::array scalar_of(T v, mx::Dtype dtype) {
  return from_bytes(&v, sizeof(T), mx::Shape{}, dtype);
}

} // namespace

mx::array scalar(double value, mx::Dtype dtype) {
  switch (dtype.val()) {
    case mx::Dtype::Val::bool_: return scalar_of(saturate<bool>(value), dtype);
    case mx::Dtype::Val::uint8: return scalar_of(saturate<uint8_t>(value), dtype);
    case mx::Dtype::Val::uint16: return scalar_of(saturate<uint16_t>(value), dtype);
    case mx::Dtype::Val::uint32: return scalar_of(saturate<uint32_t>(value), dtype);
    case mx::Dtype::Val::uint64: return scalar_of(saturate<uint64_t>(value), dtype);
    case mx::Dtype::Val::int8: return scalar_of(saturate<int8_t>(value), dtype);
    case mx::Dtype::Val::int16: return scalar_of(saturate<int16_t>(value), dtype);
    case mx::Dtype::Val::int32: return scalar_of(saturate<int32_t>(value), dtype);
    case mx::Dtype::Val::int64: return scalar_of(saturate<int64_t>(value), dtype);
    case mx::Dtype::Val::float32: return scalar_of(static_cast<float>(value), dtype);
    case mx::Dtype::Val::float64: return scalar_of(value, dtype);
    // MLX's own half types round; built from bytes, the scalar is a constant with no
    // primitive, so a compiled graph does not recompute it on every call.
    case mx::Dtype::Val::float16:
      return scalar_of(static_cast<mx::float16_t>(static_cast<float>(value)), dtype);
    case mx::Dtype::Val::bfloat16:
      return scalar_of(static_cast<mx::bfloat16_t>(static_cast<float>(value)), dtype);
    case mx::Dtype::Val::complex64: {
      float parts[2] = {static_cast<float>(value), 0.0f};
      return from_bytes(parts, sizeof(parts), mx::Shape{}, dtype);
    }
  }
  fail("scalar: unsupported dtype");
}

namespace {

std::vector<mx::array> collect(const Handle* arrays, size_t n) {
  if (n > 0 && arrays == nullptr) {
    fail("null array list with nonzero length");
  }
  std::vector<mx::array> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    v.push_back(arr(arrays[i], "arrays[i]"));
  }
  return v;
}

/// A stream of this process given its index and device; throws if there is none.
mx::Stream find_stream(uint32_t device, int32_t index) {
  mx::Device dev = to_device(device);
  for (const auto& s : mx::get_streams()) {
    if (s.index == index && s.device == dev) {
      return s;
    }
  }
  fail("no stream with index " + std::to_string(index) + " on device " +
       std::to_string(device));
}

} // namespace

} // namespace mlxe

using namespace mlxe;

// --- errors and lifetime -----------------------------------------------------------------------

void mlxe_last_error(const char** msg, size_t* len) noexcept {
  if (msg != nullptr) {
    *msg = g_last_error.data();
  }
  if (len != nullptr) {
    *len = g_last_error.size();
  }
}

void mlxe_array_free(Handle a) noexcept {
  try {
    delete static_cast<mx::array*>(a);
  } catch (...) {
    set_error("exception while freeing an array");
  }
}

Status mlxe_array_clone(Handle a, Handle* out) noexcept {
  return guard([&] { put(out, arr(a, "a")); });
}

// --- construction and read-back ----------------------------------------------------------------

Status mlxe_array_from_data(
    const void* data, size_t nbytes, const int32_t* shape, size_t ndim, uint32_t dtype,
    Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, from_bytes(data, nbytes, to_shape(shape, ndim), to_dtype(dtype)));
  });
}

Status mlxe_array_full(
    const int32_t* shape, size_t ndim, double value, uint32_t dtype, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    auto dt = to_dtype(dtype);
    auto sh = to_shape(shape, ndim);
    // A 0-d `full` would be a `Full` node evaluated on every use; the plain scalar is data.
    put(out, sh.empty() ? scalar(value, dt) : mx::full(sh, scalar(value, dt), dt));
  });
}

Status mlxe_array_arange(
    double start, double stop, double step, uint32_t dtype, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::arange(start, stop, step, to_dtype(dtype)));
  });
}

size_t mlxe_array_ndim(Handle a) noexcept {
  return guard_value<size_t>(0, [&] { return arr(a, "a").ndim(); });
}

size_t mlxe_array_shape(Handle a, int32_t* out, size_t cap) noexcept {
  return guard_value<size_t>(0, [&] {
    const auto& s = arr(a, "a").shape();
    if (out != nullptr) {
      for (size_t i = 0; i < s.size() && i < cap; ++i) {
        out[i] = s[i];
      }
    }
    return s.size();
  });
}

uint32_t mlxe_array_dtype(Handle a) noexcept {
  return guard_value<uint32_t>(UINT32_MAX, [&] { return from_dtype(arr(a, "a").dtype()); });
}

size_t mlxe_array_size(Handle a) noexcept {
  return guard_value<size_t>(0, [&] { return arr(a, "a").size(); });
}

Status mlxe_array_read(Handle a, void* out, size_t nbytes) noexcept {
  return guard([&] {
    const auto& x = arr(a, "a");
    if (nbytes != x.nbytes()) {
      fail("array_read: buffer has " + std::to_string(nbytes) + " bytes, array needs " +
           std::to_string(x.nbytes()));
    }
    if (nbytes > 0 && out == nullptr) {
      fail("array_read: null output buffer");
    }
    // Evaluate first: most arrays come out row-contiguous and are copied straight out; strided
    // views (transposes, slices, broadcasts) go through one contiguous copy.
    mx::array c = x;
    c.eval();
    if (nbytes == 0) {
      return;
    }
    if (!c.flags().row_contiguous || c.data_size() != c.size()) {
      c = mx::contiguous(c);
      c.eval();
    }
    if (!c.flags().row_contiguous || c.data_size() != c.size()) {
      fail("array_read: array is not row-contiguous after contiguous()");
    }
    std::memcpy(out, c.data<char>(), nbytes);
  });
}

Status mlxe_astype(Handle a, uint32_t dtype, Handle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    put(out, mx::astype(arr(a, "a"), to_dtype(dtype)));
  });
}

Status mlxe_eval(const Handle* arrays, size_t n) noexcept {
  return guard([&] { mx::eval(collect(arrays, n)); });
}

Status mlxe_async_eval(const Handle* arrays, size_t n) noexcept {
  return guard([&] { mx::async_eval(collect(arrays, n)); });
}

// --- memory -------------------------------------------------------------------------------------

size_t mlxe_memory(uint32_t counter) noexcept {
  return guard_value<size_t>(0, [&]() -> size_t {
    switch (counter) {
      case 0: return mx::get_active_memory();
      case 1: return mx::get_peak_memory();
      case 2: return mx::get_cache_memory();
      default: fail("unknown memory counter " + std::to_string(counter));
    }
  });
}

void mlxe_reset_peak_memory() noexcept {
  guard([] { mx::reset_peak_memory(); });
}

void mlxe_clear_cache() noexcept {
  guard([] { mx::clear_cache(); });
}

size_t mlxe_set_memory_limit(size_t bytes) noexcept {
  return guard_value<size_t>(0, [&] { return mx::set_memory_limit(bytes); });
}

size_t mlxe_set_cache_limit(size_t bytes) noexcept {
  return guard_value<size_t>(0, [&] { return mx::set_cache_limit(bytes); });
}

// --- devices and streams ------------------------------------------------------------------------

bool mlxe_device_available(uint32_t device) noexcept {
  return guard_value<bool>(false, [&] { return mx::is_available(to_device(device)); });
}

Status mlxe_set_default_device(uint32_t device) noexcept {
  return guard([&] {
    auto d = to_device(device);
    if (!mx::is_available(d)) {
      fail(std::string("device ") + (device == 0 ? "cpu" : "gpu") + " is not available");
    }
    mx::set_default_device(d);
  });
}

uint32_t mlxe_default_device() noexcept {
  return guard_value<uint32_t>(0, [] { return from_device(mx::default_device()); });
}

Status mlxe_new_stream(uint32_t device, int32_t* out_index) noexcept {
  return guard([&] {
    out_ptr(out_index, "out_index");
    *out_index = mx::new_stream(to_device(device)).index;
  });
}

Status mlxe_set_default_stream(uint32_t device, int32_t index) noexcept {
  return guard([&] { mx::set_default_stream(find_stream(device, index)); });
}

Status mlxe_default_stream(uint32_t device, int32_t* out_index) noexcept {
  return guard([&] {
    out_ptr(out_index, "out_index");
    *out_index = mx::default_stream(to_device(device)).index;
  });
}

Status mlxe_synchronize(uint32_t device, int32_t index) noexcept {
  return guard([&] {
    if (index == -1) {
      mx::synchronize(mx::default_stream(to_device(device)));
    } else {
      mx::synchronize(find_stream(device, index));
    }
  });
}
