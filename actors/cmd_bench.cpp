// `troupe bench serve`: the serving benchmark, like `vllm bench serve`, against
// any OpenAI-compatible HTTP server. This file is the command line and the
// order of steps (discover the model, build the workload, run, report, plot,
// probe the overhead); the parts live in bench_workload, bench_serve (the
// client), bench_stats, bench_report, bench_plot and bench_echo.
#include <CLI/CLI.hpp>

#include <sys/resource.h>

#include <cmath>
#include <iostream>
#include <sstream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "actors/bench_echo.hpp"
#include "actors/bench_plot.hpp"
#include "actors/bench_report.hpp"
#include "actors/bench_serve.hpp"
#include "actors/bench_workload.hpp"
#include "config/errors.hpp"

namespace troupe {

namespace {

struct bench_opts {
  std::string url = "http://127.0.0.1:8000", model, endpoint = "/v1/completions", dataset, slo, api_key;
  std::string result_json, plot;
  size_t num_prompts = 1000;
  double request_rate = std::numeric_limits<double>::infinity(), burstiness = 1.0;
  int64_t max_concurrency = 0;
  random_shape shape;
  uint64_t seed = 0;
  bool ignore_eos = true;
  std::optional<double> temperature;
  int client_threads = 1;
  double timeout_s = 3600;
  bool no_keep_alive = false, measure_overhead = false;
  size_t overhead_requests = 50;
  CLI::Option *num_prompts_opt = nullptr, *ignore_eos_opt = nullptr;
};

// Lets thousands of sockets open: the soft descriptor limit up to the hard one.
void raise_fd_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// The first model of GET /v1/models and its max_model_len (0 when not reported).
std::pair<std::string, int64_t> discover_model(const bench_opts& o, const http_target& t) {
  const http_reply r = http_exchange(t, "GET", "/v1/models", "", o.api_key, 30);
  if (r.status != 200)
    throw error(errc::errc_invalid_argument,
                "cannot list the server's models (" +
                    (r.status ? "GET /v1/models: HTTP " + std::to_string(r.status) : r.error) + "); pass --model");
  nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].contains("id") || !j["data"][0]["id"].is_string())
    throw error(errc::errc_invalid_argument, "GET /v1/models returned no model; pass --model");
  const nlohmann::json& m = j["data"][0];
  const int64_t max_len = m.contains("max_model_len") && m["max_model_len"].is_number_integer()
                              ? m["max_model_len"].get<int64_t>() : 0;
  return {m["id"].get<std::string>(), max_len};
}

// Tokens per word of the random-text word list, asked from the server's /tokenize; 1 when it cannot say.
double calibrate_tokens_per_word(const bench_opts& o, const http_target& t, const std::string& model) {
  const size_t words = 200;
  nlohmann::json body = {{"model", model}, {"prompt", workload_sample_text(words, o.seed)}, {"add_special_tokens", false}};
  const http_reply r = http_exchange(t, "POST", "/tokenize", body.dump(), o.api_key, 30);
  nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
  if (r.status == 200 && !j.is_discarded() && j.contains("count") && j["count"].is_number() && j["count"].get<double>() > 0)
    return j["count"].get<double>() / words;
  std::cerr << "bench serve: /tokenize unavailable (" << (r.status ? "HTTP " + std::to_string(r.status) : r.error)
            << "); assuming 1 token per word for text prompts\n";
  return 1.0;
}

std::vector<client_request> build_requests(const std::vector<workload_item>& items, const body_options& b,
                                           std::optional<int64_t> max_tokens) {
  std::vector<client_request> reqs;
  reqs.reserve(items.size());
  for (const workload_item& w : items) {
    const int64_t mt = max_tokens ? *max_tokens : w.output_len;
    reqs.push_back({request_body(w, b, mt), w.prompt_len, mt});
  }
  return reqs;
}

