// The weights of one layer range in one contiguous, aligned allocation with a
// manifest (name, dtype, shape, byte offset). A pipeline stage owns exactly
// its range; a weight seed can register the single block once with a transfer
// engine and a new instance can fetch it with one read and the manifest.
// Tensors keep their checkpoint dtype; shapes are checked against the config.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/host_buffer.hpp"
#include "kernels/matmul.hpp"
#include "model/model_config.hpp"

namespace troupe {

class checkpoint;

/// Layers [first, last) of a model; the first range also holds the embedding,
/// the last the final norm and lm_head.
struct layer_range {
  int64_t first = 0;
  int64_t last = 0;
};

/// One tensor in the arena.
struct arena_entry {
  std::string name;
  dtype type = dtype::dtype_f32;
  std::vector<int64_t> shape;
  size_t offset = 0;  ///< bytes from the start of the arena (64-aligned)
  size_t bytes = 0;
};

/// A tensor a layer range needs, with the shape the config implies.
struct arena_want {
  std::string name;         ///< name in the arena
  std::string source;       ///< checkpoint tensor it is read from (differs for tied lm_head)
  std::vector<int64_t> shape;
};

/// The tensors of `range` under `cfg`, in arena order. Throws
/// troupe::error(errc_invalid_argument) for an empty or out-of-bounds range.
std::vector<arena_want> weight_arena_plan(const model_config& cfg, layer_range range);

/// Weights of one layer range.
class weight_arena {
 public:
  /// Copies the range's tensors from an open checkpoint into one allocation.
  /// Throws troupe::error(errc_invalid_model_file) naming the tensor when one
  /// is missing or its shape differs from the config's.
  static weight_arena load(const checkpoint& ckpt, const model_config& cfg, layer_range range);

  /// Every tensor, in arena order. A tied lm_head shares the embedding's bytes
  /// when both are in the range.
  const std::vector<arena_entry>& manifest() const { return manifest_; }
  /// The entry named `name`, or nullptr.
  const arena_entry* find(std::string_view name) const;
  /// A tensor as a matrix/vector view; throws troupe::error when absent.
  weight_ref ref(std::string_view name) const;
  /// Same, or an empty ref (data == nullptr) when absent.
  weight_ref ref_or_null(std::string_view name) const;
  /// The one allocation.
  std::span<const std::byte> bytes() const { return {buffer_.data(), buffer_.size()}; }
  /// The layer range held.
  layer_range range() const { return range_; }

 private:
  host_buffer buffer_;
  std::vector<arena_entry> manifest_;
  layer_range range_;
};

}  // namespace troupe
