// The forward pass is written as whole-batch GEMMs (all tokens of all
// sequences in one matrix) with only attention split per sequence, so a mixed
// step of prefill chunks and decode tokens reads each weight once.
#include "model/model.hpp"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "kernels/attention.hpp"
#include "kernels/embedding.hpp"
#include "kernels/logits.hpp"
#include "kernels/matmul.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/swiglu.hpp"
#include "model/checkpoint.hpp"

namespace troupe {

namespace {

const weight_ref* opt(const weight_ref& r) { return r.data != nullptr ? &r : nullptr; }

void add_inplace(float* x, const float* y, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

model::model(model_config cfg, weight_arena weights) : cfg_(std::move(cfg)), weights_(std::move(weights)) {
  rope_ = rope_inv_freq(cfg_.rope, cfg_.head_dim, cfg_.max_position_embeddings);
  const layer_range r = weights_.range();
  for (int64_t l = r.first; l < r.last; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const weight_arena& a = weights_;
    layer_weights w;
    w.in_norm = a.ref(p + "input_layernorm.weight");
    w.q = a.ref(p + "self_attn.q_proj.weight");
    w.k = a.ref(p + "self_attn.k_proj.weight");
    w.v = a.ref(p + "self_attn.v_proj.weight");
    w.o = a.ref(p + "self_attn.o_proj.weight");
    w.q_bias = a.ref_or_null(p + "self_attn.q_proj.bias");
    w.k_bias = a.ref_or_null(p + "self_attn.k_proj.bias");
    w.v_bias = a.ref_or_null(p + "self_attn.v_proj.bias");
    w.o_bias = a.ref_or_null(p + "self_attn.o_proj.bias");
    w.q_norm = a.ref_or_null(p + "self_attn.q_norm.weight");
    w.k_norm = a.ref_or_null(p + "self_attn.k_norm.weight");
    w.post_norm = a.ref(p + "post_attention_layernorm.weight");
    w.gate = a.ref(p + "mlp.gate_proj.weight");
    w.up = a.ref(p + "mlp.up_proj.weight");
    w.down = a.ref(p + "mlp.down_proj.weight");
    w.gate_bias = a.ref_or_null(p + "mlp.gate_proj.bias");
    w.up_bias = a.ref_or_null(p + "mlp.up_proj.bias");
    w.down_bias = a.ref_or_null(p + "mlp.down_proj.bias");
    layers_.push_back(w);
  }
}

model model::load(const std::filesystem::path& dir, layer_range range) {
  model_config cfg = model_config_load(dir);
  if (range.first == 0 && range.last == 0) range.last = cfg.n_layers;
  checkpoint ckpt = checkpoint::open(dir);
  weight_arena w = weight_arena::load(ckpt, cfg, range);
  return model(std::move(cfg), std::move(w));
}

kv_cache_config model::kv_config(int64_t page_size, int64_t n_pages, dtype type) const {
  const layer_range r = weights_.range();
  return {r.last - r.first, cfg_.n_kv_heads, cfg_.head_dim, page_size, n_pages, type};
}

errc model::forward(std::span<const seq_chunk> batch, kv_cache& kv, std::vector<float>& logits, stage_io io) {
  const layer_range r = weights_.range();
  const bool first = r.first == 0, last = r.last == cfg_.n_layers;
  const int64_t hd = cfg_.hidden_size;
  // Validate everything before touching the cache.
  std::unordered_set<int64_t> seen;
  int64_t total = 0, n_logit_rows = 0;
  for (const seq_chunk& c : batch) {
    if (!seen.insert(c.seq_id).second) return errc::errc_invalid_argument;
    if (first)
      for (int32_t t : c.tokens)
        if (t < 0 || t >= cfg_.vocab_size) return errc::errc_invalid_argument;
    const int64_t n = static_cast<int64_t>(c.tokens.size());
    if (kv.length(c.seq_id) + n > cfg_.max_position_embeddings) return errc::errc_context_overflow;
    total += n;
    if (c.logits == logits_mode::logits_all) n_logit_rows += n;
    if (c.logits == logits_mode::logits_last && n > 0) n_logit_rows += 1;
  }
  if (!first && io.hidden_in == nullptr) return errc::errc_invalid_argument;
  // Reserve pages for every entry, all or nothing.
  std::vector<int64_t> old_len;
  std::vector<bool> existed;
  for (const seq_chunk& c : batch) {
    old_len.push_back(kv.length(c.seq_id));
    existed.push_back(kv.contains(c.seq_id));
    if (errc e = kv.append(c.seq_id, static_cast<int64_t>(c.tokens.size())); e != errc::ok) {
      for (size_t i = 0; i + 1 < old_len.size(); ++i) {
        if (existed[i]) (void)kv.truncate(batch[i].seq_id, old_len[i]);
        else kv.free(batch[i].seq_id);
      }
      return e;
    }
  }
  seq_start_.assign(batch.size() + 1, 0);
  pos_.resize(static_cast<size_t>(total));
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(total));
  for (size_t i = 0; i < batch.size(); ++i) {
    seq_start_[i + 1] = seq_start_[i] + static_cast<int64_t>(batch[i].tokens.size());
    for (int64_t t = 0; t < static_cast<int64_t>(batch[i].tokens.size()); ++t)
      pos_[static_cast<size_t>(seq_start_[i] + t)] = static_cast<int32_t>(old_len[i] + t);
    ids.insert(ids.end(), batch[i].tokens.begin(), batch[i].tokens.end());
  }
  x_.resize(static_cast<size_t>(total * hd));
  if (first) {
    const weight_ref emb = weights_.ref("model.embed_tokens.weight");
    embedding(ids.data(), total, emb.type, emb.data, hd, x_.data());
  } else {
    std::copy_n(io.hidden_in, total * hd, x_.data());
  }
  for (size_t l = 0; l < layers_.size(); ++l) run_layer(static_cast<int64_t>(l), layers_[l], batch, kv);
  if (!last) {
    if (io.hidden_out != nullptr) *io.hidden_out = x_;
    logits.clear();
    return errc::ok;
  }
  std::vector<int32_t> rows;
  rows.reserve(static_cast<size_t>(n_logit_rows));
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].logits == logits_mode::logits_all)
      for (int64_t t = seq_start_[i]; t < seq_start_[i + 1]; ++t) rows.push_back(static_cast<int32_t>(t));
    else if (batch[i].logits == logits_mode::logits_last && seq_start_[i + 1] > seq_start_[i])
      rows.push_back(static_cast<int32_t>(seq_start_[i + 1] - 1));
  }
  logits.resize(rows.size() * static_cast<size_t>(cfg_.vocab_size));
  logits_compute(x_.data(), rows.data(), static_cast<int64_t>(rows.size()), weights_.ref("model.norm.weight"),
                 cfg_.rms_norm_eps, weights_.ref("lm_head.weight"), logits.data());
  return errc::ok;
}

