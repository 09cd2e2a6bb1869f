// model::forward beyond one sequence: mixed batches, pipeline layer ranges,
// and error paths that must leave the KV cache untouched.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "fixture.hpp"
#include "model/checkpoint.hpp"
#include "model/generate.hpp"
#include "model/model.hpp"

using namespace troupe;

namespace {

float max_rel_diff(std::span<const float> a, std::span<const float> b) {
  float m = 0.0f, s = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::abs(a[i] - b[i]));
    s = std::max(s, std::abs(b[i]));
  }
  return m / s;
}

}  // namespace

TEST_CASE("forward: a mixed batch (prefill chunk + decode token) equals running each alone") {
  const auto f = troupe_test::fixture_load("llama");
  model m = model::load(f.dir);
  const int64_t vocab = m.config().vocab_size;
  const std::span<const int32_t> p(f.prompt);
  // Reference: sequence A (40 tokens then 1), sequence B (30 tokens), alone.
  kv_cache ref(m.kv_config(8, 64));
  std::vector<float> a_last, b_last, tmp;
  REQUIRE(prefill(m, ref, 1, p.subspan(0, 40), 64, nullptr, &tmp) == errc::ok);
  REQUIRE(prefill(m, ref, 1, p.subspan(40, 1), 64, nullptr, &a_last) == errc::ok);
  REQUIRE(prefill(m, ref, 2, p.subspan(50, 30), 64, nullptr, &b_last) == errc::ok);
  // Batched: A's decode token together with B's whole prompt in one step.
  kv_cache kv(m.kv_config(8, 64));
  REQUIRE(prefill(m, kv, 1, p.subspan(0, 40), 64, nullptr, &tmp) == errc::ok);
  seq_chunk batch[] = {{2, p.subspan(50, 30), logits_mode::logits_last}, {1, p.subspan(40, 1), logits_mode::logits_last}};
  std::vector<float> out;
  REQUIRE(m.forward(batch, kv, out) == errc::ok);
  REQUIRE(out.size() == static_cast<size_t>(2 * vocab));
  CHECK(max_rel_diff(std::span(out).subspan(0, vocab), b_last) < 1e-5f);
  CHECK(max_rel_diff(std::span(out).subspan(vocab, vocab), a_last) < 1e-5f);
  CHECK(kv.length(1) == 41);
  CHECK(kv.length(2) == 30);
}

TEST_CASE("forward: two pipeline stages handing off hidden states equal the whole model") {
  const auto f = troupe_test::fixture_load("qwen2");  // tied embeddings: the last stage needs its own lm_head copy
  model whole = model::load(f.dir);
  model s0 = model::load(f.dir, {0, 1});
  model s1 = model::load(f.dir, {1, 2});
  CHECK(s0.weights().find("lm_head.weight") == nullptr);
  CHECK(s1.weights().find("model.embed_tokens.weight") == nullptr);
  REQUIRE(s1.weights().find("lm_head.weight") != nullptr);
  kv_cache k0(s0.kv_config(16, 32)), k1(s1.kv_config(16, 32)), kw(whole.kv_config(16, 32));
  const std::span<const int32_t> p(f.prompt);
  std::vector<float> hidden, logits_pp, logits_whole, none;
  for (size_t begin = 0; begin < p.size(); begin += 50) {
    const auto chunk = p.subspan(begin, std::min<size_t>(50, p.size() - begin));
    seq_chunk c{3, chunk, logits_mode::logits_all};
    REQUIRE(s0.forward({&c, 1}, k0, none, {nullptr, &hidden}) == errc::ok);
    CHECK(none.empty());
    REQUIRE(hidden.size() == chunk.size() * static_cast<size_t>(whole.config().hidden_size));
    std::vector<float> out;
    REQUIRE(s1.forward({&c, 1}, k1, out, {hidden.data(), nullptr}) == errc::ok);
    logits_pp.insert(logits_pp.end(), out.begin(), out.end());
  }
  REQUIRE(prefill(whole, kw, 3, p, 1 << 20, &logits_whole, nullptr) == errc::ok);
  REQUIRE(logits_pp.size() == logits_whole.size());
  CHECK(max_rel_diff(logits_pp, logits_whole) < 1e-5f);
  CHECK(max_rel_diff(logits_pp, f.logits) < 1e-3f);
}

