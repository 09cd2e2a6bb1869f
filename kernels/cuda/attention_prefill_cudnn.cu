// Prefill attention through cuDNN's fused scaled-dot-product attention (the
// engine PyTorch SDPA picks on Hopper), with troupe's own mma.sync kernel as
// the fallback. Why it is built this way:
// - cuDNN is loaded at run time (dlopen of libcudnn.so.9): troupe builds and
//   runs where cuDNN is absent; only cudnn_graph.h's types are used at build
//   time, and without that header this file compiles to "unavailable".
// - The 9.x backend API has no single causal-SDPA operation, so the graph is
//   the composite the cuDNN frontend builds for it (its CompositeSDPANode):
//   paged K/V loads, Q*K^T, scale, padding mask, bottom-right causal mask,
//   optional sliding-window mask, softmax (max, sub, exp, sum, div) and P*V,
//   in that order and with those data types, since cuDNN's fused engines
//   recognise the graph by its pattern.
// - Ragged batches: Q and O are [total_q][heads][d] with ragged offsets
//   (cu_seqlens * heads * d). The causal diagonal is aligned bottom-right on
//   per-sequence lengths: seq_len_kv is set to q_pos0 + q_len (keys past the
//   chunk's last query are invisible anyway), so query t sees keys
//   0..q_pos0+t exactly as the own kernel does. A small prep kernel derives
//   these per-sequence lengths and offsets on the device (no host sync).
// - K/V: by default a copy kernel gathers each sequence's visible rows into
//   one contiguous ragged buffer per device (counted in the time; ~0.5% at
//   32K) and the graph reads that, because cuDNN's paged-cache-load graph
//   (also built here, on a [pages][kv heads][page size][d] view with the
//   pool's strides) ran ~10% slower at 16-token pages. The paged graph is
//   used when the gather buffer would pass 1 GiB or the gathered graph is
//   declined; if both are declined, the own kernel runs.
// - Plans are built once per shape (batch size, heads, max query length
//   rounded up to a power of two, block-table width, page geometry, window
//   on/off) and cached; building takes milliseconds to seconds, executing
//   tens of microseconds of host time.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "config/errors.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda/check.cuh"

#if __has_include(<cudnn_graph.h>) && __has_include(<dlfcn.h>)
#define TROUPE_CUDNN_HEADERS 1
#include <cudnn_graph.h>
#include <dlfcn.h>
#endif

namespace troupe {

#ifndef TROUPE_CUDNN_HEADERS

void attention_prefill_cudnn_variant(int) {}

bool attention_prefill_cudnn_available(std::string* why) {
  if (why) *why = "built without cudnn_graph.h";
  return false;
}

bool attention_prefill_cudnn_run(const attention_batch_cuda&, const paged_kv&, int64_t, cuda_stream, std::string* why,
                                 int* path) {
  if (why) *why = "built without cudnn_graph.h";
  if (path) *path = 0;
  return false;
}

#else

namespace {

// ---- run-time loading ----

struct cudnn_api {
  void* lib = nullptr;
  std::string why;
  size_t version = 0;
  size_t (*get_version)() = nullptr;
  cudnnStatus_t (*create)(cudnnHandle_t*) = nullptr;
  cudnnStatus_t (*set_stream)(cudnnHandle_t, cudaStream_t) = nullptr;
  const char* (*error_string)(cudnnStatus_t) = nullptr;
  void (*last_error)(char*, size_t) = nullptr;
  cudnnStatus_t (*create_desc)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t*) = nullptr;
  cudnnStatus_t (*destroy_desc)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*finalize)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*set_attr)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t,
                            int64_t, const void*) = nullptr;
  cudnnStatus_t (*get_attr)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t, cudnnBackendAttributeType_t,
                            int64_t, int64_t*, void*) = nullptr;
  cudnnStatus_t (*execute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t) = nullptr;
};

template <class F>
bool bind(cudnn_api& a, F& f, const char* name) {
  f = reinterpret_cast<F>(dlsym(a.lib, name));
  if (!f) a.why = std::string("libcudnn lacks ") + name;
  return f != nullptr;
}

