#include "model/generation_config.hpp"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

namespace troupe {

namespace {

template <class T>
std::optional<T> number(const nlohmann::json& j, const char* key, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  const bool ok = std::is_integral_v<T> ? it->is_number_integer() : it->is_number();
  if (!ok) throw error(errc::errc_invalid_config, origin + ": key '" + key + "': expected a number, got " + it->dump());
  return it->get<T>();
}

}  // namespace

sampling_params generation_config::defaults() const {
  sampling_params p;
  if (!do_sample) p.temperature = 0.0f;
  if (temperature && do_sample) p.temperature = *temperature;
  if (top_p) p.top_p = *top_p;
  if (top_k) p.top_k = *top_k;
  if (min_p) p.min_p = *min_p;
  if (repetition_penalty) p.repetition_penalty = *repetition_penalty;
  return p;
}

generation_config generation_config_load(const std::filesystem::path& dir) {
  generation_config g;
  const std::filesystem::path path = dir / "generation_config.json";
  std::ifstream f(path);
  if (!f) return g;
  const std::string origin = path.string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw error(errc::errc_invalid_config, origin + ": malformed JSON: " + e.what());
  }
  if (!j.is_object()) throw error(errc::errc_invalid_config, origin + ": expected a JSON object");
  g.temperature = number<float>(j, "temperature", origin);
  g.top_p = number<float>(j, "top_p", origin);
  g.top_k = number<int32_t>(j, "top_k", origin);
  g.min_p = number<float>(j, "min_p", origin);
  g.repetition_penalty = number<float>(j, "repetition_penalty", origin);
  if (auto it = j.find("do_sample"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) throw error(errc::errc_invalid_config, origin + ": key 'do_sample': expected true or false");
    g.do_sample = it->get<bool>();
  }
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    if (it->is_number_integer()) {
      g.eos_token_ids.push_back(it->get<int32_t>());
    } else if (it->is_array()) {
      for (const auto& v : *it) {
        if (!v.is_number_integer())
          throw error(errc::errc_invalid_config, origin + ": key 'eos_token_id': expected integers, got " + v.dump());
        g.eos_token_ids.push_back(v.get<int32_t>());
      }
    } else {
      throw error(errc::errc_invalid_config, origin + ": key 'eos_token_id': expected an integer or a list");
    }
  }
  return g;
}

}  // namespace troupe
