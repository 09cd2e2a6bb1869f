// Host side of the CUDA model: weight upload, KV cache on the device, and the
// step, written as one enqueue() over device index arrays so that the same
// code runs eagerly and inside a CUDA graph capture. A step: validate on the
// host (nothing touched), reserve pages (all or nothing), pack every per-step
// index array into one pinned buffer and upload it with one async copy, then
// enqueue the layers; the only wait is for the logits (or hidden states).
#include "model/cuda_model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <unordered_set>

#include <cuda_runtime.h>

#include "kernels/attention.hpp"
#include "kernels/attention_generic.hpp"
#include "kernels/cuda/check.cuh"
#include "kernels/device_buffer.hpp"
#include "kernels/gemm.hpp"
#include "kernels/gemm_f32.hpp"
#include "kernels/kv_copy.hpp"
#include "kernels/residual_norm.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/rope.hpp"
#include "kernels/swiglu.hpp"
#include "kernels/gemv.hpp"
#include "kernels/sample.hpp"
#include "model/checkpoint.hpp"

namespace troupe {

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t v, size_t a = kAlign) { return (v + a - 1) / a * a; }
int64_t pow2_at_least(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// Pinned host memory, grown on demand.
struct pinned {
  void* p = nullptr;
  size_t bytes = 0;
  ~pinned() {
    if (p) cudaFreeHost(p);
  }
  void reserve(size_t n) {
    if (n <= bytes) return;
    if (p) cudaFreeHost(p);
    p = nullptr;
    bytes = 0;
    TROUPE_CUDA_CHECK(cudaHostAlloc(&p, n, cudaHostAllocDefault));
    bytes = n;
  }
};

// KV pages on the device; the allocator is the base class's kv_cache (no host storage).
class cuda_kv : public engine_kv {
 public:
  cuda_kv(const kv_cache_config& c, int device) : engine_kv(with_no_host(c)), device_(device) {
    TROUPE_CUDA_CHECK(cudaSetDevice(device));
    try {
      storage_ = device_buffer(pages_.page_bytes() * static_cast<size_t>(c.n_pages));
    } catch (const error& e) {
      throw error(errc::errc_kv_exhausted, std::string("cuda KV cache: ") + e.what());
    }
  }
  static kv_cache_config with_no_host(kv_cache_config c) {
    c.host_storage = false;
    c.type = dtype::dtype_bf16;
    return c;
  }
  paged_kv view(int64_t layer) const {
    paged_kv v;
    v.type = dtype::dtype_bf16;
    v.base = static_cast<const std::byte*>(storage_.data());
    v.page_stride = pages_.page_bytes();
    v.k_offset = static_cast<size_t>(layer * 2) * pages_.block_bytes();
    v.v_offset = static_cast<size_t>(layer * 2 + 1) * pages_.block_bytes();
    v.page_size = pages_.config().page_size;
    v.n_kv_heads = pages_.config().n_kv_heads;
    v.head_dim = pages_.config().head_dim;
    return v;
  }
  int device() const { return device_; }

  errc gather(int64_t seq, std::span<std::byte> dst) const override {
    if (!pages_.contains(seq)) return errc::errc_unknown_sequence;
    const int64_t n = pages_.length(seq);
    if (dst.size() < transfer_bytes(n)) return errc::errc_invalid_argument;
    if (n == 0) return errc::ok;
    TROUPE_CUDA_CHECK(cudaSetDevice(device_));
    device_buffer table, buf(transfer_bytes(n));
    kv_transfer_args a = transfer(seq, n, table);
    kv_gather_cuda(a, buf.data(), nullptr);
    cuda_sync(nullptr);
    buf.download(dst.data(), transfer_bytes(n));
    return errc::ok;
  }

  errc scatter(int64_t seq, std::span<const std::byte> src, int64_t n_tokens) override {
    if (pages_.contains(seq) || n_tokens < 0 || src.size() < transfer_bytes(n_tokens))
      return errc::errc_invalid_argument;
    if (errc e = pages_.append(seq, n_tokens); e != errc::ok) {
      pages_.free(seq);
      return e;
    }
    if (n_tokens == 0) return errc::ok;
    try {
      TROUPE_CUDA_CHECK(cudaSetDevice(device_));
      device_buffer table, buf(transfer_bytes(n_tokens));
      buf.upload(src.data(), transfer_bytes(n_tokens));
      kv_transfer_args a = transfer(seq, n_tokens, table);
      kv_scatter_cuda(a, buf.data(), nullptr);
      cuda_sync(nullptr);
    } catch (...) {
      pages_.free(seq);
      throw;
    }
    return errc::ok;
  }

 private:
  kv_transfer_args transfer(int64_t seq, int64_t n, device_buffer& table) const {
    const std::span<const int32_t> pt = pages_.pages(seq);
    table = device_buffer(pt.size() * sizeof(int32_t));
    table.upload(pt.data(), pt.size() * sizeof(int32_t));
    kv_transfer_args a;
    a.layer0 = view(0);
    a.layer_stride = 2 * pages_.block_bytes();
    a.n_layers = pages_.config().n_layers;
    a.page_table = table.as<int32_t>();
    a.first_token = 0;
    a.n_tokens = n;
    return a;
  }

  int device_;
  device_buffer storage_;
};

struct layer_ptrs {
  const uint16_t *in_norm = nullptr, *qkv_w = nullptr, *qkv_b = nullptr, *q_norm = nullptr, *k_norm = nullptr;
  const uint16_t *o_w = nullptr, *o_b = nullptr, *post_norm = nullptr, *gu_w = nullptr, *gu_b = nullptr;
  const uint16_t *down_w = nullptr, *down_b = nullptr;
};

// The shape of one step as enqueue() sees it.
struct step_dims {
  int64_t tokens = 0, seqs = 0, rows = 0, stride = 1, max_q_len = 0, max_kv_len = 0;
  bool decode = false;
  int splits = 1;
};

// Offsets (in int32 elements) of the index arrays inside the uploaded block.
struct idx_layout {
  size_t ids, pos, slots, cu, q0, kvl, rows, table, total;
  explicit idx_layout(const step_dims& d) {
    size_t o = 0;
    auto take = [&](int64_t n) {
      const size_t at = o;
      o += align_up(static_cast<size_t>(std::max<int64_t>(n, 1)), 64);
      return at;
    };
    ids = take(d.tokens);
    pos = take(d.tokens);
    slots = take(d.tokens);
    cu = take(d.seqs + 1);
    q0 = take(d.seqs);
    kvl = take(d.seqs);
    rows = take(d.rows);
    table = take(d.seqs * d.stride);
    total = o;
  }
};

}  // namespace