void model::run_layer(int64_t local, const layer_weights& w, std::span<const seq_chunk> batch, kv_cache& kv) {
  const int64_t total = seq_start_.back();
  const int64_t hd = cfg_.hidden_size, dh = cfg_.head_dim;
  const int64_t nq = cfg_.n_heads * dh, nkv = cfg_.n_kv_heads * dh, inter = cfg_.intermediate_size;
  h_.resize(static_cast<size_t>(total * hd));
  q_.resize(static_cast<size_t>(total * nq));
  k_.resize(static_cast<size_t>(total * nkv));
  v_.resize(static_cast<size_t>(total * nkv));
  attn_.resize(static_cast<size_t>(total * nq));

  rmsnorm(x_.data(), h_.data(), total, hd, w.in_norm.type, w.in_norm.data, cfg_.rms_norm_eps);
  matmul(h_.data(), total, w.q, opt(w.q_bias), q_.data());
  matmul(h_.data(), total, w.k, opt(w.k_bias), k_.data());
  matmul(h_.data(), total, w.v, opt(w.v_bias), v_.data());
  if (w.q_norm.data != nullptr) {
    rmsnorm(q_.data(), q_.data(), total * cfg_.n_heads, dh, w.q_norm.type, w.q_norm.data, cfg_.rms_norm_eps);
    rmsnorm(k_.data(), k_.data(), total * cfg_.n_kv_heads, dh, w.k_norm.type, w.k_norm.data, cfg_.rms_norm_eps);
  }
  rope_apply(q_.data(), total, cfg_.n_heads, dh, pos_.data(), rope_);
  rope_apply(k_.data(), total, cfg_.n_kv_heads, dh, pos_.data(), rope_);

  const kv_cache_config& kc = kv.config();
  const paged_kv view = kv.layer_view(local);
  const int64_t abs_layer = weights_.range().first + local;
  const int64_t window = cfg_.sliding_window.empty() ? 0 : cfg_.sliding_window[static_cast<size_t>(abs_layer)];
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t s0 = seq_start_[i], n = seq_start_[i + 1] - s0;
    if (n == 0) continue;
    const int64_t seq = batch[i].seq_id;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t p = pos_[static_cast<size_t>(s0 + t)];
      convert_from_f32(kc.type, k_.data() + (s0 + t) * nkv, kv.row(seq, local, 0, p), static_cast<size_t>(nkv));
      convert_from_f32(kc.type, v_.data() + (s0 + t) * nkv, kv.row(seq, local, 1, p), static_cast<size_t>(nkv));
    }
    attention_args a;
    a.q = q_.data() + s0 * nq;
    a.out = attn_.data() + s0 * nq;
    a.n_tokens = n;
    a.n_heads = cfg_.n_heads;
    a.q_pos0 = pos_[static_cast<size_t>(s0)];
    a.page_table = kv.pages(seq).data();
    a.kv_len = kv.length(seq);
    a.sliding_window = window;
    a.scale = 1.0f / std::sqrt(static_cast<float>(dh));
    attention_paged(a, view);
  }
  matmul(attn_.data(), total, w.o, opt(w.o_bias), h_.data());
  add_inplace(x_.data(), h_.data(), h_.size());

  rmsnorm(x_.data(), h_.data(), total, hd, w.post_norm.type, w.post_norm.data, cfg_.rms_norm_eps);
  gate_.resize(static_cast<size_t>(total * inter));
  up_.resize(static_cast<size_t>(total * inter));
  matmul(h_.data(), total, w.gate, opt(w.gate_bias), gate_.data());
  matmul(h_.data(), total, w.up, opt(w.up_bias), up_.data());
  swiglu(gate_.data(), up_.data(), gate_.data(), total * inter);
  matmul(gate_.data(), total, w.down, opt(w.down_bias), h_.data());
  add_inplace(x_.data(), h_.data(), h_.size());
}

}  // namespace troupe
