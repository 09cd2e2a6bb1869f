// A Hugging Face checkpoint directory seen as one name -> tensor table. Either
// a single model.safetensors or shards listed by model.safetensors.index.json;
// the loader above does not care which. All files are opened and validated up
// front (each shard once), so a missing shard or tensor fails at open, naming
// it, instead of half-way through building the model.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "model/safetensors.hpp"

namespace troupe {

/// A checkpoint directory: DIR/model.safetensors, or shards listed by
/// DIR/model.safetensors.index.json ("weight_map": name -> file). Move-only;
/// tensor_info pointers stay valid while the checkpoint lives.
class checkpoint {
 public:
  /// Opens `dir`, preferring the index when both it and model.safetensors exist.
  /// Throws troupe::error (errc_invalid_model_file, or errc_io for unreadable
  /// files) naming the directory, the index, the shard or the tensor at fault.
  /// Shard names must be relative paths that stay inside `dir`. With an index,
  /// only the tensors it lists are visible.
  static checkpoint open(const std::filesystem::path& dir);

  checkpoint(checkpoint&&) noexcept = default;
  checkpoint& operator=(checkpoint&&) noexcept = default;
  checkpoint(const checkpoint&) = delete;
  checkpoint& operator=(const checkpoint&) = delete;
  ~checkpoint() = default;

  /// The tensor called `name`, or nullptr when absent.
  const tensor_info* find(std::string_view name) const;
  /// The tensor called `name`; throws troupe::error(errc_invalid_model_file)
  /// naming the tensor and the directory when absent.
  const tensor_info& get(std::string_view name) const;
  /// Every tensor name, sorted.
  std::vector<std::string> names() const;
  /// The directory the checkpoint was opened from.
  const std::filesystem::path& dir() const { return dir_; }
  /// The mapped files, one per shard (one when unsharded), in open order.
  const std::vector<safetensors_file>& files() const { return files_; }

 private:
  checkpoint() = default;

  std::filesystem::path dir_;
  std::vector<safetensors_file> files_;
  std::map<std::string, const tensor_info*, std::less<>> by_name_;
};

}  // namespace troupe
