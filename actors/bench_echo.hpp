// A trivial OpenAI-shaped SSE server on 127.0.0.1 for `bench serve
// --measure-overhead`: it answers every POST with a stream of canned chunks
// (chunked transfer encoding, usage chunk, [DONE]) and GET /v1/models with one
// model, doing no model work at all. Timing the benchmark client against it
// gives the floor that client, HTTP and loopback add to every request; what a
// real server takes beyond that floor is the server's own time.
#pragma once

#include <cstdint>
#include <memory>

namespace troupe {

/// What the echo server streams.
struct echo_options {
  int64_t chunks = 0;         ///< token chunks per response (0 = the request's max_tokens, at most 4096)
  double first_delay_s = 0;   ///< wait before the first chunk
  double gap_s = 0;           ///< wait between chunks
};

/// The echo server, serving on its own thread from construction to destruction.
class echo_server {
 public:
  /// Listens on 127.0.0.1 on a free port. Throws troupe::error when it cannot.
  explicit echo_server(const echo_options& opts);
  ~echo_server();
  echo_server(const echo_server&) = delete;
  echo_server& operator=(const echo_server&) = delete;

  /// The port it listens on.
  uint16_t port() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace troupe
