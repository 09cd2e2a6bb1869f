// shared_host_buffer, the lookup of this process's buffers and a peer's
// mappings: bytes seen both ways across a fork, a stale descriptor refused by
// its inode, ranges checked, mappings evicted, forgotten and kept alive while
// held, and the parallel copy.
#include "transport/shared_host_memory.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "config/errors.hpp"

using namespace troupe;

namespace {

// A child process that holds shared buffers of the given sizes (byte i of
// buffer b is (i + b) & 0xff) and reports their locations through a pipe,
// then waits to be killed.
struct owner_process {
  pid_t pid = -1;
  std::vector<shared_host_location> where;

  explicit owner_process(const std::vector<size_t>& sizes) {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      std::vector<std::unique_ptr<shared_host_buffer>> buffers;
      for (size_t b = 0; b < sizes.size(); ++b) {
        buffers.push_back(std::make_unique<shared_host_buffer>(sizes[b]));
        auto* p = static_cast<unsigned char*>(buffers.back()->data());
        for (size_t i = 0; i < sizes[b]; ++i) p[i] = static_cast<unsigned char>(i + b);
        shared_host_location loc;
        if (!shared_host_lookup(p, sizes[b], loc)) _exit(2);
        if (write(fds[1], &loc, sizeof loc) != sizeof loc) _exit(3);
      }
      for (;;) pause();
    }
    close(fds[1]);
    for (size_t b = 0; b < sizes.size(); ++b) {
      shared_host_location loc;
      REQUIRE(read(fds[0], &loc, sizeof loc) == sizeof loc);
      where.push_back(loc);
    }
    close(fds[0]);
  }
  ~owner_process() {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
};

}  // namespace

TEST_CASE("shared_host_buffer: lookup finds ranges inside live buffers only") {
  shared_host_location loc;
  std::vector<char> heap(64);
  CHECK_FALSE(shared_host_lookup(heap.data(), heap.size(), loc));
  {
    shared_host_buffer b(1 << 20);
    auto* p = static_cast<char*>(b.data());
    REQUIRE(shared_host_lookup(p + 4096, 100, loc));
    CHECK(loc.fd >= 0);
    CHECK(loc.inode != 0);
    CHECK(loc.offset == 4096);
    CHECK(shared_host_lookup(p, b.size(), loc));
    CHECK_FALSE(shared_host_lookup(p + 1, b.size(), loc));  // runs past the end
  }
  CHECK_THROWS_AS(shared_host_buffer(0), error);
}

TEST_CASE("shared_host_mapper: another process's buffer, both ways; stale, out of range, evicted, forgotten") {
  owner_process owner({1 << 20, 4096, 4096});
  shared_host_mapper mapper(2);
  std::string why;
  std::shared_ptr<std::byte> m = mapper.map(owner.pid, owner.where[0], 1 << 20, &why);
  REQUIRE_MESSAGE(m != nullptr, why);
  const auto* p = reinterpret_cast<const unsigned char*>(m.get());
  bool same = true;
  for (size_t i = 0; i < (1u << 20); ++i) same = same && p[i] == static_cast<unsigned char>(i);
  CHECK(same);
  // Written here, seen through a second mapping at an offset (the same pages).
  std::memset(m.get() + 100, 0xAB, 10);
  shared_host_location at = owner.where[0];
  at.offset += 100;
  std::shared_ptr<std::byte> again = mapper.map(owner.pid, at, 10, &why);
  REQUIRE(again != nullptr);
  CHECK(static_cast<unsigned char>(again.get()[9]) == 0xAB);
  CHECK(mapper.size() == 1);  // one mapping per buffer

  shared_host_location stale = owner.where[1];
  stale.inode += 1;
  CHECK(mapper.map(owner.pid, stale, 1, &why) == nullptr);
  CHECK(why.find("no longer that buffer") != std::string::npos);
  shared_host_location beyond = owner.where[1];
  beyond.offset = 4000;
  CHECK(mapper.map(owner.pid, beyond, 200, &why) == nullptr);
  CHECK(why.find("beyond") != std::string::npos);

  // Two more buffers evict the first (at most 2); the held pointer still works.
  REQUIRE(mapper.map(owner.pid, owner.where[1], 4096, &why) != nullptr);
  REQUIRE(mapper.map(owner.pid, owner.where[2], 4096, &why) != nullptr);
  CHECK(mapper.size() == 2);
  CHECK(static_cast<unsigned char>(m.get()[5]) == 5);
  mapper.forget(owner.pid);
  CHECK(mapper.size() == 0);
  CHECK(static_cast<unsigned char>(again.get()[0]) == 0xAB);
  CHECK(mapper.map(owner.pid + 1000000, owner.where[1], 1, &why) == nullptr);  // no such process
}

TEST_CASE("copy_in_parallel copies small and large ranges exactly") {
  for (const size_t n : {size_t{0}, size_t{1}, size_t{4097}, size_t{(16u << 20) + 3}}) {
    CAPTURE(n);
    std::vector<unsigned char> src(n), dst(n, 0);
    std::iota(src.begin(), src.end(), static_cast<unsigned char>(7));
    copy_in_parallel(dst.data(), src.data(), n);
    CHECK(dst == src);
  }
}
