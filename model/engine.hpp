// The backend-neutral face of a loaded model (or layer range): what a
// pipeline stage needs to run steps, whatever the device. An engine holds the
// weights; an engine_kv (made by the engine, one per stage incarnation) holds
// the paged KV cache on the engine's device, with the page allocator and page
// tables on the host (model/kv_cache) so that schedulers and stages query
// free pages and lengths without touching the device. Backends: the CPU model
// (model/model.hpp) and the CUDA model (model/cuda_model.hpp).
//
// Sampling belongs to the engine too (forward_sample): a device engine samples
// where the logits are and returns only token ids (and the asked logprobs);
// the default samples on the host with each request's CPU sampler, so the CPU
// engine behaves exactly as a stage that samples itself. A request's state
// (request_sampler) serves both paths: one seed, one token history.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "config/errors.hpp"
#include "kernels/sample.hpp"
#include "model/kv_cache.hpp"
#include "model/model_config.hpp"
#include "model/sampler.hpp"
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

/// A request's sampling state for engine::forward_sample: its CPU sampler (the
/// host path, and the twin of device samplers), the seed both use, and the
/// tokens the penalties touch in the form device samplers read. Device draws
/// are keyed by (seed, tokens generated so far): the same seed gives the same
/// tokens on the same device, across batches, preemption and recomputation.
/// Not thread-safe: one request is sampled by one caller at a time.
class request_sampler {
 public:
  /// A missing seed is drawn from std::random_device here, so that every path
  /// draws from the same one. Prompt tokens feed the repetition penalty; ids
  /// outside [0, vocab_size) are ignored (as sampler does).
  request_sampler(const sampling_params& p, int64_t vocab_size, std::span<const int32_t> prompt_tokens);

  /// Host path: picks the next token from one row of logits (sampler::sample) and records it.
  int32_t sample(std::span<const float> logits);
  /// Records a token chosen elsewhere (a device sampler, or before a recomputation).
  void accept(int32_t token);

  /// The settings, seed filled in.
  const sampling_params& params() const noexcept { return host_.params(); }
  /// Tokens recorded as generated (in range).
  int64_t generated_count() const noexcept { return host_.generated_count(); }
  /// The tokens the penalties touch, sorted by id; empty when no penalty is on.
  std::span<const sample_token_stat> history() const noexcept { return history_; }
  /// The settings as device samplers read them for the next draw (RNG step = generated_count()).
  sample_row_params device_params(int32_t logprobs) const;
  /// The CPU sampler itself (the processed log-softmax, for tests and tools).
  const sampler& host() const noexcept { return host_; }

 private:
  void record_(int32_t token);

  sampler host_;
  int64_t vocab_;
  std::vector<sample_token_stat> history_;
};

/// One row to sample in engine::forward_sample.
struct sample_request {
  request_sampler* sampler = nullptr;  ///< the request's state; records the chosen token
  int32_t logprobs = -1;               ///< -1: none; 0..20: the chosen token's logprob plus that many top ones
};

/// One sampled row.
struct sample_outcome {
  int32_t token = 0;
  float logprob = 0.0f;                        ///< raw log-softmax of token (vLLM's logprobs); 0 when none asked
  std::vector<std::pair<int32_t, float>> top;  ///< the top `logprobs` (token, logprob), best first, ties by lower id
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
  /// Runs one step as forward() does and samples one token for each entry
  /// whose logits mode is logits_last (and that has tokens), in batch order,
  /// with rows[i] for the i-th of them; each row's sampler records its token.
  /// Only token ids and the asked logprobs come back. The default runs
  /// forward() and samples each row on the host with its CPU sampler; device
  /// engines override it to sample next to the logits. Errors: forward()'s;
  /// errc_invalid_argument (nothing run) when rows do not match the batch, a
  /// row has no sampler or more than 20 logprobs, or an entry asks for
  /// logits_all; errc_unsupported when the engine's range has no lm_head.
  virtual errc forward_sample(std::span<const seq_chunk> batch, engine_kv& kv, std::span<const sample_request> rows,
                              std::vector<sample_outcome>& out);

 protected:
  /// forward_sample's checks of rows against batch (errc::ok when they match).
  errc sample_rows_check(std::span<const seq_chunk> batch, std::span<const sample_request> rows) const;
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
