// An asynchronous HTTP/1.1 server for the OpenAI-compatible gateway.
//
// Why it is built this way:
// - Boost.Beast parses requests and Boost.Asio runs every socket on a small,
//   fixed pool of threads (default 2): one connection costs a socket, a strand
//   and a read buffer, never a thread, so thousands of open SSE streams are cheap.
// - Nothing of Beast or Asio appears here: the gateway sees plain requests and
//   a writer it may call from any thread (an actor's, typically). Every call
//   is posted onto the connection's strand and returns at once; writes queue.
// - While a response is in progress a read stays pending on the socket, so a
//   client that goes away is noticed at once — while it waits for the first
//   token as well as mid-stream — and on_close can cancel the request. (A
//   client that half-closes its side after sending counts as gone;
//   pipelined requests that arrive meanwhile are kept.)
// - Hostile input is bounded: header and body limits (431 / 413 with an
//   OpenAI-shaped error, then the connection is closed after a lingering
//   drain so the client can read the answer), a deadline for a whole request
//   (slowloris), an idle timeout for keep-alive connections, and malformed
//   HTTP answered with 400.
// - The response side is serialized by hand (status line, a few headers,
//   Content-Length or chunked framing): it is a handful of lines, it lets
//   several queued SSE events leave in one gathered write, and it keeps the
//   writer free of Beast's serializer lifetimes.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe {

struct http_server_core;

/// One parsed HTTP request (the body complete).
struct http_request {
  std::string method;  ///< "GET", "POST", ...
  std::string target;  ///< the request target as sent ("/v1/models?x=1")
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  ///< in arrival order, names as sent
  int version = 11;                                          ///< 10 or 11

  /// The first header named `name` (case-insensitive), or "" when absent.
  std::string header(std::string_view name) const;
  /// The target without its query string.
  std::string_view path() const;
};

/// Answers one request. Shared and thread-safe: every method may be called
/// from any thread and returns at once (the work is posted onto the
/// connection's strand). Calls after the response is complete, or after the
/// client went away, do nothing.
class http_response_writer {
 public:
  virtual ~http_response_writer() = default;
  /// A complete response with Content-Length (one-shot).
  virtual void respond(int status, std::string content_type, std::string body) = 0;
  /// Sends the status line and headers of a streamed response now (chunked
  /// transfer encoding; close-delimited for HTTP/1.0 clients).
  virtual void start_stream(int status, std::string content_type) = 0;
  /// Queues one piece of a streamed response (an SSE event, ...); never blocks.
  virtual void write(std::string chunk) = 0;
  /// Ends a streamed response; the connection then serves the next request.
  virtual void finish() = 0;
  /// Whether the client went away (or the server stopped) before the response was complete.
  virtual bool closed() const = 0;
  /// Registers `cb`, called once if the client disconnects (or the server
  /// stops) before the response is complete — while the request waits for its
  /// first byte as well as mid-stream. It runs on a server thread and must not
  /// block; when the connection is already closed it runs at once, on the
  /// caller's thread. Dropped without being called once the response is
  /// complete. A later call replaces an earlier callback.
  virtual void on_close(std::function<void()> cb) = 0;
};

/// Called once per request on a server thread (on several threads at once, so
/// it must be thread-safe); must not block: hand the work to an actor and
/// answer through the writer later. An exception it throws answers 500. A
/// writer dropped without a response answers 500 (mid-stream: the connection
/// is closed, so the client sees a truncated stream, not a clean end).
using http_handler = std::function<void(http_request, std::shared_ptr<http_response_writer>)>;

/// Tunables of the server.
struct http_server_options {
  std::string host = "127.0.0.1";           ///< address to bind ("0.0.0.0", "::", a name)
  uint16_t port = 0;                        ///< 0: an ephemeral port (see http_server::port())
  int threads = 2;                          ///< I/O threads
  std::size_t max_body_bytes = 8u << 20;    ///< larger bodies get 413 and the connection is closed
  std::size_t max_header_bytes = 16u << 10; ///< larger request heads get 431 and the connection is closed
  std::size_t max_connections = 20000;      ///< further connections are accepted and closed at once
  std::chrono::milliseconds request_timeout{30000};     ///< a whole request (head + body) must arrive within this
  std::chrono::milliseconds keep_alive_timeout{75000};  ///< an idle keep-alive connection is closed after this
  std::chrono::milliseconds stop_grace{5000};           ///< stop() lets responses in progress finish this long
  std::chrono::milliseconds linger_timeout{2000};       ///< a closing connection drains unread input this long
  int listen_backlog = 4096;
};

/// The HTTP/1.1 server: listens on construction, serves until stop().
class http_server {
 public:
  /// Binds and starts listening; throws troupe::error(errc_io) naming the
  /// address when binding fails and errc_invalid_argument for bad options.
  http_server(http_server_options options, http_handler handler);
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// The bound port (the ephemeral one when options.port was 0).
  uint16_t port() const;
  /// Connections open now.
  std::size_t connections() const;
  /// Stops accepting, closes idle connections, lets responses in progress
  /// finish for up to options.stop_grace, then closes the rest (their
  /// on_close callbacks fire) and joins the threads. Idempotent; must not be
  /// called from a handler or a server thread.
  void stop();

 private:
  std::unique_ptr<http_server_core> impl_;
};

}  // namespace troupe