// The server's troupe:gateway_overhead_seconds sum and count, or nullopt.
std::optional<std::pair<double, double>> scrape_overhead(const bench_opts& o, const http_target& t) {
  const http_reply r = http_exchange(t, "GET", "/metrics", "", o.api_key, 30);
  if (r.status != 200) return std::nullopt;
  std::optional<double> sum, count;
  std::istringstream in(r.body);
  for (std::string line; std::getline(in, line);) {
    auto value = [&](const char* name) -> std::optional<double> {
      const std::string prefix = std::string(name) + " ";
      if (line.rfind(prefix, 0) != 0) return std::nullopt;
      try {
        return std::stod(line.substr(prefix.size()));
      } catch (const std::exception&) {
        return std::nullopt;
      }
    };
    if (auto v = value("troupe:gateway_overhead_seconds_sum")) sum = v;
    if (auto v = value("troupe:gateway_overhead_seconds_count")) count = v;
  }
  if (!sum || !count) return std::nullopt;
  return std::make_pair(*sum, *count);
}

// The gateway overhead over a run from two scrapes.
std::optional<gateway_overhead> overhead_between(const std::optional<std::pair<double, double>>& a,
                                                 const std::optional<std::pair<double, double>>& b) {
  if (!a || !b || b->second <= a->second) return std::nullopt;
  gateway_overhead g;
  g.requests = static_cast<int64_t>(b->second - a->second);
  g.mean_s = (b->first - a->first) / (b->second - a->second);
  return g;
}

// --measure-overhead: the same 1-token requests, one at a time, to the echo
// server and to the server; the first request of each warms the connection and is dropped.
overhead_probe run_probe(const bench_opts& o, client_options copts, const std::vector<workload_item>& items,
                         const body_options& b) {
  overhead_probe p;
  std::vector<workload_item> probe_items;
  for (size_t i = 0; i <= o.overhead_requests; ++i) probe_items.push_back(items[i % items.size()]);
  const std::vector<client_request> reqs = build_requests(probe_items, b, 1);
  const std::vector<double> arrivals(reqs.size(), 0.0);
  copts.max_concurrency = 1;
  p.requests = static_cast<int64_t>(o.overhead_requests);
  std::vector<request_record> all;
  auto measure = [&](const client_options& c, int64_t& failed) {
    client_run run = client_run_requests(c, reqs, arrivals);
    std::vector<double> e2e;
    for (size_t i = 1; i < run.records.size(); ++i) {
      const request_record& r = run.records[i];
      if (r.success) e2e.push_back(r.complete_s);
      else ++failed;
      all.push_back(r);
    }
    return summarize(std::move(e2e));
  };
  {
    echo_server echo(echo_options{});
    client_options e = copts;
    e.target = http_target{"127.0.0.1", std::to_string(echo.port()), ""};
    p.echo_s = measure(e, p.echo_failed);
  }
  const auto before = scrape_overhead(o, copts.target);
  p.server_s = measure(copts, p.server_failed);
  p.gateway = overhead_between(before, scrape_overhead(o, copts.target));
  p.errors = error_summary(all);
  return p;
}

