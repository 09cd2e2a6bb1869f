// Token sampling with vLLM's semantics (penalties -> greedy or temperature ->
// top-k -> top-p -> min-p -> draw), on the CPU, one request at a time.
//
// Why it is built this way:
// - A sampler is per request: it owns the RNG (so a seed reproduces a request
//   no matter what else is batched with it) and the token counts the penalties
//   need. Counts are kept sparsely (only tokens that occurred), not as a
//   vocab-sized array, so thousands of live requests cost little memory.
// - The vocab-sized working buffers are thread-local scratch shared by all
//   samplers on a thread: nothing is allocated per call once they have grown,
//   and no per-request buffer of 150k floats is kept alive.
// - Results must not depend on the standard library: the uniform draw is built
//   from mt19937_64's raw bits (std::uniform_real_distribution is
//   implementation-defined), and every sum and walk runs in a canonical order
//   (token id, or logit descending with ties by lower id), never in the order
//   std::nth_element happens to leave.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace troupe {

/// Sampling settings of one request (OpenAI / vLLM names and defaults).
struct sampling_params {
  float temperature = 1.0f;         ///< 0 (or < 1e-5) = greedy
  int32_t top_k = 0;                ///< 0 or -1 = off; ties with the k-th logit are kept (as vLLM)
  float top_p = 1.0f;               ///< (0, 1]; 1 = off
  float min_p = 0.0f;               ///< [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  ///< > 0; prompt + generated tokens: logit > 0 ? logit / r : logit * r
  float frequency_penalty = 0.0f;   ///< [-2, 2]; generated tokens only: logit -= f * count
  float presence_penalty = 0.0f;    ///< [-2, 2]; generated tokens only: logit -= p * (count > 0)
  std::optional<uint64_t> seed;     ///< same seed => same tokens; none => seeded from std::random_device
};

/// Below this temperature a request is greedy (vLLM's _SAMPLING_EPS).
inline constexpr float sampling_greedy_eps = 1e-5f;

/// Checks ranges; returns an empty string when valid, else a message naming the
/// parameter (e.g. "top_p must be in (0, 1], got 1.5"). NaN is always rejected.
std::string sampling_params_validate(const sampling_params& p);

/// Per-request sampler: owns the RNG and the token counts the penalties need.
/// Expects parameters that passed sampling_params_validate. Not thread-safe:
/// one request is sampled by one caller at a time.
class sampler {
 public:
  /// Prompt tokens feed the repetition penalty; ids outside [0, vocab_size) are ignored.
  sampler(const sampling_params& p, int64_t vocab_size, std::span<const int32_t> prompt_tokens);

  /// Picks the next token from one row of logits (vocab_size floats; not
  /// modified) and records it as generated. NaN logits count as -inf; a
  /// shorter row counts the missing entries as -inf, a longer one is cut.
  /// Returns 0 when no token has a finite logit.
  int32_t sample(std::span<const float> logits);

  /// Records a token chosen elsewhere (e.g. the first token a prefill
  /// instance sampled) as generated, so later penalties count it.
  void accept(int32_t token);

  /// Writes the log-softmax of the logits after this request's penalties and
  /// temperature (no temperature when greedy) into out (vocab_size floats).
  /// Call before sample() for the same step: sample() updates the counts.
  void processed_log_softmax(std::span<const float> logits, std::span<float> out) const;

  /// log-softmax of a row (what vLLM reports as logprobs: the raw model
  /// logits). in and out may be the same span; NaN counts as -inf; a row with
  /// no finite maximum yields uniform log-probabilities over its +inf entries,
  /// or all -inf when every entry is -inf.
  static void log_softmax(std::span<const float> in, std::span<float> out);

  /// The settings this sampler was built with.
  const sampling_params& params() const noexcept { return params_; }
  /// Number of tokens recorded as generated (sampled or accepted).
  int64_t generated_count() const noexcept { return generated_count_; }

 private:
  /// Applies repetition, then frequency/presence penalties to a vocab-indexed row.
  template <typename Row>
  void apply_penalties_(Row& row) const;

  sampling_params params_;
  int64_t vocab_size_;
  std::mt19937_64 rng_;
  std::vector<int32_t> prompt_tokens_;                   ///< sorted, unique; empty when repetition_penalty == 1
  std::unordered_map<int32_t, int32_t> generated_counts_;  ///< token -> times generated
  int64_t generated_count_ = 0;
};

}  // namespace troupe
