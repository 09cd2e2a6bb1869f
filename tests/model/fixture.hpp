// Loads a fixture of tests/fixtures/<name>: prompt ids, transformers' logits
// and golden.json (greedy continuation, RoPE table).
#pragma once

#include <cstdint>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace troupe_test {

struct fixture {
  std::string dir;
  std::vector<int32_t> prompt;
  std::vector<float> logits;  // [prompt][vocab]
  std::vector<int32_t> greedy;
  std::vector<float> inv_freq;
  float attention_scaling = 1.0f;
  float max_abs_logit = 0.0f;
};

inline fixture fixture_load(const std::string& name) {
  fixture f;
  f.dir = std::string(TROUPE_FIXTURES) + "/" + name;
  std::ifstream p(f.dir + "/prompt.txt");
  std::string text((std::istreambuf_iterator<char>(p)), std::istreambuf_iterator<char>());
  for (char& c : text)
    if (c == ',') c = ' ';
  std::istringstream ss(text);
  for (int32_t v; ss >> v;) f.prompt.push_back(v);
  std::ifstream l(f.dir + "/logits.f32", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(l)), std::istreambuf_iterator<char>());
  f.logits.resize(bytes.size() / 4);
  std::memcpy(f.logits.data(), bytes.data(), f.logits.size() * 4);
  nlohmann::json g = nlohmann::json::parse(std::ifstream(f.dir + "/golden.json"));
  f.greedy = g["greedy"].get<std::vector<int32_t>>();
  f.inv_freq = g["inv_freq"].get<std::vector<float>>();
  f.attention_scaling = g["attention_scaling"].get<float>();
  f.max_abs_logit = g["max_abs_logit"].get<float>();
  return f;
}

}  // namespace troupe_test
