// Shared by the sample_cuda test files: batches in and out, device upload and
// download, the test-local reference of the CPU sampler's filter steps, the
// chi-square check of a sampled distribution, and row builders.
#pragma once

#include "kernels/sample.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "config/errors.hpp"
#include "kernels/device_buffer.hpp"
#include "model/engine.hpp"
#include "model/sampler.hpp"

using namespace troupe;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct batch_in {
  int64_t batch = 0, vocab = 0;
  std::vector<float> logits;  // [batch][vocab]
  std::vector<sample_row_params> params;
  std::vector<std::vector<int32_t>> prompt, output;  // per row
};

struct batch_out {
  std::vector<std::vector<int32_t>> tokens;  // [launch][row]
  std::vector<float> logprob;                // last launch
  std::vector<int32_t> top_ids;
  std::vector<float> top_lps;
  std::vector<float> processed;
  std::vector<sample_row_params> params_after;
};

template <class T>
device_buffer upload(const std::vector<T>& v) {
  device_buffer d(std::max<size_t>(v.size() * sizeof(T), 4));
  if (!v.empty()) d.upload(v.data(), v.size() * sizeof(T));
  return d;
}

template <class T>
std::vector<T> download(const device_buffer& d, size_t n) {
  std::vector<T> h(n);
  d.download(h.data(), n * sizeof(T));
  return h;
}

/// A row's penalty history as the kernels read it: sorted unique tokens in
/// range, with generated counts; prompt tokens only when the repetition
/// penalty is on (what model/sampler keeps).
inline std::vector<sample_token_stat> history_of(const sample_row_params& p, const std::vector<int32_t>& prompt,
                                          const std::vector<int32_t>& output, int64_t vocab) {
  std::map<int32_t, sample_token_stat> m;
  if (p.repetition_penalty != 1.0f)
    for (int32_t t : prompt)
      if (t >= 0 && t < vocab) m[t] = {t, 0, 1};
  for (int32_t t : output)
    if (t >= 0 && t < vocab) {
      auto& e = m[t];
      e.token = t;
      ++e.generated;
    }
  std::vector<sample_token_stat> v;
  for (const auto& [t, e] : m) v.push_back(e);
  return v;
}

/// A workspace that outlives one run_gpu (to check that calls leave it ready).
struct workspace {
  device_buffer buf;
  explicit workspace(size_t bytes) : buf(bytes) { buf.fill(0); }
};

/// Runs `launches` calls with advance_step; outputs poisoned (0x7f bytes) before each.
inline batch_out run_gpu(const batch_in& in, int launches = 1, bool want_processed = false, workspace* shared = nullptr,
                  int phases = 3) {
  const size_t b = static_cast<size_t>(in.batch), v = static_cast<size_t>(in.vocab);
  device_buffer logits = upload(in.logits), params = upload(in.params);
  std::vector<int32_t> offsets(1, 0);
  std::vector<sample_token_stat> entries;
  for (size_t r = 0; r < b; ++r) {
    if (!in.prompt.empty() || !in.output.empty()) {
      const auto h = history_of(in.params[r], in.prompt.empty() ? std::vector<int32_t>{} : in.prompt[r],
                                in.output.empty() ? std::vector<int32_t>{} : in.output[r], in.vocab);
      entries.insert(entries.end(), h.begin(), h.end());
    }
    offsets.push_back(static_cast<int32_t>(entries.size()));
  }
  device_buffer doff = upload(offsets), dent = upload(entries), pen(b * v * 4);
  device_buffer tokens(b * 4), lp(b * 4), tid(b * sample_top_max * 4), tlp(b * sample_top_max * 4);
  device_buffer processed(want_processed ? b * v * 4 : 4);
  const size_t ws_bytes = sample_workspace_bytes(in.batch, in.vocab);
  workspace own(shared == nullptr ? ws_bytes : 0);
  device_buffer& ws = shared == nullptr ? own.buf : shared->buf;
  REQUIRE(ws.size() >= ws_bytes);
  sample_history h;
  if (!entries.empty()) h = {doff.as<int32_t>(), dent.as<sample_token_stat>(), pen.as<float>()};
  sample_outputs o{tokens.as<int32_t>(), lp.as<float>(), tid.as<int32_t>(), tlp.as<float>(),
                   want_processed ? processed.as<float>() : nullptr};
  batch_out r;
  for (int l = 0; l < launches; ++l) {
    tokens.fill(0x7f);
    lp.fill(0x7f);
    tid.fill(0x7f);
    tlp.fill(0x7f);
    if (want_processed) processed.fill(0x7f);
    sample_cuda(logits.as<float>(), in.batch, in.vocab, params.as<sample_row_params>(), h, o, ws.data(), ws.size(),
                true, nullptr, phases);
    cuda_sync(nullptr);
    r.tokens.push_back(download<int32_t>(tokens, b));
  }
  r.logprob = download<float>(lp, b);
  r.top_ids = download<int32_t>(tid, b * sample_top_max);
  r.top_lps = download<float>(tlp, b * sample_top_max);
  if (want_processed) r.processed = download<float>(processed, b * v);
  r.params_after = download<sample_row_params>(params, b);
  return r;
}

