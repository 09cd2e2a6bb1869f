// Benchmark statistics on hand-made records: every expected value is worked
// out by hand (or with numpy's definitions) so a wrong formula cannot pass.
#include "actors/bench_plot.hpp"
#include "actors/bench_stats.hpp"

#include <doctest/doctest.h>

#include <cmath>

#include "config/errors.hpp"

using namespace troupe;

namespace {

request_record ok(double ttft, double e2e, int64_t out, std::vector<double> itl = {}, int64_t prompt = 10) {
  request_record r;
  r.success = true;
  r.http_status = 200;
  r.ttft_s = ttft;
  r.e2e_s = e2e;
  r.complete_s = e2e;
  r.output_tokens = out;
  r.prompt_tokens = prompt;
  r.itl_s = std::move(itl);
  return r;
}

}  // namespace

TEST_CASE("bench_stats: percentiles interpolate linearly between order statistics (numpy default)") {
  const std::vector<double> v{1, 2, 3, 4};
  CHECK(percentile_sorted(v, 0) == 1);
  CHECK(percentile_sorted(v, 100) == 4);
  CHECK(percentile_sorted(v, 50) == doctest::Approx(2.5));
  CHECK(percentile_sorted(v, 90) == doctest::Approx(3.7));   // rank 2.7
  CHECK(percentile_sorted(v, 99) == doctest::Approx(3.97));  // rank 2.97
  CHECK(percentile_sorted({7}, 99) == 7);
  CHECK(percentile_sorted({}, 50) == 0);

  const latency_summary s = summarize({4, 1, 3, 2, 10});
  CHECK(s.count == 5);
  CHECK(s.mean == doctest::Approx(4.0));
  CHECK(s.std == doctest::Approx(std::sqrt((0 + 9 + 1 + 4 + 36) / 5.0)));
  CHECK(s.min == 1);
  CHECK(s.max == 10);
  CHECK(s.median == 3);
  CHECK(s.p90 == doctest::Approx(7.6));   // rank 3.6 between 4 and 10
  CHECK(s.p99 == doctest::Approx(9.76));  // rank 3.96
  CHECK(summarize({}).count == 0);
}

TEST_CASE("bench_stats: TPOT is (E2E - TTFT) / (output tokens - 1), absent for one token") {
  CHECK(*request_tpot_s(ok(0.1, 1.0, 10)) == doctest::Approx(0.1));
  CHECK(*request_tpot_s(ok(0.5, 0.7, 2)) == doctest::Approx(0.2));
  CHECK_FALSE(request_tpot_s(ok(0.1, 0.1, 1)).has_value());
  CHECK_FALSE(request_tpot_s(ok(0.1, 0.1, 0)).has_value());
}

