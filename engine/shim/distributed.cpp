// MLX's distributed layer (mlx::core::distributed): groups and the collective ops, ABI 1.2.
//
// A group handle owns a heap copy of `distributed::Group` (itself a shared_ptr to MLX's backend
// object), so cloning and freeing handles never touches the connection. MLX chooses the stream
// a collective runs on from the group's backend (`communication_stream`), so the shim passes
// none. Errors MLX raises at init (no hostfile, a peer that never connects) or while evaluating
// (the ring backend's "connection to a peer was lost") come back as statuses like any other.

#include "mlx/distributed/distributed.h"
#include "mlx/distributed/ops.h"

#include "mlxe.h"

using namespace mlxe;
namespace dist = mx::distributed;

namespace {

const dist::Group& group(GroupHandle g) {
  if (g == nullptr) {
    fail("null group handle");
  }
  return *static_cast<const dist::Group*>(g);
}

// The backend names MLX's init accepts (it also lists them in its own error).
std::string backend_name(const char* p, size_t n) {
  std::string b = to_string(p, n, "backend");
  if (b != "any" && b != "ring" && b != "mpi" && b != "nccl" && b != "jaccl") {
    fail("unknown distributed backend '" + b + "' (any, ring, mpi, nccl, jaccl)");
  }
  return b;
}

} // namespace

Status mlxe_dist_is_available(const char* backend, size_t len, bool* out) noexcept {
  return guard([&] { *out_ptr(out, "out") = dist::is_available(backend_name(backend, len)); });
}

Status mlxe_dist_init(const char* backend, size_t len, bool strict, GroupHandle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    std::string b = backend_name(backend, len);
    *out = new dist::Group(dist::init(strict, b));
  });
}

Status mlxe_dist_group_clone(GroupHandle g, GroupHandle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    *out = new dist::Group(group(g));
  });
}

void mlxe_dist_group_free(GroupHandle g) noexcept {
  delete static_cast<dist::Group*>(g);
}

Status mlxe_dist_group_rank(GroupHandle g, int32_t* out) noexcept {
  return guard([&] { *out_ptr(out, "out") = group(g).rank(); });
}

Status mlxe_dist_group_size(GroupHandle g, int32_t* out) noexcept {
  return guard([&] { *out_ptr(out, "out") = group(g).size(); });
}

Status mlxe_all_sum(Handle x, GroupHandle g, Handle* out) noexcept {
  return guard([&] { put(out, dist::all_sum(arr(x, "x"), group(g))); });
}

Status mlxe_all_gather(Handle x, GroupHandle g, Handle* out) noexcept {
  return guard([&] { put(out, dist::all_gather(arr(x, "x"), group(g))); });
}

Status mlxe_send(Handle x, int32_t dst, GroupHandle g, Handle* out) noexcept {
  return guard([&] {
    const auto& grp = group(g);
    if (dst < 0 || dst >= grp.size() || dst == grp.rank()) {
      fail("send: destination rank " + std::to_string(dst) + " is not another rank of a group of " +
           std::to_string(grp.size()));
    }
    put(out, dist::send(arr(x, "x"), dst, grp));
  });
}

Status mlxe_recv(const int32_t* shape, size_t ndim, uint32_t dtype, int32_t src, GroupHandle g,
                 Handle* out) noexcept {
  return guard([&] {
    const auto& grp = group(g);
    if (src < 0 || src >= grp.size() || src == grp.rank()) {
      fail("recv: source rank " + std::to_string(src) + " is not another rank of a group of " +
           std::to_string(grp.size()));
    }
    put(out, dist::recv(to_shape(shape, ndim), to_dtype(dtype), src, grp));
  });
}
