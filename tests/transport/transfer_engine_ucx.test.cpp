// The ucx transfer engine over real UCX on 127.0.0.1: two engines in one
// process and in two processes, over tcp only and over shared memory (forced
// through the options), bytes checked at 1 B, 4 KiB, 64 KiB + 1 and 64 MiB at
// unaligned offsets; send/recv matching; refusals (range, token, stale
// region, recv too small); timeouts; a peer killed or stopped in the middle;
// descriptors through the wire codec; idle CPU. Every test ends by checking
// that nothing is pending and registrations are back to zero. Peer processes
// are this binary started again (tests/child_process.hpp).
#include "transport/shared_host_memory.hpp"
#include "transport/transfer_engine_ucx.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <ctime>

#include "../child_process.hpp"
#include "transfer_engine_test_util.hpp"
#include "transport/wire_codec.hpp"

using namespace troupe;
using namespace te_test;

namespace {

ucx_engine_options options(const std::string& name, bool shm, std::chrono::milliseconds timeout = 10s,
                           bool rma = false) {
  ucx_engine_options o;
  o.name = name;
  o.advertised_host = "127.0.0.1";  // loopback only: tests beside these may add and remove interfaces
  o.shared_memory = shm;
  o.timeout = timeout;
  o.rma = rma;
  return o;
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Moves one region's worth of checks between `a` (requester) and `b` (owner).
// With rma the owner's regions carry an rkey and `a` uses ucp_get/put on them.
void check_read_write(transfer_engine& a, transfer_engine& b, bool shm, bool rma) {
  const size_t big = 64u << 20;
  std::vector<unsigned char> region = patterned(big + 4096, 1);
  const memory_descriptor d = b.register_memory(region.data(), region.size());
  CHECK(d.backend == "ucx");
  CHECK(d.owner.engine == b.address().engine);
  CHECK(d.remote_key.empty() == !(shm && rma));

  for (const size_t n : {size_t{1}, size_t{4096}, size_t{(64u << 10) + 1}, big}) {
    for (const size_t offset : {size_t{0}, size_t{3}, size_t{4095}}) {
      CAPTURE(n);
      CAPTURE(offset);
      std::vector<unsigned char> buf(n + 2, 0xee);
      auto [e, moved] = run([&](transfer_done done) { a.read(d, offset, buf.data() + 1, n, std::move(done)); });
      REQUIRE(e == errc::ok);
      CHECK(moved == n);
      CHECK(std::memcmp(buf.data() + 1, region.data() + offset, n) == 0);
      CHECK(buf[0] == 0xee);  // nothing written around the destination
      CHECK(buf[n + 1] == 0xee);

      const std::vector<unsigned char> src = patterned(n, 1000 + n + offset);
      const unsigned char before = offset > 0 ? region[offset - 1] : 0, after = region[offset + n];
      std::tie(e, moved) = run([&](transfer_done done) { a.write(d, offset, src.data(), n, std::move(done)); });
      REQUIRE(e == errc::ok);
      CHECK(moved == n);
      CHECK(std::memcmp(region.data() + offset, src.data(), n) == 0);
      if (offset > 0) CHECK(region[offset - 1] == before);
      CHECK(region[offset + n] == after);
    }
  }
  const auto s = a.stats();
  if (shm) {
    CHECK(s.bytes_shared_memory > 2 * big);
    CHECK(s.bytes_network == 0);
  } else {
    CHECK(s.bytes_network > 2 * big);
    CHECK(s.bytes_shared_memory == 0);
  }

  // Refusals: out of range (checked before anything moves), and, where the
  // owner serves (all but rma), a wrong token and a stale region.
  std::vector<unsigned char> buf(16);
  CHECK(run([&](transfer_done done) { a.read(d, d.bytes - 1, buf.data(), 2, std::move(done)); }).first ==
        transfer_error::bad_request);
  CHECK(run([&](transfer_done done) { a.write(d, SIZE_MAX, buf.data(), 2, std::move(done)); }).first ==
        transfer_error::bad_request);
  memory_descriptor foreign = d;
  foreign.backend = "local";
  CHECK(run([&](transfer_done done) { a.read(foreign, 0, buf.data(), 2, std::move(done)); }).first ==
        transfer_error::bad_request);
  CHECK(run([&](transfer_done done) { a.read(d, d.bytes, buf.data(), 0, std::move(done)); }).first == errc::ok);
  if (!rma) {
    memory_descriptor forged = d;
    forged.token ^= 1;
    CHECK(run([&](transfer_done done) { a.read(forged, 0, buf.data(), 2, std::move(done)); }).first ==
          transfer_error::bad_request);
    CHECK(run([&](transfer_done done) { a.write(forged, 0, buf.data(), 2, std::move(done)); }).first ==
          transfer_error::bad_request);
  }
  CHECK(b.unregister_memory(d.region) == errc::ok);
  CHECK(b.unregister_memory(d.region) == errc::errc_invalid_argument);
  if (!rma) {
    CHECK(run([&](transfer_done done) { a.read(d, 0, buf.data(), 2, std::move(done)); }).first ==
          transfer_error::bad_request);
    std::vector<unsigned char> large((1u << 20), 1);  // rendezvous payload refused unfetched
    CHECK(run([&](transfer_done done) { a.write(d, 0, large.data(), large.size(), std::move(done)); }).first ==
          transfer_error::bad_request);
  }
  check_idle(a);
  check_idle(b);
  CHECK(b.stats().registrations == 0);
}

// send/recv both ways between a and b, recv posted before and after the send.
void check_send_recv(transfer_engine& a, transfer_engine& b) {
  for (const size_t n : {size_t{0}, size_t{1}, size_t{4096}, size_t{(64u << 10) + 1}, size_t{64u << 20}}) {
    for (const bool recv_first : {true, false}) {
      CAPTURE(n);
      CAPTURE(recv_first);
      const std::vector<unsigned char> src = patterned(n, n + 5);
      std::vector<unsigned char> dst(n + 1, 0xee);
      completion sent, got;
      const uint64_t tag = n * 2 + recv_first;
      if (recv_first) b.recv(a.address(), tag, dst.data(), n + 1, got.done());
      a.send(b.address(), tag, src.data(), n, sent.done());
      if (!recv_first) {
        std::this_thread::sleep_for(5ms);  // the send arrives first and waits
        b.recv(a.address(), tag, dst.data(), n + 1, got.done());
      }
      REQUIRE(sent.wait());
      REQUIRE(got.wait());
      CHECK(sent.e == errc::ok);
      CHECK(got.e == errc::ok);
      CHECK(got.bytes == n);
      CHECK(sent.bytes == n);
      CHECK((n == 0 || std::memcmp(dst.data(), src.data(), n) == 0));  // src.data() is null when n == 0
      CHECK(dst[n] == 0xee);
    }
  }
  // Tags match out of order; the way back works on the same connection.
  std::vector<unsigned char> x(10, 1), y(100000, 2), rx(10), ry(100000);
  completion s1, s2, r1, r2;
  a.recv(b.address(), 7, ry.data(), ry.size(), r2.done());
  a.recv(b.address(), 6, rx.data(), rx.size(), r1.done());
  b.send(a.address(), 6, x.data(), x.size(), s1.done());
  b.send(a.address(), 7, y.data(), y.size(), s2.done());
  for (completion* c : {&s1, &s2, &r1, &r2}) {
    REQUIRE(c->wait());
    CHECK(c->e == errc::ok);
  }
  CHECK(rx == x);
  CHECK(ry == y);
  // A message larger than the recv fails both sides.
  for (const size_t n : {size_t{100}, size_t{1u << 20}}) {
    std::vector<unsigned char> big(n, 3), small(10);
    completion s, r;
    b.recv(a.address(), 99, small.data(), small.size(), r.done());
    a.send(b.address(), 99, big.data(), big.size(), s.done());
    REQUIRE(s.wait());
    REQUIRE(r.wait());
    CHECK(s.e == transfer_error::bad_request);
    CHECK(r.e == transfer_error::bad_request);
  }
  check_idle(a);
  check_idle(b);
}

// An engine in a child process (the hidden case "transfer_engine ucx: child
// engine"): it registers a region of `bytes` (pattern seed 1), reports its
// descriptor, learns this process's address from tell(), and echoes every
// message tagged 1 back tagged 2. It ends when this goes away.
struct child_engine {
  test_child::child_process proc;
  memory_descriptor region;

  /// mapped: the region is a shared_host_buffer, which same-host peers map.
  child_engine(bool shm, size_t bytes, std::chrono::milliseconds timeout = 10s, bool mapped = false)
      : proc("transfer_engine ucx: child engine*",
             {std::string("TROUPE_CHILD_SHM=") + (shm ? "1" : "0"), "TROUPE_CHILD_BYTES=" + std::to_string(bytes),
              "TROUPE_CHILD_TIMEOUT_MS=" + std::to_string(timeout.count()),
              std::string("TROUPE_CHILD_MAPPED=") + (mapped ? "1" : "0")}) {
    REQUIRE(wire_unpack(test_child::read_frame(proc.from), region, nullptr) == errc::ok);
  }
  void tell(const engine_address& parent) {
    engine_address a = parent;
    REQUIRE(test_child::write_frame(proc.to, wire_pack(a)));
  }
  /// Kills it and returns once it is gone.
  void kill_and_reap() { proc.kill_and_reap(); }
};

}  // namespace

TEST_CASE("transfer_engine ucx: descriptors and addresses survive the wire codec") {
  memory_descriptor d;
  d.backend = "ucx";
  d.region = 42;
  d.bytes = 1ull << 40;
  d.remote_key = std::string("\0\x01\xffkey", 6);
  d.address = 0x7f0000001000;
  d.token = 0xdeadbeefcafef00d;
  d.owner.engine = 77;
  d.owner.host = "gpu-7";
  d.owner.shared_memory = true;
  d.owner.host_id = "boot";
  d.owner.pid = 1234;
  d.owner.worker_address = std::string(300, '\x07');
  d.owner.device = 1;
  d.owner.start_time = 123456789;
  d.owner.pid_namespace = 4026531836;
  d.mapped_fd = 12;
  d.mapped_inode = 987654321;
  d.mapped_offset = 4096;
  memory_descriptor back;
  REQUIRE(wire_unpack(wire_pack(d), back, nullptr) == errc::ok);
  CHECK(back.backend == d.backend);
  CHECK(back.region == d.region);
  CHECK(back.bytes == d.bytes);
  CHECK(back.remote_key == d.remote_key);
  CHECK(back.address == d.address);
  CHECK(back.token == d.token);
  CHECK(back.owner.engine == d.owner.engine);
  CHECK(back.owner.host == d.owner.host);
  CHECK(back.owner.shared_memory);
  CHECK(back.owner.host_id == d.owner.host_id);
  CHECK(back.owner.pid == d.owner.pid);
  CHECK(back.owner.worker_address == d.owner.worker_address);
  CHECK(back.owner.device == d.owner.device);
  CHECK(back.owner.start_time == d.owner.start_time);
  CHECK(back.owner.pid_namespace == d.owner.pid_namespace);
  CHECK((back.mapped_fd == 12 && back.mapped_inode == 987654321 && back.mapped_offset == 4096));
}

TEST_CASE("transfer_engine ucx: read and write in one process, tcp, shared memory and rma, 1 B to 64 MiB") {
  for (const auto& [shm, rma] : {std::pair{false, false}, std::pair{true, false}, std::pair{true, true}}) {
    CAPTURE(shm);
    CAPTURE(rma);
    auto a = transfer_engine_ucx(options("a", shm, 10s, rma));
    auto b = transfer_engine_ucx(options("b", shm, 10s, rma));
    check_read_write(*a, *b, shm, rma);
    CHECK(a->stats().connections == 1);
  }
}

TEST_CASE("transfer_engine ucx: two engines that call each other at once settle on one connection") {
  for (int round = 0; round < 10; ++round) {
    CAPTURE(round);
    auto a = transfer_engine_ucx(options("a", round % 2 == 0));
    auto b = transfer_engine_ucx(options("b", round % 2 == 0));
    std::vector<unsigned char> ra = patterned(4096, 1), rb = patterned(4096, 2), buf_a(4096), buf_b(4096);
    const memory_descriptor da = a->register_memory(ra.data(), ra.size());
    const memory_descriptor db = b->register_memory(rb.data(), rb.size());
    completion x, y;
    a->read(db, 0, buf_a.data(), buf_a.size(), x.done());  // both connect now
    b->read(da, 0, buf_b.data(), buf_b.size(), y.done());
    REQUIRE(x.wait(5s));
    REQUIRE(y.wait(5s));
    CHECK(x.e == errc::ok);
    CHECK(y.e == errc::ok);
    CHECK(buf_a == rb);
    CHECK(buf_b == ra);
    // Later operations in both directions take the one that won.
    for (int i = 0; i < 5; ++i) {
      CHECK(run([&](transfer_done done) { a->read(db, 0, buf_a.data(), 64, std::move(done)); }).first == errc::ok);
      CHECK(run([&](transfer_done done) { b->read(da, 0, buf_b.data(), 64, std::move(done)); }).first == errc::ok);
    }
    CHECK(eventually([&] { return a->stats().peers == 1 && b->stats().peers == 1; }));
    check_idle(*a);
    check_idle(*b);
  }
}

TEST_CASE("transfer_engine ucx: shared memory only when both engines offer it") {
  auto a = transfer_engine_ucx(options("a", true));
  auto b = transfer_engine_ucx(options("b", false));
  std::vector<unsigned char> region = patterned(1u << 20, 1), buf(1u << 20);
  const memory_descriptor d = b->register_memory(region.data(), region.size());
  CHECK(run([&](transfer_done done) { a->read(d, 0, buf.data(), buf.size(), std::move(done)); }).first == errc::ok);
  CHECK(buf == region);
  CHECK(a->stats().bytes_network == buf.size());
  CHECK(a->stats().bytes_shared_memory == 0);
  CHECK(b->unregister_memory(d.region) == errc::ok);
  check_idle(*a);
}

TEST_CASE("transfer_engine ucx: send and recv in one process, tcp and shared memory") {
  for (const bool shm : {false, true}) {
    CAPTURE(shm);
    auto a = transfer_engine_ucx(options("a", shm));
    auto b = transfer_engine_ucx(options("b", shm));
    check_send_recv(*a, *b);
  }
}

TEST_CASE("transfer_engine ucx: many concurrent operations from several threads each complete once") {
  auto a = transfer_engine_ucx(options("a", true));
  auto b = transfer_engine_ucx(options("b", false));  // a tcp pair and...
  auto c = transfer_engine_ucx(options("c", true));   // ...a shared-memory pair
  std::vector<unsigned char> rb = patterned(1u << 20, 3), rc = patterned(1u << 20, 4);
  const memory_descriptor db = b->register_memory(rb.data(), rb.size());
  const memory_descriptor dc = c->register_memory(rc.data(), rc.size());
  std::atomic<int> ok{0}, calls{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::vector<std::vector<unsigned char>> bufs(200, std::vector<unsigned char>(1000));
      std::atomic<int> mine{0};
      for (int i = 0; i < 200; ++i) {
        const memory_descriptor& d = (i + t) % 2 ? db : dc;
        const size_t off = static_cast<size_t>(i) * 997 % 1000000;
        a->read(d, off, bufs[i].data(), 1000, [&, i, off, d](errc e, size_t n) {
          const auto& src = d.region == db.region && d.owner.engine == db.owner.engine ? rb : rc;
          if (e == errc::ok && n == 1000 && std::memcmp(bufs[i].data(), src.data() + off, 1000) == 0) ++ok;
          ++calls, ++mine;
        });
      }
      eventually([&] { return mine == 200; }, 30s);
    });
  for (auto& th : threads) th.join();
  CHECK(calls == 800);
  CHECK(ok == 800);
  CHECK(b->unregister_memory(db.region) == errc::ok);
  CHECK(c->unregister_memory(dc.region) == errc::ok);
  check_idle(*a);
  CHECK(a->stats().started == 800);
}

