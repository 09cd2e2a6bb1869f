// The benchmark's asynchronous HTTP/SSE client (see bench_serve.hpp for why it
// is built this way). One `session` per request walks connect -> write ->
// read header -> read body pieces; each piece is time-stamped once on arrival
// and fed to the SSE splitter. Shared state (the wait queue for
// --max-concurrency, the keep-alive pool, the completion count) sits behind
// one mutex held for a few instructions; each socket lives on its own strand,
// so the engine is correct with any number of io threads.
#include "actors/bench_serve.hpp"

#include <time.h>

#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "config/errors.hpp"

namespace troupe {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using steady = std::chrono::steady_clock;

namespace {

double seconds(steady::duration d) { return std::chrono::duration<double>(d).count(); }

// CPU time of the calling thread (user + system): only the client's own threads
// are counted, not a server sharing the process (tests, the echo server).
double thread_cpu_s() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// "HTTP 400: <message>" from an error body: the OpenAI error message when the
// body has one, else the start of the body.
std::string http_error_text(int status, const std::string& body) {
  std::string msg;
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (!j.is_discarded() && j.is_object() && j.contains("error")) {
    const nlohmann::json& e = j["error"];
    if (e.is_object() && e.contains("message") && e["message"].is_string()) msg = e["message"].get<std::string>();
    else if (e.is_string()) msg = e.get<std::string>();
  }
  if (msg.empty()) msg = body.substr(0, 200);
  return "HTTP " + std::to_string(status) + (msg.empty() ? "" : ": " + msg);
}

class engine;

struct session : std::enable_shared_from_this<session> {
  session(engine& e, size_t idx);
  void begin();

 private:
  void connect();
  void send();
  void read_header();
  void read_body();
  void on_body(beast::error_code ec);
  void read_error_body();
  void handle_bytes(size_t n, steady::time_point now);
  void finish();
  void retry_or_fail(const char* what, beast::error_code ec);
  void fail(std::string msg);
  void close();
  std::string ec_text(const char* what, beast::error_code ec) const;

  engine& e_;
  size_t idx_;
  request_record& rec_;
  std::unique_ptr<beast::tcp_stream> stream_;
  bool reused_ = false, retried_ = false, failed_ = false, got_token_ = false;
  std::optional<http::response_parser<http::buffer_body>> parser_;
  beast::flat_buffer buf_;
  std::array<char, 16384> piece_{};
  sse_splitter sse_;
  steady::time_point start_, deadline_, last_token_, now_;
  std::optional<steady::time_point> final_at_;  // arrival of an empty chunk with a finish_reason
  std::string pending_error_, error_body_;
  int64_t events_ = 0;
  steady::duration handling_{};
};

class engine {
 public:
  engine(const client_options& o, const std::vector<client_request>& reqs, const std::vector<double>& arrivals)
      : opts_(o), reqs_(reqs), arrivals_(arrivals), records_(reqs.size()), timer_(net::make_strand(ioc_)) {}