cudnn_api load_cudnn() {
  cudnn_api a;
  for (const char* name : {"libcudnn.so.9", "libcudnn.so"}) {
    a.lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (a.lib) break;
  }
  if (!a.lib) {
    const char* e = dlerror();
    a.why = std::string("dlopen(libcudnn.so.9) failed: ") + (e ? e : "?");
    return a;
  }
  const bool ok = bind(a, a.get_version, "cudnnGetVersion") && bind(a, a.create, "cudnnCreate") &&
                  bind(a, a.set_stream, "cudnnSetStream") && bind(a, a.error_string, "cudnnGetErrorString") &&
                  bind(a, a.create_desc, "cudnnBackendCreateDescriptor") &&
                  bind(a, a.destroy_desc, "cudnnBackendDestroyDescriptor") &&
                  bind(a, a.finalize, "cudnnBackendFinalize") && bind(a, a.set_attr, "cudnnBackendSetAttribute") &&
                  bind(a, a.get_attr, "cudnnBackendGetAttribute") && bind(a, a.execute, "cudnnBackendExecute");
  if (!ok) {
    a.lib = nullptr;
    return a;
  }
  a.last_error = reinterpret_cast<void (*)(char*, size_t)>(dlsym(a.lib, "cudnnGetLastErrorString"));
  a.version = a.get_version();
  if (a.version < 90500) {
    a.why = "cuDNN " + std::to_string(a.version) + " is older than 9.5 (paged attention)";
    a.lib = nullptr;
  }
  return a;
}

const cudnn_api& api() {
  static const cudnn_api a = load_cudnn();
  return a;
}

// ---- device helpers ----

// Per-sequence lengths and element offsets for the graph; one thread does the
// prefix sum of the key lengths (batches are small).
__global__ void cudnn_prep_kernel(const int32_t* cu, const int32_t* q_pos0, int n, int64_t q_row, int64_t kv_row,
                                  int32_t* seq_q, int32_t* seq_kv, int32_t* rag_q, int32_t* rag_kv) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int64_t kv_acc = 0;
  for (int i = 0; i < n; ++i) {
    const int32_t lq = cu[i + 1] - cu[i];
    const int32_t lk = q_pos0[i] + lq;
    seq_q[i] = lq;
    seq_kv[i] = lk;
    rag_q[i] = static_cast<int32_t>(static_cast<int64_t>(cu[i]) * q_row);
    rag_kv[i] = static_cast<int32_t>(kv_acc * kv_row);
    kv_acc += lk;
  }
  rag_q[n] = static_cast<int32_t>(static_cast<int64_t>(cu[n]) * q_row);
  rag_kv[n] = static_cast<int32_t>(kv_acc * kv_row);
}

// Copies each sequence's visible K and V rows (seq_kv[i] of them) from the
// pages into contiguous [total][kv heads][d] buffers at rag_kv[i]; 16 bytes a thread.
__global__ void cudnn_gather_kernel(const unsigned char* kv_base, size_t page_stride, size_t k_offset,
                                    size_t v_offset, int page_size, const int32_t* block_table, int64_t bt_stride,
                                    const int32_t* seq_kv, const int32_t* rag_kv, int64_t row_elems, uint16_t* k_out,
                                    uint16_t* v_out) {
  const int seq = blockIdx.y;
  const int len = seq_kv[seq];
  const int chunks = static_cast<int>(row_elems / 8);
  const int64_t total = static_cast<int64_t>(len) * chunks;
  const int32_t* bt = block_table + seq * bt_stride;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int pos = static_cast<int>(i / chunks);
    const int c = static_cast<int>(i % chunks);
    const int page = pos / page_size;
    const int slot = pos - page * page_size;
    const unsigned char* row = kv_base + static_cast<size_t>(bt[page]) * page_stride +
                               static_cast<size_t>(slot) * static_cast<size_t>(row_elems) * 2 + static_cast<size_t>(c) * 16;
    const int64_t dst = rag_kv[seq] + static_cast<int64_t>(pos) * row_elems + c * 8;
    *reinterpret_cast<uint4*>(k_out + dst) = *reinterpret_cast<const uint4*>(row + k_offset);
    *reinterpret_cast<uint4*>(v_out + dst) = *reinterpret_cast<const uint4*>(row + v_offset);
  }
}

// ---- graph building ----

enum : int64_t {
  uid_q = 1,
  uid_k,
  uid_v,
  uid_o,
  uid_scale,
  uid_seq_q,
  uid_seq_kv,
  uid_pt_k,
  uid_pt_v,
  uid_rag_q,
  uid_rag_o,
  uid_rag_k,
  uid_rag_v,
  uid_neg_inf0,
  uid_neg_inf1,
  uid_neg_inf2,
  uid_window,
  uid_first_virtual = 100,
};

