// CPU kv_append / kv_gather / kv_scatter: append puts each row at its slot in
// model/kv_cache's page layout ([layer][k|v][slot][kv_head][head_dim] per
// page), gather produces [layer][k|v][token][kv_head][head_dim] (the
// kv_cache::gather layout), scatter inverts it. Checked bit-exact against
// rows computed independently from the same formulas.
#include "kernels/kv_copy.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

#include "config/errors.hpp"

using namespace troupe;

namespace {

struct geometry {
  int64_t layers, heads, dim, page_size, pages;
  size_t rb() const { return static_cast<size_t>(heads * dim) * 2; }
  size_t block() const { return rb() * static_cast<size_t>(page_size); }
  size_t page_bytes() const { return block() * 2 * static_cast<size_t>(layers); }
  paged_kv view(std::byte* base, int64_t layer) const {
    paged_kv v;
    v.type = dtype::dtype_bf16;
    v.base = base;
    v.page_stride = page_bytes();
    v.k_offset = static_cast<size_t>(layer * 2) * block();
    v.v_offset = static_cast<size_t>(layer * 2 + 1) * block();
    v.page_size = page_size;
    v.n_kv_heads = heads;
    v.head_dim = dim;
    return v;
  }
};

std::vector<std::byte> random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> b(n);
  for (auto& x : b) x = static_cast<std::byte>(rng() & 0xff);
  return b;
}

}  // namespace

TEST_CASE("kv_append, kv_gather and kv_scatter follow the kv_cache layouts and round-trip") {
  for (const geometry g : {geometry{3, 8, 128, 16, 9}, geometry{2, 3, 5, 7, 6}}) {
    CAPTURE(g.heads);
    const int64_t n_tokens = g.page_size * 3 + 2;  // 4 pages, the last partly filled
    const std::vector<int32_t> table = {4, 1, 5, 2};
    std::vector<std::byte> storage = random_bytes(g.page_bytes() * static_cast<size_t>(g.pages), 1);
    // K/V rows per layer: token t's K row of layer l is rows[l][0][t].
    std::vector<std::vector<std::byte>> k(static_cast<size_t>(g.layers)), v(static_cast<size_t>(g.layers));
    std::vector<int32_t> slots(static_cast<size_t>(n_tokens));
    for (int64_t t = 0; t < n_tokens; ++t)
      slots[static_cast<size_t>(t)] = table[static_cast<size_t>(t / g.page_size)] * static_cast<int32_t>(g.page_size) +
                                      static_cast<int32_t>(t % g.page_size);
    for (int64_t l = 0; l < g.layers; ++l) {
      k[static_cast<size_t>(l)] = random_bytes(g.rb() * static_cast<size_t>(n_tokens), 10 + static_cast<unsigned>(l));
      v[static_cast<size_t>(l)] = random_bytes(g.rb() * static_cast<size_t>(n_tokens), 20 + static_cast<unsigned>(l));
      kv_append_args a;
      a.k = k[static_cast<size_t>(l)].data();
      a.v = v[static_cast<size_t>(l)].data();
      a.slots = slots.data();
      a.n_tokens = n_tokens;
      kv_append(g.view(storage.data(), l), a);
    }
    // Each row landed at page table[t / page_size], slot t % page_size.
    bool placed = true;
    for (int64_t l = 0; l < g.layers; ++l)
      for (int64_t t = 0; t < n_tokens; ++t) {
        const std::byte* page = storage.data() + static_cast<size_t>(table[static_cast<size_t>(t / g.page_size)]) * g.page_bytes();
        const size_t off = static_cast<size_t>(t % g.page_size) * g.rb();
        placed = placed && std::memcmp(page + static_cast<size_t>(l * 2) * g.block() + off,
                                       k[static_cast<size_t>(l)].data() + static_cast<size_t>(t) * g.rb(), g.rb()) == 0;
        placed = placed && std::memcmp(page + static_cast<size_t>(l * 2 + 1) * g.block() + off,
                                       v[static_cast<size_t>(l)].data() + static_cast<size_t>(t) * g.rb(), g.rb()) == 0;
      }
    CHECK(placed);

    kv_transfer_args ta;
    ta.layer0 = g.view(storage.data(), 0);
    ta.layer_stride = 2 * g.block();
    ta.n_layers = g.layers;
    ta.page_table = table.data();
    ta.n_tokens = n_tokens;
    CHECK(kv_transfer_bytes(ta) == g.rb() * static_cast<size_t>(n_tokens) * 2 * static_cast<size_t>(g.layers));
    std::vector<std::byte> buf(kv_transfer_bytes(ta), std::byte{0xff});
    kv_gather(ta, buf.data());
    std::vector<std::byte> want;
    for (int64_t l = 0; l < g.layers; ++l) {
      want.insert(want.end(), k[static_cast<size_t>(l)].begin(), k[static_cast<size_t>(l)].end());
      want.insert(want.end(), v[static_cast<size_t>(l)].begin(), v[static_cast<size_t>(l)].end());
    }
    CHECK(buf == want);

    // Scatter into other pages of a fresh storage, gather back: same bytes.
    std::vector<std::byte> storage2 = random_bytes(storage.size(), 2);
    const std::vector<int32_t> table2 = {0, 3, 2, 5};
    kv_transfer_args tb = ta;
    tb.layer0 = g.view(storage2.data(), 0);
    tb.page_table = table2.data();
    kv_scatter(tb, buf.data());
    std::vector<std::byte> buf2(buf.size(), std::byte{0});
    kv_gather(tb, buf2.data());
    CHECK(buf2 == buf);

    // A layer sub-range and a token window: layers [1, layers), tokens [3, 3 + page_size).
    kv_transfer_args tc = ta;
    tc.layer0 = g.view(storage.data(), 1);
    tc.n_layers = g.layers - 1;
    tc.first_token = 3;
    tc.n_tokens = g.page_size;
    std::vector<std::byte> part(kv_transfer_bytes(tc));
    kv_gather(tc, part.data());
    bool window = true;
    for (int64_t l = 1; l < g.layers; ++l)
      for (int kind = 0; kind < 2; ++kind)
        for (int64_t t = 0; t < tc.n_tokens; ++t) {
          const auto& src = kind == 0 ? k[static_cast<size_t>(l)] : v[static_cast<size_t>(l)];
          window = window && std::memcmp(part.data() + static_cast<size_t>(((l - 1) * 2 + kind) * tc.n_tokens + t) * g.rb(),
                                         src.data() + static_cast<size_t>(3 + t) * g.rb(), g.rb()) == 0;
        }
    CHECK(window);
  }
}

