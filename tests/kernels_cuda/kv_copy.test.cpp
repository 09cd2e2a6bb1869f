// kv_append_cuda / kv_gather_cuda / kv_scatter_cuda against the CPU twins:
// byte copies, so the criterion is bit-exact — the whole paged storage after
// append equals the CPU's (padding slots skipped on both), the gathered buffer
// equals the CPU gather and the rows appended (its 0xff sentinel fully
// overwritten), and scatter into other pages then gather round-trips.
#include "kernels/kv_copy.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "config/errors.hpp"
#include "kernels/device_buffer.hpp"

using namespace troupe;

namespace {

struct geometry {
  int64_t layers, heads, dim, page_size, pages;
  size_t rb() const { return static_cast<size_t>(heads * dim) * 2; }
  size_t block() const { return rb() * static_cast<size_t>(page_size); }
  size_t page_bytes() const { return block() * 2 * static_cast<size_t>(layers); }
  paged_kv view(const void* base, int64_t layer) const {
    paged_kv v;
    v.type = dtype::dtype_bf16;
    v.base = static_cast<const std::byte*>(base);
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

std::vector<std::byte> download(const device_buffer& d) {
  std::vector<std::byte> h(d.size());
  d.download(h.data(), h.size());
  return h;
}

}  // namespace

TEST_CASE("kv_copy CUDA twins are bit-identical to the CPU ones and round-trip") {
  for (const geometry g : {geometry{4, 8, 128, 16, 40}, geometry{2, 3, 5, 7, 12}, geometry{1, 8, 64, 32, 5}}) {
    CAPTURE(g.heads);
    CAPTURE(g.dim);
    const int64_t pages_used = std::min<int64_t>(g.pages / 2, 6);
    const int64_t n_tokens = g.page_size * (pages_used - 1) + 3;
    std::vector<int32_t> table(static_cast<size_t>(g.pages));
    for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
    std::shuffle(table.begin(), table.end(), std::mt19937(7));
    std::vector<int32_t> table2(table.rbegin(), table.rend());
    table.resize(static_cast<size_t>(pages_used));
    table2.resize(static_cast<size_t>(pages_used));
    std::vector<int32_t> slots(static_cast<size_t>(n_tokens));
    for (int64_t t = 0; t < n_tokens; ++t)
      slots[static_cast<size_t>(t)] = table[static_cast<size_t>(t / g.page_size)] * static_cast<int32_t>(g.page_size) +
                                      static_cast<int32_t>(t % g.page_size);
    std::vector<int32_t> slots_pad = slots;
    slots_pad[1] = -1;  // token 1 is padding in the last layer's append

    std::vector<std::byte> host = random_bytes(g.page_bytes() * static_cast<size_t>(g.pages), 3);
    device_buffer dev(host.size());
    dev.upload(host.data(), host.size());
    device_buffer dslots(slots.size() * 4), dslots_pad(slots.size() * 4), dtable(table.size() * 4),
        dtable2(table2.size() * 4);
    dslots.upload(slots.data(), slots.size() * 4);
    dslots_pad.upload(slots_pad.data(), slots_pad.size() * 4);
    dtable.upload(table.data(), table.size() * 4);
    dtable2.upload(table2.data(), table2.size() * 4);

    std::vector<std::vector<std::byte>> k, v;
    for (int64_t l = 0; l < g.layers; ++l) {
      k.push_back(random_bytes(g.rb() * static_cast<size_t>(n_tokens), 100 + static_cast<unsigned>(l)));
      v.push_back(random_bytes(g.rb() * static_cast<size_t>(n_tokens), 200 + static_cast<unsigned>(l)));
      const bool pad = l == g.layers - 1;
      kv_append_args a;
      a.k = k.back().data();
      a.v = v.back().data();
      a.slots = pad ? slots_pad.data() : slots.data();
      a.n_tokens = n_tokens;
      kv_append(g.view(host.data(), l), a);
      device_buffer dk(k.back().size()), dv(v.back().size());
      dk.upload(k.back().data(), dk.size());
      dv.upload(v.back().data(), dv.size());
      a.k = dk.data();
      a.v = dv.data();
      a.slots = pad ? dslots_pad.as<int32_t>() : dslots.as<int32_t>();
      kv_append_cuda(g.view(dev.data(), l), a, nullptr);
      cuda_sync(nullptr);
    }
    CHECK(download(dev) == host);

    kv_transfer_args ta;
    ta.layer0 = g.view(host.data(), 0);
    ta.layer_stride = 2 * g.block();
    ta.n_layers = g.layers;
    ta.page_table = table.data();
    ta.n_tokens = n_tokens;
    std::vector<std::byte> want(kv_transfer_bytes(ta));
    kv_gather(ta, want.data());
    kv_transfer_args td = ta;
    td.layer0 = g.view(dev.data(), 0);
    td.page_table = dtable.as<int32_t>();
    device_buffer dbuf(want.size());
    dbuf.fill(0xff);
    kv_gather_cuda(td, dbuf.data(), nullptr);
    cuda_sync(nullptr);
    const auto got = download(dbuf);
    CHECK(got == want);
    // Independent check of the layout: layer l, kind, token t at ((l * 2 + kind) * n + t) rows
    // (token 1 of the last layer kept the storage's old bytes: padding).
    bool layout = true;
    for (int64_t l = 0; l < g.layers; ++l)
      for (int kind = 0; kind < 2; ++kind)
        for (int64_t t = 0; t < n_tokens; ++t) {
          if (l == g.layers - 1 && t == 1) continue;
          const auto& src = kind == 0 ? k[static_cast<size_t>(l)] : v[static_cast<size_t>(l)];
          layout = layout && std::memcmp(got.data() + static_cast<size_t>((l * 2 + kind) * n_tokens + t) * g.rb(),
                                         src.data() + static_cast<size_t>(t) * g.rb(), g.rb()) == 0;
        }
    CHECK(layout);

    // Scatter into other pages, gather back.
    kv_transfer_args ts = td;
    ts.page_table = dtable2.as<int32_t>();
    kv_scatter_cuda(ts, dbuf.data(), nullptr);
    device_buffer dbuf2(want.size());
    dbuf2.fill(0xff);
    kv_gather_cuda(ts, dbuf2.data(), nullptr);
    cuda_sync(nullptr);
    CHECK(download(dbuf2) == want);
    // The CPU scatter with the same table writes the same storage.
    kv_transfer_args hs = ta;
    hs.page_table = table2.data();
    kv_scatter(hs, want.data());
    CHECK(download(dev) == host);

    // A layer sub-range and token window on both.
    kv_transfer_args pc = ta, pd = td;
    pc.layer0 = g.view(host.data(), g.layers - 1);
    pd.layer0 = g.view(dev.data(), g.layers - 1);
    pc.n_layers = pd.n_layers = 1;
    pc.first_token = pd.first_token = 2;
    pc.n_tokens = pd.n_tokens = n_tokens - 2;
    std::vector<std::byte> pw(kv_transfer_bytes(pc));
    kv_gather(pc, pw.data());
    device_buffer pb(pw.size());
    pb.fill(0xff);
    kv_gather_cuda(pd, pb.data(), nullptr);
    cuda_sync(nullptr);
    CHECK(download(pb) == pw);
  }
}