struct shape_key {
  int device;
  int64_t n_seqs, n_heads, n_kv, d, s_q, n_pages, page_size, page_stride_elems;
  bool window;
  int variant;  // 1 paged + ragged, 2 gathered + ragged, 3 gathered + dense (one sequence)
  bool operator<(const shape_key& o) const {
    return std::tie(device, n_seqs, n_heads, n_kv, d, s_q, n_pages, page_size, page_stride_elems, window, variant) <
           std::tie(o.device, o.n_seqs, o.n_heads, o.n_kv, o.d, o.s_q, o.n_pages, o.page_size, o.page_stride_elems,
                    o.window, o.variant);
  }
};

struct graph_builder {
  const cudnn_api& c;
  std::vector<cudnnBackendDescriptor_t>& owned;
  std::string why;
  int64_t next_uid = uid_first_virtual;

  bool ok() const { return why.empty(); }

  void fail(cudnnStatus_t s, const char* what) {
    if (!why.empty()) return;
    char msg[512] = {0};
    if (c.last_error) c.last_error(msg, sizeof msg);
    why = std::string(what) + ": " + c.error_string(s) + (msg[0] ? std::string(" (") + msg + ")" : std::string());
  }
  cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t t, const char* what) {
    cudnnBackendDescriptor_t d = nullptr;
    if (!ok()) return nullptr;
    const cudnnStatus_t s = c.create_desc(t, &d);
    if (s != CUDNN_STATUS_SUCCESS) fail(s, what);
    if (d) owned.push_back(d);
    return d;
  }
  void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t n, cudnnBackendAttributeType_t t, int64_t count,
           const void* v, const char* what) {
    if (!ok()) return;
    const cudnnStatus_t s = c.set_attr(d, n, t, count, v);
    if (s != CUDNN_STATUS_SUCCESS) fail(s, what);
  }
  void link(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t n, cudnnBackendDescriptor_t v, const char* what) {
    set(d, n, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v, what);
  }
  void finalize(cudnnBackendDescriptor_t d, const char* what) {
    if (!ok()) return;
    const cudnnStatus_t s = c.finalize(d);
    if (s != CUDNN_STATUS_SUCCESS) fail(s, what);
  }

  using v4 = std::vector<int64_t>;
  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, const v4& dims, const v4& strides, bool virt,
                                  bool by_value = false, cudnnBackendDescriptor_t ragged = nullptr) {
    cudnnBackendDescriptor_t d = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
    const int64_t align = 16;
    set(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
    set(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "tensor type");
    set(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, static_cast<int64_t>(dims.size()), dims.data(), "tensor dims");
    set(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, static_cast<int64_t>(strides.size()), strides.data(),
        "tensor strides");
    set(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
    set(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, "tensor virtual");
    if (by_value) set(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, "tensor by value");
    if (ragged) link(d, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, ragged, "tensor ragged offsets");
    finalize(d, "tensor finalize");
    return d;
  }
  cudnnBackendDescriptor_t virt(cudnnDataType_t type, const v4& dims, const v4& strides) {
    return tensor(next_uid++, type, dims, strides, true);
  }
  cudnnBackendDescriptor_t scalar(int64_t uid, cudnnDataType_t type) {
    return tensor(uid, type, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  }

  // y = mode(x[, b[, t]]); axis < 0 leaves the attribute unset.
  cudnnBackendDescriptor_t pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t prec, cudnnBackendDescriptor_t x,
                                     cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y,
                                     int64_t axis = -1) {
    cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise desc");
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
    if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    finalize(pw, "pointwise desc finalize");
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
    link(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw, "pointwise op desc");
    link(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x, "pointwise x");
    if (b) link(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b, "pointwise b");
    if (t) link(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t, "pointwise t");
    link(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y, "pointwise y");
    finalize(op, "pointwise op finalize");
    ops.push_back(op);
    return y;
  }
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t out,
              cudnnBackendDescriptor_t m_over, cudnnBackendDescriptor_t n_over, cudnnBackendDescriptor_t k_over,
              bool padded) {
    cudnnBackendDescriptor_t md = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul desc");
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    set(md, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "matmul comp type");
    if (padded) {
      const double zero = 0.0;
      set(md, CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, &zero, "matmul padding");
    }
    finalize(md, "matmul desc finalize");
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul op");
    link(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a, "matmul a");
    link(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b, "matmul b");
    link(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, out, "matmul c");
    link(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, md, "matmul desc link");
    if (m_over) link(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, m_over, "matmul m override");
    if (n_over) link(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, n_over, "matmul n override");
    if (k_over) link(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, k_over, "matmul k override");
    finalize(op, "matmul op finalize");
    ops.push_back(op);
  }
  void reduction(cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t rd = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction desc");
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    set(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, "reduction mode");
    set(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "reduction comp type");
    finalize(rd, "reduction desc finalize");
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction op");
    link(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x, "reduction x");
    link(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y, "reduction y");
    link(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd, "reduction desc link");
    finalize(op, "reduction op finalize");
    ops.push_back(op);
  }
  void paged_load(cudnnBackendDescriptor_t container, cudnnBackendDescriptor_t table, cudnnBackendDescriptor_t seq,
                  cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_PAGED_CACHE_LOAD_DESCRIPTOR, "paged load op");
    link(op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_CONTAINER_DESC, container, "paged load container");
    link(op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_PAGE_TABLE_DESC, table, "paged load table");
    link(op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_SEQUENCE_DESC, seq, "paged load seq");
    link(op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_YDESC, y, "paged load y");
    finalize(op, "paged load finalize");
    ops.push_back(op);
  }

  std::vector<cudnnBackendDescriptor_t> ops;
};