TEST_CASE("transfer_engine ucx: unanswered operations time out, an absent peer fails fast") {
  for (const bool shm : {false, true}) {
    CAPTURE(shm);
    auto a = transfer_engine_ucx(options("a", shm, 300ms));
    auto b = transfer_engine_ucx(options("b", shm, 300ms));
    std::vector<unsigned char> buf(1u << 20);
    const auto t0 = steady::now();
    completion r, s, big;
    a->recv(b->address(), 1, buf.data(), 100, r.done());            // nobody sends
    a->send(b->address(), 2, buf.data(), 100, s.done());             // nobody receives (eager)
    a->send(b->address(), 3, buf.data(), buf.size(), big.done());    // nobody receives (rts)
    for (completion* c : {&r, &s, &big}) {
      REQUIRE(c->wait(5s));
      CHECK(c->e == transfer_error::timeout);
      const double ms = std::chrono::duration<double, std::milli>(c->at - t0).count();
      CHECK(ms >= 290.0);
      CHECK(ms < 1000.0);
    }
    CHECK(a->stats().timed_out == 3);
    // A recv posted after the sender gave up does not match the stale send.
    completion late;
    b->recv(a->address(), 3, buf.data(), buf.size(), late.done());
    REQUIRE(late.wait(5s));
    CHECK(late.e == transfer_error::timeout);
    check_idle(*a);
    check_idle(*b);
  }
  // Nobody listens at the address: the connection is refused at once.
  auto a = transfer_engine_ucx(options("a", false, 5s));
  engine_address nowhere = a->address();
  {
    auto gone = transfer_engine_ucx(options("gone", false));
    nowhere = gone->address();
  }
  std::vector<unsigned char> buf(10);
  const auto t0 = steady::now();
  auto [e, n] = run([&](transfer_done done) { a->send(nowhere, 1, buf.data(), buf.size(), std::move(done)); });
  CHECK(e == transfer_error::peer_lost);
  CHECK(std::chrono::duration<double>(steady::now() - t0).count() < 2.5);
  check_idle(*a);
}

