// Output of `troupe bench serve`: the table on stdout (laid out like vLLM's
// `bench serve` so the two read side by side) and the JSON result file with
// every aggregate, the client's own cost and every request's record.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "actors/bench_serve.hpp"
#include "actors/bench_stats.hpp"

namespace troupe {

/// The settings a result was measured with (echoed into the JSON).
struct bench_settings {
  std::string url;             ///< server root
  std::string endpoint;        ///< e.g. /v1/completions
  std::string model;           ///< model name sent
  std::string dataset;         ///< "random" or the JSONL path
  size_t num_prompts = 0;      ///< requests sent
  double request_rate = 0;     ///< req/s (inf = all at once)
  double burstiness = 1;       ///< gamma shape
  int64_t max_concurrency = 0; ///< 0 = no limit
  int64_t random_input_len = 0;   ///< for random prompts
  int64_t random_output_len = 0;  ///< for random prompts
  double random_range_ratio = 0;  ///< for random prompts
  uint64_t seed = 0;           ///< RNG seed
  bool ignore_eos = false;     ///< sent ignore_eos
  std::string slo;             ///< --slo as given
  int client_threads = 1;      ///< io threads
  bool keep_alive = true;      ///< connection reuse
};

/// The --measure-overhead result: the same requests (max_tokens = 1, one at a
/// time) against the server and against the in-process echo server.
/// The server's own account of its gateway overhead: the change of
/// troupe:gateway_overhead_seconds (sum and count) over a run. Absent when the
/// server does not export it (another server, or /metrics unreachable).
struct gateway_overhead {
  int64_t requests = 0;  ///< requests the server counted during the run
  double mean_s = 0.0;   ///< mean time per request outside the engine
};

struct overhead_probe {
  int64_t requests = 0;              ///< requests sent to each
  latency_summary echo_s;            ///< echo server: request sent to response end
  latency_summary server_s;          ///< the server: request sent to response end
  int64_t echo_failed = 0;           ///< failures against the echo server
  int64_t server_failed = 0;         ///< failures against the server
  std::vector<error_count> errors;   ///< why, both servers together
  std::optional<gateway_overhead> gateway;  ///< server-reported, over the probe's requests
};

/// Prints the result table.
void report_print(std::ostream& os, const bench_settings& s, const bench_metrics& m, const client_overhead& o,
                  const std::vector<error_count>& errors, const std::optional<gateway_overhead>& g);

/// Prints the overhead probe's table.
void report_print_probe(std::ostream& os, const overhead_probe& p);

/// Writes the JSON result file (throws troupe::error when it cannot).
void report_write_json(const std::string& path, const bench_settings& s, const bench_metrics& m,
                       const client_overhead& o, const std::vector<error_count>& errors,
                       const std::optional<gateway_overhead>& g, const std::optional<overhead_probe>& probe,
                       const std::vector<request_record>& records);

}  // namespace troupe
