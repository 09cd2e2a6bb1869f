// process_watch: a watch on a live child sees it exit (kill -9) within
// milliseconds; a pid whose start time or pid namespace does not match, or
// that does not exist, gets no watch. Where the kernel or a seccomp profile
// refuses pidfds, the watch case says so and passes (the engines then fall
// back to their timeouts).
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "transport/process_watch.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

// A child that sleeps until killed; killed and reaped on scope exit, and by
// the kernel if this process dies first.
struct sleeping_child {
  pid_t pid = -1;
  sleeping_child() {
    pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      pause();
      _exit(0);
    }
  }
  void kill_and_reap() {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
  ~sleeping_child() { kill_and_reap(); }
};

bool pidfds_available() {
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  if (fd >= 0) {
    close(fd);
    return true;
  }
  MESSAGE("pidfd_open refused here (errno " << errno << "): skipped");
  return false;
}

}  // namespace

TEST_CASE("process_watch: start times and the pid namespace are read; a pid that does not exist has none") {
  CHECK(own_start_time() > 0);
  CHECK(process_start_time(static_cast<int>(getpid())) == own_start_time());
  CHECK(own_pid_namespace() > 0);
  CHECK(process_start_time(-1) == 0);
  CHECK(process_start_time(0x3fffffff) == 0);  // no such pid
  sleeping_child child;
  std::this_thread::sleep_for(20ms);  // its /proc entry exists for sure
  CHECK(process_start_time(child.pid) >= own_start_time());  // started after this process
}

TEST_CASE("process_watch: a killed process is seen at once; a pid that names another process is not watched") {
  if (!pidfds_available()) return;
  sleeping_child child;
  std::this_thread::sleep_for(20ms);
  const pid_t pid = child.pid;
  const uint64_t started = process_start_time(pid), ns = own_pid_namespace();
  REQUIRE(started > 0);
  CHECK(process_watch::open(pid, started + 1, ns) == nullptr);  // the pid is someone else's
  CHECK(process_watch::open(pid, 0, ns) == nullptr);
  CHECK(process_watch::open(pid, started, ns + 1) == nullptr);  // a pid of another namespace
  CHECK(process_watch::open(pid, started, 0) == nullptr);
  auto w = process_watch::open(pid, started, ns);
  REQUIRE(w != nullptr);
  CHECK(w->pid() == pid);
  CHECK_FALSE(w->exited());
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(kill(pid, SIGKILL) == 0);
  pollfd p{w->fd(), POLLIN, 0};
  REQUIRE(poll(&p, 1, 2000) == 1);  // readable before the child is reaped
  CHECK(std::chrono::steady_clock::now() - t0 < 500ms);
  CHECK(w->exited());
  child.kill_and_reap();
  CHECK(w->exited());
  CHECK(process_watch::open(pid, started, ns) == nullptr);  // gone
}
