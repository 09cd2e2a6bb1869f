// `troupe serve` as a user runs it: a real server process on an ephemeral
// port, real HTTP over loopback sockets. Bad input of every kind must get the
// right status and OpenAI error shape, and the server must keep serving.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "cli_support.hpp"

using namespace cli_support;

namespace {

http_reply http(int port, const std::string& method, const std::string& path, const std::string& body = "",
                const std::string& auth = "") {
  return cli_support::http("127.0.0.1", port, method, path, body, auth);
}

// A server process with `args` after "serve", its output in a scratch folder
// of this process named by `tag` (CTest runs cases in parallel); `port` once
// it listens, else `exit_status` when it ended first.
struct server {
  scratch dir;
  process proc;
  int port = 0;
  int exit_status = -1;

  explicit server(std::vector<std::string> args, const std::string& tag = "main")
      : dir("serve", tag), proc(dir, "serve", with_binary(std::move(args))) {
    static const std::string marker = "listening on http://127.0.0.1:";
    std::string text;
    const bool up = proc.wait_for(
        [&](const std::string& out, const std::string& err) {
          text = out + err;
          const size_t p = text.find(marker);
          return p != std::string::npos && text.find('\n', p) != std::string::npos;
        },
        30s);
    if (up && text.find(marker) != std::string::npos)
      port = std::stoi(text.substr(text.find(marker) + marker.size()));
    else if (proc.pid < 0)
      exit_status = WIFEXITED(proc.status) ? WEXITSTATUS(proc.status) : 128;
  }
  static std::vector<std::string> with_binary(std::vector<std::string> args) {
    args.insert(args.begin(), {TROUPE_BINARY, "serve"});
    return args;
  }
  /// Everything it printed so far.
  std::string log() const { return proc.both(); }
};

server& the_server() {
  static server s({"--port", "0", "--admin-key", "admin-secret", "--max-body-mib", "1", "--kv-cache-mib", "64",
                   "--threads", "2"});
  REQUIRE_MESSAGE(s.port != 0, (std::string("the server did not start: ") + s.log()));
  return s;
}

nlohmann::json error_of(const http_reply& r) {
  const auto j = nlohmann::json::parse(r.body, nullptr, false);
  REQUIRE_MESSAGE(j.is_object(), r.body);
  REQUIRE(j.contains("error"));
  return j["error"];
}

void expect_error(const http_reply& r, int status, const char* param) {
  CAPTURE(r.body);
  CHECK(r.status == status);
  const auto e = error_of(r);
  CHECK(e["message"].is_string());
  CHECK(e["type"].is_string());
  if (param == nullptr) CHECK(e["param"].is_null());
  else CHECK(e["param"] == param);
}

nlohmann::json admin_state(int port) {
  const http_reply r = http(port, "GET", "/admin/state", "", "admin-secret");
  REQUIRE(r.status == 200);
  return nlohmann::json::parse(r.body)["instances"][0];
}

}  // namespace

TEST_CASE("serve: health, models, completions, chat, tokenize, metrics") {
  const int port = the_server().port;
  CHECK(http(port, "GET", "/health").status == 200);
  const http_reply models = http(port, "GET", "/v1/models");
  REQUIRE(models.status == 200);
  CHECK(nlohmann::json::parse(models.body)["data"][0]["max_model_len"] == 1024);
  const http_reply c = http(port, "POST", "/v1/completions",
                            R"({"prompt":"A day for","max_tokens":8,"temperature":0,"ignore_eos":true,"unknown_field":[1,2]})");
  REQUIRE_MESSAGE(c.status == 200, c.body);
  const auto cj = nlohmann::json::parse(c.body);
  CHECK(cj["usage"]["completion_tokens"] == 8);
  CHECK(cj["choices"][0]["finish_reason"] == "length");
  const http_reply chat = http(port, "POST", "/v1/chat/completions",
                               R"({"messages":[{"role":"user","content":"Tell me a fortune."}],"max_tokens":8,"stream":true,"stream_options":{"include_usage":true}})");
  REQUIRE(chat.status == 200);
  CHECK(chat.body.rfind("data: ", 0) == 0);
  CHECK(chat.body.find("data: [DONE]") != std::string::npos);
  CHECK(chat.body.find("\"usage\":{\"prompt_tokens\"") != std::string::npos);
  const http_reply tok = http(port, "POST", "/tokenize", R"({"prompt":"A day for"})");
  REQUIRE(tok.status == 200);
  CHECK(nlohmann::json::parse(tok.body)["tokens"] == nlohmann::json::array({35, 788, 341}));
  const http_reply detok = http(port, "POST", "/detokenize", R"({"tokens":[35,788,341]})");
  REQUIRE(detok.status == 200);
  CHECK(nlohmann::json::parse(detok.body)["prompt"] == "A day for");
  const http_reply metrics = http(port, "GET", "/metrics");
  REQUIRE(metrics.status == 200);
  for (const char* name : {"troupe:num_requests_running", "troupe:num_requests_waiting", "troupe:kv_cache_usage_perc",
                           "troupe:prompt_tokens_total", "troupe:generation_tokens_total",
                           "troupe:time_to_first_token_seconds_bucket", "troupe:inter_token_latency_seconds_bucket",
                           "troupe:e2e_request_latency_seconds_bucket"})
    CHECK_MESSAGE(metrics.body.find(name) != std::string::npos, name);
}

