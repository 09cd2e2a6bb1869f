// The Llama-family forward pass over a batch of sequences. Each entry brings
// a chunk of new tokens at its sequence's current length (a prefill chunk, or
// one token when decoding); the chunk's K/V are appended to the paged cache
// and logits come back for the positions asked for. Chunked prefill, decode
// and mixed batches are the same call. A model may hold only a layer range
// (a pipeline stage): then hidden states come in and/or go out instead of
// tokens and logits.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "config/errors.hpp"
#include "kernels/rope.hpp"
#include "model/engine.hpp"
#include "model/kv_cache.hpp"
#include "model/model_config.hpp"
#include "model/weight_arena.hpp"

namespace troupe {

/// A loaded model (or layer range) ready to run on the CPU backend.
class model : public engine {
 public:
  /// Takes ownership of the weights of `weights.range()`.
  model(model_config cfg, weight_arena weights);

  /// Loads DIR (config.json + safetensors) for `range` ({0, 0} = all layers).
  /// Throws troupe::error naming the file, key or tensor at fault.
  static model load(const std::filesystem::path& dir, layer_range range = {});

  /// The architecture.
  const model_config& config() const override { return cfg_; }
  /// The layers held.
  layer_range range() const override { return weights_.range(); }
  /// "cpu".
  std::string device() const override { return "cpu"; }
  /// The CPU backend keeps fp32 pages.
  dtype kv_dtype() const override { return dtype::dtype_f32; }
  /// A host KV cache (engine_kv with storage).
  std::unique_ptr<engine_kv> kv_make(int64_t page_size, int64_t n_pages) override;
  /// forward() on the cache of an engine_kv made by kv_make.
  errc forward(std::span<const seq_chunk> batch, engine_kv& kv, std::vector<float>& logits,
               stage_io io = {}) override {
    return forward(batch, kv.pages(), logits, io);
  }
  /// The weights held.
  const weight_arena& weights() const { return weights_; }
  /// A KV cache geometry for this model's range with `n_pages` pages.
  kv_cache_config kv_config(int64_t page_size, int64_t n_pages, dtype type = dtype::dtype_f32) const;

  /// Runs one step. Appends every chunk to its sequence in `kv` and writes
  /// logits rows (vocab_size floats each) in batch order. Errors leave `kv`
  /// unchanged: errc_invalid_argument (token id out of range, a sequence twice,
  /// missing hidden_in), errc_kv_exhausted, errc_context_overflow.
  errc forward(std::span<const seq_chunk> batch, kv_cache& kv, std::vector<float>& logits, stage_io io = {});

 private:
  struct layer_weights {
    weight_ref in_norm, q, k, v, o, q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
    weight_ref post_norm, gate, up, down, gate_bias, up_bias, down_bias;
  };
  void run_layer(int64_t local, const layer_weights& w, std::span<const seq_chunk> batch, kv_cache& kv);

  model_config cfg_;
  weight_arena weights_;
  rope_table rope_;
  std::vector<layer_weights> layers_;
  // Step workspaces, reused across calls (a model runs one step at a time).
  std::vector<float> x_, h_, q_, k_, v_, attn_, gate_, up_;
  std::vector<int32_t> pos_;
  std::vector<int64_t> seq_start_;  // first row of each batch entry
};

}  // namespace troupe