struct cuda_model::impl {
  model_config cfg;
  layer_range range;
  int device = 0;
  int n_sms = 0;
  bool first = false, last = false;
  bool graphs_on = true, host_logits = true;
  rope_table rope;
  device_buffer inv_freq;
  device_buffer arena;
  const uint16_t *embed = nullptr, *final_norm = nullptr, *lm_head = nullptr;
  std::vector<layer_ptrs> layers;
  cudaStream_t stream = nullptr;
  std::unique_ptr<gemm_context> gemm;
  std::unique_ptr<gemm_f32_context> gemm32;
  // Workspaces (device), sized for tokens_cap tokens / rows_cap logits rows.
  int64_t tokens_cap = 0, rows_cap = 0;
  size_t idx_cap = 0, attn_ws_cap = 0;
  device_buffer resid, h, qkv, qbuf, attn, oout, gu, act, hn, logits_dev, idx, attn_ws;
  pinned idx_host, out_host;
  std::map<std::pair<int64_t, int64_t>, cudaGraphExec_t> graphs;
  // GPU sampling (forward_sample): on_logits is set for one forward() call and
  // enqueues the sampler right after the logits, before the step's wait.
  std::unique_ptr<sample_context> sampling;
  std::function<void(cudaStream_t, int64_t rows)> on_logits;
  std::vector<sample_row_host> sample_rows;
  std::vector<float> no_logits;

  ~impl() {
    drop_graphs();
    if (stream) cudaStreamDestroy(stream);
  }
  void drop_graphs() {
    for (auto& [k, g] : graphs) cudaGraphExecDestroy(g);
    graphs.clear();
  }

