#include <doctest/doctest.h>

#include <numeric>
#include <vector>

#include "config/errors.hpp"
#include "kernels/device_buffer.hpp"

TEST_CASE("device_buffer round-trips bytes and checks bounds") {
  std::vector<int> host(1000);
  std::iota(host.begin(), host.end(), -7);
  troupe::device_buffer b(host.size() * sizeof(int));
  b.upload(host.data(), host.size() * sizeof(int));
  std::vector<int> back(host.size(), 0);
  b.download(back.data(), back.size() * sizeof(int));
  CHECK(back == host);
  CHECK_THROWS_AS(b.upload(host.data(), 8, b.size() - 4), troupe::error);
  troupe::device_buffer moved = std::move(b);
  CHECK(b.data() == nullptr);
  CHECK(moved.size() == host.size() * sizeof(int));
}
