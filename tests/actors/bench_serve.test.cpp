// The serving benchmark against a fake OpenAI server written here (raw
// sockets, Asio coroutines, hand-written chunked HTTP: independent of the
// client's Beast parser and of the bench's own echo server). The fake streams
// K chunks with known delays, so the client's TTFT, output tokens and E2E have
// known lower bounds; a model name selects a failure mode.
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without including it

// GCC 12 misreads Boost 1.74's coroutine frame allocator (operator new/delete pair) as mismatched.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

#include "actors/bench_echo.hpp"
#include "actors/bench_serve.hpp"
#include "actors/bench_workload.hpp"

#include <doctest/doctest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>
#include <nlohmann/json.hpp>

#include "actors/bench_plot.hpp"
#include "config/errors.hpp"

using namespace troupe;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using std::chrono::milliseconds;

namespace {

// Streams `chunks` completion chunks: the first after `first_delay`, the next
// ones `gap` apart, then an empty terminator chunk, usage and [DONE]. Keep-alive. Modes by model name:
// "fail500" answers 500 with an OpenAI error; "badjson" streams a broken event;
// "truncate" sends one chunk and closes mid-body; "midstream" sends an error event.
class fake_server {
 public:
  fake_server(int chunks, milliseconds first_delay, milliseconds gap)
      : chunks_(chunks), first_delay_(first_delay), gap_(gap), acceptor_(ioc_, {net::ip::make_address("127.0.0.1"), 0}) {
    acceptor_.listen(net::socket_base::max_listen_connections);
    net::co_spawn(ioc_, listen(), net::detached);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~fake_server() {
    ioc_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port()); }
  int requests() const { return requests_; }
  int connections() const { return connections_; }

 private:
  net::awaitable<void> listen() {
    for (;;) {
      tcp::socket s = co_await acceptor_.async_accept(net::use_awaitable);
      ++connections_;
      net::co_spawn(ioc_, serve(std::move(s)), net::detached);
    }
  }

  static std::string chunk(const std::string& data) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "%zx", data.size());
    return std::string(hex) + "\r\n" + data + "\r\n";
  }
  static std::string event(const std::string& json) { return chunk("data: " + json + "\n\n"); }

  net::awaitable<void> serve(tcp::socket s) {
    try {
      std::string buf;
      char tmp[8192];
      for (;;) {
        size_t end;
        while ((end = buf.find("\r\n\r\n")) == std::string::npos)
          buf.append(tmp, co_await s.async_read_some(net::buffer(tmp), net::use_awaitable));
        std::string head = buf.substr(0, end);
        buf.erase(0, end + 4);
        size_t length = 0;
        std::string lower = head;
        for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (size_t p = lower.find("content-length:"); p != std::string::npos) length = std::stoul(head.substr(p + 15));
        while (buf.size() < length) buf.append(tmp, co_await s.async_read_some(net::buffer(tmp), net::use_awaitable));
        const std::string body = buf.substr(0, length);
        buf.erase(0, length);
        ++requests_;
        if (head.rfind("GET /v1/models", 0) == 0) {
          const std::string j = R"({"object":"list","data":[{"id":"fake-model","object":"model","max_model_len":4096}]})";
          co_await net::async_write(s, net::buffer("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                                                   std::to_string(j.size()) + "\r\n\r\n" + j),
                                    net::use_awaitable);
          continue;
        }
        const nlohmann::json req = nlohmann::json::parse(body);
        const std::string model = req.value("model", "");
        if (model == "fail500") {
          const std::string j = R"({"error":{"message":"engine exploded","type":"server_error","param":null,"code":500}})";
          co_await net::async_write(s, net::buffer("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                                                   "Content-Length: " + std::to_string(j.size()) + "\r\n\r\n" + j),
                                    net::use_awaitable);
          continue;
        }
        std::string out = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        if (model == "badjson") {
          out += event(R"({"choices":[{"text":" a"}]})") + event("{this is not json") + "0\r\n\r\n";
          co_await net::async_write(s, net::buffer(out), net::use_awaitable);
          continue;
        }
        if (model == "silent") {  // one token whose text never showed: only the terminator and usage
          out += event(R"({"choices":[{"text":"","finish_reason":"length"}]})") +
                 event(R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}})") + event("[DONE]") + "0\r\n\r\n";
          co_await net::async_write(s, net::buffer(out), net::use_awaitable);
          continue;
        }
        if (model == "midstream") {
          out += event(R"({"choices":[{"text":" a"}]})") + event(R"({"error":{"message":"kv cache gone"}})") + "0\r\n\r\n";
          co_await net::async_write(s, net::buffer(out), net::use_awaitable);
          continue;
        }
        co_await net::async_write(s, net::buffer(out), net::use_awaitable);
        net::steady_timer t(s.get_executor());
        for (int k = 0; k < chunks_; ++k) {
          t.expires_after(k == 0 ? first_delay_ : gap_);
          co_await t.async_wait(net::use_awaitable);
          co_await net::async_write(s, net::buffer(event(R"({"object":"text_completion","choices":[{"index":0,"text":" tok","finish_reason":null}]})")),
                                    net::use_awaitable);
          if (model == "truncate") co_return;  // closes the socket mid-body
        }
        const int64_t prompt = req.contains("prompt") && req["prompt"].is_array() ? static_cast<int64_t>(req["prompt"].size()) : 3;
        // OpenAI's shape: a separate terminator with empty text, then usage.
        co_await net::async_write(s, net::buffer(event(R"({"choices":[{"index":0,"text":"","finish_reason":"length"}]})") +
                                                 event(R"({"choices":[],"usage":{"prompt_tokens":)" + std::to_string(prompt) +
                                                       R"(,"completion_tokens":)" + std::to_string(chunks_) + "}}") +
                                                 event("[DONE]") + "0\r\n\r\n"),
                                  net::use_awaitable);
      }
    } catch (const std::exception&) {
    }
  }

  int chunks_;
  milliseconds first_delay_, gap_;
  net::io_context ioc_;
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::atomic<int> requests_{0}, connections_{0};
};

