// Peer process liveness by pidfd (see process_watch.hpp).
#include "transport/process_watch.hpp"

#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

namespace troupe {

uint64_t process_start_time(int pid) {
  if (pid <= 0) return 0;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return 0;
  // Field 2, the command name, is in parentheses and may hold spaces and
  // parentheses itself: count fields from the last ')'.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i)  // fields 3..22
    if (!(rest >> field)) return 0;
  try {
    return std::stoull(field);
  } catch (const std::exception&) {
    return 0;
  }
}

uint64_t own_start_time() {
  // Not cached: a forked child must not announce its parent's start time.
  return process_start_time(static_cast<int>(getpid()));
}

uint64_t own_pid_namespace() {
  struct stat st {};
  return ::stat("/proc/self/ns/pid", &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

std::unique_ptr<process_watch> process_watch::open(int pid, uint64_t start_time, uint64_t pid_namespace) {
  if (pid <= 0 || start_time == 0 || pid_namespace == 0 || pid_namespace != own_pid_namespace()) return nullptr;
#ifdef SYS_pidfd_open
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return nullptr;
  // Read after the pidfd exists: if the pid was reused in between, the start
  // time differs and the pidfd (of whatever process) is not kept.
  if (process_start_time(pid) != start_time) {
    ::close(fd);
    return nullptr;
  }
  return std::unique_ptr<process_watch>(new process_watch(fd, pid));
#else
  return nullptr;
#endif
}

process_watch::~process_watch() {
  if (fd_ >= 0) ::close(fd_);
}

bool process_watch::exited() const {
  pollfd p{fd_, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

}  // namespace troupe
