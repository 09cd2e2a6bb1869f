// Tests of the config.json reader. The four fixtures were written by
// transformers 5.17 itself, so the parser is checked against real output rather
// than against our reading of the format; the legacy RoPE spelling is checked
// against the new one; each error class is checked for its code and for a
// message that names the file and the key, built from a small valid config with
// one key changed so that the test fails if that one key is not the cause.
#include "model/model_config.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

using namespace troupe;
using json = nlohmann::json;

namespace {

const std::filesystem::path fixtures = TROUPE_FIXTURES;
const std::string origin = "tests/x/config.json";

/// A small valid Llama config; tests change one key of it.
json base_config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": 384, "hidden_size": 64, "intermediate_size": 160,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05, "max_position_embeddings": 256, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}
  })");
}

json qwen2_config() {
  json j = base_config();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["model_type"] = "qwen2";
  return j;
}

model_config parse(const json& j) { return model_config_parse(j.dump(), origin); }

std::string code_name(errc e) { return errc_name(e); }

/// Expects `fn` to throw troupe::error with `code` and a message holding every needle.
template <class F>
void expect_error(F&& fn, errc code, std::initializer_list<std::string> needles) {
  try {
    fn();
  } catch (const troupe::error& e) {
    const std::string msg = e.what();
    CHECK_MESSAGE(code_name(e.code()) == code_name(code), msg);
    for (const std::string& n : needles) {
      CHECK_MESSAGE(msg.find(n) != std::string::npos, "'" << msg << "' does not contain '" << n << "'");
    }
    return;
  }
  FAIL("no troupe::error thrown");
}

/// Parsing `j` fails with `code`; the message names the origin and every needle.
void expect_parse_error(const json& j, errc code, std::initializer_list<std::string> needles) {
  expect_error([&] { parse(j); }, code, needles);
  expect_error([&] { parse(j); }, code, {origin});
}

void check_rope_equal(const rope_scaling& a, const rope_scaling& b) {
  CHECK(a.type == b.type);
  CHECK(a.theta == b.theta);
  CHECK(a.factor == b.factor);
  CHECK(a.low_freq_factor == b.low_freq_factor);
  CHECK(a.high_freq_factor == b.high_freq_factor);
  CHECK(a.original_max_position == b.original_max_position);
  CHECK(a.attention_factor == b.attention_factor);
  CHECK(a.beta_fast == b.beta_fast);
  CHECK(a.beta_slow == b.beta_slow);
  CHECK(a.mscale == b.mscale);
  CHECK(a.mscale_all_dim == b.mscale_all_dim);
  CHECK(a.truncate == b.truncate);
}

}  // namespace

TEST_CASE("model_config: llama fixture (llama3 RoPE, GQA)") {
  const model_config c = model_config_load(fixtures / "llama");
  CHECK(c.arch == model_arch::arch_llama);
  CHECK(c.architecture == "LlamaForCausalLM");
  CHECK(c.vocab_size == 384);
  CHECK(c.hidden_size == 64);
  CHECK(c.intermediate_size == 160);
  CHECK(c.n_layers == 2);
  CHECK(c.n_heads == 4);
  CHECK(c.n_kv_heads == 2);
  CHECK(c.head_dim == 16);
  CHECK(c.rms_norm_eps == doctest::Approx(1e-5));
  CHECK(c.max_position_embeddings == 256);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK_FALSE(c.qkv_bias);
  CHECK_FALSE(c.o_bias);
  CHECK_FALSE(c.mlp_bias);
  CHECK_FALSE(c.qk_norm);
  CHECK(c.sliding_window == std::vector<int64_t>{0, 0});
  CHECK(c.rope.type == rope_type::rope_llama3);
  CHECK(c.rope.theta == 10000.0);
  CHECK(c.rope.factor == 8.0);
  CHECK(c.rope.low_freq_factor == 1.0);
  CHECK(c.rope.high_freq_factor == 4.0);
  CHECK(c.rope.original_max_position == 32);
  CHECK(c.bos_token_ids == std::vector<int32_t>{1});
  CHECK(c.eos_token_ids == std::vector<int32_t>{2});
}

TEST_CASE("model_config: qwen2 fixture (q/k/v bias, tied embeddings, linear RoPE)") {
  const model_config c = model_config_load(fixtures / "qwen2" / "config.json");
  CHECK(c.arch == model_arch::arch_qwen2);
  CHECK(c.architecture == "Qwen2ForCausalLM");
  CHECK(c.n_kv_heads == 2);
  CHECK(c.head_dim == 16);
  CHECK(c.qkv_bias);
  CHECK_FALSE(c.o_bias);
  CHECK_FALSE(c.mlp_bias);
  CHECK_FALSE(c.qk_norm);
  CHECK(c.tie_word_embeddings);
  CHECK(c.sliding_window == std::vector<int64_t>{0, 0});
  CHECK(c.rope.type == rope_type::rope_linear);
  CHECK(c.rope.theta == 10000.0);
  CHECK(c.rope.factor == 2.0);
  CHECK(c.eos_token_ids == std::vector<int32_t>{2});
}

