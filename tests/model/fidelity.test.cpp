// The engine against transformers on the four fixtures: logits of every
// prompt position, chunking invariance, and the greedy continuation.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "fixture.hpp"
#include "model/generate.hpp"
#include "model/model.hpp"

using namespace troupe;

namespace {

const char* const fixtures[] = {"llama", "qwen2", "qwen3", "mistral"};

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float m = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

std::vector<float> prompt_logits(model& m, const std::vector<int32_t>& prompt, int64_t chunk) {
  kv_cache kv(m.kv_config(16, 64));
  std::vector<float> logits;
  REQUIRE(prefill(m, kv, 1, prompt, chunk, &logits, nullptr) == errc::ok);
  return logits;
}

}  // namespace

TEST_CASE("fidelity: RoPE tables equal transformers'") {
  for (const char* name : fixtures) {
    CAPTURE(name);
    const auto f = troupe_test::fixture_load(name);
    const model_config cfg = model_config_load(f.dir);
    const rope_table t = rope_inv_freq(cfg.rope, cfg.head_dim, cfg.max_position_embeddings);
    REQUIRE(t.inv_freq.size() == f.inv_freq.size());
    for (size_t i = 0; i < t.inv_freq.size(); ++i) CHECK(t.inv_freq[i] == doctest::Approx(f.inv_freq[i]).epsilon(1e-6));
    CHECK(t.attention_scaling == doctest::Approx(f.attention_scaling).epsilon(1e-6));
  }
}

TEST_CASE("fidelity: logits of every prompt position match transformers within 1e-3 x max|logit|") {
  for (const char* name : fixtures) {
    CAPTURE(name);
    const auto f = troupe_test::fixture_load(name);
    model m = model::load(f.dir);
    REQUIRE(f.prompt.size() >= 128);
    const std::vector<float> ours = prompt_logits(m, f.prompt, 1 << 20);
    const float err = max_abs_diff(ours, f.logits);
    MESSAGE(std::string(name) << ": max |logit error| " << err << " (" << err / f.max_abs_logit << " of max|logit|)");
    CHECK(err <= 1e-3f * f.max_abs_logit);
  }
}

TEST_CASE("fidelity: chunks of 7, 32 and 1 give the one-chunk logits") {
  for (const char* name : fixtures) {
    CAPTURE(name);
    const auto f = troupe_test::fixture_load(name);
    model m = model::load(f.dir);
    const std::vector<float> whole = prompt_logits(m, f.prompt, 1 << 20);
    float scale = 0.0f;
    for (float v : whole) scale = std::max(scale, std::abs(v));
    for (int64_t chunk : {7, 32, 1}) {
      CAPTURE(chunk);
      CHECK(max_abs_diff(prompt_logits(m, f.prompt, chunk), whole) <= 1e-5f * scale);
    }
  }
}

TEST_CASE("fidelity: greedy continuation of 32 tokens equals transformers'") {
  for (const char* name : fixtures) {
    CAPTURE(name);
    const auto f = troupe_test::fixture_load(name);
    model m = model::load(f.dir);
    kv_cache kv(m.kv_config(16, 64));
    generate_options opt;
    opt.max_tokens = 32;
    opt.chunk_size = 32;
    opt.ignore_eos = true;
    opt.sampling.temperature = 0.0f;
    const generate_result r = generate(m, kv, 5, f.prompt, opt);
    CHECK(r.tokens == f.greedy);
    CHECK(kv.free_pages() == 64);  // generate frees its sequence
  }
}

TEST_CASE("fidelity: the demo model matches transformers (logits and greedy continuation)") {
  const std::string dir = std::string(TROUPE_FIXTURES) + "/../../models/demo";
  const std::string gdir = std::string(TROUPE_FIXTURES) + "/demo";
  const nlohmann::json g = nlohmann::json::parse(std::ifstream(gdir + "/golden.json"));
  const auto prompt = g["prompt"].get<std::vector<int32_t>>();
  std::ifstream lf(gdir + "/golden_logits.f32", std::ios::binary);
  std::vector<float> want(prompt.size() * 4096);
  lf.read(reinterpret_cast<char*>(want.data()), static_cast<std::streamsize>(want.size() * 4));
  REQUIRE(lf.gcount() == static_cast<std::streamsize>(want.size() * 4));
  model m = model::load(dir);
  REQUIRE(m.config().vocab_size == 4096);
  const std::vector<float> ours = prompt_logits(m, prompt, 3);
  const float err = max_abs_diff(ours, want);
  MESSAGE("demo: max |logit error| " << err);
  CHECK(err <= 1e-3f * g["max_abs_logit"].get<float>());
  kv_cache kv(m.kv_config(16, 8));
  generate_options opt;
  opt.max_tokens = 32;
  opt.ignore_eos = true;
  opt.sampling.temperature = 0.0f;
  CHECK(generate(m, kv, 1, prompt, opt).tokens == g["greedy"].get<std::vector<int32_t>>());
}
