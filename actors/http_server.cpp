// The HTTP/1.1 server: Beast parses, Asio runs a fixed thread pool, every
// connection lives on its own strand. See http_server.hpp for the design.
//
// Lifetimes: a connection is owned by its pending operations, plus a
// self-reference while a response is in progress (the handler may take its
// time). Writers hold only a weak reference and a shared lock on the server's
// "stopped" flag, so a writer that outlives the server posts nothing.
#include "actors/http_server.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>

#include "actors/openai_response.hpp"
#include "config/errors.hpp"

namespace troupe {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

namespace {

/// Bytes read ahead while a response is in progress (pipelined requests);
/// beyond this the socket is no longer watched until the response ends.
constexpr std::size_t monitor_buffer_cap = 64u << 10;

std::string_view sv(boost::beast::string_view s) { return {s.data(), s.size()}; }

bool ascii_iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

/// "Sun, 06 Nov 1994 08:49:37 GMT"
std::string http_date() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[64];
  std::size_t n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return std::string(buf, n);
}

std::string status_line(int status) {
  std::string_view reason = sv(http::obsolete_reason(static_cast<http::status>(status)));
  std::string s = "HTTP/1.1 " + std::to_string(status) + " ";
  s.append(reason.empty() ? "Unknown" : reason);
  s += "\r\n";
  return s;
}

bool status_has_body(int status) { return !(status == 204 || status == 304 || (status >= 100 && status < 200)); }

}  // namespace

std::string http_request::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (ascii_iequal(k, name)) return v;
  return {};
}

std::string_view http_request::path() const {
  std::string_view t = target;
  return t.substr(0, t.find('?'));
}

/// What writers share with the server: set once no more work may be posted.
struct server_shared {
  std::shared_mutex mu;
  bool stopped = false;
};

struct connection;

/// One request's response, shared by its writer and its connection.
struct response_state {
  std::weak_ptr<connection> conn;
  std::shared_ptr<server_shared> shared;
  std::atomic<bool> closed{false};
  std::atomic<bool> complete{false};
  std::mutex mu;
  std::function<void()> cb;

  void set_callback(std::function<void()> f) {
    std::unique_lock lk(mu);
    if (closed.load()) {
      lk.unlock();
      if (f) f();
      return;
    }
    if (complete.load()) return;
    std::swap(cb, f);  // the old callback dies outside the lock
    lk.unlock();
  }
  /// The client went away before the response was complete.
  void fire_close() {
    std::function<void()> f;
    {
      std::lock_guard lk(mu);
      if (closed.load() || complete.load()) return;
      closed = true;
      std::swap(f, cb);
    }
    if (f) f();
  }
  /// The last byte of the response is queued: the callback is no longer wanted.
  void mark_complete() {
    std::function<void()> f;
    {
      std::lock_guard lk(mu);
      complete = true;
      std::swap(f, cb);
    }
  }
};

struct http_server_core {
  http_server_options opts;
  http_handler handler;
  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard;
  tcp::acceptor acceptor;
  asio::steady_timer accept_retry;
  std::vector<std::thread> threads;
  std::shared_ptr<server_shared> shared = std::make_shared<server_shared>();
  uint16_t bound_port = 0;

  std::mutex reg_mu;
  std::condition_variable reg_cv;
  std::unordered_map<uint64_t, std::weak_ptr<connection>> registry;
  uint64_t next_id = 0;
  std::atomic<bool> stopping{false};
  std::mutex stop_mu;
  bool stopped = false;

  http_server_core(http_server_options o, http_handler h)
      : opts(std::move(o)),
        handler(std::move(h)),
        ioc(std::max(1, opts.threads)),
        acceptor(asio::make_strand(ioc)),
        accept_retry(acceptor.get_executor()) {}

  void do_accept();
  void on_accept(error_code ec, tcp::socket socket);
  uint64_t register_connection(const std::shared_ptr<connection>& c);
  void unregister_connection(uint64_t id);
  void stop();
};

/// One client connection, living on its own strand.
struct connection : std::enable_shared_from_this<connection> {
  http_server_core& srv;
  tcp::socket socket;
  asio::steady_timer timer;
  beast::flat_buffer buffer;
  std::optional<http::request_parser<http::string_body>> parser;
  uint64_t id = 0;
  uint64_t timer_gen = 0;
  uint64_t requests = 0;

