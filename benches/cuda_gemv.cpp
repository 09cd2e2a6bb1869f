// bench_cuda_gemv: the decode GEMV kernels (kernels/gemv.hpp) against
// cuBLASLt (gemm_bf16 / gemm_f32_context forced to cuBLASLt, best timed
// algorithm) and against the device-to-device copy bandwidth measured in the
// same run, at the linear shapes of Llama-3.1-8B (hidden 4096, inter 14336,
// 8 KV heads of 128) and Llama-3.2-1B (hidden 2048, inter 8192, 8 KV heads of
// 64), vocab 128256, for m = 1, 2, 4, 8, 16 tokens. Decode GEMMs are bound by
// reading the weights once, so each row reports GB/s of W + x + y traffic
// and its ratio to copy bandwidth (the roofline). Two timings:
//  - per kernel: event-timed batches of launches rotating over enough weight
//    copies (>= 512 MiB) that L2 (50 MB) never holds them, median of 11;
//    the GEMV also with programmatic dependent launch (gemv+PDL: each launch
//    loads weights while the one before drains, as decode would with PDL on);
//  - per layer: one layer's GEMM sequence (qkv, o_proj, gate|up + SwiGLU,
//    down) captured in a CUDA graph over enough layers to defeat L2 and
//    replayed, as decode runs it, in four versions: cuBLASLt + swiglu kernel,
//    GEMV + swiglu kernel, GEMV with fused SwiGLU, the same with programmatic
//    dependent launch. Roofline there = layer weight bytes / copy bandwidth.
// --sweep also times every kernel configuration per shape (to choose the
// defaults in kernels/cuda/gemv.cu). Inputs are random bf16, never zeros.
// Usage: bench_cuda_gemv [--json PATH] [--sweep] [--quick]
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "benches/cuda_ceilings.hpp"
#include "kernels/device_buffer.hpp"
#include "kernels/gemm.hpp"
#include "kernels/gemm_f32.hpp"
#include "kernels/gemv.hpp"
#include "kernels/swiglu.hpp"

using namespace troupe;
using namespace troupe::bench;

namespace {

struct model_shape {
  const char* name;
  int64_t hidden, inter, qkv, vocab;
};

// qkv = (heads + 2 * kv_heads) * head_dim.
const model_shape kModels[] = {{"8B", 4096, 14336, (32 + 16) * 128, 128256}, {"1B", 2048, 8192, (32 + 16) * 64, 128256}};

struct lin {
  std::string name;
  int64_t n, k;
  bool f32_out;
};

std::vector<lin> linears(const model_shape& s) {
  return {{"qkv", s.qkv, s.hidden, false},
          {"o_proj", s.hidden, s.hidden, false},
          {"gate_up", 2 * s.inter, s.hidden, false},
          {"down", s.hidden, s.inter, false},
          {"lm_head", s.vocab, s.hidden, true}};
}

// Enough copies of `bytes` that one pass over them exceeds 512 MiB.
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

struct kernel_row {
  std::string model, op, variant;
  int64_t m = 0;
  double us = 0, gbps = 0, ratio = 0;
};

struct layer_row {
  std::string model, variant;
  int64_t m = 0;
  double us = 0, weight_gbps = 0, roofline = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"decode GEMV vs cuBLASLt vs copy bandwidth at Llama 8B / 1B shapes"};
  std::string json_path;
  bool sweep = false, quick = false;
  app.add_option("--json", json_path, "write results as JSON to this path");
  app.add_flag("--sweep", sweep, "also time every GEMV kernel configuration");
  app.add_flag("--quick", quick, "m = 1 and 8 only");
  CLI11_PARSE(app, argc, argv);

