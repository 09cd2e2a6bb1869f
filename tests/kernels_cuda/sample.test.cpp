// sample_cuda against the CPU sampler (model/sampler). The GPU draws with its
// own RNG (Philox, Gumbel-max), so sampled rows are checked by distribution:
// a test-local reference repeats the CPU sampler's filter steps (penalties,
// top-k with ties, top-p in (logit desc, id asc) order, min-p) and gives the
// kept set with its probabilities; the reference itself is checked against
// model/sampler draws. GPU samples must lie in the kept set, cover it where
// every kept token is likely enough to appear, and pass a chi-square test
// (fixed seeds, so the outcome is fixed). Greedy tokens, penalised logits and
// logprobs are compared exactly / within 1e-4. Outputs are poisoned first.
// The scenarios reach every path of the kernels: greedy (phase 1), plain
// draws (phase 2), gathered cuts with and without a summarised part above
// them (phase 3), and the exact radix fallback; tokens must not depend on the
// batch (which changes how tiles are split over blocks) or on a reused
// workspace.
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
std::vector<sample_token_stat> history_of(const sample_row_params& p, const std::vector<int32_t>& prompt,
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
batch_out run_gpu(const batch_in& in, int launches = 1, bool want_processed = false, workspace* shared = nullptr,
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

sampling_params to_cpu(const sample_row_params& p, uint64_t seed) {
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

float sanitize(float x) { return std::isnan(x) ? -kInf : x; }

/// The CPU sampler's penalised row (sanitised, then penalties as sampler.cpp applies them).
std::vector<float> penalised(const float* raw, int64_t vocab, const sample_row_params& p,
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
std::map<int32_t, double> reference(const std::vector<float>& row, const sample_row_params& p) {
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
double chi2_crit(int df) {
  const double z = 3.719, k = df;
  const double a = 1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k));
  return k * a * a * a;
}

/// Checks samples against the kept set: all inside; chi-square over groups of
/// tokens (by falling probability) each expecting >= max(5, n/64) draws; and,
/// when every kept token expects >= 25 draws, that every one appeared.
void check_distribution(const std::vector<int32_t>& samples, const std::map<int32_t, double>& ref, const std::string& what) {
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

std::vector<float> peaked_row(int64_t vocab, uint64_t seed, int peaks, bool quantize) {
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

batch_in replicate(const std::vector<float>& row, int64_t rows, const sample_row_params& p) {
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

std::vector<int32_t> flatten(const std::vector<std::vector<int32_t>>& t) {
  std::vector<int32_t> all;
  for (const auto& v : t) all.insert(all.end(), v.begin(), v.end());
  return all;
}

sample_row_params make(float t, int k, float p, float minp) {
  sample_row_params q;
  q.temperature = t;
  q.top_k = k;
  q.top_p = p;
  q.min_p = minp;
  return q;
}

}  // namespace

TEST_CASE("sample_cuda greedy rows take the first argmax of the sanitised logits") {
  for (int64_t vocab : {int64_t{1000}, int64_t{32003}, int64_t{151936}}) {
    CAPTURE(vocab);
    const int64_t rows = 16;
    batch_in in;
    in.batch = rows;
    in.vocab = vocab;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> row = peaked_row(vocab, 10 + static_cast<uint64_t>(r), 3, r % 2 == 0);
      if (r == 1) row[7] = row[vocab - 3] = 50.0f;                   // tie: lowest id
      if (r == 2) row[5] = std::numeric_limits<float>::quiet_NaN(), row[vocab - 1] = 60.0f;
      if (r == 3) std::fill(row.begin(), row.end(), -kInf);         // no finite logit: token 0
      if (r == 4) row[vocab / 2] = kInf;
      if (r == 5) std::fill(row.begin(), row.end(), std::numeric_limits<float>::quiet_NaN());
      in.logits.insert(in.logits.end(), row.begin(), row.end());
      in.params.push_back(make(0.0f, 0, 1.0f, 0.0f));
    }
    const batch_out out = run_gpu(in, 1, true);
    for (int64_t r = 0; r < rows; ++r) {
      CAPTURE(r);
      const float* raw = in.logits.data() + r * vocab;
      sampler cpu(to_cpu(in.params[static_cast<size_t>(r)], 1), vocab, {});
      CHECK(out.tokens[0][static_cast<size_t>(r)] == cpu.sample(std::span<const float>(raw, static_cast<size_t>(vocab))));
      bool same = true;
      for (int64_t i = 0; i < vocab; ++i) {
        const float want = sanitize(raw[i]), got = out.processed[static_cast<size_t>(r * vocab + i)];
        same = same && std::memcmp(&want, &got, 4) == 0;
      }
      CHECK(same);
      CHECK(out.logprob[static_cast<size_t>(r)] == 0.0f);  // no logprobs asked: written as 0
      CHECK(out.top_ids[static_cast<size_t>(r) * sample_top_max] == -1);
      CHECK(out.params_after[static_cast<size_t>(r)].step == 1);
    }
  }
}

TEST_CASE("sample_cuda penalties give the CPU sampler's processed logits and greedy token") {
  const int64_t vocab = 151936, rows = 6;
  batch_in in;
  in.batch = rows;
  in.vocab = vocab;
  std::mt19937_64 rng(5);
  const float reps[] = {1.0f, 1.3f, 0.7f, 1.1f, 1.0f, 2.0f};
  const float freqs[] = {0.5f, 0.0f, -0.4f, 0.3f, 0.0f, 2.0f};
  const float pres[] = {0.0f, 0.0f, 0.6f, -1.0f, 1.5f, 0.1f};
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> row = peaked_row(vocab, 100 + static_cast<uint64_t>(r), 20, r == 3);
    std::vector<int32_t> prompt, output;
    for (int i = 0; i < 3000; ++i) prompt.push_back(static_cast<int32_t>(rng() % 200));  // heavy duplicates
    for (int i = 0; i < 500; ++i) output.push_back(static_cast<int32_t>(rng() % 300 + 100));
    {  // the top tokens themselves, so that the penalties move the argmax
      std::vector<int32_t> ids(static_cast<size_t>(vocab));
      std::iota(ids.begin(), ids.end(), 0);
      std::partial_sort(ids.begin(), ids.begin() + 8, ids.end(),
                        [&](int32_t x, int32_t y) { return row[static_cast<size_t>(x)] > row[static_cast<size_t>(y)]; });
      for (int i = 0; i < 8; ++i) {
        for (int c = 0; c <= i; ++c) output.push_back(ids[static_cast<size_t>(i)]);
        if (i % 2 == 0) prompt.push_back(ids[static_cast<size_t>(i)]);
      }
    }
    output.push_back(-5);
    output.push_back(static_cast<int32_t>(vocab) + 3);  // ignored
    in.logits.insert(in.logits.end(), row.begin(), row.end());
    sample_row_params q = make(0.0f, 0, 1.0f, 0.0f);
    q.repetition_penalty = reps[r];
    q.frequency_penalty = freqs[r];
    q.presence_penalty = pres[r];
    q.logprobs = r % 2 == 0 ? 5 : -1;
    in.params.push_back(q);
    in.prompt.push_back(prompt);
    in.output.push_back(output);
  }
  const batch_out out = run_gpu(in, 1, true);
  for (int64_t r = 0; r < rows; ++r) {
    CAPTURE(r);
    const auto& q = in.params[static_cast<size_t>(r)];
    const float* raw = in.logits.data() + r * vocab;
    const std::vector<float> want = penalised(raw, vocab, q, in.prompt[static_cast<size_t>(r)], in.output[static_cast<size_t>(r)]);
    const std::vector<float> got(out.processed.begin() + r * vocab, out.processed.begin() + (r + 1) * vocab);
    CHECK(std::memcmp(want.data(), got.data(), want.size() * 4) == 0);
    // The CPU sampler's own view: log-softmax of its processed row, and its greedy token.
    sampler cpu(to_cpu(q, 1), vocab, in.prompt[static_cast<size_t>(r)]);
    for (int32_t t : in.output[static_cast<size_t>(r)]) cpu.accept(t);
    std::vector<float> lsm_cpu(static_cast<size_t>(vocab)), lsm_gpu(static_cast<size_t>(vocab));
    cpu.processed_log_softmax(std::span<const float>(raw, static_cast<size_t>(vocab)), lsm_cpu);
    sampler::log_softmax(got, lsm_gpu);
    CHECK(std::memcmp(lsm_cpu.data(), lsm_gpu.data(), lsm_cpu.size() * 4) == 0);
    CHECK(out.tokens[0][static_cast<size_t>(r)] == cpu.sample(std::span<const float>(raw, static_cast<size_t>(vocab))));
  }
}

TEST_CASE("sample_cuda logprobs are the raw log-softmax: chosen and top-N within 1e-4, ids exact") {
  for (int64_t vocab : {int64_t{50}, int64_t{32003}, int64_t{151936}}) {
    CAPTURE(vocab);
    const int64_t rows = 12;
    batch_in in;
    in.batch = rows;
    in.vocab = vocab;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> row = peaked_row(vocab, 300 + static_cast<uint64_t>(r), 10, r % 3 == 0);
      if (r == 4) std::fill(row.begin() + 3, row.begin() + 30, 12.0f);  // ties in the top-N: lower id first
      if (r == 5) row[1] = std::numeric_limits<float>::quiet_NaN();
      in.logits.insert(in.logits.end(), row.begin(), row.end());
      sample_row_params q = r % 2 == 0 ? make(0.0f, 0, 1.0f, 0.0f) : make(0.9f, 40, 0.95f, 0.0f);
      q.logprobs = static_cast<int32_t>(r % 7 == 6 ? 0 : std::min<int64_t>(20, 1 + r * 2));
      if (r == 7) q.repetition_penalty = 1.5f, q.frequency_penalty = 0.5f;  // logprobs stay raw
      in.params.push_back(q);
      in.prompt.push_back({1, 2, 3});
      in.output.push_back({static_cast<int32_t>(vocab / 2), 4});
    }
    const batch_out out = run_gpu(in);
    double worst = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      CAPTURE(r);
      const float* raw = in.logits.data() + r * vocab;
      std::vector<float> lsm(static_cast<size_t>(vocab));
      sampler::log_softmax(std::span<const float>(raw, static_cast<size_t>(vocab)), lsm);
      const int32_t tok = out.tokens[0][static_cast<size_t>(r)];
      REQUIRE(tok >= 0);
      REQUIRE(tok < vocab);
      const double e = std::fabs(out.logprob[static_cast<size_t>(r)] - lsm[static_cast<size_t>(tok)]);
      worst = std::max(worst, e);
      CHECK(e <= 1e-4);
      const int n = std::min<int>(in.params[static_cast<size_t>(r)].logprobs, static_cast<int>(vocab));
      std::vector<int32_t> ids(static_cast<size_t>(vocab));
      std::iota(ids.begin(), ids.end(), 0);
      std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
        const float la = lsm[static_cast<size_t>(a)], lb = lsm[static_cast<size_t>(b)];
        return la > lb || (la == lb && a < b);
      });
      for (int i = 0; i < sample_top_max; ++i) {
        const size_t at = static_cast<size_t>(r) * sample_top_max + static_cast<size_t>(i);
        if (i < n) {
          CHECK(out.top_ids[at] == ids[static_cast<size_t>(i)]);
          const double te = std::fabs(out.top_lps[at] - lsm[static_cast<size_t>(ids[static_cast<size_t>(i)])]);
          worst = std::max(worst, te);
          CHECK(te <= 1e-4);
        } else {
          CHECK(out.top_ids[at] == -1);
          CHECK(out.top_lps[at] == -kInf);
        }
      }
    }
    MESSAGE("vocab " << vocab << ": worst logprob error " << worst);
  }
}

