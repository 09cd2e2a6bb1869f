// CUDA paged attention on Llama-3.1-8B attention shapes (32 heads, 8 KV
// heads, head_dim 128, bf16, pages of 16 tokens in shuffled order): prefill
// TFLOP/s at 1K, 8K and 32K tokens (one causal sequence, counted as
// 4 * n^2 * d * heads / 2) and decode GB/s at batch 1, 8, 64 and contexts
// 512, 8K, 32K against the device-to-device copy bandwidth measured in the
// same run. Decode bytes are the K/V rows every sequence must read plus q and
// out; the pool is rotated over several copies ("layers") when one would fit
// in L2, and decode steps are timed as graph replays of several launches so
// that launch gaps do not count. Prefill runs twice: the own mma.sync kernel
// and the default path (cuDNN's fused attention where libcudnn.so.9 loads,
// its per-shape plan built before timing). PyTorch SDPA on the same prefill shapes is
// benches/gpu/attention_sdpa.py, run in the same device call.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include "benches/cuda_ceilings.hpp"
#include "kernels/attention.hpp"

using namespace troupe;
using namespace troupe::bench;

namespace {

constexpr int64_t n_heads = 32, n_kv = 8, head_dim = 128, page_size = 16;
constexpr size_t row_bytes = n_kv * head_dim * 2;

struct dev_mem {
  void* p = nullptr;
  explicit dev_mem(size_t bytes) { TROUPE_BENCH_CUDA(cudaMalloc(&p, std::max<size_t>(bytes, 16))); }
  ~dev_mem() { cudaFree(p); }
  dev_mem(const dev_mem&) = delete;
  dev_mem& operator=(const dev_mem&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

template <class T>
void upload(const dev_mem& d, const std::vector<T>& v) {
  TROUPE_BENCH_CUDA(cudaMemcpy(d.p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}

// Shuffled page ids: n_seqs rows of `per_seq` pages each.
std::vector<int32_t> shuffled_table(int64_t n_seqs, int64_t per_seq, uint64_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(n_seqs * per_seq));
  std::iota(t.begin(), t.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(t.begin(), t.end(), rng);
  return t;
}

paged_kv pool_view(const dev_mem& pool, int layers, int layer) {
  paged_kv kv;
  kv.type = dtype::dtype_bf16;
  kv.base = pool.as<const std::byte>();
  kv.page_stride = static_cast<size_t>(layers) * 2 * page_size * row_bytes;
  kv.k_offset = static_cast<size_t>(layer) * 2 * page_size * row_bytes;
  kv.v_offset = kv.k_offset + page_size * row_bytes;
  kv.page_size = page_size;
  kv.n_kv_heads = n_kv;
  kv.head_dim = head_dim;
  return kv;
}

double prefill_tflops(int64_t n, cuda_stream s, prefill_backend which, double& ms_out, std::string& path) {
  const int64_t pages = (n + page_size - 1) / page_size;
  dev_mem pool(static_cast<size_t>(pages) * 2 * page_size * row_bytes);
  fill_random_bf16(pool.p, static_cast<size_t>(pages) * 2 * page_size * row_bytes, 11);
  dev_mem q(static_cast<size_t>(n * n_heads * head_dim) * 2), out(static_cast<size_t>(n * n_heads * head_dim) * 2);
  fill_random_bf16(q.p, static_cast<size_t>(n * n_heads * head_dim) * 2, 12);
  dev_mem bt(static_cast<size_t>(pages) * 4), meta(16);
  upload(bt, shuffled_table(1, pages, 13));
  upload(meta, std::vector<int32_t>{0, static_cast<int32_t>(n), static_cast<int32_t>(n), 0});
  attention_batch_cuda b;
  b.q = q.as<uint16_t>();
  b.out = out.as<uint16_t>();
  b.n_seqs = 1;
  b.n_heads = n_heads;
  b.cu_seqlens_q = meta.as<int32_t>();
  b.kv_lens = meta.as<int32_t>() + 2;
  b.q_pos0 = meta.as<int32_t>() + 3;
  b.block_table = bt.as<int32_t>();
  b.block_table_stride = pages;
  b.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const paged_kv kv = pool_view(pool, 1, 0);
  const int reps = n >= 32768 ? 10 : 20;
  attention_prefill_cuda(b, kv, n, s, which);  // builds the cuDNN plan outside the timing
  TROUPE_BENCH_CUDA(cudaStreamSynchronize(s));
  std::string why;
  path = attention_prefill_last_path(&why);
  if (!why.empty() && which != prefill_backend::prefill_backend_own) std::printf("  (%s)\n", why.c_str());
  ms_out = time_median_ms(s, [&] { attention_prefill_cuda(b, kv, n, s, which); }, 3, reps);
  const double flops = 4.0 * static_cast<double>(n) * n * head_dim * n_heads / 2.0;
  return flops / (ms_out * 1e-3) / 1e12;
}

struct decode_result {
  double ms, gbps;
  int splits, layers;
};

decode_result decode_gbps(int64_t batch, int64_t ctx, int n_sms, cuda_stream s) {
  const int64_t per_seq = (ctx + page_size - 1) / page_size;
  const size_t layer_bytes = static_cast<size_t>(batch * per_seq) * 2 * page_size * row_bytes;
  const int layers = static_cast<int>(std::clamp<size_t>((size_t{1} << 30) / layer_bytes, 1, 8));
  dev_mem pool(layer_bytes * layers);
  fill_random_bf16(pool.p, layer_bytes * layers, 21);
  const size_t q_bytes = static_cast<size_t>(batch * n_heads * head_dim) * 2;
  dev_mem q(q_bytes), out(q_bytes), bt(static_cast<size_t>(batch * per_seq) * 4), lens(static_cast<size_t>(batch) * 4);
  fill_random_bf16(q.p, q_bytes, 22);
  upload(bt, shuffled_table(batch, per_seq, 23));
  upload(lens, std::vector<int32_t>(static_cast<size_t>(batch), static_cast<int32_t>(ctx)));
  const int splits = attention_decode_splits(batch, n_kv, ctx, n_sms);
  const size_t ws_bytes = attention_decode_workspace_bytes(batch, n_heads, head_dim, splits);
  dev_mem ws(ws_bytes);
  attention_batch_cuda b;
  b.q = q.as<uint16_t>();
  b.out = out.as<uint16_t>();
  b.n_seqs = batch;
  b.n_heads = n_heads;
  b.kv_lens = lens.as<int32_t>();
  b.block_table = bt.as<int32_t>();
  b.block_table_stride = per_seq;
  b.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  // A graph of `inner` decode steps over rotating layers (warm-up outside the capture).
  const size_t kv_bytes = static_cast<size_t>(batch * ctx) * row_bytes * 2;
  const int inner = static_cast<int>(std::clamp<size_t>((size_t{256} << 20) / kv_bytes, 1, 64));
  for (int l = 0; l < layers; ++l) attention_decode_cuda(b, pool_view(pool, layers, l), splits, ws.p, ws_bytes, s);
  TROUPE_BENCH_CUDA(cudaStreamSynchronize(s));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  TROUPE_BENCH_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < inner; ++i)
    attention_decode_cuda(b, pool_view(pool, layers, i % layers), splits, ws.p, ws_bytes, s);
  TROUPE_BENCH_CUDA(cudaStreamEndCapture(s, &graph));
  TROUPE_BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  const double ms = time_median_ms(s, [&] { TROUPE_BENCH_CUDA(cudaGraphLaunch(exec, s)); }, 3, 15) / inner;
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  const double bytes = static_cast<double>(kv_bytes) + 2.0 * static_cast<double>(q_bytes);
  return {ms, bytes / (ms * 1e-3) / 1e9, splits, layers};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CUDA paged attention: prefill TFLOP/s and decode GB/s on Llama-3.1-8B shapes"};
  std::string json_path;
  app.add_option("--json", json_path, "write the results as JSON here");
  CLI11_PARSE(app, argc, argv);
  try {
    cudaStream_t st;
    TROUPE_BENCH_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaDeviceProp prop{};
    TROUPE_BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
    const double copy = ceiling_copy_gbps(st);
    nlohmann::json j;
    j["device"] = prop.name;
    j["sms"] = prop.multiProcessorCount;
    j["copy_gbps"] = copy;
    j["shape"] = {{"n_heads", n_heads}, {"n_kv_heads", n_kv}, {"head_dim", head_dim}, {"page_size", page_size}};
    std::printf("device %s, %d SMs; device-to-device copy %.0f GB/s (read + written)\n", prop.name,
                prop.multiProcessorCount, copy);
    std::printf("\nprefill (causal, 1 sequence, 32 q heads / 8 kv heads, d 128; FLOPs 4*n^2*d*h/2)\n");
    std::string cudnn_why;
    const bool cudnn = attention_prefill_cudnn_available(&cudnn_why);
    std::printf("cuDNN: %s\n", cudnn_why.c_str());
    j["cudnn"] = cudnn_why;
    std::printf("%8s %22s %10s %10s\n", "tokens", "path", "ms", "TFLOP/s");
    // Rows: the own kernel, the default path, then each cuDNN graph variant pinned.
    const std::vector<std::pair<prefill_backend, int>> runs = {{prefill_backend::prefill_backend_own, 0},
                                                               {prefill_backend::prefill_backend_auto, 0},
                                                               {prefill_backend::prefill_backend_cudnn, 1},
                                                               {prefill_backend::prefill_backend_cudnn, 2},
                                                               {prefill_backend::prefill_backend_cudnn, 3}};
    for (int64_t n : {1024, 8192, 32768})
      for (const auto& [which, variant] : runs) {
        if (which != prefill_backend::prefill_backend_own && !cudnn) continue;
        attention_prefill_cudnn_variant(variant);
        double ms = 0;
        std::string path;
        double tf = 0;
        try {
          tf = prefill_tflops(n, st, which, ms, path);
        } catch (const std::exception& e) {
          std::printf("%8lld %16s  declined: %s\n", static_cast<long long>(n), "cudnn", e.what());
          continue;
        }
        const std::string label = variant == 0 ? path : path + " (pinned)";
        std::printf("%8lld %22s %10.3f %10.1f\n", static_cast<long long>(n), label.c_str(), ms, tf);
        j["prefill"].push_back({{"tokens", n}, {"path", label}, {"ms", ms}, {"tflops", tf}});
      }
    attention_prefill_cudnn_variant(0);
    std::printf("\ndecode (1 query/sequence; bytes = K/V read + q + out; ratio to copy bandwidth)\n");
    std::printf("%6s %8s %7s %7s %10s %9s %7s\n", "batch", "context", "splits", "layers", "us", "GB/s", "ratio");
    for (int64_t batch : {1, 8, 64})
      for (int64_t ctx : {512, 8192, 32768}) {
        const decode_result r = decode_gbps(batch, ctx, prop.multiProcessorCount, st);
        std::printf("%6lld %8lld %7d %7d %10.2f %9.0f %7.2f\n", static_cast<long long>(batch),
                    static_cast<long long>(ctx), r.splits, r.layers, r.ms * 1e3, r.gbps, r.gbps / copy);
        j["decode"].push_back({{"batch", batch},
                               {"context", ctx},
                               {"splits", r.splits},
                               {"us", r.ms * 1e3},
                               {"gbps", r.gbps},
                               {"ratio_to_copy", r.gbps / copy}});
      }
    cudaStreamDestroy(st);
    if (!json_path.empty()) std::ofstream(json_path) << j.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_attention: %s\n", e.what());
    return 1;
  }
  return 0;
}