// A cached plan (or the reason there is none) for one shape.
struct plan_entry {
  bool ok = false;
  bool gathered = false;  // K/V gathered to contiguous buffers first
  std::string why;
  cudnnHandle_t handle = nullptr;
  cudnnBackendDescriptor_t plan = nullptr;
  std::vector<cudnnBackendDescriptor_t> owned;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  int32_t* scratch = nullptr;  // seq_q[n], seq_kv[n], rag_q[n+1], rag_kv[n+1]
  // Values passed by value at execution.
  float scale = 1.0f, neg_inf = -INFINITY;
  int32_t window = 0;
};

// Builds the composite SDPA graph and its first plan that finalizes.
void build_plan(const cudnn_api& c, cudnnHandle_t handle, const shape_key& k, plan_entry& e) {
  graph_builder g{c, e.owned, {}};
  const bool gathered = k.variant >= 2, ragged = k.variant != 3;
  const int64_t B = k.n_seqs, H = k.n_heads, HK = k.n_kv, D = k.d, SQ = k.s_q, NP = k.n_pages, PS = k.page_size;
  const int64_t SKV = NP * PS;
  const cudnnDataType_t bf16 = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT, i32 = CUDNN_DATA_INT32,
                        boolean = CUDNN_DATA_BOOLEAN;
  const graph_builder::v4 score_dims{B, H, SQ, SKV}, score_strides{H * SQ * SKV, SQ * SKV, SKV, 1};
  const graph_builder::v4 row_dims{B, H, SQ, 1}, row_strides{H * SQ, SQ, 1, 1};

  auto offsets = [&](int64_t uid) { return g.tensor(uid, i32, {B + 1, 1, 1, 1}, {1, 1, 1, 1}, false); };
  auto lens = [&](int64_t uid) { return g.tensor(uid, i32, {B, 1, 1, 1}, {1, 1, 1, 1}, false); };
  cudnnBackendDescriptor_t rag_q = ragged ? offsets(uid_rag_q) : nullptr, rag_o = ragged ? offsets(uid_rag_o) : nullptr;
  cudnnBackendDescriptor_t seq_q = lens(uid_seq_q), seq_kv = lens(uid_seq_kv);
  cudnnBackendDescriptor_t q = g.tensor(uid_q, bf16, {B, H, SQ, D}, {SQ * H * D, D, H * D, 1}, false, false, rag_q);
  cudnnBackendDescriptor_t o = g.tensor(uid_o, bf16, {B, H, SQ, D}, {SQ * H * D, D, H * D, 1}, false, false, rag_o);

  cudnnBackendDescriptor_t kt = nullptr, v = nullptr, vc = nullptr, pt_v = nullptr;
  if (!gathered) {
    // Containers: [pages][kv heads][page size][d] with the pool's strides.
    const int64_t n_blocks = int64_t{1} << 20;
    const graph_builder::v4 cdims{n_blocks, HK, PS, D}, cstrides{k.page_stride_elems, D, HK * D, 1};
    cudnnBackendDescriptor_t kc = g.tensor(uid_k, bf16, cdims, cstrides, false);
    vc = g.tensor(uid_v, bf16, cdims, cstrides, false);
    cudnnBackendDescriptor_t pt_k = g.tensor(uid_pt_k, i32, {B, 1, NP, 1}, {NP, NP, 1, 1}, false);
    pt_v = g.tensor(uid_pt_v, i32, {B, 1, NP, 1}, {NP, NP, 1, 1}, false);
    kt = g.virt(bf16, {B, HK, D, SKV}, {D * SKV * HK, D * SKV, 1, D});
    g.paged_load(kc, pt_k, seq_kv, kt);
    v = g.virt(bf16, {B, HK, SKV, D}, {D * SKV * HK, D * SKV, D, 1});
  } else {
    cudnnBackendDescriptor_t rag_k = ragged ? offsets(uid_rag_k) : nullptr, rag_v = ragged ? offsets(uid_rag_v) : nullptr;
    kt = g.tensor(uid_k, bf16, {B, HK, D, SKV}, {SKV * HK * D, D, 1, HK * D}, false, false, rag_k);
    v = g.tensor(uid_v, bf16, {B, HK, SKV, D}, {SKV * HK * D, D, HK * D, 1}, false, false, rag_v);
  }
  // S = Q * K^T
  cudnnBackendDescriptor_t s = g.virt(f32, score_dims, score_strides);
  g.matmul(q, kt, s, seq_q, seq_kv, nullptr, true);

  // Scale.
  cudnnBackendDescriptor_t scale = g.scalar(uid_scale, f32);
  s = g.pointwise(CUDNN_POINTWISE_MUL, f32, s, scale, nullptr, g.virt(f32, score_dims, score_strides));

  // Padding mask: row < seq_q && col < seq_kv.
  {
    cudnnBackendDescriptor_t r = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, s, nullptr, nullptr,
                                             g.virt(i32, score_dims, score_strides), 2);
    cudnnBackendDescriptor_t cl = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, i32, s, nullptr, nullptr,
                                              g.virt(i32, score_dims, score_strides), 3);
    cudnnBackendDescriptor_t rm = g.pointwise(CUDNN_POINTWISE_CMP_LT, boolean, r, seq_q, nullptr,
                                              g.virt(boolean, score_dims, score_strides));
    cudnnBackendDescriptor_t cm = g.pointwise(CUDNN_POINTWISE_CMP_LT, boolean, cl, seq_kv, nullptr,
                                              g.virt(boolean, score_dims, score_strides));
    cudnnBackendDescriptor_t m = g.pointwise(CUDNN_POINTWISE_LOGICAL_AND, boolean, rm, cm, nullptr,
                                             g.virt(boolean, score_dims, score_strides));
    s = g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, f32, s, g.scalar(uid_neg_inf0, f32), m,
                    g.virt(f32, score_dims, score_strides));
  }
  // Causal, bottom-right: row + seq_kv - seq_q >= col.
  {
    cudnnBackendDescriptor_t r = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, f32, s, nullptr, nullptr,
                                             g.virt(i32, score_dims, score_strides), 2);
    cudnnBackendDescriptor_t cl = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, f32, s, nullptr, nullptr,
                                              g.virt(i32, score_dims, score_strides), 3);
    r = g.pointwise(CUDNN_POINTWISE_ADD, i32, r, seq_kv, nullptr, g.virt(i32, score_dims, score_strides), 3);
    r = g.pointwise(CUDNN_POINTWISE_SUB, i32, r, seq_q, nullptr, g.virt(i32, score_dims, score_strides), 3);
    cudnnBackendDescriptor_t m = g.pointwise(CUDNN_POINTWISE_CMP_GE, boolean, r, cl, nullptr,
                                             g.virt(boolean, score_dims, score_strides));
    s = g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, f32, s, g.scalar(uid_neg_inf1, f32), m,
                    g.virt(f32, score_dims, score_strides));
  }
  // Sliding window: col + window - seq_kv + seq_q > row.
  if (k.window) {
    cudnnBackendDescriptor_t r = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, f32, s, nullptr, nullptr,
                                             g.virt(i32, score_dims, score_strides), 2);
    cudnnBackendDescriptor_t cl = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, f32, s, nullptr, nullptr,
                                              g.virt(i32, score_dims, score_strides), 3);
    cl = g.pointwise(CUDNN_POINTWISE_ADD, i32, cl, g.scalar(uid_window, i32), nullptr,
                     g.virt(i32, score_dims, score_strides), 3);
    cl = g.pointwise(CUDNN_POINTWISE_SUB, i32, cl, seq_kv, nullptr, g.virt(i32, score_dims, score_strides), 3);
    cl = g.pointwise(CUDNN_POINTWISE_ADD, i32, cl, seq_q, nullptr, g.virt(i32, score_dims, score_strides), 3);
    cudnnBackendDescriptor_t m = g.pointwise(CUDNN_POINTWISE_CMP_GT, boolean, cl, r, nullptr,
                                             g.virt(boolean, score_dims, score_strides));
    s = g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, f32, s, g.scalar(uid_neg_inf2, f32), m,
                    g.virt(f32, score_dims, score_strides));
  }
  // Softmax (max, sub, exp, sum, log + add into an unused stats tensor, div).
  cudnnBackendDescriptor_t mx = g.virt(f32, row_dims, row_strides);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, s, mx);
  cudnnBackendDescriptor_t z = g.pointwise(CUDNN_POINTWISE_SUB, f32, s, mx, nullptr, g.virt(f32, score_dims, score_strides));
  cudnnBackendDescriptor_t ex = g.pointwise(CUDNN_POINTWISE_EXP, f32, z, nullptr, nullptr, g.virt(f32, score_dims, score_strides));
  cudnnBackendDescriptor_t sum = g.virt(f32, row_dims, row_strides);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, ex, sum);
  cudnnBackendDescriptor_t lg = g.pointwise(CUDNN_POINTWISE_LOG, f32, sum, nullptr, nullptr, g.virt(f32, row_dims, row_strides));
  g.pointwise(CUDNN_POINTWISE_ADD, f32, mx, lg, nullptr, g.virt(f32, row_dims, row_strides));
  cudnnBackendDescriptor_t p = g.pointwise(CUDNN_POINTWISE_DIV, f32, ex, sum, nullptr, g.virt(bf16, score_dims, score_strides));
  // O = P * V (V's paged load issued here, as the frontend orders it)
  if (!gathered) g.paged_load(vc, pt_v, seq_kv, v);
  g.matmul(p, v, o, seq_q, nullptr, seq_kv, false);

  cudnnBackendDescriptor_t graph = g.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
  g.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(g.ops.size()),
        g.ops.data(), "graph ops");
  g.set(graph, static_cast<cudnnBackendAttributeName_t>(800) /* OPERATIONGRAPH_HANDLE */, CUDNN_TYPE_HANDLE, 1, &handle,
        "graph handle");
  g.finalize(graph, "operation graph finalize");
  cudnnBackendDescriptor_t heur = g.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
  const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  g.link(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics graph");
  g.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
  g.finalize(heur, "heuristics finalize");
  int64_t n_cfg = 0;
  if (g.ok()) {
    const cudnnStatus_t st = c.get_attr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n_cfg,
                                        nullptr);
    if (st != CUDNN_STATUS_SUCCESS) g.fail(st, "heuristics count");
  }
  std::vector<cudnnBackendDescriptor_t> cfgs;
  for (int64_t i = 0; i < n_cfg && g.ok(); ++i) cfgs.push_back(g.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine cfg"));
  if (g.ok() && n_cfg > 0) {
    const cudnnStatus_t st = c.get_attr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_cfg,
                                        &n_cfg, cfgs.data());
    if (st != CUDNN_STATUS_SUCCESS) g.fail(st, "heuristics results");
  }
  if (!g.ok()) {
    e.why = g.why;
    return;
  }
  std::string last = "no engine config offered";
  for (int64_t i = 0; i < n_cfg; ++i) {
    cudnnBackendDescriptor_t plan = nullptr;
    if (c.create_desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) != CUDNN_STATUS_SUCCESS) continue;
    c.set_attr(plan, static_cast<cudnnBackendAttributeName_t>(400) /* EXECUTION_PLAN_HANDLE */, CUDNN_TYPE_HANDLE, 1,
               &handle);
    c.set_attr(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
    const cudnnStatus_t st = c.finalize(plan);
    if (st == CUDNN_STATUS_SUCCESS) {
      e.owned.push_back(plan);
      e.plan = plan;
      int64_t n = 0;
      c.get_attr(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &e.workspace_bytes);
      e.ok = true;
      return;
    }
    char msg[512] = {0};
    if (c.last_error) c.last_error(msg, sizeof msg);
    last = "engine config " + std::to_string(i) + ": " + c.error_string(st) + " " + msg;
    c.destroy_desc(plan);
  }
  e.why = "no execution plan finalized (" + std::to_string(n_cfg) + " configs; " + last + ")";
}

