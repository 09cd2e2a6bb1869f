// The Prometheus registry: exact exposition text, concurrency, bad names.
#include "actors/prometheus.hpp"
#include "actors/constant_time.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "config/errors.hpp"

using troupe::prometheus_registry;

TEST_CASE("prometheus: counters, gauges and histograms render in text format 0.0.4") {
  prometheus_registry reg;
  auto& req = reg.counter("troupe:request_success_total", "Finished requests.", {{"model_name", "demo"}});
  auto& running = reg.gauge("troupe:num_requests_running", "Requests in the running batch.", {{"model_name", "demo"}});
  auto& ttft = reg.histogram("troupe:time_to_first_token_seconds", "Time to first token.", {0.01, 0.1, 1},
                             {{"model_name", "demo"}});
  req.inc();
  req.inc(2);
  req.inc(-5);  // ignored: counters never decrease
  running.set(3);
  running.dec();
  ttft.observe(0.005);
  ttft.observe(0.1);  // on a bound: counted in that bucket (le means <=)
  ttft.observe(0.5);
  ttft.observe(7);
  // the same name and labels give the same series; other labels another series of the family
  CHECK(&reg.counter("troupe:request_success_total", "Finished requests.", {{"model_name", "demo"}}) == &req);
  reg.counter("troupe:request_success_total", "Finished requests.", {{"model_name", "x\"y\\z\n"}}).inc(0.5);
  reg.gauge("troupe:kv_usage", "Line one\nline \\ two").set(0.25);
  CHECK(reg.render() ==
        "# HELP troupe:request_success_total Finished requests.\n"
        "# TYPE troupe:request_success_total counter\n"
        "troupe:request_success_total{model_name=\"demo\"} 3\n"
        "troupe:request_success_total{model_name=\"x\\\"y\\\\z\\n\"} 0.5\n"
        "# HELP troupe:num_requests_running Requests in the running batch.\n"
        "# TYPE troupe:num_requests_running gauge\n"
        "troupe:num_requests_running{model_name=\"demo\"} 2\n"
        "# HELP troupe:time_to_first_token_seconds Time to first token.\n"
        "# TYPE troupe:time_to_first_token_seconds histogram\n"
        "troupe:time_to_first_token_seconds_bucket{model_name=\"demo\",le=\"0.01\"} 1\n"
        "troupe:time_to_first_token_seconds_bucket{model_name=\"demo\",le=\"0.1\"} 2\n"
        "troupe:time_to_first_token_seconds_bucket{model_name=\"demo\",le=\"1\"} 3\n"
        "troupe:time_to_first_token_seconds_bucket{model_name=\"demo\",le=\"+Inf\"} 4\n"
        "troupe:time_to_first_token_seconds_sum{model_name=\"demo\"} 7.605\n"
        "troupe:time_to_first_token_seconds_count{model_name=\"demo\"} 4\n"
        "# HELP troupe:kv_usage Line one\\nline \\\\ two\n"
        "# TYPE troupe:kv_usage gauge\n"
        "troupe:kv_usage 0.25\n");
  CHECK(std::string(prometheus_registry::content_type).find("version=0.0.4") != std::string::npos);
}

TEST_CASE("prometheus: special values and an empty histogram") {
  prometheus_registry reg;
  reg.gauge("g_inf", "h").set(INFINITY);
  reg.gauge("g_nan", "h").set(NAN);
  reg.histogram("h_empty", "h", {1});
  CHECK(reg.render() ==
        "# HELP g_inf h\n# TYPE g_inf gauge\ng_inf +Inf\n"
        "# HELP g_nan h\n# TYPE g_nan gauge\ng_nan NaN\n"
        "# HELP h_empty h\n# TYPE h_empty histogram\n"
        "h_empty_bucket{le=\"1\"} 0\nh_empty_bucket{le=\"+Inf\"} 0\nh_empty_sum 0\nh_empty_count 0\n");
}

TEST_CASE("prometheus: updates from many threads are all counted") {
  prometheus_registry reg;
  auto& c = reg.counter("c_total", "c");
  auto& g = reg.gauge("g", "g");
  auto& h = reg.histogram("h", "h", {0.5});
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.inc();
        g.inc();
        g.dec(0.5);
        h.observe(i % 2 ? 1.0 : 0.25);
        if (i % 1000 == 0) (void)reg.render();
      }
    });
  for (auto& t : ts) t.join();
  CHECK(c.value() == 80000);
  CHECK(g.value() == 40000);
  CHECK(h.count() == 80000);
  CHECK(h.cumulative() == std::vector<uint64_t>{40000, 80000});
  CHECK(h.sum() == doctest::Approx(50000.0));
}

TEST_CASE("prometheus: invalid names, type clashes and bad bounds are refused") {
  prometheus_registry reg;
  CHECK_THROWS_AS(reg.counter("1abc", "h"), troupe::error);
  CHECK_THROWS_AS(reg.counter("a-b", "h"), troupe::error);
  CHECK_THROWS_AS(reg.counter("ok", "h", {{"bad-label", "v"}}), troupe::error);
  CHECK_THROWS_AS(reg.counter("ok", "h", {{"__reserved", "v"}}), troupe::error);
  CHECK_THROWS_AS(reg.histogram("hist", "h", {1}, {{"le", "v"}}), troupe::error);
  reg.counter("x", "help");
  CHECK_THROWS_AS(reg.gauge("x", "help"), troupe::error);
  CHECK_THROWS_AS(reg.counter("x", "other help"), troupe::error);
  CHECK_THROWS_AS(reg.histogram("h", "h", {1, 1}), troupe::error);
  CHECK_THROWS_AS(reg.histogram("h", "h", {2, 1}), troupe::error);
  CHECK_THROWS_AS(reg.histogram("h", "h", {1, INFINITY}), troupe::error);
  reg.histogram("h", "h", {1, 2});
  CHECK_THROWS_AS(reg.histogram("h", "h", {1, 3}, {{"a", "b"}}), troupe::error);
}

TEST_CASE("constant_time: equality and bearer tokens") {
  using troupe::bearer_token;
  using troupe::constant_time_equal;
  CHECK(constant_time_equal("sk-secret", "sk-secret"));
  CHECK(!constant_time_equal("sk-secreT", "sk-secret"));
  CHECK(!constant_time_equal("sk-secre", "sk-secret"));
  CHECK(!constant_time_equal("sk-secrett", "sk-secret"));
  CHECK(!constant_time_equal("", "sk-secret"));
  CHECK(!constant_time_equal("x", ""));
  CHECK(constant_time_equal("", ""));
  // a presented key that repeats the expected one cyclically is still wrong
  CHECK(!constant_time_equal("abab", "ab"));
  CHECK(bearer_token("Bearer sk-1") == "sk-1");
  CHECK(bearer_token("  bearer   sk-1  ") == "sk-1");
  CHECK(bearer_token("BEARER\tsk-1") == "sk-1");
  CHECK(bearer_token("Basic dXNlcjpwYXNz").empty());
  CHECK(bearer_token("Bearer").empty());
  CHECK(bearer_token("Bearersk-1").empty());
  CHECK(bearer_token("").empty());
}
