// The sampling pipeline on one row of logits. One pass builds a candidate list
// in token-id order (NaN -> -inf) and applies penalties in place; top-k finds
// its threshold with nth_element on a copy of the logits and filters the list
// without reordering it; top-p sorts only a growing prefix (a nucleus is usually
// a few dozen tokens of 150k); min-p filters in place. Every reduction runs in
// id order or (logit desc, id asc) order, so a seed gives the same tokens on any
// standard library. See sampler.hpp for why the state is split the way it is.
#include "model/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>

namespace troupe {

namespace {

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

/// One token still in the running: its penalised logit and, once computed,
/// its unnormalised probability exp((logit - max) / T).
struct candidate {
  float logit;
  int32_t id;
  float weight;
};

/// Canonical order: higher logit first, ties by lower id.
bool candidate_before(const candidate& a, const candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

/// Vocab-sized buffers shared by all samplers on this thread; only used inside one call.
struct sampler_scratch {
  std::vector<candidate> candidates;
  std::vector<float> values;
};

sampler_scratch& scratch() {
  thread_local sampler_scratch s;
  return s;
}

float sanitize(float x) { return std::isnan(x) ? neg_inf : x; }

/// Uniform double in [0, 1) from the top 53 bits of one raw draw.
double uniform_01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

bool in_range(float v, float lo, float hi) { return v >= lo && v <= hi; }  // false for NaN

/// "<name> must <rule>, got <value>" with the value printed as written ("1.5", not "1.500000").
template <typename T>
std::string out_of_range(const char* name, const char* rule, T value) {
  std::ostringstream s;
  s << name << " must " << rule << ", got " << value;
  return s.str();
}

}  // namespace

std::string sampling_params_validate(const sampling_params& p) {
  if (!(p.temperature >= 0.0f) || std::isinf(p.temperature))
    return out_of_range("temperature", "be a finite number >= 0", p.temperature);
  if (p.top_k < -1)
    return out_of_range("top_k", "be -1, 0 (off) or >= 1", p.top_k);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
    return out_of_range("top_p", "be in (0, 1]", p.top_p);
  if (!in_range(p.min_p, 0.0f, 1.0f))
    return out_of_range("min_p", "be in [0, 1]", p.min_p);
  if (!(p.repetition_penalty > 0.0f) || std::isinf(p.repetition_penalty))
    return out_of_range("repetition_penalty", "be a finite number > 0", p.repetition_penalty);
  if (!in_range(p.frequency_penalty, -2.0f, 2.0f))
    return out_of_range("frequency_penalty", "be in [-2, 2]", p.frequency_penalty);
  if (!in_range(p.presence_penalty, -2.0f, 2.0f))
    return out_of_range("presence_penalty", "be in [-2, 2]", p.presence_penalty);
  return {};
}

sampler::sampler(const sampling_params& p, int64_t vocab_size, std::span<const int32_t> prompt_tokens)
    : params_(p), vocab_size_(std::max<int64_t>(vocab_size, 0)) {
  if (p.seed) {
    rng_.seed(*p.seed);
  } else {
    std::random_device rd;
    rng_.seed((static_cast<uint64_t>(rd()) << 32) ^ rd());
  }
  if (p.repetition_penalty != 1.0f) {
    for (int32_t t : prompt_tokens)
      if (t >= 0 && t < vocab_size_) prompt_tokens_.push_back(t);
    std::sort(prompt_tokens_.begin(), prompt_tokens_.end());
    prompt_tokens_.erase(std::unique(prompt_tokens_.begin(), prompt_tokens_.end()), prompt_tokens_.end());
  }
}

void sampler::accept(int32_t token) {
  if (token < 0 || token >= vocab_size_) return;
  ++generated_counts_[token];
  ++generated_count_;
}

template <typename Row>
void sampler::apply_penalties_(Row& row) const {
  const float r = params_.repetition_penalty;
  auto repeat = [r](float& x) { x = x > 0.0f ? x / r : x * r; };
  if (r != 1.0f)
    for (int32_t t : prompt_tokens_) repeat(row(t));
  const float f = params_.frequency_penalty, pr = params_.presence_penalty;
  for (const auto& [t, count] : generated_counts_) {
    float& x = row(t);
    if (r != 1.0f && !std::binary_search(prompt_tokens_.begin(), prompt_tokens_.end(), t)) repeat(x);
    x -= f * static_cast<float>(count) + pr;
  }
}

int32_t sampler::sample(std::span<const float> logits) {
  const int32_t token = [&]() -> int32_t {
    const auto n = static_cast<size_t>(vocab_size_);
    if (n == 0) return 0;
    auto& cand = scratch().candidates;
    cand.resize(n);
    const size_t given = std::min(n, logits.size());
    for (size_t i = 0; i < n; ++i)
      cand[i] = {i < given ? sanitize(logits[i]) : neg_inf, static_cast<int32_t>(i), 0.0f};
    auto at = [&cand](int32_t t) -> float& { return cand[static_cast<size_t>(t)].logit; };
    apply_penalties_(at);

    // Greedy, or the max the softmax is taken against (first max = lowest id).
    size_t best = 0;
    for (size_t i = 1; i < n; ++i)
      if (cand[i].logit > cand[best].logit) best = i;
    const float max_logit = cand[best].logit;
    if (params_.temperature < sampling_greedy_eps || max_logit == neg_inf) return static_cast<int32_t>(best);

    // Tokens at -inf can never be drawn; drop them (id order kept).
    std::erase_if(cand, [](const candidate& c) { return c.logit == neg_inf; });

    // top-k: keep logits >= the k-th largest (ties kept, as vLLM).
    const int32_t k = params_.top_k;
    if (k > 0 && static_cast<size_t>(k) < cand.size()) {
      auto& vals = scratch().values;
      vals.resize(cand.size());
      std::transform(cand.begin(), cand.end(), vals.begin(), [](const candidate& c) { return c.logit; });
      std::nth_element(vals.begin(), vals.begin() + (k - 1), vals.end(), std::greater<float>());
      const float kth = vals[static_cast<size_t>(k - 1)];
      std::erase_if(cand, [kth](const candidate& c) { return c.logit < kth; });
    }

    // Unnormalised probabilities; the max token has weight 1 (also when it is +inf).
    const float inv_t = 1.0f / params_.temperature;
    double total = 0.0;
    for (auto& c : cand) {
      c.weight = c.logit == max_logit ? 1.0f : std::exp((c.logit - max_logit) * inv_t);
      total += c.weight;
    }

    // top-p: the smallest (logit desc, id asc) prefix whose mass reaches top_p.
    if (params_.top_p < 1.0f) {
      const double target = static_cast<double>(params_.top_p) * total;
      double cum = 0.0;
      size_t sorted = 0, keep = 0;  // [0, sorted) is in canonical order
      for (size_t want = 64; keep == 0 && sorted < cand.size(); want *= 2) {
        const size_t end = std::min(want, cand.size());
        const auto first = cand.begin();
        std::nth_element(first + static_cast<std::ptrdiff_t>(sorted), first + static_cast<std::ptrdiff_t>(end),
                         cand.end(), candidate_before);
        std::sort(first + static_cast<std::ptrdiff_t>(sorted), first + static_cast<std::ptrdiff_t>(end), candidate_before);
        for (; sorted < end && keep == 0; ++sorted) {
          cum += cand[sorted].weight;
          if (cum >= target) keep = sorted + 1;
        }
      }
      cand.resize(keep == 0 ? cand.size() : keep);  // keep == 0: rounding kept the mass short; keep all
    }

    // min-p: drop tokens whose probability is below min_p times the largest (weight 1).
    if (params_.min_p > 0.0f) {
      const float floor_weight = params_.min_p;
      std::erase_if(cand, [floor_weight](const candidate& c) { return c.weight < floor_weight; });
    }

    // Draw: walk the cumulative distribution in the list's canonical order.
    double mass = 0.0;
    for (const auto& c : cand) mass += c.weight;
    const double u = uniform_01(rng_) * mass;
    double cum = 0.0;
    int32_t last = cand.front().id;
    for (const auto& c : cand) {
      if (c.weight <= 0.0f) continue;
      cum += c.weight;
      last = c.id;
      if (u < cum) return c.id;
    }
    return last;
  }();
  accept(token);
  return token;
}

void sampler::processed_log_softmax(std::span<const float> logits, std::span<float> out) const {
  const size_t n = std::min(out.size(), static_cast<size_t>(vocab_size_));
  for (size_t i = 0; i < n; ++i) out[i] = i < logits.size() ? sanitize(logits[i]) : neg_inf;
  std::span<float> row = out.first(n);
  auto at = [row](int32_t t) -> float& { return row[static_cast<size_t>(t)]; };
  apply_penalties_(at);
  if (params_.temperature >= sampling_greedy_eps && params_.temperature != 1.0f)
    for (float& x : row) x /= params_.temperature;
  log_softmax(row, row);
}

void sampler::log_softmax(std::span<const float> in, std::span<float> out) {
  const size_t n = std::min(in.size(), out.size());
  float max_v = neg_inf;
  for (size_t i = 0; i < n; ++i) max_v = std::max(max_v, sanitize(in[i]));
  if (max_v == neg_inf) {
    std::fill_n(out.begin(), n, neg_inf);
    return;
  }
  const bool inf_max = std::isinf(max_v);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const float x = sanitize(in[i]);
    sum += inf_max ? (x == max_v ? 1.0 : 0.0) : std::exp(static_cast<double>(x) - max_v);
  }
  const double log_sum = std::log(sum);
  for (size_t i = 0; i < n; ++i) {
    const float x = sanitize(in[i]);
    const double shifted = inf_max ? (x == max_v ? 0.0 : -std::numeric_limits<double>::infinity())
                                   : static_cast<double>(x) - max_v;
    out[i] = static_cast<float>(shifted - log_sum);
  }
}

}  // namespace troupe