  // the response in progress
  std::shared_ptr<response_state> current;
  std::shared_ptr<connection> hold;  ///< keeps the connection alive while the handler works
  bool in_response = false;          ///< from a complete request until its response is written
  bool started = false;              ///< status line queued
  bool streaming = false;
  bool chunked = false;
  bool done = false;                 ///< last byte queued
  bool keep_alive = false;
  bool head = false;
  bool version_11 = true;

  // output queue; deque elements never move, so gathered buffers stay valid
  std::deque<std::string> out;
  std::vector<asio::const_buffer> gather;
  std::size_t writing_n = 0;
  bool writing = false;

  bool monitoring = false;                 ///< a read_some is pending during the response
  std::function<void()> after_monitor;     ///< what to do once that read is cancelled
  bool stopping = false;
  bool closed = false;
  char linger_buf[4096];

  connection(http_server_core& s, tcp::socket sock)
      : srv(s), socket(std::move(sock)), timer(socket.get_executor()) {}

  // ---- timers ----
  void arm_timer(std::chrono::milliseconds d) {
    uint64_t gen = ++timer_gen;
    timer.expires_after(d);
    timer.async_wait([self = shared_from_this(), gen](error_code ec) {
      if (ec || gen != self->timer_gen) return;
      self->close_now();
    });
  }
  void disarm_timer() {
    ++timer_gen;
    timer.cancel();
  }

  // ---- request side ----
  void start() {
    id = srv.register_connection(shared_from_this());
    if (srv.stopping.load()) return close_now();  // raced with stop(): it may not have seen us
    error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    read_request();
  }