struct cudnn_state {
  std::mutex mu;
  std::map<int, cudnnHandle_t> handles;
  std::map<shape_key, std::unique_ptr<plan_entry>> plans;
  std::map<int, std::pair<uint16_t*, size_t>> gather;  // per device: K then V, elements each
};

cudnn_state& state() {
  static cudnn_state* s = new cudnn_state;  // lives to process exit (plans hold device memory)
  return *s;
}

std::atomic<int>& forced_variant() {
  static std::atomic<int> v{0};
  return v;
}

// Variants tried in this order until one builds a plan. Measured on an H100
// (cuDNN 9.19, 32/8 heads, d 128, one sequence): gathered 559 / 578 TFLOP/s
// at 8K / 32K, paged 504 / 518, dense 554 / 575; so K/V are gathered first
// unless the gather buffer would pass 1 GiB.
std::vector<int> default_order(size_t gather_bytes) {
  if (gather_bytes <= (size_t{1} << 30)) return {2, 1};
  return {1, 2};
}

int64_t pow2_at_least(int64_t x, int64_t lo) {
  int64_t p = lo;
  while (p < x) p <<= 1;
  return p;
}

}  // namespace

void attention_prefill_cudnn_variant(int variant) { forced_variant().store(variant); }

bool attention_prefill_cudnn_available(std::string* why) {
  const cudnn_api& a = api();
  if (why) *why = a.lib ? "cuDNN " + std::to_string(a.version) : a.why;
  return a.lib != nullptr;
}

