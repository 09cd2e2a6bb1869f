// Statistics of `troupe bench serve`: per-request records and the numbers
// computed from them. Kept free of any networking so that every formula
// (percentiles, TPOT, goodput, throughput) is tested on hand-made records.
// The definitions follow vLLM's benchmarks/serve.py so results compare:
//   TTFT  = first token chunk - request sent
//   E2E   = last token chunk - request sent        (vLLM's "latency")
//   TPOT  = (E2E - TTFT) / (output_tokens - 1)     (only when output_tokens > 1)
//   ITL   = gaps between consecutive token chunks (all requests pooled)
//   percentiles interpolate linearly between order statistics (numpy's default).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace troupe {

/// One request as the benchmark client saw it. Times are seconds; `scheduled_s`
/// and `start_s` count from the benchmark's start, the others from `start_s`.
struct request_record {
  bool success = false;          ///< HTTP 200, at least one token chunk, no error event
  int http_status = 0;           ///< 0 when no response header arrived
  std::string error;             ///< why it failed (empty on success)
  double scheduled_s = 0;        ///< planned arrival
  double start_s = 0;            ///< sent (after waiting for a --max-concurrency slot)
  bool waited_for_slot = false;  ///< held back by --max-concurrency
  double ttft_s = 0;             ///< first token chunk
  double e2e_s = 0;              ///< last token chunk
  double complete_s = 0;         ///< end of the response body (after usage and [DONE])
  std::vector<double> itl_s;     ///< gaps between consecutive token chunks
  int64_t prompt_tokens = 0;     ///< the server's usage.prompt_tokens, else the planned length
  int64_t output_tokens = 0;     ///< the server's usage.completion_tokens, else the token chunks
  int64_t max_tokens = 0;        ///< what was asked for
  int64_t token_chunks = 0;      ///< SSE events that carried a token
  bool usage_reported = false;   ///< the server sent a usage chunk
};

/// Time per output token after the first, or nothing for outputs of 0 or 1 tokens.
std::optional<double> request_tpot_s(const request_record& r);

/// Mean, spread and order statistics of a sample (all 0 with count 0 when empty).
struct latency_summary {
  size_t count = 0;  ///< number of values
  double mean = 0;   ///< arithmetic mean
  double std = 0;    ///< population standard deviation (numpy's np.std)
  double min = 0;    ///< smallest value
  double median = 0; ///< 50th percentile
  double p90 = 0;    ///< 90th percentile
  double p99 = 0;    ///< 99th percentile
  double max = 0;    ///< largest value
};

/// The p-th percentile (0..100) of ascending `sorted` with linear interpolation
/// between closest ranks (numpy.percentile's default); 0 for an empty sample.
double percentile_sorted(const std::vector<double>& sorted, double p);

/// Summary of `values` (any order).
latency_summary summarize(std::vector<double> values);

/// Service-level objectives in milliseconds; unset ones are not checked.
struct slo_spec {
  std::optional<double> ttft_ms;  ///< time to first token
  std::optional<double> tpot_ms;  ///< time per output token
  std::optional<double> e2e_ms;   ///< end-to-end latency
  /// Whether any objective is set.
  bool any() const { return ttft_ms || tpot_ms || e2e_ms; }
};

/// Parses "ttft=MS,tpot=MS,e2e=MS" (any subset, any order; "e2el" and ':' as in
/// vLLM's --goodput are accepted). Throws troupe::error naming the bad part.
slo_spec slo_parse(const std::string& text);

/// Whether a successful request meets every set objective (a request without
/// a TPOT, i.e. one output token, passes the TPOT objective, as in vLLM).
bool slo_met(const request_record& r, const slo_spec& slo);

/// The aggregate numbers of one run.
struct bench_metrics {
  int64_t completed = 0;            ///< successful requests
  int64_t failed = 0;               ///< failed requests
  double duration_s = 0;            ///< first arrival to last completion
  int64_t total_input_tokens = 0;   ///< prompt tokens of successful requests
  int64_t total_output_tokens = 0;  ///< output tokens of successful requests
  double request_throughput = 0;    ///< completed / duration
  std::optional<double> request_goodput;  ///< requests meeting the SLOs / duration (with an SLO)
  int64_t slo_met_requests = 0;     ///< how many met the SLOs
  double output_throughput = 0;     ///< output tokens / duration
  double total_token_throughput = 0;  ///< (input + output tokens) / duration
  int64_t max_concurrency_seen = 0;   ///< most requests in flight at one instant
  latency_summary ttft_s;  ///< over successful requests
  latency_summary tpot_s;  ///< over successful requests with > 1 output token
  latency_summary itl_s;   ///< over all gaps of successful requests
  latency_summary e2e_s;   ///< over successful requests
};

/// Computes every aggregate from the records of a run that took `duration_s`.
bench_metrics metrics_compute(const std::vector<request_record>& records, double duration_s, const slo_spec& slo);

/// One distinct failure reason and how often it happened.
struct error_count {
  std::string message;  ///< the error text
  int64_t count = 0;    ///< requests that failed with it
};

/// Failure reasons of `records`, most frequent first (ties by text).
std::vector<error_count> error_summary(const std::vector<request_record>& records);

}  // namespace troupe
