// The echo SSE server (see bench_echo.hpp): Beast, one thread, one connection
// object per socket serving keep-alive requests in turn.
#include "actors/bench_echo.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
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

namespace {

std::chrono::steady_clock::duration to_duration(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

class echo_conn : public std::enable_shared_from_this<echo_conn> {
 public:
  echo_conn(tcp::socket s, const echo_options& o) : stream_(std::move(s)), timer_(stream_.get_executor()), opts_(o) {}

  void read() {
    req_ = {};
    req_.body().clear();
    http::async_read(stream_, buf_, req_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->close();
      self->on_request();
    });
  }

 private:
  void on_request() {
    keep_ = req_.keep_alive();
    if (req_.method() != http::verb::post) {
      auto res = std::make_shared<http::response<http::string_body>>(http::status::ok, 11);
      res->set(http::field::content_type, "application/json");
      res->body() = R"({"object":"list","data":[{"id":"echo","object":"model","owned_by":"troupe","max_model_len":1048576}]})";
      res->keep_alive(keep_);
      res->prepare_payload();
      http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code ec, size_t) {
        if (ec || !self->keep_) return self->close();
        self->read();
      });
      return;
    }
    nlohmann::json body = nlohmann::json::parse(req_.body(), nullptr, false);
    chat_ = req_.target().find("chat") != beast::string_view::npos;
    int64_t max_tokens = 1;
    prompt_tokens_ = 0;
    model_ = "echo";
    if (body.is_object()) {
      for (const char* k : {"max_tokens", "max_completion_tokens"})
        if (body.contains(k) && body[k].is_number_integer()) max_tokens = body[k].get<int64_t>();
      if (body.contains("model") && body["model"].is_string()) model_ = body["model"].get<std::string>();
      if (body.contains("prompt") && body["prompt"].is_array()) prompt_tokens_ = static_cast<int64_t>(body["prompt"].size());
    }
    total_ = opts_.chunks > 0 ? opts_.chunks : std::clamp<int64_t>(max_tokens, 1, 4096);
    sent_ = 0;
    res_ = {};
    res_.result(http::status::ok);
    res_.version(11);
    res_.set(http::field::content_type, "text/event-stream");
    res_.set(http::field::cache_control, "no-cache");
    res_.keep_alive(keep_);
    res_.chunked(true);
    sr_.emplace(res_);
    http::async_write_header(stream_, *sr_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->close();
      if (self->chat_) return self->write(R"({"object":"chat.completion.chunk","model":")" + self->model_ +
                                          R"(","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})",
                                          [self] { self->next(); });
      self->next();
    });
  }

  // Sends token chunk sent_ after its delay, then the usage chunk, [DONE] and the last HTTP chunk.
  void next() {
    if (sent_ < total_) {
      const double delay = sent_ == 0 ? opts_.first_delay_s : opts_.gap_s;
      auto send = [self = shared_from_this()] {
        const bool last = ++self->sent_ == self->total_;
        const std::string finish = last ? R"("length")" : "null";
        std::string chunk = self->chat_
                                ? R"({"object":"chat.completion.chunk","model":")" + self->model_ +
                                      R"(","choices":[{"index":0,"delta":{"content":" echo"},"finish_reason":)" + finish + "}]}"
                                : R"({"object":"text_completion","model":")" + self->model_ +
                                      R"(","choices":[{"index":0,"text":" echo","logprobs":null,"finish_reason":)" + finish + "}]}";
        self->write(std::move(chunk), [self] { self->next(); });
      };
      if (delay <= 0) return send();
      timer_.expires_after(to_duration(delay));
      timer_.async_wait([send](beast::error_code ec) { send(); });
      return;
    }
    const std::string usage = R"({"object":")" + std::string(chat_ ? "chat.completion.chunk" : "text_completion") +
                              R"(","model":")" + model_ + R"(","choices":[],"usage":{"prompt_tokens":)" +
                              std::to_string(prompt_tokens_) + R"(,"completion_tokens":)" + std::to_string(total_) +
                              R"(,"total_tokens":)" + std::to_string(prompt_tokens_ + total_) + "}}";
    payload_ = "data: " + usage + "\n\ndata: [DONE]\n\n";
    net::async_write(stream_, http::make_chunk(net::buffer(payload_)), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->close();
      net::async_write(self->stream_, http::make_chunk_last(), [self](beast::error_code ec, size_t) {
        if (ec || !self->keep_) return self->close();
        self->read();
      });
    });
  }

  template <class F>
  void write(std::string event, F then) {
    payload_ = "data: " + event + "\n\n";
    net::async_write(stream_, http::make_chunk(net::buffer(payload_)),
                     [self = shared_from_this(), then](beast::error_code ec, size_t) {
                       if (ec) return self->close();
                       then();
                     });
  }

  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  beast::tcp_stream stream_;
  net::steady_timer timer_;
  echo_options opts_;
  beast::flat_buffer buf_;
  http::request<http::string_body> req_;
  http::response<http::empty_body> res_;
  std::optional<http::response_serializer<http::empty_body>> sr_;
  std::string payload_, model_;
  int64_t total_ = 0, sent_ = 0, prompt_tokens_ = 0;
  bool chat_ = false, keep_ = true;
};

}  // namespace

struct echo_server::impl {
  explicit impl(const echo_options& o) : opts(o), acceptor(ioc) {
    beast::error_code ec;
    const tcp::endpoint ep(net::ip::make_address("127.0.0.1"), 0);
    acceptor.open(ep.protocol(), ec);
    if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(ep, ec);
    if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
    if (ec) throw error(errc::errc_io, "echo server: cannot listen on 127.0.0.1: " + ec.message());
    port = acceptor.local_endpoint().port();
    accept();
    thread = std::thread([this] { ioc.run(); });
  }
  ~impl() {
    ioc.stop();
    thread.join();
  }
  void accept() {
    acceptor.async_accept(ioc, [this](beast::error_code ec, tcp::socket s) {
      if (!ec) {
        s.set_option(tcp::no_delay(true), ec);
        std::make_shared<echo_conn>(std::move(s), opts)->read();
      }
      if (acceptor.is_open()) accept();
    });
  }

  echo_options opts;
  net::io_context ioc;
  tcp::acceptor acceptor;
  uint16_t port = 0;
  std::thread thread;
};

echo_server::echo_server(const echo_options& opts) : impl_(std::make_unique<impl>(opts)) {}
echo_server::~echo_server() = default;
uint16_t echo_server::port() const { return impl_->port; }

}  // namespace troupe
