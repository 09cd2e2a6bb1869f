// The backend-neutral face of a loaded model (or layer range): what a
// pipeline stage needs to run steps, whatever the device. An engine holds the
// weights; an engine_kv (made by the engine, one per stage incarnation) holds
// the paged KV cache on the engine's device, with the page allocator and page
// tables on the host (model/kv_cache) so that schedulers and stages query
// free pages and lengths without touching the device. Backends: the CPU model
// (model/model.hpp) and the CUDA model (model/cuda_model.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "config/errors.hpp"
#include "model/kv_cache.hpp"
#include "model/model_config.hpp"
#include "model/weight_arena.hpp"

namespace troupe {

/// Which logits an entry wants.
enum class logits_mode : uint8_t {
  logits_none,  ///< none (a prefill chunk that is not the prompt's last)
  logits_last,  ///< the chunk's last position
  logits_all,   ///< every position of the chunk
};

/// One sequence's part of a step.
struct seq_chunk {
  int64_t seq_id = 0;
  std::span<const int32_t> tokens;  ///< the new tokens (for a non-first stage: only their count matters)
  logits_mode logits = logits_mode::logits_last;
};

/// Hidden-state hand-off for pipeline stages; unused by a full model.
struct stage_io {
  const float* hidden_in = nullptr;          ///< [total tokens][hidden] when the range does not start at layer 0
  std::vector<float>* hidden_out = nullptr;  ///< filled when the range does not end at the last layer
};

/// A paged KV cache on an engine's device: the host-side allocator (pages())
/// plus the storage. The base class is the CPU backend's (storage inside the
/// kv_cache); device backends derive and override gather/scatter.
class engine_kv {
 public:
  /// Wraps an allocator (with host storage for the CPU backend).
  explicit engine_kv(const kv_cache_config& c) : pages_(c) {}
  virtual ~engine_kv() = default;
  engine_kv(const engine_kv&) = delete;
  engine_kv& operator=(const engine_kv&) = delete;

  /// The page allocator and page tables.
  kv_cache& pages() { return pages_; }
  /// Same, read-only.
  const kv_cache& pages() const { return pages_; }
  /// The geometry.
  const kv_cache_config& config() const { return pages_.config(); }
  /// Pages not held by any sequence.
  int64_t free_pages() const { return pages_.free_pages(); }
  /// Tokens held for `seq` (0 when unknown).
  int64_t length(int64_t seq) const { return pages_.length(seq); }
  /// True when `seq` is held.
  bool contains(int64_t seq) const { return pages_.contains(seq); }
  /// Drops `seq` and returns its pages.
  void free(int64_t seq) { pages_.free(seq); }
  /// Shrinks `seq` to `len` tokens.
  errc truncate(int64_t seq, int64_t len) { return pages_.truncate(seq, len); }
  /// Bytes of one sequence of n_tokens in the contiguous transfer layout.
  size_t transfer_bytes(int64_t n_tokens) const { return pages_.transfer_bytes(n_tokens); }
  /// Copies all of `seq`'s KV into host memory dst (kv_cache::gather's layout).
  virtual errc gather(int64_t seq, std::span<std::byte> dst) const { return pages_.gather(seq, dst); }
  /// Creates `seq` from host memory src (kv_cache::scatter's contract).
  virtual errc scatter(int64_t seq, std::span<const std::byte> src, int64_t n_tokens) {
    return pages_.scatter(seq, src, n_tokens);
  }

 protected:
  kv_cache pages_;
};

/// A model (or layer range) ready to run steps on one device.
class engine {
 public:
  virtual ~engine() = default;
  /// The architecture.
  virtual const model_config& config() const = 0;
  /// The layers held.
  virtual layer_range range() const = 0;
  /// "cpu" or "cuda:N".
  virtual std::string device() const = 0;
  /// Element type of this backend's KV pages (sizes the cache from a byte budget).
  virtual dtype kv_dtype() const = 0;
  /// A KV cache geometry for this engine's range with `n_pages` pages.
  kv_cache_config kv_config(int64_t page_size, int64_t n_pages) const {
    const layer_range r = range();
    return {r.last - r.first, config().n_kv_heads, config().head_dim, page_size, n_pages, kv_dtype()};
  }
  /// Allocates a KV cache of n_pages pages on the engine's device. Throws
  /// troupe::error (errc_kv_exhausted when the memory is not there).
  virtual std::unique_ptr<engine_kv> kv_make(int64_t page_size, int64_t n_pages) = 0;
  /// Runs one step (model::forward's contract): appends every chunk to its
  /// sequence in `kv` (made by this engine) and writes fp32 logits rows in
  /// batch order. Errors leave `kv` unchanged.
  virtual errc forward(std::span<const seq_chunk> batch, engine_kv& kv, std::vector<float>& logits,
                       stage_io io = {}) = 0;
};

/// Resolves a device spec: "cpu"; "cuda" or "cuda:N" (-> "cuda:N"); "auto"
/// (cuda:0 when this build has CUDA and a GPU is visible, else cpu). Throws
/// troupe::error(errc_unsupported) for a CUDA device in a build without CUDA
/// or where no such GPU is visible, errc_invalid_argument for another spec.
std::string engine_resolve_device(const std::string& spec);

/// Element type of KV pages on a resolved device ("cpu": f32, "cuda:N": bf16).
dtype engine_kv_dtype(const std::string& device);

/// Loads DIR (config.json + safetensors) for `range` ({0, 0} = all layers) on
/// `device` (any spec engine_resolve_device accepts). Throws troupe::error.
std::shared_ptr<engine> engine_load(const std::filesystem::path& dir, layer_range range = {},
                                    const std::string& device = "cpu");

}  // namespace troupe
