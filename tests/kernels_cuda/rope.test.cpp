// rope_apply_cuda against the CPU rope_apply on the same bf16-rounded inputs
// (all scaling types through rope_inv_freq, positions up to 128K).
// Criterion: norm-relative error <= 1e-2 and per element |got - ref| <=
// 1e-2 * |ref| + 1e-2 * rms(ref); no NaN sentinel left; in the fused-QKV
// layout the V slice stays bit-identical.
#include "kernels/rope.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "config/errors.hpp"
#include "kernels/device_buffer.hpp"
#include "kernels/kv_copy.hpp"
#include "tests/kernels/reference.hpp"

using namespace troupe;

namespace {

std::vector<uint16_t> to_bf16(std::vector<float>& v) {  // rounds v in place, returns the bits
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    b[i] = f32_to_bf16(v[i]);
    v[i] = bf16_to_f32(b[i]);
  }
  return b;
}

device_buffer upload(const std::vector<uint16_t>& h) {
  device_buffer d(h.size() * 2);
  d.upload(h.data(), h.size() * 2);
  return d;
}

std::vector<uint16_t> download(const device_buffer& d, size_t n) {
  std::vector<uint16_t> h(n);
  d.download(h.data(), n * 2);
  return h;
}

void compare(const std::vector<uint16_t>& got, const std::vector<float>& ref, double& worst_rel) {
  double num = 0, den = 0, max_abs = 0;
  size_t nan = 0, bad = 0;
  for (float r : ref) den += double(r) * r;
  const double rms = std::sqrt(den / double(ref.size()));
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = bf16_to_f32(got[i]);
    if (std::isnan(g)) {
      ++nan;
      continue;
    }
    const double e = std::fabs(double(g) - ref[i]);
    num += e * e;
    max_abs = std::max(max_abs, e);
    if (e > 1e-2 * std::fabs(ref[i]) + 1e-2 * rms) ++bad;
  }
  const double rel = std::sqrt(num / den);
  worst_rel = std::max(worst_rel, rel);
  CHECK(nan == 0);
  CHECK(bad == 0);
  CHECK(rel <= 1e-2);
  CAPTURE(max_abs);
}

}  // namespace

