// The single-sequence driver over model::forward: prefill a prompt in chunks
// of at most chunk_size tokens, then decode one token per step with a
// sampler. The CLI, tests and benchmarks use it; the serving scheduler drives
// model::forward directly with many sequences per step.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/model.hpp"
#include "model/sampler.hpp"

namespace troupe {

/// How to run one generation.
struct generate_options {
  int64_t max_tokens = 16;
  int64_t chunk_size = 512;      ///< prefill chunk length (tokens per forward step)
  bool ignore_eos = false;       ///< keep going past the model's eos ids
  std::vector<int32_t> eos_token_ids;  ///< stop ids besides the config's (generation_config, tokenizer)
  sampling_params sampling;
  std::function<void(int32_t)> on_token;  ///< called with each token as it is sampled (streaming)
};

/// What a generation produced, with wall-clock timing of its two phases.
struct generate_result {
  std::vector<int32_t> tokens;   ///< generated ids (without the prompt)
  std::string finish_reason;     ///< "stop" (eos) or "length"
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
};

/// Prefills `prompt` into sequence `seq` of `kv` in chunks. When all_logits is
/// given it receives the logits of every prompt position ([n][vocab]);
/// last_logits (if given) receives the last position's row.
errc prefill(model& m, kv_cache& kv, int64_t seq, std::span<const int32_t> prompt, int64_t chunk_size,
             std::vector<float>* all_logits, std::vector<float>* last_logits);

/// Prefills and samples up to max_tokens tokens for a fresh sequence `seq`,
/// which is freed afterwards. Throws troupe::error for invalid options or a
/// forward error (naming it).
generate_result generate(model& m, kv_cache& kv, int64_t seq, std::span<const int32_t> prompt,
                         const generate_options& opt);

/// prefill on any backend (engine_load), with a cache made by m.kv_make.
errc prefill(engine& m, engine_kv& kv, int64_t seq, std::span<const int32_t> prompt, int64_t chunk_size,
             std::vector<float>* all_logits, std::vector<float>* last_logits);

/// generate on any backend (engine_load), with a cache made by m.kv_make.
generate_result generate(engine& m, engine_kv& kv, int64_t seq, std::span<const int32_t> prompt,
                         const generate_options& opt);

}  // namespace troupe