std::vector<client_request> token_requests(size_t n, const std::string& model, int64_t max_tokens, int64_t prompt_len = 16) {
  random_shape shape;
  shape.input_len = prompt_len;
  shape.output_len = max_tokens;
  const auto items = workload_random_ids(shape, n, 1);
  std::vector<client_request> out;
  for (const auto& w : items) out.push_back({request_body(w, {model, api_kind::api_completions, true, {}}, max_tokens), w.prompt_len, max_tokens});
  return out;
}

client_options options_for(const std::string& url) {
  client_options o;
  o.target = http_target::parse(url);
  o.path = "/v1/completions";
  return o;
}

// Runs `troupe bench serve ARGS` through its CLI registration; returns exit code and stdout.
std::pair<int, std::string> run_cli(const std::string& args) {
  CLI::App app;
  const command c = command_bench(app);
  app.parse("bench serve " + args, false);
  std::ostringstream captured;
  std::streambuf* old = std::cout.rdbuf(captured.rdbuf());
  int rc = -1;
  try {
    rc = c.second();
  } catch (...) {
    std::cout.rdbuf(old);
    throw;
  }
  std::cout.rdbuf(old);
  return {rc, captured.str()};
}

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("troupe_bench_" + std::to_string(getpid()) + "_" + name);
}

}  // namespace

TEST_CASE("bench_serve: SSE splitting follows the event-stream rules") {
  sse_splitter s;
  std::vector<std::string> ev;
  auto on = [&](std::string_view d) { ev.emplace_back(d); };
  s.feed("data: {\"a\":1}\r\n\r\n: comment\n\ndata:x", on);
  s.feed("y\ndata: z\n\nevent: ping\nid: 3\n\n", on);
  s.feed("data: [DONE]\r", on);
  s.feed("\n\r\n", on);
  s.feed("data: tail", on);
  s.finish(on);
  CHECK(ev == std::vector<std::string>{"{\"a\":1}", "xy\nz", "[DONE]", "tail"});
}