  int64_t qkv_width() const { return (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim; }

  // Grows the workspaces; any reallocation invalidates captured graphs.
  void ensure(int64_t tokens, int64_t rows, size_t idx_elems, size_t attn_ws_bytes) {
    const int64_t hd = cfg.hidden_size, nq = cfg.n_heads * cfg.head_dim, inter = cfg.intermediate_size;
    bool grew = false;
    if (tokens > tokens_cap) {
      const int64_t t = std::max<int64_t>(pow2_at_least(tokens), 16);
      resid = device_buffer(static_cast<size_t>(t * hd) * 4);
      h = device_buffer(static_cast<size_t>(t * hd) * 2);
      qkv = device_buffer(static_cast<size_t>(t * qkv_width()) * 2);
      qbuf = device_buffer(static_cast<size_t>(t * nq) * 2);
      attn = device_buffer(static_cast<size_t>(t * nq) * 2);
      oout = device_buffer(static_cast<size_t>(t * hd) * 2);
      gu = device_buffer(static_cast<size_t>(t * 2 * inter) * 2);
      act = device_buffer(static_cast<size_t>(t * inter) * 2);
      tokens_cap = t;
      grew = true;
    }
    if (rows > rows_cap) {
      const int64_t r = std::max<int64_t>(pow2_at_least(rows), 16);
      hn = device_buffer(static_cast<size_t>(r * hd) * 2);
      logits_dev = device_buffer(static_cast<size_t>(r * cfg.vocab_size) * 4);
      rows_cap = r;
      grew = true;
    }
    if (idx_elems > idx_cap) {
      idx_cap = std::max<size_t>(idx_elems * 2, 4096);
      idx = device_buffer(idx_cap * 4);
      idx_host.reserve(idx_cap * 4);
      grew = true;
    }
    if (attn_ws_bytes > attn_ws_cap) {
      attn_ws_cap = attn_ws_bytes * 2;
      attn_ws = device_buffer(attn_ws_cap);
      grew = true;
    }
    if (grew) drop_graphs();
  }

  void enqueue(const step_dims& d, const cuda_kv& kv) {
    cudaStream_t s = stream;
    const int64_t T = d.tokens, hd = cfg.hidden_size, dh = cfg.head_dim;
    const int64_t nq = cfg.n_heads * dh, nkv = cfg.n_kv_heads * dh, inter = cfg.intermediate_size;
    const int64_t W = qkv_width();
    const float eps = cfg.rms_norm_eps;
    const idx_layout L(d);
    const int32_t* ix = idx.as<int32_t>();
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(idx.data(), idx_host.p, L.total * 4, cudaMemcpyHostToDevice, s));
    float* res = resid.as<float>();
    if (first) embedding_f32_cuda(ix + L.ids, T, embed, hd, res, s);
    uint16_t* qkvp = qkv.as<uint16_t>();
    const uint16_t* pending = nullptr;  // sublayer output not yet added to the residual
    for (size_t li = 0; li < layers.size(); ++li) {
      const layer_ptrs& w = layers[li];
      residual_rmsnorm_cuda(pending, res, h.as<uint16_t>(), T, hd, w.in_norm, eps, nullptr, s);
      gemm_bf16(*gemm, h.as<uint16_t>(), T, hd, w.qkv_w, W, w.qkv_b, qkvp, s);
      if (w.q_norm) {
        head_rmsnorm_cuda(qkvp, T, cfg.n_heads, dh, W, w.q_norm, eps, s);
        head_rmsnorm_cuda(qkvp + nq, T, cfg.n_kv_heads, dh, W, w.k_norm, eps, s);
      }
      rope_cuda_args ra;
      ra.q = qkvp;
      ra.n_q_heads = cfg.n_heads;
      ra.q_stride = W;
      ra.k = qkvp + nq;
      ra.n_k_heads = cfg.n_kv_heads;
      ra.k_stride = W;
      ra.n_tokens = T;
      ra.head_dim = dh;
      ra.pos = ix + L.pos;
      ra.inv_freq = inv_freq.as<float>();
      ra.attention_scaling = rope.attention_scaling;
      // One launch: rotated q packed into qbuf, rotated k and v into the pages.
      const paged_kv view = kv.view(static_cast<int64_t>(li));
      ra.q_out = qbuf.as<uint16_t>();
      ra.kv = &view;
      ra.slots = ix + L.slots;
      ra.v = qkvp + nq + nkv;
      ra.v_stride = W;
      rope_apply_cuda(ra, s);
      attention_batch_cuda ab;
      ab.q = qbuf.as<uint16_t>();
      ab.out = attn.as<uint16_t>();
      ab.n_seqs = d.seqs;
      ab.n_heads = cfg.n_heads;
      ab.cu_seqlens_q = ix + L.cu;
      ab.kv_lens = ix + L.kvl;
      ab.q_pos0 = ix + L.q0;
      ab.block_table = ix + L.table;
      ab.block_table_stride = d.stride;
      const int64_t abs_layer = range.first + static_cast<int64_t>(li);
      ab.sliding_window = cfg.sliding_window.empty() ? 0 : cfg.sliding_window[static_cast<size_t>(abs_layer)];
      ab.scale = 1.0f / std::sqrt(static_cast<float>(dh));
      if (dh != 64 && dh != 128) attention_generic_cuda(ab, view, d.max_q_len, s);
      else if (d.decode) attention_decode_cuda(ab, view, d.splits, attn_ws.data(), attn_ws_cap, s);
      else attention_prefill_cuda(ab, view, d.max_q_len, s);
      gemm_bf16(*gemm, attn.as<uint16_t>(), T, nq, w.o_w, hd, w.o_b, oout.as<uint16_t>(), s);
      residual_rmsnorm_cuda(oout.as<uint16_t>(), res, h.as<uint16_t>(), T, hd, w.post_norm, eps, nullptr, s);
      if (T <= gemv_max_m && gemm->path() != gemm_path::gemm_path_cublaslt &&
          gemv_supported(h.data(), T, hd, w.gu_w, 2 * inter)) {
        // Few rows: gate|up GEMV with SwiGLU in its epilogue (no [T][2*inter] round trip).
        gemv_options o;
        o.pdl = true;  // weights are static: the previous kernel never writes them
        gemv_swiglu_bf16(h.as<uint16_t>(), T, hd, w.gu_w, inter, w.gu_b, act.as<uint16_t>(), s, o);
      } else {
        gemm_bf16(*gemm, h.as<uint16_t>(), T, hd, w.gu_w, 2 * inter, w.gu_b, gu.as<uint16_t>(), s);
        swiglu_fused_cuda(gu.as<uint16_t>(), T, inter, act.as<uint16_t>(), s);
      }
      gemm_bf16(*gemm, act.as<uint16_t>(), T, inter, w.down_w, hd, w.down_b, oout.as<uint16_t>(), s);
      pending = oout.as<uint16_t>();
    }
    if (!last) {
      residual_rmsnorm_cuda(pending, res, nullptr, T, hd, nullptr, eps, nullptr, s);
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(out_host.p, res, static_cast<size_t>(T * hd) * 4, cudaMemcpyDeviceToHost, s));
      return;
    }
    if (d.rows == 0) return;
    residual_rmsnorm_cuda(pending, res, hn.as<uint16_t>(), d.rows, hd, final_norm, eps, ix + L.rows, s);
    gemm32->run(hn.as<uint16_t>(), d.rows, hd, lm_head, cfg.vocab_size, logits_dev.as<float>(), s);
    if (host_logits)
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(out_host.p, logits_dev.data(),
                                        static_cast<size_t>(d.rows * cfg.vocab_size) * 4, cudaMemcpyDeviceToHost, s));
  }
};