TEST_CASE("transfer_engine ucx: destroying an engine cancels what it has in flight, each done once") {
  std::vector<unsigned char> buf(1u << 20);
  completion r1, r2, s1;
  {
    auto a = transfer_engine_ucx(options("a", true));
    auto b = transfer_engine_ucx(options("b", true));
    a->recv(b->address(), 1, buf.data(), buf.size(), r1.done());
    a->recv(b->address(), 2, buf.data(), buf.size(), r2.done());
    a->send(b->address(), 3, buf.data(), buf.size(), s1.done());
    std::this_thread::sleep_for(20ms);
  }
  for (completion* c : {&r1, &r2, &s1}) {
    REQUIRE(c->wait(1ms));
    CHECK(c->calls == 1);
    CHECK(c->e == transfer_error::cancelled);
  }
}

TEST_CASE("transfer_engine ucx: disconnect fails what is in flight; the next operation reconnects") {
  for (const bool shm : {false, true}) {
    CAPTURE(shm);
    auto a = transfer_engine_ucx(options("a", shm));
    auto b = transfer_engine_ucx(options("b", shm));
    std::vector<unsigned char> buf = patterned(1u << 20, 9), dst(1u << 20);
    completion pending;
    a->send(b->address(), 6, buf.data(), buf.size(), pending.done());  // waits for a recv that never comes
    std::this_thread::sleep_for(50ms);
    a->disconnect(b->address());
    REQUIRE(pending.wait(2s));
    CHECK(pending.e == transfer_error::peer_lost);
    CHECK(a->stats().peer_lost == 1);
    completion s, r;
    b->recv(a->address(), 7, dst.data(), dst.size(), r.done());
    a->send(b->address(), 7, buf.data(), buf.size(), s.done());
    REQUIRE(s.wait());
    REQUIRE(r.wait());
    CHECK(s.e == errc::ok);
    CHECK(r.e == errc::ok);
    CHECK(dst == buf);
    CHECK(a->stats().connections >= 2);
    check_idle(*a);
    check_idle(*b);
  }
}