TEST_CASE("bench_serve: which chunks count as tokens") {
  using C = sse_chunk;
  const api_kind cmp = api_kind::api_completions, chat = api_kind::api_chat;
  CHECK(sse_classify(R"({"choices":[{"text":" hi","finish_reason":null}]})", cmp).kind == C::chunk_token);
  CHECK(sse_classify(R"({"choices":[{"text":"","finish_reason":null}]})", cmp).kind == C::chunk_token);  // held-back text
  CHECK(sse_classify(R"({"choices":[{"text":"","finish_reason":"length"}]})", cmp).kind == C::chunk_final);
  CHECK(sse_classify(R"({"choices":[{"text":"!","finish_reason":"stop"}]})", cmp).kind == C::chunk_token);
  CHECK(sse_classify(R"({"choices":[{"delta":{"role":"assistant","content":""}}]})", chat).kind == C::chunk_other);
  CHECK(sse_classify(R"({"choices":[{"delta":{"content":"x"},"finish_reason":null}]})", chat).kind == C::chunk_token);
  CHECK(sse_classify(R"({"choices":[{"delta":{"reasoning_content":"hm"}}]})", chat).kind == C::chunk_token);
  CHECK(sse_classify(R"({"choices":[{"delta":{},"finish_reason":"stop"}]})", chat).kind == C::chunk_final);
  CHECK(sse_classify(R"({"choices":[{"delta":{"role":"assistant"},"finish_reason":"stop"}]})", chat).kind == C::chunk_other);
  const sse_chunk u = sse_classify(R"({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34}})", cmp);
  CHECK(u.kind == C::chunk_other);
  CHECK(u.prompt_tokens == 12);
  CHECK(u.completion_tokens == 34);
  CHECK(sse_classify("[DONE]", cmp).kind == C::chunk_done);
  CHECK(sse_classify("{oops", cmp).kind == C::chunk_bad_json);
  const sse_chunk e = sse_classify(R"({"error":{"message":"out of memory","code":500}})", chat);
  CHECK(e.kind == C::chunk_error);
  CHECK(e.error.find("out of memory") != std::string::npos);
}

TEST_CASE("bench_serve: URLs") {
  http_target t = http_target::parse("http://127.0.0.1:8000");
  CHECK(t.host == "127.0.0.1");
  CHECK(t.port == "8000");
  CHECK(t.base.empty());
  t = http_target::parse("http://example.com/proxy/v1/");
  CHECK(t.port == "80");
  CHECK(t.base == "/proxy");
  t = http_target::parse("http://[::1]:9000");
  CHECK(t.host == "::1");
  CHECK(t.url() == "http://[::1]:9000");
  for (const char* bad : {"https://x", "127.0.0.1:8000", "http://", "http://h:0", "http://h:99999", "http://h:12a"})
    CHECK_THROWS_AS(http_target::parse(bad), troupe::error);
}