TEST_CASE("bench_stats: metrics of a hand-made run (throughput, latencies, goodput)") {
  // Dyadic times so every expected value is exact in binary floating point.
  std::vector<request_record> rs;
  rs.push_back(ok(0.125, 0.625, 5, std::vector<double>(4, 0.125), 10));  // TPOT 0.5 / 4 = 0.125
  rs.push_back(ok(0.250, 1.250, 9, std::vector<double>(8, 0.125), 20));  // TPOT 1.0 / 8 = 0.125
  rs.push_back(ok(0.375, 0.375, 1, {}, 30));                              // one token: no TPOT
  request_record bad;
  bad.error = "HTTP 500: boom";
  bad.http_status = 500;
  bad.prompt_tokens = 99;
  bad.output_tokens = 7;
  rs.push_back(bad);
  rs[0].start_s = 0.0;   // 0.0 .. 0.625
  rs[1].start_s = 0.25;  // 0.25 .. 1.5
  rs[2].start_s = 0.5;   // 0.5 .. 0.875: three in flight at 0.5
  rs[3].start_s = 2.0;

  const bench_metrics m = metrics_compute(rs, 2.0, slo_parse("ttft=250,tpot=125"));
  CHECK(m.completed == 3);
  CHECK(m.failed == 1);
  CHECK(m.total_input_tokens == 60);  // the failed request's tokens are not counted
  CHECK(m.total_output_tokens == 15);
  CHECK(m.request_throughput == 1.5);
  CHECK(m.output_throughput == 7.5);
  CHECK(m.total_token_throughput == 37.5);
  CHECK(m.ttft_s.mean == 0.25);
  CHECK(m.ttft_s.median == 0.25);
  CHECK(m.ttft_s.p90 == doctest::Approx(0.35));  // rank 1.8 between 0.25 and 0.375
  CHECK(m.tpot_s.count == 2);
  CHECK(m.tpot_s.mean == 0.125);
  CHECK(m.itl_s.count == 12);
  CHECK(m.itl_s.mean == 0.125);
  CHECK(m.e2e_s.max == 1.25);
  CHECK(m.max_concurrency_seen == 3);
  // ttft <= 250 ms and tpot <= 125 ms (limits inclusive): rs[0] and rs[1]; rs[2] has ttft 375.
  REQUIRE(m.request_goodput.has_value());
  CHECK(m.slo_met_requests == 2);
  CHECK(*m.request_goodput == 1.0);

  const bench_metrics strict = metrics_compute(rs, 2.0, slo_parse("tpot=124"));
  CHECK(strict.slo_met_requests == 1);  // only rs[2]: one token, no TPOT to miss
  const bench_metrics e2e = metrics_compute(rs, 2.0, slo_parse("e2el:700"));
  CHECK(e2e.slo_met_requests == 2);     // rs[0] (625 ms) and rs[2] (375 ms)
  CHECK_FALSE(metrics_compute(rs, 2.0, slo_spec{}).request_goodput.has_value());
}

TEST_CASE("bench_stats: back-to-back requests do not count as concurrent") {
  std::vector<request_record> rs{ok(0.1, 1.0, 2), ok(0.1, 1.0, 2)};
  rs[1].start_s = 1.0;
  CHECK(metrics_compute(rs, 2.0, {}).max_concurrency_seen == 1);
}

TEST_CASE("bench_stats: --slo parsing") {
  const slo_spec s = slo_parse("ttft=500,tpot=50.5");
  CHECK(*s.ttft_ms == 500);
  CHECK(*s.tpot_ms == 50.5);
  CHECK_FALSE(s.e2e_ms.has_value());
  CHECK(*slo_parse("e2e=3000").e2e_ms == 3000);
  for (const char* bad : {"", "ttft", "ttft=", "ttft=abc", "ttft=-1", "foo=10", "ttft=10ms", ","})
    CHECK_THROWS_AS(slo_parse(bad), troupe::error);
}

TEST_CASE("bench_stats: error summary counts reasons, most frequent first") {
  std::vector<request_record> rs(5);
  rs[0].error = rs[1].error = rs[2].error = "connect: Connection refused";
  rs[3].error = "HTTP 400: too long";
  rs[4] = ok(0.1, 0.2, 2);
  const auto e = error_summary(rs);
  REQUIRE(e.size() == 2);
  CHECK(e[0].message == "connect: Connection refused");
  CHECK(e[0].count == 3);
  CHECK(e[1].count == 1);
}

TEST_CASE("bench_plot: histogram bins, the maximum in the last bin, far outliers folded") {
  const histogram h = histogram_make({0, 1, 2, 3, 4, 5, 6, 7, 8, 10}, 5);
  CHECK(h.lo == 0);
  CHECK(h.width == doctest::Approx(2.0));
  CHECK(h.counts == std::vector<int64_t>{2, 2, 2, 2, 2});
  CHECK(h.above == 0);

  std::vector<double> v;
  for (int i = 1; i <= 200; ++i) v.push_back(i);
  v.push_back(10000.0);  // beyond 3 x p99 (p99 = 199): folded into `above`, range ends at 1.5 x p99
  const histogram o = histogram_make(v, 10);
  CHECK(o.above == 1);
  int64_t sum = 0;
  for (int64_t c : o.counts) sum += c;
  CHECK(sum == 200);
  CHECK(o.lo == 1);
  CHECK(o.lo + o.width * 10 == doctest::Approx(1.5 * 199));

  const histogram same = histogram_make({3, 3, 3}, 10);
  CHECK(same.counts == std::vector<int64_t>{3});
  CHECK(histogram_make({}, 10).counts.empty());
}
