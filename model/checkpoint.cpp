// Opening a checkpoint directory. The index is read with nlohmann::json and
// turned into shard -> tensor names first, so each shard is mapped exactly
// once however many tensors it holds; every shard name is checked to be a
// plain relative path inside the directory before it is touched, and every
// name in the weight map must exist in its shard. Lookups go through one
// sorted map of pointers into the mapped files' tensor tables.
#include "model/checkpoint.hpp"

#include <fstream>
#include <iterator>
#include <system_error>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

namespace troupe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

/// Largest index file accepted; real ones are well under a megabyte.
constexpr uintmax_t max_index_bytes = 64ull << 20;

[[noreturn]] void fail(const std::string& what) { throw error(errc::errc_invalid_model_file, what); }

/// Reads and parses the index file, returning its weight_map object.
json read_weight_map(const fs::path& index_path) {
  const std::string index = index_path.string();
  std::error_code ec;
  const uintmax_t size = fs::file_size(index_path, ec);
  if (ec) throw error(errc::errc_io, "cannot read checkpoint index '" + index + "': " + ec.message());
  if (size > max_index_bytes) fail("checkpoint index '" + index + "' is larger than 64 MiB");
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw error(errc::errc_io, "cannot open checkpoint index '" + index + "'");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw error(errc::errc_io, "cannot read checkpoint index '" + index + "'");
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    fail("checkpoint index '" + index + "' is not valid JSON: " + e.what());
  }
  if (!doc.is_object()) fail("checkpoint index '" + index + "' is not a JSON object");
  auto wm = doc.find("weight_map");
  if (wm == doc.end() || !wm->is_object()) {
    fail("checkpoint index '" + index + "' has no \"weight_map\" object");
  }
  return std::move(*wm);
}

/// True when `shard` is a non-empty relative path with no ".." component.
bool stays_inside(const fs::path& shard) {
  if (shard.empty() || shard.has_root_name() || shard.has_root_directory()) return false;
  for (const auto& part : shard) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

checkpoint checkpoint::open(const fs::path& dir) {
  checkpoint ck;
  ck.dir_ = dir;
  const std::string dir_name = dir.string();
  const fs::path index_path = dir / "model.safetensors.index.json";
  const fs::path single_path = dir / "model.safetensors";
  std::error_code ec;

  if (fs::exists(index_path, ec)) {
    const std::string index = index_path.string();
    json weight_map = read_weight_map(index_path);
    std::map<std::string, std::vector<std::string>> by_shard;  // shard -> tensor names
    for (const auto& [name, shard] : weight_map.items()) {
      if (!shard.is_string()) fail("checkpoint index '" + index + "': tensor '" + name + "' maps to a non-string");
      const auto& shard_name = shard.get_ref<const std::string&>();
      if (!stays_inside(fs::path(shard_name))) {
        fail("checkpoint index '" + index + "': tensor '" + name + "' maps to shard '" + shard_name +
             "', which is not a relative path inside the directory");
      }
      by_shard[fs::path(shard_name).lexically_normal().string()].push_back(name);  // "./a" is "a"
    }
    ck.files_.reserve(by_shard.size());
    for (const auto& [shard_name, names] : by_shard) {
      const fs::path shard_path = dir / shard_name;
      if (!fs::exists(shard_path, ec)) {
        fail("checkpoint '" + dir_name + "': shard '" + shard_name + "' listed by the index (for tensor '" +
             names.front() + "') does not exist");
      }
      ck.files_.push_back(safetensors_file::open(shard_path));
      const safetensors_file& file = ck.files_.back();
      for (const auto& name : names) {
        const tensor_info* t = file.find(name);
        if (t == nullptr) {
          fail("checkpoint '" + dir_name + "': tensor '" + name + "' is listed in the index for shard '" +
               shard_name + "' but that file does not hold it");
        }
        ck.by_name_.emplace(name, t);
      }
    }
  } else if (fs::exists(single_path, ec)) {
    ck.files_.push_back(safetensors_file::open(single_path));
    for (const auto& t : ck.files_.back().tensors()) ck.by_name_.emplace(t.name, &t);
  } else if (!fs::is_directory(dir, ec)) {
    throw error(errc::errc_io, "checkpoint directory '" + dir_name + "' does not exist or is not a directory");
  } else {
    fail("checkpoint directory '" + dir_name +
         "' holds neither model.safetensors nor model.safetensors.index.json");
  }
  return ck;
}

const tensor_info* checkpoint::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const tensor_info& checkpoint::get(std::string_view name) const {
  const tensor_info* t = find(name);
  if (t == nullptr) {
    fail("tensor '" + std::string(name) + "' is not in checkpoint '" + dir_.string() + "'");
  }
  return *t;
}

std::vector<std::string> checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(by_name_.size());
  for (const auto& [name, t] : by_name_) out.push_back(name);
  return out;
}

}  // namespace troupe
