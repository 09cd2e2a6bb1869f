// A checkpoint's generation_config.json: the sampling defaults its authors
// chose and extra stop ids. Like vLLM, troupe uses them as the defaults of a
// request; anything the user sets explicitly wins.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

#include "model/sampler.hpp"

namespace troupe {

/// The fields of generation_config.json troupe uses; unset ones are nullopt.
struct generation_config {
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int32_t> top_k;
  std::optional<float> min_p;
  std::optional<float> repetition_penalty;
  bool do_sample = true;                ///< false: greedy unless the user asks otherwise
  std::vector<int32_t> eos_token_ids;   ///< stop ids (an int or a list in the file)

  /// Sampling parameters: these defaults applied over vLLM's.
  sampling_params defaults() const;
};

/// Reads DIR/generation_config.json; an absent file gives an empty config.
/// Throws troupe::error(errc_invalid_config) naming the file and key for
/// malformed JSON or a mistyped value.
generation_config generation_config_load(const std::filesystem::path& dir);

}  // namespace troupe
