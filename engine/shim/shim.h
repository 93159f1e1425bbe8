// Internal header of the mlx-engine C++ shim.
//
// The shim implements the ops table listed in plugin-api/src/ops_list.rs (its declarations,
// mlxe.h, are generated from that list by engine/build.rs). Every exported
// function is `extern "C"`, named `mlxe_<field name>`, never lets a C++ exception escape, and
// follows the table's conventions: input handles are borrowed, handles written to `out`
// pointers are owned by the caller, status 0 means success, and on failure the message is kept
// in a thread-local string readable through `mlxe_last_error`.
//
// Only the MLX headers each translation unit needs are included (<mlx/mlx.h> is slow to parse).
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mlx/array.h"
#include "mlx/device.h"
#include "mlx/dtype.h"

#define MLXE_EXPORT extern "C" __attribute__((visibility("default")))

namespace mx = mlx::core;

namespace mlxe {

using Handle = void*;
using BundleHandle = void*;
using Status = int32_t;
using CompiledHandle = void*;
using GroupHandle = void*;
// See `CompileFn` / `FreePayloadFn` in plugin-api/src/ops_table.rs.
using CompileFn = Status (*)(void* payload, const Handle* inputs, size_t n_inputs, Handle* outputs,
                             size_t n_outputs, char* msg, size_t msg_cap, size_t* msg_len);
using FreePayloadFn = void (*)(void* payload);

// --- errors -----------------------------------------------------------------------------------

/// Stores `msg` as this thread's last error message.
void set_error(const char* msg) noexcept;

/// Runs `f`, converting any exception into a stored message and status 1.
template <class F>
inline Status guard(F&& f) noexcept {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    set_error(e.what());
  } catch (...) {
    set_error("unknown C++ exception in the mlx-engine shim");
  }
  return 1;
}

/// Runs `f` for an entry point that has no status to report: any exception is stored as the
/// thread's last error and `fallback` is returned.
template <class T, class F>
inline T guard_value(T fallback, F&& f) noexcept {
  try {
    return f();
  } catch (const std::exception& e) {
    set_error(e.what());
  } catch (...) {
    set_error("unknown C++ exception in the mlx-engine shim");
  }
  return fallback;
}

[[noreturn]] inline void fail(const std::string& msg) {
  throw std::invalid_argument("[mlx-engine shim] " + msg);
}

// --- handles ----------------------------------------------------------------------------------

/// Borrows the array behind a required handle.
inline const mx::array& arr(Handle h, const char* what) {
  if (h == nullptr) {
    fail(std::string("null handle for required argument '") + what + "'");
  }
  return *static_cast<const mx::array*>(h);
}

/// Borrows an optional array: a null handle means "absent".
inline std::optional<mx::array> opt_arr(Handle h) {
  if (h == nullptr) {
    return std::nullopt;
  }
  return *static_cast<const mx::array*>(h);
}

/// Checks an out pointer before any work is done.
template <class T>
inline T* out_ptr(T* out, const char* what) {
  if (out == nullptr) {
    fail(std::string("null out pointer '") + what + "'");
  }
  return out;
}

/// Moves `a` into a new owned handle stored at `*out`.
inline void put(Handle* out, mx::array a) {
  out_ptr(out, "out");
  *out = new mx::array(std::move(a));
}

// --- conversions ------------------------------------------------------------------------------

/// Our ABI dtype code -> MLX dtype; throws on an unknown code.
mx::Dtype to_dtype(uint32_t code);
/// MLX dtype -> our ABI dtype code; throws on a dtype without a code.
uint32_t from_dtype(mx::Dtype d);

/// Our device code (0 = cpu, 1 = gpu) -> MLX device; throws on an unknown code.
mx::Device to_device(uint32_t code);
uint32_t from_device(const mx::Device& d);

/// `(pointer, length)` pair of i32 -> MLX shape; null with length 0 is an empty shape.
mx::Shape to_shape(const int32_t* p, size_t n, const char* what = "shape");
/// `(pointer, length)` pair of i32 -> axis list.
std::vector<int> to_ints(const int32_t* p, size_t n, const char* what = "axes");

/// `(pointer, length)` UTF-8 bytes -> std::string (not NUL-terminated on input).
std::string to_string(const char* p, size_t n, const char* what = "string");

/// A new array of `shape` and `dtype` holding a copy of `nbytes` bytes from `data`, built
/// through MLX's exported constructor from allocator memory (no deleter callback).
mx::array from_bytes(const void* data, size_t nbytes, mx::Shape shape, mx::Dtype dtype);

/// A 0-d array of `dtype` holding `value` (converted, saturating for integers).
mx::array scalar(double value, mx::Dtype dtype);

} // namespace mlxe