TEST_CASE("sample_cuda reference matches the CPU sampler's draws") {
  // The test's reference must describe model/sampler: its draws stay in the kept set and fit the probabilities.
  const std::vector<float> row = peaked_row(4000, 7, 25, true);
  for (const sample_row_params& q : {make(0.7f, 20, 1.0f, 0.0f), make(1.0f, 0, 0.9f, 0.0f), make(1.3f, 0, 1.0f, 0.05f),
                                     make(0.8f, 50, 0.8f, 0.02f)}) {
    const auto ref = reference(row, q);
    std::vector<int32_t> draws;
    for (int i = 0; i < 3000; ++i) {
      sampler cpu(to_cpu(q, 77 + static_cast<uint64_t>(i)), 4000, {});
      draws.push_back(cpu.sample(row));
    }
    check_distribution(draws, ref, "cpu sampler vs reference");
  }
}

TEST_CASE("sample_cuda sampled rows keep the CPU's token set and probabilities") {
  struct scenario {
    std::string name;
    std::vector<float> row;
    sample_row_params p;
  };
  std::vector<scenario> cases;
  const int64_t big = 151936;
  cases.push_back({"temperature only, vocab 1000", peaked_row(1000, 1, 5, false), make(1.0f, 0, 1.0f, 0.0f)});
  cases.push_back({"top-k with ties", peaked_row(big, 2, 30, true), make(0.7f, 20, 1.0f, 0.0f)});
  cases.push_back({"top-p", peaked_row(big, 3, 30, false), make(1.0f, 0, 0.9f, 0.0f)});
  cases.push_back({"min-p", peaked_row(big, 4, 30, false), make(1.3f, 0, 1.0f, 0.05f)});
  cases.push_back({"top-k + top-p + min-p", peaked_row(32003, 5, 60, true), make(0.8f, 50, 0.8f, 0.02f)});
  // k = 300: the blocks' own pushes (>= 300 each) overflow the list, so phase 3 gathers the row's cut.
  cases.push_back({"top-k 300 (phase 3)", peaked_row(big, 13, 30, false), make(1.0f, 300, 1.0f, 0.0f)});
  cases.push_back({"top-k 300 + top-p (phase 3)", peaked_row(big, 14, 30, false), make(0.9f, 300, 0.8f, 0.0f)});
  {  // 3000 near-equal top logits: the bucket holds > 2048 candidates, so the exact radix search runs.
    std::vector<float> row = peaked_row(big, 6, 0, false);
    for (int i = 0; i < 3000; ++i) row[static_cast<size_t>(i) * 37] = 12.0f + static_cast<float>(i % 997) * 1e-5f;
    cases.push_back({"radix top-k", row, make(1.0f, 10, 1.0f, 0.0f)});
    cases.push_back({"radix top-p", row, make(1.0f, 0, 0.002f, 0.0f)});
    cases.push_back({"radix top-k + top-p", row, make(1.0f, 2500, 0.0025f, 0.0f)});
  }
  {  // exact ties at the top: the top-p cut falls inside the ties, by id
    std::vector<float> row = peaked_row(big, 8, 0, false);
    for (int i = 0; i < 3000; ++i) row[static_cast<size_t>(i) * 41 + 5] = 12.0f;
    cases.push_back({"radix top-p inside ties", row, make(1.0f, 0, 0.0018f, 0.0f)});
    std::vector<float> small(row.begin(), row.begin() + 60000);  // ~1460 ties: fast path
    cases.push_back({"top-p inside ties", small, make(1.0f, 0, 0.004f, 0.0f)});
    cases.push_back({"top-k keeps all ties", small, make(1.0f, 7, 1.0f, 0.0f)});
  }
  {  // a flat distribution: a top-p nucleus of tens of thousands of tokens
    std::vector<float> row = peaked_row(big, 9, 0, false);
    for (float& x : row) x *= 0.1f;
    cases.push_back({"flat top-p", row, make(1.0f, 0, 0.5f, 0.0f)});
    cases.push_back({"large top-k", row, make(1.0f, 5000, 1.0f, 0.0f)});
  }
  {  // penalties, then top-p
    scenario s{"penalties + top-p", peaked_row(big, 10, 30, false), make(0.9f, 0, 0.9f, 0.0f)};
    s.p.repetition_penalty = 1.4f;
    s.p.frequency_penalty = 0.3f;
    cases.push_back(s);
  }
  for (const scenario& sc : cases) {
    CAPTURE(sc.name);
    const int64_t rows = 64;
    const int launches = 100;
    batch_in in = replicate(sc.row, rows, sc.p);
    std::vector<int32_t> prompt, output;
    const bool pen = sc.p.repetition_penalty != 1.0f || sc.p.frequency_penalty != 0.0f;
    if (pen) {
      std::vector<size_t> ids(sc.row.size());
      std::iota(ids.begin(), ids.end(), 0);
      std::partial_sort(ids.begin(), ids.begin() + 10, ids.end(), [&](size_t a, size_t b) { return sc.row[a] > sc.row[b]; });
      for (int i = 0; i < 10; i += 2) prompt.push_back(static_cast<int32_t>(ids[static_cast<size_t>(i)]));
      for (int i = 0; i < 10; i += 3) output.push_back(static_cast<int32_t>(ids[static_cast<size_t>(i)]));
      in.prompt.assign(static_cast<size_t>(rows), prompt);
      in.output.assign(static_cast<size_t>(rows), output);
    }
    const batch_out out = run_gpu(in, launches);
    const auto ref = reference(penalised(sc.row.data(), in.vocab, sc.p, prompt, output), sc.p);
    MESSAGE(sc.name << ": kept " << ref.size() << " tokens");
    check_distribution(flatten(out.tokens), ref, sc.name);
    for (const auto& p : out.params_after) CHECK(p.step == static_cast<uint64_t>(launches));
  }
}