// Run only as the child of the cases below (child_engine).
TEST_CASE("transfer_engine ucx: child engine" * doctest::skip()) {
  if (!test_child::is_child()) return;
  const bool shm = test_child::child_param("TROUPE_CHILD_SHM") == "1";
  const bool mapped = test_child::child_param("TROUPE_CHILD_MAPPED") == "1";
  const size_t bytes = std::stoull(test_child::child_param("TROUPE_CHILD_BYTES"));
  const std::chrono::milliseconds timeout{std::stoll(test_child::child_param("TROUPE_CHILD_TIMEOUT_MS"))};
  std::vector<unsigned char> memory = patterned(bytes, 1);
  std::unique_ptr<shared_host_buffer> shared;
  void* base = memory.data();
  if (mapped) {
    shared = std::make_unique<shared_host_buffer>(bytes);
    std::memcpy(shared->data(), memory.data(), bytes);
    base = shared->data();
  }
  auto te = transfer_engine_ucx(options("child", shm, timeout));
  memory_descriptor d = te->register_memory(base, bytes);
  REQUIRE(test_child::write_frame(test_child::report_fd, wire_pack(d)));
  engine_address parent;
  REQUIRE(wire_unpack(test_child::read_frame(0), parent, nullptr) == errc::ok);
  test_child::exit_with_parent();  // ends the echo loop
  std::vector<unsigned char> buf(bytes);
  for (;;) {
    completion r;
    te->recv(parent, 1, buf.data(), buf.size(), r.done());
    r.wait(std::chrono::hours(1));
    if (r.e != errc::ok) continue;
    completion s;
    te->send(parent, 2, buf.data(), r.bytes, s.done());
    s.wait(std::chrono::hours(1));
  }
}

