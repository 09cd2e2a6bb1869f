// CPU engine throughput on one checkpoint: whole-prompt prefill against
// chunked prefill (chunks of 32 and 7), and decode at batch 1 and 8. The
// shared CPUs make absolute numbers meaningless, so every figure is also
// printed as a ratio to the whole-prompt prefill measured in the same run.
// Writes JSON next to the table.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/threads.hpp"
#include "model/generate.hpp"
#include "model/model.hpp"

using namespace troupe;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Median tokens/s of `reps` prefills of the prompt with the given chunk size.
double prefill_rate(model& m, const std::vector<int32_t>& prompt, int64_t chunk, int reps) {
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    kv_cache kv(m.kv_config(16, (static_cast<int64_t>(prompt.size()) + 15) / 16));
    std::vector<float> last;
    const double t0 = now();
    if (prefill(m, kv, 1, prompt, chunk, nullptr, &last) != errc::ok) throw error(errc::errc_invalid_argument, "prefill failed");
    rates.push_back(static_cast<double>(prompt.size()) / (now() - t0));
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

// Tokens/s of `steps` greedy decode steps for `batch` sequences after a short prefill.
double decode_rate(model& m, const std::vector<int32_t>& prompt, int64_t batch, int64_t steps) {
  const int64_t ctx = static_cast<int64_t>(prompt.size()) + steps;
  kv_cache kv(m.kv_config(16, batch * ((ctx + 15) / 16)));
  std::vector<float> logits;
  for (int64_t s = 0; s < batch; ++s)
    if (prefill(m, kv, s, prompt, 512, nullptr, &logits) != errc::ok) throw error(errc::errc_invalid_argument, "prefill failed");
  std::vector<int32_t> next(static_cast<size_t>(batch), 5);
  std::vector<seq_chunk> step(static_cast<size_t>(batch));
  const double t0 = now();
  for (int64_t i = 0; i < steps; ++i) {
    for (int64_t s = 0; s < batch; ++s) step[static_cast<size_t>(s)] = {s, {&next[static_cast<size_t>(s)], 1}, logits_mode::logits_last};
    if (m.forward(step, kv, logits) != errc::ok) throw error(errc::errc_invalid_argument, "decode failed");
    for (int64_t s = 0; s < batch; ++s) {
      const float* row = logits.data() + s * m.config().vocab_size;
      next[static_cast<size_t>(s)] = static_cast<int32_t>(std::max_element(row, row + m.config().vocab_size) - row);
    }
  }
  return static_cast<double>(batch * steps) / (now() - t0);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU engine benchmark: prefill (whole vs chunked) and decode tokens/s"};
  std::string dir = std::string(TROUPE_SOURCE_DIR) + "/tests/fixtures/qwen3";
  std::string json_out = "engine_cpu.json";
  int64_t prompt_len = 144, steps = 32;
  int reps = 5, threads = 0;
  app.add_option("--model", dir, "checkpoint directory")->capture_default_str();
  app.add_option("--prompt-len", prompt_len, "prompt tokens")->capture_default_str();
  app.add_option("--decode-steps", steps, "decode steps")->capture_default_str();
  app.add_option("--reps", reps, "repetitions (median)")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0 = all)")->capture_default_str();
  app.add_option("--json", json_out, "JSON output file")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    cpu_threads_set(threads);
    model m = model::load(dir);
    std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(3 + (i * 7919) % (m.config().vocab_size - 3));
    (void)prefill_rate(m, prompt, prompt_len, 1);  // warm-up
    struct row {
      std::string name;
      double tok_s;
    };
    std::vector<row> rows;
    rows.push_back({"prefill whole prompt", prefill_rate(m, prompt, prompt_len, reps)});
    rows.push_back({"prefill chunks of 32", prefill_rate(m, prompt, 32, reps)});
    rows.push_back({"prefill chunks of 7", prefill_rate(m, prompt, 7, reps)});
    rows.push_back({"decode batch 1", decode_rate(m, prompt, 1, steps)});
    rows.push_back({"decode batch 8", decode_rate(m, prompt, 8, steps)});
    const double base = rows[0].tok_s;
    std::printf("model %s, prompt %lld tokens, %d threads\n", dir.c_str(), static_cast<long long>(prompt_len), cpu_threads());
    std::printf("%-24s %12s %18s\n", "case", "tokens/s", "vs whole prefill");
    for (const row& r : rows) std::printf("%-24s %12.1f %18.3f\n", r.name.c_str(), r.tok_s, r.tok_s / base);
    std::ofstream j(json_out);
    j << "{\"model\": \"" << dir << "\", \"prompt_len\": " << prompt_len << ", \"threads\": " << cpu_threads()
      << ", \"rows\": [";
    for (size_t i = 0; i < rows.size(); ++i)
      j << (i ? ", " : "") << "{\"case\": \"" << rows[i].name << "\", \"tokens_per_s\": " << rows[i].tok_s
        << ", \"ratio_to_whole_prefill\": " << rows[i].tok_s / base << "}";
    j << "]}\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "engine_cpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
