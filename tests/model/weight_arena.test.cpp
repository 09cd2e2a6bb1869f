#include "model/weight_arena.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "config/errors.hpp"
#include "model/checkpoint.hpp"

using namespace troupe;

TEST_CASE("weight_arena: layer ranges hold their layers, embedding first, head last, 64-aligned") {
  const std::string dir = std::string(TROUPE_FIXTURES) + "/llama";
  const model_config cfg = model_config_load(dir);
  const checkpoint ck = checkpoint::open(dir);
  const weight_arena all = weight_arena::load(ck, cfg, {0, 2});
  CHECK(all.manifest().size() == ck.names().size());
  const weight_arena first = weight_arena::load(ck, cfg, {0, 1});
  const weight_arena second = weight_arena::load(ck, cfg, {1, 2});
  CHECK(first.find("model.embed_tokens.weight") != nullptr);
  CHECK(first.find("model.layers.0.mlp.down_proj.weight") != nullptr);
  CHECK(first.find("model.layers.1.mlp.down_proj.weight") == nullptr);
  CHECK(first.find("lm_head.weight") == nullptr);
  CHECK(second.find("model.embed_tokens.weight") == nullptr);
  CHECK(second.find("model.norm.weight") != nullptr);
  CHECK(second.find("lm_head.weight") != nullptr);
  CHECK(first.manifest().size() + second.manifest().size() == all.manifest().size());
  for (const arena_entry& e : all.manifest()) {
    CAPTURE(e.name);
    CHECK(e.offset % 64 == 0);
    CHECK(e.offset + e.bytes <= all.bytes().size());
    const tensor_info& t = ck.get(e.name);
    CHECK(e.type == t.type);
    CHECK(e.shape == t.shape);
    CHECK(std::memcmp(all.bytes().data() + e.offset, t.data, t.bytes) == 0);
  }
  const weight_ref q = all.ref("model.layers.1.self_attn.k_proj.weight");
  CHECK(q.rows == 32);
  CHECK(q.cols == 64);
  CHECK_THROWS_AS(all.ref("nope"), troupe::error);
  CHECK_THROWS_AS(weight_arena::load(ck, cfg, {1, 1}), troupe::error);
  CHECK_THROWS_AS(weight_arena::load(ck, cfg, {0, 3}), troupe::error);
}

TEST_CASE("weight_arena: tied lm_head shares the embedding's bytes") {
  const std::string dir = std::string(TROUPE_FIXTURES) + "/qwen2";
  const model_config cfg = model_config_load(dir);
  REQUIRE(cfg.tie_word_embeddings);
  const weight_arena a = weight_arena::load(checkpoint::open(dir), cfg, {0, cfg.n_layers});
  CHECK(a.find("lm_head.weight")->offset == a.find("model.embed_tokens.weight")->offset);
  CHECK(a.find("model.layers.0.self_attn.q_proj.bias") != nullptr);
  CHECK(a.find("model.layers.0.self_attn.o_proj.bias") == nullptr);
}

TEST_CASE("weight_arena: a tensor whose shape disagrees with the config is named") {
  const std::string dir = std::string(TROUPE_FIXTURES) + "/llama";
  model_config cfg = model_config_load(dir);
  cfg.intermediate_size = 128;  // the checkpoint has 160
  try {
    (void)weight_arena::load(checkpoint::open(dir), cfg, {0, 2});
    FAIL("expected an error");
  } catch (const troupe::error& e) {
    const std::string what = e.what();
    CHECK(what.find("model.layers.0.mlp.gate_proj.weight") != std::string::npos);
    CHECK(what.find("[160, 64]") != std::string::npos);
    CHECK(what.find("[128, 64]") != std::string::npos);
  }
  cfg = model_config_load(dir);
  cfg.qkv_bias = true;  // the checkpoint has no biases
  CHECK_THROWS_WITH_AS(weight_arena::load(checkpoint::open(dir), cfg, {0, 2}),
                       doctest::Contains("model.layers.0.self_attn.q_proj.bias"), troupe::error);
}