  try {
    cudaDeviceProp prop{};
    TROUPE_BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
    cuda_stream s = nullptr;
    TROUPE_BENCH_CUDA(cudaStreamCreate(&s));
    const double copy_gbps = ceiling_copy_gbps(s);
    std::printf("device %s (%d SMs): copy ceiling %.0f GB/s (read+write)\n", prop.name, prop.multiProcessorCount,
                copy_gbps);
    std::vector<int64_t> ms = {1, 2, 4, 8, 16};
    if (quick) ms = {1, 8};

    gemm_context lt;
    lt.set_path(gemm_path::gemm_path_cublaslt);
    gemm_f32_context lt32;
    lt32.set_path(gemm_path::gemm_path_cublaslt);

    std::vector<kernel_row> krows;
    nlohmann::json sweep_json = nlohmann::json::array();
    std::vector<std::string> notes;
    auto record = [&](const std::string& model, const std::string& op, const std::string& variant, int64_t m,
                      double bytes, const std::function<double()>& timed) {
      kernel_row r{model, op, variant, m, 0, 0, 0};
      try {
        r.us = timed();
        r.gbps = bytes / (r.us * 1e-6) / 1e9;
        r.ratio = r.gbps / copy_gbps;
      } catch (const std::exception& e) {
        notes.push_back(model + " " + op + " " + variant + " m=" + std::to_string(m) + ": " + e.what());
        (void)cudaGetLastError();
      }
      krows.push_back(r);
      return r;
    };

    for (const model_shape& ms_ : kModels) {
      for (const lin& L : linears(ms_)) {
        const size_t wbytes = static_cast<size_t>(L.n * L.k) * 2;
        const int wsets = sets_for(static_cast<double>(wbytes));
        std::vector<device_buffer> ws;
        for (int i = 0; i < wsets; ++i) ws.push_back(random_buffer(wbytes, 80 + static_cast<uint64_t>(i)));
        for (const int64_t m : ms) {
          device_buffer x = random_buffer(static_cast<size_t>(m * L.k) * 2, 90);
          device_buffer y(static_cast<size_t>(m * L.n) * 4);
          const double out_b = L.f32_out ? 4.0 : 2.0;
          const double bytes = static_cast<double>(wbytes) + 2.0 * m * L.k + out_b * m * L.n;
          const uint16_t* xp = x.as<uint16_t>();
          auto gemv_with = [&](const gemv_options& o) {
            return time_op(s, wsets, [&](int i) {
              if (L.f32_out)
                gemv_bf16_f32(xp, m, L.k, ws[i].as<uint16_t>(), L.n, nullptr, y.as<float>(), s, o);
              else
                gemv_bf16(xp, m, L.k, ws[i].as<uint16_t>(), L.n, nullptr, y.as<uint16_t>(), s, o);
            });
          };
          record(ms_.name, L.name, "gemv", m, bytes, [&] { return gemv_with({}); });
          gemv_options pdl;
          pdl.pdl = true;  // back-to-back launches overlap: each loads W while the one before drains
          record(ms_.name, L.name, "gemv_pdl", m, bytes, [&] { return gemv_with(pdl); });
          record(ms_.name, L.name, "cublaslt", m, bytes, [&] {
            return time_op(s, wsets, [&](int i) {
              if (L.f32_out)
                lt32.run(xp, m, L.k, ws[i].as<uint16_t>(), L.n, y.as<float>(), s);
              else
                gemm_bf16(lt, xp, m, L.k, ws[i].as<uint16_t>(), L.n, nullptr, y.as<uint16_t>(), s);
            });
          });
          const bool gu = L.name == "gate_up";
          const int64_t inter = L.n / 2;
          // gate|up then SwiGLU: bytes of the fused op (W + x + act).
          const double sw_bytes = static_cast<double>(wbytes) + 2.0 * m * L.k + 2.0 * m * inter;
          device_buffer act(static_cast<size_t>(m * inter) * 2);
          if (gu) {
            record(ms_.name, L.name, "gemv_swiglu_fused", m, sw_bytes, [&] {
              return time_op(s, wsets, [&](int i) {
                gemv_swiglu_bf16(xp, m, L.k, ws[i].as<uint16_t>(), inter, nullptr, act.as<uint16_t>(), s);
              });
            });
            record(ms_.name, L.name, "cublaslt+swiglu", m, sw_bytes, [&] {
              return time_op(s, wsets, [&](int i) {
                gemm_bf16(lt, xp, m, L.k, ws[i].as<uint16_t>(), L.n, nullptr, y.as<uint16_t>(), s);
                swiglu_fused_cuda(y.as<uint16_t>(), m, inter, act.as<uint16_t>(), s);
              });
            });
          }
          if (sweep) {
            nlohmann::json sj{{"model", ms_.name}, {"op", L.name}, {"m", m}};
            for (int c = 0; c < gemv_config_count(); ++c) {
              gemv_options o;
              o.config = c;
              const kernel_row r = record(ms_.name, L.name, std::string("cfg_") + gemv_config_name(c), m, bytes,
                                          [&] { return gemv_with(o); });
              sj["plain"][gemv_config_name(c)] = r.ratio;
              if (gu && gemv_config_has_swiglu(c)) {
                const kernel_row rs =
                    record(ms_.name, L.name, std::string("swiglu_cfg_") + gemv_config_name(c), m, sw_bytes, [&] {
                      return time_op(s, wsets, [&](int i) {
                        gemv_swiglu_bf16(xp, m, L.k, ws[i].as<uint16_t>(), inter, nullptr, act.as<uint16_t>(), s, o);
                      });
                    });
                sj["swiglu"][gemv_config_name(c)] = rs.ratio;
              }
            }
            sweep_json.push_back(sj);
          }
        }
      }
    }
    TROUPE_BENCH_CUDA(cudaStreamSynchronize(s));

    // One layer's GEMM sequence in a CUDA graph, as decode replays it.
    std::vector<layer_row> lrows;
    for (const model_shape& M : kModels) {
      const int64_t H = M.hidden, I = M.inter, Q = M.qkv;
      const double layer_bytes = 2.0 * static_cast<double>(Q * H + H * H + 2 * I * H + H * I);
      const int layers = static_cast<int>(std::clamp(std::ceil(512.0 * (1 << 20) / layer_bytes), 2.0, 8.0));
      struct lw {
        device_buffer qkv, o, gu, down;
      };
      std::vector<lw> W;
      for (int l = 0; l < layers; ++l) {
        const uint64_t sd = 1000 + 10 * static_cast<uint64_t>(l);
        W.push_back({random_buffer(static_cast<size_t>(Q * H) * 2, sd), random_buffer(static_cast<size_t>(H * H) * 2, sd + 1),
                     random_buffer(static_cast<size_t>(2 * I * H) * 2, sd + 2),
                     random_buffer(static_cast<size_t>(H * I) * 2, sd + 3)});
      }
      for (const int64_t m : ms) {
        device_buffer h = random_buffer(static_cast<size_t>(m * H) * 2, 7), attn = random_buffer(static_cast<size_t>(m * H) * 2, 8);
        device_buffer qkv(static_cast<size_t>(m * Q) * 2), o(static_cast<size_t>(m * H) * 2),
            gu(static_cast<size_t>(m * 2 * I) * 2), act(static_cast<size_t>(m * I) * 2), dn(static_cast<size_t>(m * H) * 2);
        auto u16 = [](const device_buffer& b) { return b.as<uint16_t>(); };
        for (const std::string variant : {"cublaslt+swiglu", "gemv+swiglu", "gemv_fused", "gemv_fused_pdl"}) {
          gemv_options opt;
          opt.pdl = variant == "gemv_fused_pdl";
          auto layer = [&](const lw& w) {
            if (variant == "cublaslt+swiglu") {
              gemm_bf16(lt, u16(h), m, H, u16(w.qkv), Q, nullptr, u16(qkv), s);
              gemm_bf16(lt, u16(attn), m, H, u16(w.o), H, nullptr, u16(o), s);
              gemm_bf16(lt, u16(h), m, H, u16(w.gu), 2 * I, nullptr, u16(gu), s);
              swiglu_fused_cuda(u16(gu), m, I, u16(act), s);
            } else {
              gemv_bf16(u16(h), m, H, u16(w.qkv), Q, nullptr, u16(qkv), s, opt);
              gemv_bf16(u16(attn), m, H, u16(w.o), H, nullptr, u16(o), s, opt);
              if (variant == "gemv+swiglu") {
                gemv_bf16(u16(h), m, H, u16(w.gu), 2 * I, nullptr, u16(gu), s, opt);
                swiglu_fused_cuda(u16(gu), m, I, u16(act), s);
              } else {
                gemv_swiglu_bf16(u16(h), m, H, u16(w.gu), I, nullptr, u16(act), s, opt);
              }
            }
            if (variant == "cublaslt+swiglu")
              gemm_bf16(lt, u16(act), m, I, u16(w.down), H, nullptr, u16(dn), s);
            else
              gemv_bf16(u16(act), m, I, u16(w.down), H, nullptr, u16(dn), s, opt);
          };
          layer_row r{M.name, variant, m, 0, 0, 0};
          try {
            for (const lw& w : W) layer(w);  // outside capture: cuBLASLt times and caches its algorithms
            TROUPE_BENCH_CUDA(cudaStreamSynchronize(s));
            cudaGraph_t g = nullptr;
            cudaGraphExec_t ge = nullptr;
            TROUPE_BENCH_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
            for (const lw& w : W) layer(w);
            TROUPE_BENCH_CUDA(cudaStreamEndCapture(s, &g));
            TROUPE_BENCH_CUDA(cudaGraphInstantiate(&ge, g, 0));
            const double ms_graph = time_median_ms(s, [&] { TROUPE_BENCH_CUDA(cudaGraphLaunch(ge, s)); }, 3, 21);
            cudaGraphExecDestroy(ge);
            cudaGraphDestroy(g);
            r.us = ms_graph * 1e3 / layers;
            r.weight_gbps = layer_bytes / (r.us * 1e-6) / 1e9;
            r.roofline = r.weight_gbps / copy_gbps;
          } catch (const std::exception& e) {
            notes.push_back(std::string(M.name) + " layer " + variant + " m=" + std::to_string(m) + ": " + e.what());
            cudaStreamCaptureStatus st;
            if (cudaStreamIsCapturing(s, &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
              cudaGraph_t g = nullptr;
              (void)cudaStreamEndCapture(s, &g);
              if (g) cudaGraphDestroy(g);
            }
            (void)cudaGetLastError();
          }
          lrows.push_back(r);
        }
      }
    }

    // Tables: per kernel (GEMV vs cuBLASLt vs copy), per layer, sweep.
    auto find = [&](const std::string& model, const std::string& op, const std::string& variant, int64_t m) {
      for (const kernel_row& r : krows)
        if (r.model == model && r.op == op && r.variant == variant && r.m == m) return &r;
      return static_cast<const kernel_row*>(nullptr);
    };
    std::printf("\nper kernel (GB/s of W + x + y; %%copy = share of the %.0f GB/s copy ceiling)\n", copy_gbps);
    std::printf("%-5s %-8s %3s | %9s %8s %6s | %9s %8s %6s | %7s | %10s %6s\n", "model", "op", "m", "gemv us", "GB/s",
                "%copy", "cublas us", "GB/s", "%copy", "speedup", "gemv+PDL us", "%copy");
    for (const model_shape& M : kModels)
      for (const lin& L : linears(M))
        for (const int64_t m : ms) {
          const kernel_row *g = find(M.name, L.name, "gemv", m), *c = find(M.name, L.name, "cublaslt", m);
          if (!g || !c) continue;
          const kernel_row* p = find(M.name, L.name, "gemv_pdl", m);
          std::printf("%-5s %-8s %3lld | %9.2f %8.0f %5.1f%% | %9.2f %8.0f %5.1f%% | %6.2fx | %10.2f %5.1f%%\n", M.name,
                      L.name.c_str(), static_cast<long long>(m), g->us, g->gbps, 100 * g->ratio, c->us, c->gbps,
                      100 * c->ratio, g->us > 0 ? c->us / g->us : 0.0, p ? p->us : 0.0, p ? 100 * p->ratio : 0.0);
          const kernel_row *f = find(M.name, L.name, "gemv_swiglu_fused", m),
                           *cs = find(M.name, L.name, "cublaslt+swiglu", m);
          if (f && cs)
            std::printf("%-5s %-8s %3lld | %9.2f %8.0f %5.1f%% | %9.2f %8.0f %5.1f%% | %6.2fx  (gate_up+SwiGLU fused "
                        "vs cuBLASLt + swiglu)\n",
                        M.name, "gu+silu", static_cast<long long>(m), f->us, f->gbps, 100 * f->ratio, cs->us, cs->gbps,
                        100 * cs->ratio, f->us > 0 ? cs->us / f->us : 0.0);
        }
    // The threshold question: per-token GEMM time of a whole decode step
    // (layers x (qkv + o_proj + gate_up + down) + lm_head), GEMV vs cuBLASLt.
    std::printf("\ndecode step GEMM time per m (sum over layers + lm_head, stream-timed kernels)\n");
    std::printf("%-5s %3s | %10s %10s %10s | %s\n", "model", "m", "gemv us", "cublas us", "gemv+PDL", "shapes where gemv wins");
    for (const model_shape& M : kModels) {
      const int layers = std::string(M.name) == "8B" ? 32 : 16;
      for (const int64_t m : ms) {
        double tg = 0, tc = 0, tp = 0;
        int wins = 0, total = 0;
        for (const lin& L : linears(M)) {
          const kernel_row *g = find(M.name, L.name, "gemv", m), *c = find(M.name, L.name, "cublaslt", m),
                           *p = find(M.name, L.name, "gemv_pdl", m);
          if (!g || !c || !p) continue;
          const double times = L.name == "lm_head" ? 1.0 : layers;
          tg += times * g->us;
          tc += times * c->us;
          tp += times * p->us;
          wins += g->us < c->us;
          ++total;
        }
        std::printf("%-5s %3lld | %10.1f %10.1f %10.1f | %d/%d\n", M.name, static_cast<long long>(m), tg, tc, tp, wins,
                    total);
      }
    }
    std::printf("\nper layer in a CUDA graph (qkv, o_proj, gate|up + SwiGLU, down; roofline = weight bytes / copy)\n");
    std::printf("%-5s %3s | %-16s %9s %9s %9s\n", "model", "m", "variant", "us/layer", "W GB/s", "roofline");
    for (const layer_row& r : lrows)
      std::printf("%-5s %3lld | %-16s %9.2f %9.0f %8.1f%%\n", r.model.c_str(), static_cast<long long>(r.m),
                  r.variant.c_str(), r.us, r.weight_gbps, 100 * r.roofline);
    if (sweep) {
      std::printf("\nsweep: %%copy per configuration (plain / fused SwiGLU)\n%-5s %-8s %3s", "model", "op", "m");
      for (int c = 0; c < gemv_config_count(); ++c) std::printf(" %9s", gemv_config_name(c));
      std::printf("\n");
      for (const auto& sj : sweep_json) {
        for (const char* kind : {"plain", "swiglu"}) {
          if (!sj.contains(kind)) continue;
          std::printf("%-5s %-8s %3lld", sj["model"].get<std::string>().c_str(),
                      (std::string(kind) == "plain" ? sj["op"].get<std::string>() : std::string("gu+silu")).c_str(),
                      static_cast<long long>(sj["m"].get<int64_t>()));
          for (int c = 0; c < gemv_config_count(); ++c) {
            const std::string n = gemv_config_name(c);
            if (sj[kind].contains(n))
              std::printf(" %8.1f%%", 100 * sj[kind][n].get<double>());
            else
              std::printf(" %9s", "-");
          }
          std::printf("\n");
        }
      }
    }
    for (const std::string& n : notes) std::printf("FAILED: %s\n", n.c_str());

    if (!json_path.empty()) {
      nlohmann::json j;
      j["device"] = prop.name;
      j["sms"] = prop.multiProcessorCount;
      j["ceilings"] = {{"copy_gbps", copy_gbps}};
      for (const model_shape& M : kModels)
        j["models"][M.name] = {{"hidden", M.hidden}, {"intermediate", M.inter}, {"qkv", M.qkv}, {"vocab", M.vocab}};
      for (const kernel_row& r : krows)
        j["kernels"].push_back({{"model", r.model}, {"op", r.op}, {"variant", r.variant}, {"m", r.m}, {"us", r.us},
                                {"gbps", r.gbps}, {"copy_ratio", r.ratio}});
      for (const layer_row& r : lrows)
        j["layers"].push_back({{"model", r.model}, {"variant", r.variant}, {"m", r.m}, {"us_per_layer", r.us},
                               {"weight_gbps", r.weight_gbps}, {"roofline", r.roofline}});
      if (sweep) j["sweep"] = sweep_json;
      j["failures"] = notes;
      std::ofstream(json_path) << j.dump(2) << "\n";
    }
    cudaStreamDestroy(s);
    if (!notes.empty()) return 1;
  } catch (const std::exception& e) {
    std::cerr << "bench_cuda_gemv: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