bool attention_prefill_cudnn_run(const attention_batch_cuda& b, const paged_kv& kv, int64_t max_q_len, cuda_stream s,
                                 std::string* why, int* path) {
  if (path) *path = 0;
  const cudnn_api& c = api();
  if (!c.lib) {
    if (why) *why = c.why;
    return false;
  }
  const int64_t q_row = b.n_heads * kv.head_dim, kv_row = kv.n_kv_heads * kv.head_dim;
  const int64_t max_kv = b.block_table_stride * kv.page_size;
  if (static_cast<double>(b.n_seqs) * static_cast<double>(max_q_len) * static_cast<double>(q_row) > 2.1e9 ||
      static_cast<double>(b.n_seqs) * static_cast<double>(max_kv) * static_cast<double>(kv_row) > 2.1e9 ||
      kv.page_stride % 2 != 0) {
    if (why) *why = "sizes past 32-bit element offsets";
    return false;
  }
  int device = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&device));
  const int forced = forced_variant().load();
  std::vector<int> order;
  if (forced != 0) order = {forced};
  else order = default_order(static_cast<size_t>(b.n_seqs * max_kv * kv_row) * 4);
  cudnn_state& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  cudnnHandle_t& handle = st.handles[device];
  if (!handle) {
    const cudnnStatus_t cs = c.create(&handle);
    if (cs != CUDNN_STATUS_SUCCESS) {
      handle = nullptr;
      if (why) *why = std::string("cudnnCreate: ") + c.error_string(cs);
      return false;
    }
  }
  plan_entry* chosen = nullptr;
  shape_key key{};
  std::string declined;
  for (int variant : order) {
    if (variant == 3 && b.n_seqs != 1) continue;
    key = shape_key{device,
                    b.n_seqs,
                    b.n_heads,
                    kv.n_kv_heads,
                    kv.head_dim,
                    pow2_at_least(max_q_len, 64),
                    b.block_table_stride,
                    kv.page_size,
                    static_cast<int64_t>(kv.page_stride / 2),
                    b.sliding_window > 0,
                    variant};
    std::unique_ptr<plan_entry>& slot = st.plans[key];
    if (!slot) {
      slot = std::make_unique<plan_entry>();
      slot->gathered = variant >= 2;
      build_plan(c, handle, key, *slot);
      if (slot->ok) {
        const int64_t n = key.n_seqs;
        TROUPE_CUDA_CHECK(cudaMalloc(&slot->scratch, static_cast<size_t>(4 * n + 2) * sizeof(int32_t)));
        if (slot->workspace_bytes > 0)
          TROUPE_CUDA_CHECK(cudaMalloc(&slot->workspace, static_cast<size_t>(slot->workspace_bytes)));
      }
    }
    if (slot->ok) {
      chosen = slot.get();
      break;
    }
    declined += (declined.empty() ? "" : "; ") + std::string("variant ") + std::to_string(variant) + ": " + slot->why;
  }
  if (!chosen) {
    if (why) *why = declined.empty() ? std::string("no cuDNN variant fits") : declined;
    return false;
  }
  plan_entry& e = *chosen;
  const bool ragged = key.variant != 3;
  const int n = static_cast<int>(b.n_seqs);
  int32_t* seq_q = e.scratch;
  int32_t* seq_kv = seq_q + n;
  int32_t* rag_q = seq_kv + n;
  int32_t* rag_kv = rag_q + n + 1;
  cudnn_prep_kernel<<<1, 32, 0, s>>>(b.cu_seqlens_q, b.q_pos0, n, q_row, kv_row, seq_q, seq_kv, rag_q, rag_kv);
  TROUPE_CUDA_LAUNCH_CHECK("cudnn_prep_kernel");
  const unsigned char* base = reinterpret_cast<const unsigned char*>(kv.base);
  void* k_ptr = const_cast<unsigned char*>(base + kv.k_offset);
  void* v_ptr = const_cast<unsigned char*>(base + kv.v_offset);
  if (e.gathered) {
    // One gather buffer per device, shared by all plans, grown on demand.
    const size_t elems = static_cast<size_t>(b.n_seqs * max_kv * kv_row);
    std::pair<uint16_t*, size_t>& buf = st.gather[device];
    if (buf.second < elems) {
      if (buf.first) TROUPE_CUDA_CHECK(cudaFree(buf.first));
      buf = {nullptr, 0};
      TROUPE_CUDA_CHECK(cudaMalloc(&buf.first, elems * 2 * sizeof(uint16_t)));
      buf.second = elems;
    }
    uint16_t* kg = buf.first;
    uint16_t* vg = buf.first + elems;
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>((max_kv * kv_row / 8 + 255) / 256, 4096)),
                    static_cast<unsigned>(n));
    cudnn_gather_kernel<<<grid, 256, 0, s>>>(base, kv.page_stride, kv.k_offset, kv.v_offset,
                                             static_cast<int>(kv.page_size), b.block_table, b.block_table_stride,
                                             seq_kv, rag_kv, kv_row, kg, vg);
    TROUPE_CUDA_LAUNCH_CHECK("cudnn_gather_kernel");
    k_ptr = kg;
    v_ptr = vg;
  }
  e.scale = b.scale;
  e.window = static_cast<int32_t>(b.sliding_window);
  std::vector<int64_t> uids = {uid_q, uid_k, uid_v, uid_o, uid_scale, uid_seq_q, uid_seq_kv, uid_neg_inf0, uid_neg_inf1};
  std::vector<void*> ptrs = {const_cast<uint16_t*>(b.q), k_ptr, v_ptr, b.out, &e.scale, seq_q, seq_kv, &e.neg_inf,
                             &e.neg_inf};
  if (ragged) {
    uids.insert(uids.end(), {uid_rag_q, uid_rag_o});
    ptrs.insert(ptrs.end(), {rag_q, rag_q});
  }
  if (e.gathered && ragged) {
    uids.insert(uids.end(), {uid_rag_k, uid_rag_v});
    ptrs.insert(ptrs.end(), {rag_kv, rag_kv});
  } else if (!e.gathered) {
    uids.insert(uids.end(), {uid_pt_k, uid_pt_v});
    ptrs.insert(ptrs.end(), {const_cast<int32_t*>(b.block_table), const_cast<int32_t*>(b.block_table)});
  }
  if (key.window) {
    uids.insert(uids.end(), {uid_neg_inf2, uid_window});
    ptrs.insert(ptrs.end(), {&e.neg_inf, &e.window});
  }
  const cudnnStatus_t ss = c.set_stream(handle, s);
  if (ss != CUDNN_STATUS_SUCCESS) throw error(errc::errc_cuda, std::string("cudnnSetStream: ") + c.error_string(ss));
  std::vector<cudnnBackendDescriptor_t> vp_owned;
  graph_builder g{c, vp_owned, {}};
  cudnnBackendDescriptor_t vp = g.make(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
  g.set(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()), uids.data(),
        "variant pack uids");
  g.set(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(ptrs.size()), ptrs.data(),
        "variant pack pointers");
  g.set(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &e.workspace, "variant pack workspace");
  g.finalize(vp, "variant pack finalize");
  cudnnStatus_t xs = CUDNN_STATUS_SUCCESS;
  if (g.ok()) xs = c.execute(handle, e.plan, vp);
  for (cudnnBackendDescriptor_t d : vp_owned) c.destroy_desc(d);
  if (!g.ok()) throw error(errc::errc_cuda, "cuDNN attention: " + g.why);
  if (xs != CUDNN_STATUS_SUCCESS) throw error(errc::errc_cuda, std::string("cudnnBackendExecute: ") + c.error_string(xs));
  if (path) *path = key.variant;
  if (why) *why = declined;
  return true;
}

#endif  // TROUPE_CUDNN_HEADERS

}  // namespace troupe
