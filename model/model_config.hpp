// The shape and numerics of a Llama-family checkpoint, read from its config.json.
// One struct serves Llama, Mistral, Qwen2 and Qwen3: they differ only in the
// flags below (biases, q/k norm, sliding window, RoPE scaling).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kernels/rope.hpp"

namespace troupe {

/// Which checkpoint family a config describes.
enum class model_arch : uint8_t { arch_llama, arch_mistral, arch_qwen2, arch_qwen3 };

/// Everything the engine needs to know about a model's architecture.
struct model_config {
  model_arch arch = model_arch::arch_llama;
  std::string architecture;        ///< the config's architectures[0], e.g. "LlamaForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t n_layers = 0;            ///< num_hidden_layers
  int64_t n_heads = 0;             ///< num_attention_heads
  int64_t n_kv_heads = 0;          ///< num_key_value_heads (defaults to n_heads)
  int64_t head_dim = 0;            ///< explicit head_dim or hidden_size / n_heads
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;           ///< bias on q/k/v projections (Qwen2 always; Llama/Qwen3 attention_bias)
  bool o_bias = false;             ///< bias on o_proj (Llama/Qwen3 attention_bias)
  bool mlp_bias = false;           ///< bias on gate/up/down (Llama mlp_bias)
  bool qk_norm = false;            ///< per-head RMSNorm on q and k before RoPE (Qwen3)
  int64_t max_position_embeddings = 0;
  /// Per layer: 0 = full attention, else the sliding-window size in tokens
  /// (a key at position k is visible to a query at q when q - W < k <= q).
  std::vector<int64_t> sliding_window;
  rope_scaling rope;               ///< RoPE base and scaling (kernels/rope.hpp)
  std::vector<int32_t> bos_token_ids;  ///< may be empty
  std::vector<int32_t> eos_token_ids;  ///< may be empty; config may give one id or a list
};

/// Reads and validates DIR/config.json (or the file itself when given one).
/// Throws troupe::error(errc_invalid_config) naming the file and the key for a
/// missing, mistyped or out-of-range key, or an unknown architecture, and
/// errc_io when the file cannot be read.
model_config model_config_load(const std::filesystem::path& path);

/// Same, from JSON text; `origin` names the source in error messages.
model_config model_config_parse(const std::string& json_text, const std::string& origin);

}  // namespace troupe
