// CPU RoPE. Frequencies follow transformers' rope init functions step by step
// in fp32 (so the fixtures' dumped inv_freq match to the last bit or two);
// cos/sin of position x inv_freq are computed per token, shared by its heads.
#include "kernels/rope.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numbers>

namespace troupe {

namespace {

std::vector<float> base_inv_freq(double theta, int64_t dim) {
  std::vector<float> inv(static_cast<size_t>(dim / 2));
  const float base = static_cast<float>(theta);
  for (int64_t i = 0; i < dim / 2; ++i) {
    float expo = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv[i] = 1.0f / std::pow(base, expo);
  }
  return inv;
}

void apply_llama3(const rope_scaling& s, std::vector<float>& inv, int64_t max_pos) {
  const double old_ctx = static_cast<double>(s.original_max_position > 0 ? s.original_max_position : max_pos);
  const double low_wavelen = old_ctx / s.low_freq_factor;
  const double high_wavelen = old_ctx / s.high_freq_factor;
  const float factor = static_cast<float>(s.factor);
  for (float& f : inv) {
    const float wavelen = static_cast<float>(2.0 * std::numbers::pi) / f;
    float scaled = wavelen > static_cast<float>(low_wavelen) ? f / factor : f;
    const bool medium = !(wavelen < static_cast<float>(high_wavelen)) && !(wavelen > static_cast<float>(low_wavelen));
    if (medium) {
      const float smooth = (static_cast<float>(old_ctx) / wavelen - static_cast<float>(s.low_freq_factor)) /
                           static_cast<float>(s.high_freq_factor - s.low_freq_factor);
      scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
    }
    f = scaled;
  }
}

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

float apply_yarn(const rope_scaling& s, std::vector<float>& inv, int64_t dim, int64_t max_pos) {
  const double factor = s.factor;
  const double orig = static_cast<double>(s.original_max_position > 0 ? s.original_max_position : max_pos);
  double attention_factor = s.attention_factor;
  if (attention_factor <= 0.0) {
    attention_factor = (s.mscale != 0.0 && s.mscale_all_dim != 0.0)
                           ? yarn_mscale(factor, s.mscale) / yarn_mscale(factor, s.mscale_all_dim)
                           : yarn_mscale(factor, 1.0);
  }
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) * std::log(orig / (rotations * 2.0 * std::numbers::pi))) /
           (2.0 * std::log(s.theta));
  };
  double low = correction_dim(s.beta_fast > 0 ? s.beta_fast : 32.0);
  double high = correction_dim(s.beta_slow > 0 ? s.beta_slow : 1.0);
  if (s.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const float base = static_cast<float>(s.theta);
  for (size_t i = 0; i < inv.size(); ++i) {
    const float pos_freq = std::pow(base, static_cast<float>(2 * i) / static_cast<float>(dim));
    const float extrapolation = 1.0f / pos_freq;
    const float interpolation = 1.0f / (static_cast<float>(factor) * pos_freq);
    float ramp = (static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low);
    ramp = std::clamp(ramp, 0.0f, 1.0f);
    const float extra_w = 1.0f - ramp;
    inv[i] = interpolation * (1.0f - extra_w) + extrapolation * extra_w;
  }
  return static_cast<float>(attention_factor);
}

}  // namespace

rope_table rope_inv_freq(const rope_scaling& s, int64_t rotary_dim, int64_t max_position_embeddings) {
  rope_table t;
  t.inv_freq = base_inv_freq(s.theta, rotary_dim);
  switch (s.type) {
    case rope_type::rope_default: break;
    case rope_type::rope_linear:
      for (float& f : t.inv_freq) f /= static_cast<float>(s.factor);
      break;
    case rope_type::rope_llama3: apply_llama3(s, t.inv_freq, max_position_embeddings); break;
    case rope_type::rope_yarn:
      t.attention_scaling = apply_yarn(s, t.inv_freq, rotary_dim, max_position_embeddings);
      break;
  }
  return t;
}

void rope_apply(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int32_t* pos,
                const rope_table& table) {
  const int64_t half = head_dim / 2;
  assert(static_cast<int64_t>(table.inv_freq.size()) == half && half <= 512);
  const float scale = table.attention_scaling;
#pragma omp parallel for schedule(static) if (n_tokens * n_heads * head_dim > 32768)
  for (int64_t t = 0; t < n_tokens; ++t) {
    float cs[512], sn[512];  // head_dim <= 1024
    const float p = static_cast<float>(pos[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = p * table.inv_freq[i];
      cs[i] = std::cos(angle) * scale;
      sn[i] = std::sin(angle) * scale;
    }
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
      }
    }
  }
}

}  // namespace troupe