TEST_CASE("sample_cuda draws are reproducible per (seed, step) and independent of the batch") {
  const int64_t vocab = 151936;
  const std::vector<float> row = peaked_row(vocab, 11, 200, false);
  batch_in a = replicate(row, 32, make(1.0f, 0, 0.95f, 0.0f));
  const batch_out r1 = run_gpu(a, 4), r2 = run_gpu(a, 4);
  CHECK(r1.tokens == r2.tokens);
  // Row 0 alone, and after other rows, gives the same tokens as in the batch.
  batch_in one = replicate(row, 1, make(1.0f, 0, 0.95f, 0.0f));
  const batch_out r3 = run_gpu(one, 4);
  for (int l = 0; l < 4; ++l) CHECK(r3.tokens[static_cast<size_t>(l)][0] == r1.tokens[static_cast<size_t>(l)][0]);
  // Different seeds (rows) and different steps (launches) differ.
  std::set<int32_t> per_row(r1.tokens[0].begin(), r1.tokens[0].end());
  CHECK(per_row.size() > 8);
  int changed = 0;
  for (size_t i = 0; i < r1.tokens[0].size(); ++i) changed += r1.tokens[0][i] != r1.tokens[1][i];
  CHECK(changed > 8);
}

TEST_CASE("sample_cuda mixed batch: greedy and sampled rows, every output written, graph replay") {
  const int64_t vocab = 128256, rows = 24;
  batch_in in;
  in.batch = rows;
  in.vocab = vocab;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> row = peaked_row(vocab, 500 + static_cast<uint64_t>(r), 30, r % 4 == 1);
    in.logits.insert(in.logits.end(), row.begin(), row.end());
    sample_row_params q;
    switch (r % 6) {
      case 0: q = make(0.0f, 0, 1.0f, 0.0f); break;
      case 1: q = make(0.6f, 30, 1.0f, 0.0f); break;
      case 2: q = make(1.0f, 0, 0.85f, 0.0f); break;
      case 3: q = make(1.2f, 0, 1.0f, 0.1f); break;
      case 4: q = make(0.0f, 5, 0.5f, 0.0f); break;  // greedy ignores the filters
      default: q = make(0.9f, 100, 0.9f, 0.05f); break;
    }
    q.seed = 42 + static_cast<uint64_t>(r);
    q.logprobs = static_cast<int32_t>(r % 3 == 0 ? 3 : -1);
    in.params.push_back(q);
  }
  const batch_out out = run_gpu(in, 3);
  for (int64_t r = 0; r < rows; ++r) {
    CAPTURE(r);
    const auto& q = in.params[static_cast<size_t>(r)];
    const std::vector<float> row(in.logits.begin() + r * vocab, in.logits.begin() + (r + 1) * vocab);
    const auto ref = reference(row, q);
    for (int l = 0; l < 3; ++l) CHECK(ref.count(out.tokens[static_cast<size_t>(l)][static_cast<size_t>(r)]) == 1);
    if (q.temperature == 0.0f) {
      sampler cpu(to_cpu(q, 1), vocab, {});
      CHECK(out.tokens[0][static_cast<size_t>(r)] == cpu.sample(row));
    }
    const float lp = out.logprob[static_cast<size_t>(r)];
    CHECK(!std::isnan(lp));
    CHECK(lp <= 0.0f);
    for (int i = 0; i < sample_top_max; ++i) {
      const int32_t id = out.top_ids[static_cast<size_t>(r) * sample_top_max + static_cast<size_t>(i)];
      CHECK((id == -1 || (id >= 0 && id < vocab)));
      CHECK((i < (q.logprobs > 0 ? q.logprobs : 0)) == (id != -1));
    }
  }

  // Captured in a CUDA graph with advance_step, replays give the same tokens as plain launches.
  device_buffer logits = upload(in.logits), params = upload(in.params), tokens(static_cast<size_t>(rows) * 4);
  const size_t ws_bytes = sample_workspace_bytes(rows, vocab);
  device_buffer ws(ws_bytes);
  ws.fill(0);
  sample_outputs o;
  o.tokens = tokens.as<int32_t>();
  cudaStream_t s;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  cudaGraph_t graph;
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  sample_cuda(logits.as<float>(), rows, vocab, params.as<sample_row_params>(), {}, o, ws.data(), ws_bytes, true, s);
  REQUIRE(cudaStreamEndCapture(s, &graph) == cudaSuccess);
  cudaGraphExec_t exec;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (int l = 0; l < 3; ++l) {
    REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
    cuda_sync(s);
    CHECK(download<int32_t>(tokens, static_cast<size_t>(rows)) == out.tokens[static_cast<size_t>(l)]);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

TEST_CASE("sample_cuda rejects bad arguments, each for its own reason") {
  const size_t ws_bytes = sample_workspace_bytes(4, 1000);
  device_buffer buf(ws_bytes), ws(ws_bytes);
  ws.fill(0);
  sample_outputs o;
  o.tokens = buf.as<int32_t>();
  auto* p = buf.as<sample_row_params>();
  const float* l = buf.as<float>();
  auto message = [&](auto&& call) -> std::string {
    try {
      call();
    } catch (const troupe::error& e) {
      return e.what();
    }
    return "no error";
  };
  CHECK(message([&] { sample_cuda(l, 1, 0, p, {}, o, ws.data(), ws_bytes, false, nullptr); }).find("vocab") != std::string::npos);
  CHECK(message([&] { sample_cuda(l, 1, sample_vocab_max + 1, p, {}, o, ws.data(), ws_bytes, false, nullptr); })
            .find("vocab") != std::string::npos);
  CHECK(message([&] { sample_cuda(l, sample_batch_max + 1, 8, p, {}, o, ws.data(), ws_bytes, false, nullptr); })
            .find("batch") != std::string::npos);
  CHECK(message([&] { sample_cuda(nullptr, 1, 8, p, {}, o, ws.data(), ws_bytes, false, nullptr); }).find("logits") !=
        std::string::npos);
  CHECK(message([&] { sample_cuda(l, 1, 8, nullptr, {}, o, ws.data(), ws_bytes, false, nullptr); }).find("params") !=
        std::string::npos);
  CHECK(message([&] { sample_cuda(l, 1, 8, p, {}, sample_outputs{}, ws.data(), ws_bytes, false, nullptr); })
            .find("tokens") != std::string::npos);
  CHECK(message([&] { sample_cuda(l, 4, 1000, p, {}, o, ws.data(), ws_bytes - 1, false, nullptr); }).find("workspace") !=
        std::string::npos);
  CHECK(message([&] { sample_cuda(l, 1, 8, p, {}, o, ws.data(), ws_bytes, false, nullptr, 4); }).find("phases") !=
        std::string::npos);
  sample_history h;
  h.offsets = buf.as<int32_t>();
  CHECK(message([&] { sample_cuda(l, 1, 8, p, h, o, ws.data(), ws_bytes, false, nullptr); }).find("history") !=
        std::string::npos);
  CHECK_NOTHROW(sample_cuda(l, 0, 8, p, {}, o, nullptr, 0, false, nullptr));
}

TEST_CASE("sample_cuda radix paths, small (for the sanitizers)") {
  // > 2048 tokens tied at the max: the top-k, top-p and top-N searches all take the radix path.
  const int64_t vocab = 9000;
  std::vector<float> row = peaked_row(vocab, 12, 0, false);
  for (int i = 0; i < 3000; ++i) row[static_cast<size_t>(i) * 3] = 9.0f;
  batch_in in;
  in.batch = 4;
  in.vocab = vocab;
  const sample_row_params ps[] = {make(1.0f, 5, 1.0f, 0.0f), make(1.0f, 0, 0.001f, 0.0f), make(1.0f, 2500, 0.5f, 0.0f),
                                  make(0.0f, 0, 1.0f, 0.0f)};
  for (int r = 0; r < 4; ++r) {
    in.logits.insert(in.logits.end(), row.begin(), row.end());
    sample_row_params q = ps[r];
    q.seed = 9 + static_cast<uint64_t>(r);
    q.logprobs = 20;
    in.params.push_back(q);
  }
  const batch_out out = run_gpu(in, 2);
  for (int r = 0; r < 4; ++r) {
    CAPTURE(r);
    const auto ref = reference(row, in.params[static_cast<size_t>(r)]);
    for (int l = 0; l < 2; ++l) CHECK(ref.count(out.tokens[static_cast<size_t>(l)][static_cast<size_t>(r)]) == 1);
    for (int i = 0; i < sample_top_max; ++i)  // the 20 lowest ids among the tied maxima
      CHECK(out.top_ids[static_cast<size_t>(r) * sample_top_max + static_cast<size_t>(i)] == 3 * i);
  }
}

TEST_CASE("sample_cuda tokens do not depend on the batch (block split) or on a reused workspace") {
  // Batch 256 spreads each row's tiles over fewer, larger blocks than batch 1;
  // the plans cover phase 2 draws, gathered cuts with a summarised part above
  // them (bulk top-p, large top-k) and without, min-p, penalties and logprobs.
  const int64_t vocab = 128256;
  const std::vector<float> row = peaked_row(vocab, 21, 40, false);  // the bench's shape: half the mass in the bulk
  std::vector<int32_t> prompt, output;
  for (int i = 0; i < 40; ++i) prompt.push_back(static_cast<int32_t>((i * 7919) % vocab));
  for (int i = 0; i < 12; ++i) output.push_back(static_cast<int32_t>((i * 104729) % vocab));
  std::vector<sample_row_params> plans = {make(1.0f, 0, 1.0f, 0.0f),   make(1.0f, 0, 0.9f, 0.0f),
                                          make(0.8f, 50, 0.95f, 0.0f), make(1.0f, 3000, 1.0f, 0.0f),
                                          make(1.5f, 0, 1.0f, 0.02f),  make(0.7f, 0, 0.5f, 0.01f),
                                          make(0.0f, 0, 1.0f, 0.0f)};
  sample_row_params pen = make(1.0f, 0, 0.9f, 0.0f);
  pen.repetition_penalty = 1.2f;
  pen.frequency_penalty = 0.5f;
  plans.push_back(pen);
  workspace shared(sample_workspace_bytes(256, vocab));
  for (size_t pi = 0; pi < plans.size(); ++pi) {
    CAPTURE(pi);
    sample_row_params q = plans[pi];
    q.logprobs = pi % 2 == 0 ? 5 : -1;
    batch_in one = replicate(row, 1, q), big = replicate(row, 256, q);
    one.prompt = {prompt};
    one.output = {output};
    big.prompt.assign(256, prompt);
    big.output.assign(256, output);
    const batch_out a = run_gpu(one, 3), b = run_gpu(big, 3, false, &shared), c = run_gpu(one, 3, false, &shared);
    for (int l = 0; l < 3; ++l) {
      CHECK(a.tokens[static_cast<size_t>(l)][0] == b.tokens[static_cast<size_t>(l)][0]);
      CHECK(a.tokens[static_cast<size_t>(l)][0] == c.tokens[static_cast<size_t>(l)][0]);
    }
    CHECK(a.logprob[0] == doctest::Approx(b.logprob[0]).epsilon(1e-5));
    for (int i = 0; i < sample_top_max; ++i) CHECK(a.top_ids[static_cast<size_t>(i)] == b.top_ids[static_cast<size_t>(i)]);
    // Every row of the big batch is valid for its reference, and rows (seeds) differ.
    const auto ref = reference(penalised(row.data(), vocab, q, prompt, output), q);
    std::set<int32_t> distinct;
    for (int64_t r = 0; r < 256; ++r) {
      const int32_t t = b.tokens[0][static_cast<size_t>(r)];
      CHECK(ref.count(t) == 1);
      distinct.insert(t);
    }
    MESSAGE("plan " << pi << ": kept " << ref.size() << " tokens, " << distinct.size() << " distinct in 256 rows");
    if (ref.size() > 100) CHECK(distinct.size() > 20);
  }
}

TEST_CASE("sample_cuda runs only the phases asked: greedy rows finish in phase 1") {
  const int64_t vocab = 32003, rows = 8;
  batch_in in;
  in.batch = rows;
  in.vocab = vocab;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> row = peaked_row(vocab, 900 + static_cast<uint64_t>(r), 10, false);
    in.logits.insert(in.logits.end(), row.begin(), row.end());
    sample_row_params q = make(0.0f, 0, 1.0f, 0.0f);
    q.logprobs = r % 2 == 0 ? 0 : -1;  // the chosen token's logprob needs no top-N
    in.params.push_back(q);
    CHECK(sample_row_phases(q) == 1);
  }
  const batch_out one = run_gpu(in, 1, false, nullptr, 1), all = run_gpu(in, 1);
  CHECK(one.tokens == all.tokens);
  CHECK(one.logprob == all.logprob);
  CHECK(sample_row_phases(make(1.0f, 0, 1.0f, 0.1f)) == 2);
  CHECK(sample_row_phases(make(1.0f, 40, 1.0f, 0.0f)) == 3);
  sample_row_params lp = make(0.0f, 0, 1.0f, 0.0f);
  lp.logprobs = 3;
  CHECK(sample_row_phases(lp) == 3);
  // A sampled row in a phase-1 launch gets no token (the poison stays).
  in.params[1] = make(1.0f, 0, 1.0f, 0.0f);
  const batch_out partial = run_gpu(in, 1, false, nullptr, 1);
  CHECK(partial.tokens[0][0] == all.tokens[0][0]);
  CHECK(partial.tokens[0][1] == 0x7f7f7f7f);
}