  void read_request() {
    if (closed) return;
    if (stopping) return close_now();
    parser.emplace();
    parser->header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(srv.opts.max_header_bytes, UINT32_MAX)));
    parser->body_limit(srv.opts.max_body_bytes);
    if (buffer.size() == 0) {
      // Idle until the next request starts: keep-alive timeout, then the request deadline.
      arm_timer(requests == 0 ? srv.opts.request_timeout : srv.opts.keep_alive_timeout);
      socket.async_wait(tcp::socket::wait_read, [self = shared_from_this()](error_code ec) {
        if (self->closed) return;
        if (ec) return self->close_now();
        self->read_header();
      });
    } else {
      read_header();
    }
  }

  void read_header() {
    arm_timer(srv.opts.request_timeout);
    http::async_read_header(socket, buffer, *parser, [self = shared_from_this()](error_code ec, std::size_t) {
      self->on_header(ec);
    });
  }

  void on_header(error_code ec) {
    if (closed) return;
    if (ec) return on_read_error(ec);
    auto& req = parser->get();
    if (parser->is_done()) return on_request();
    if (ascii_iequal(sv(req[http::field::expect]), "100-continue") && req.version() >= 11)
      enqueue("HTTP/1.1 100 Continue\r\n\r\n");
    http::async_read(socket, buffer, *parser, [self = shared_from_this()](error_code ec, std::size_t) {
      if (self->closed) return;
      if (ec) return self->on_read_error(ec);
      self->on_request();
    });
  }

  void on_read_error(error_code ec) {
    if (ec == http::error::body_limit)
      return reply_and_close(413, "Request body too large: the limit is " + std::to_string(srv.opts.max_body_bytes) +
                                      " bytes");
    if (ec == http::error::header_limit)
      return reply_and_close(431, "Request header fields too large: the limit is " +
                                      std::to_string(srv.opts.max_header_bytes) + " bytes");
    if (ec.category() == error_code(http::error::bad_method).category() && ec != http::error::end_of_stream &&
        ec != http::error::partial_message && ec != http::error::need_more)
      return reply_and_close(400, "Malformed HTTP request: " + ec.message());
    close_now();  // end of stream, timeout, reset: nobody to answer
  }

  void on_request() {
    disarm_timer();
    ++requests;
    auto& msg = parser->get();
    http_request req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.version = static_cast<int>(msg.version());
    req.headers.reserve(8);
    for (const auto& f : msg) req.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    req.body = std::move(msg.body());
    keep_alive = msg.keep_alive() && !stopping;
    version_11 = msg.version() >= 11;
    head = msg.method() == http::verb::head;
    parser.reset();

    auto st = std::make_shared<response_state>();
    st->conn = weak_from_this();
    st->shared = srv.shared;
    current = st;
    hold = shared_from_this();
    in_response = true;
    started = streaming = chunked = done = false;
    watch_peer();
    try {
      srv.handler(std::move(req), make_writer(st));
    } catch (const std::exception& e) {
      respond(st, 500, "application/json", openai_error_body(500, std::string("internal error: ") + e.what()));
    } catch (...) {
      respond(st, 500, "application/json", openai_error_body(500, "internal error"));
    }
  }

  std::shared_ptr<http_response_writer> make_writer(std::shared_ptr<response_state> st);

  /// Keeps a read pending while the response is in progress: EOF or an error
  /// means the client went away; data (a pipelined request) is kept.
  void watch_peer() {
    if (monitoring || closed || !in_response || buffer.size() >= monitor_buffer_cap) return;
    monitoring = true;
    socket.async_read_some(buffer.prepare(2048), [self = shared_from_this()](error_code ec, std::size_t n) {
      self->monitoring = false;
      if (!ec) self->buffer.commit(n);
      if (self->after_monitor) return std::exchange(self->after_monitor, nullptr)();
      if (self->closed) return;
      if (ec) return self->close_now();
      self->watch_peer();
    });
  }

  /// Runs `next` once no read is pending (cancelling the watch read).
  void when_reads_idle(std::function<void()> next) {
    if (!monitoring) return next();
    after_monitor = std::move(next);
    error_code ec;
    socket.cancel(ec);
  }

  // ---- response side (all on the strand) ----
  std::string head_lines(int status, std::string_view content_type) {
    std::string h = status_line(status);
    h += "Server: troupe\r\nDate: ";
    h += http_date();
    h += "\r\n";
    if (!content_type.empty()) {
      h += "Content-Type: ";
      h += content_type;
      h += "\r\n";
    }
    return h;
  }

  void respond(const std::shared_ptr<response_state>& st, int status, std::string content_type, std::string body) {
    if (st != current || closed || started) return;
    started = done = true;
    st->mark_complete();
    std::string h = head_lines(status, content_type);
    if (status_has_body(status)) h += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    h += keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    enqueue(std::move(h));
    if (!head && status_has_body(status) && !body.empty()) enqueue(std::move(body));
  }

  void start_stream(const std::shared_ptr<response_state>& st, int status, std::string content_type) {
    if (st != current || closed || started) return;
    started = streaming = true;
    std::string h = head_lines(status, content_type);
    h += "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n";
    if (version_11) {
      chunked = true;
      h += "Transfer-Encoding: chunked\r\n";
    } else {
      keep_alive = false;  // HTTP/1.0: the end of the stream is the end of the connection
    }
    h += keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    enqueue(std::move(h));
  }

  void write_chunk(const std::shared_ptr<response_state>& st, std::string chunk) {
    if (st != current || closed || !streaming || done || chunk.empty() || head) return;
    if (!chunked) return enqueue(std::move(chunk));
    char size[24];
    int n = std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
    std::string framed;
    framed.reserve(chunk.size() + static_cast<std::size_t>(n) + 2);
    framed.append(size, static_cast<std::size_t>(n));
    framed += chunk;
    framed += "\r\n";
    enqueue(std::move(framed));
  }

  void finish(const std::shared_ptr<response_state>& st) {
    if (st != current || closed || !streaming || done) return;
    done = true;
    st->mark_complete();
    if (chunked && !head) {
      enqueue("0\r\n\r\n");
    } else if (!writing) {
      after_response();
    }
  }

  /// The writer was dropped without completing its response.
  void abandon(const std::shared_ptr<response_state>& st) {
    if (st != current || closed) return;
    if (!started) return respond(st, 500, "application/json", openai_error_body(500, "the request was not answered"));
    if (!done) close_now();
  }

  /// An error found while reading the request: answer, then close.
  void reply_and_close(int status, std::string message) {
    disarm_timer();
    parser.reset();
    keep_alive = false;
    in_response = true;
    started = done = true;
    std::string body = openai_error_body(status, message);
    std::string h = head_lines(status, "application/json");
    h += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
    enqueue(std::move(h));
    enqueue(std::move(body));
  }

  void enqueue(std::string s) {
    if (closed) return;
    out.push_back(std::move(s));
    if (!writing) write_out();
  }

  void write_out() {
    gather.clear();
    for (std::size_t i = 0; i < out.size() && i < 64; ++i) gather.emplace_back(out[i].data(), out[i].size());
    writing_n = gather.size();
    writing = true;
    asio::async_write(socket, gather, [self = shared_from_this()](error_code ec, std::size_t) {
      self->writing = false;
      if (self->closed) return;
      if (ec) return self->close_now();
      self->out.erase(self->out.begin(), self->out.begin() + static_cast<std::ptrdiff_t>(self->writing_n));
      if (!self->out.empty()) return self->write_out();
      if (self->done && self->in_response) self->after_response();
    });
  }

  void after_response() {
    in_response = false;
    current.reset();
    auto keep = std::move(hold);  // released at the end of this call
    if (!keep_alive || stopping) return when_reads_idle([this, keep] { graceful_close(); });
    when_reads_idle([this, keep] { read_request(); });
  }

  // ---- closing ----
  /// Half-closes and drains what the client still sends for a moment, so it
  /// reads our last response instead of a reset.
  void graceful_close() {
    if (closed) return;
    error_code ec;
    socket.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return close_now();
    arm_timer(srv.opts.linger_timeout);
    drain();
  }
  void drain() {
    socket.async_read_some(asio::buffer(linger_buf), [self = shared_from_this()](error_code ec, std::size_t) {
      if (self->closed) return;
      if (ec) return self->close_now();
      self->drain();
    });
  }

  void close_now() {
    if (closed) return;
    closed = true;
    disarm_timer();
    error_code ec;
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
    if (current) current->fire_close();
    current.reset();
    after_monitor = nullptr;
    in_response = false;
    srv.unregister_connection(id);
    if (!writing) out.clear();
    hold.reset();  // may destroy *this once the caller's reference is gone
  }

  /// The server is stopping: close when idle, else after this response.
  void begin_stop() {
    stopping = true;
    keep_alive = false;
    if (!in_response) close_now();
  }
};