  client_run run() {
    client_run out;
    if (reqs_.empty()) return out;
    tcp::resolver resolver(ioc_);
    beast::error_code ec;
    endpoints_ = resolver.resolve(opts_.target.host, opts_.target.port, ec);
    if (ec) resolve_error_ = "resolve " + opts_.target.host + ": " + ec.message();
    for (size_t i = 0; i < reqs_.size(); ++i) {
      records_[i].prompt_tokens = reqs_[i].prompt_tokens;
      records_[i].max_tokens = reqs_[i].max_tokens;
      records_[i].scheduled_s = arrivals_[i];
      raw_.push_back(build_raw(reqs_[i].body));
    }
    t0_ = steady::now();
    work_.emplace(net::make_work_guard(ioc_));
    schedule();
    std::atomic<double> cpu{0};
    auto run_loop = [this, &cpu] {
      const double c0 = thread_cpu_s();
      ioc_.run();
      const double used = thread_cpu_s() - c0;
      for (double cur = cpu.load(); !cpu.compare_exchange_weak(cur, cur + used);) {
      }
    };
    std::vector<std::thread> extra;
    for (int t = 1; t < std::max(1, opts_.threads); ++t) extra.emplace_back(run_loop);
    run_loop();
    for (std::thread& t : extra) t.join();
    idle_.clear();
    out.duration_s = seconds(end_ - t0_);
    out.overhead.wall_s = out.duration_s;
    out.overhead.cpu_s = cpu.load();
    std::vector<double> lag;
    for (const request_record& r : records_)
      if (!r.waited_for_slot) lag.push_back(r.start_s - r.scheduled_s);
    out.overhead.dispatch_lag_s = summarize(std::move(lag));
    out.overhead.events = events_;
    out.overhead.event_handling_s = static_cast<double>(handling_ns_) * 1e-9;
    out.overhead.connections_opened = opened_;
    out.overhead.connections_reused = reused_;
    out.records = std::move(records_);
    return out;
  }

  // ---- used by sessions ----
  const client_options& opts() const { return opts_; }
  net::io_context& ioc() { return ioc_; }
  steady::time_point t0() const { return t0_; }
  request_record& record(size_t i) { return records_[i]; }
  const std::string& resolve_error() const { return resolve_error_; }
  const tcp::resolver::results_type& endpoints() const { return endpoints_; }
  const std::string& raw_request(size_t i) const { return raw_[i]; }

  std::unique_ptr<beast::tcp_stream> take_idle() {
    std::lock_guard lock(mu_);
    if (idle_.empty()) return nullptr;
    auto s = std::move(idle_.back());
    idle_.pop_back();
    ++reused_;
    return s;
  }
  void put_idle(std::unique_ptr<beast::tcp_stream> s) {
    std::lock_guard lock(mu_);
    idle_.push_back(std::move(s));
  }
  void count_connection() { ++opened_; }
  void add_handling(int64_t events, steady::duration d) {
    events_ += events;
    handling_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  }

  void done() {
    std::optional<size_t> next;
    bool all = false;
    {
      std::lock_guard lock(mu_);
      --inflight_;
      if (!waiting_.empty()) {
        next = waiting_.front();
        waiting_.pop_front();
        ++inflight_;
      }
      all = ++done_ == reqs_.size();
      if (all) end_ = steady::now();
    }
    if (next) net::post(ioc_, [this, i = *next] { start(i); });
    if (all) {
      // Pooled connections hold no pending operation; dropping the guard lets run() return.
      net::post(ioc_, [this] { work_.reset(); });
    }
  }

 private:
  std::string build_raw(const std::string& body) const {
    const http_target& t = opts_.target;
    std::string r;
    r.reserve(body.size() + 256);
    r += "POST " + t.base + opts_.path + " HTTP/1.1\r\n";
    r += "Host: " + t.host + ":" + t.port + "\r\n";
    r += "User-Agent: troupe-bench\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n";
    if (!opts_.api_key.empty()) r += "Authorization: Bearer " + opts_.api_key + "\r\n";
    r += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    r += opts_.keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    r += body;
    return r;
  }

  // Fires at each planned arrival and dispatches every request that is due.
  void schedule() {
    if (next_ >= reqs_.size()) return;
    timer_.expires_at(t0_ + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(arrivals_[next_])));
    timer_.async_wait([this](beast::error_code) {
      const steady::time_point now = steady::now();
      while (next_ < reqs_.size() && t0_ + std::chrono::duration_cast<steady::duration>(
                                               std::chrono::duration<double>(arrivals_[next_])) <= now)
        dispatch(next_++);
      schedule();
    });
  }

