// Rotary position embedding, NeoX/HF layout (rotate_half: dimension i pairs
// with i + rotary_dim/2), with the scaling types transformers implements for
// Llama-family models: default, linear, llama3 and yarn. Frequencies are
// computed once per model (rope_inv_freq); the kernel turns position x
// inv_freq into cos/sin on the fly, as transformers does in fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/attention.hpp"
#include "kernels/cuda_stream.hpp"

namespace troupe {

/// RoPE scaling type.
enum class rope_type : uint8_t { rope_default, rope_linear, rope_llama3, rope_yarn };

/// RoPE parameters as a checkpoint's config gives them (rope_parameters or
/// the legacy rope_theta + rope_scaling).
struct rope_scaling {
  rope_type type = rope_type::rope_default;
  double theta = 10000.0;
  double factor = 1.0;                      ///< linear, llama3, yarn
  double low_freq_factor = 1.0;             ///< llama3
  double high_freq_factor = 4.0;            ///< llama3
  int64_t original_max_position = 0;        ///< llama3, yarn (0: max_position_embeddings)
  double attention_factor = 0.0;            ///< yarn: 0 = derive from factor / mscale
  double beta_fast = 32.0;                  ///< yarn
  double beta_slow = 1.0;                   ///< yarn
  double mscale = 0.0;                      ///< yarn (0 = unset)
  double mscale_all_dim = 0.0;              ///< yarn (0 = unset)
  bool truncate = true;                     ///< yarn
};

/// Inverse frequencies (rotary_dim / 2 of them) and the scale applied to cos/sin.
struct rope_table {
  std::vector<float> inv_freq;
  float attention_scaling = 1.0f;
};

/// Computes the table for a head of `rotary_dim` dims exactly as transformers'
/// rope init functions do (fp32 frequencies). max_position_embeddings is the
/// model's, used where the scaling type needs it.
rope_table rope_inv_freq(const rope_scaling& s, int64_t rotary_dim, int64_t max_position_embeddings);

/// Rotates x in place: x is [n_tokens][n_heads][head_dim] fp32, token t at
/// position pos[t]. The whole head_dim is rotated (rotary_dim == head_dim).
void rope_apply(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int32_t* pos,
                const rope_table& table);

// ---- CUDA (kernels/cuda/rope.cu; CUDA builds only) ----

/// In-place RoPE of bf16 queries and keys on the GPU (all pointers device
/// memory). Head h of token t starts at q + t * q_stride + h * head_dim, so q
/// and k may be slices of one fused QKV projection output. The math is the
/// CPU twin's: angle = float(pos[t]) * inv_freq[i] in fp32, cos/sin of it
/// times attention_scaling, rotate_half pairs (i, i + head_dim/2); one bf16
/// rounding per element.
struct rope_cuda_args {
  uint16_t* q = nullptr;            ///< bf16 queries
  int64_t n_q_heads = 0;
  int64_t q_stride = 0;             ///< elements between tokens; 0 = n_q_heads * head_dim
  uint16_t* k = nullptr;            ///< bf16 keys; null (with n_k_heads 0) to rotate q only
  int64_t n_k_heads = 0;
  int64_t k_stride = 0;             ///< elements between tokens; 0 = n_k_heads * head_dim
  int64_t n_tokens = 0;
  int64_t head_dim = 0;             ///< even, <= 1024; rotary_dim == head_dim
  const int32_t* pos = nullptr;     ///< n_tokens positions
  const float* inv_freq = nullptr;  ///< head_dim / 2 floats: rope_table::inv_freq, uploaded once
  float attention_scaling = 1.0f;   ///< rope_table::attention_scaling
  // Optional destinations, so that one launch does what rope + kv_append_cuda
  // + a copy of the queries into a packed buffer would (three graph nodes per
  // layer fewer at decode; results bit-identical to that sequence):
  uint16_t* q_out = nullptr;        ///< rotated queries to [n_tokens][n_q_heads][head_dim] here; q untouched
  const paged_kv* kv = nullptr;     ///< bf16 cache: rotated keys and the values go to their slots; k untouched
  const int32_t* slots = nullptr;   ///< with kv: n_tokens slots (page * page_size + offset); < 0 = skip the token
  const uint16_t* v = nullptr;      ///< with kv: bf16 values, n_k_heads heads per token
  int64_t v_stride = 0;             ///< with kv: elements between tokens; 0 = n_k_heads * head_dim
};

/// Rotates q and k of `a` in one launch on stream s. Throws
/// error(errc_invalid_argument) naming a bad field, error(errc_cuda) on launch failure.
void rope_apply_cuda(const rope_cuda_args& a, cuda_stream s);

}  // namespace troupe
