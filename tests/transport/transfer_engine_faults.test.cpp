// The fault injector around the local engine and the ucx engine (tcp and
// shared memory): every injected fault (drop, delay, fail after N bytes, kill
// the link) ends the affected operations with an error within a bounded time,
// each done is called once, the peer's own operations fail through its real
// timeout and peer-loss paths, and afterwards nothing is held, pending or
// registered in the injector or the engines beneath it.
#include "transport/transfer_engine_faults.hpp"

#include <doctest/doctest.h>

#include <cstring>

#include "transfer_engine_test_util.hpp"
#include "transport/transfer_engine_ucx.hpp"

using namespace troupe;
using namespace te_test;

namespace {

constexpr auto timeout = 300ms;

// A faulty engine `a` (the injector) and a plain peer `b`.
struct fixture {
  std::unique_ptr<transfer_fault_injector> a;
  std::unique_ptr<transfer_engine> b;
  std::string name;

  explicit fixture(int which) {
    auto make = [&](const char* n) -> std::unique_ptr<transfer_engine> {
      if (which == 0) return transfer_engine_local();
      ucx_engine_options o;
      o.name = n;
      o.advertised_host = "127.0.0.1";  // loopback only: tests beside these may add and remove interfaces
      o.shared_memory = which == 2;
      o.timeout = timeout;
      return transfer_engine_ucx(o);
    };
    name = which == 0 ? "local" : which == 1 ? "ucx tcp" : "ucx shared memory";
    a = std::make_unique<transfer_fault_injector>(make("a"), transfer_faults{}, timeout);
    b = make("b");
  }
  // Nothing left anywhere (the test unregistered its regions).
  void check_clean() {
    check_idle(*a);
    check_idle(a->inner());
    check_idle(*b);
    CHECK(a->fault_stats().held == 0);
    CHECK(a->stats().registrations == 0);
    CHECK(b->stats().registrations == 0);
  }
};

double ms_since(steady::time_point t0, steady::time_point t) {
  return std::chrono::duration<double, std::milli>(t - t0).count();
}

}  // namespace

TEST_CASE("transfer_engine faults: dropped operations end with timeout; the peer's recv times out on its own") {
  for (int which : {0, 1, 2}) {
    fixture f(which);
    CAPTURE(f.name);
    std::vector<unsigned char> region = patterned(4096, 1), buf(4096);
    const memory_descriptor d = f.b->register_memory(region.data(), region.size());
    f.a->set_faults({1.0, 0ms, UINT64_MAX, 1});
    const auto t0 = steady::now();
    completion r, w, s, v, peer;
    f.a->read(d, 0, buf.data(), 100, r.done());
    f.a->write(d, 0, buf.data(), 100, w.done());
    f.a->send(f.b->address(), 1, buf.data(), 100, s.done());
    f.a->recv(f.b->address(), 2, buf.data(), 100, v.done());
    if (which != 0) f.b->recv(f.a->address(), 1, buf.data(), 100, peer.done());  // the dropped send never comes
    for (completion* c : {&r, &w, &s, &v}) {
      REQUIRE(c->wait(5s));
      CHECK(c->e == transfer_error::timeout);
      CHECK(ms_since(t0, c->at) >= 290.0);
      CHECK(ms_since(t0, c->at) < 1500.0);
    }
    if (which != 0) {
      REQUIRE(peer.wait(5s));
      CHECK(peer.e == transfer_error::timeout);
    }
    CHECK(region == patterned(4096, 1));  // the dropped write never arrived
    CHECK(f.a->fault_stats().dropped == 4);
    CHECK(f.a->stats().timed_out == 4);
    CHECK(f.a->inner().stats().started == 0);
    CHECK(f.b->unregister_memory(d.region) == errc::ok);
    f.check_clean();
  }
}