TEST_CASE("rope_apply_cuda matches the CPU rope_apply (q and k in one launch, packed and fused-QKV strides)") {
  struct shape {
    int64_t tokens, nq, nk, hd;
    bool fused;
    rope_type type;
  };
  double worst = 0;
  for (const shape sh : {shape{5, 32, 8, 128, false, rope_type::rope_llama3}, shape{3, 4, 2, 64, false, rope_type::rope_default},
                         shape{17, 3, 1, 96, true, rope_type::rope_yarn}, shape{4, 2, 1, 10, false, rope_type::rope_linear},
                         shape{64, 16, 4, 128, true, rope_type::rope_llama3}, shape{1, 32, 8, 128, true, rope_type::rope_default},
                         shape{9, 2, 2, 256, false, rope_type::rope_yarn}}) {
    CAPTURE(sh.tokens);
    CAPTURE(sh.hd);
    CAPTURE(sh.fused);
    rope_scaling sc;
    sc.type = sh.type;
    sc.theta = 500000.0;
    sc.factor = sh.type == rope_type::rope_default ? 1.0 : 8.0;
    sc.original_max_position = 8192;
    const rope_table table = rope_inv_freq(sc, sh.hd, 131072);
    std::mt19937 rng(static_cast<unsigned>(sh.tokens * 31 + sh.hd));
    std::vector<int32_t> pos(static_cast<size_t>(sh.tokens));
    for (auto& p : pos) p = static_cast<int32_t>(rng() % 131072);
    pos[0] = 0;

    const int64_t qn = sh.nq * sh.hd, kn = sh.nk * sh.hd;
    const int64_t row = sh.fused ? qn + 2 * kn : 0;  // fused: [q | k | v] per token
    std::vector<float> q = troupe_test::random_floats(static_cast<size_t>(sh.tokens * qn), 5 + sh.hd);
    std::vector<float> k = troupe_test::random_floats(static_cast<size_t>(sh.tokens * kn), 6 + sh.hd);
    const auto qb = to_bf16(q), kb = to_bf16(k);
    std::vector<float> qref = q, kref = k;
    rope_apply(qref.data(), sh.tokens, sh.nq, sh.hd, pos.data(), table);
    rope_apply(kref.data(), sh.tokens, sh.nk, sh.hd, pos.data(), table);

    device_buffer dpos(pos.size() * 4), dinv(table.inv_freq.size() * 4);
    dpos.upload(pos.data(), pos.size() * 4);
    dinv.upload(table.inv_freq.data(), table.inv_freq.size() * 4);
    rope_cuda_args a;
    a.n_q_heads = sh.nq;
    a.n_k_heads = sh.nk;
    a.n_tokens = sh.tokens;
    a.head_dim = sh.hd;
    a.pos = dpos.as<int32_t>();
    a.inv_freq = dinv.as<float>();
    a.attention_scaling = table.attention_scaling;
    std::vector<uint16_t> gq(q.size()), gk(k.size());
    if (sh.fused) {
      std::vector<uint16_t> qkv(static_cast<size_t>(sh.tokens * row));
      std::vector<float> vf = troupe_test::random_floats(static_cast<size_t>(sh.tokens * kn), 7);
      const auto vb = to_bf16(vf);
      for (int64_t t = 0; t < sh.tokens; ++t) {
        std::copy_n(qb.begin() + t * qn, qn, qkv.begin() + t * row);
        std::copy_n(kb.begin() + t * kn, kn, qkv.begin() + t * row + qn);
        std::copy_n(vb.begin() + t * kn, kn, qkv.begin() + t * row + qn + kn);
      }
      device_buffer d = upload(qkv);
      a.q = d.as<uint16_t>();
      a.q_stride = row;
      a.k = d.as<uint16_t>() + qn;
      a.k_stride = row;
      rope_apply_cuda(a, nullptr);
      cuda_sync(nullptr);
      const auto back = download(d, qkv.size());
      bool v_untouched = true;
      for (int64_t t = 0; t < sh.tokens; ++t) {
        std::copy_n(back.begin() + t * row, qn, gq.begin() + t * qn);
        std::copy_n(back.begin() + t * row + qn, kn, gk.begin() + t * kn);
        v_untouched = v_untouched && std::equal(vb.begin() + t * kn, vb.begin() + (t + 1) * kn, back.begin() + t * row + qn + kn);
      }
      CHECK(v_untouched);
    } else {
      device_buffer dq = upload(qb), dk = upload(kb);
      a.q = dq.as<uint16_t>();
      a.k = dk.as<uint16_t>();
      rope_apply_cuda(a, nullptr);
      cuda_sync(nullptr);
      gq = download(dq, q.size());
      gk = download(dk, k.size());
    }
    compare(gq, qref, worst);
    compare(gk, kref, worst);
  }
  MESSAGE("rope max norm-relative error " << worst);
  rope_cuda_args bad;
  bad.n_tokens = 1;
  bad.n_q_heads = 1;
  bad.head_dim = 7;
  CHECK_THROWS_AS(rope_apply_cuda(bad, nullptr), troupe::error);
}