TEST_CASE("sample_context: one upload, tokens and logprobs back, same tokens as sample_cuda") {
  const int64_t vocab = 151936, rows = 6;
  std::vector<float> logits;
  std::vector<sample_row_params> params;
  std::vector<std::vector<sample_token_stat>> hist(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> row = peaked_row(vocab, 700 + static_cast<uint64_t>(r), 25, false);
    logits.insert(logits.end(), row.begin(), row.end());
    sample_row_params q = r % 3 == 0 ? make(0.0f, 0, 1.0f, 0.0f) : make(0.9f, r % 3 == 1 ? 40 : 0, 0.92f, 0.0f);
    q.seed = 5 + static_cast<uint64_t>(r);
    q.step = 17;
    q.logprobs = static_cast<int32_t>(r % 2 == 0 ? 4 : -1);
    if (r >= 3) {
      q.repetition_penalty = 1.3f;
      q.presence_penalty = 0.4f;
      hist[static_cast<size_t>(r)] = history_of(q, {1, 2, 3, 900, 900}, {7, 7, 8, static_cast<int32_t>(vocab - 1)}, vocab);
    }
    params.push_back(q);
  }
  device_buffer dl = upload(logits);
  std::vector<sample_row_host> host;
  for (int64_t r = 0; r < rows; ++r)
    host.push_back({params[static_cast<size_t>(r)], hist[static_cast<size_t>(r)].data(), hist[static_cast<size_t>(r)].size()});
  sample_context ctx;
  for (int round = 0; round < 2; ++round) {  // the second round reuses every buffer
    ctx.enqueue(dl.as<float>(), vocab, host.data(), host.size(), nullptr);
    cuda_sync(nullptr);
    batch_in in;
    in.batch = rows;
    in.vocab = vocab;
    in.logits = logits;
    in.params = params;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<int32_t> gen;
      for (const auto& e : hist[static_cast<size_t>(r)])
        for (int c = 0; c < e.generated; ++c) gen.push_back(e.token);
      std::vector<int32_t> pr;
      for (const auto& e : hist[static_cast<size_t>(r)])
        if (e.in_prompt) pr.push_back(e.token);
      in.prompt.push_back(pr);
      in.output.push_back(gen);
    }
    const batch_out want = run_gpu(in, 1);
    for (int64_t r = 0; r < rows; ++r) {
      CAPTURE(r);
      const sample_row_result got = ctx.result(static_cast<size_t>(r));
      CHECK(got.token == want.tokens[0][static_cast<size_t>(r)]);
      const int n = std::max(params[static_cast<size_t>(r)].logprobs, 0);
      CHECK(got.n_top == n);
      if (params[static_cast<size_t>(r)].logprobs >= 0) CHECK(got.logprob == want.logprob[static_cast<size_t>(r)]);
      for (int i = 0; i < n; ++i) CHECK(got.top_ids[i] == want.top_ids[static_cast<size_t>(r) * sample_top_max + static_cast<size_t>(i)]);
    }
  }
  CHECK_THROWS_AS(ctx.result(static_cast<size_t>(rows)), troupe::error);
  // Histories must be sorted and in range: checked on the host with a message.
  std::vector<sample_token_stat> bad = {{5, 1, 0}, {3, 1, 0}};
  sample_row_host b = host[3];
  b.history = bad.data();
  b.history_size = bad.size();
  CHECK_THROWS_AS(ctx.enqueue(dl.as<float>(), vocab, &b, 1, nullptr), troupe::error);
}

