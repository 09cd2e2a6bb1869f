// embedding_cuda against the CPU embedding on random bf16 tables: a copy, so
// the GPU rows must equal the CPU rows bit for bit (criterion: exact).
#include "kernels/embedding.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

#include "config/errors.hpp"
#include "kernels/device_buffer.hpp"
#include "tests/kernels/reference.hpp"

using namespace troupe;

TEST_CASE("embedding_cuda equals the CPU embedding (bf16 rows, any dim)") {
  struct shape {
    int64_t vocab, dim, n;
  };
  for (const shape sh : {shape{1000, 4096, 7}, shape{517, 67, 13}, shape{300, 130, 1}, shape{5000, 2048, 300},
                         shape{64, 8, 33}}) {
    CAPTURE(sh.dim);
    CAPTURE(sh.n);
    std::vector<float> tf = troupe_test::random_floats(static_cast<size_t>(sh.vocab * sh.dim), 100 + sh.dim);
    std::vector<uint8_t> table = troupe_test::store(dtype::dtype_bf16, tf);
    std::mt19937 rng(static_cast<unsigned>(sh.n));
    std::vector<int32_t> ids(static_cast<size_t>(sh.n));
    for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<unsigned>(sh.vocab));
    ids.back() = static_cast<int32_t>(sh.vocab - 1);

    std::vector<float> want(static_cast<size_t>(sh.n * sh.dim));
    embedding(ids.data(), sh.n, dtype::dtype_bf16, table.data(), sh.dim, want.data());

    device_buffer d_table(table.size()), d_ids(ids.size() * 4), d_out(want.size() * 2);
    d_table.upload(table.data(), table.size());
    d_ids.upload(ids.data(), ids.size() * 4);
    d_out.fill(0xff);  // bf16 NaN sentinel
    embedding_cuda(d_ids.as<int32_t>(), sh.n, d_table.as<uint16_t>(), sh.dim, d_out.as<uint16_t>(), nullptr);
    cuda_sync(nullptr);
    std::vector<uint16_t> got(want.size());
    d_out.download(got.data(), got.size() * 2);
    size_t mismatches = 0, unwritten = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (got[i] == 0xffff) ++unwritten;
      if (bf16_to_f32(got[i]) != want[i]) ++mismatches;
    }
    CHECK(unwritten == 0);
    CHECK(mismatches == 0);
  }
  CHECK_THROWS_AS(embedding_cuda(nullptr, 3, nullptr, 8, nullptr, nullptr), troupe::error);
  CHECK_THROWS_AS(embedding_cuda(nullptr, 1, nullptr, 0, nullptr, nullptr), troupe::error);
}