// The fused destinations (rotated q to a packed buffer, rotated k and v to
// their cache slots) against the unfused sequence rope in place ->
// kv_append_cuda -> copy of q: bit-identical, skipped slots untouched, the
// QKV source unchanged.
TEST_CASE("rope_apply_cuda with q_out and a KV destination equals rope + kv_append + copy") {
  for (const int64_t hd : {int64_t{128}, int64_t{64}, int64_t{10}}) {
    CAPTURE(hd);
    const int64_t tokens = 7, nq = 4, nk = 2, page = 4, n_pages = 6;
    const int64_t qn = nq * hd, kn = nk * hd, row = qn + 2 * kn;
    rope_scaling sc;
    sc.type = rope_type::rope_llama3;
    sc.theta = 500000.0;
    sc.factor = 8.0;
    sc.original_max_position = 8192;
    const rope_table table = rope_inv_freq(sc, hd, 131072);
    std::vector<float> f = troupe_test::random_floats(static_cast<size_t>(tokens * row), 11 + hd);
    const std::vector<uint16_t> qkv = to_bf16(f);
    const std::vector<int32_t> pos = {0, 5, 6, 99, 1000, 4097, 70000};
    const std::vector<int32_t> slots = {3, 9, -1, 10, 0, 22, 17};  // -1: padding, skipped
    const size_t row_bytes = static_cast<size_t>(kn) * 2, page_stride = 2 * page * row_bytes + 64;
    std::vector<uint16_t> pages_init(n_pages * page_stride / 2);
    for (size_t i = 0; i < pages_init.size(); ++i) pages_init[i] = static_cast<uint16_t>(i * 2654435761u >> 16);
    device_buffer dpos(pos.size() * 4), dslots(slots.size() * 4), dinv(table.inv_freq.size() * 4);
    dpos.upload(pos.data(), pos.size() * 4);
    dslots.upload(slots.data(), slots.size() * 4);
    dinv.upload(table.inv_freq.data(), table.inv_freq.size() * 4);
    auto view_of = [&](device_buffer& d) {
      paged_kv v;
      v.type = dtype::dtype_bf16;
      v.base = static_cast<const std::byte*>(d.data());
      v.page_stride = page_stride;
      v.k_offset = 64;
      v.v_offset = 64 + page * row_bytes;
      v.page_size = page;
      v.n_kv_heads = nk;
      v.head_dim = hd;
      return v;
    };
    auto args = [&](device_buffer& src) {
      rope_cuda_args a;
      a.q = src.as<uint16_t>();
      a.q_stride = row;
      a.k = src.as<uint16_t>() + qn;
      a.k_stride = row;
      a.n_q_heads = nq;
      a.n_k_heads = nk;
      a.n_tokens = tokens;
      a.head_dim = hd;
      a.pos = dpos.as<int32_t>();
      a.inv_freq = dinv.as<float>();
      a.attention_scaling = table.attention_scaling;
      return a;
    };
    // unfused
    device_buffer src1 = upload(qkv), pages1 = upload(pages_init), qbuf1(static_cast<size_t>(tokens * qn) * 2);
    rope_apply_cuda(args(src1), nullptr);
    kv_append_args ka;
    ka.k = src1.as<uint16_t>() + qn;
    ka.v = src1.as<uint16_t>() + qn + kn;
    ka.k_stride = row;
    ka.v_stride = row;
    ka.slots = dslots.as<int32_t>();
    ka.n_tokens = tokens;
    kv_append_cuda(view_of(pages1), ka, nullptr);
    const auto rotated = download(src1, qkv.size());
    std::vector<uint16_t> q_ref(static_cast<size_t>(tokens * qn));
    for (int64_t t = 0; t < tokens; ++t) std::copy_n(rotated.begin() + t * row, qn, q_ref.begin() + t * qn);
    // fused
    device_buffer src2 = upload(qkv), pages2 = upload(pages_init), qbuf2(q_ref.size() * 2);
    qbuf2.fill(0xff);
    const paged_kv view2 = view_of(pages2);
    rope_cuda_args a = args(src2);
    a.q_out = qbuf2.as<uint16_t>();
    a.kv = &view2;
    a.slots = dslots.as<int32_t>();
    a.v = src2.as<uint16_t>() + qn + kn;
    a.v_stride = row;
    rope_apply_cuda(a, nullptr);
    cuda_sync(nullptr);
    CHECK(download(qbuf2, q_ref.size()) == q_ref);
    CHECK(download(pages2, pages_init.size()) == download(pages1, pages_init.size()));
    CHECK(download(src2, qkv.size()) == qkv);
    // a KV destination that does not match the keys is refused
    paged_kv wrong = view2;
    wrong.n_kv_heads = nk + 1;
    a.kv = &wrong;
    CHECK_THROWS_AS(rope_apply_cuda(a, nullptr), troupe::error);
  }
}
