// process_watch: a watch on a live child sees it exit (kill -9) within
// milliseconds; a pid whose start time does not match, or that does not
// exist, gets no watch.
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "transport/process_watch.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

pid_t sleeping_child() {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    pause();
    _exit(0);
  }
  return pid;
}

}  // namespace

TEST_CASE("process_watch: this process's start time is read, and a stranger's differs") {
  CHECK(own_start_time() > 0);
  CHECK(process_start_time(static_cast<int>(getpid())) == own_start_time());
  CHECK(process_start_time(1) > 0);
  CHECK(process_start_time(-1) == 0);
  CHECK(process_start_time(0x3fffffff) == 0);  // no such pid
}

TEST_CASE("process_watch: a killed process is seen at once; a pid that names another process is not watched") {
  const pid_t pid = sleeping_child();
  std::this_thread::sleep_for(20ms);  // its /proc entry exists for sure
  const uint64_t started = process_start_time(pid);
  REQUIRE(started > 0);
  CHECK(process_watch::open(pid, started + 1) == nullptr);  // the pid is someone else's
  CHECK(process_watch::open(pid, 0) == nullptr);
  auto w = process_watch::open(pid, started);
  REQUIRE(w != nullptr);
  CHECK(w->pid() == pid);
  CHECK_FALSE(w->exited());
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(kill(pid, SIGKILL) == 0);
  pollfd p{w->fd(), POLLIN, 0};
  REQUIRE(poll(&p, 1, 2000) == 1);  // readable without reaping the child
  CHECK(std::chrono::steady_clock::now() - t0 < 500ms);
  CHECK(w->exited());
  waitpid(pid, nullptr, 0);
  CHECK(w->exited());
  CHECK(process_watch::open(pid, started) == nullptr);  // gone
}
