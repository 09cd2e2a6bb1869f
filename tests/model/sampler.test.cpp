// Sampler behaviour against vLLM's semantics: greedy and ties, seeding, each
// truncation (top-k, top-p, min-p) on distributions whose answer is known,
// empirical frequencies against exact softmax probabilities, the three
// penalties via greedy flips and exact processed logprobs, NaN/inf rows, and
// parameter validation. Every draw is seeded, so each test is deterministic.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include "model/sampler.hpp"

using troupe::sampler;
using troupe::sampling_params;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

sampling_params seeded(uint64_t seed) {
  sampling_params p;
  p.seed = seed;
  return p;
}

sampling_params greedy() {
  sampling_params p;
  p.temperature = 0.0f;
  return p;
}

/// Logits whose softmax is exactly probs.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double q : probs) l.push_back(static_cast<float>(std::log(q)));
  return l;
}

/// Empirical frequency of each token over n draws from one sampler.
std::vector<double> frequencies(sampler& s, const std::vector<float>& logits, int n) {
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) {
    const int32_t t = s.sample(logits);
    REQUIRE(t >= 0);
    REQUIRE(t < static_cast<int32_t>(logits.size()));
    f[static_cast<size_t>(t)] += 1.0 / n;
  }
  return f;
}

std::vector<int32_t> draws(sampling_params p, const std::vector<float>& logits, int n) {
  sampler s(p, static_cast<int64_t>(logits.size()), {});
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.sample(logits));
  return out;
}

}  // namespace

TEST_CASE("greedy picks the argmax, ties the lowest id, and ignores the seed") {
  const std::vector<float> logits{0.1f, 2.0f, -3.0f, 1.9f};
  sampler s(greedy(), 4, {});
  CHECK(s.sample(logits) == 1);

  const std::vector<float> tied{0.5f, 3.0f, 1.0f, 3.0f, 3.0f};
  sampler t(greedy(), 5, {});
  CHECK(t.sample(tied) == 1);

  // Below vLLM's 1e-5 epsilon counts as greedy too.
  const std::vector<float> flat(64, 0.0f);
  for (uint64_t seed : {1u, 2u, 3u, 99u}) {
    sampling_params p = greedy();
    p.temperature = 1e-6f;
    p.seed = seed;
    sampler g(p, 64, {});
    for (int i = 0; i < 20; ++i) CHECK(g.sample(flat) == 0);
  }
}

TEST_CASE("same seed gives the same tokens, different seeds different ones") {
  std::vector<float> logits(32);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = 0.05f * static_cast<float>(i % 7);
  const auto a = draws(seeded(1234), logits, 200);
  const auto b = draws(seeded(1234), logits, 200);
  const auto c = draws(seeded(1235), logits, 200);
  CHECK(a == b);
  CHECK(a != c);
  // And the draws actually vary within a sequence.
  std::map<int32_t, int> seen;
  for (int32_t t : a) ++seen[t];
  CHECK(seen.size() > 20);
}

TEST_CASE("unseeded samplers differ from each other") {
  const std::vector<float> flat(1000, 0.0f);
  const auto a = draws(sampling_params{}, flat, 50);
  const auto b = draws(sampling_params{}, flat, 50);
  CHECK(a != b);
}

TEST_CASE("top-k=1 equals greedy at any temperature") {
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (float temperature : {0.3f, 1.0f, 5.0f, 50.0f}) {
    std::vector<float> logits(500);
    for (float& x : logits) x = normal(gen);
    sampler g(greedy(), 500, {});
    const int32_t want = g.sample(logits);
    sampling_params p = seeded(5);
    p.temperature = temperature;
    p.top_k = 1;
    sampler s(p, 500, {});
    for (int i = 0; i < 50; ++i) CHECK(s.sample(logits) == want);
  }
}