TEST_CASE("model_config: qwen3 fixture (explicit head_dim, q/k norm, yarn RoPE)") {
  const model_config c = model_config_load(fixtures / "qwen3");
  CHECK(c.arch == model_arch::arch_qwen3);
  CHECK(c.hidden_size == 64);
  CHECK(c.n_heads == 4);
  CHECK(c.n_kv_heads == 1);
  CHECK(c.head_dim == 32);
  CHECK(c.qk_norm);
  CHECK_FALSE(c.qkv_bias);
  CHECK_FALSE(c.o_bias);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK(c.sliding_window == std::vector<int64_t>{0, 0});
  CHECK(c.rope.type == rope_type::rope_yarn);
  CHECK(c.rope.factor == 4.0);
  CHECK(c.rope.original_max_position == 64);
  CHECK(c.rope.attention_factor == 0.0);  // unset: derived from factor by the kernel
  CHECK(c.rope.beta_fast == 32.0);
  CHECK(c.rope.beta_slow == 1.0);
  CHECK(c.rope.truncate);
  CHECK(c.eos_token_ids == std::vector<int32_t>{2});
}

TEST_CASE("model_config: mistral fixture (sliding window, default RoPE)") {
  const model_config c = model_config_load(fixtures / "mistral");
  CHECK(c.arch == model_arch::arch_mistral);
  CHECK(c.head_dim == 16);
  CHECK_FALSE(c.qkv_bias);
  CHECK_FALSE(c.o_bias);
  CHECK_FALSE(c.qk_norm);
  CHECK(c.sliding_window == std::vector<int64_t>{48, 48});
  CHECK(c.rope.type == rope_type::rope_default);
  CHECK(c.rope.theta == 10000.0);
  CHECK(c.rope.factor == 1.0);
  CHECK(c.bos_token_ids == std::vector<int32_t>{1});
  CHECK(c.eos_token_ids == std::vector<int32_t>{2});
}

TEST_CASE("model_config: legacy rope_theta + rope_scaling equals rope_parameters") {
  const json variants[] = {
      json::parse(R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"),
      json::parse(R"({"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 64,
                      "attention_factor": 1.2, "beta_fast": 16, "beta_slow": 2, "mscale": 0.7,
                      "mscale_all_dim": 0.5, "truncate": false})"),
      json::parse(R"({"rope_type": "linear", "factor": 2.0})"),
  };
  for (const json& scaling : variants) {
    CAPTURE(scaling.dump());
    json modern = base_config();
    modern["rope_parameters"] = scaling;
    modern["rope_parameters"]["rope_theta"] = 500000.0;
    const model_config want = parse(modern);
    CHECK(want.rope.theta == 500000.0);
    CHECK(want.rope.type != rope_type::rope_default);

    for (const char* type_key : {"rope_type", "type"}) {
      CAPTURE(type_key);
      json legacy = base_config();
      legacy.erase("rope_parameters");
      legacy["rope_theta"] = 500000.0;
      legacy["rope_scaling"] = scaling;
      legacy["rope_scaling"].erase("rope_type");
      legacy["rope_scaling"][type_key] = scaling["rope_type"];
      check_rope_equal(parse(legacy).rope, want.rope);
    }
  }

  json legacy = base_config();
  legacy.erase("rope_parameters");
  legacy["rope_theta"] = 500000;  // an integer theta is a number too
  legacy["rope_scaling"] = nullptr;
  json modern = base_config();
  modern["rope_parameters"]["rope_theta"] = 500000.0;
  check_rope_equal(parse(legacy).rope, parse(modern).rope);

  json both = legacy;  // rope_parameters wins over rope_scaling
  both["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  both["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 3.0}, {"rope_theta", 1000.0}};
  const model_config c = parse(both);
  CHECK(c.rope.type == rope_type::rope_linear);
  CHECK(c.rope.factor == 3.0);
  CHECK(c.rope.theta == 1000.0);
}