int run_serve(bench_opts& o) {
  raise_fd_limit();
  const http_target target = http_target::parse(o.url);
  slo_spec slo;
  if (!o.slo.empty()) slo = slo_parse(o.slo);
  if (o.client_threads < 1 || o.client_threads > 64) throw error(errc::errc_invalid_argument, "--client-threads must be in [1, 64]");
  if (!(o.timeout_s > 0)) throw error(errc::errc_invalid_argument, "--request-timeout must be > 0");
  if (o.endpoint.empty() || o.endpoint.front() != '/') o.endpoint = "/" + o.endpoint;
  const api_kind api = o.endpoint.find("chat/completions") != std::string::npos ? api_kind::api_chat
                                                                                 : api_kind::api_completions;
  int64_t max_model_len = 0;
  if (o.model.empty()) std::tie(o.model, max_model_len) = discover_model(o, target);

  const bool random = o.dataset.empty();
  std::vector<workload_item> items;
  if (!random) {
    items = workload_load_jsonl(o.dataset, o.num_prompts_opt->count() ? o.num_prompts : 0, o.shape.output_len);
  } else if (api == api_kind::api_chat) {
    items = workload_random_text(o.shape, o.num_prompts, o.seed, calibrate_tokens_per_word(o, target, o.model));
  } else {
    items = workload_random_ids(o.shape, o.num_prompts, o.seed);
  }
  if (items.empty()) throw error(errc::errc_invalid_argument, "--num-prompts must be >= 1");
  if (random && max_model_len > 0) {
    const double longest = (o.shape.input_len + o.shape.output_len) * (1 + o.shape.range_ratio);
    if (longest > static_cast<double>(max_model_len))
      std::cerr << fmt::format("bench serve: warning: prompts of up to {:.0f} tokens with their outputs exceed "
                               "the model's max_model_len {}; expect HTTP 400s\n", longest, max_model_len);
  }
  const bool ignore_eos = o.ignore_eos_opt->count() ? o.ignore_eos : random;
  const body_options body{o.model, api, ignore_eos, o.temperature};
  std::vector<client_request> reqs;
  try {
    reqs = build_requests(items, body, std::nullopt);
  } catch (const error& e) {
    throw error(e.code(), (random ? std::string() : "--dataset " + o.dataset + ": ") + e.what());
  }
  const std::vector<double> arrivals = arrivals_plan(reqs.size(), o.request_rate, o.burstiness, o.seed);

  client_options copts;
  copts.target = target;
  copts.path = o.endpoint;
  copts.api = api;
  copts.api_key = o.api_key;
  copts.threads = o.client_threads;
  copts.max_concurrency = o.max_concurrency;
  copts.timeout_s = o.timeout_s;
  copts.keep_alive = !o.no_keep_alive;

  bench_settings s{target.url(), o.endpoint, o.model, random ? "random" : o.dataset, reqs.size(), o.request_rate,
                   o.burstiness, o.max_concurrency, o.shape.input_len, o.shape.output_len, o.shape.range_ratio,
                   o.seed, ignore_eos, o.slo, o.client_threads, copts.keep_alive};
  std::cout << fmt::format("bench serve: {} requests to {}{} (model {})\n", reqs.size(), s.url, o.endpoint, o.model)
            << fmt::format("Traffic request rate: {}\n", std::isinf(o.request_rate) ? std::string("inf")
                                                                                    : fmt::format("{}", o.request_rate))
            << fmt::format("Burstiness factor: {}{}\n", o.burstiness, o.burstiness == 1 ? " (Poisson process)" : " (gamma)")
            << fmt::format("Maximum request concurrency: {}\n",
                           o.max_concurrency > 0 ? std::to_string(o.max_concurrency) : std::string("None"))
            << std::flush;

  const auto scrape0 = scrape_overhead(o, target);
  const client_run run = client_run_requests(copts, reqs, arrivals);
  const std::optional<gateway_overhead> gw = overhead_between(scrape0, scrape_overhead(o, target));
  const bench_metrics m = metrics_compute(run.records, run.duration_s, slo);
  const std::vector<error_count> errors = error_summary(run.records);
  report_print(std::cout, s, m, run.overhead, errors, gw);

  std::optional<overhead_probe> probe;
  if (o.measure_overhead) {
    probe = run_probe(o, copts, items, body);
    report_print_probe(std::cout, *probe);
  }
  if (!o.result_json.empty()) {
    report_write_json(o.result_json, s, m, run.overhead, errors, gw, probe, run.records);
    std::cout << "JSON written: " << o.result_json << '\n';
  }
  if (!o.plot.empty()) {
    const plot_outcome p = plot_latencies(o.plot, run.records,
                                          fmt::format("{} — {} requests, rate {}, concurrency {}", o.model, reqs.size(),
                                                      std::isinf(o.request_rate) ? std::string("inf") : fmt::format("{}", o.request_rate),
                                                      o.max_concurrency > 0 ? std::to_string(o.max_concurrency) : std::string("unlimited")));
    std::cout << p.message << '\n';
  }
  return m.failed == 0 ? 0 : 1;
}

}  // namespace

