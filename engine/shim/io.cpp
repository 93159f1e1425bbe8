// Files: safetensors and GGUF loading into bundles, safetensors saving.

#include <algorithm>
#include <unordered_map>
#include <variant>

#include "mlx/io.h"

#include "mlxe.h"

using namespace mlxe;

namespace {

// `MetaKind` codes in plugin-api/src/ops_table.rs.
constexpr uint32_t kMetaString = 0;
constexpr uint32_t kMetaStrings = 1;
constexpr uint32_t kMetaArray = 2;
constexpr uint32_t kMetaEmpty = 3;

struct MetaEntry {
  std::string key;
  uint32_t kind = kMetaEmpty;
  std::vector<std::string> strings; // one for kMetaString, all for kMetaStrings
  std::optional<mx::array> array;   // for kMetaArray
};

/// A loaded file. Entries sit at stable indices, sorted by name, and the names and strings
/// handed out as borrowed pointers stay valid until the bundle is freed.
struct Bundle {
  std::vector<std::pair<std::string, mx::array>> arrays;
  std::vector<MetaEntry> meta;

  void sort() {
    std::sort(arrays.begin(), arrays.end(), [](const auto& a, const auto& b) {
      return a.first < b.first;
    });
    std::sort(meta.begin(), meta.end(), [](const auto& a, const auto& b) {
      return a.key < b.key;
    });
  }
};

Bundle& bundle(BundleHandle b) {
  if (b == nullptr) {
    fail("null bundle handle");
  }
  return *static_cast<Bundle*>(b);
}

void take_arrays(Bundle& out, std::unordered_map<std::string, mx::array>& arrays) {
  out.arrays.reserve(arrays.size());
  for (auto& [name, a] : arrays) {
    out.arrays.emplace_back(name, std::move(a));
  }
}

/// Publishes a fully built bundle at `*out`.
void publish(BundleHandle* out, Bundle&& b) {
  b.sort();
  *out = new Bundle(std::move(b));
}

} // namespace

Status mlxe_load_safetensors(const char* path, size_t len, BundleHandle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    auto [arrays, metadata] = mx::load_safetensors(to_string(path, len, "path"));
    Bundle b;
    take_arrays(b, arrays);
    b.meta.reserve(metadata.size());
    for (auto& [key, value] : metadata) {
      MetaEntry e;
      e.key = key;
      e.kind = kMetaString;
      e.strings.push_back(std::move(value));
      b.meta.push_back(std::move(e));
    }
    publish(out, std::move(b));
  });
}

Status mlxe_load_gguf(const char* path, size_t len, BundleHandle* out) noexcept {
  return guard([&] {
    out_ptr(out, "out");
    auto [arrays, metadata] = mx::load_gguf(to_string(path, len, "path"));
    Bundle b;
    take_arrays(b, arrays);
    b.meta.reserve(metadata.size());
    for (auto& [key, value] : metadata) {
      MetaEntry e;
      e.key = key;
      if (auto* s = std::get_if<std::string>(&value)) {
        e.kind = kMetaString;
        e.strings.push_back(std::move(*s));
      } else if (auto* v = std::get_if<std::vector<std::string>>(&value)) {
        e.kind = kMetaStrings;
        e.strings = std::move(*v);
      } else if (auto* a = std::get_if<mx::array>(&value)) {
        e.kind = kMetaArray;
        e.array = std::move(*a);
      } else {
        e.kind = kMetaEmpty;
      }
      b.meta.push_back(std::move(e));
    }
    publish(out, std::move(b));
  });
}

void mlxe_bundle_free(BundleHandle b) noexcept {
  try {
    delete static_cast<Bundle*>(b);
  } catch (...) {
    set_error("exception while freeing a bundle");
  }
}

size_t mlxe_bundle_num_arrays(BundleHandle b) noexcept {
  return guard_value<size_t>(0, [&] { return bundle(b).arrays.size(); });
}