cuda_model::cuda_model(model_config cfg, layer_range range, int device, const weight_fill& fill)
    : impl_(std::make_unique<impl>()) {
  impl& m = *impl_;
  if (range.first == 0 && range.last == 0) range.last = cfg.n_layers;
  const std::vector<arena_want> plan = weight_arena_plan(cfg, range);
  m.cfg = std::move(cfg);
  m.range = range;
  m.device = device;
  m.first = range.first == 0;
  m.last = range.last == m.cfg.n_layers;
  if (m.cfg.head_dim > 256)
    throw error(errc::errc_unsupported, "cuda model: head_dim " + std::to_string(m.cfg.head_dim) + " > 256");
  TROUPE_CUDA_CHECK(cudaSetDevice(device));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&m.n_sms, cudaDevAttrMultiProcessorCount, device));
  TROUPE_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  m.gemm = std::make_unique<gemm_context>();
  m.gemm->set_pdl(true);  // decode GEMVs load their first weights while the previous kernel drains
  m.gemm32 = std::make_unique<gemm_f32_context>();
  m.gemm32->set_pdl(true);
  m.rope = rope_inv_freq(m.cfg.rope, m.cfg.head_dim, m.cfg.max_position_embeddings);
  m.inv_freq = device_buffer(m.rope.inv_freq.size() * 4);
  m.inv_freq.upload(m.rope.inv_freq.data(), m.rope.inv_freq.size() * 4);

  // Layout: plan order; k/v follow q and up follows gate with no padding
  // (fused GEMM weights and biases); every other tensor starts 256-aligned.
  std::map<std::string, size_t> offset;  // arena name -> byte offset
  std::map<std::string, size_t> by_source;
  size_t at = 0;
  std::vector<std::pair<const arena_want*, size_t>> uploads;
  for (const arena_want& w : plan) {
    if (auto it = by_source.find(w.source); it != by_source.end()) {  // tied lm_head
      offset[w.name] = it->second;
      continue;
    }
    int64_t n = 1;
    for (int64_t d : w.shape) n *= d;
    const bool fused_tail = ends_with(w.name, "k_proj.weight") || ends_with(w.name, "v_proj.weight") ||
                            ends_with(w.name, "k_proj.bias") || ends_with(w.name, "v_proj.bias") ||
                            ends_with(w.name, "up_proj.weight") || ends_with(w.name, "up_proj.bias");
    if (!fused_tail) at = align_up(at);
    offset[w.name] = at;
    by_source[w.source] = at;
    uploads.emplace_back(&w, at);
    at += static_cast<size_t>(n) * 2;
  }
  m.arena = device_buffer(align_up(at));
  std::vector<uint16_t> staging;
  for (const auto& [w, off] : uploads) {
    int64_t n = 1;
    for (int64_t d : w->shape) n *= d;
    staging.assign(static_cast<size_t>(n), 0);
    fill(w->source, std::span<uint16_t>(staging));
    m.arena.upload(staging.data(), staging.size() * 2, off);
  }
  const auto* base = static_cast<const std::byte*>(m.arena.data());
  auto ptr = [&](const std::string& name) -> const uint16_t* {
    auto it = offset.find(name);
    return it == offset.end() ? nullptr : reinterpret_cast<const uint16_t*>(base + it->second);
  };
  if (m.first) m.embed = ptr("model.embed_tokens.weight");
  if (m.last) {
    m.final_norm = ptr("model.norm.weight");
    m.lm_head = ptr("lm_head.weight");
  }
  for (int64_t l = range.first; l < range.last; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    layer_ptrs w;
    w.in_norm = ptr(p + "input_layernorm.weight");
    w.qkv_w = ptr(p + "self_attn.q_proj.weight");
    w.qkv_b = ptr(p + "self_attn.q_proj.bias");
    w.q_norm = ptr(p + "self_attn.q_norm.weight");
    w.k_norm = ptr(p + "self_attn.k_norm.weight");
    w.o_w = ptr(p + "self_attn.o_proj.weight");
    w.o_b = ptr(p + "self_attn.o_proj.bias");
    w.post_norm = ptr(p + "post_attention_layernorm.weight");
    w.gu_w = ptr(p + "mlp.gate_proj.weight");
    w.gu_b = ptr(p + "mlp.gate_proj.bias");
    w.down_w = ptr(p + "mlp.down_proj.weight");
    w.down_b = ptr(p + "mlp.down_proj.bias");
    m.layers.push_back(w);
  }
}

