// The Prometheus registry and its text rendering. See prometheus.hpp.
#include "actors/prometheus.hpp"

#include <charconv>
#include <cmath>

#include "config/errors.hpp"

namespace troupe {

namespace {

enum metric_type { type_counter = 0, type_gauge = 1, type_histogram = 2 };
constexpr const char* type_names[] = {"counter", "gauge", "histogram"};

bool valid_name(std::string_view n, bool metric) {
  if (n.empty()) return false;
  for (std::size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (metric && c == ':') ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return metric || n.substr(0, 2) != "__";
}

/// Prometheus' number syntax: shortest round-trip decimal, +Inf, -Inf, NaN.
void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
  }
}

void append_escaped(std::string& out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (quote && c == '"') out += "\\\"";
    else out += c;
  }
}

/// {a="x",b="y"} plus an optional extra label (le), or nothing when empty.
void append_labels(std::string& out, const prometheus_labels& labels, std::string_view extra_name = {},
                   std::string_view extra_value = {}) {
  if (labels.empty() && extra_name.empty()) return;
  out += '{';
  bool first = true;
  auto one = [&](std::string_view k, std::string_view v) {
    if (!first) out += ',';
    first = false;
    out += k;
    out += "=\"";
    append_escaped(out, v, true);
    out += '"';
  };
  for (const auto& [k, v] : labels) one(k, v);
  if (!extra_name.empty()) one(extra_name, extra_value);
  out += '}';
}

}  // namespace

void prometheus_counter::inc(double v) {
  if (v > 0) value_.fetch_add(v, std::memory_order_relaxed);
}

void prometheus_gauge::inc(double v) { value_.fetch_add(v, std::memory_order_relaxed); }

prometheus_histogram::prometheus_histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    if (!std::isfinite(bounds_[i]) || (i > 0 && !(bounds_[i] > bounds_[i - 1])))
      throw error(errc::errc_invalid_argument, "prometheus histogram: bounds must be finite and strictly increasing");
  }
  for (std::size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void prometheus_histogram::observe(double v) {
  std::size_t i = 0;
  while (i < bounds_.size() && !(v <= bounds_[i])) ++i;  // NaN lands in +Inf
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> prometheus_histogram::cumulative() const {
  std::vector<uint64_t> c(bounds_.size() + 1);
  uint64_t acc = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) c[i] = acc += buckets_[i].load(std::memory_order_relaxed);
  return c;
}

struct prometheus_registry::family {
  std::string name, help;
  int type = type_counter;
  struct series {
    prometheus_labels labels;
    std::unique_ptr<prometheus_counter> counter;
    std::unique_ptr<prometheus_gauge> gauge;
    std::unique_ptr<prometheus_histogram> histogram;
  };
  std::vector<series> members;

  series* find(const prometheus_labels& labels) {
    for (auto& s : members)
      if (s.labels == labels) return &s;
    return nullptr;
  }
};

prometheus_registry::prometheus_registry() = default;
prometheus_registry::~prometheus_registry() = default;

prometheus_registry::family& prometheus_registry::family_for(std::string_view name, std::string_view help, int type) {
  if (!valid_name(name, true))
    throw error(errc::errc_invalid_argument, "prometheus: invalid metric name '" + std::string(name) + "'");
  for (auto& f : families_) {
    if (f->name != name) continue;
    if (f->type != type || f->help != help)
      throw error(errc::errc_invalid_argument,
                  "prometheus: metric '" + std::string(name) + "' was registered before with another type or help");
    return *f;
  }
  auto f = std::make_unique<family>();
  f->name = name;
  f->help = help;
  f->type = type;
  families_.push_back(std::move(f));
  return *families_.back();
}

namespace {
void check_labels(std::string_view metric, const prometheus_labels& labels, bool histogram) {
  for (const auto& [k, v] : labels)
    if (!valid_name(k, false) || (histogram && k == "le"))
      throw error(errc::errc_invalid_argument,
                  "prometheus: invalid label name '" + k + "' on '" + std::string(metric) + "'");
}
}  // namespace

prometheus_counter& prometheus_registry::counter(std::string_view name, std::string_view help,
                                                 const prometheus_labels& labels) {
  check_labels(name, labels, false);
  std::lock_guard lk(mu_);
  family& f = family_for(name, help, type_counter);
  if (auto* s = f.find(labels)) return *s->counter;
  f.members.push_back({labels, std::make_unique<prometheus_counter>(), nullptr, nullptr});
  return *f.members.back().counter;
}

prometheus_gauge& prometheus_registry::gauge(std::string_view name, std::string_view help,
                                             const prometheus_labels& labels) {
  check_labels(name, labels, false);
  std::lock_guard lk(mu_);
  family& f = family_for(name, help, type_gauge);
  if (auto* s = f.find(labels)) return *s->gauge;
  f.members.push_back({labels, nullptr, std::make_unique<prometheus_gauge>(), nullptr});
  return *f.members.back().gauge;
}

prometheus_histogram& prometheus_registry::histogram(std::string_view name, std::string_view help,
                                                     std::vector<double> bounds, const prometheus_labels& labels) {
  check_labels(name, labels, true);
  auto h = std::make_unique<prometheus_histogram>(std::move(bounds));  // validates the bounds
  std::lock_guard lk(mu_);
  family& f = family_for(name, help, type_histogram);
  if (!f.members.empty() && f.members.front().histogram->bounds() != h->bounds())
    throw error(errc::errc_invalid_argument, "prometheus: histogram '" + std::string(name) + "' with other bounds");
  if (auto* s = f.find(labels)) return *s->histogram;
  f.members.push_back({labels, nullptr, nullptr, std::move(h)});
  return *f.members.back().histogram;
}

std::string prometheus_registry::render() const {
  std::lock_guard lk(mu_);
  std::string out;
  out.reserve(4096);
  for (const auto& f : families_) {
    out += "# HELP ";
    out += f->name;
    out += ' ';
    append_escaped(out, f->help, false);
    out += "\n# TYPE ";
    out += f->name;
    out += ' ';
    out += type_names[f->type];
    out += '\n';
    for (const auto& s : f->members) {
      if (f->type != type_histogram) {
        out += f->name;
        append_labels(out, s.labels);
        out += ' ';
        append_number(out, f->type == type_counter ? s.counter->value() : s.gauge->value());
        out += '\n';
        continue;
      }
      const auto& h = *s.histogram;
      // _count is the +Inf bucket, so one scrape is consistent even while
      // observe() runs concurrently (its sum may be a little ahead or behind).
      std::vector<uint64_t> cum = h.cumulative();
      std::string le;
      for (std::size_t i = 0; i <= h.bounds().size(); ++i) {
        le.clear();
        if (i < h.bounds().size()) append_number(le, h.bounds()[i]);
        else le = "+Inf";
        out += f->name;
        out += "_bucket";
        append_labels(out, s.labels, "le", le);
        out += ' ';
        out += std::to_string(cum[i]);
        out += '\n';
      }
      out += f->name;
      out += "_sum";
      append_labels(out, s.labels);
      out += ' ';
      append_number(out, h.sum());
      out += '\n';
      out += f->name;
      out += "_count";
      append_labels(out, s.labels);
      out += ' ';
      out += std::to_string(cum.back());
      out += '\n';
    }
  }
  return out;
}

}  // namespace troupe