TEST_CASE("transfer_engine ucx: two processes, tcp, shared memory and a mapped buffer: read, write, send and recv") {
  for (const int mode : {0, 1, 2}) {  // tcp; shared memory (cma); shared memory with the region in a shared_host_buffer
    const bool shm = mode > 0, mapped = mode == 2;
    CAPTURE(shm);
    CAPTURE(mapped);
    const size_t big = 64u << 20;
    child_engine child(shm, big + 7, 10s, mapped);
    CHECK((child.region.mapped_fd >= 0) == mapped);
    auto a = transfer_engine_ucx(options("parent", shm));
    child.tell(a->address());
    const memory_descriptor& d = child.region;
    CHECK(d.owner.pid == static_cast<uint32_t>(child.proc.pid));
    std::vector<unsigned char> expect = patterned(big + 7, 1);  // the child's region as this test changes it
    for (const size_t n : {size_t{1}, size_t{4096}, big}) {
      CAPTURE(n);
      const size_t offset = 7;
      std::vector<unsigned char> buf(n);
      auto [e, moved] = run([&](transfer_done done) { a->read(d, offset, buf.data(), n, std::move(done)); });
      REQUIRE(e == errc::ok);
      CHECK(moved == n);
      CHECK(std::memcmp(buf.data(), expect.data() + offset, n) == 0);
      const std::vector<unsigned char> src = patterned(n, 50 + n);
      CHECK(run([&](transfer_done done) { a->write(d, 1, src.data(), n, std::move(done)); }).first == errc::ok);
      std::copy(src.begin(), src.end(), expect.begin() + 1);
      std::vector<unsigned char> back(n);
      CHECK(run([&](transfer_done done) { a->read(d, 1, back.data(), n, std::move(done)); }).first == errc::ok);
      CHECK(back == src);
      // The child echoes tag 1 back as tag 2.
      completion s, r;
      std::vector<unsigned char> echo(n);
      a->recv(d.owner, 2, echo.data(), n, r.done());
      a->send(d.owner, 1, src.data(), n, s.done());
      REQUIRE(s.wait());
      REQUIRE(r.wait());
      CHECK(s.e == errc::ok);
      CHECK(r.e == errc::ok);
      CHECK(echo == src);
    }
    // Out of range is refused on the mapped path as on the others.
    std::vector<unsigned char> over(16);
    CHECK(run([&](transfer_done done) { a->read(d, big, over.data(), over.size(), std::move(done)); }).first ==
          transfer_error::bad_request);
    const auto st = a->stats();
    CHECK((shm ? st.bytes_shared_memory : st.bytes_network) >= 3 * big);
    CHECK((st.bytes_mapped >= 3 * big) == mapped);
    check_idle(*a);
  }
}

