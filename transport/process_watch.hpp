// Liveness of a peer process on this host, for data-plane connections that
// have no liveness channel of their own: UCX endpoints in error mode NONE
// (shared memory, where UCX 1.13 offers no other mode) and NCCL pairs, whose
// kernels wait forever for a peer that died. Without it a killed peer is
// noticed only when an operation times out (seconds).
//
// Why it is built this way: a pidfd (pidfd_open, Linux 5.3) refers to one
// process, not to a pid number, and becomes readable when that process
// exits; it can sit in the same poll() as the UCX worker's event fd. A pid
// alone does not name a process: it is reused, and peers in another pid
// namespace on the same host (containers sharing a kernel, hence a boot id)
// have pids that mean something else here. So a peer also announces its pid
// namespace and its start time (/proc/<pid>/stat, clock ticks since boot),
// and a watch is made only when the peer shares this process's pid
// namespace and the process found here under that pid started at that time;
// otherwise there is no watch and the timeout remains the fallback.
#pragma once

#include <cstdint>
#include <memory>

namespace troupe {

/// The start time of process `pid` as this host sees it (clock ticks since
/// boot, field 22 of /proc/<pid>/stat); 0 when it cannot be read.
uint64_t process_start_time(int pid);

/// This process's start time (process_start_time(getpid())).
uint64_t own_start_time();

/// This process's pid namespace (the inode of /proc/self/ns/pid); 0 when
/// it cannot be read.
uint64_t own_pid_namespace();

/// A watch on one process of this host; the process need not be a child.
class process_watch {
 public:
  /// A watch on `pid` of pid namespace `pid_namespace` when that names, here,
  /// the process that started at `start_time`; null when it does not
  /// (exited, reused, another pid namespace, start_time 0) or pidfds are
  /// unavailable (old kernel, seccomp).
  static std::unique_ptr<process_watch> open(int pid, uint64_t start_time, uint64_t pid_namespace);
  ~process_watch();
  process_watch(const process_watch&) = delete;
  process_watch& operator=(const process_watch&) = delete;

  /// A descriptor that polls readable (POLLIN) once the process has exited.
  int fd() const { return fd_; }
  /// Whether the process has exited (a poll with no wait).
  bool exited() const;
  /// The watched pid, for logs.
  int pid() const { return pid_; }

 private:
  process_watch(int fd, int pid) : fd_(fd), pid_(pid) {}
  int fd_ = -1;
  int pid_ = 0;
};

}  // namespace troupe