cuda_model::~cuda_model() = default;

std::shared_ptr<cuda_model> cuda_model::load(const std::filesystem::path& dir, layer_range range, int device) {
  model_config cfg = model_config_load(dir);
  const checkpoint ckpt = checkpoint::open(dir);
  if (range.first == 0 && range.last == 0) range.last = cfg.n_layers;
  auto fill = [&](const std::string& name, std::span<uint16_t> dst) {
    const tensor_info& t = ckpt.get(name);
    if (t.numel() != static_cast<int64_t>(dst.size()))
      throw error(errc::errc_invalid_model_file, t.file + ": tensor '" + name + "' has " + std::to_string(t.numel()) +
                                                     " elements but the config implies " + std::to_string(dst.size()));
    if (t.type == dtype::dtype_bf16) {
      std::memcpy(dst.data(), t.data, dst.size() * 2);
      return;
    }
    for (size_t i = 0; i < dst.size(); ++i) {
      float v;
      if (t.type == dtype::dtype_f32) std::memcpy(&v, t.data + i * 4, 4);
      else v = load_f32(t.type, t.data, i);  // f16 (2-byte loads are fine unaligned on x86)
      dst[i] = f32_to_bf16(v);
    }
  };
  return std::make_shared<cuda_model>(std::move(cfg), range, device, fill);
}

