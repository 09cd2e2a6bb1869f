// Tokenizer encode throughput on the tokenizer test corpus, single-threaded:
// bytes/s and tokens/s over `--reps` passes, median of passes. Its peer, HF
// `tokenizers` on the same corpus and passes, runs in the same call on the GPU
// machine (benches/gpu/tokenizer_vs_hf.sh) and the ratio is printed there.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/tokenizer.hpp"

int main(int argc, char** argv) {
  CLI::App app{"tokenizer encode throughput"};
  std::string dir, corpus = std::string(TROUPE_SOURCE_DIR) + "/tests/fixtures/tokenizers/corpus.json";
  int reps = 5;
  app.add_option("--tokenizer", dir, "folder with tokenizer.json")->required();
  app.add_option("--corpus", corpus, "JSON array of strings")->capture_default_str();
  app.add_option("--reps", reps, "passes over the corpus")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const troupe::tokenizer tok = troupe::tokenizer::load(dir);
    const auto texts = nlohmann::json::parse(std::ifstream(corpus)).get<std::vector<std::string>>();
    size_t bytes = 0;
    for (const auto& t : texts) bytes += t.size();
    std::vector<double> secs;
    size_t tokens = 0;
    for (int r = 0; r < reps + 1; ++r) {  // the first pass warms caches and is not counted
      const auto t0 = std::chrono::steady_clock::now();
      tokens = 0;
      for (const auto& t : texts) tokens += tok.encode(t).size();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) secs.push_back(s);
    }
    std::sort(secs.begin(), secs.end());
    const double med = secs[secs.size() / 2];
    std::printf("{\"impl\": \"troupe\", \"strings\": %zu, \"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.6f, "
                "\"tokens_per_s\": %.1f, \"mb_per_s\": %.3f}\n",
                texts.size(), bytes, tokens, med, static_cast<double>(tokens) / med,
                static_cast<double>(bytes) / med / 1e6);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_encode: %s\n", e.what());
    return 1;
  }
  return 0;
}
