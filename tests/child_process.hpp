// A test's peer in another process: this test binary started again by
// posix_spawn to run one hidden test case (marked doctest::skip(), so it is
// neither listed nor run on its own). A fresh image, not a plain fork(): a
// child forked from a process that has used UCX, CAF or CUDA inherits their
// locks in whatever state other threads left them, and UCX's memory hooks
// then hung the child's first ucp_init now and then (seen in CI; here about
// one run in a hundred of a test that forked twice).
//
// The parent talks to the child through two pipes: the child reports on fd 3
// (report_fd) and reads its stdin, whose end (the parent closing it, or
// dying) tells the child to finish (wait_for_parent()). Parameters travel in
// the child's environment (child_param()).
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace test_child {

/// The fd a child reports on.
constexpr int report_fd = 3;

/// This binary run again as a child that runs only the hidden test case
/// `name`, with `env` ("KEY=value") added to its environment. The destructor
/// closes the child's stdin, waits up to 10 s for it to finish, then kills it.
struct child_process {
  pid_t pid = -1;
  int from = -1;  ///< what the child reports (its fd 3)
  int to = -1;    ///< the child's stdin

  child_process(const std::string& name, const std::vector<std::string>& env) {
    int up[2], down[2];
    REQUIRE(pipe2(up, O_CLOEXEC) == 0);  // close-on-exec: other children spawned meanwhile get none of these
    REQUIRE(pipe2(down, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, down[0], 0);  // dup2 clears close-on-exec on the copy
    posix_spawn_file_actions_adddup2(&fa, up[1], report_fd);
    std::vector<std::string> env_strings{"TROUPE_TEST_PARENT=" + std::to_string(getpid())};
    env_strings.insert(env_strings.end(), env.begin(), env.end());
    for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string self = "/proc/self/exe", filter = "-tc=" + name, no_skip = "--no-skip", minimal = "--minimal";
    char* argv[] = {self.data(), filter.data(), no_skip.data(), minimal.data(), nullptr};
    const int rc = posix_spawn(&pid, self.c_str(), &fa, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&fa);
    close(up[1]);
    close(down[0]);
    from = up[0];
    to = down[1];
    REQUIRE(rc == 0);
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  /// Kills it (SIGKILL) and returns once it is gone.
  void kill_and_reap() {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }

  ~child_process() {
    if (to >= 0) close(to);
    if (pid > 0) kill(pid, SIGCONT);  // a stopped child could not see its stdin end
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (pid > 0 && waitpid(pid, nullptr, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > until) {
        kill_and_reap();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (from >= 0) close(from);
  }
};

/// In a hidden child case: true when it was started by child_process (the
/// case returns at once otherwise). It also dies with its parent.
inline bool is_child() {
  const char* parent = std::getenv("TROUPE_TEST_PARENT");
  if (parent == nullptr) return false;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != static_cast<pid_t>(std::atoll(parent))) _exit(1);  // the parent died before prctl
  return true;
}

/// In a child: the parameter `name` from its environment, or `fallback`.
inline std::string child_param(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v == nullptr ? fallback : std::string(v);
}

/// In a child: returns when the parent closes the child's stdin or dies.
inline void wait_for_parent() {
  char c;
  while (read(0, &c, 1) > 0) {
  }
}

/// In a child that never returns to read its stdin: ends the process
/// (_exit(0), no clean-up) once the parent closes it or dies.
inline void exit_with_parent() {
  std::thread([] {
    wait_for_parent();
    _exit(0);
  }).detach();
}

/// Exactly n bytes to or from a pipe (false when the other end is gone).
inline bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t k = write(fd, c, n);
    if (k <= 0) return false;
    c += k, n -= static_cast<size_t>(k);
  }
  return true;
}
inline bool read_all(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t k = read(fd, c, n);
    if (k <= 0) return false;
    c += k, n -= static_cast<size_t>(k);
  }
  return true;
}

/// Length-prefixed frames on those pipes.
inline bool write_frame(int fd, const std::vector<char>& bytes) {
  const uint32_t len = static_cast<uint32_t>(bytes.size());
  return write_all(fd, &len, 4) && write_all(fd, bytes.data(), len);
}
/// The next frame; the test fails when the other end closed first.
inline std::vector<char> read_frame(int fd) {
  uint32_t len = 0;
  REQUIRE(read_all(fd, &len, 4));
  std::vector<char> bytes(len);
  REQUIRE(read_all(fd, bytes.data(), len));
  return bytes;
}

}  // namespace test_child