TEST_CASE("top-k=3 only returns the three highest logits, each of them") {
  std::vector<float> logits(200, 0.0f);
  logits[17] = 1.0f;
  logits[150] = 1.2f;
  logits[3] = 0.9f;
  logits[99] = 0.8f;  // fourth: must never appear
  sampling_params p = seeded(11);
  p.temperature = 3.0f;
  p.top_k = 3;
  sampler s(p, 200, {});
  const auto f = frequencies(s, logits, 5000);
  CHECK(f[17] + f[150] + f[3] == doctest::Approx(1.0));
  CHECK(f[17] > 0.2);
  CHECK(f[150] > 0.2);
  CHECK(f[3] > 0.2);
}

TEST_CASE("top-k keeps tokens tied with the k-th logit, as vLLM") {
  const std::vector<float> logits{5.0f, 1.0f, 1.0f, 1.0f, 0.0f};
  sampling_params p = seeded(3);
  p.top_k = 2;
  p.temperature = 10.0f;  // flatten so every kept token shows up
  sampler s(p, 5, {});
  const auto f = frequencies(s, logits, 4000);
  CHECK(f[4] == 0.0);
  CHECK(f[1] > 0.1);
  CHECK(f[2] > 0.1);
  CHECK(f[3] > 0.1);
}

TEST_CASE("top-p=0.5 only returns tokens in the nucleus, renormalised") {
  // Sorted probabilities 0.4, 0.3, 0.2, 0.1 (shuffled ids): the nucleus is {0.4, 0.3}.
  const auto logits = logits_of({0.2, 0.4, 0.1, 0.3});
  sampling_params p = seeded(21);
  p.top_p = 0.5f;
  sampler s(p, 4, {});
  const auto f = frequencies(s, logits, 20000);
  CHECK(f[0] == 0.0);
  CHECK(f[2] == 0.0);
  CHECK(std::abs(f[1] - 4.0 / 7.0) < 0.01);
  CHECK(std::abs(f[3] - 3.0 / 7.0) < 0.01);
}

TEST_CASE("top-p on a large vocabulary sorts past the first prefix and breaks ties by id") {
  // 150k tokens; 1000 of them tied at the top with all other mass negligible:
  // top_p = 0.5 keeps the 500 lowest-id tied tokens (needs several prefix rounds).
  const int64_t vocab = 150000;
  std::vector<float> logits(static_cast<size_t>(vocab), -40.0f);
  std::vector<int32_t> top;
  for (int32_t i = 0; i < 1000; ++i) top.push_back(i * 149 + 7);
  for (int32_t t : top) logits[static_cast<size_t>(t)] = 0.0f;
  sampling_params p = seeded(8);
  p.top_p = 0.5f;
  sampler s(p, vocab, {});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 1000; ++i) ++seen[s.sample(logits)];
  for (const auto& [t, n] : seen) {
    CHECK(logits[static_cast<size_t>(t)] == 0.0f);
    CHECK(t <= top[499]);
  }
  CHECK(seen.size() > 350);  // ~432 of the 500 expected
}

TEST_CASE("min-p drops tokens below min_p times the top probability") {
  // Threshold 0.2 * 0.5 = 0.1: token 3 (0.05) goes, token 2 (0.15) stays.
  const auto logits = logits_of({0.5, 0.3, 0.15, 0.05});
  sampling_params p = seeded(4);
  p.min_p = 0.2f;
  sampler s(p, 4, {});
  const auto f = frequencies(s, logits, 20000);
  CHECK(f[3] == 0.0);
  CHECK(std::abs(f[0] - 0.5 / 0.95) < 0.01);
  CHECK(std::abs(f[2] - 0.15 / 0.95) < 0.01);
}

TEST_CASE("empirical frequencies match softmax(logits / T)") {
  const std::vector<float> logits{1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f, -2.0f, 0.7f};
  for (float temperature : {0.7f, 1.0f, 2.5f}) {
    std::vector<double> exact(logits.size());
    double z = 0.0;
    for (size_t i = 0; i < logits.size(); ++i) z += exact[i] = std::exp(logits[i] / temperature);
    for (double& q : exact) q /= z;
    sampling_params p = seeded(42);
    p.temperature = temperature;
    sampler s(p, 8, {});
    const auto f = frequencies(s, logits, 20000);
    for (size_t i = 0; i < logits.size(); ++i) CHECK(std::abs(f[i] - exact[i]) < 0.01);
  }
}