  void dispatch(size_t i) {
    {
      std::lock_guard lock(mu_);
      if (opts_.max_concurrency > 0 && inflight_ >= opts_.max_concurrency) {
        records_[i].waited_for_slot = true;
        waiting_.push_back(i);
        return;
      }
      ++inflight_;
    }
    start(i);
  }

  void start(size_t i) { std::make_shared<session>(*this, i)->begin(); }

  const client_options& opts_;
  const std::vector<client_request>& reqs_;
  const std::vector<double>& arrivals_;
  std::vector<request_record> records_;
  net::io_context ioc_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  net::steady_timer timer_;
  tcp::resolver::results_type endpoints_;
  std::string resolve_error_;
  std::vector<std::string> raw_;  // each request as bytes on the wire
  steady::time_point t0_, end_;
  size_t next_ = 0;

  std::mutex mu_;
  std::deque<size_t> waiting_;
  std::vector<std::unique_ptr<beast::tcp_stream>> idle_;
  int64_t inflight_ = 0;
  size_t done_ = 0;
  std::atomic<int64_t> opened_{0}, reused_{0}, events_{0}, handling_ns_{0};
};

session::session(engine& e, size_t idx) : e_(e), idx_(idx), rec_(e.record(idx)) {}

void session::begin() {
  start_ = steady::now();
  rec_.start_s = seconds(start_ - e_.t0());
  deadline_ = start_ + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(e_.opts().timeout_s));
  if (e_.opts().keep_alive) stream_ = e_.take_idle();
  if (stream_) {
    reused_ = true;
    send();
  } else {
    connect();
  }
}

void session::connect() {
  if (!e_.resolve_error().empty()) return fail(e_.resolve_error());
  stream_ = std::make_unique<beast::tcp_stream>(net::make_strand(e_.ioc()));
  stream_->expires_at(deadline_);
  stream_->async_connect(e_.endpoints(), [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
    if (ec) return self->fail(self->ec_text("connect", ec));
    self->e_.count_connection();
    self->stream_->socket().set_option(tcp::no_delay(true), ec);
    self->send();
  });
}

void session::send() {
  stream_->expires_at(deadline_);
  net::async_write(*stream_, net::buffer(e_.raw_request(idx_)), [self = shared_from_this()](beast::error_code ec, size_t) {
    if (ec) return self->retry_or_fail("write", ec);
    self->read_header();
  });
}

void session::read_header() {
  parser_.emplace();
  // Not boost::none: Beast 1.74 then rejects every Content-Length body (it compares len > none).
  parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
  http::async_read_header(*stream_, buf_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
    if (ec) return self->retry_or_fail("read", ec);
    self->rec_.http_status = static_cast<int>(self->parser_->get().result_int());
    if (self->rec_.http_status != 200) return self->read_error_body();
    self->read_body();
  });
}

void session::read_body() {
  if (parser_->is_done()) return finish();
  auto& b = parser_->get().body();
  b.data = piece_.data();
  b.size = piece_.size();
  http::async_read_some(*stream_, buf_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
    self->on_body(ec);
  });
}

void session::on_body(beast::error_code ec) {
  if (ec == http::error::need_buffer) ec = {};
  const size_t got = piece_.size() - parser_->get().body().size;
  if (got) handle_bytes(got, steady::now());
  if (!pending_error_.empty()) return fail(pending_error_);
  if (ec) return fail(ec_text("stream", ec));
  read_body();
}

void session::handle_bytes(size_t n, steady::time_point now) {
  now_ = now;
  const steady::time_point t = steady::now();
  int64_t events = 0;
  sse_.feed(std::string_view(piece_.data(), n), [&](std::string_view data) {
    ++events;
    const sse_chunk c = sse_classify(data, e_.opts().api);
    switch (c.kind) {
      case sse_chunk::chunk_token:
        if (!got_token_) rec_.ttft_s = seconds(now_ - start_);
        else rec_.itl_s.push_back(seconds(now_ - last_token_));
        got_token_ = true;
        last_token_ = now_;
        ++rec_.token_chunks;
        break;
      case sse_chunk::chunk_final:
        final_at_ = now_;
        break;
      case sse_chunk::chunk_bad_json:
      case sse_chunk::chunk_error:
        if (pending_error_.empty()) pending_error_ = c.error;
        break;
      default:
        break;
    }
    if (c.prompt_tokens >= 0) rec_.prompt_tokens = c.prompt_tokens;
    if (c.completion_tokens >= 0) {
      rec_.output_tokens = c.completion_tokens;
      rec_.usage_reported = true;
    }
  });
  e_.add_handling(events, steady::now() - t);
}