TEST_CASE("model_config: defaults and derived values") {
  json j = base_config();
  for (const char* key : {"num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "hidden_act",
                          "rope_parameters"}) {
    j.erase(key);
  }
  j["eos_token_id"] = {2, 7};
  j["bos_token_id"] = nullptr;
  j["head_dim"] = nullptr;
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  model_config c = parse(j);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.head_dim == 16);
  CHECK(c.rms_norm_eps == doctest::Approx(1e-6));
  CHECK(c.max_position_embeddings == 2048);
  CHECK(c.qkv_bias);
  CHECK(c.o_bias);
  CHECK(c.mlp_bias);
  CHECK(c.rope.type == rope_type::rope_default);
  CHECK(c.rope.theta == 10000.0);
  CHECK(c.bos_token_ids.empty());
  CHECK(c.eos_token_ids == std::vector<int32_t>{2, 7});

  json q = qwen2_config();  // architectures missing: model_type decides
  q.erase("architectures");
  q["model_type"] = "qwen3";
  q.erase("max_position_embeddings");
  q["attention_bias"] = true;
  q["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 2.0}};
  c = parse(q);
  CHECK(c.arch == model_arch::arch_qwen3);
  CHECK(c.architecture == "Qwen3ForCausalLM");
  CHECK(c.max_position_embeddings == 32768);
  CHECK(c.qkv_bias);
  CHECK(c.o_bias);
  CHECK(c.rope.original_max_position == 32768);  // yarn: defaults to max_position_embeddings

  j = qwen2_config();  // Qwen2 ignores attention_bias: q/k/v always, o never
  j["attention_bias"] = true;
  c = parse(j);
  CHECK(c.qkv_bias);
  CHECK_FALSE(c.o_bias);
}

TEST_CASE("model_config: sliding window per architecture") {
  json q = qwen2_config();
  q["num_hidden_layers"] = 4;
  q["sliding_window"] = 64;
  q["max_window_layers"] = 2;
  CHECK(parse(q).sliding_window == std::vector<int64_t>{0, 0, 0, 0});  // use_sliding_window absent
  q["use_sliding_window"] = true;
  CHECK(parse(q).sliding_window == std::vector<int64_t>{0, 0, 64, 64});
  q["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention", "full_attention"};
  CHECK(parse(q).sliding_window == std::vector<int64_t>{64, 0, 64, 0});
  q["sliding_window"] = nullptr;
  expect_parse_error(q, errc::errc_invalid_config, {"'sliding_window'"});
  q["sliding_window"] = "64";
  expect_parse_error(q, errc::errc_invalid_config, {"'sliding_window'", "\"64\""});

  json m = base_config();
  m["architectures"] = {"MistralForCausalLM"};
  m["sliding_window"] = nullptr;
  CHECK(parse(m).sliding_window == std::vector<int64_t>{0, 0});
  m["sliding_window"] = 4;
  CHECK(parse(m).sliding_window == std::vector<int64_t>{4, 4});
  m["sliding_window"] = 0;
  expect_parse_error(m, errc::errc_invalid_config, {"'sliding_window'"});

  json l = base_config();  // Llama has no sliding window whatever the keys say
  l["sliding_window"] = 4;
  CHECK(parse(l).sliding_window == std::vector<int64_t>{0, 0});
}

TEST_CASE("model_config: unknown architecture is an error naming it") {
  json j = base_config();
  j["architectures"] = {"GPT2LMHeadModel"};
  expect_parse_error(j, errc::errc_invalid_config, {"'architectures'", "GPT2LMHeadModel"});
  j.erase("architectures");
  j["model_type"] = "gemma";
  expect_parse_error(j, errc::errc_invalid_config, {"'architectures'", "gemma"});
  j["architectures"] = "LlamaForCausalLM";  // not a list
  expect_parse_error(j, errc::errc_invalid_config, {"'architectures'"});
}

TEST_CASE("model_config: missing required keys") {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads"}) {
    CAPTURE(key);
    json j = base_config();
    j.erase(key);
    expect_parse_error(j, errc::errc_invalid_config, {std::string("'") + key + "'", "missing"});
    j[key] = nullptr;
    expect_parse_error(j, errc::errc_invalid_config, {std::string("'") + key + "'"});
  }
}

TEST_CASE("model_config: wrong JSON types are errors, not coerced") {
  struct bad {
    const char* key;
    json value;
    const char* shown;
  };
  const bad cases[] = {
      {"num_attention_heads", "abc", "\"abc\""},
      {"num_hidden_layers", 2.0, "2.0"},
      {"vocab_size", -1, "-1"},
      {"hidden_size", 0, "0"},
      {"rms_norm_eps", "1e-5", "\"1e-5\""},
      {"rms_norm_eps", 0.0, "0.0"},
      {"tie_word_embeddings", "yes", "\"yes\""},
      {"attention_bias", 1, "1"},
      {"eos_token_id", "2", "\"2\""},
      {"eos_token_id", json::array({2, 1.5}), "1.5"},
      {"bos_token_id", -1, "-1"},
      {"head_dim", 16.0, "16.0"},
  };
  for (const bad& b : cases) {
    CAPTURE(b.key);
    json j = base_config();
    j[b.key] = b.value;
    expect_parse_error(j, errc::errc_invalid_config, {std::string("'") + b.key + "'", b.shown});
  }
  json j = base_config();
  j["rope_parameters"]["factor"] = "2";
  j["rope_parameters"]["rope_type"] = "linear";
  expect_parse_error(j, errc::errc_invalid_config, {"'rope_parameters.factor'", "\"2\""});
}