const model_config& cuda_model::config() const { return impl_->cfg; }
layer_range cuda_model::range() const { return impl_->range; }
std::string cuda_model::device() const { return "cuda:" + std::to_string(impl_->device); }
size_t cuda_model::weight_bytes() const { return impl_->arena.size(); }
void cuda_model::set_graphs(bool on) { impl_->graphs_on = on; }
size_t cuda_model::graphs_captured() const { return impl_->graphs.size(); }
void cuda_model::set_host_logits(bool on) { impl_->host_logits = on; }
const float* cuda_model::device_logits() const { return impl_->logits_dev.as<float>(); }
void cuda_model::synchronize() { TROUPE_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

std::unique_ptr<engine_kv> cuda_model::kv_make(int64_t page_size, int64_t n_pages) {
  return std::make_unique<cuda_kv>(kv_config(page_size, n_pages), impl_->device);
}

errc cuda_model::forward(std::span<const seq_chunk> batch, engine_kv& kvb, std::vector<float>& logits, stage_io io) {
  impl& m = *impl_;
  auto* kvp = dynamic_cast<cuda_kv*>(&kvb);
  if (kvp == nullptr) return errc::errc_invalid_argument;
  cuda_kv& kv = *kvp;
  kv_cache& pc = kv.pages();
  const model_config& cfg = m.cfg;
  const int64_t hd = cfg.hidden_size;
  // Validate everything before touching the cache (model::forward's rules).
  std::unordered_set<int64_t> seen;
  int64_t total = 0, n_rows = 0, max_q = 0;
  bool decode = !batch.empty();
  for (const seq_chunk& c : batch) {
    if (!seen.insert(c.seq_id).second) return errc::errc_invalid_argument;
    if (m.first)
      for (int32_t t : c.tokens)
        if (t < 0 || t >= cfg.vocab_size) return errc::errc_invalid_argument;
    const int64_t n = static_cast<int64_t>(c.tokens.size());
    if (pc.length(c.seq_id) + n > cfg.max_position_embeddings) return errc::errc_context_overflow;
    total += n;
    max_q = std::max(max_q, n);
    if (n != 1) decode = false;
    if (c.logits == logits_mode::logits_all) n_rows += n;
    if (c.logits == logits_mode::logits_last && n > 0) n_rows += 1;
  }
  if (!m.first && io.hidden_in == nullptr) return errc::errc_invalid_argument;
  std::vector<int64_t> old_len;
  std::vector<bool> existed;
  auto rollback = [&](size_t n) {
    for (size_t i = 0; i < n; ++i) {
      if (existed[i]) (void)pc.truncate(batch[i].seq_id, old_len[i]);
      else pc.free(batch[i].seq_id);
    }
  };
  for (const seq_chunk& c : batch) {
    old_len.push_back(pc.length(c.seq_id));
    existed.push_back(pc.contains(c.seq_id));
    if (errc e = pc.append(c.seq_id, static_cast<int64_t>(c.tokens.size())); e != errc::ok) {
      rollback(old_len.size() - 1);
      return e;
    }
  }
  if (total == 0) {
    logits.clear();
    return errc::ok;
  }
  try {
    TROUPE_CUDA_CHECK(cudaSetDevice(m.device));
    const int64_t B = static_cast<int64_t>(batch.size());
    const int64_t ps = pc.config().page_size;
    int64_t max_pages = 1, max_kv = 1;
    for (const seq_chunk& c : batch) {
      max_pages = std::max<int64_t>(max_pages, static_cast<int64_t>(pc.pages(c.seq_id).size()));
      max_kv = std::max(max_kv, pc.length(c.seq_id));
    }
    const bool graph = m.graphs_on && decode && m.first && m.last && B <= 256 && n_rows == B;
    step_dims d;
    d.decode = decode;
    d.seqs = graph ? pow2_at_least(B) : B;
    d.tokens = graph ? d.seqs : total;
    d.rows = graph ? d.seqs : n_rows;
    d.stride = graph ? pow2_at_least(max_pages) : max_pages;
    d.max_q_len = max_q;
    d.max_kv_len = graph ? d.stride * ps : max_kv;
    if (decode) d.splits = attention_decode_splits(d.seqs, cfg.n_kv_heads, d.max_kv_len, m.n_sms);
    const idx_layout L(d);
    const size_t ws = decode ? attention_decode_workspace_bytes(d.seqs, cfg.n_heads, cfg.head_dim, d.splits) : 0;
    m.ensure(d.tokens, d.rows, L.total, ws);
    const size_t out_bytes = m.last ? static_cast<size_t>(d.rows * cfg.vocab_size) * 4
                                    : static_cast<size_t>(d.tokens * hd) * 4;
    if (out_bytes > m.out_host.bytes) {
      m.drop_graphs();  // captured copies target the old buffer
      m.out_host.reserve(out_bytes * (graph ? 1 : 2));
    }
    // Pack the index arrays.
    auto* ix = static_cast<int32_t*>(m.idx_host.p);
    std::fill(ix, ix + L.total, 0);
    int64_t t = 0, row = 0;
    for (int64_t i = 0; i < B; ++i) {
      const seq_chunk& c = batch[static_cast<size_t>(i)];
      const int64_t n = static_cast<int64_t>(c.tokens.size()), p0 = old_len[static_cast<size_t>(i)];
      const std::span<const int32_t> pt = pc.pages(c.seq_id);
      ix[L.cu + i] = static_cast<int32_t>(t);
      ix[L.q0 + i] = static_cast<int32_t>(p0);
      ix[L.kvl + i] = static_cast<int32_t>(p0 + n);
      std::copy(pt.begin(), pt.end(), ix + L.table + i * d.stride);
      for (int64_t j = 0; j < n; ++j, ++t) {
        const int64_t pos = p0 + j;
        ix[L.ids + t] = m.first ? c.tokens[static_cast<size_t>(j)] : 0;
        ix[L.pos + t] = static_cast<int32_t>(pos);
        ix[L.slots + t] = static_cast<int32_t>(pt[static_cast<size_t>(pos / ps)] * ps + pos % ps);
        if (c.logits == logits_mode::logits_all || (c.logits == logits_mode::logits_last && j == n - 1))
          ix[L.rows + row++] = static_cast<int32_t>(t);
      }
    }
    for (int64_t i = B; i < d.seqs; ++i) {  // graph padding: empty sequences, skipped slots
      ix[L.cu + i] = static_cast<int32_t>(t);
      ix[L.slots + t] = -1;
      ix[L.rows + row++] = static_cast<int32_t>(t);
      ++t;
    }
    ix[L.cu + d.seqs] = static_cast<int32_t>(t);
    if (!m.first)
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(m.resid.data(), io.hidden_in, static_cast<size_t>(total * hd) * 4,
                                        cudaMemcpyHostToDevice, m.stream));
    if (graph) {
      const auto key = std::make_pair(d.seqs, m.host_logits ? d.stride : -d.stride);  // with / without the logits download
      auto it = m.graphs.find(key);
      if (it == m.graphs.end()) {
        m.enqueue(d, kv);  // eager first: picks and caches every GEMM algorithm outside the capture
        TROUPE_CUDA_CHECK(cudaStreamSynchronize(m.stream));
        cudaGraph_t g = nullptr;
        TROUPE_CUDA_CHECK(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal));
        try {
          m.enqueue(d, kv);
        } catch (...) {
          cudaStreamEndCapture(m.stream, &g);
          if (g) cudaGraphDestroy(g);
          throw;
        }
        TROUPE_CUDA_CHECK(cudaStreamEndCapture(m.stream, &g));
        cudaGraphExec_t exec = nullptr;
        const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
        cudaGraphDestroy(g);
        TROUPE_CUDA_CHECK(e);
        m.graphs.emplace(key, exec);
        // The eager run above already did this step's work (appending K/V is
        // idempotent, so the capture changed nothing); no replay needed.
      } else {
        TROUPE_CUDA_CHECK(cudaGraphLaunch(it->second, m.stream));
      }
    } else {
      m.enqueue(d, kv);
    }
    if (m.on_logits && m.last && n_rows > 0) m.on_logits(m.stream, n_rows);  // device sampling (forward_sample)
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    if (!m.last) {
      logits.clear();
      if (io.hidden_out != nullptr) {
        io.hidden_out->resize(static_cast<size_t>(total * hd));
        std::memcpy(io.hidden_out->data(), m.out_host.p, static_cast<size_t>(total * hd) * 4);
      }
      return errc::ok;
    }
    if (m.on_logits) {  // sampled on the device: no host logits
      logits.clear();
      return errc::ok;
    }
    logits.resize(static_cast<size_t>(n_rows * cfg.vocab_size));
    if (m.host_logits && n_rows > 0)
      std::memcpy(logits.data(), m.out_host.p, static_cast<size_t>(n_rows * cfg.vocab_size) * 4);
    return errc::ok;
  } catch (...) {
    rollback(batch.size());
    throw;
  }
}

