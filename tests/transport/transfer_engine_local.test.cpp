#include <doctest/doctest.h>

#include <numeric>
#include <vector>

#include "transport/transfer_engine.hpp"

using troupe::errc;

TEST_CASE("transfer_engine local: read and write registered memory, reject bad ranges") {
  auto te = troupe::transfer_engine_local();
  std::vector<unsigned char> region(1000);
  std::iota(region.begin(), region.end(), 0);
  const troupe::memory_descriptor d = te->register_memory(region.data(), region.size());
  CHECK(d.bytes == 1000);

  std::vector<unsigned char> buf(100, 0);
  errc got = errc::errc_io;
  size_t moved = 0;
  te->read(d, 200, buf.data(), buf.size(), [&](errc e, size_t n) { got = e, moved = n; });
  CHECK(got == errc::ok);
  CHECK(moved == 100);
  CHECK(buf[0] == static_cast<unsigned char>(200));
  CHECK(buf[99] == static_cast<unsigned char>(299 % 256));

  std::vector<unsigned char> src(10, 7);
  te->write(d, 990, src.data(), src.size(), [&](errc e, size_t) { got = e; });
  CHECK(got == errc::ok);
  CHECK(region[999] == 7);

  te->read(d, 995, buf.data(), 10, [&](errc e, size_t n) { got = e, moved = n; });
  CHECK(got == errc::errc_invalid_argument);
  CHECK(moved == 0);
  te->read(d, SIZE_MAX, buf.data(), 2, [&](errc e, size_t) { got = e; });
  CHECK(got == errc::errc_invalid_argument);

  CHECK(te->unregister_memory(d.region) == errc::ok);
  te->read(d, 0, buf.data(), 1, [&](errc e, size_t) { got = e; });
  CHECK(got == errc::errc_invalid_argument);
  CHECK(te->unregister_memory(d.region) == errc::errc_invalid_argument);
}