void session::read_error_body() {
  if (parser_->is_done() || error_body_.size() > 4096) return fail(http_error_text(rec_.http_status, error_body_));
  auto& b = parser_->get().body();
  b.data = piece_.data();
  b.size = piece_.size();
  http::async_read_some(*stream_, buf_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
    if (ec == http::error::need_buffer) ec = {};
    self->error_body_.append(self->piece_.data(), self->piece_.size() - self->parser_->get().body().size);
    if (ec) return self->fail(http_error_text(self->rec_.http_status, self->error_body_));
    self->read_error_body();
  });
}

void session::finish() {
  now_ = steady::now();
  sse_.finish([&](std::string_view data) {
    const sse_chunk c = sse_classify(data, e_.opts().api);
    if ((c.kind == sse_chunk::chunk_bad_json || c.kind == sse_chunk::chunk_error) && pending_error_.empty())
      pending_error_ = c.error;
  });
  if (!pending_error_.empty()) return fail(pending_error_);
  // A terminator with empty text carried the last token when the usage says
  // a token is missing, or when it is the only sign of output at all.
  if (final_at_ && (!got_token_ || (rec_.usage_reported && rec_.output_tokens > rec_.token_chunks))) {
    if (!got_token_) rec_.ttft_s = seconds(*final_at_ - start_);
    else rec_.itl_s.push_back(seconds(*final_at_ - last_token_));
    got_token_ = true;
    last_token_ = *final_at_;
    ++rec_.token_chunks;
  }
  if (!got_token_) return fail("stream ended without a token");
  rec_.complete_s = seconds(now_ - start_);
  rec_.e2e_s = seconds(last_token_ - start_);
  if (!rec_.usage_reported) rec_.output_tokens = rec_.token_chunks;
  rec_.success = true;
  if (e_.opts().keep_alive && parser_->keep_alive()) {
    stream_->expires_never();
    e_.put_idle(std::move(stream_));
  } else {
    close();
  }
  e_.done();
}

void session::retry_or_fail(const char* what, beast::error_code ec) {
  // A pooled connection the server closed meanwhile fails before any response byte: retry once, fresh.
  if (reused_ && !retried_ && ec != beast::error::timeout) {
    retried_ = true;
    reused_ = false;
    close();
    buf_.clear();
    return connect();
  }
  fail(ec_text(what, ec));
}

std::string session::ec_text(const char* what, beast::error_code ec) const {
  if (ec == beast::error::timeout) return std::string(what) + ": timed out (--request-timeout)";
  if (ec == http::error::partial_message || ec == http::error::end_of_stream || ec == net::error::eof)
    return std::string(what) + ": connection closed before the response ended";
  return std::string(what) + ": " + ec.message();
}

void session::fail(std::string msg) {
  if (failed_) return;
  failed_ = true;
  rec_.success = false;
  rec_.error = std::move(msg);
  rec_.complete_s = seconds(steady::now() - start_);
  if (got_token_) rec_.e2e_s = seconds(last_token_ - start_);
  if (!rec_.usage_reported) rec_.output_tokens = rec_.token_chunks;
  close();
  e_.done();
}

void session::close() {
  if (!stream_) return;
  beast::error_code ec;
  stream_->socket().shutdown(tcp::socket::shutdown_both, ec);
  stream_->close();
  stream_.reset();
}

}  // namespace

