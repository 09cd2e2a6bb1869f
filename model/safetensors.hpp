// Read-only access to safetensors files. A file is mapped with mmap rather than
// read, so weights are paged in on demand and loading a checkpoint costs no
// copy; the whole header is validated at open (types, shapes, byte ranges,
// overlaps) so that every tensor_info handed out afterwards is safe to read
// without further checks. Malformed input of any kind ends in troupe::error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/dtype.hpp"

namespace troupe {

/// One tensor of a mapped safetensors file.
struct tensor_info {
  std::string name;                 ///< tensor name as written in the header
  dtype type = dtype::dtype_f32;    ///< storage type
  std::vector<int64_t> shape;       ///< dimensions, outermost first; empty for a scalar
  const std::byte* data = nullptr;  ///< first byte, inside the mapping (may be unaligned)
  size_t bytes = 0;                 ///< product(shape) * dtype_size(type)
  std::string file;                 ///< path of the file holding it (for error messages)

  /// Number of elements (product of shape; 1 for a scalar).
  int64_t numel() const;
};

/// Largest header accepted, in bytes (the reference implementation's limit).
inline constexpr uint64_t safetensors_max_header = 100ull << 20;

/// A safetensors file mapped read-only (mmap) and validated at open.
/// Move-only; unmaps in its destructor, which invalidates every tensor_info::data.
class safetensors_file {
 public:
  /// Maps and validates `path`. Throws troupe::error: errc_io when the file
  /// cannot be opened or mapped, errc_invalid_model_file (naming the file and,
  /// where one is involved, the tensor) when its content is malformed.
  static safetensors_file open(const std::filesystem::path& path);

  /// An empty object holding no mapping.
  safetensors_file() = default;
  safetensors_file(safetensors_file&& other) noexcept;
  safetensors_file& operator=(safetensors_file&& other) noexcept;
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;
  ~safetensors_file();

  /// Every tensor of the file, sorted by name.
  const std::vector<tensor_info>& tensors() const { return tensors_; }
  /// The tensor called `name`, or nullptr when absent.
  const tensor_info* find(std::string_view name) const;
  /// The path the file was opened from.
  const std::filesystem::path& path() const { return path_; }
  /// The optional "__metadata__" string map of the header.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void unmap_() noexcept;

  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace troupe