inline sampling_params to_cpu(const sample_row_params& p, uint64_t seed) {
  sampling_params s;
  s.temperature = p.temperature;
  s.top_k = p.top_k;
  s.top_p = p.top_p;
  s.min_p = p.min_p;
  s.repetition_penalty = p.repetition_penalty;
  s.frequency_penalty = p.frequency_penalty;
  s.presence_penalty = p.presence_penalty;
  s.seed = seed;
  return s;
}

inline float sanitize(float x) { return std::isnan(x) ? -kInf : x; }

/// The CPU sampler's penalised row (sanitised, then penalties as sampler.cpp applies them).
inline std::vector<float> penalised(const float* raw, int64_t vocab, const sample_row_params& p,
                             const std::vector<int32_t>& prompt, const std::vector<int32_t>& output) {
  std::vector<float> row(raw, raw + vocab);
  for (float& x : row) x = sanitize(x);
  const float r = p.repetition_penalty;
  auto repeat = [r](float& x) { x = x > 0.0f ? x / r : x * r; };
  std::vector<int32_t> pr;
  if (r != 1.0f)
    for (int32_t t : prompt)
      if (t >= 0 && t < vocab) pr.push_back(t);
  std::sort(pr.begin(), pr.end());
  pr.erase(std::unique(pr.begin(), pr.end()), pr.end());
  std::map<int32_t, int32_t> counts;
  for (int32_t t : output)
    if (t >= 0 && t < vocab) ++counts[t];
  for (int32_t t : pr) repeat(row[static_cast<size_t>(t)]);
  for (const auto& [t, c] : counts) {
    float& x = row[static_cast<size_t>(t)];
    if (r != 1.0f && !std::binary_search(pr.begin(), pr.end(), t)) repeat(x);
    x -= p.frequency_penalty * static_cast<float>(c) + p.presence_penalty;
  }
  return row;
}

/// Kept tokens and their probabilities, following sampler::sample step by step.
inline std::map<int32_t, double> reference(const std::vector<float>& row, const sample_row_params& p) {
  struct cand {
    float logit;
    int32_t id;
    float weight;
  };
  size_t best = 0;
  for (size_t i = 1; i < row.size(); ++i)
    if (row[i] > row[best]) best = i;
  const float mx = row[best];
  if (p.temperature < sampling_greedy_eps || mx == -kInf) return {{static_cast<int32_t>(best), 1.0}};
  std::vector<cand> c;
  for (size_t i = 0; i < row.size(); ++i)
    if (row[i] != -kInf) c.push_back({row[i], static_cast<int32_t>(i), 0.0f});
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < c.size()) {
    std::vector<float> vals;
    for (const auto& x : c) vals.push_back(x.logit);
    std::nth_element(vals.begin(), vals.begin() + (p.top_k - 1), vals.end(), std::greater<float>());
    const float kth = vals[static_cast<size_t>(p.top_k - 1)];
    std::erase_if(c, [kth](const cand& x) { return x.logit < kth; });
  }
  const float inv_t = 1.0f / p.temperature;
  double total = 0.0;
  for (auto& x : c) {
    x.weight = x.logit == mx ? 1.0f : std::exp((x.logit - mx) * inv_t);
    total += x.weight;
  }
  if (p.top_p < 1.0f) {
    std::sort(c.begin(), c.end(), [](const cand& a, const cand& b) {
      return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    });
    const double target = static_cast<double>(p.top_p) * total;
    double cum = 0.0;
    size_t keep = 0;
    for (size_t i = 0; i < c.size() && keep == 0; ++i) {
      cum += c[i].weight;
      if (cum >= target) keep = i + 1;
    }
    if (keep != 0) c.resize(keep);
  }
  if (p.min_p > 0.0f) std::erase_if(c, [&](const cand& x) { return x.weight < p.min_p; });
  double mass = 0.0;
  for (const auto& x : c) mass += x.weight;
  std::map<int32_t, double> out;
  for (const auto& x : c)
    if (x.weight > 0.0f) out[x.id] = x.weight / mass;
  return out;
}