TEST_CASE("bench_serve: workload lengths, bodies, dataset lines and arrival processes") {
  random_shape shape;
  shape.input_len = 100;
  shape.output_len = 20;
  shape.range_ratio = 0.5;
  shape.vocab_size = 300;
  const auto items = workload_random_ids(shape, 200, 7);
  for (const auto& w : items) {
    const nlohmann::json p = nlohmann::json::parse(w.prompt_json);
    REQUIRE(p.is_array());
    CHECK(static_cast<int64_t>(p.size()) == w.prompt_len);
    CHECK(w.prompt_len >= 50);
    CHECK(w.prompt_len <= 150);
    CHECK(w.output_len >= 10);
    CHECK(w.output_len <= 30);
    for (const auto& id : p) CHECK((id.get<int>() >= 100 && id.get<int>() < 300));
  }
  CHECK(workload_random_ids(shape, 5, 7)[0].prompt_json == items[0].prompt_json);  // seeded

  const nlohmann::json b = nlohmann::json::parse(request_body(items[0], {"m", api_kind::api_completions, true, 0.0}, 20));
  CHECK(b["model"] == "m");
  CHECK(b["max_tokens"] == 20);
  CHECK(b["stream"] == true);
  CHECK(b["stream_options"]["include_usage"] == true);
  CHECK(b["ignore_eos"] == true);
  CHECK(b["temperature"] == 0.0);
  CHECK_THROWS_AS(request_body(items[0], {"m", api_kind::api_chat, false, {}}, 5), troupe::error);
  const auto text = workload_random_text(shape, 1, 1, 2.0);
  const nlohmann::json c = nlohmann::json::parse(request_body(text[0], {"m", api_kind::api_chat, false, {}}, 5));
  CHECK(c["messages"][0]["role"] == "user");
  CHECK(c["max_completion_tokens"] == 5);
  CHECK_FALSE(c.contains("ignore_eos"));

  const auto path = temp_path("dataset.jsonl");
  {
    std::ofstream f(path);
    f << R"({"prompt": "hello there", "output_len": 7})" << "\n\n"
      << R"({"prompt": [1, 2, 3]})" << "\n"
      << R"({"messages": [{"role": "user", "content": "hi"}], "output_len": 3})" << "\n";
  }
  const auto d = workload_load_jsonl(path.string(), 5, 11);
  REQUIRE(d.size() == 5);
  CHECK(d[0].output_len == 7);
  CHECK(d[1].output_len == 11);
  CHECK(d[1].prompt_len == 3);
  CHECK(d[2].messages);
  CHECK(d[3].prompt_json == d[0].prompt_json);  // cycles
  CHECK(workload_load_jsonl(path.string(), 0, 11).size() == 3);
  {
    std::ofstream f(path);
    f << R"({"prompt": "ok"})" << "\n" << R"({"prompt": 5})" << "\n";
  }
  try {
    workload_load_jsonl(path.string(), 0, 1);
    FAIL("expected an error");
  } catch (const troupe::error& e) {
    CHECK(std::string(e.what()).find(":2:") != std::string::npos);  // names the line
  }
  std::filesystem::remove(path);

  CHECK(arrivals_plan(3, std::numeric_limits<double>::infinity(), 1, 0) == std::vector<double>{0, 0, 0});
  for (double burst : {1.0, 0.25}) {
    const auto a = arrivals_plan(20001, 50, burst, 3);
    std::vector<double> gaps;
    for (size_t i = 1; i < a.size(); ++i) gaps.push_back(a[i] - a[i - 1]);
    const latency_summary s = summarize(gaps);
    CHECK(s.mean == doctest::Approx(0.02).epsilon(0.05));             // 1 / rate
    CHECK(s.std / s.mean == doctest::Approx(1 / std::sqrt(burst)).epsilon(0.08));  // gamma CV = 1/sqrt(shape)
  }
  CHECK_THROWS_AS(arrivals_plan(3, 0, 1, 0), troupe::error);
  CHECK_THROWS_AS(arrivals_plan(3, 5, 0, 0), troupe::error);
}

TEST_CASE("bench_serve: 200 concurrent streams against a fake server with known delays") {
  const int k = 5;
  const milliseconds first(120), gap(25);
  fake_server server(k, first, gap);
  const auto reqs = token_requests(200, "fake-model", k);
  for (int threads : {1, 2}) {  // 2 threads: sockets on strands, shared state behind the lock
    CAPTURE(threads);
    client_options o = options_for(server.url());
    o.threads = threads;
    const client_run run = client_run_requests(o, reqs, std::vector<double>(reqs.size(), 0.0));
    REQUIRE(run.records.size() == 200);
    const bench_metrics m = metrics_compute(run.records, run.duration_s, {});
    CHECK(m.failed == 0);
    CHECK(m.completed == 200);
    CHECK(m.max_concurrency_seen == 200);
    CHECK(m.total_output_tokens == 200 * k);
    CHECK(m.total_input_tokens == 200 * 16);
    for (const request_record& r : run.records) {
      CHECK(r.success);
      CHECK(r.http_status == 200);
      CHECK(r.usage_reported);
      CHECK(r.output_tokens == k);
      CHECK(r.token_chunks == k);
      CHECK(r.itl_s.size() == static_cast<size_t>(k - 1));
      CHECK(r.ttft_s >= 0.120);
      CHECK(r.e2e_s >= 0.120 + (k - 1) * 0.025);  // the last chunk left the server that late
      CHECK(r.complete_s >= r.e2e_s);
    }
    // Gaps can shrink on the way (delayed chunks arrive together on a loaded
    // machine), so no lower bound on ITL; but the gaps must add up exactly.
    for (const request_record& r : run.records) {
      double sum = 0.0;
      for (double g : r.itl_s) sum += g;
      CHECK(sum == doctest::Approx(r.e2e_s - r.ttft_s).epsilon(1e-6));
    }
    CHECK(m.ttft_s.max < 5.0);
    CHECK(run.overhead.events == 200 * (k + 3));  // k tokens + terminator + usage + [DONE]
    CHECK(run.overhead.connections_opened + run.overhead.connections_reused == 200);
  }
}

