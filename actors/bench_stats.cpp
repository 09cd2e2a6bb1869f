// Formulas of bench_stats.hpp; see there for the definitions (vLLM's).
#include "actors/bench_stats.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <utility>

#include "config/errors.hpp"

namespace troupe {

std::optional<double> request_tpot_s(const request_record& r) {
  if (r.output_tokens <= 1) return std::nullopt;
  return (r.e2e_s - r.ttft_s) / static_cast<double>(r.output_tokens - 1);
}

double percentile_sorted(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = rank - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

latency_summary summarize(std::vector<double> values) {
  latency_summary s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.count = values.size();
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(s.count);
  double sq = 0;
  for (double v : values) sq += (v - s.mean) * (v - s.mean);
  s.std = std::sqrt(sq / static_cast<double>(s.count));
  s.min = values.front();
  s.max = values.back();
  s.median = percentile_sorted(values, 50);
  s.p90 = percentile_sorted(values, 90);
  s.p99 = percentile_sorted(values, 99);
  return s;
}

slo_spec slo_parse(const std::string& text) {
  slo_spec slo;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string part = text.substr(pos, comma - pos);
    pos = comma + 1;
    if (part.empty()) {
      if (comma == text.size()) break;
      continue;
    }
    const size_t eq = part.find_first_of("=:");
    if (eq == std::string::npos)
      throw error(errc::errc_invalid_argument, "--slo: '" + part + "' is not KEY=MS (keys: ttft, tpot, e2e)");
    const std::string key = part.substr(0, eq), value = part.substr(eq + 1);
    double ms = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), ms);
    if (ec != std::errc() || end != value.data() + value.size() || !(ms > 0) || !std::isfinite(ms))
      throw error(errc::errc_invalid_argument, "--slo: '" + value + "' is not a positive number of milliseconds");
    if (key == "ttft") slo.ttft_ms = ms;
    else if (key == "tpot") slo.tpot_ms = ms;
    else if (key == "e2e" || key == "e2el") slo.e2e_ms = ms;
    else throw error(errc::errc_invalid_argument, "--slo: unknown objective '" + key + "' (ttft, tpot, e2e)");
  }
  if (!slo.any()) throw error(errc::errc_invalid_argument, "--slo: no objective given");
  return slo;
}

bool slo_met(const request_record& r, const slo_spec& slo) {
  if (!r.success) return false;
  if (slo.ttft_ms && r.ttft_s * 1e3 > *slo.ttft_ms) return false;
  if (slo.e2e_ms && r.e2e_s * 1e3 > *slo.e2e_ms) return false;
  if (slo.tpot_ms)
    if (auto t = request_tpot_s(r); t && *t * 1e3 > *slo.tpot_ms) return false;
  return true;
}

namespace {

// Most requests in flight at once: sweep over (start, +1) and (end, -1) events,
// ends before starts at equal times so back-to-back requests do not overlap.
int64_t max_in_flight(const std::vector<request_record>& records) {
  std::vector<std::pair<double, int>> ev;
  ev.reserve(records.size() * 2);
  for (const request_record& r : records) {
    ev.emplace_back(r.start_s, +1);
    ev.emplace_back(r.start_s + std::max(r.complete_s, r.e2e_s), -1);
  }
  std::sort(ev.begin(), ev.end());
  int64_t cur = 0, best = 0;
  for (const auto& [t, d] : ev) best = std::max(best, cur += d);
  return best;
}

}  // namespace

bench_metrics metrics_compute(const std::vector<request_record>& records, double duration_s, const slo_spec& slo) {
  bench_metrics m;
  m.duration_s = duration_s;
  std::vector<double> ttft, tpot, itl, e2e;
  for (const request_record& r : records) {
    if (!r.success) {
      ++m.failed;
      continue;
    }
    ++m.completed;
    m.total_input_tokens += r.prompt_tokens;
    m.total_output_tokens += r.output_tokens;
    ttft.push_back(r.ttft_s);
    e2e.push_back(r.e2e_s);
    if (auto t = request_tpot_s(r)) tpot.push_back(*t);
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    if (slo.any() && slo_met(r, slo)) ++m.slo_met_requests;
  }
  const double d = duration_s > 0 ? duration_s : 0;
  auto per_s = [d](double x) { return d > 0 ? x / d : 0.0; };
  m.request_throughput = per_s(static_cast<double>(m.completed));
  m.output_throughput = per_s(static_cast<double>(m.total_output_tokens));
  m.total_token_throughput = per_s(static_cast<double>(m.total_input_tokens + m.total_output_tokens));
  if (slo.any()) m.request_goodput = per_s(static_cast<double>(m.slo_met_requests));
  m.max_concurrency_seen = max_in_flight(records);
  m.ttft_s = summarize(std::move(ttft));
  m.tpot_s = summarize(std::move(tpot));
  m.itl_s = summarize(std::move(itl));
  m.e2e_s = summarize(std::move(e2e));
  return m;
}

std::vector<error_count> error_summary(const std::vector<request_record>& records) {
  std::map<std::string, int64_t> counts;
  for (const request_record& r : records)
    if (!r.success) ++counts[r.error.empty() ? std::string("unknown error") : r.error];
  std::vector<error_count> out;
  for (auto& [msg, n] : counts) out.push_back({msg, n});
  std::stable_sort(out.begin(), out.end(), [](const error_count& a, const error_count& b) { return a.count > b.count; });
  return out;
}

}  // namespace troupe
