// Table and JSON output of the serving benchmark (see bench_report.hpp).
#include "actors/bench_report.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "config/errors.hpp"

namespace troupe {

namespace {

void banner(std::ostream& os, const std::string& title, char fill) {
  const size_t width = 50;
  const size_t pad = title.size() + 2 < width ? width - title.size() - 2 : 0;
  if (title.empty()) {
    os << std::string(width, fill) << '\n';
    return;
  }
  os << std::string(pad / 2, fill) << ' ' << title << ' ' << std::string(pad - pad / 2, fill) << '\n';
}

void row(std::ostream& os, const std::string& label, double v, int prec = 2) {
  os << fmt::format("{:<40}{:<10.{}f}\n", label, v, prec);
}
void row(std::ostream& os, const std::string& label, int64_t v) { os << fmt::format("{:<40}{:<10}\n", label, v); }

void latency_rows(std::ostream& os, const std::string& title, const std::string& name, const latency_summary& s) {
  banner(os, title, '-');
  row(os, "Mean " + name + " (ms):", s.mean * 1e3);
  row(os, "Median " + name + " (ms):", s.median * 1e3);
  row(os, "P90 " + name + " (ms):", s.p90 * 1e3);
  row(os, "P99 " + name + " (ms):", s.p99 * 1e3);
}

nlohmann::json summary_ms(const latency_summary& s) {
  return {{"count", s.count}, {"mean", s.mean * 1e3}, {"std", s.std * 1e3},   {"min", s.min * 1e3},
          {"median", s.median * 1e3}, {"p90", s.p90 * 1e3}, {"p99", s.p99 * 1e3}, {"max", s.max * 1e3}};
}

// JSON has no infinity: an infinite request rate is written as the string "inf" (as vLLM does).
nlohmann::json number_or_inf(double v) { return std::isinf(v) ? nlohmann::json("inf") : nlohmann::json(v); }

}  // namespace

void report_print(std::ostream& os, const bench_settings& s, const bench_metrics& m, const client_overhead& o,
                  const std::vector<error_count>& errors, const std::optional<gateway_overhead>& g) {
  banner(os, "Serving Benchmark Result", '=');
  row(os, "Successful requests:", m.completed);
  row(os, "Failed requests:", m.failed);
  row(os, "Peak concurrent requests:", m.max_concurrency_seen);
  row(os, "Benchmark duration (s):", m.duration_s);
  row(os, "Total input tokens:", m.total_input_tokens);
  row(os, "Total generated tokens:", m.total_output_tokens);
  row(os, "Request throughput (req/s):", m.request_throughput);
  if (m.request_goodput) row(os, "Request goodput (req/s):", *m.request_goodput);
  row(os, "Output token throughput (tok/s):", m.output_throughput);
  row(os, "Total token throughput (tok/s):", m.total_token_throughput);
  latency_rows(os, "Time to First Token", "TTFT", m.ttft_s);
  latency_rows(os, "Time per Output Token (excl. 1st token)", "TPOT", m.tpot_s);
  latency_rows(os, "Inter-token Latency", "ITL", m.itl_s);
  latency_rows(os, "End-to-end Latency", "E2EL", m.e2e_s);
  if (m.request_goodput) {
    banner(os, "Goodput (SLO " + s.slo + ")", '-');
    row(os, "Requests meeting the SLOs:", m.slo_met_requests);
    row(os, "SLO attainment (%):", m.completed + m.failed ? 100.0 * static_cast<double>(m.slo_met_requests) /
                                                               static_cast<double>(m.completed + m.failed)
                                                         : 0.0);
  }
  if (g) {
    banner(os, "Gateway overhead (server-reported)", '-');
    row(os, "Requests counted by the server:", g->requests);
    row(os, "Gateway overhead per request (ms):", g->mean_s * 1e3, 3);
    row(os, "Share of mean E2E (%):", m.e2e_s.mean > 0 ? 100 * g->mean_s / m.e2e_s.mean : 0.0, 2);
  }
  banner(os, "Client overhead", '-');
  row(os, "Client CPU (s):", o.cpu_s);
  row(os, "Client CPU (% of one core):", o.wall_s > 0 ? 100 * o.cpu_s / o.wall_s : 0.0, 1);
  row(os, "Dispatch lag mean (ms):", o.dispatch_lag_s.mean * 1e3, 3);
  row(os, "Dispatch lag max (ms):", o.dispatch_lag_s.max * 1e3, 3);
  row(os, "SSE parsing per event (us):", o.events ? o.event_handling_s * 1e6 / static_cast<double>(o.events) : 0.0);
  row(os, "Client CPU per event (us):", o.events ? o.cpu_s * 1e6 / static_cast<double>(o.events) : 0.0);
  row(os, "Connections opened:", o.connections_opened);
  row(os, "Connections reused:", o.connections_reused);
  banner(os, "", '=');
  if (!errors.empty()) {
    os << "Errors (requests: reason):\n";
    size_t shown = 0;
    for (const error_count& e : errors) {
      if (++shown > 8) {
        os << fmt::format("  ... and {} more reasons\n", errors.size() - 8);
        break;
      }
      os << fmt::format("  {:>6}: {}\n", e.count, e.message);
    }
  }
}

void report_print_probe(std::ostream& os, const overhead_probe& p) {
  banner(os, "Overhead probe (max_tokens=1, one at a time)", '=');
  row(os, "Requests to each server:", p.requests);
  os << fmt::format("{:<40}{} / {}\n", "Failed (echo / server):", p.echo_failed, p.server_failed);
  row(os, "Echo server median E2E (ms):", p.echo_s.median * 1e3, 3);
  row(os, "Echo server P99 E2E (ms):", p.echo_s.p99 * 1e3, 3);
  row(os, "Server median E2E (ms):", p.server_s.median * 1e3, 3);
  row(os, "Server P99 E2E (ms):", p.server_s.p99 * 1e3, 3);
  row(os, "Server minus floor, median (ms):", (p.server_s.median - p.echo_s.median) * 1e3, 3);
  if (p.gateway) {
    row(os, "Gateway overhead, server mean (ms):", p.gateway->mean_s * 1e3, 3);
    row(os, "Engine, by difference (ms):", (p.server_s.median - p.echo_s.median - p.gateway->mean_s) * 1e3, 3);
  }
  banner(os, "", '=');
  os << "Echo = client + HTTP + loopback floor (no model work). Server minus floor =\n"
        "time spent inside the server for a 1-token request: gateway + engine\n"
        "(prefill of the prompt and one step). The gateway's share is what the server\n"
        "reports in troupe:gateway_overhead_seconds (its E2E minus the scheduler's time).\n";
  for (const error_count& e : p.errors) os << fmt::format("  {:>6}: {}\n", e.count, e.message);
}

void report_write_json(const std::string& path, const bench_settings& s, const bench_metrics& m,
                       const client_overhead& o, const std::vector<error_count>& errors,
                       const std::optional<gateway_overhead>& g, const std::optional<overhead_probe>& probe,
                       const std::vector<request_record>& records) {
  nlohmann::json j;
  j["config"] = {{"url", s.url},
                 {"endpoint", s.endpoint},
                 {"model", s.model},
                 {"dataset", s.dataset},
                 {"num_prompts", s.num_prompts},
                 {"request_rate", number_or_inf(s.request_rate)},
                 {"burstiness", s.burstiness},
                 {"max_concurrency", s.max_concurrency},
                 {"random_input_len", s.random_input_len},
                 {"random_output_len", s.random_output_len},
                 {"random_range_ratio", s.random_range_ratio},
                 {"seed", s.seed},
                 {"ignore_eos", s.ignore_eos},
                 {"slo", s.slo},
                 {"client_threads", s.client_threads},
                 {"keep_alive", s.keep_alive}};
  j["completed"] = m.completed;
  j["failed"] = m.failed;
  j["duration"] = m.duration_s;
  j["total_input_tokens"] = m.total_input_tokens;
  j["total_output_tokens"] = m.total_output_tokens;
  j["request_throughput"] = m.request_throughput;
  j["request_goodput"] = m.request_goodput ? nlohmann::json(*m.request_goodput) : nlohmann::json(nullptr);
  j["slo_met_requests"] = m.slo_met_requests;
  j["output_throughput"] = m.output_throughput;
  j["total_token_throughput"] = m.total_token_throughput;
  j["max_concurrency_seen"] = m.max_concurrency_seen;
  // vLLM's flat key names, milliseconds.
  const std::pair<const char*, const latency_summary*> lat[] = {
      {"ttft", &m.ttft_s}, {"tpot", &m.tpot_s}, {"itl", &m.itl_s}, {"e2el", &m.e2e_s}};
  for (const auto& [name, sum] : lat) {
    const nlohmann::json ms = summary_ms(*sum);
    j[name] = ms;
    for (const char* k : {"mean", "median", "std", "p90", "p99"}) j[fmt::format("{}_{}_ms", k, name)] = ms[k];
  }
  j["client_overhead"] = {{"wall_s", o.wall_s},
                          {"cpu_s", o.cpu_s},
                          {"cpu_fraction_of_one_core", o.wall_s > 0 ? o.cpu_s / o.wall_s : 0.0},
                          {"dispatch_lag_ms", summary_ms(o.dispatch_lag_s)},
                          {"sse_events", o.events},
                          {"sse_handling_us_per_event",
                           o.events ? o.event_handling_s * 1e6 / static_cast<double>(o.events) : 0.0},
                          {"cpu_us_per_event", o.events ? o.cpu_s * 1e6 / static_cast<double>(o.events) : 0.0},
                          {"connections_opened", o.connections_opened},
                          {"connections_reused", o.connections_reused}};
  auto gateway_json = [](const std::optional<gateway_overhead>& x) {
    return x ? nlohmann::json{{"requests", x->requests}, {"mean_ms", x->mean_s * 1e3}} : nlohmann::json(nullptr);
  };
  j["gateway_overhead"] = gateway_json(g);
  nlohmann::json errs = nlohmann::json::array();
  for (const error_count& e : errors) errs.push_back({{"message", e.message}, {"count", e.count}});
  j["errors"] = std::move(errs);
  if (probe) {
    nlohmann::json perr = nlohmann::json::array();
    for (const error_count& e : probe->errors) perr.push_back({{"message", e.message}, {"count", e.count}});
    j["overhead_probe"] = {{"requests", probe->requests},
                           {"echo_e2e_ms", summary_ms(probe->echo_s)},
                           {"server_e2e_ms", summary_ms(probe->server_s)},
                           {"server_minus_floor_median_ms", (probe->server_s.median - probe->echo_s.median) * 1e3},
                           {"gateway_overhead", gateway_json(probe->gateway)},
                           {"echo_failed", probe->echo_failed},
                           {"server_failed", probe->server_failed},
                           {"errors", std::move(perr)}};
  }
  nlohmann::json reqs = nlohmann::json::array();
  for (const request_record& r : records) {
    nlohmann::json itl = nlohmann::json::array();
    for (double v : r.itl_s) itl.push_back(v * 1e3);
    const auto tpot = request_tpot_s(r);
    reqs.push_back({{"success", r.success},
                    {"http_status", r.http_status},
                    {"error", r.error},
                    {"scheduled_s", r.scheduled_s},
                    {"start_s", r.start_s},
                    {"ttft_ms", r.ttft_s * 1e3},
                    {"tpot_ms", tpot ? nlohmann::json(*tpot * 1e3) : nlohmann::json(nullptr)},
                    {"e2el_ms", r.e2e_s * 1e3},
                    {"complete_ms", r.complete_s * 1e3},
                    {"itl_ms", std::move(itl)},
                    {"prompt_tokens", r.prompt_tokens},
                    {"output_tokens", r.output_tokens},
                    {"max_tokens", r.max_tokens},
                    {"token_chunks", r.token_chunks},
                    {"usage_reported", r.usage_reported}});
  }
  j["requests"] = std::move(reqs);
  std::ofstream f(path);
  if (!f) throw error(errc::errc_io, path + ": cannot open for writing: " + std::strerror(errno));
  f << j.dump(1) << '\n';
  if (!f) throw error(errc::errc_io, path + ": write failed");
}

}  // namespace troupe