TEST_CASE("forward: errors leave the KV cache unchanged") {
  const auto f = troupe_test::fixture_load("mistral");
  model m = model::load(f.dir);
  kv_cache kv(m.kv_config(16, 4));  // 64 token slots
  std::vector<float> out;
  const std::span<const int32_t> p(f.prompt);
  seq_chunk a{1, p.subspan(0, 40), logits_mode::logits_last};
  REQUIRE(m.forward({&a, 1}, kv, out) == errc::ok);
  CHECK(kv.free_pages() == 1);

  SUBCASE("exhaustion") {
    seq_chunk batch[] = {{1, p.subspan(40, 8), logits_mode::logits_last}, {2, p.subspan(0, 20), logits_mode::logits_last}};
    CHECK(m.forward(batch, kv, out) == errc::errc_kv_exhausted);
    CHECK(kv.length(1) == 40);
    CHECK_FALSE(kv.contains(2));
    CHECK(kv.free_pages() == 1);
  }
  SUBCASE("token id out of range") {
    const int32_t bad[] = {5, static_cast<int32_t>(m.config().vocab_size)};
    seq_chunk c{1, bad, logits_mode::logits_last};
    CHECK(m.forward({&c, 1}, kv, out) == errc::errc_invalid_argument);
    CHECK(kv.length(1) == 40);
  }
  SUBCASE("the same sequence twice in a batch") {
    seq_chunk batch[] = {{1, p.subspan(40, 1), logits_mode::logits_last}, {1, p.subspan(41, 1), logits_mode::logits_last}};
    CHECK(m.forward(batch, kv, out) == errc::errc_invalid_argument);
    CHECK(kv.length(1) == 40);
  }
  SUBCASE("past max_position_embeddings") {
    kv_cache big(m.kv_config(16, 32));
    std::vector<int32_t> longp(static_cast<size_t>(m.config().max_position_embeddings) + 1, 7);
    seq_chunk c{9, longp, logits_mode::logits_last};
    CHECK(m.forward({&c, 1}, big, out) == errc::errc_context_overflow);
    CHECK_FALSE(big.contains(9));
  }
  SUBCASE("a later stage without hidden states") {
    model s1 = model::load(f.dir, {1, 2});
    kv_cache k1(s1.kv_config(16, 4));
    CHECK(s1.forward({&a, 1}, k1, out) == errc::errc_invalid_argument);
  }
}

TEST_CASE("forward: KV gathered from one cache and scattered into another continues identically") {
  const auto f = troupe_test::fixture_load("qwen3");
  model m = model::load(f.dir);
  const std::span<const int32_t> p(f.prompt);
  kv_cache src(m.kv_config(16, 32)), dst(m.kv_config(5, 64));  // different page sizes: the layout is page-free
  std::vector<float> tmp, a, b;
  REQUIRE(prefill(m, src, 1, p.subspan(0, 100), 64, nullptr, &tmp) == errc::ok);
  std::vector<std::byte> buf(src.transfer_bytes(100));
  REQUIRE(src.gather(1, buf) == errc::ok);
  REQUIRE(dst.scatter(7, buf, 100) == errc::ok);
  REQUIRE(prefill(m, src, 1, p.subspan(100, 10), 64, nullptr, &a) == errc::ok);
  REQUIRE(prefill(m, dst, 7, p.subspan(100, 10), 64, nullptr, &b) == errc::ok);
  CHECK(max_rel_diff(a, b) < 1e-6f);
}