TEST_CASE("kv_append skips negative slots, honours strides and rejects bad arguments") {
  const geometry g{1, 2, 4, 4, 2};
  std::vector<std::byte> storage(g.page_bytes() * 2, std::byte{0});
  // Fused rows: [k | v | pad] per token, 3 tokens; token 1 is padding (slot -1).
  const int64_t row = g.heads * g.dim, stride = 2 * row + 3;
  std::vector<uint16_t> qkv(static_cast<size_t>(3 * stride));
  for (size_t i = 0; i < qkv.size(); ++i) qkv[i] = static_cast<uint16_t>(i + 1);
  const int32_t slots[] = {5, -1, 0};
  kv_append_args a;
  a.k = qkv.data();
  a.v = qkv.data() + row;
  a.k_stride = stride;
  a.v_stride = stride;
  a.slots = slots;
  a.n_tokens = 3;
  kv_append(g.view(storage.data(), 0), a);
  auto at = [&](int32_t slot, int kind) {
    return reinterpret_cast<const uint16_t*>(storage.data() + static_cast<size_t>(slot / g.page_size) * g.page_bytes() +
                                             static_cast<size_t>(kind) * g.block() +
                                             static_cast<size_t>(slot % g.page_size) * g.rb());
  };
  CHECK(std::memcmp(at(5, 0), qkv.data(), g.rb()) == 0);
  CHECK(std::memcmp(at(5, 1), qkv.data() + row, g.rb()) == 0);
  CHECK(std::memcmp(at(0, 0), qkv.data() + 2 * stride, g.rb()) == 0);
  CHECK(std::memcmp(at(0, 1), qkv.data() + 2 * stride + row, g.rb()) == 0);
  size_t written = 0;
  for (std::byte b : storage) written += b != std::byte{0};
  CHECK(written <= 4 * g.rb());  // only the two tokens' rows (padding skipped)
  a.k_stride = row - 1;
  CHECK_THROWS_AS(kv_append(g.view(storage.data(), 0), a), troupe::error);
  kv_transfer_args t;
  t.layer0 = g.view(storage.data(), 0);
  t.n_tokens = 1;
  CHECK_THROWS_AS(kv_gather(t, storage.data()), troupe::error);  // no page table
}
