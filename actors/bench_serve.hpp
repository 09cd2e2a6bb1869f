// The client engine of `troupe bench serve`: sends prepared OpenAI streaming
// requests at planned arrival times to an HTTP server and records what each
// request saw. Built on Boost.Asio/Beast with one io_context run by a small
// number of threads (default 1) so that thousands of open SSE streams cost
// sockets, not threads. Arrivals are timers; a --max-concurrency limit holds
// requests back in arrival order; finished connections go back to a
// keep-alive pool (a stale pooled connection is retried once on a fresh one).
// Timing starts when a request leaves the queue, before connecting, as
// vLLM's client does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "actors/bench_sse.hpp"
#include "actors/bench_stats.hpp"
#include "actors/commands.hpp"

namespace troupe {

/// `troupe bench serve`: the serving benchmark (see actors/cmd_bench.cpp).
command command_bench(CLI::App& app);

/// Where the server is: http://HOST[:PORT][/PREFIX].
struct http_target {
  std::string host;  ///< name or address
  std::string port;  ///< decimal port (80 when the URL has none)
  std::string base;  ///< path prefix without trailing '/', usually empty

  /// Parses a URL. A trailing "/v1" is dropped (the endpoints carry it).
  /// Throws troupe::error for anything but http:// URLs with a host.
  static http_target parse(const std::string& url);
  /// "http://host:port/base".
  std::string url() const;
};

/// One prepared request.
struct client_request {
  std::string body;           ///< the JSON body
  int64_t prompt_tokens = 0;  ///< planned prompt length (reported when the server sends no usage)
  int64_t max_tokens = 0;     ///< requested output length
};

/// How the client talks to the server.
struct client_options {
  http_target target;          ///< the server
  std::string path;            ///< endpoint path, e.g. /v1/completions (the target's base is prepended)
  api_kind api = api_kind::api_completions;  ///< how chunks are read
  std::string api_key;         ///< sent as "Authorization: Bearer KEY" when not empty
  int threads = 1;             ///< threads running the io_context
  int64_t max_concurrency = 0; ///< requests in flight at most (0 = no limit)
  double timeout_s = 3600;     ///< per-request deadline (connect to last byte)
  bool keep_alive = true;      ///< reuse connections through a pool
};

/// What the client itself cost, to tell client limits from server limits.
struct client_overhead {
  double wall_s = 0;            ///< duration of the run
  double cpu_s = 0;             ///< user + system CPU of the client's event-loop threads during the run
  latency_summary dispatch_lag_s;  ///< request sent minus planned arrival (requests not held by --max-concurrency)
  int64_t events = 0;           ///< SSE events handled
  double event_handling_s = 0;  ///< time spent splitting and parsing SSE events
  int64_t connections_opened = 0;  ///< TCP connections made
  int64_t connections_reused = 0;  ///< requests that went over a pooled connection
};

/// The outcome of a run.
struct client_run {
  std::vector<request_record> records;  ///< one per request, in request order
  double duration_s = 0;                ///< first arrival to last completion
  client_overhead overhead;             ///< the client's own cost
};

/// Sends requests[i] at arrivals_s[i] seconds after the start (ascending) and
/// waits for all to finish. Failures (resolve, connect, HTTP status, broken
/// streams, bad JSON, error events, timeouts) end up in the records, never thrown.
client_run client_run_requests(const client_options& opts, const std::vector<client_request>& requests,
                               const std::vector<double>& arrivals_s);

/// A plain (non-streaming) exchange for set-up calls such as GET /v1/models.
struct http_reply {
  int status = 0;     ///< 0 when there was no response
  std::string body;   ///< the response body
  std::string error;  ///< why there was no response
};

/// One request with `method` ("GET", "POST") to target.base + path; never throws.
http_reply http_exchange(const http_target& target, const std::string& method, const std::string& path,
                         const std::string& body, const std::string& api_key, double timeout_s);

}  // namespace troupe
