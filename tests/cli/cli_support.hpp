// What the process-level tests of tests/cli share: scratch folders, free
// ports, child processes with their output in files, the netns probe, a tiny
// HTTP client. Header-only: each *.test.cpp of the folder includes it.
#pragma once

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace cli_support {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

inline const fs::path source_root = fs::path(TROUPE_FIXTURES) / ".." / "..";

inline std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

inline void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
}

inline size_t count_of(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = 0; (p = s.find(what, p)) != std::string::npos; p += what.size()) ++n;
  return n;
}

inline bool has_all(const std::string& text, const std::vector<std::string>& parts) {
  for (const std::string& p : parts)
    if (text.find(p) == std::string::npos) return false;
  return true;
}

inline std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

inline double ms_since(steady::time_point t0) {
  return std::chrono::duration<double, std::milli>(steady::now() - t0).count();
}

inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
  for (const auto end = steady::now() + limit; steady::now() < end; std::this_thread::sleep_for(10ms))
    if (pred()) return true;
  return pred();
}

// A per-process scratch folder (CTest runs cases in parallel processes),
// removed at the end of the case.
struct scratch {
  fs::path path;
  scratch(const std::string& suite, const std::string& tag)
      : path(fs::temp_directory_path() / ("troupe_" + suite + "_test_" + std::to_string(getpid()) + "_" + tag)) {
    fs::create_directories(path);
  }
  ~scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;
  fs::path operator/(const std::string& name) const { return path / name; }
};

// `n` distinct TCP ports on 127.0.0.1 that nothing listens on now. They are
// drawn at random below the ephemeral range, where outgoing connections (UCX
// clients, HTTP clients of parallel tests) never take a port, and all n are
// held while the others are drawn so that one config never gets a port twice.
inline std::vector<int> free_ports(size_t n) {
  int lo = 32768;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> lo;
  const int first = 10000, last = std::max(first + 1000, lo - 1);
  std::mt19937 rng(static_cast<unsigned>(getpid()) ^ static_cast<unsigned>(steady::now().time_since_epoch().count()));
  std::uniform_int_distribution<int> pick(first, last);
  std::vector<int> fds, ports;
  for (int attempt = 0; ports.size() < n && attempt < 10000; ++attempt) {
    const int port = pick(rng);
    if (std::find(ports.begin(), ports.end(), port) != ports.end()) continue;
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
      fds.push_back(fd);
      ports.push_back(port);
    } else {
      ::close(fd);
    }
  }
  for (const int fd : fds) ::close(fd);
  REQUIRE_MESSAGE(ports.size() == n, "no " << n << " free ports in " << first << ".." << last);
  return ports;
}

inline bool sh_ok(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }

// Root is not enough (a container may lack CAP_NET_ADMIN): make and remove a
// namespace and a bridge, as netns.sh will.
inline bool netns_possible() {
  return ::geteuid() == 0 && sh_ok("n=tprobe$$; ip netns add $n && ip link add ${n}b type bridge && "
                                   "ip link del ${n}b; r=$?; ip netns del $n; exit $r");
}

// The demo model's absolute path as a TOML string.
inline std::string demo_model_toml() {
  std::string s = "\"";  // appended step by step: GCC 12 warns (-Wrestrict) on "\"" + string + "\""
  s += fs::canonical(source_root / "models" / "demo").string();
  s += '"';
  return s;
}

// Under CTest (one case per process, named exactly) a skip is exit 77; in a
// run of several cases (no filter, or one with a wildcard) it is a message
// and a return.
inline bool selected_alone() {
  std::string cmdline = slurp("/proc/self/cmdline");
  std::replace(cmdline.begin(), cmdline.end(), '\0', '\n');
  for (const char* flag : {"--test-case=", "-tc="}) {
    const size_t at = cmdline.find(flag);
    if (at == std::string::npos) continue;
    const std::string filter = cmdline.substr(at, cmdline.find('\n', at) - at);
    return filter.find('*') == std::string::npos && filter.find('?') == std::string::npos;
  }
  return false;
}

inline bool gone(pid_t pid) { return ::kill(pid, 0) == -1 && errno == ESRCH; }

// node -> pid, from launch's "node N started (pid P)" lines.
inline std::map<std::string, pid_t> child_pids(const std::string& err) {
  std::map<std::string, pid_t> out;
  const std::regex re("launch: node (\\w+) started \\(pid (\\d+)\\)");
  for (auto it = std::sregex_iterator(err.begin(), err.end(), re); it != std::sregex_iterator(); ++it)
    out[(*it)[1]] = static_cast<pid_t>(std::stol((*it)[2]));
  return out;
}

// node -> pid, from netns.sh's "node N (pid P) in netns troupe-TAG-N" lines.
inline std::map<std::string, pid_t> netns_pids(const std::string& err, const std::string& tag) {
  std::map<std::string, pid_t> out;
  const std::regex re("netns.sh: node (\\w+) \\(pid (\\d+)\\) in netns troupe-" + tag + "-\\w+");
  for (auto it = std::sregex_iterator(err.begin(), err.end(), re); it != std::sregex_iterator(); ++it)
    out[(*it)[1]] = static_cast<pid_t>(std::stol((*it)[2]));
  return out;
}