// GPU sampling: the step runs as forward() does, without the logits download;
// the sampler is enqueued right after the logits GEMM (forward's on_logits
// hook) and only token ids and the asked logprobs come back with the wait
// forward already does.
errc cuda_model::forward_sample(std::span<const seq_chunk> batch, engine_kv& kv, std::span<const sample_request> rows,
                                std::vector<sample_outcome>& out) {
  impl& m = *impl_;
  if (errc e = sample_rows_check(batch, rows); e != errc::ok) return e;
  if (rows.empty()) {
    out.clear();
    return forward(batch, kv, m.no_logits);
  }
  m.sample_rows.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::span<const sample_token_stat> h = rows[i].sampler->history();
    m.sample_rows[i] = {rows[i].sampler->device_params(rows[i].logprobs), h.data(), h.size()};
  }
  if (!m.sampling) m.sampling = std::make_unique<sample_context>();
  bool enqueued = false;
  const bool host_logits = m.host_logits;
  struct restore {
    impl& m;
    bool host_logits;
    ~restore() {
      m.host_logits = host_logits;
      m.on_logits = nullptr;
    }
  } guard{m, host_logits};
  m.host_logits = false;
  m.on_logits = [&](cudaStream_t s, int64_t n_rows) {
    if (static_cast<size_t>(n_rows) != m.sample_rows.size())
      throw error(errc::errc_invalid_argument, "cuda model: " + std::to_string(n_rows) + " logits rows for " +
                                                   std::to_string(m.sample_rows.size()) + " sampled rows");
    m.sampling->enqueue(m.logits_dev.as<float>(), m.cfg.vocab_size, m.sample_rows.data(), m.sample_rows.size(), s);
    enqueued = true;
  };
  if (errc e = forward(batch, kv, m.no_logits); e != errc::ok) return e;
  if (!enqueued) throw error(errc::errc_cuda, "cuda model: the step produced no logits to sample");
  out.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const sample_row_result r = m.sampling->result(i);
    sample_outcome& o = out[i];
    o.token = r.token;
    o.logprob = rows[i].logprobs >= 0 ? r.logprob : 0.0f;
    o.top.clear();
    for (int k = 0; k < std::min<int>(r.n_top, std::max<int32_t>(rows[i].logprobs, 0)); ++k)
      o.top.emplace_back(r.top_ids[k], r.top_logprobs[k]);
    rows[i].sampler->accept(r.token);
  }
  return errc::ok;
}

}  // namespace troupe