http_target http_target::parse(const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind("https://", 0) == 0)
    throw error(errc::errc_unsupported, "--url " + url + ": https is not supported; use http:// (or a TLS proxy)");
  if (url.rfind(scheme, 0) != 0) throw error(errc::errc_invalid_argument, "--url " + url + ": expected http://HOST[:PORT]");
  std::string rest = url.substr(scheme.size());
  const size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  http_target t;
  t.base = slash == std::string::npos ? "" : rest.substr(slash);
  while (!t.base.empty() && t.base.back() == '/') t.base.pop_back();
  if (t.base.size() >= 3 && t.base.compare(t.base.size() - 3, 3, "/v1") == 0) t.base.resize(t.base.size() - 3);
  t.port = "80";
  if (!authority.empty() && authority.front() == '[') {  // [v6]:port
    const size_t close = authority.find(']');
    if (close == std::string::npos) throw error(errc::errc_invalid_argument, "--url " + url + ": unclosed '['");
    t.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') throw error(errc::errc_invalid_argument, "--url " + url + ": bad port");
      t.port = authority.substr(close + 2);
    }
  } else if (const size_t colon = authority.rfind(':'); colon != std::string::npos) {
    t.host = authority.substr(0, colon);
    t.port = authority.substr(colon + 1);
  } else {
    t.host = authority;
  }
  if (t.host.empty()) throw error(errc::errc_invalid_argument, "--url " + url + ": no host");
  if (t.port.empty() || t.port.size() > 5 || t.port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(t.port) == 0 || std::stoi(t.port) > 65535)
    throw error(errc::errc_invalid_argument, "--url " + url + ": bad port '" + t.port + "'");
  return t;
}

std::string http_target::url() const {
  const bool v6 = host.find(':') != std::string::npos;
  return "http://" + (v6 ? "[" + host + "]" : host) + ":" + port + base;
}

client_run client_run_requests(const client_options& opts, const std::vector<client_request>& requests,
                               const std::vector<double>& arrivals_s) {
  if (arrivals_s.size() != requests.size())
    throw error(errc::errc_invalid_argument, "client_run_requests: one arrival time per request");
  engine e(opts, requests, arrivals_s);
  return e.run();
}

http_reply http_exchange(const http_target& target, const std::string& method, const std::string& path,
                         const std::string& body, const std::string& api_key, double timeout_s) {
  http_reply out;
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  tcp::resolver resolver(ioc);
  http::request<http::string_body> req{http::string_to_verb(method), target.base + path, 11};
  req.set(http::field::host, target.host + ":" + target.port);
  req.set(http::field::user_agent, "troupe-bench");
  if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
  if (!body.empty()) req.set(http::field::content_type, "application/json");
  req.body() = body;
  req.prepare_payload();
  http::response<http::string_body> res;
  beast::flat_buffer buf;
  auto fail = [&](const char* what, beast::error_code ec) {
    out.error = std::string(what) + " " + target.url() + path + ": " +
                (ec == beast::error::timeout ? std::string("timed out") : ec.message());
  };
  resolver.async_resolve(target.host, target.port, [&](beast::error_code ec, tcp::resolver::results_type eps) {
    if (ec) return fail("resolve", ec);
    stream.expires_after(std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(timeout_s)));
    stream.async_connect(eps, [&](beast::error_code ec, const tcp::endpoint&) {
      if (ec) return fail("connect", ec);
      http::async_write(stream, req, [&](beast::error_code ec, size_t) {
        if (ec) return fail("write", ec);
        http::async_read(stream, buf, res, [&](beast::error_code ec, size_t) {
          if (ec) return fail("read", ec);
          out.status = static_cast<int>(res.result_int());
          out.body = std::move(res.body());
        });
      });
    });
  });
  ioc.run();
  return out;
}

}  // namespace troupe