TEST_CASE("serve: bad input gets OpenAI-shaped errors and the server keeps serving") {
  const int port = the_server().port;
  expect_error(http(port, "POST", "/v1/completions", R"({"prompt": "x", "max_tokens": )"), 400, nullptr);
  expect_error(http(port, "POST", "/v1/completions", "{not json"), 400, nullptr);
  expect_error(http(port, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":"ten"})"), 400, "max_tokens");
  expect_error(http(port, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":-5})"), 400, "max_tokens");
  expect_error(http(port, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":100000000})"), 400, "max_tokens");
  expect_error(http(port, "POST", "/v1/completions", R"({"prompt":"x","temperature":-0.5})"), 400, "temperature");
  expect_error(http(port, "POST", "/v1/completions", R"({"prompt":"x","top_p":1.5})"), 400, "top_p");
  expect_error(http(port, "POST", "/v1/completions", R"({"prompt":"x","n":1000})"), 400, "n");
  expect_error(http(port, "POST", "/v1/chat/completions", R"({"messages":[]})"), 400, "messages");
  expect_error(http(port, "POST", "/v1/completions", R"({"model":"gpt-9","prompt":"x"})"), 404, "model");
  expect_error(http(port, "POST", "/v1/completions", R"({"prompt":"x","stop":["a","b","c","d","e"]})"), 400, "stop");
  std::string long_prompt = R"({"prompt":")";
  for (int i = 0; i < 1500; ++i) long_prompt += "day ";
  expect_error(http(port, "POST", "/v1/completions", long_prompt + R"("})"), 400, "prompt");
  const http_reply huge = http(port, "POST", "/v1/completions", R"({"prompt":")" + std::string(2u << 20, 'a') + R"("})");
  CHECK(huge.status == 413);
  expect_error(http(port, "GET", "/v1/nothing-here"), 404, nullptr);
  CHECK(http(port, "GET", "/health").status == 200);
}

TEST_CASE("serve: admin state, live chunked-prefill size, drain and undrain") {
  const int port = the_server().port;
  CHECK(http(port, "GET", "/admin/state").status == 401);
  CHECK(http(port, "GET", "/admin/state", "", "wrong").status == 401);
  const auto st = admin_state(port);
  CHECK(st["status"] == "ready");
  CHECK(st["kv_pages_total"].get<int64_t>() > 0);
  const http_reply set = http(port, "POST", "/admin/chunked-prefill", R"({"size": 64})", "admin-secret");
  REQUIRE(set.status == 200);
  CHECK(admin_state(port)["chunked_prefill_size"] == 64);
  expect_error(http(port, "POST", "/admin/chunked-prefill", R"({"size": 0})", "admin-secret"), 400, "size");
  REQUIRE(http(port, "POST", "/admin/drain", "", "admin-secret").status == 200);
  CHECK(http(port, "GET", "/health").status == 503);
  const http_reply rejected = http(port, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":2})");
  CHECK(rejected.status >= 500);
  REQUIRE(http(port, "POST", "/admin/undrain", "", "admin-secret").status == 200);
  CHECK(http(port, "GET", "/health").status == 200);
  CHECK(http(port, "POST", "/v1/completions", R"({"prompt":"x","max_tokens":2})").status == 200);
}