TEST_CASE("repetition penalty divides positive and multiplies negative logits of prompt tokens") {
  sampling_params p = greedy();
  p.repetition_penalty = 1.5f;
  const std::vector<int32_t> prompt{0, 0, 5};
  sampler pos(p, 6, prompt);
  CHECK(pos.sample(std::vector<float>{2.0f, 1.5f, -1.0f, -1.2f, -9.f, -9.f}) == 1);  // 2/1.5 < 1.5
  sampler neg2(p, 6, std::vector<int32_t>{0});
  CHECK(neg2.sample(std::vector<float>{-1.0f, -1.2f, -9.f, -9.f, -9.f, -9.f}) == 1);  // -1.5 < -1.2
  sampler none(greedy(), 6, prompt);
  CHECK(none.sample(std::vector<float>{2.0f, 1.5f, -1.0f, -1.2f, -9.f, -9.f}) == 0);

  // Exact values, applied once per token (repeats in the prompt do not compound),
  // and to generated tokens too.
  sampling_params q = seeded(1);
  q.repetition_penalty = 2.0f;
  sampler s(q, 4, std::vector<int32_t>{1, 1, 1});
  s.accept(2);
  const std::vector<float> logits{0.0f, 4.0f, -3.0f, 1.0f};
  std::vector<float> out(4);
  s.processed_log_softmax(logits, out);
  CHECK(out[1] - out[0] == doctest::Approx(2.0));   // 4 / 2
  CHECK(out[2] - out[0] == doctest::Approx(-6.0));  // -3 * 2
  CHECK(out[3] - out[0] == doctest::Approx(1.0));   // untouched
}

TEST_CASE("frequency and presence penalties count generated tokens only") {
  const std::vector<float> logits{1.0f, 0.6f, 0.0f};
  sampling_params f = greedy();
  f.frequency_penalty = 0.5f;
  sampler fs(f, 3, std::vector<int32_t>{0, 0, 0});  // the prompt does not count
  std::vector<int32_t> got;
  for (int i = 0; i < 4; ++i) got.push_back(fs.sample(logits));
  CHECK(got == std::vector<int32_t>{0, 1, 0, 1});  // token 0: 1.0 -> 0.5 -> 0.0

  sampling_params pr = greedy();
  pr.presence_penalty = 0.5f;
  sampler ps(pr, 3, std::vector<int32_t>{0});
  got.clear();
  for (int i = 0; i < 4; ++i) got.push_back(ps.sample(logits));
  CHECK(got == std::vector<int32_t>{0, 1, 0, 0});  // token 0 stays at 0.5
  CHECK(ps.generated_count() == 4);

  // Exact: logit -= f * count + p * (count > 0); negative values reward repeats.
  sampling_params both = seeded(2);
  both.frequency_penalty = 0.25f;
  both.presence_penalty = -1.0f;
  sampler b(both, 3, {});
  b.accept(1);
  b.accept(1);
  b.accept(1);
  std::vector<float> out(3);
  b.processed_log_softmax(logits, out);
  CHECK(out[1] - out[0] == doctest::Approx((0.6 - 0.75 + 1.0) - 1.0));
  CHECK(out[2] - out[0] == doctest::Approx(-1.0));
}

TEST_CASE("processed logprobs divide by the temperature") {
  sampling_params p = seeded(1);
  p.temperature = 0.5f;
  sampler s(p, 3, {});
  std::vector<float> out(3);
  s.processed_log_softmax(std::vector<float>{1.0f, 0.0f, -1.0f}, out);
  CHECK(out[0] - out[1] == doctest::Approx(2.0));
  CHECK(std::exp(out[0]) + std::exp(out[1]) + std::exp(out[2]) == doctest::Approx(1.0));
}

