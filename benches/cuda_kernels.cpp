// bench_cuda_kernels: the pointwise CUDA ops, the KV copies and the cuBLASLt
// GEMM at Llama-3.1-8B shapes (hidden 4096, 32 heads, 8 KV heads, head_dim
// 128, intermediate 14336, vocab 128256), each against a ceiling measured in
// the same run on the same card (benches/cuda_ceilings.hpp): memory-bound ops
// report GB/s (bytes each op must read + write once) over device-to-device
// copy bandwidth; GEMMs report TFLOP/s over cuBLASLt 8192^3 and, for small m,
// GB/s of weight + activation traffic over copy bandwidth. Inputs are random
// (never zeros); memory-bound rows also give the ratio to a memcpy of the
// same bytes (%copy@size); each timing is the median over event-timed batches of
// launches that rotate over enough buffer sets (>= 512 MiB) to defeat L2, so
// small token counts measure launch latency more than bandwidth (16384
// tokens, a long prefill chunk, shows the large-shape asymptote).
// Usage: bench_cuda_kernels [--json PATH] [--quick]
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "benches/cuda_ceilings.hpp"
#include "kernels/device_buffer.hpp"
#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/kv_copy.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/rope.hpp"
#include "kernels/swiglu.hpp"

using namespace troupe;
using namespace troupe::bench;

