// The CUDA engine end to end on Llama-3.1-8B and Llama-3.2-1B shapes with
// random bf16 weights made in-process: decode tokens/s at batch 1, 8, 64, 256
// with contexts of 512 and 8K against the roofline ((weight bytes + KV bytes
// read per step) / device copy bandwidth measured in this run), and prefill
// TTFT at 1K, 8K, 32K and 128K tokens (prompts longer than --prefill-chunk
// go through in chunks of that size, as chunked prefill serves them). Decode steps are the engine's own forward
// calls (CUDA graphs per batch bucket), timed on the host clock around whole
// steps, with the logits left on the device (as a GPU sampler would take
// them). Contexts are made by real prefill. Cases whose KV does not fit in the
// GPU's memory are reported as skipped.
#include <stdexcept>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include "benches/cuda_ceilings.hpp"
#include "model/cuda_model.hpp"

using namespace troupe;
using namespace troupe::bench;

namespace {

model_config shape(const std::string& name) {
  model_config c;
  c.arch = model_arch::arch_llama;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 128256;
  c.rms_norm_eps = 1e-5f;
  c.max_position_embeddings = 131072;
  c.rope.type = rope_type::rope_llama3;
  c.rope.theta = 500000.0;
  c.rope.factor = name == "8B" ? 8.0 : 32.0;
  c.rope.original_max_position = 8192;
  if (name != "8B" && name != "1B") throw std::invalid_argument("unknown model shape '" + name + "' (8B or 1B)");
  if (name == "8B") {
    c.hidden_size = 4096, c.intermediate_size = 14336, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 8;
    c.head_dim = 128;
  } else {
    c.hidden_size = 2048, c.intermediate_size = 8192, c.n_layers = 16, c.n_heads = 32, c.n_kv_heads = 8;
    c.head_dim = 64;
    c.tie_word_embeddings = true;
  }
  return c;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CUDA engine: decode tokens/s against the roofline and prefill TTFT"};
  std::string json_path;
  std::vector<std::string> models = {"8B", "1B"};
  std::vector<int64_t> ctxs = {512, 8192}, batches = {1, 8, 64, 256}, prompts = {1024, 8192, 32768, 131072};
  int steps = 16;
  int64_t prefill_chunk = 32768;
  app.add_option("--json", json_path, "write the results as JSON here");
  app.add_option("--models", models, "shapes to run: 8B, 1B")->delimiter(',')->check(CLI::IsMember({"8B", "1B"}));
  app.add_option("--steps", steps, "timed decode steps per case")->check(CLI::Range(1, 100000));
  app.add_option("--ctx", ctxs, "decode contexts")->delimiter(',')->check(CLI::Range(int64_t{1}, int64_t{131072}));
  app.add_option("--batch", batches, "decode batch sizes")->delimiter(',')->check(CLI::Range(int64_t{1}, int64_t{256}));
  app.add_option("--prompts", prompts, "prefill TTFT prompt lengths (0: none)")->delimiter(',')->check(CLI::Range(int64_t{0}, int64_t{131072}));
  app.add_option("--prefill-chunk", prefill_chunk, "largest prefill step in tokens")->check(CLI::Range(int64_t{256}, int64_t{131072}));
  CLI11_PARSE(app, argc, argv);
  try {
    cudaStream_t s;
    TROUPE_BENCH_CUDA(cudaStreamCreate(&s));
    const double copy_gbps = ceiling_copy_gbps(s);
    cudaDeviceProp prop{};
    TROUPE_BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("device %s, copy ceiling %.0f GB/s (read + written)\n", prop.name, copy_gbps);
    nlohmann::json j;
    j["device"] = prop.name;
    j["copy_gbps"] = copy_gbps;
    const std::vector<uint16_t> pattern = random_bf16(size_t{1} << 24, 11, 0.02f);
    std::vector<std::string> table;
    for (const std::string& name : models) {
      const model_config cfg = shape(name);
      const double t0 = now_s();
      cuda_model m(cfg, {}, 0, [&](const std::string& t, std::span<uint16_t> dst) {
        if (t.find("norm") != std::string::npos) {
          std::fill(dst.begin(), dst.end(), uint16_t{0x3f80});
          return;
        }
        const size_t off = std::hash<std::string>{}(t) % pattern.size();
        for (size_t at = 0; at < dst.size();) {
          const size_t from = (off + at) % pattern.size();
          const size_t n = std::min(dst.size() - at, pattern.size() - from);
          std::memcpy(dst.data() + at, pattern.data() + from, n * 2);
          at += n;
        }
      });
      m.set_host_logits(false);
      const double load_s = now_s() - t0;
      const double embed_bytes = cfg.tie_word_embeddings ? 0.0 : double(cfg.vocab_size) * cfg.hidden_size * 2;
      const double weight_read = double(m.weight_bytes()) - embed_bytes;
      const double kv_token = double(cfg.n_layers) * 2 * cfg.n_kv_heads * cfg.head_dim * 2;
      size_t free_b = 0, total_b = 0;
      TROUPE_BENCH_CUDA(cudaMemGetInfo(&free_b, &total_b));
      const size_t budget = free_b > (size_t{8} << 30) ? free_b - (size_t{8} << 30) : 0;  // activations, graphs
      const int64_t page = 16;
      const int64_t pages = static_cast<int64_t>(double(budget) / (kv_token * page));
      auto kv = m.kv_make(page, pages);
      std::printf("\n%s: weights %.2f GB on the GPU (loaded in %.1f s), KV %.1f KB/token, %lld pages (%.1f GB)\n",
                  name.c_str(), m.weight_bytes() / 1e9, load_s, kv_token / 1e3, static_cast<long long>(pages),
                  pages * page * kv_token / 1e9);
      nlohmann::json jm;
      jm["weight_bytes"] = m.weight_bytes();
      std::vector<int32_t> toks(size_t{1} << 17);
      for (size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<int32_t>((i * 7919 + 13) % cfg.vocab_size);
      std::vector<float> logits;
      std::printf("%-5s %6s %5s %10s %10s %10s %8s\n", "model", "ctx", "batch", "step ms", "tok/s", "roof tok/s",
                  "of roof");
      for (int64_t ctx : ctxs) {
        for (int64_t batch : batches) {
          const int64_t need = batch * ((ctx + steps + 8 + page - 1) / page + 1);
          nlohmann::json jc{{"ctx", ctx}, {"batch", batch}};
          if (need > pages) {
            std::printf("%-5s %6lld %5lld   skipped: KV of %.1f GB does not fit\n", name.c_str(),
                        static_cast<long long>(ctx), static_cast<long long>(batch), need * page * kv_token / 1e9);
            jc["skipped"] = "KV does not fit";
            jm["decode"].push_back(jc);
            continue;
          }
          // Contexts by real prefill, up to 8192 tokens per step.
          std::vector<seq_chunk> chunk;
          int64_t in_step = 0;
          for (int64_t sq = 0; sq < batch; ++sq) {
            chunk.push_back({sq, std::span<const int32_t>(toks.data() + sq % 7, static_cast<size_t>(ctx)),
                             logits_mode::logits_none});
            in_step += ctx;
            if (in_step >= 8192 || sq == batch - 1) {
              if (m.forward(chunk, *kv, logits) != errc::ok) throw std::runtime_error("prefill failed");
              chunk.clear();
              in_step = 0;
            }
          }
          std::vector<seq_chunk> dec(static_cast<size_t>(batch));
          auto step = [&](int i) {
            for (int64_t sq = 0; sq < batch; ++sq)
              dec[static_cast<size_t>(sq)] = {sq, std::span<const int32_t>(toks.data() + (sq + i) % 1000, 1),
                                              logits_mode::logits_last};
            if (m.forward(dec, *kv, logits) != errc::ok) throw std::runtime_error("decode failed");
          };
          for (int i = 0; i < 3; ++i) step(i);  // capture + warm
          std::vector<double> ms;
          for (int i = 0; i < steps; ++i) {
            const double a = now_s();
            step(3 + i);
            ms.push_back((now_s() - a) * 1e3);
          }
          std::sort(ms.begin(), ms.end());
          const double med = ms[ms.size() / 2];
          const double kv_read = double(batch) * double(ctx + 3 + steps / 2) * kv_token;
          const double roof_ms = (weight_read + kv_read) / (copy_gbps * 1e9) * 1e3;
          const double tps = batch / (med * 1e-3), roof_tps = batch / (roof_ms * 1e-3);
          std::printf("%-5s %6lld %5lld %10.3f %10.0f %10.0f %7.1f%%\n", name.c_str(), static_cast<long long>(ctx),
                      static_cast<long long>(batch), med, tps, roof_tps, 100.0 * tps / roof_tps);
          jc["step_ms"] = med;
          jc["tokens_per_s"] = tps;
          jc["roofline_tokens_per_s"] = roof_tps;
          jc["of_roofline"] = tps / roof_tps;
          jm["decode"].push_back(jc);
          for (int64_t sq = 0; sq < batch; ++sq) kv->free(sq);
        }
      }
      std::printf("%-5s %8s %10s %12s\n", "model", "prompt", "TTFT ms", "prefill tok/s");
      for (int64_t n : prompts) {
        if (n <= 0) continue;
        if (n / page + 2 > pages || n > static_cast<int64_t>(toks.size())) {
          std::printf("%-5s %8lld   skipped: KV does not fit\n", name.c_str(), static_cast<long long>(n));
          jm["prefill"].push_back({{"tokens", n}, {"skipped", "KV does not fit"}});
          continue;
        }
        std::vector<double> ms;
        for (int r = 0; r < (n >= 32768 ? 2 : 3); ++r) {
          const double a = now_s();
          for (int64_t at = 0; at < n; at += prefill_chunk) {
            const int64_t len = std::min(prefill_chunk, n - at);
            seq_chunk c{1000, std::span<const int32_t>(toks.data() + at, static_cast<size_t>(len)),
                        at + len == n ? logits_mode::logits_last : logits_mode::logits_none};
            if (m.forward({&c, 1}, *kv, logits) != errc::ok) throw std::runtime_error("prefill failed");
          }
          m.synchronize();
          ms.push_back((now_s() - a) * 1e3);
          kv->free(1000);
        }
        std::sort(ms.begin(), ms.end());
        const double best = ms.front();  // the first run includes GEMM algorithm selection for new shapes
        std::printf("%-5s %8lld %10.1f %12.0f\n", name.c_str(), static_cast<long long>(n), best, n / (best * 1e-3));
        jm["prefill"].push_back(
            {{"tokens", n}, {"ttft_ms", best}, {"tokens_per_s", n / (best * 1e-3)}, {"chunk", std::min(n, prefill_chunk)}});
      }
      j["models"][name] = jm;
    }
    if (!json_path.empty()) std::ofstream(json_path) << j.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_engine: %s\n", e.what());
    return 1;
  }
  return 0;
}