Status mlxe_bundle_array(
    BundleHandle b, size_t i, const char** name, size_t* name_len, Handle* out) noexcept {
  return guard([&] {
    auto& bd = bundle(b);
    if (i >= bd.arrays.size()) {
      fail("bundle_array: index " + std::to_string(i) + " out of range (" +
           std::to_string(bd.arrays.size()) + " arrays)");
    }
    const auto& [n, a] = bd.arrays[i];
    if (out != nullptr) {
      *out = new mx::array(a);
    }
    if (name != nullptr) {
      *name = n.data();
    }
    if (name_len != nullptr) {
      *name_len = n.size();
    }
  });
}

size_t mlxe_bundle_num_meta(BundleHandle b) noexcept {
  return guard_value<size_t>(0, [&] { return bundle(b).meta.size(); });
}

Status mlxe_bundle_meta(
    BundleHandle b, size_t i, const char** key, size_t* key_len, uint32_t* kind,
    size_t* n_strings, Handle* out) noexcept {
  return guard([&] {
    auto& bd = bundle(b);
    if (i >= bd.meta.size()) {
      fail("bundle_meta: index " + std::to_string(i) + " out of range (" +
           std::to_string(bd.meta.size()) + " entries)");
    }
    const auto& e = bd.meta[i];
    if (out != nullptr) {
      *out = e.array ? new mx::array(*e.array) : nullptr;
    }
    if (key != nullptr) {
      *key = e.key.data();
    }
    if (key_len != nullptr) {
      *key_len = e.key.size();
    }
    if (kind != nullptr) {
      *kind = e.kind;
    }
    if (n_strings != nullptr) {
      *n_strings = e.strings.size();
    }
  });
}

Status mlxe_bundle_meta_string(
    BundleHandle b, size_t i, size_t j, const char** s, size_t* len) noexcept {
  return guard([&] {
    auto& bd = bundle(b);
    if (i >= bd.meta.size()) {
      fail("bundle_meta_string: entry " + std::to_string(i) + " out of range (" +
           std::to_string(bd.meta.size()) + " entries)");
    }
    const auto& e = bd.meta[i];
    if (j >= e.strings.size()) {
      fail("bundle_meta_string: string " + std::to_string(j) + " out of range for '" + e.key +
           "' (" + std::to_string(e.strings.size()) + " strings)");
    }
    if (s != nullptr) {
      *s = e.strings[j].data();
    }
    if (len != nullptr) {
      *len = e.strings[j].size();
    }
  });
}

Status mlxe_save_safetensors(
    const char* path, size_t path_len, const char* const* names, const size_t* name_lens,
    const Handle* arrays, size_t n, const char* const* meta_keys, const size_t* meta_key_lens,
    const char* const* meta_values, const size_t* meta_value_lens, size_t n_meta) noexcept {
  return guard([&] {
    if (n > 0 && (names == nullptr || name_lens == nullptr || arrays == nullptr)) {
      fail("save_safetensors: null names, name lengths or arrays with n > 0");
    }
    if (n_meta > 0 && (meta_keys == nullptr || meta_key_lens == nullptr ||
                       meta_values == nullptr || meta_value_lens == nullptr)) {
      fail("save_safetensors: null metadata pointers with n_meta > 0");
    }
    std::unordered_map<std::string, mx::array> map;
    map.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      auto name = to_string(names[i], name_lens[i], "name");
      if (!map.emplace(name, arr(arrays[i], "arrays[i]")).second) {
        fail("save_safetensors: duplicate array name '" + name + "'");
      }
    }
    std::unordered_map<std::string, std::string> meta;
    meta.reserve(n_meta);
    for (size_t i = 0; i < n_meta; ++i) {
      auto key = to_string(meta_keys[i], meta_key_lens[i], "metadata key");
      if (!meta.emplace(key, to_string(meta_values[i], meta_value_lens[i], "metadata value"))
               .second) {
        fail("save_safetensors: duplicate metadata key '" + key + "'");
      }
    }
    mx::save_safetensors(to_string(path, path_len, "path"), std::move(map), std::move(meta));
  });
}