TEST_CASE("request_sampler: history for the device, seed resolved, step = tokens generated") {
  sampling_params p;
  p.repetition_penalty = 1.1f;
  p.frequency_penalty = 0.2f;
  const std::vector<int32_t> prompt = {9, 3, 3, 70000, -1, 5};
  request_sampler s(p, 1000, prompt);
  REQUIRE(s.params().seed.has_value());
  for (int32_t t : {5, 5, 11, 2000, 3}) s.accept(t);
  const auto h = s.history();
  const std::vector<std::array<int32_t, 3>> want = {{3, 1, 1}, {5, 2, 1}, {9, 0, 1}, {11, 1, 0}};
  REQUIRE(h.size() == want.size());
  for (size_t i = 0; i < h.size(); ++i) {
    CHECK(h[i].token == want[i][0]);
    CHECK(h[i].generated == want[i][1]);
    CHECK(h[i].in_prompt == want[i][2]);
  }
  CHECK(s.generated_count() == 4);  // 2000 is out of range
  const sample_row_params d = s.device_params(2);
  CHECK(d.step == 4);
  CHECK(d.seed == *s.params().seed);
  CHECK(d.logprobs == 2);
  sampling_params plain;
  request_sampler q(plain, 1000, prompt);
  q.accept(4);
  CHECK(q.history().empty());  // no penalty: nothing to send
}