TEST_CASE("model_config: head counts must divide") {
  json j = base_config();
  j["num_key_value_heads"] = 3;
  expect_parse_error(j, errc::errc_invalid_config, {"'num_key_value_heads'", "3"});
  j = base_config();
  j["hidden_size"] = 66;
  expect_parse_error(j, errc::errc_invalid_config, {"'hidden_size'", "66"});
  j["head_dim"] = 16;  // an explicit head_dim need not be hidden_size / heads
  CHECK(parse(j).head_dim == 16);
}

TEST_CASE("model_config: unsupported RoPE and activation") {
  json j = base_config();
  j["rope_parameters"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  expect_parse_error(j, errc::errc_unsupported, {"'rope_parameters.rope_type'", "dynamic"});
  j.erase("rope_parameters");
  j["rope_scaling"] = {{"type", "longrope"}, {"factor", 2.0}};
  expect_parse_error(j, errc::errc_unsupported, {"'rope_scaling.type'", "longrope"});
  j["rope_scaling"] = {{"factor", 2.0}};
  expect_parse_error(j, errc::errc_invalid_config, {"'rope_scaling.rope_type'"});

  j = base_config();
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}};
  expect_parse_error(j, errc::errc_invalid_config, {"'rope_parameters.original_max_position_embeddings'"});
  j["rope_parameters"] = {{"rope_type", "linear"}};
  expect_parse_error(j, errc::errc_invalid_config, {"'rope_parameters.factor'", "missing"});

  j = base_config();
  j["hidden_act"] = "gelu";
  expect_parse_error(j, errc::errc_unsupported, {"'hidden_act'", "gelu"});
}

TEST_CASE("model_config: partial_rotary_factor other than 1 is unsupported") {
  json j = base_config();
  j["partial_rotary_factor"] = 1.0;
  CHECK(parse(j).head_dim == 16);
  j["partial_rotary_factor"] = 0.5;
  expect_parse_error(j, errc::errc_unsupported, {"'partial_rotary_factor'", "0.5"});
  j = base_config();
  j["rope_parameters"]["partial_rotary_factor"] = 0.5;
  expect_parse_error(j, errc::errc_unsupported, {"'rope_parameters.partial_rotary_factor'"});
}

TEST_CASE("model_config: bad layer_types") {
  json j = qwen2_config();
  j["layer_types"] = {"full_attention", "chunked_attention"};
  expect_parse_error(j, errc::errc_invalid_config, {"'layer_types'", "chunked_attention"});
  j["layer_types"] = {"full_attention"};
  expect_parse_error(j, errc::errc_invalid_config, {"'layer_types'"});
  j["layer_types"] = "full_attention";
  expect_parse_error(j, errc::errc_invalid_config, {"'layer_types'"});
  j["layer_types"] = {"full_attention", 1};
  expect_parse_error(j, errc::errc_invalid_config, {"'layer_types'"});
}

TEST_CASE("model_config: malformed JSON reports the parser's position") {
  expect_error([] { model_config_parse(R"({"vocab_size": 384,)", origin); }, errc::errc_invalid_config,
               {origin, "parse error", "column"});
  expect_error([] { model_config_parse("[1, 2]", origin); }, errc::errc_invalid_config, {origin});
}

TEST_CASE("model_config: unreadable files are errc_io naming the path") {
  const std::filesystem::path missing = fixtures / "no_such_model" / "config.json";
  expect_error([&] { model_config_load(missing); }, errc::errc_io, {missing.string()});
  // A directory without config.json names the file it looked for.
  expect_error([] { model_config_load(fixtures); }, errc::errc_io, {(fixtures / "config.json").string()});

  // A file that reads but does not parse names the file in the error.
  const std::filesystem::path bad = std::filesystem::temp_directory_path() / "troupe_model_config_bad.json";
  {
    std::ofstream out(bad);
    out << R"({"architectures": ["LlamaForCausalLM"], "vocab_size": "many"})";
  }
  expect_error([&] { model_config_load(bad); }, errc::errc_invalid_config, {bad.string(), "'vocab_size'"});
  std::filesystem::remove(bad);
}
