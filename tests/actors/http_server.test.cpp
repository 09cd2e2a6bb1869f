// The HTTP server over real sockets on 127.0.0.1: a raw-socket client in this
// file sends exactly the bytes a test needs (partial heads, garbage, early
// disconnects) and reads responses itself, chunked framing included.
#include "actors/http_server.hpp"
#include "config/errors.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

using namespace std::chrono_literals;
using troupe::http_request;
using troupe::http_response_writer;
using troupe::http_server;
using troupe::http_server_options;

namespace {

using clock_type = std::chrono::steady_clock;

/// A blocking client socket with poll()-based timeouts.
class raw_client {
 public:
  explicit raw_client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~raw_client() { close(); }
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;

  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  /// Sends everything; false when the peer is gone.
  bool send(std::string_view s) {
    while (!s.empty()) {
      ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      s.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  /// Reads what is available within `timeout`; "" on timeout; sets eof() when the peer closed.
  std::string read_some(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return {};
    char buf[65536];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      eof_ = true;
      return {};
    }
    return std::string(buf, static_cast<size_t>(n));
  }
  /// Reads into the pending buffer until it contains `marker` (or time runs out / eof).
  bool read_until(std::string_view marker, std::chrono::milliseconds timeout = 5000ms) {
    auto deadline = clock_type::now() + timeout;
    while (pending_.find(marker) == std::string::npos) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
      if (left <= 0ms || eof_) return false;
      pending_ += read_some(left);
    }
    return true;
  }
  /// Whether the server closes the connection within `timeout` (data before the close is kept).
  bool closed_within(std::chrono::milliseconds timeout) {
    auto deadline = clock_type::now() + timeout;
    while (!eof_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
      if (left <= 0ms) return false;
      pending_ += read_some(left);
    }
    return true;
  }

