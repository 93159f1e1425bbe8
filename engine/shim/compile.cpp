// MLX's compile of a function that lives on the other side of the C boundary (a plugin's or the
// engine's Rust closure), called back through a C function pointer.

#include <atomic>
#include <functional>

#include "mlx/compile.h"
#include "mlx/compile_impl.h"

#include "mlxe.h"

using namespace mlxe;

namespace {

using ArrayFn = std::function<std::vector<mx::array>(const std::vector<mx::array>&)>;

struct Compiled {
  ArrayFn fn;
  void* payload;
  FreePayloadFn free_payload;
  size_t n_inputs;
  size_t n_outputs;
  std::uintptr_t id;
};

// MLX keys its per-thread trace caches by a function id. Heap addresses get reused, so a cache
// entry another thread still holds for a freed function could be found for a new one at the
// same address; ids from this counter are never reused, and the top bit keeps them apart from
// the addresses MLX uses as ids for its own compiled functions.
std::atomic<std::uintptr_t> next_id{0};

constexpr size_t kMsgCap = 2048;

} // namespace

Status mlxe_compile(
    CompileFn fun, void* payload, FreePayloadFn free_payload, size_t n_inputs, size_t n_outputs,
    bool shapeless, CompiledHandle* out) noexcept {
  // The payload is the shim's from here on, also when this call fails.
  Compiled* c = nullptr;
  Status st = guard([&] {
    out_ptr(out, "out");
    if (fun == nullptr || free_payload == nullptr) {
      fail("compile: 'fun' and 'free_payload' are required");
    }
    if (n_outputs == 0) {
      fail("compile: 'n_outputs' must be at least 1");
    }
    c = new Compiled{nullptr, payload, free_payload, n_inputs, n_outputs,
                     (std::uintptr_t(1) << 63) | next_id.fetch_add(1)};
    ArrayFn traced = [fun, payload, n_outputs](const std::vector<mx::array>& in) {
      std::vector<Handle> ins;
      ins.reserve(in.size());
      for (const auto& a : in) {
        ins.push_back(const_cast<mx::array*>(&a));
      }
      std::vector<Handle> outs(n_outputs, nullptr);
      std::string msg(kMsgCap, '\0');
      size_t len = 0;
      Status s = fun(payload, ins.data(), ins.size(), outs.data(), n_outputs, msg.data(), kMsgCap,
                     &len);
      // Take every handle written, so none leaks when the callback fails half-way.
      std::vector<mx::array> result;
      bool missing = false;
      for (Handle h : outs) {
        if (h == nullptr) {
          missing = true;
          continue;
        }
        auto* p = static_cast<mx::array*>(h);
        result.push_back(std::move(*p));
        delete p;
      }
      if (s != 0) {
        msg.resize(len < kMsgCap ? len : kMsgCap);
        throw std::runtime_error(msg.empty() ? "compiled function failed (no message)" : msg);
      }
      if (missing) {
        fail("compile: the function reported success but did not write all " +
             std::to_string(n_outputs) + " outputs");
      }
      return result;
    };
    c->fn = mx::detail::compile(std::move(traced), c->id, shapeless);
    *out = c;
  });
  if (st != 0) {
    delete c;
    if (free_payload != nullptr) {
      free_payload(payload);
    }
  }
  return st;
}

Status mlxe_compiled_call(
    CompiledHandle f, const Handle* inputs, size_t n_inputs, Handle* outputs,
    size_t n_outputs) noexcept {
  return guard([&] {
    if (f == nullptr) {
      fail("compiled_call: null compiled function");
    }
    auto* c = static_cast<Compiled*>(f);
    if (n_inputs != c->n_inputs) {
      fail("compiled_call: the function takes " + std::to_string(c->n_inputs) +
           " inputs, got " + std::to_string(n_inputs));
    }
    if (n_outputs != c->n_outputs) {
      fail("compiled_call: the function returns " + std::to_string(c->n_outputs) +
           " outputs, room was given for " + std::to_string(n_outputs));
    }
    out_ptr(outputs, "outputs");
    std::vector<mx::array> in;
    in.reserve(n_inputs);
    for (size_t i = 0; i < n_inputs; ++i) {
      in.push_back(arr(inputs[i], "inputs[i]"));
    }
    auto res = c->fn(in);
    if (res.size() != n_outputs) {
      fail("compiled_call: got " + std::to_string(res.size()) + " outputs, expected " +
           std::to_string(n_outputs));
    }
    for (size_t i = 0; i < n_outputs; ++i) {
      outputs[i] = new mx::array(std::move(res[i]));
    }
  });
}

void mlxe_compiled_free(CompiledHandle f) noexcept {
  if (f == nullptr) {
    return;
  }
  auto* c = static_cast<Compiled*>(f);
  // Only the calling thread's trace cache can be reached; other threads' entries for this id go
  // with their thread and can never match a later function (ids are not reused).
  guard([&] { mx::detail::compile_erase(mx::detail::compile_cache(), c->id); });
  c->free_payload(c->payload);
  delete c;
}