// A child process with stdout and stderr in files of `dir` named by `tag`.
struct process {
  pid_t pid = -1;
  int status = -1;
  fs::path out, err;

  process(const scratch& dir, const std::string& tag, std::vector<std::string> argv)
      : out(dir / (tag + ".out")), err(dir / (tag + ".err")) {
    // Created (emptied) before the fork: a reader must never see what an
    // earlier process of the same name left there.
    const int o = ::open(out.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    const int e = ::open(err.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (o < 0 || e < 0) {
      if (o >= 0) ::close(o);
      if (e >= 0) ::close(e);
      FAIL("cannot create " << out << " or " << err << ": " << std::strerror(errno));
    }
    pid = fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a test killed by CTest's timeout leaves nothing behind
      dup2(o, 1);
      dup2(e, 2);
      std::vector<char*> args;
      for (std::string& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    ::close(o);
    ::close(e);
  }
  // A case that failed half-way: SIGTERM first, so that launch stops its
  // nodes and netns.sh removes its namespaces; SIGKILL after 15 s.
  ~process() {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    if (wait_exit(15s) == -1) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  process(const process&) = delete;
  process& operator=(const process&) = delete;

  std::string stdout_text() const { return slurp(out); }
  std::string stderr_text() const { return slurp(err); }
  std::string both() const { return "--- stdout\n" + stdout_text() + "--- stderr\n" + stderr_text(); }

  // Polls until pred(stdout, stderr) holds, the process ends or the time is up.
  bool wait_for(const std::function<bool(const std::string&, const std::string&)>& pred,
                std::chrono::milliseconds limit = 90s) {
    const auto end = steady::now() + limit;
    while (steady::now() < end) {
      if (pred(stdout_text(), stderr_text())) return true;
      if (pid > 0 && waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return pred(stdout_text(), stderr_text());
      }
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }
  bool wait_stderr(const std::string& text, std::chrono::milliseconds limit = 30s) {
    return wait_for([&](const std::string&, const std::string& e) { return e.find(text) != std::string::npos; }, limit);
  }
  // The exit code (128 + signal when killed); -1 when it did not end in time.
  int wait_exit(std::chrono::seconds limit = 30s) {
    const auto end = steady::now() + limit;
    while (pid > 0 && steady::now() < end) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    if (pid > 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

// config/examples/three-nodes.toml with free ports for the nodes' links
// and the gateway, and the demo model's absolute path.
struct three_node_example {
  std::string text;
  int port_c = 0, gateway_port = 0;
};

inline three_node_example three_node_example_text() {
  three_node_example out{slurp(source_root / "config" / "examples" / "three-nodes.toml")};
  const std::vector<int> ports = free_ports(4);
  const char* const example_ports[] = {"7101", "7102", "7103", "8100"};
  for (size_t i = 0; i < 4; ++i) {
    const std::string from = std::string("port = ") + example_ports[i];
    REQUIRE_MESSAGE(out.text.find(from) != std::string::npos, "three-nodes.toml has no '" << from << "'");
    replace_all(out.text, from, "port = " + std::to_string(ports[i]));
  }
  out.port_c = ports[2];
  out.gateway_port = ports[3];
  replace_all(out.text, "\"../../models/demo\"", demo_model_toml());
  return out;
}

// ---- HTTP/1.1 over a plain socket ----

inline int connect_to(const std::string& host, int port, int timeout_s = 30) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  REQUIRE(::inet_pton(AF_INET, host.c_str(), &a.sin_addr) == 1);
  timeval tv{timeout_s, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline void send_all(int fd, const std::string& s) {
  for (size_t off = 0; off < s.size();) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

inline std::string request_text(const std::string& method, const std::string& path, const std::string& body,
                                const std::string& auth = "") {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: troupe\r\nConnection: close\r\n";
  if (!auth.empty()) r += "Authorization: Bearer " + auth + "\r\n";
  if (method == "POST") r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + body;
}

// Decodes chunked transfer encoding when the head says so.
inline std::string body_of(const std::string& head, const std::string& body) {
  if (head.find("chunked") == std::string::npos) return body;
  std::string out;
  for (size_t p = 0; p < body.size();) {
    const size_t eol = body.find("\r\n", p);
    if (eol == std::string::npos) break;
    const size_t n = std::stoul(body.substr(p, eol - p), nullptr, 16);
    if (n == 0) break;
    out += body.substr(eol + 2, n);
    p = eol + 2 + n + 2;
  }
  return out;
}

struct http_reply {
  int status = 0;  ///< 0: no answer
  std::string body;
};

inline http_reply parse_reply(const std::string& raw) {
  http_reply r;
  const size_t sp = raw.find(' '), end = raw.find("\r\n\r\n");
  if (sp == std::string::npos || end == std::string::npos) return r;
  r.status = std::stoi(raw.substr(sp + 1, 3));
  r.body = body_of(raw.substr(0, end), raw.substr(end + 4));
  return r;
}

inline http_reply http(const std::string& host, int port, const std::string& method, const std::string& path,
                       const std::string& body = "", const std::string& auth = "") {
  const int fd = connect_to(host, port);
  if (fd < 0) return {};
  send_all(fd, request_text(method, path, body, auth));
  std::string raw;
  char buf[65536];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) raw.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return parse_reply(raw);
}

}  // namespace cli_support