namespace {

constexpr int64_t kHidden = 4096, kHeads = 32, kKvHeads = 8, kHeadDim = 128, kInter = 14336, kVocab = 128256,
                  kLayers = 32, kPage = 16;

struct row {
  std::string op;
  int64_t tokens = 0;
  double us = 0;
  double gbps = 0;
  double tflops = 0;
  double bw_ratio = 0;    // gbps / copy ceiling
  double flop_ratio = 0;  // tflops / gemm ceiling
  double size_ratio = 0;  // memcpy time for the same bytes / op time (memory-bound ops)
};

// Enough sets of `bytes` each that one pass over them exceeds 512 MiB (L2 is 50-60 MB).
int sets_for(double bytes) { return static_cast<int>(std::clamp(std::ceil(512.0 * (1 << 20) / bytes), 1.0, 64.0)); }

// Per-launch time in microseconds of op(set) over rotating sets.
double time_op(cuda_stream s, int sets, const std::function<void(int)>& op) {
  const int inner = std::max(sets, 20);
  int cursor = 0;
  const double ms = time_median_ms(s, [&] { for (int i = 0; i < inner; ++i) op(cursor++ % sets); }, 2, 11);
  return ms * 1e3 / inner;
}

device_buffer random_buffer(size_t bytes, uint64_t seed) {
  device_buffer b(bytes);
  fill_random_bf16(b.data(), bytes, seed);
  return b;
}

template <class T>
device_buffer upload_vec(const std::vector<T>& v) {
  device_buffer b(v.size() * sizeof(T));
  b.upload(v.data(), b.size());
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CUDA kernel bench at Llama-3.1-8B shapes against measured ceilings"};
  std::string json_path;
  bool quick = false;
  app.add_option("--json", json_path, "write results as JSON to this path");
  app.add_flag("--quick", quick, "fewer GEMM shapes");
  CLI11_PARSE(app, argc, argv);

  try {
    cudaDeviceProp prop{};
    TROUPE_BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
    cuda_stream s = nullptr;
    TROUPE_BENCH_CUDA(cudaStreamCreate(&s));
    const double copy_gbps = ceiling_copy_gbps(s);
    const double gemm_tflops = ceiling_gemm_tflops(s);
    std::printf("device %s: copy ceiling %.0f GB/s (read+write), bf16 GEMM 8192^3 ceiling %.0f TFLOP/s\n", prop.name,
                copy_gbps, gemm_tflops);
    std::vector<row> rows;
    // Size-matched reference: cudaMemcpyAsync moving the same bytes (half read,
    // half written), rotated the same way; small copies pay the same launch
    // ramp and tail as small kernels.
    auto copy_us = [&](double bytes) {
      const size_t half = (static_cast<size_t>(bytes / 2) + 255) / 256 * 256;
      const int sets = sets_for(bytes);
      device_buffer src(half * static_cast<size_t>(sets)), dst(half * static_cast<size_t>(sets));
      return time_op(s, sets, [&](int i) {
        TROUPE_BENCH_CUDA(cudaMemcpyAsync(static_cast<char*>(dst.data()) + half * static_cast<size_t>(i),
                                          static_cast<const char*>(src.data()) + half * static_cast<size_t>(i), half,
                                          cudaMemcpyDeviceToDevice, s));
      });
    };
    auto mem_row = [&](const std::string& op, int64_t tokens, double us, double bytes) {
      row r{op, tokens, us, bytes / (us * 1e-6) / 1e9, 0, 0, 0};
      r.bw_ratio = r.gbps / copy_gbps;
      r.size_ratio = copy_us(bytes) / us;
      rows.push_back(r);
    };

    std::mt19937 rng(42);
    device_buffer table = random_buffer(static_cast<size_t>(kVocab * kHidden) * 2, 5);
    device_buffer w_hidden = random_buffer(kHidden * 2, 6), w_head = random_buffer(kHeadDim * 2, 7);
    rope_scaling sc;
    sc.type = rope_type::rope_llama3;
    sc.theta = 500000.0;
    sc.factor = 8.0;
    sc.original_max_position = 8192;
    const rope_table rt = rope_inv_freq(sc, kHeadDim, 131072);
    device_buffer inv = upload_vec(rt.inv_freq);

    for (const int64_t T : {int64_t{1}, int64_t{64}, int64_t{4096}, int64_t{16384}}) {
      const size_t act = static_cast<size_t>(T * kHidden) * 2;
      {  // embedding
        const int sets = sets_for(2.0 * act);
        std::vector<device_buffer> ids, out;
        for (int i = 0; i < sets; ++i) {
          std::vector<int32_t> h(static_cast<size_t>(T));
          for (auto& id : h) id = static_cast<int32_t>(rng() % kVocab);
          ids.push_back(upload_vec(h));
          out.emplace_back(act);
        }
        const double us = time_op(s, sets, [&](int i) {
          embedding_cuda(ids[i].as<int32_t>(), T, table.as<uint16_t>(), kHidden, out[i].as<uint16_t>(), s);
        });
        mem_row("embedding", T, us, 2.0 * act + 4.0 * T);
      }
      {  // rmsnorm + residual, plain rmsnorm (hidden), q/k head norm
        const int sets = sets_for(4.0 * act);
        std::vector<device_buffer> x, res, y;
        for (int i = 0; i < sets; ++i) {
          x.push_back(random_buffer(act, 10 + i));
          res.push_back(random_buffer(act, 20 + i));
          y.emplace_back(act);
        }
        double us = time_op(s, sets, [&](int i) {
          rmsnorm_residual_cuda(x[i].as<uint16_t>(), res[i].as<uint16_t>(), y[i].as<uint16_t>(), T, kHidden,
                                w_hidden.as<uint16_t>(), 1e-5f, s);
        });
        mem_row("rmsnorm_residual", T, us, 4.0 * act + kHidden * 2);
        us = time_op(s, sets, [&](int i) {
          rmsnorm_cuda(x[i].as<uint16_t>(), y[i].as<uint16_t>(), T, kHidden, w_hidden.as<uint16_t>(), 1e-5f, s);
        });
        mem_row("rmsnorm", T, us, 2.0 * act + kHidden * 2);
      }
      {  // q/k head norm (Qwen3) and RoPE of q and k
        const size_t qk = static_cast<size_t>(T * (kHeads + kKvHeads) * kHeadDim) * 2;
        const int sets = sets_for(2.0 * qk);
        std::vector<device_buffer> q, y, pos;
        for (int i = 0; i < sets; ++i) {
          q.push_back(random_buffer(qk, 30 + i));
          y.emplace_back(qk);
          std::vector<int32_t> h(static_cast<size_t>(T));
          for (auto& p : h) p = static_cast<int32_t>(rng() % 131072);
          pos.push_back(upload_vec(h));
        }
        double us = time_op(s, sets, [&](int i) {
          rmsnorm_cuda(q[i].as<uint16_t>(), y[i].as<uint16_t>(), T * (kHeads + kKvHeads), kHeadDim,
                       w_head.as<uint16_t>(), 1e-6f, s);
        });
        mem_row("qk_head_norm", T, us, 2.0 * qk);
        us = time_op(s, sets, [&](int i) {
          rope_cuda_args a;
          a.q = q[i].as<uint16_t>();
          a.n_q_heads = kHeads;
          a.k = q[i].as<uint16_t>() + T * kHeads * kHeadDim;
          a.n_k_heads = kKvHeads;
          a.n_tokens = T;
          a.head_dim = kHeadDim;
          a.pos = pos[i].as<int32_t>();
          a.inv_freq = inv.as<float>();
          a.attention_scaling = rt.attention_scaling;
          rope_apply_cuda(a, s);
        });
        mem_row("rope_qk", T, us, 2.0 * qk + 4.0 * T);
      }
      {  // swiglu on the fused gate|up output
        const size_t out_bytes = static_cast<size_t>(T * kInter) * 2;
        const int sets = sets_for(3.0 * out_bytes);
        std::vector<device_buffer> gu, out;
        for (int i = 0; i < sets; ++i) {
          gu.push_back(random_buffer(2 * out_bytes, 40 + i));
          out.emplace_back(out_bytes);
        }
        const double us = time_op(s, sets, [&](int i) {
          swiglu_fused_cuda(gu[i].as<uint16_t>(), T, kInter, out[i].as<uint16_t>(), s);
        });
        mem_row("swiglu_fused", T, us, 3.0 * out_bytes);
      }
      {  // KV append (one layer), gather and scatter (32 layers, one sequence)
        const size_t rb = static_cast<size_t>(kKvHeads * kHeadDim) * 2;
        const int64_t pages = (T + kPage - 1) / kPage;
        const size_t block = rb * kPage, page_bytes = block * 2 * kLayers;
        device_buffer storage = random_buffer(page_bytes * static_cast<size_t>(pages), 50);
        std::vector<int32_t> table_h(static_cast<size_t>(pages));
        for (size_t i = 0; i < table_h.size(); ++i) table_h[i] = static_cast<int32_t>(i);
        std::shuffle(table_h.begin(), table_h.end(), rng);
        std::vector<int32_t> slots_h(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t)
          slots_h[static_cast<size_t>(t)] = table_h[static_cast<size_t>(t / kPage)] * kPage + static_cast<int32_t>(t % kPage);
        device_buffer ptable = upload_vec(table_h), slots = upload_vec(slots_h);
        auto view = [&](int64_t layer) {
          paged_kv v;
          v.type = dtype::dtype_bf16;
          v.base = static_cast<const std::byte*>(storage.data());
          v.page_stride = page_bytes;
          v.k_offset = static_cast<size_t>(layer * 2) * block;
          v.v_offset = static_cast<size_t>(layer * 2 + 1) * block;
          v.page_size = kPage;
          v.n_kv_heads = kKvHeads;
          v.head_dim = kHeadDim;
          return v;
        };
        const size_t kvb = rb * static_cast<size_t>(T);
        const int sets = sets_for(4.0 * kvb);
        std::vector<device_buffer> k, v;
        for (int i = 0; i < sets; ++i) {
          k.push_back(random_buffer(kvb, 60 + i));
          v.push_back(random_buffer(kvb, 70 + i));
        }
        double us = time_op(s, sets, [&](int i) {
          kv_append_args a;
          a.k = k[i].data();
          a.v = v[i].data();
          a.slots = slots.as<int32_t>();
          a.n_tokens = T;
          kv_append_cuda(view(i % kLayers), a, s);
        });
        mem_row("kv_append", T, us, 4.0 * kvb);
        kv_transfer_args ta;
        ta.layer0 = view(0);
        ta.layer_stride = 2 * block;
        ta.n_layers = kLayers;
        ta.page_table = ptable.as<int32_t>();
        ta.n_tokens = T;
        device_buffer buf(kv_transfer_bytes(ta));
        us = time_op(s, 1, [&](int) { kv_gather_cuda(ta, buf.data(), s); });
        mem_row("kv_gather_32L", T, us, 2.0 * static_cast<double>(buf.size()));
        us = time_op(s, 1, [&](int) { kv_scatter_cuda(ta, buf.data(), s); });
        mem_row("kv_scatter_32L", T, us, 2.0 * static_cast<double>(buf.size()));
      }
    }

    // GEMMs: y = x W^T at the model's linear shapes.
    gemm_context ctx;
    struct lin {
      const char* name;
      int64_t n, k;
    };
    std::vector<lin> lins = {{"qkv", 6144, 4096}, {"o_proj", 4096, 4096}, {"gate_up", 28672, 4096},
                             {"down", 4096, 14336}, {"lm_head", kVocab, 4096}};
    if (quick) lins.resize(2);
    for (const lin& L : lins) {
      const size_t wbytes = static_cast<size_t>(L.n * L.k) * 2;
      const int wsets = sets_for(static_cast<double>(wbytes));
      std::vector<device_buffer> ws;
      for (int i = 0; i < wsets; ++i) ws.push_back(random_buffer(wbytes, 80 + i));
      for (const int64_t m : {int64_t{1}, int64_t{8}, int64_t{64}, int64_t{256}, int64_t{4096}}) {
        device_buffer x = random_buffer(static_cast<size_t>(m * L.k) * 2, 90), y(static_cast<size_t>(m * L.n) * 2);
        const double us = time_op(s, wsets, [&](int i) {
          gemm_bf16(ctx, x.as<uint16_t>(), m, L.k, ws[i].as<uint16_t>(), L.n, nullptr, y.as<uint16_t>(), s);
        });
        const double flops = 2.0 * m * L.n * L.k;
        const double bytes = static_cast<double>(wbytes) + 2.0 * (m * L.k + m * L.n);
        row r{std::string("gemm_") + L.name, m, us, bytes / (us * 1e-6) / 1e9, flops / (us * 1e-6) / 1e12, 0, 0};
        r.bw_ratio = r.gbps / copy_gbps;
        r.flop_ratio = r.tflops / gemm_tflops;
        rows.push_back(r);
      }
    }
    TROUPE_BENCH_CUDA(cudaStreamSynchronize(s));

    std::printf("%-18s %6s %10s %9s %7s %9s %7s %11s\n", "op", "tokens", "us", "GB/s", "%copy", "TFLOP/s", "%gemm",
                "%copy@size");
    for (const row& r : rows) {
      if (r.tflops > 0)
        std::printf("%-18s %6lld %10.2f %9.0f %6.1f%% %9.1f %6.1f%%\n", r.op.c_str(), static_cast<long long>(r.tokens),
                    r.us, r.gbps, 100 * r.bw_ratio, r.tflops, 100 * r.flop_ratio);
      else
        std::printf("%-18s %6lld %10.2f %9.0f %6.1f%% %9s %7s %10.1f%%\n", r.op.c_str(), static_cast<long long>(r.tokens),
                    r.us, r.gbps, 100 * r.bw_ratio, "-", "-", 100 * r.size_ratio);
    }
    if (!json_path.empty()) {
      nlohmann::json j;
      j["device"] = prop.name;
      j["ceilings"] = {{"copy_gbps", copy_gbps}, {"gemm_bf16_8192_tflops", gemm_tflops}};
      j["shapes"] = {{"hidden", kHidden}, {"heads", kHeads}, {"kv_heads", kKvHeads}, {"head_dim", kHeadDim},
                     {"intermediate", kInter}, {"vocab", kVocab}, {"layers", kLayers}, {"page_size", kPage}};
      for (const row& r : rows)
        j["results"].push_back({{"op", r.op}, {"tokens_or_m", r.tokens}, {"us", r.us}, {"gbps", r.gbps},
                                {"bw_ratio", r.bw_ratio}, {"tflops", r.tflops}, {"flop_ratio", r.flop_ratio},
                                {"size_matched_copy_ratio", r.size_ratio}});
      std::ofstream(json_path) << j.dump(2) << "\n";
    }
    cudaStreamDestroy(s);
  } catch (const std::exception& e) {
    std::cerr << "bench_cuda_kernels: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