namespace {

class writer_impl final : public http_response_writer {
 public:
  explicit writer_impl(std::shared_ptr<response_state> st) : st_(std::move(st)) {}
  ~writer_impl() override {
    if (st_->complete.load() || st_->closed.load()) return;
    post([st = st_](connection& c) { c.abandon(st); });
  }
  void respond(int status, std::string content_type, std::string body) override {
    post([st = st_, status, ct = std::move(content_type), b = std::move(body)](connection& c) mutable {
      c.respond(st, status, std::move(ct), std::move(b));
    });
  }
  void start_stream(int status, std::string content_type) override {
    post([st = st_, status, ct = std::move(content_type)](connection& c) mutable {
      c.start_stream(st, status, std::move(ct));
    });
  }
  void write(std::string chunk) override {
    post([st = st_, s = std::move(chunk)](connection& c) mutable { c.write_chunk(st, std::move(s)); });
  }
  void finish() override {
    post([st = st_](connection& c) { c.finish(st); });
  }
  bool closed() const override { return st_->closed.load(); }
  void on_close(std::function<void()> cb) override { st_->set_callback(std::move(cb)); }

 private:
  template <class F>
  void post(F&& f) {
    if (st_->closed.load() || st_->complete.load()) return;
    std::shared_lock lk(st_->shared->mu);
    if (st_->shared->stopped) return;
    std::shared_ptr<connection> c = st_->conn.lock();
    if (!c) return;
    connection* raw = c.get();
    asio::post(raw->socket.get_executor(), [c = std::move(c), f = std::forward<F>(f)]() mutable { f(*c); });
  }
  std::shared_ptr<response_state> st_;
};

}  // namespace

std::shared_ptr<http_response_writer> connection::make_writer(std::shared_ptr<response_state> st) {
  return std::make_shared<writer_impl>(std::move(st));
}

// ---- server ----