command command_bench(CLI::App& app) {
  auto o = std::make_shared<bench_opts>();
  CLI::App* bench = app.add_subcommand("bench", "benchmarks against a running server");
  bench->require_subcommand(1);
  CLI::App* c = bench->add_subcommand(
      "serve",
      "serving benchmark against an OpenAI-compatible server, like `vllm bench serve`: streaming requests at a "
      "rate or a concurrency; TTFT, TPOT, ITL, E2E latency, throughput, goodput; exits 1 when any request failed");
  c->add_option("--url", o->url, "server root, http://HOST:PORT")->capture_default_str();
  c->add_option("--model", o->model, "model name (default: the first of GET /v1/models)");
  c->add_option("--endpoint", o->endpoint, "/v1/completions or /v1/chat/completions")->capture_default_str();
  o->num_prompts_opt = c->add_option("--num-prompts", o->num_prompts, "requests to send (with --dataset: default all lines)")
                           ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{10000000}));
  c->add_option("--request-rate", o->request_rate, "requests per second (inf = all at once)")->capture_default_str();
  c->add_option("--burstiness", o->burstiness, "gamma shape of arrival gaps (1 = Poisson; < 1 burstier)")->capture_default_str();
  c->add_option("--max-concurrency", o->max_concurrency, "requests in flight at most (0 = no limit)")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  c->add_option("--random-input-len", o->shape.input_len, "random prompts: tokens per prompt")->capture_default_str();
  c->add_option("--random-output-len", o->shape.output_len, "random prompts (and dataset lines without output_len): max_tokens")
      ->capture_default_str();
  c->add_option("--random-range-ratio", o->shape.range_ratio, "lengths uniform in [len*(1-r), len*(1+r)]")->capture_default_str();
  c->add_option("--vocab-size", o->shape.vocab_size, "random token ids are drawn from [100, vocab-size)")->capture_default_str();
  c->add_option("--dataset", o->dataset, "JSONL, one {\"prompt\": text|ids|messages, \"output_len\": n} per line")
      ->check(CLI::ExistingFile);
  c->add_option("--seed", o->seed, "seed of prompts and arrivals")->capture_default_str();
  c->add_option("--slo", o->slo, "goodput objectives, e.g. ttft=500,tpot=50 (ms; keys ttft, tpot, e2e)");
  c->add_option("--api-key", o->api_key, "sent as Authorization: Bearer KEY");
  c->add_option("--result-json", o->result_json, "write every number and per-request record here");
  c->add_option("--plot", o->plot, "write a PNG of the latency histograms here (needs gnuplot)");
  o->ignore_eos_opt = c->add_flag("--ignore-eos,!--no-ignore-eos", o->ignore_eos,
                                  "send ignore_eos (default: on for random prompts, off for --dataset)");
  c->add_option("--temperature", o->temperature, "sampling temperature (default: the server's)");
  c->add_option("--client-threads", o->client_threads, "threads of the client's event loop")->capture_default_str();
  c->add_option("--request-timeout", o->timeout_s, "seconds a request may take in all")->capture_default_str();
  c->add_flag("--no-keep-alive", o->no_keep_alive, "one connection per request instead of a keep-alive pool");
  c->add_flag("--measure-overhead", o->measure_overhead,
              "afterwards, time 1-token requests one at a time against the server and against a built-in echo SSE "
              "server: the difference is the server's own time per request");
  c->add_option("--overhead-requests", o->overhead_requests, "requests per server for --measure-overhead")
      ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{100000}));
  return {bench, [o, c] { return *c ? run_serve(*o) : 0; }};
}

}  // namespace troupe