TEST_CASE("transfer_engine ucx: a peer process killed in the middle fails the operations in flight at once") {
  // tcp: the endpoint's error handler (mode PEER). Shared memory (mode NONE,
  // no error handler): the watch on the peer's process (process_watch.hpp),
  // for a region in heap memory (cma) and in a mapped shared buffer.
  for (const auto& [shm, mapped] : {std::pair{false, false}, std::pair{true, false}, std::pair{true, true}}) {
    CAPTURE(shm);
    CAPTURE(mapped);
    const size_t big = 256u << 20;
    child_engine child(shm, big, 10s, mapped);
    std::vector<unsigned char> buf(big);
    std::vector<std::unique_ptr<completion>> cs;  // outlive the engine, which may still call them
    auto a = transfer_engine_ucx(options("parent", shm));
    child.tell(a->address());
    // Warm the connection, then keep several large reads in flight and kill the owner.
    CHECK(run([&](transfer_done done) { a->read(child.region, 0, buf.data(), 10, std::move(done)); }).first ==
          errc::ok);
    for (int i = 0; i < 4; ++i) {
      cs.push_back(std::make_unique<completion>());
      a->read(child.region, 0, buf.data(), big, cs.back()->done());
    }
    std::this_thread::sleep_for(5ms);
    const auto t0 = steady::now();
    REQUIRE(kill(child.proc.pid, SIGKILL) == 0);
    int failed = 0;
    for (auto& c : cs) {
      REQUIRE(c->wait(5s));
      if (c->e != errc::ok) {
        ++failed;
        CHECK(c->e == transfer_error::peer_lost);
        CHECK(std::chrono::duration<double, std::milli>(c->at - t0).count() < 500.0);
      }
    }
    MESSAGE(failed << " of 4 reads in flight failed when the owner died");
    if (!mapped) CHECK(failed >= 1);  // mapped reads are memcpys, done before read() returns
    check_idle(*a);
    // A new operation towards the dead engine fails at once instead of
    // hanging, also where the region's bytes are still mapped here.
    child.kill_and_reap();
    const auto t1 = steady::now();
    CHECK(run([&](transfer_done done) { a->read(child.region, 0, buf.data(), 10, std::move(done)); }).first ==
          transfer_error::peer_lost);
    CHECK(steady::now() - t1 < 2s);
  }
}

