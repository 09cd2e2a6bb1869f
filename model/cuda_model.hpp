// The CUDA backend of the Llama-family model: model::forward's semantics
// (batches of prefill chunks and decode tokens, paged KV, layer ranges with
// hidden-state hand-off, errors that leave the cache unchanged) on one GPU.
// Weights live as bf16 in ONE device allocation per layer range, converted
// from the checkpoint's f32/f16/bf16 at upload; q/k/v are laid out back to
// back so they are one [q+2kv][hidden] GEMM weight (biases likewise), and
// gate/up one [2*inter][hidden] weight. Activations are bf16 GEMM operands
// around an fp32 residual stream (kernels/residual_norm.hpp); logits are fp32
// (kernels/gemm_f32.hpp). KV pages are bf16 on the device with the page
// allocator and page tables of model/kv_cache on the host. Decode-only steps
// of a whole model are replayed from CUDA graphs captured per batch-size
// bucket (1, 2, 4, ... 256) and block-table width: one async upload of the
// step's index data, one graph launch, one copy of the logits back.
// Plain C++ header; the implementation (model/cuda/) exists in CUDA builds only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "model/engine.hpp"

namespace troupe {

/// A model (or layer range) on one CUDA device.
class cuda_model : public engine {
 public:
  /// Fills `dst` (bf16 bits, row-major, the shape the config implies) with the
  /// checkpoint tensor called `name`.
  using weight_fill = std::function<void(const std::string& name, std::span<uint16_t> dst)>;

  /// Builds the model on device `device` with weights from `fill` (called once
  /// per checkpoint tensor the range needs). Throws troupe::error.
  cuda_model(model_config cfg, layer_range range, int device, const weight_fill& fill);
  ~cuda_model() override;

  /// Loads DIR for `range` ({0, 0} = all layers) onto device `device`.
  static std::shared_ptr<cuda_model> load(const std::filesystem::path& dir, layer_range range, int device);

  const model_config& config() const override;
  layer_range range() const override;
  std::string device() const override;
  dtype kv_dtype() const override { return dtype::dtype_bf16; }
  std::unique_ptr<engine_kv> kv_make(int64_t page_size, int64_t n_pages) override;
  errc forward(std::span<const seq_chunk> batch, engine_kv& kv, std::vector<float>& logits,
               stage_io io = {}) override;
  /// Samples on the GPU right after the logits GEMM (kernels/sample.hpp):
  /// the full logits never reach the host, only token ids and the asked
  /// logprobs. Device draws: Philox keyed by (seed, tokens generated so far).
  errc forward_sample(std::span<const seq_chunk> batch, engine_kv& kv, std::span<const sample_request> rows,
                      std::vector<sample_outcome>& out) override;

  /// Bytes of the weight arena (the one device allocation).
  size_t weight_bytes() const;
  /// Replay decode-only steps from CUDA graphs (default on).
  void set_graphs(bool on);
  /// Graphs captured so far.
  size_t graphs_captured() const;
  /// When false, forward leaves the logits on the device (device_logits())
  /// and `logits` is only resized: for a sampler that runs on the GPU and for
  /// benchmarks. Default true.
  void set_host_logits(bool on);
  /// The last step's fp32 logits rows on the device ([rows][vocab]).
  const float* device_logits() const;
  /// Waits for the model's stream (benchmarks).
  void synchronize();

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace troupe
