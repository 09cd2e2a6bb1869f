#include "model/kv_cache.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

using namespace troupe;

namespace {
kv_cache_config geometry(int64_t pages, dtype t = dtype::dtype_f32) { return {3, 2, 4, 4, pages, t}; }
}  // namespace

TEST_CASE("kv_cache: pages are taken as sequences grow and returned when freed") {
  kv_cache kv(geometry(5));
  CHECK(kv.free_pages() == 5);
  CHECK(kv.append(1, 5) == errc::ok);  // 2 pages
  CHECK(kv.length(1) == 5);
  CHECK(kv.pages(1).size() == 2);
  CHECK(kv.append(1, 3) == errc::ok);  // 8 tokens still 2 pages
  CHECK(kv.pages(1).size() == 2);
  CHECK(kv.append(2, 9) == errc::ok);  // 3 pages
  CHECK(kv.free_pages() == 0);
  CHECK(kv.append(1, 1) == errc::errc_kv_exhausted);
  CHECK(kv.length(1) == 8);  // unchanged on exhaustion
  CHECK(kv.append(3, 1) == errc::errc_kv_exhausted);
  CHECK_FALSE(kv.contains(3));
  CHECK(kv.truncate(2, 4) == errc::ok);
  CHECK(kv.free_pages() == 2);
  CHECK(kv.truncate(2, 5) == errc::errc_invalid_argument);
  CHECK(kv.truncate(42, 0) == errc::errc_unknown_sequence);
  kv.free(1);
  kv.free(2);
  kv.free(77);
  CHECK(kv.free_pages() == 5);
  CHECK(kv.pages(1).empty());
}

TEST_CASE("kv_cache: pages of different sequences never alias") {
  kv_cache kv(geometry(6));
  REQUIRE(kv.append(1, 10) == errc::ok);
  REQUIRE(kv.append(2, 10) == errc::ok);
  std::vector<int32_t> all(kv.pages(1).begin(), kv.pages(1).end());
  all.insert(all.end(), kv.pages(2).begin(), kv.pages(2).end());
  std::sort(all.begin(), all.end());
  CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
  // Write distinct values through row() and read them back.
  const size_t row_floats = 2 * 4;
  for (int64_t s : {1, 2})
    for (int64_t l = 0; l < 3; ++l)
      for (int kind = 0; kind < 2; ++kind)
        for (int64_t p = 0; p < 10; ++p) {
          float v[8];
          std::fill(v, v + 8, static_cast<float>(s * 1000 + l * 100 + kind * 50 + p));
          std::memcpy(kv.row(s, l, kind, p), v, sizeof v);
        }
  for (int64_t s : {1, 2})
    for (int64_t l = 0; l < 3; ++l)
      for (int kind = 0; kind < 2; ++kind)
        for (int64_t p = 0; p < 10; ++p) {
          float v[8];
          std::memcpy(v, kv.row(s, l, kind, p), row_floats * 4);
          CHECK(v[7] == static_cast<float>(s * 1000 + l * 100 + kind * 50 + p));
        }
}

TEST_CASE("kv_cache: gather then scatter round-trips a sequence across page sizes and dtypes") {
  for (dtype t : {dtype::dtype_f32, dtype::dtype_bf16}) {
    kv_cache a(geometry(8, t));
    kv_cache_config g = geometry(16, t);
    g.page_size = 3;
    kv_cache b(g);
    REQUIRE(a.append(1, 11) == errc::ok);
    const size_t rb = 2 * 4 * dtype_size(t);
    unsigned char next = 0;
    for (int64_t l = 0; l < 3; ++l)
      for (int kind = 0; kind < 2; ++kind)
        for (int64_t p = 0; p < 11; ++p)
          for (size_t i = 0; i < rb; ++i) reinterpret_cast<unsigned char*>(a.row(1, l, kind, p))[i] = next++;
    std::vector<std::byte> buf(a.transfer_bytes(11));
    CHECK(buf.size() == 3 * 2 * 11 * rb);
    REQUIRE(a.gather(1, buf) == errc::ok);
    // The transfer layout is [layer][k|v][token][...]: byte order equals the write order above.
    for (size_t i = 0; i < buf.size(); ++i) REQUIRE(static_cast<unsigned char>(buf[i]) == static_cast<unsigned char>(i));
    REQUIRE(b.scatter(9, buf, 11) == errc::ok);
    CHECK(b.length(9) == 11);
    CHECK(b.pages(9).size() == 4);
    for (int64_t l = 0; l < 3; ++l)
      for (int kind = 0; kind < 2; ++kind)
        for (int64_t p = 0; p < 11; ++p) CHECK(std::memcmp(a.row(1, l, kind, p), b.row(9, l, kind, p), rb) == 0);
    CHECK(b.scatter(9, buf, 11) == errc::errc_invalid_argument);            // already held
    CHECK(b.scatter(10, std::span(buf).first(10), 11) == errc::errc_invalid_argument);  // short buffer
    CHECK(a.gather(5, buf) == errc::errc_unknown_sequence);
  }
}

TEST_CASE("kv_cache: scatter that does not fit leaves the cache unchanged") {
  kv_cache kv(geometry(2));
  std::vector<std::byte> buf(kv.transfer_bytes(9));
  CHECK(kv.scatter(1, buf, 9) == errc::errc_kv_exhausted);
  CHECK_FALSE(kv.contains(1));
  CHECK(kv.free_pages() == 2);
}

TEST_CASE("kv_cache: a bad geometry is refused with a message") {
  CHECK_THROWS_AS(kv_cache(geometry(0)), troupe::error);
  kv_cache_config g = geometry(4);
  g.page_size = 0;
  CHECK_THROWS_AS(kv_cache{g}, troupe::error);
  CHECK(kv_cache_pages_for_bytes(geometry(0), 3 * 2 * 4 * 4 * 2 * 4 * 10) == 10);
}
