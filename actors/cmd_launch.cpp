// `troupe launch --config FILE`: every node of a cluster config on this host,
// one `troupe node --config FILE --name N` child process each, for
// development and tests. Why it is built this way:
// - One thread, one poll() over every child's stdout and stderr pipe and a
//   signalfd for SIGINT, SIGTERM and SIGCHLD (blocked, so they arrive only
//   there): no busy loop, no signal-handler races, and each child's output is
//   forwarded a whole line at a time with a "[name] " prefix (one write per
//   line, so lines of different children never interleave).
// - Children run in their own process group, so a terminal's Ctrl-C reaches
//   only the launcher, which then stops them in order: SIGTERM to all, wait up
//   to --stop-timeout-s, then SIGKILL. A second Ctrl-C kills at once.
//   PR_SET_PDEATHSIG stops them too if the launcher itself is killed.
// - A child that exits while nobody asked it to is reported (status or
//   signal) and the others are stopped; launch then exits 1. With
//   --keep-going the others keep running instead (a cluster that outlives
//   one of its nodes: the gateway marks that node's instances failed and
//   answers 503 for them) until Ctrl-C; launch still exits 1 at the end. The
//   config is read and checked in full before any child starts.
#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "actors/chunk_scheduler.hpp"
#include "actors/commands.hpp"
#include "config/cluster_config.hpp"
#include "config/errors.hpp"

namespace troupe {

namespace {

using clock = std::chrono::steady_clock;

struct launch_opts {
  std::string config;
  int stop_timeout_s = 10;
  bool list = false;
  bool keep_going = false;
};

/// One output pipe of a child and the part of a line not yet forwarded.
struct stream {
  int fd = -1;
  int to = -1;  ///< where its lines go (1 or 2)
  std::string pending;
};

struct child {
  std::string name;
  pid_t pid = -1;
  bool reaped = false;
  int status = 0;
  stream out, err;
};

void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // our own output is gone (closed pipe): nothing better to do
    off += static_cast<size_t>(n);
  }
}

// Forwards the complete lines of `st` (all of it at end of stream) with the prefix.
void forward(stream& st, const std::string& prefix, bool eof) {
  size_t start = 0;
  std::string lines;
  for (size_t nl; (nl = st.pending.find('\n', start)) != std::string::npos; start = nl + 1)
    lines += prefix + st.pending.substr(start, nl + 1 - start);
  st.pending.erase(0, start);
  if ((eof && !st.pending.empty()) || st.pending.size() > (64u << 10)) {  // a last or overlong line
    lines += prefix + st.pending + "\n";
    st.pending.clear();
  }
  if (!lines.empty()) write_all(st.to, lines);
}

// Reads what the pipe has; closes it at end of stream.
void drain(stream& st, const std::string& prefix) {
  char buf[65536];
  const ssize_t n = ::read(st.fd, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n > 0) {
    st.pending.append(buf, static_cast<size_t>(n));
    forward(st, prefix, false);
    return;
  }
  forward(st, prefix, true);
  ::close(st.fd);
  st.fd = -1;
}

std::string status_text(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "ended with wait status " + std::to_string(status);
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw error(errc::errc_io, std::string("launch: cannot read /proc/self/exe: ") + std::strerror(errno));
  return std::string(buf, static_cast<size_t>(n));
}

class launcher {
 public:
  launcher(const launch_opts& o, const cluster_config& c) : opt_(o), exe_(self_exe()) {
    sigset_t s;
    sigemptyset(&s);
    for (int sig : {SIGINT, SIGTERM, SIGCHLD}) sigaddset(&s, sig);
    sigprocmask(SIG_BLOCK, &s, nullptr);
    sig_fd_ = signalfd(-1, &s, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sig_fd_ < 0) throw error(errc::errc_io, std::string("launch: signalfd: ") + std::strerror(errno));
    for (const node_config& n : c.nodes) {
      children_.emplace_back();
      children_.back().name = n.name;
    }
  }
  ~launcher() {
    for (child& ch : children_) {
      if (!ch.reaped && ch.pid > 0) {  // only when start() threw half-way
        ::kill(ch.pid, SIGKILL);
        ::waitpid(ch.pid, nullptr, 0);
      }
      for (stream* st : {&ch.out, &ch.err})
        if (st->fd >= 0) ::close(st->fd);
    }
    ::close(sig_fd_);
  }

  int run() {
    for (child& ch : children_) spawn(ch);
    while (busy()) {
      std::vector<pollfd> fds{{sig_fd_, POLLIN, 0}};
      std::vector<std::pair<child*, stream*>> who{{nullptr, nullptr}};
      for (child& ch : children_)
        for (stream* st : {&ch.out, &ch.err})
          if (st->fd >= 0) {
            fds.push_back({st->fd, POLLIN, 0});
            who.emplace_back(&ch, st);
          }
      const int n = ::poll(fds.data(), fds.size(), timeout_ms());
      if (n < 0 && errno != EINTR) throw error(errc::errc_io, std::string("launch: poll: ") + std::strerror(errno));
      for (size_t i = 1; n > 0 && i < fds.size(); ++i)
        if (fds[i].revents != 0) drain(*who[i].second, "[" + who[i].first->name + "] ");
      if (n > 0 && fds[0].revents != 0) on_signals();
      check_deadlines();
    }
    return failed_ ? 1 : 0;
  }