/// Upper 1e-4 tail of chi-square(df), Wilson-Hilferty.
inline double chi2_crit(int df) {
  const double z = 3.719, k = df;
  const double a = 1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k));
  return k * a * a * a;
}

/// Checks samples against the kept set: all inside; chi-square over groups of
/// tokens (by falling probability) each expecting >= max(5, n/64) draws; and,
/// when every kept token expects >= 25 draws, that every one appeared.
inline void check_distribution(const std::vector<int32_t>& samples, const std::map<int32_t, double>& ref,
                               const std::string& what) {
  CAPTURE(what);
  const double n = static_cast<double>(samples.size());
  std::map<int32_t, int> seen;
  size_t outside = 0;
  for (int32_t t : samples) {
    if (ref.count(t) == 0) ++outside;
    ++seen[t];
  }
  CHECK(outside == 0);
  std::vector<std::pair<double, int32_t>> order;
  double min_p = 1.0;
  for (const auto& [t, p] : ref) {
    order.push_back({-p, t});
    min_p = std::min(min_p, p);
  }
  std::sort(order.begin(), order.end());
  if (min_p * n >= 25.0) CHECK(seen.size() == ref.size());
  const double group_min = std::max(5.0, n / 64.0);
  double stat = 0.0, e = 0.0, o = 0.0;
  int groups = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    e += -order[i].first * n;
    o += seen.count(order[i].second) ? seen[order[i].second] : 0;
    const bool last = i + 1 == order.size();
    if (e >= group_min || last) {
      if (e > 0) stat += (o - e) * (o - e) / e;
      ++groups;
      e = o = 0.0;
    }
  }
  if (groups >= 2) {
    CAPTURE(groups);
    CAPTURE(stat);
    CHECK(stat <= chi2_crit(groups - 1));
  }
}

inline std::vector<float> peaked_row(int64_t vocab, uint64_t seed, int peaks, bool quantize) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::uniform_real_distribution<float> u(6.0f, 11.0f);
  std::vector<float> row(static_cast<size_t>(vocab));
  for (float& x : row) x = d(rng);
  for (int i = 0; i < peaks; ++i) row[rng() % static_cast<uint64_t>(vocab)] = u(rng);
  if (quantize)
    for (float& x : row) x = std::round(x * 8.0f) / 8.0f;
  return row;
}

inline batch_in replicate(const std::vector<float>& row, int64_t rows, const sample_row_params& p) {
  batch_in in;
  in.batch = rows;
  in.vocab = static_cast<int64_t>(row.size());
  for (int64_t r = 0; r < rows; ++r) {
    in.logits.insert(in.logits.end(), row.begin(), row.end());
    sample_row_params q = p;
    q.seed = 1000 + static_cast<uint64_t>(r) * 7919;
    in.params.push_back(q);
  }
  return in;
}

inline std::vector<int32_t> flatten(const std::vector<std::vector<int32_t>>& t) {
  std::vector<int32_t> all;
  for (const auto& v : t) all.insert(all.end(), v.begin(), v.end());
  return all;
}

inline sample_row_params make(float t, int k, float p, float minp) {
  sample_row_params q;
  q.temperature = t;
  q.top_k = k;
  q.top_p = p;
  q.min_p = minp;
  return q;
}

}  // namespace
