// bench_cuda_sample: sample_cuda (kernels/sample.hpp) at batch 1, 8, 64, 256
// and vocab 128256 (Llama-3) / 151936 (Qwen), for the sampling modes a server
// sees: greedy, greedy with 5 logprobs, temperature + top-k 50 + top-p 0.95,
// top-p 0.9 alone, temperature alone, min-p, and top-k/top-p with penalties
// over a 1000-token history. Reports microseconds per call of GPU time (the
// calls of one measurement are captured in a CUDA graph and replayed, as an
// engine enqueues them behind its decode graph; "eager" launches them one by
// one, which at batch 1 measures the host's launch rate instead), and GB/s of
// logits read (batch * vocab * 4 bytes, each read once is the floor) against
// the device-to-device copy ceiling measured in the same run
// (benches/cuda_ceilings.hpp; that ceiling counts read + write). The "ctx"
// rows time sample_context::enqueue (what the CUDA engine runs per step:
// upload of settings and histories, the launches, download of the results)
// by host wall clock around enqueue + synchronize. Logits are normal(0, 2)
// with 40 peaks at 6..11 (about half the softmax mass stays in the bulk, so
// top-p 0.9 keeps tens of thousands of tokens: the hard case); modes marked
// "peaked" put the peaks at 14..20 instead (the mass in a few dozen tokens,
// as in most decode steps of a trained model); calls rotate over enough
// logit buffers (>= 256 MiB) that rows come from HBM.
// Usage: bench_cuda_sample [--json PATH] [--quick] [--batch N] [--mode SUBSTRING]
// (--batch / --mode restrict the runs, e.g. to profile one mode's phases with ncu).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "benches/cuda_ceilings.hpp"
#include "kernels/device_buffer.hpp"
#include "kernels/sample.hpp"

using namespace troupe;
using namespace troupe::bench;

namespace {

struct mode {
  const char* name;
  float temperature;
  int top_k;
  float top_p;
  float min_p;
  int logprobs;
  bool penalties;
  bool peaked = false;  ///< peaks at 14..20 instead of 6..11
};

struct result {
  std::string mode;
  int64_t batch, vocab;
  double us, us_eager, gbps, copy_ratio;
};

std::vector<float> logits_rows(int64_t rows, int64_t vocab, uint64_t seed, bool peaked) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::uniform_real_distribution<float> u(peaked ? 14.0f : 6.0f, peaked ? 20.0f : 11.0f);
  std::vector<float> v(static_cast<size_t>(rows * vocab));
  for (float& x : v) x = d(rng);
  for (int64_t r = 0; r < rows; ++r)
    for (int i = 0; i < 40; ++i) v[static_cast<size_t>(r * vocab) + rng() % static_cast<uint64_t>(vocab)] = u(rng);
  return v;
}

/// A 1000-token history: 800 prompt tokens (repetition penalty) and 200 generated, sorted by id.
std::vector<sample_token_stat> history(int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<sample_token_stat> h;
  for (int i = 0; i < 1000; ++i) h.push_back({static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab)), i < 800 ? 0 : 1 + i % 3, i < 800});
  std::sort(h.begin(), h.end(), [](const sample_token_stat& a, const sample_token_stat& b) { return a.token < b.token; });
  std::vector<sample_token_stat> u;
  for (const auto& e : h)
    if (u.empty() || u.back().token != e.token) u.push_back(e);
  return u;
}