 private:
  void spawn(child& ch) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
      throw error(errc::errc_io, std::string("launch: pipe: ") + std::strerror(errno));
    std::vector<std::string> args = {exe_, "node", "--config", opt_.config, "--name", ch.name};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw error(errc::errc_io, std::string("launch: fork: ") + std::strerror(errno));
    if (pid == 0) {  // the child: only async-signal-safe calls until exec
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(1);  // the launcher died before prctl
      const int null_fd = ::open("/dev/null", O_RDONLY);
      ::dup2(null_fd, 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::execv(exe_.c_str(), argv.data());
      static const char msg[] = "launch: exec failed\n";
      (void)!::write(2, msg, sizeof msg - 1);
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    ch.pid = pid;
    ch.out = stream{out[0], 1, {}};
    ch.err = stream{err[0], 2, {}};
    actors_log()->info("launch: node {} started (pid {})", ch.name, pid);
  }

  bool busy() const {
    for (const child& ch : children_)
      if (!ch.reaped || ch.out.fd >= 0 || ch.err.fd >= 0) return true;
    return false;
  }

  bool all_reaped() const {
    for (const child& ch : children_)
      if (!ch.reaped) return false;
    return true;
  }

  int timeout_ms() const {
    clock::time_point next = clock::time_point::max();
    if (stopping_ && !all_reaped()) next = kill_at_;
    if (all_reaped()) next = std::min(next, reaped_at_ + std::chrono::seconds(1));  // output left in the pipes
    if (next == clock::time_point::max()) return -1;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next - clock::now()).count();
    return static_cast<int>(std::max<int64_t>(0, left) + 1);
  }

  void on_signals() {
    signalfd_siginfo si;
    while (::read(sig_fd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      const int sig = static_cast<int>(si.ssi_signo);
      if (sig == SIGCHLD) {
        reap();
      } else if (!stopping_) {
        actors_log()->info("launch: {}, stopping {} node(s)", strsignal(sig), children_.size());
        stop_all();
      } else {
        actors_log()->warn("launch: {} again, killing the nodes", strsignal(sig));
        kill_all();
      }
    }
  }

  void reap() {
    for (int status = 0;;) {
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      for (child& ch : children_) {
        if (ch.pid != pid) continue;
        ch.reaped = true;
        ch.status = status;
        const bool clean = WIFEXITED(status) ? WEXITSTATUS(status) == 0
                                             : WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM;
        if (!stopping_ && opt_.keep_going) {
          actors_log()->error("launch: node {} (pid {}) {} unexpectedly; the others keep running (--keep-going)",
                              ch.name, pid, status_text(status));
          failed_ = true;
        } else if (!stopping_) {
          actors_log()->error("launch: node {} (pid {}) {} unexpectedly; stopping the others", ch.name, pid,
                              status_text(status));
          failed_ = true;
          stop_all();
        } else if (!clean) {
          actors_log()->warn("launch: node {} (pid {}) {} while stopping", ch.name, pid, status_text(status));
          failed_ = true;
        } else {
          actors_log()->info("launch: node {} (pid {}) stopped", ch.name, pid);
        }
      }
    }
    if (all_reaped()) reaped_at_ = clock::now();
  }

  void stop_all() {
    stopping_ = true;
    kill_at_ = clock::now() + std::chrono::seconds(opt_.stop_timeout_s);
    for (const child& ch : children_)
      if (!ch.reaped) ::kill(ch.pid, SIGTERM);
  }

  void kill_all() {
    for (const child& ch : children_)
      if (!ch.reaped) ::kill(ch.pid, SIGKILL);
    kill_at_ = clock::time_point::max();
  }

  void check_deadlines() {
    const clock::time_point now = clock::now();
    if (stopping_ && !all_reaped() && now >= kill_at_) {
      for (const child& ch : children_)
        if (!ch.reaped)
          actors_log()->warn("launch: node {} (pid {}) did not stop within {} s; killing it", ch.name, ch.pid,
                             opt_.stop_timeout_s);
      failed_ = true;
      kill_all();
    }
    if (all_reaped() && now >= reaped_at_ + std::chrono::seconds(1))  // a grandchild may hold a pipe: stop reading
      for (child& ch : children_)
        for (stream* st : {&ch.out, &ch.err})
          if (st->fd >= 0) {
            forward(*st, "[" + ch.name + "] ", true);
            ::close(st->fd);
            st->fd = -1;
          }
  }

  launch_opts opt_;
  std::string exe_;
  int sig_fd_ = -1;
  std::vector<child> children_;
  bool stopping_ = false;
  bool failed_ = false;
  clock::time_point kill_at_ = clock::time_point::max();
  clock::time_point reaped_at_;
};

int run_launch(const launch_opts& o) {
  const cluster_config c = cluster_config_load(o.config);
  if (o.list) {
    for (const node_config& n : c.nodes) std::printf("%s %s %u\n", n.name.c_str(), n.address.c_str(), unsigned{n.port});
    return 0;
  }
  launcher l(o, c);
  return l.run();
}

}  // namespace

command command_launch(CLI::App& app) {
  auto o = std::make_shared<launch_opts>();
  CLI::App* cmd = app.add_subcommand(
      "launch", "run every node of a cluster config on this host, one process each (development and tests)");
  cmd->add_option("--config", o->config, "the cluster.toml; see config/examples/")->required();
  cmd->add_option("--stop-timeout-s", o->stop_timeout_s, "after Ctrl-C, how long nodes get to stop before SIGKILL")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  cmd->add_flag("--keep-going", o->keep_going,
                "when a node dies, report it and keep the others running (exit status 1 after Ctrl-C)");
  cmd->add_flag("--list", o->list, "print each node as 'NAME ADDRESS PORT' (one a line) and exit");
  return {cmd, [o] { return run_launch(*o); }};
}

}  // namespace troupe