TEST_CASE("transfer_engine faults: with half the operations dropped, the rest arrive intact") {
  for (int which : {0, 1, 2}) {
    fixture f(which);
    CAPTURE(f.name);
    std::vector<unsigned char> region = patterned(1u << 20, 2);
    const memory_descriptor d = f.b->register_memory(region.data(), region.size());
    f.a->set_faults({0.5, 0ms, UINT64_MAX, 7});
    std::vector<std::vector<unsigned char>> bufs(60, std::vector<unsigned char>(5000));
    std::vector<completion> cs(60);
    for (size_t i = 0; i < 60; ++i) f.a->read(d, i * 9001, bufs[i].data(), 5000, cs[i].done());
    size_t ok = 0, timed_out = 0;
    for (size_t i = 0; i < 60; ++i) {
      REQUIRE(cs[i].wait(5s));
      if (cs[i].e == errc::ok) {
        ++ok;
        CHECK(std::memcmp(bufs[i].data(), region.data() + i * 9001, 5000) == 0);
      } else {
        ++timed_out;
        CHECK(cs[i].e == transfer_error::timeout);
      }
    }
    CHECK(timed_out == f.a->fault_stats().dropped);
    CHECK(ok + timed_out == 60);
    CHECK(ok > 10);
    CHECK(timed_out > 10);
    CHECK(f.b->unregister_memory(d.region) == errc::ok);
    f.check_clean();
  }
}

TEST_CASE("transfer_engine faults: a delay shorter than the timeout only delays; a longer one times out") {
  for (int which : {0, 1, 2}) {
    fixture f(which);
    CAPTURE(f.name);
    std::vector<unsigned char> region = patterned(1u << 16, 3), buf(1u << 16);
    const memory_descriptor d = f.b->register_memory(region.data(), region.size());
    f.a->set_faults({0.0, 80ms, UINT64_MAX, 1});
    auto t0 = steady::now();
    auto [e, n] = run([&](transfer_done done) { f.a->read(d, 0, buf.data(), buf.size(), std::move(done)); });
    CHECK(e == errc::ok);
    CHECK(n == buf.size());
    CHECK(buf == region);
    CHECK(ms_since(t0, steady::now()) >= 79.0);
    f.a->set_faults({0.0, 2000ms, UINT64_MAX, 1});
    t0 = steady::now();
    completion late;
    f.a->write(d, 0, buf.data(), 10, late.done());
    REQUIRE(late.wait(5s));
    CHECK(late.e == transfer_error::timeout);
    CHECK(ms_since(t0, late.at) < 1000.0);
    CHECK(f.a->fault_stats().delayed == 2);
    CHECK(f.b->unregister_memory(d.region) == errc::ok);
    f.check_clean();
  }
}

TEST_CASE("transfer_engine faults: the link fails after N bytes; the crossing write moves only what fits") {
  for (int which : {0, 1, 2}) {
    fixture f(which);
    CAPTURE(f.name);
    std::vector<unsigned char> region(20000, 0);
    const memory_descriptor d = f.b->register_memory(region.data(), region.size());
    f.a->set_faults({0.0, 0ms, 10000, 1});
    const std::vector<unsigned char> src = patterned(4096, 4);
    for (size_t i = 0; i < 2; ++i)
      CHECK(run([&](transfer_done done) { f.a->write(d, i * 4096, src.data(), 4096, std::move(done)); }) ==
            std::pair<errc, size_t>{errc::ok, 4096});
    // 8192 passed; 1808 more fit.
    auto [e, n] = run([&](transfer_done done) { f.a->write(d, 8192, src.data(), 4096, std::move(done)); });
    CHECK(e == transfer_error::peer_lost);
    CHECK(n == 1808);
    CHECK(std::memcmp(region.data() + 8192, src.data(), 1808) == 0);
    CHECK(region[8192 + 1808] == 0);  // nothing past the limit
    CHECK(f.a->fault_stats().truncated == 1);
    // The link is dead now: everything fails at once.
    std::vector<unsigned char> buf(10);
    const auto t0 = steady::now();
    CHECK(run([&](transfer_done done) { f.a->read(d, 0, buf.data(), 10, std::move(done)); }).first ==
          transfer_error::peer_lost);
    CHECK(run([&](transfer_done done) { f.a->send(f.b->address(), 1, buf.data(), 10, std::move(done)); }).first ==
          transfer_error::peer_lost);
    CHECK(ms_since(t0, steady::now()) < 100.0);
    CHECK(f.a->fault_stats().refused == 2);
    f.a->heal();
    f.a->set_faults({});
    CHECK(run([&](transfer_done done) { f.a->read(d, 8192, buf.data(), 10, std::move(done)); }).first == errc::ok);
    CHECK(std::memcmp(buf.data(), src.data(), 10) == 0);
    CHECK(f.b->unregister_memory(d.region) == errc::ok);
    f.check_clean();
  }
}