TEST_CASE("bench_serve: keep-alive reuses one connection at concurrency 1; --no-keep-alive does not") {
  fake_server server(2, milliseconds(1), milliseconds(1));
  const auto reqs = token_requests(20, "fake-model", 2);
  client_options o = options_for(server.url());
  o.max_concurrency = 1;
  const client_run run = client_run_requests(o, reqs, std::vector<double>(reqs.size(), 0.0));
  CHECK(metrics_compute(run.records, run.duration_s, {}).completed == 20);
  CHECK(run.overhead.connections_opened == 1);
  CHECK(run.overhead.connections_reused == 19);
  CHECK(server.connections() == 1);
  CHECK(metrics_compute(run.records, run.duration_s, {}).max_concurrency_seen == 1);
  o.keep_alive = false;
  const client_run fresh = client_run_requests(o, reqs, std::vector<double>(reqs.size(), 0.0));
  CHECK(fresh.overhead.connections_opened == 20);
  CHECK(error_summary(fresh.records).empty());
}

TEST_CASE("bench_serve: failures are counted and described, never thrown") {
  fake_server server(3, milliseconds(1), milliseconds(1));
  auto reqs = token_requests(4, "fail500", 3);
  for (auto& r : token_requests(3, "badjson", 3)) reqs.push_back(r);
  for (auto& r : token_requests(2, "truncate", 3)) reqs.push_back(r);
  for (auto& r : token_requests(1, "midstream", 3)) reqs.push_back(r);
  for (auto& r : token_requests(5, "fake-model", 3)) reqs.push_back(r);
  for (auto& r : token_requests(2, "silent", 1)) reqs.push_back(r);
  const client_run run = client_run_requests(options_for(server.url()), reqs, std::vector<double>(reqs.size(), 0.0));
  const bench_metrics m = metrics_compute(run.records, run.duration_s, {});
  CHECK(m.completed == 7);
  for (size_t i = reqs.size() - 2; i < reqs.size(); ++i) {  // the terminator carried the one token
    CHECK(run.records[i].success);
    CHECK(run.records[i].token_chunks == 1);
    CHECK(run.records[i].output_tokens == 1);
    CHECK(run.records[i].ttft_s > 0);
  }
  // 3 token chunks, then a terminator: usage says 3, so the terminator is not a token.
  CHECK(run.records[10].token_chunks == 3);
  CHECK(run.records[10].itl_s.size() == 2);
  CHECK(m.failed == 10);
  std::map<std::string, int64_t> reasons;
  for (const auto& e : error_summary(run.records)) reasons[e.message] = e.count;
  CHECK(reasons["HTTP 500: engine exploded"] == 4);
  CHECK(reasons["bad JSON in SSE event: {this is not json"] == 3);
  CHECK(reasons["stream: connection closed before the response ended"] == 2);
  CHECK(reasons["error event: kv cache gone"] == 1);
  CHECK(run.records[0].http_status == 500);

  // Nothing listens on a port we bound and released: every request is refused.
  uint16_t port;
  {
    net::io_context io;
    tcp::acceptor a(io, {net::ip::make_address("127.0.0.1"), 0});
    port = a.local_endpoint().port();
  }
  const client_run refused = client_run_requests(options_for("http://127.0.0.1:" + std::to_string(port)), reqs,
                                                 std::vector<double>(reqs.size(), 0.0));
  const auto e = error_summary(refused.records);
  REQUIRE(e.size() == 1);
  CHECK(e[0].count == static_cast<int64_t>(reqs.size()));
  CHECK(e[0].message.find("connect: ") == 0);

  // A request that outlives --request-timeout.
  fake_server slow(2, milliseconds(2000), milliseconds(1));
  client_options o = options_for(slow.url());
  o.timeout_s = 0.2;
  const auto t0 = std::chrono::steady_clock::now();
  const client_run late = client_run_requests(o, token_requests(3, "fake-model", 2), {0, 0, 0});
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1500));
  CHECK(error_summary(late.records).at(0).message == "stream: timed out (--request-timeout)");
}