  struct response {
    int status = 0;
    std::string head;  ///< status line and headers
    std::string body;  ///< de-chunked
    bool ok = false;
    std::string header(std::string_view name) const {
      std::string lower_head = head, lower_name(name);
      for (auto& c : lower_head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      for (auto& c : lower_name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      auto p = lower_head.find("\r\n" + lower_name + ":");
      if (p == std::string::npos) return {};
      p += 3 + lower_name.size();
      auto e = head.find("\r\n", p);
      std::string v = head.substr(p, e - p);
      while (!v.empty() && v.front() == ' ') v.erase(0, 1);
      return v;
    }
  };

  /// Reads one whole response (Content-Length, chunked, or until close).
  response read_response(std::chrono::milliseconds timeout = 5000ms) {
    response r;
    if (!read_until("\r\n\r\n", timeout)) return r;
    auto end = pending_.find("\r\n\r\n");
    r.head = pending_.substr(0, end + 2);
    pending_.erase(0, end + 4);
    r.status = std::atoi(r.head.c_str() + 9);
    if (auto cl = r.header("content-length"); !cl.empty()) {
      size_t n = std::stoul(cl);
      auto deadline = clock_type::now() + timeout;
      while (pending_.size() < n && !eof_ && clock_type::now() < deadline) pending_ += read_some(100ms);
      if (pending_.size() < n) return r;
      r.body = pending_.substr(0, n);
      pending_.erase(0, n);
    } else if (r.header("transfer-encoding") == "chunked") {
      for (;;) {
        if (!read_until("\r\n", timeout)) return r;
        auto le = pending_.find("\r\n");
        size_t n = std::stoul(pending_.substr(0, le), nullptr, 16);
        auto deadline = clock_type::now() + timeout;
        while (pending_.size() < le + 2 + n + 2 && !eof_ && clock_type::now() < deadline)
          pending_ += read_some(100ms);
        if (pending_.size() < le + 2 + n + 2) return r;
        r.body += pending_.substr(le + 2, n);
        pending_.erase(0, le + 2 + n + 2);
        if (n == 0) break;
      }
    } else {
      closed_within(timeout);
      r.body = std::move(pending_);
      pending_.clear();
    }
    r.ok = true;
    return r;
  }

  std::string& pending() { return pending_; }
  bool eof() const { return eof_; }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  bool eof_ = false;
  std::string pending_;
};

std::string request(std::string_view method, std::string_view target, std::string_view body = {},
                    std::string_view extra_headers = {}) {
  std::string r = std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: test\r\n";
  r += extra_headers;
  if (!body.empty() || method == "POST") r += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  r += "\r\n";
  r += body;
  return r;
}

/// Waits until `pred` holds or `timeout` passes.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 5000ms) {
  auto deadline = clock_type::now() + timeout;
  while (!pred()) {
    if (clock_type::now() > deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

/// Writers the handler keeps (a dropped writer ends its response), with a count.
struct writer_box {
  std::mutex mu;
  std::vector<std::shared_ptr<http_response_writer>> writers;
  void add(std::shared_ptr<http_response_writer> w) {
    std::lock_guard lk(mu);
    writers.push_back(std::move(w));
  }
  size_t size() {
    std::lock_guard lk(mu);
    return writers.size();
  }
  std::shared_ptr<http_response_writer> at(size_t i) {
    std::lock_guard lk(mu);
    return writers.at(i);
  }
};

http_server_options local_options() {
  http_server_options o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.threads = 2;
  o.stop_grace = 200ms;
  o.linger_timeout = 200ms;
  return o;
}

/// Answers every request with "<method> <target> <x-test header> <body>".
void echo_handler(http_request req, std::shared_ptr<http_response_writer> w) {
  w->respond(200, "text/plain", req.method + " " + req.target + " " + req.header("X-TEST") + " " + req.body);
}

}  // namespace

TEST_CASE("http: keep-alive serves several requests, pipelined ones in order, on one connection") {
  http_server server(local_options(), echo_handler);
  REQUIRE(server.port() != 0);
  raw_client c(server.port());
  for (int i = 0; i < 3; ++i) {
    REQUIRE(c.send(request("POST", "/echo/" + std::to_string(i), "body" + std::to_string(i), "x-test: hi\r\n")));
    auto r = c.read_response();
    REQUIRE(r.ok);
    CHECK(r.status == 200);
    CHECK(r.body == "POST /echo/" + std::to_string(i) + " hi body" + std::to_string(i));
    CHECK(r.header("connection") == "keep-alive");
  }
  // Two requests in one write: both answered, in order.
  REQUIRE(c.send(request("GET", "/a") + request("GET", "/b")));
  auto a = c.read_response();
  auto b = c.read_response();
  CHECK(a.body == "GET /a  ");
  CHECK(b.body == "GET /b  ");
  CHECK(server.connections() == 1);
  // Connection: close is honoured.
  REQUIRE(c.send(request("GET", "/last", {}, "Connection: close\r\n")));
  auto last = c.read_response();
  CHECK(last.status == 200);
  CHECK(last.header("connection") == "close");
  CHECK(c.closed_within(2000ms));
}

TEST_CASE("http: a body over the limit gets 413 with an OpenAI error, then the connection closes") {
  auto opts = local_options();
  opts.max_body_bytes = 1024;
  std::atomic<int> handled{0};
  http_server server(opts, [&](http_request req, std::shared_ptr<http_response_writer> w) {
    ++handled;
    w->respond(200, "text/plain", "ok");
  });
  SUBCASE("announced by Content-Length") {
    raw_client c(server.port());
    c.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + std::string(4096, 'a'));
    auto r = c.read_response();
    REQUIRE(r.ok);
    CHECK(r.status == 413);
    CHECK(r.body.find("\"error\"") != std::string::npos);
    CHECK(r.body.find("\"type\":\"invalid_request_error\"") != std::string::npos);
    CHECK(r.header("connection") == "close");
    CHECK(c.closed_within(3000ms));
  }
  SUBCASE("chunked") {
    raw_client c(server.port());
    std::string chunk(800, 'b');
    c.send("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n" + chunk + "\r\n320\r\n" + chunk +
           "\r\n");
    auto r = c.read_response();
    REQUIRE(r.ok);
    CHECK(r.status == 413);
    CHECK(c.closed_within(3000ms));
  }
  SUBCASE("a body at the limit is served") {
    raw_client c(server.port());
    c.send(request("POST", "/x", std::string(1024, 'c')));
    CHECK(c.read_response().status == 200);
  }
  SUBCASE("Expect: 100-continue gets 100 before the body") {
    raw_client c(server.port());
    c.send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    REQUIRE(c.read_until("HTTP/1.1 100 Continue\r\n\r\n"));
    c.pending().clear();
    c.send("hello");
    CHECK(c.read_response().status == 200);
  }
}

TEST_CASE("http: malformed requests get 400 and the server keeps serving") {
  http_server server(local_options(), echo_handler);
  for (std::string bad : {std::string("GARBAGE\r\n\r\n"), std::string("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
                          std::string("GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
                          std::string("POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"),
                          std::string("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
                          std::string("\x00\x01\x02\xff\r\n\r\n", 8)}) {
    CAPTURE(bad);
    raw_client c(server.port());
    c.send(bad);
    auto r = c.read_response();
    REQUIRE(r.ok);
    CHECK(r.status == 400);
    CHECK(r.body.find("\"error\"") != std::string::npos);
    CHECK(c.closed_within(3000ms));
  }
  SUBCASE("a head over the header limit gets 431") {
    raw_client c(server.port());
    c.send("GET / HTTP/1.1\r\nX-Big: " + std::string(32 << 10, 'x') + "\r\n\r\n");
    auto r = c.read_response();
    REQUIRE(r.ok);
    CHECK(r.status == 431);
  }
  raw_client ok(server.port());
  ok.send(request("GET", "/fine"));
  CHECK(ok.read_response().body == "GET /fine  ");
}

TEST_CASE("http: a request that arrives too slowly is dropped (slowloris), an idle keep-alive connection too") {
  auto opts = local_options();
  opts.request_timeout = 300ms;
  opts.keep_alive_timeout = 300ms;
  http_server server(opts, echo_handler);
  raw_client slow(server.port());
  auto t0 = clock_type::now();
  slow.send("GET / HTTP/1.1\r\nHost: x\r\n");
  for (int i = 0; i < 20 && !slow.eof(); ++i) {  // one header byte every 50 ms: never completes in time
    slow.send("X");
    slow.read_some(50ms);
  }
  CHECK(slow.closed_within(2000ms));
  CHECK(clock_type::now() - t0 < 1500ms);

  raw_client idle(server.port());
  idle.send(request("GET", "/one"));
  CHECK(idle.read_response().status == 200);
  CHECK(idle.closed_within(2000ms));
  CHECK(eventually([&] { return server.connections() == 0; }));
}

TEST_CASE("http: an SSE stream arrives event by event, then the connection serves the next request") {
  writer_box box;
  http_server server(local_options(), [&](http_request req, std::shared_ptr<http_response_writer> w) {
    if (req.target == "/stream") {
      w->start_stream(200, "text/event-stream");
      w->write("data: first\n\n");
      box.add(std::move(w));
    } else {
      echo_handler(std::move(req), std::move(w));
    }
  });
  raw_client c(server.port());
  c.send(request("POST", "/stream", "{}"));
  REQUIRE(c.read_until("data: first\n\n"));
  CHECK(c.pending().find("HTTP/1.1 200 OK\r\n") == 0);
  CHECK(c.pending().find("Content-Type: text/event-stream") != std::string::npos);
  CHECK(c.pending().find("Transfer-Encoding: chunked") != std::string::npos);
  CHECK(c.pending().find("second") == std::string::npos);
  REQUIRE(box.size() == 1);
  auto w = box.at(0);
  w->write("data: second\n\n");
  REQUIRE(c.read_until("data: second\n\n"));
  w->write("data: [DONE]\n\n");
  w->finish();
  REQUIRE(c.read_until("0\r\n\r\n"));
  CHECK(c.pending().find("data: [DONE]\n\n") != std::string::npos);
  CHECK(!w->closed());
  w->write("ignored after finish");
  c.pending().clear();
  c.send(request("GET", "/after"));
  auto r = c.read_response();
  CHECK(r.body == "GET /after  ");
}

TEST_CASE("http: the client going away fires on_close, mid-stream and before the first byte") {
  writer_box box;
  std::atomic<int> closes{0};
  http_server server(local_options(), [&](http_request req, std::shared_ptr<http_response_writer> w) {
    w->on_close([&] { ++closes; });
    if (req.target == "/stream") {
      w->start_stream(200, "text/event-stream");
      w->write("data: x\n\n");
    }
    box.add(std::move(w));  // "/wait": nothing is written, as while waiting for the first token
  });
  SUBCASE("mid-stream") {
    raw_client c(server.port());
    c.send(request("POST", "/stream", "{}"));
    REQUIRE(c.read_until("data: x\n\n"));
    c.close();
    REQUIRE(eventually([&] { return closes.load() == 1; }));
    CHECK(box.at(0)->closed());
    box.at(0)->write("data: late\n\n");  // harmless
    box.at(0)->finish();
  }
  SUBCASE("before the first byte") {
    raw_client c(server.port());
    c.send(request("POST", "/wait", "{}"));
    REQUIRE(eventually([&] { return box.size() == 1; }));
    CHECK(!box.at(0)->closed());
    c.close();
    REQUIRE(eventually([&] { return closes.load() == 1; }));
    CHECK(box.at(0)->closed());
    box.at(0)->respond(200, "text/plain", "too late");
  }
  SUBCASE("a callback registered after the close runs at once; none fires after a complete response") {
    raw_client c(server.port());
    c.send(request("POST", "/wait", "{}"));
    REQUIRE(eventually([&] { return box.size() == 1; }));
    c.close();
    REQUIRE(eventually([&] { return box.at(0)->closed(); }));
    bool late = false;
    box.at(0)->on_close([&] { late = true; });
    CHECK(late);

    raw_client d(server.port());
    d.send(request("POST", "/wait", "{}"));
    REQUIRE(eventually([&] { return box.size() == 2; }));
    box.at(1)->respond(200, "text/plain", "done");
    CHECK(d.read_response().body == "done");
    d.close();
    std::this_thread::sleep_for(100ms);
    CHECK(closes.load() == 1);  // only the first request's
  }
  CHECK(eventually([&] { return server.connections() == 0; }));
}

TEST_CASE("http: a dropped writer answers 500; a handler that throws answers 500") {
  http_server server(local_options(), [&](http_request req, std::shared_ptr<http_response_writer> w) {
    if (req.target == "/throw") throw std::runtime_error("boom");
  });
  raw_client c(server.port());
  c.send(request("GET", "/drop"));
  auto r = c.read_response();
  CHECK(r.status == 500);
  CHECK(r.body.find("\"type\":\"server_error\"") != std::string::npos);
  c.send(request("GET", "/throw"));
  r = c.read_response();
  CHECK(r.status == 500);
  CHECK(r.body.find("boom") != std::string::npos);
}

TEST_CASE("http: HTTP/1.0 gets a close-delimited stream and HEAD gets no body") {
  http_server server(local_options(), [&](http_request req, std::shared_ptr<http_response_writer> w) {
    if (req.target == "/stream") {
      w->start_stream(200, "text/event-stream");
      w->write("data: a\n\n");
      w->finish();
    } else {
      w->respond(200, "text/plain", "hello");
    }
  });
  raw_client c(server.port());
  c.send("GET /stream HTTP/1.0\r\n\r\n");
  auto r = c.read_response();
  CHECK(r.status == 200);
  CHECK(r.header("transfer-encoding").empty());
  CHECK(r.body == "data: a\n\n");
  raw_client h(server.port());
  h.send("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
  REQUIRE(h.read_until("\r\n\r\n"));
  CHECK(h.pending().find("Content-Length: 5\r\n") != std::string::npos);
  h.send(request("GET", "/"));  // the next response follows at once: no body bytes in between
  REQUIRE(h.read_until("hello"));
  CHECK(h.pending().find("\r\n\r\nHTTP/1.1 200 OK") != std::string::npos);
}

TEST_CASE("http: stop() closes idle connections and fires on_close for requests in progress") {
  writer_box box;
  std::atomic<int> closes{0};
  auto server = std::make_unique<http_server>(local_options(), [&](http_request, std::shared_ptr<http_response_writer> w) {
    w->on_close([&] { ++closes; });
    box.add(std::move(w));
  });
  raw_client idle(server->port());
  raw_client busy(server->port());
  busy.send(request("POST", "/wait", "{}"));
  REQUIRE(eventually([&] { return box.size() == 1; }));
  auto t0 = clock_type::now();
  server->stop();
  CHECK(clock_type::now() - t0 < 2000ms);
  CHECK(closes.load() == 1);
  CHECK(idle.closed_within(1000ms));
  CHECK(busy.closed_within(1000ms));
  auto w = box.at(0);
  server.reset();
  w->respond(200, "text/plain", "after the server is gone");  // must not crash
  w->write("x");
}

TEST_CASE("http: 2,000 concurrent SSE streams on 2 threads") {
  constexpr int n = 2000;
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < 2 * n + 100) {
    rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, 2 * n + 200);
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  REQUIRE(rl.rlim_cur >= 2 * n + 100);

  writer_box box;
  std::atomic<int> closes{0};
  auto opts = local_options();
  opts.threads = 2;
  http_server server(opts, [&](http_request, std::shared_ptr<http_response_writer> w) {
    w->on_close([&] { ++closes; });
    w->start_stream(200, "text/event-stream");
    w->write("data: {\"hello\":1}\n\n");
    box.add(std::move(w));
  });
  auto t0 = clock_type::now();
  std::vector<std::unique_ptr<raw_client>> clients;
  clients.reserve(n);
  for (int i = 0; i < n; ++i) clients.push_back(std::make_unique<raw_client>(server.port()));
  const std::string req = request("POST", "/v1/completions", "{\"stream\":true}");
  for (auto& c : clients) REQUIRE(c->send(req));
  int got = 0;
  for (auto& c : clients) got += c->read_until("data: {\"hello\":1}\n\n", 10000ms) ? 1 : 0;
  CHECK(got == n);
  CHECK(box.size() == static_cast<size_t>(n));
  CHECK(server.connections() == static_cast<size_t>(n));
  // A second event reaches every stream too.
  for (size_t i = 0; i < box.size(); ++i) box.at(i)->write("data: two\n\n");
  got = 0;
  for (auto& c : clients) got += c->read_until("data: two\n\n", 10000ms) ? 1 : 0;
  CHECK(got == n);
  for (auto& c : clients) c->close();
  CHECK(eventually([&] { return closes.load() == n; }, 10000ms));
  CHECK(eventually([&] { return server.connections() == 0; }, 10000ms));
  auto elapsed = std::chrono::duration<double>(clock_type::now() - t0).count();
  MESSAGE("2,000 streams opened, served and closed in " << elapsed << " s");
  CHECK(elapsed < 15.0);
}

TEST_CASE("http: events written from many threads at once all arrive whole; a large body arrives whole") {
  writer_box box;
  http_server server(local_options(), [&](http_request req, std::shared_ptr<http_response_writer> w) {
    if (req.target == "/big") return w->respond(200, "application/octet-stream", std::string(8 << 20, 'z'));
    w->start_stream(200, "text/event-stream");
    box.add(std::move(w));
  });
  raw_client c(server.port());
  c.send(request("POST", "/stream", "{}"));
  REQUIRE(eventually([&] { return box.size() == 1; }));
  auto w = box.at(0);
  constexpr int threads = 4, per_thread = 2000;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([w, t] {
      for (int i = 0; i < per_thread; ++i) w->write("data: " + std::to_string(t) + ":" + std::to_string(i) + "\n\n");
    });
  for (auto& t : ts) t.join();
  w->finish();
  auto r = c.read_response(10000ms);
  REQUIRE(r.ok);
  int events = 0;
  std::vector<int> next(threads, 0);  // per thread, events arrive in the order they were written
  bool ordered = true;
  for (size_t p = 0; (p = r.body.find("data: ", p)) != std::string::npos; ++events) {
    auto colon = r.body.find(':', p + 6), end = r.body.find("\n\n", p);
    int t = std::stoi(r.body.substr(p + 6, colon - p - 6)), i = std::stoi(r.body.substr(colon + 1, end - colon - 1));
    ordered = ordered && i == next[t]++;
    p = end + 2;
  }
  CHECK(events == threads * per_thread);
  CHECK(ordered);
  c.send(request("GET", "/big"));
  auto big = c.read_response(10000ms);
  REQUIRE(big.ok);
  CHECK(big.body.size() == (8u << 20));
  CHECK(big.body.find_first_not_of('z') == std::string::npos);
}

TEST_CASE("http: binding a port in use fails with a clear error") {
  http_server first(local_options(), echo_handler);
  auto opts = local_options();
  opts.port = first.port();
  CHECK_THROWS_WITH_AS(http_server(opts, echo_handler), doctest::Contains("cannot listen on 127.0.0.1:"),
                       troupe::error);
  opts.threads = 0;
  CHECK_THROWS_AS(http_server(opts, echo_handler), troupe::error);
}