TEST_CASE("sample_cuda count cuts whose block pushes overflow are gathered in phase 3") {
  // Tile 0 holds the 20 best logits; every other tile holds 200 ties far
  // below. Each of those blocks pushes its 200 ties for a cut of 20, which
  // overflows the row's list: top-k 20 and the top-20 logprobs are then
  // gathered from the row's own cut in phase 3.
  const int64_t vocab = 151936;
  std::mt19937_64 rng(31);
  std::normal_distribution<float> d(-10.0f, 1.0f);
  std::vector<float> row(static_cast<size_t>(vocab));
  for (float& x : row) x = d(rng);
  for (int i = 0; i < 20; ++i) row[static_cast<size_t>(100 + 37 * i)] = 20.0f + 0.01f * static_cast<float>(i % 7);
  for (int64_t t = 1; t * 4096 < vocab; ++t)
    for (int i = 0; i < 200; ++i) {
      const int64_t at = t * 4096 + 3 + 17 * i;
      if (at < vocab) row[static_cast<size_t>(at)] = 5.0f;
    }
  sample_row_params q = make(1.0f, 20, 1.0f, 0.0f);
  q.logprobs = 20;
  batch_in in = replicate(row, 2, q);
  const batch_out out = run_gpu(in, 50);
  const auto ref = reference(row, q);
  REQUIRE(ref.size() == 20);
  std::vector<int32_t> draws = flatten(out.tokens);
  check_distribution(draws, ref, "top-k 20 from phase 3");
  std::vector<float> lsm(static_cast<size_t>(vocab));
  sampler::log_softmax(row, lsm);
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + 20, ids.end(), [&](int32_t a, int32_t b) {
    const float la = lsm[static_cast<size_t>(a)], lb = lsm[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  });
  for (int i = 0; i < 20; ++i) {
    CHECK(out.top_ids[static_cast<size_t>(i)] == ids[static_cast<size_t>(i)]);
    CHECK(std::fabs(out.top_lps[static_cast<size_t>(i)] - lsm[static_cast<size_t>(ids[static_cast<size_t>(i)])]) <= 1e-4);
  }
}
