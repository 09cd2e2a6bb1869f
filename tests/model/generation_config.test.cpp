#include "model/generation_config.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "config/errors.hpp"

using namespace troupe;

TEST_CASE("generation_config: the demo model's defaults, absent files, bad values") {
  const generation_config g = generation_config_load(std::string(TROUPE_FIXTURES) + "/../../models/demo");
  CHECK(g.temperature.value() == doctest::Approx(0.8));
  CHECK(g.top_p.value() == doctest::Approx(0.95));
  CHECK(g.eos_token_ids == std::vector<int32_t>{0, 2});
  const sampling_params p = g.defaults();
  CHECK(p.temperature == doctest::Approx(0.8));
  CHECK(p.top_k == 0);

  const generation_config none = generation_config_load(std::string(TROUPE_FIXTURES) + "/llama");
  CHECK_FALSE(none.temperature.has_value());
  CHECK(none.defaults().temperature == 1.0f);

  const auto dir = std::filesystem::temp_directory_path() / "troupe_gencfg_test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "generation_config.json") << R"({"do_sample": false, "temperature": 0.6, "eos_token_id": 7})";
  const generation_config greedy = generation_config_load(dir);
  CHECK(greedy.defaults().temperature == 0.0f);
  CHECK(greedy.eos_token_ids == std::vector<int32_t>{7});
  std::ofstream(dir / "generation_config.json") << R"({"top_p": "high"})";
  CHECK_THROWS_WITH_AS(generation_config_load(dir), doctest::Contains("top_p"), troupe::error);
  std::ofstream(dir / "generation_config.json") << R"({"top_p": )";
  CHECK_THROWS_WITH_AS(generation_config_load(dir), doctest::Contains("generation_config.json"), troupe::error);
  std::filesystem::remove_all(dir);
}