sample_row_params row_params(const mode& m, size_t r) {
  sample_row_params p;
  p.temperature = m.temperature;
  p.top_k = m.top_k;
  p.top_p = m.top_p;
  p.min_p = m.min_p;
  p.logprobs = m.logprobs;
  p.seed = 1234 + r;
  if (m.penalties) {
    p.repetition_penalty = 1.1f;
    p.frequency_penalty = 0.3f;
    p.presence_penalty = 0.2f;
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"GPU sampling bench (sample_cuda) against the copy ceiling"};
  std::string json_path;
  bool quick = false;
  int64_t only_batch = 0;
  std::string only_mode;
  app.add_option("--json", json_path, "write results as JSON to this path");
  app.add_flag("--quick", quick, "vocab 128256 only");
  app.add_option("--batch", only_batch, "only this batch size");
  app.add_option("--mode", only_mode, "only modes whose name contains this");
  CLI11_PARSE(app, argc, argv);
  try {
    cudaDeviceProp prop{};
    TROUPE_BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
    cuda_stream s = nullptr;
    TROUPE_BENCH_CUDA(cudaStreamCreate(&s));
    const double copy_gbps = ceiling_copy_gbps(s);
    std::printf("device %s: copy ceiling %.0f GB/s (read+write)\n", prop.name, copy_gbps);
    const mode modes[] = {{"greedy", 0.0f, 0, 1.0f, 0.0f, -1, false},
                          {"greedy+logprobs5", 0.0f, 0, 1.0f, 0.0f, 5, false},
                          {"T0.8 k50 p0.95", 0.8f, 50, 0.95f, 0.0f, -1, false},
                          {"p0.9", 1.0f, 0, 0.9f, 0.0f, -1, false},
                          {"T1.0", 1.0f, 0, 1.0f, 0.0f, -1, false},
                          {"T0.7 minp0.05", 0.7f, 0, 1.0f, 0.05f, -1, false},
                          {"k50 p0.95 +pen", 0.8f, 50, 0.95f, 0.0f, -1, true},
                          {"k50 p0.95 +lp5", 0.8f, 50, 0.95f, 0.0f, 5, false},
                          {"p0.9 peaked", 1.0f, 0, 0.9f, 0.0f, -1, false, true},
                          {"T0.8 k50 p0.95 peaked", 0.8f, 50, 0.95f, 0.0f, -1, false, true}};
    std::vector<result> results;
    std::vector<int64_t> vocabs = {128256, 151936};
    if (quick) vocabs.resize(1);
    for (int64_t vocab : vocabs) {
      const std::vector<float> patterns[2] = {logits_rows(16, vocab, 7, false), logits_rows(16, vocab, 7, true)};
      const std::vector<sample_token_stat> hist = history(vocab, 3);
      for (int64_t batch : {int64_t{1}, int64_t{8}, int64_t{64}, int64_t{256}}) {
        if (only_batch != 0 && batch != only_batch) continue;
        const size_t row_bytes = static_cast<size_t>(vocab) * 4, bytes = row_bytes * static_cast<size_t>(batch);
        const int sets = static_cast<int>(std::clamp<size_t>((size_t{256} << 20) / bytes + 1, 1, 64));
        device_buffer logits(bytes * static_cast<size_t>(sets));
        int loaded = -1;
        auto load = [&](bool peaked) {  // 16 distinct rows, tiled into every buffer
          if (loaded == static_cast<int>(peaked)) return;
          for (int64_t r = 0; r < batch * sets; ++r)
            logits.upload(patterns[peaked].data() + (r % 16) * vocab, row_bytes, static_cast<size_t>(r) * row_bytes);
          loaded = static_cast<int>(peaked);
        };
        device_buffer tokens(static_cast<size_t>(batch) * 4), lp(static_cast<size_t>(batch) * 4),
            tid(static_cast<size_t>(batch) * sample_top_max * 4), tlp(static_cast<size_t>(batch) * sample_top_max * 4);
        const size_t ws_bytes = sample_workspace_bytes(batch, vocab);
        device_buffer ws(ws_bytes), pen_rows(bytes);
        ws.fill(0);
        std::vector<int32_t> offsets;
        std::vector<sample_token_stat> entries;
        for (int64_t r = 0; r <= batch; ++r) offsets.push_back(static_cast<int32_t>(r * static_cast<int64_t>(hist.size())));
        for (int64_t r = 0; r < batch; ++r) entries.insert(entries.end(), hist.begin(), hist.end());
        device_buffer doff(offsets.size() * 4), dent(entries.size() * sizeof(sample_token_stat));
        doff.upload(offsets.data(), doff.size());
        dent.upload(entries.data(), dent.size());
        sample_outputs out{tokens.as<int32_t>(), lp.as<float>(), tid.as<int32_t>(), tlp.as<float>(), nullptr};
        auto skip = [&](const mode& m) { return !only_mode.empty() && std::string(m.name).find(only_mode) == std::string::npos; };
        for (const mode& m : modes) {
          if (skip(m)) continue;
          load(m.peaked);
          std::vector<sample_row_params> ph(static_cast<size_t>(batch));
          int phases = 1;
          for (size_t r = 0; r < ph.size(); ++r) {
            ph[r] = row_params(m, r);
            phases = std::max(phases, sample_row_phases(ph[r]));
          }
          device_buffer params(ph.size() * sizeof(sample_row_params));
          params.upload(ph.data(), params.size());
          sample_history h;
          if (m.penalties) h = {doff.as<int32_t>(), dent.as<sample_token_stat>(), pen_rows.as<float>()};
          int cursor = 0;
          const int inner = std::max(sets, 20);
          auto call = [&] {
            const float* l = logits.as<float>() + static_cast<size_t>(cursor++ % sets) * batch * vocab;
            sample_cuda(l, batch, vocab, params.as<sample_row_params>(), h, out, ws.data(), ws_bytes, true, s, phases);
          };
          const double eager_ms = time_median_ms(
              s,
              [&] {
                for (int i = 0; i < inner; ++i) call();
              },
              2, 7);
          cudaGraph_t g = nullptr;
          TROUPE_BENCH_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
          for (int i = 0; i < inner; ++i) call();
          TROUPE_BENCH_CUDA(cudaStreamEndCapture(s, &g));
          cudaGraphExec_t exec = nullptr;
          TROUPE_BENCH_CUDA(cudaGraphInstantiate(&exec, g, 0));
          const double graph_ms = time_median_ms(s, [&] { TROUPE_BENCH_CUDA(cudaGraphLaunch(exec, s)); }, 2, 11);
          cudaGraphExecDestroy(exec);
          cudaGraphDestroy(g);
          const double us = graph_ms * 1e3 / inner;
          const double gbps = static_cast<double>(bytes) / (us * 1e-6) / 1e9;
          results.push_back({m.name, batch, vocab, us, eager_ms * 1e3 / inner, gbps, gbps / copy_gbps});
        }
        // The engine's path: sample_context (upload, launches, download) by wall clock, stream synchronized.
        for (const mode& m : {modes[0], modes[2], modes[6], modes[7], modes[8]}) {
          if (skip(m)) continue;
          load(m.peaked);
          std::vector<sample_row_host> rows(static_cast<size_t>(batch));
          for (size_t r = 0; r < rows.size(); ++r)
            rows[r] = {row_params(m, r), m.penalties ? hist.data() : nullptr, m.penalties ? hist.size() : 0};
          sample_context ctx;
          std::vector<double> us;
          for (int i = 0; i < 40; ++i) {
            const auto t0 = std::chrono::steady_clock::now();
            ctx.enqueue(logits.as<float>() + static_cast<size_t>(i % sets) * batch * vocab, vocab, rows.data(),
                        rows.size(), s);
            TROUPE_BENCH_CUDA(cudaStreamSynchronize(s));
            us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
          }
          std::sort(us.begin() + 5, us.end());
          const double med = us[5 + (us.size() - 5) / 2];
          results.push_back({std::string("ctx ") + m.name, batch, vocab, med, med, 0.0, 0.0});
        }
      }
    }
    std::printf("%-22s %6s %7s %9s %9s %9s %7s\n", "mode", "batch", "vocab", "us", "us_eager", "GB/s", "%copy");
    for (const result& r : results)
      std::printf("%-22s %6lld %7lld %9.2f %9.2f %9.0f %6.1f%%\n", r.mode.c_str(), static_cast<long long>(r.batch),
                  static_cast<long long>(r.vocab), r.us, r.us_eager, r.gbps, 100 * r.copy_ratio);
    if (!json_path.empty()) {
      nlohmann::json j;
      j["device"] = prop.name;
      j["ceilings"] = {{"copy_gbps", copy_gbps}};
      for (const result& r : results)
        j["results"].push_back({{"mode", r.mode}, {"batch", r.batch}, {"vocab", r.vocab}, {"us", r.us},
                                {"us_eager", r.us_eager}, {"logits_gbps", r.gbps}, {"copy_ratio", r.copy_ratio}});
      std::ofstream(json_path) << j.dump(2) << "\n";
    }
    cudaStreamDestroy(s);
  } catch (const std::exception& e) {
    std::cerr << "bench_cuda_sample: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