TEST_CASE("bench_serve: rate-limited arrivals and max concurrency") {
  fake_server server(2, milliseconds(30), milliseconds(1));
  const auto reqs = token_requests(40, "fake-model", 2);
  client_options o = options_for(server.url());
  o.max_concurrency = 4;
  const auto arrivals = arrivals_plan(reqs.size(), 400, 1, 5);  // ~0.1 s of arrivals
  const client_run run = client_run_requests(o, reqs, arrivals);
  const bench_metrics m = metrics_compute(run.records, run.duration_s, {});
  CHECK(m.completed == 40);
  CHECK(m.max_concurrency_seen <= 4);
  CHECK(m.max_concurrency_seen >= 2);
  for (const request_record& r : run.records) CHECK(r.start_s >= r.scheduled_s);
  // 40 requests of >= 30 ms, 4 at a time: at least 10 rounds.
  CHECK(run.duration_s >= 0.3);
}

TEST_CASE("bench_serve: the echo server holds 2,000 concurrent streams on one client thread") {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur < 4300) {
    MESSAGE("skipped: needs 4,300 file descriptors, the limit is ", rl.rlim_cur);
    return;
  }
  echo_server echo(echo_options{3, 0.4, 0.01});
  const auto reqs = token_requests(2000, "echo", 3);
  const client_run run = client_run_requests(options_for("http://127.0.0.1:" + std::to_string(echo.port())), reqs,
                                             std::vector<double>(reqs.size(), 0.0));
  const bench_metrics m = metrics_compute(run.records, run.duration_s, {});
  CHECK(m.failed == 0);
  CHECK(m.completed == 2000);
  CHECK(m.max_concurrency_seen == 2000);
  CHECK(m.total_output_tokens == 2000 * 3);
  CHECK(m.ttft_s.min >= 0.4);
  for (const auto& e : error_summary(run.records)) MESSAGE(e.count, " x ", e.message);
}

TEST_CASE("bench_serve: the command end to end: table, JSON, PNG, goodput, overhead probe") {
  fake_server server(4, milliseconds(40), milliseconds(5));
  const auto json = temp_path("result.json"), png = temp_path("latency.png");
  const auto [rc, out] = run_cli("--url " + server.url() + " --num-prompts 60 --random-input-len 32 --random-output-len 4 "
                                 "--slo ttft=5000,tpot=1000 --measure-overhead --overhead-requests 5 --result-json " +
                                 json.string() + " --plot " + png.string());
  CHECK(rc == 0);
  CHECK(out.find("(model fake-model)") != std::string::npos);  // discovered from /v1/models
  CHECK(out.find("Successful requests:                    60") != std::string::npos);
  CHECK(out.find("Request goodput (req/s):") != std::string::npos);
  CHECK(out.find("Mean TTFT (ms):") != std::string::npos);
  CHECK(out.find("Overhead probe") != std::string::npos);
  std::ifstream f(json);
  REQUIRE(f);
  const nlohmann::json j = nlohmann::json::parse(f);
  CHECK(j["completed"] == 60);
  CHECK(j["failed"] == 0);
  CHECK(j["total_output_tokens"] == 240);
  CHECK(j["requests"].size() == 60);
  CHECK(j["mean_ttft_ms"].get<double>() >= 40.0);
  CHECK(j["slo_met_requests"] == 60);
  CHECK(j["config"]["request_rate"] == "inf");
  CHECK(j["overhead_probe"]["echo_failed"] == 0);
  CHECK(j["overhead_probe"]["server_failed"] == 0);
  // The fake waits 40 ms before its first chunk; the echo server does not wait at all.
  CHECK(j["overhead_probe"]["server_minus_floor_median_ms"].get<double>() >= 30.0);
  if (gnuplot_available()) {
    std::ifstream p(png, std::ios::binary);
    REQUIRE(p);
    char magic[4] = {};
    p.read(magic, 4);
    CHECK(std::string(magic + 1, 3) == "PNG");
    CHECK(out.find("PNG written") != std::string::npos);
  } else {
    MESSAGE("gnuplot not installed: PNG check skipped");
    CHECK(out.find("PNG skipped") != std::string::npos);
  }
  std::filesystem::remove(json);
  std::filesystem::remove(png);

  // Failed requests make the exit code 1; a server that is not there fails at model discovery.
  const auto [rc500, out500] = run_cli("--url " + server.url() + " --model fail500 --num-prompts 3");
  CHECK(rc500 == 1);
  CHECK(out500.find("HTTP 500: engine exploded") != std::string::npos);
  CHECK_THROWS_AS(run_cli("--url http://127.0.0.1:1 --num-prompts 1"), troupe::error);
}