TEST_CASE("transfer_engine faults: killing the link fails held and in-flight operations through the engine") {
  for (int which : {0, 1, 2}) {
    fixture f(which);
    CAPTURE(f.name);
    std::vector<unsigned char> big = patterned(1u << 20, 5), buf(1u << 20);
    // In flight in the wrapped engine: a send no recv matches, and a recv no send feeds.
    completion s, r, held;
    f.a->send(f.b->address(), 1, big.data(), big.size(), s.done());
    f.a->recv(f.b->address(), 2, buf.data(), buf.size(), r.done());
    f.a->set_faults({0.0, 5000ms, UINT64_MAX, 1});
    f.a->send(f.b->address(), 3, big.data(), 10, held.done());  // held by the injector
    std::this_thread::sleep_for(50ms);
    const auto t0 = steady::now();
    f.a->kill_link();
    for (completion* c : {&s, &held}) {
      REQUIRE(c->wait(5s));
      CHECK(c->e == transfer_error::peer_lost);
      CHECK(ms_since(t0, c->at) < 250.0);
    }
    // A recv is not tied to a connection until a send matches it: it fails
    // through disconnect (local) or its own timeout (ucx).
    REQUIRE(r.wait(5s));
    CHECK(r.e == (which == 0 ? transfer_error::peer_lost : transfer_error::timeout));
    CHECK(run([&](transfer_done done) { f.a->send(f.b->address(), 4, big.data(), 10, std::move(done)); }).first ==
          transfer_error::peer_lost);
    // Healed, the next operation connects again.
    f.a->heal();
    f.a->set_faults({});
    completion s2, r2;
    f.b->recv(f.a->address(), 5, buf.data(), buf.size(), r2.done());
    f.a->send(f.b->address(), 5, big.data(), big.size(), s2.done());
    REQUIRE(s2.wait(5s));
    REQUIRE(r2.wait(5s));
    CHECK(s2.e == errc::ok);
    CHECK(r2.e == errc::ok);
    CHECK(buf == big);
    f.check_clean();
  }
}

TEST_CASE("transfer_engine faults: destroying the injector cancels what it holds, each done once") {
  for (int which : {0, 1}) {
    completion dropped, delayed;
    {
      fixture f(which);
      CAPTURE(f.name);
      std::vector<unsigned char> buf(10);
      f.a->set_faults({1.0, 0ms, UINT64_MAX, 1});
      f.a->send(f.b->address(), 1, buf.data(), 10, dropped.done());
      f.a->set_faults({0.0, 10000ms, UINT64_MAX, 1});
      f.a->send(f.b->address(), 1, buf.data(), 10, delayed.done());
      CHECK(f.a->fault_stats().held == 2);
      CHECK(f.a->stats().pending == 2);
    }
    for (completion* c : {&dropped, &delayed}) {
      REQUIRE(c->wait(1ms));
      CHECK(c->calls == 1);
      CHECK(c->e == transfer_error::cancelled);
    }
  }
}
