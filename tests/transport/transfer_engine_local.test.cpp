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

TEST_CASE("transfer_engine local: send and recv match by peer and tag, in either order") {
  auto a = troupe::transfer_engine_local();
  auto b = troupe::transfer_engine_local();
  CHECK(a->address().engine != b->address().engine);
  std::vector<unsigned char> src(100);
  std::iota(src.begin(), src.end(), 1);
  std::vector<unsigned char> dst(200, 0);
  errc sent = errc::errc_io, got = errc::errc_io;
  size_t n = 0;
  b->recv(a->address(), 5, dst.data(), dst.size(), [&](errc e, size_t m) { got = e, n = m; });
  CHECK(got == errc::errc_io);  // waits
  a->send(b->address(), 5, src.data(), src.size(), [&](errc e, size_t) { sent = e; });
  CHECK(sent == errc::ok);
  CHECK(got == errc::ok);
  CHECK(n == 100);
  CHECK(std::equal(src.begin(), src.end(), dst.begin()));

  sent = got = errc::errc_io;
  a->send(b->address(), 6, src.data(), 10, [&](errc e, size_t) { sent = e; });
  CHECK(sent == errc::errc_io);  // waits for its recv
  b->recv(a->address(), 7, dst.data(), dst.size(), [&](errc e, size_t) { got = e; });
  CHECK(got == errc::errc_io);  // another tag: no match
  b->disconnect(a->address());  // the recv from a fails
  CHECK(got == troupe::transfer_error::peer_lost);
  errc small = errc::ok;
  b->recv(a->address(), 6, dst.data(), 5, [&](errc e, size_t) { small = e; });
  CHECK(small == troupe::transfer_error::bad_request);  // 10 bytes do not fit in 5
  CHECK(sent == troupe::transfer_error::bad_request);

  errc left = errc::ok;
  a->send(b->address(), 8, src.data(), 10, [&](errc e, size_t) { left = e; });
  b.reset();  // the peer goes away: the waiting send loses it
  CHECK(left == troupe::transfer_error::peer_lost);
  errc mine = errc::ok;
  a->recv(a->address(), 9, dst.data(), 10, [&](errc e, size_t) { mine = e; });
  a.reset();  // its own waiting operations are cancelled
  CHECK(mine == troupe::transfer_error::cancelled);
}