TEST_CASE("transfer_engine ucx: a stopped peer process is answered by the timeout, not a hang (tcp)") {
  child_engine child(false, 64u << 20, 10s);
  auto a = transfer_engine_ucx(options("parent", false, 400ms));
  child.tell(a->address());
  std::vector<unsigned char> buf(64u << 20);
  CHECK(run([&](transfer_done done) { a->read(child.region, 0, buf.data(), 10, std::move(done)); }).first ==
        errc::ok);
  REQUIRE(kill(child.proc.pid, SIGSTOP) == 0);
  std::this_thread::sleep_for(50ms);  // stopped for sure
  const auto t0 = steady::now();
  completion small, large, w;
  a->read(child.region, 0, buf.data(), 100, small.done());
  a->read(child.region, 0, buf.data(), buf.size(), large.done());
  a->write(child.region, 0, buf.data(), buf.size(), w.done());
  for (completion* c : {&small, &large, &w}) {
    CAPTURE(c == &small ? "small read" : c == &large ? "large read" : "large write");
    REQUIRE(c->wait(5s));
    CHECK(c->e == transfer_error::timeout);
    const double ms = std::chrono::duration<double, std::milli>(c->at - t0).count();
    CHECK(ms >= 390.0);
    CHECK(ms < 1500.0);
  }
  kill(child.proc.pid, SIGCONT);
  check_idle(*a);
}

TEST_CASE("transfer_engine ucx: an idle connected pair uses less than 5% of a core") {
  auto a = transfer_engine_ucx(options("a", true));
  auto b = transfer_engine_ucx(options("b", true));
  std::vector<unsigned char> region(100), buf(100);
  const memory_descriptor d = b->register_memory(region.data(), region.size());
  CHECK(run([&](transfer_done done) { a->read(d, 0, buf.data(), 100, std::move(done)); }).first == errc::ok);
  std::this_thread::sleep_for(100ms);
  const double cpu0 = process_cpu_seconds();
  std::this_thread::sleep_for(1s);
  const double cpu = process_cpu_seconds() - cpu0;
  MESSAGE("idle pair: " << cpu * 1e3 << " ms of CPU in 1 s");
  CHECK(cpu < 0.05);
  CHECK(b->unregister_memory(d.region) == errc::ok);
}