uint64_t http_server_core::register_connection(const std::shared_ptr<connection>& c) {
  std::lock_guard lk(reg_mu);
  uint64_t id = ++next_id;
  registry.emplace(id, c);
  return id;
}

void http_server_core::unregister_connection(uint64_t id) {
  std::lock_guard lk(reg_mu);
  registry.erase(id);
  if (registry.empty()) reg_cv.notify_all();
}

void http_server_core::do_accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](error_code ec, tcp::socket socket) {
    on_accept(ec, std::move(socket));
  });
}

void http_server_core::on_accept(error_code ec, tcp::socket socket) {
  if (stopping.load() || !acceptor.is_open()) return;
  if (ec) {
    if (ec == asio::error::operation_aborted) return;
    if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space || ec == asio::error::no_memory ||
        ec.value() == ENFILE) {
      // Out of file descriptors: back off instead of spinning on accept().
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](error_code e) {
        if (!e && !stopping.load()) do_accept();
      });
      return;
    }
    return do_accept();
  }
  std::size_t open;
  {
    std::lock_guard lk(reg_mu);
    open = registry.size();
  }
  if (open >= opts.max_connections) {
    error_code e;
    socket.close(e);
  } else {
    auto c = std::make_shared<connection>(*this, std::move(socket));
    asio::dispatch(c->socket.get_executor(), [c] { c->start(); });
  }
  do_accept();
}

void http_server_core::stop() {
  std::lock_guard once(stop_mu);
  if (stopped) return;
  stopped = true;
  stopping = true;
  asio::post(acceptor.get_executor(), [this] {
    error_code ec;
    acceptor.close(ec);
    accept_retry.cancel();
  });
  auto each_connection = [this](auto&& fn) {
    std::vector<std::shared_ptr<connection>> live;
    {
      std::lock_guard lk(reg_mu);
      for (auto& [id, w] : registry)
        if (auto c = w.lock()) live.push_back(std::move(c));
    }
    for (auto& c : live) asio::post(c->socket.get_executor(), [c, fn] { fn(*c); });
  };
  each_connection([](connection& c) { c.begin_stop(); });
  {
    std::unique_lock lk(reg_mu);
    reg_cv.wait_for(lk, opts.stop_grace, [this] { return registry.empty(); });
  }
  {
    std::unique_lock lk(shared->mu);
    shared->stopped = true;  // writers post nothing from now on
  }
  each_connection([](connection& c) { c.close_now(); });
  guard.reset();
  for (auto& t : threads)
    if (t.joinable()) t.join();
}

http_server::http_server(http_server_options options, http_handler handler) {
  if (options.threads < 1) throw error(errc::errc_invalid_argument, "http_server: threads must be >= 1");
  if (!handler) throw error(errc::errc_invalid_argument, "http_server: no handler");
  impl_ = std::make_unique<http_server_core>(std::move(options), std::move(handler));
  auto& s = *impl_;
  const std::string where = s.opts.host + ":" + std::to_string(s.opts.port);
  error_code ec;
  tcp::resolver resolver(s.ioc);
  auto results = resolver.resolve(s.opts.host, std::to_string(s.opts.port),
                                  tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) throw error(errc::errc_io, "http_server: cannot resolve " + where + ": " + ec.message());
  tcp::endpoint ep = results.begin()->endpoint();
  s.acceptor.open(ep.protocol(), ec);
  if (!ec) s.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor.bind(ep, ec);
  if (!ec) s.acceptor.listen(s.opts.listen_backlog, ec);
  if (ec) throw error(errc::errc_io, "http_server: cannot listen on " + where + ": " + ec.message());
  s.bound_port = s.acceptor.local_endpoint().port();
  s.guard.emplace(s.ioc.get_executor());
  asio::post(s.acceptor.get_executor(), [&s] { s.do_accept(); });
  for (int i = 0; i < s.opts.threads; ++i) s.threads.emplace_back([&s] { s.ioc.run(); });
}

http_server::~http_server() {
  if (impl_) impl_->stop();
}

uint16_t http_server::port() const { return impl_->bound_port; }

std::size_t http_server::connections() const {
  std::lock_guard lk(impl_->reg_mu);
  return impl_->registry.size();
}

void http_server::stop() { impl_->stop(); }

}  // namespace troupe