TEST_CASE("NaN and infinite logits do not crash") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> with_nan{nan, 0.5f, nan, 0.2f};
  sampler g(greedy(), 4, {});
  CHECK(g.sample(with_nan) == 1);
  sampler s(seeded(1), 4, {});
  for (int i = 0; i < 200; ++i) {
    const int32_t t = s.sample(with_nan);
    CHECK((t == 1 || t == 3));
  }

  const std::vector<float> dead{-inf, nan, -inf};
  sampler d(seeded(1), 3, {});
  CHECK(d.sample(dead) == 0);
  sampler dg(greedy(), 3, {});
  CHECK(dg.sample(dead) == 0);

  sampling_params p = seeded(9);
  p.top_p = 0.9f;
  p.min_p = 0.1f;
  sampler hot(p, 4, {});
  for (int i = 0; i < 50; ++i) CHECK(hot.sample(std::vector<float>{0.0f, inf, 3.0f, nan}) == 1);
  sampler two_hot(seeded(9), 3, {});
  const auto f = frequencies(two_hot, std::vector<float>{inf, 5.0f, inf}, 2000);
  CHECK(f[1] == 0.0);
  CHECK(std::abs(f[0] - 0.5) < 0.05);

  // A short row counts its missing entries as -inf.
  sampler shortrow(seeded(1), 10, {});
  for (int i = 0; i < 50; ++i) CHECK(shortrow.sample(std::vector<float>{0.0f, 0.0f}) < 2);
}

TEST_CASE("log_softmax normalises and handles NaN and all -inf") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> row{1.0f, 2.0f, nan, 3.0f};
  sampler::log_softmax(row, row);  // in place
  double total = 0.0;
  for (float x : row) total += std::exp(static_cast<double>(x));
  CHECK(total == doctest::Approx(1.0));
  CHECK(row[2] == -inf);
  CHECK(row[3] - row[1] == doctest::Approx(1.0));

  std::vector<float> dead{-inf, -inf}, out(2);
  sampler::log_softmax(dead, out);
  CHECK(out[0] == -inf);
  CHECK(out[1] == -inf);
}

TEST_CASE("validation names the parameter that is out of range") {
  CHECK(troupe::sampling_params_validate(sampling_params{}).empty());
  sampling_params ok;
  ok.temperature = 0.0f;
  ok.top_k = -1;
  ok.top_p = 1.0f;
  ok.min_p = 1.0f;
  ok.frequency_penalty = -2.0f;
  ok.presence_penalty = 2.0f;
  ok.repetition_penalty = 0.1f;
  CHECK(troupe::sampling_params_validate(ok).empty());

  auto rejects = [](auto edit, const std::string& name) {
    sampling_params p;
    edit(p);
    const std::string msg = troupe::sampling_params_validate(p);
    CHECK_MESSAGE(msg.rfind(name + " must", 0) == 0, msg);
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  rejects([](sampling_params& p) { p.temperature = -0.1f; }, "temperature");
  rejects([&](sampling_params& p) { p.temperature = nan; }, "temperature");
  rejects([](sampling_params& p) { p.top_p = 0.0f; }, "top_p");
  rejects([](sampling_params& p) { p.top_p = 1.5f; }, "top_p");
  rejects([](sampling_params& p) { p.min_p = -0.1f; }, "min_p");
  rejects([](sampling_params& p) { p.min_p = 1.1f; }, "min_p");
  rejects([](sampling_params& p) { p.repetition_penalty = 0.0f; }, "repetition_penalty");
  rejects([](sampling_params& p) { p.repetition_penalty = -1.0f; }, "repetition_penalty");
  rejects([](sampling_params& p) { p.frequency_penalty = 2.5f; }, "frequency_penalty");
  rejects([](sampling_params& p) { p.frequency_penalty = -2.5f; }, "frequency_penalty");
  rejects([](sampling_params& p) { p.presence_penalty = 2.1f; }, "presence_penalty");
  rejects([](sampling_params& p) { p.presence_penalty = -2.1f; }, "presence_penalty");
  rejects([](sampling_params& p) { p.top_k = -2; }, "top_k");

  sampling_params bad;
  bad.top_p = 1.5f;
  CHECK(troupe::sampling_params_validate(bad) == "top_p must be in (0, 1], got 1.5");
}