TEST_CASE("serve: a client that disconnects mid-stream frees its KV pages") {
  const int port = the_server().port;
  const int64_t total = admin_state(port)["kv_pages_total"].get<int64_t>();
  const int fd = connect_to("127.0.0.1", port);
  REQUIRE(fd >= 0);
  send_all(fd, request_text("POST", "/v1/completions",
                            R"({"prompt":"A day for","max_tokens":900,"ignore_eos":true,"stream":true})"));
  char buf[4096];
  REQUIRE(::recv(fd, buf, sizeof buf, 0) > 0);  // headers (and maybe the first events) arrived
  bool busy = false;
  for (int i = 0; i < 200 && !busy; ++i) {
    busy = admin_state(port)["kv_pages_free"].get<int64_t>() < total;
    if (!busy) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(busy);
  ::close(fd);
  bool freed = false;
  for (int i = 0; i < 300 && !freed; ++i) {
    freed = admin_state(port)["kv_pages_free"].get<int64_t>() == total;
    if (!freed) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(freed);
  CHECK(admin_state(port)["running"] == 0);
}

namespace {

// A cluster.toml in `dir`.
std::string write_config(const scratch& dir, const std::string& name, const std::string& text) {
  const auto path = dir / name;
  std::ofstream(path) << text;
  return path.string();
}

const std::string two_instances = std::string(R"(
[[nodes]]
name = "solo"

[gateway]
port = 0
admin_key = "adm"
api_keys = ["key-one", "key-two"]
served_model_name = "fortunes"

[[instances]]
name = "alpha"
model = ")") + TROUPE_FIXTURES + R"(/../../models/demo"
[instances.tunables]
kv-cache-mib = 32
threads = 1

[[instances]]
name = "beta"
model = ")" + TROUPE_FIXTURES + R"(/../../models/demo"
[instances.tunables]
kv-cache-mib = 16
threads = 1
)";

int64_t prompt_tokens_of(const nlohmann::json& state, const std::string& name) {
  for (const auto& i : state["instances"])
    if (i["name"] == name) return i["prompt_tokens_total"].get<int64_t>();
  FAIL("no instance " << name);
  return -1;
}

}  // namespace

TEST_CASE("serve --config: two instances behind the router, API keys, per-instance drain") {
  const scratch cfg("serve", "cfg");
  server s({"--config", write_config(cfg, "two.toml", two_instances)}, "two");
  REQUIRE_MESSAGE(s.port != 0, s.log());
  const std::string body = R"({"model":"fortunes","prompt":"A day for","max_tokens":3})";
  CHECK(http(s.port, "POST", "/v1/completions", body).status == 401);
  CHECK(http(s.port, "POST", "/v1/completions", body, "key-two").status == 200);
  auto state = [&] {
    const http_reply r = http(s.port, "GET", "/admin/state", "", "adm");
    REQUIRE(r.status == 200);
    return nlohmann::json::parse(r.body);
  };
  nlohmann::json st = state();
  REQUIRE(st["instances"].size() == 2);
  CHECK(st["instances"][0]["name"] == "alpha");
  CHECK(st["instances"][1]["name"] == "beta");
  CHECK(st["instances"][0]["kv_pages_total"].get<int64_t>() > st["instances"][1]["kv_pages_total"].get<int64_t>());
  // Sequential requests see equal loads: the router alternates.
  for (int i = 0; i < 6; ++i) REQUIRE(http(s.port, "POST", "/v1/completions", body, "key-one").status == 200);
  st = state();
  CHECK(prompt_tokens_of(st, "alpha") > 0);
  CHECK(prompt_tokens_of(st, "beta") > 0);
  // Drain alpha only: everything goes to beta, /health stays 200.
  CHECK(http(s.port, "POST", "/admin/drain", R"({"instance":"gamma"})", "adm").status == 400);
  REQUIRE(http(s.port, "POST", "/admin/drain", R"({"instance":"alpha"})", "adm").status == 200);
  const int64_t alpha = prompt_tokens_of(state(), "alpha"), beta = prompt_tokens_of(state(), "beta");
  for (int i = 0; i < 4; ++i) REQUIRE(http(s.port, "POST", "/v1/completions", body, "key-one").status == 200);
  st = state();
  CHECK(prompt_tokens_of(st, "alpha") == alpha);
  CHECK(prompt_tokens_of(st, "beta") > beta);
  CHECK(http(s.port, "GET", "/health").status == 200);
  // The chunked-prefill size of one instance changes; the other keeps its own.
  REQUIRE(http(s.port, "POST", "/admin/chunked-prefill", R"({"instance":"beta","size":48})", "adm").status == 200);
  st = state();
  CHECK(st["instances"][1]["chunked_prefill_size"] == 48);
  CHECK(st["instances"][0]["chunked_prefill_size"] == 512);
  // Both drained: refused with 503 (retryable), not 500.
  REQUIRE(http(s.port, "POST", "/admin/drain", R"({"instance":"beta"})", "adm").status == 200);
  const http_reply refused = http(s.port, "POST", "/v1/completions", body, "key-one");
  CHECK(refused.status == 503);
  CHECK(http(s.port, "GET", "/health").status == 503);
  REQUIRE(http(s.port, "POST", "/admin/undrain", "", "adm").status == 200);
  CHECK(http(s.port, "POST", "/v1/completions", body, "key-one").status == 200);
}

TEST_CASE("serve --config: a bad config or a conflicting flag exits 1 naming file, line and key") {
  const scratch cfg("serve", "cfg");
  const std::string bad = write_config(cfg, "bad.toml", "[[nodes]]\nname = \"n\"\n\n[[instances]]\nname = \"a\"\n"
                                                   "model = \"m\"\n[instances.tunables]\nkv-cache-mb = 3\n");
  server s({"--config", bad}, "bad");
  CHECK(s.port == 0);
  CHECK(s.exit_status == 1);
  const std::string log = s.log();
  CHECK_MESSAGE(log.find(bad + ":8:15: instances.tunables.kv-cache-mb: unknown tunable") != std::string::npos, log);

  server c({"--config", write_config(cfg, "two.toml", two_instances), "--kv-cache-mib", "8"}, "conflict");
  CHECK(c.exit_status == 1);
  CHECK_MESSAGE(c.log().find("--kv-cache-mib conflicts with --config") != std::string::npos, c.log());

  server d({"--device", "cuda:0", "--port", "0"}, "device");
  CHECK(d.exit_status == 1);
  CHECK_MESSAGE(d.log().find("device 'cuda:0'") != std::string::npos, d.log());
}
