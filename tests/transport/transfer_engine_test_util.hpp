// Helpers shared by the transfer_engine tests: waiting for one operation's
// completion (with a cap, so a hang fails the test instead of blocking it),
// patterned buffers, and a check that an engine holds nothing any more.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "transport/transfer_engine.hpp"

namespace te_test {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

/// One operation's completion; counts calls so a second call is caught.
struct completion {
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  troupe::errc e = troupe::errc::ok;
  size_t bytes = 0;
  steady::time_point at;

  troupe::transfer_done done() {
    return [this](troupe::errc err, size_t n) {
      std::lock_guard<std::mutex> lock(mu);
      ++calls;
      e = err;
      bytes = n;
      at = steady::now();
      cv.notify_all();
    };
  }
  /// Waits for the first call; false when none came within the cap.
  bool wait(std::chrono::milliseconds cap = 30s) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, cap, [&] { return calls > 0; });
  }
};

/// Byte i of a pattern that differs per seed and is not periodic at powers of two.
inline unsigned char pattern(size_t i, uint64_t seed) { return static_cast<unsigned char>((i * 131 + seed * 7 + (i >> 9)) & 0xff); }

inline std::vector<unsigned char> patterned(size_t n, uint64_t seed) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = pattern(i, seed);
  return v;
}

/// Runs one operation to completion; returns its errc and bytes (errc_io and
/// a failed CHECK when it did not complete within the cap).
template <class Start>
std::pair<troupe::errc, size_t> run(Start start, std::chrono::milliseconds cap = 30s) {
  completion c;
  start(c.done());
  const bool finished = c.wait(cap);
  CHECK_MESSAGE(finished, "operation did not complete");
  if (!finished) return {troupe::errc::errc_io, 0};
  std::this_thread::sleep_for(1ms);  // a second call would land here
  std::lock_guard<std::mutex> lock(c.mu);
  CHECK(c.calls == 1);
  return {c.e, c.bytes};
}

/// Polls a condition (counters that no callback signals).
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds cap = 10s) {
  const auto end = steady::now() + cap;
  while (!pred()) {
    if (steady::now() > end) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

/// Checks that nothing is pending or served any more (registrations are the caller's to check).
inline void check_idle(const troupe::transfer_engine& te) {
  CHECK(eventually([&] {
    const auto s = te.stats();
    return s.pending == 0 && s.serving == 0;
  }));
  const auto s = te.stats();
  CHECK(s.pending == 0);
  CHECK(s.serving == 0);
  CHECK(s.started == s.completed + s.failed + s.timed_out + s.peer_lost + s.cancelled);
}

}  // namespace te_test
