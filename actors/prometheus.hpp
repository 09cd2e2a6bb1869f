// A small Prometheus registry: counters, gauges and fixed-bucket histograms,
// rendered in the text exposition format 0.0.4 for GET /metrics.
//
// Why it is built this way: Debian 12 ships no C++ Prometheus client
// (prometheus-cpp is not packaged), and the gateway needs only these three
// types. Updates are lock-free atomics, so actors on any thread can count
// without contention; the registry's mutex guards only registration and
// render(). Metric objects live as long as the registry and never move, so
// callers keep plain references. Series of one name share one # HELP / # TYPE
// block and differ by their label values (vLLM's style: model_name="...").
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe {

/// Label (name, value) pairs of one series.
using prometheus_labels = std::vector<std::pair<std::string, std::string>>;

/// A monotonically increasing value.
class prometheus_counter {
 public:
  /// Adds `v` (negative values are ignored: a counter never decreases).
  void inc(double v = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

/// A value that goes up and down.
class prometheus_gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void inc(double v = 1.0);
  void dec(double v = 1.0) { inc(-v); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

/// Observations counted into fixed buckets (upper bounds), plus sum and count.
class prometheus_histogram {
 public:
  /// `bounds` must be strictly increasing and finite; +Inf is implicit.
  explicit prometheus_histogram(std::vector<double> bounds);
  void observe(double v);
  /// Cumulative count per bound, then the +Inf bucket (== count()).
  std::vector<uint64_t> cumulative() const;
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  ///< per bucket (not cumulative), +Inf last
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0.0};
};

/// The registry. Registration throws troupe::error(errc_invalid_argument) for
/// an invalid metric or label name, for a name registered before with another
/// type or help, and for histogram bounds that are not strictly increasing.
class prometheus_registry {
 public:
  prometheus_registry();
  ~prometheus_registry();
  prometheus_registry(const prometheus_registry&) = delete;
  prometheus_registry& operator=(const prometheus_registry&) = delete;

  /// The counter `name` with `labels` (created on first use; the same object after).
  prometheus_counter& counter(std::string_view name, std::string_view help, const prometheus_labels& labels = {});
  prometheus_gauge& gauge(std::string_view name, std::string_view help, const prometheus_labels& labels = {});
  /// Every series of one histogram name must use the same bounds.
  prometheus_histogram& histogram(std::string_view name, std::string_view help, std::vector<double> bounds,
                                  const prometheus_labels& labels = {});

  /// The text exposition format 0.0.4, families in registration order.
  std::string render() const;
  /// The Content-Type of render()'s text.
  static constexpr std::string_view content_type = "text/plain; version=0.0.4; charset=utf-8";

 private:
  struct family;
  family& family_for(std::string_view name, std::string_view help, int type);
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<family>> families_;
};

}  // namespace troupe
