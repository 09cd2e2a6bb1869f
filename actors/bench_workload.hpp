// What `troupe bench serve` sends and when: random prompts of set lengths or
// prompts from a JSONL file, the JSON bodies of OpenAI streaming requests, and
// the arrival times (Poisson or gamma, as vLLM's --request-rate/--burstiness).
// Everything is a pure function of its options and the seed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "actors/bench_sse.hpp"

namespace troupe {

/// One prompt of the workload.
struct workload_item {
  std::string prompt_json;   ///< the prompt as a JSON value: a string, an array of token ids, or chat messages
  bool messages = false;     ///< prompt_json is an array of chat messages
  int64_t prompt_len = 0;    ///< planned prompt length in tokens (0 when unknown)
  int64_t output_len = 0;    ///< tokens to generate (max_tokens)
};

/// Shape of random prompts (vLLM's --random-* options).
struct random_shape {
  int64_t input_len = 256;    ///< mean prompt length in tokens
  int64_t output_len = 128;   ///< mean output length in tokens
  double range_ratio = 0;     ///< lengths uniform in [len*(1-r), len*(1+r)], r in [0, 1)
  int64_t vocab_size = 1000;  ///< token ids are drawn from [100, vocab_size)
};

/// Random prompts as token-id arrays (exact input lengths; completions endpoint).
std::vector<workload_item> workload_random_ids(const random_shape& shape, size_t n, uint64_t seed);

/// Random prompts as text of common English words, round(len / tokens_per_word)
/// words each (the chat endpoint takes no token ids; prompt_len is the estimate).
std::vector<workload_item> workload_random_text(const random_shape& shape, size_t n, uint64_t seed,
                                                double tokens_per_word);

/// `words` random words of the same list, for calibrating tokens_per_word via /tokenize.
std::string workload_sample_text(size_t words, uint64_t seed);

/// Prompts from a JSONL file, one {"prompt": TEXT | [ids] | [messages], "output_len": N}
/// (or {"messages": [...]}) per line; blank lines skipped. Missing output_len
/// takes `default_output_len`. n = 0 takes every line; a larger n cycles.
/// Throws troupe::error naming file and line.
std::vector<workload_item> workload_load_jsonl(const std::string& path, size_t n, int64_t default_output_len);

/// Arrival offsets in seconds from the start: all 0 for an infinite rate, else
/// cumulative gamma(shape = burstiness, scale = 1 / (rate * burstiness)) gaps
/// (burstiness 1 = Poisson), the first request at 0.
std::vector<double> arrivals_plan(size_t n, double rate, double burstiness, uint64_t seed);

/// Request settings shared by every request.
struct body_options {
  std::string model;                  ///< "model"
  api_kind api = api_kind::api_completions;  ///< which endpoint
  bool ignore_eos = false;            ///< "ignore_eos" (vLLM extension, supported by troupe)
  std::optional<double> temperature;  ///< "temperature" when set
};

/// The JSON body of a streaming request for `item` with max_tokens = `max_tokens`.
/// Throws troupe::error when the prompt does not fit the endpoint (messages to
/// /v1/completions, token ids to /v1/chat/completions).
std::string request_body(const workload_item& item, const body_options& o, int64_t max_tokens);

}  // namespace troupe
