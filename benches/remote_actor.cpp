// Remote actors between two node processes on this host, side by side in one
// run: troupe's node_system over UCX (tcp only, and shared memory) against
// CAF's own remote actors (caf::io, BASP over TCP). Two things are measured:
// the round trip of a small typed request/response (a uint64 in, a uint64
// out; p50/p90/p99 of sequential requests from an actor, timed inside that
// actor from request() to its response handler), and 64 MiB moved from one
// node to the other. For CAF, 64 MiB is a std::vector<char> inside a request
// answered with its size (request -> ack). For troupe, tensors never travel
// in control messages: the server registers a 64 MiB region with the ucx
// transfer_engine, the client gets its memory_descriptor by a remote-actor
// request and times reads and writes of all 64 MiB, from the call to the
// engine's completion callback. Over shared memory the region is a
// shared_host_buffer, which the client maps (one memcpy); a second region in
// plain heap memory shows the owner-served path (UCX rendezvous through its
// shared-memory fifos; the engine leaves cma out) for reference. The same 64 MiB as one troupe actor message
// (the path the design does not use for tensors) is timed with --message-blob.
//
// Why it is built this way: the server is a second process of this binary
// (fork + exec of /proc/self/exe with --role server) holding three actor
// systems (CAF io, troupe tcp, troupe shm) and two engines; the client holds
// the three matching systems. Rounds interleave the three systems, so load
// from other users of this shared 2-core machine falls on all of them alike;
// only the ratios of one run are the claim. Every actor system, in both
// processes, gets the same CAF scheduler settings (--caf-threads,
// --caf-poll), printed with the results. The round trips use no request
// timeout by default (--request-timeout-ms): a timeout wakes CAF's clock
// thread twice per request, the same cost on both sides, which only dilutes
// the comparison of the transports. Besides the latencies the table shows
// the CPU time and the context switches both processes spent per round trip
// (/proc/<pid>/task/*/schedstat and status), where the hand-offs between
// threads show; below it, what one copy of 64 MiB costs on this host
// (memcpy, process_vm_readv as cma does it, one TCP socket), measured in the
// same run, and the CPU an idle node costs.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "transport/node_system.hpp"
#include "transport/shared_host_memory.hpp"
#include "transport/transfer_engine_ucx.hpp"

using namespace troupe;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

using blob_atom = caf::atom_constant<caf::atom("blob")>;
using region_atom = caf::atom_constant<caf::atom("region")>;

/// The echo: a uint64 back (round trip), a blob answered with its size (64 MiB as a message).
using echo_actor = caf::typed_actor<caf::replies_to<uint64_t>::with<uint64_t>,
                                    caf::replies_to<blob_atom, std::vector<char>>::with<uint64_t>>;
/// The server's data-plane region, as a descriptor.
using region_actor = caf::typed_actor<caf::replies_to<region_atom>::with<memory_descriptor>>;

const char* const secret = "bench-remote-actor";

/// Settings both processes use (the server gets them on its command line).
struct settings {
  int rtt = 300;                         ///< round trips per system per round
  int rounds = 10;                       ///< interleaved rounds
  int big_reps = 5;                      ///< 64 MiB transfers per kind (after one warm-up)
  size_t bytes = 64u << 20;              ///< the large transfer
  int caf_threads = 0;                   ///< scheduler.max-threads (0: CAF's default)
  std::string caf_poll = "low-latency";  ///< work-stealing polling: default | low-latency | spin (see tune)
  int busy_poll_us = -1;                 ///< ucx_node_options::busy_poll (-1: its default)
  bool message_blob = false;             ///< also time 64 MiB as one troupe actor message
  int request_timeout_ms = 0;            ///< timeout of each round-trip request (0: none, CAF's actor clock left out)
  std::string only;                      ///< time the round trips of this system only (caf, tcp or shm; profiling)
};

/// The same scheduler settings for every actor system of the run.
void tune(caf::actor_system_config& cfg, const settings& s) {
  if (s.caf_threads > 0) cfg.set("scheduler.max-threads", static_cast<size_t>(s.caf_threads));
  if (s.caf_poll == "low-latency" || s.caf_poll == "spin") {
    // Idle workers poll without sleeping for a short while, then wait on
    // their condition variable (an enqueue wakes them at once) instead of
    // CAF's 500 polls with a 50 us sleep between them.
    cfg.set("work-stealing.moderate-poll-attempts", size_t{0});
  }
  // spin: idle workers also poll 2000 times (about 100 us here) before they wait.
  if (s.caf_poll == "spin") cfg.set("work-stealing.aggressive-poll-attempts", size_t{2000});
}

ucx_node_options node_options(const std::string& name, bool shm, const settings& s) {
  ucx_node_options o;
  o.name = name;
  o.secret = secret;
  o.shared_memory = shm;
  if (s.busy_poll_us >= 0) o.busy_poll = std::chrono::microseconds(s.busy_poll_us);
  // Room for 64 MiB as one actor message (the reference row); a blob is
  // bounded by the envelope's size only.
  o.limits.max_envelope_bytes = s.bytes + (1u << 20);
  return o;
}

echo_actor::behavior_type echo() {
  return {[](uint64_t x) { return x; }, [](blob_atom, const std::vector<char>& b) { return uint64_t{b.size()}; }};
}

/// One troupe node: actor system, node_system and a ucx engine.
struct troupe_node {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<node_system> net;
  std::unique_ptr<transfer_engine> te;
  std::vector<caf::actor> kept;

  troupe_node(const std::string& name, bool shm, const settings& s) {
    node_system::configure(cfg);
    cfg.add_message_type<memory_descriptor>("troupe.memory_descriptor");
    tune(cfg, s);
    sys = std::make_unique<caf::actor_system>(cfg);
    net = std::make_unique<node_system>(*sys, node_options(name, shm, s));
    ucx_engine_options eo;
    eo.name = name + "-te";
    eo.advertised_host = "127.0.0.1";
    eo.shared_memory = shm;
    eo.timeout = 60s;
    te = transfer_engine_ucx(eo);
  }
  ~troupe_node() {
    for (auto& a : kept) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    kept.clear();
    te.reset();
    net.reset();
    sys.reset();
  }
};

/// One CAF io node.
struct caf_node {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::actor kept;

  explicit caf_node(const settings& s) {
    cfg.load<caf::io::middleman>();
    tune(cfg, s);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
  ~caf_node() {
    if (kept) caf::anon_send_exit(kept, caf::exit_reason::user_shutdown);
    kept = nullptr;
    sys.reset();
  }
};

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

// ---- the ceilings: what one copy costs on this host, measured in the same run ----

/// A TCP listener on 127.0.0.1 that answers every byte it reads with `bytes`
/// of `data` (one socket, plain read/write: the loopback ceiling).
struct raw_tcp_server {
  int listen_fd = -1;
  uint16_t port = 0;
  std::thread thread;

  raw_tcp_server(const char* data, size_t bytes) {
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (listen_fd < 0 || bind(listen_fd, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(listen_fd, 1) != 0 ||
        getsockname(listen_fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      fail("raw tcp listener");
    port = ntohs(a.sin_port);
    thread = std::thread([this, data, bytes] {
      const int fd = accept(listen_fd, nullptr, nullptr);
      if (fd < 0) return;
      char b;
      while (read(fd, &b, 1) == 1)
        for (size_t off = 0; off < bytes;) {
          const ssize_t n = write(fd, data + off, bytes - off);
          if (n <= 0) return (void)close(fd);
          off += static_cast<size_t>(n);
        }
      close(fd);
    });
    thread.detach();  // the process exits when the client is done
  }
};

/// Seconds to fetch `bytes` over a connected raw_tcp_server socket.
double raw_tcp_seconds(int fd, char* into, size_t bytes) {
  const auto t0 = steady::now();
  if (write(fd, "x", 1) != 1) fail("raw tcp write");
  for (size_t off = 0; off < bytes;) {
    const ssize_t n = read(fd, into + off, bytes - off);
    if (n <= 0) fail("raw tcp read");
    off += static_cast<size_t>(n);
  }
  return std::chrono::duration<double>(steady::now() - t0).count();
}

int raw_tcp_connect(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) fail("raw tcp connect");
  return fd;
}

// ---- the server process ----

int run_server(const settings& s, int ports_fd, int life_fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  caf_node c(s);
  auto e = c.sys->spawn(echo);
  c.kept = caf::actor_cast<caf::actor>(e);
  auto caf_port = c.sys->middleman().publish(e, 0, "127.0.0.1");
  if (!caf_port) fail("caf publish: " + c.sys->render(caf_port.error()));
  std::vector<char> memory_tcp(s.bytes, 1), memory_shm(s.bytes, 1);
  shared_host_buffer memory_mapped(s.bytes);  // what a same-host user allocates for regions peers map
  std::memset(memory_mapped.data(), 1, s.bytes);
  troupe_node tcp("srv-tcp", false, s), shm("srv-shm", true, s);
  auto publish_region = [](troupe_node& n, const std::string& name, void* memory, size_t bytes) {
    const memory_descriptor d = n.te->register_memory(memory, bytes);
    auto ra = n.sys->spawn([d]() -> region_actor::behavior_type { return {[d](region_atom) { return d; }}; });
    n.kept.push_back(caf::actor_cast<caf::actor>(ra));
    n.net->publish(name, ra);
  };
  for (troupe_node* n : {&tcp, &shm}) {
    auto ea = n->sys->spawn(echo);
    n->kept.push_back(caf::actor_cast<caf::actor>(ea));
    n->net->publish("echo", ea);
  }
  publish_region(tcp, "region", memory_tcp.data(), s.bytes);
  publish_region(shm, "region", memory_mapped.data(), s.bytes);  // mapped by the client: one memcpy
  publish_region(shm, "region-heap", memory_shm.data(), s.bytes);  // plain heap memory: the owner serves it
  raw_tcp_server raw(memory_tcp.data(), memory_tcp.size());
  // The client reads memory_shm with process_vm_readv (the cma ceiling) at this address.
  const std::string line = std::to_string(*caf_port) + " " + std::to_string(tcp.net->port()) + " " +
                           std::to_string(shm.net->port()) + " " + std::to_string(raw.port) + " " +
                           std::to_string(reinterpret_cast<uintptr_t>(memory_shm.data())) + "\n";
  if (write(ports_fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) fail("ports pipe");
  close(ports_fd);
  char b;
  while (read(life_fd, &b, 1) > 0) {
  }
  return 0;
}

// ---- measuring (client) ----

double us_since(steady::time_point t0) { return std::chrono::duration<double, std::micro>(steady::now() - t0).count(); }

struct rtt_state {
  echo_actor target;
  caf::duration timeout{caf::infinite};
  int left = 0;
  std::vector<double> us;
  steady::time_point t0;
  std::shared_ptr<std::promise<std::vector<double>>> out;
};

void rtt_next(caf::stateful_actor<rtt_state>* self) {
  auto& st = self->state;
  if (st.left-- == 0) {
    st.out->set_value(std::move(st.us));
    self->quit();
    return;
  }
  st.t0 = steady::now();
  self->request(st.target, st.timeout, static_cast<uint64_t>(st.us.size()))
      .then(
          [self](uint64_t) {
            self->state.us.push_back(us_since(self->state.t0));
            rtt_next(self);
          },
          [self](caf::error& err) {
            self->state.out->set_exception(
                std::make_exception_ptr(std::runtime_error("round trip: " + self->system().render(err))));
            self->quit();
          });
}

/// n sequential request/response round trips from one actor, in microseconds.
std::vector<double> round_trips(caf::actor_system& sys, const echo_actor& target, int n, int timeout_ms) {
  auto out = std::make_shared<std::promise<std::vector<double>>>();
  auto fut = out->get_future();
  sys.spawn([target, n, out, timeout_ms](caf::stateful_actor<rtt_state>* self) -> caf::behavior {
    self->state.target = target;
    if (timeout_ms > 0) self->state.timeout = caf::duration{std::chrono::milliseconds(timeout_ms)};
    self->state.left = n;
    self->state.us.reserve(n);
    self->state.out = out;
    rtt_next(self);
    return {[](int32_t) {}};
  });
  return fut.get();
}

/// One blob request -> ack, in seconds (the copy of `blob` is made before the clock starts).
double blob_seconds(caf::actor_system& sys, const echo_actor& target, const std::vector<char>& blob) {
  auto out = std::make_shared<std::promise<double>>();
  auto fut = out->get_future();
  std::vector<char> copy = blob;
  const size_t expect = copy.size();
  sys.spawn([target, out, expect, copy = std::move(copy)](caf::event_based_actor* self) mutable -> caf::behavior {
    const auto t0 = steady::now();
    self->request(target, 120s, blob_atom::value, std::move(copy))
        .then(
            [self, out, t0, expect](uint64_t n) {
              if (n != expect)
                out->set_exception(std::make_exception_ptr(std::runtime_error("blob size mismatch")));
              else
                out->set_value(std::chrono::duration<double>(steady::now() - t0).count());
              self->quit();
            },
            [self, out](caf::error& err) {
              out->set_exception(std::make_exception_ptr(std::runtime_error("blob: " + self->system().render(err))));
              self->quit();
            });
    return {[](int32_t) {}};
  });
  return fut.get();
}

/// One engine operation, from the call to its done callback, in seconds.
template <class Start>
double engine_seconds(Start start) {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  errc result = errc::ok;
  const auto t0 = steady::now();
  start([&](errc e, size_t) {
    std::lock_guard<std::mutex> lock(mu);
    result = e;
    done = true;
    cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  const double t = std::chrono::duration<double>(steady::now() - t0).count();
  if (result != errc::ok) fail("transfer engine operation failed");
  return t;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
  return v[i];
}

double median(const std::vector<double>& v) { return percentile(v, 50); }

/// What the threads of a process have cost so far: on-CPU seconds (schedstat,
/// nanoseconds) and context switches (voluntary and not), summed over the
/// live threads.
struct process_cost {
  double cpu_s = 0;
  double switches = 0;
  process_cost& operator+=(const process_cost& o) {
    cpu_s += o.cpu_s;
    switches += o.switches;
    return *this;
  }
  process_cost operator-(const process_cost& o) const { return {cpu_s - o.cpu_s, switches - o.switches}; }
};

process_cost cost_of(pid_t pid, const std::string& thread_name = {}) {
  process_cost c;
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& t : std::filesystem::directory_iterator(dir)) {
    if (!thread_name.empty()) {
      std::ifstream comm(t.path() / "comm");
      std::string name;
      if (!std::getline(comm, name) || name != thread_name) continue;
    }
    std::ifstream f(t.path() / "schedstat");
    double ns = 0;
    if (f >> ns) c.cpu_s += ns * 1e-9;
    std::ifstream st(t.path() / "status");
    std::string line;
    while (std::getline(st, line))
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0 || line.rfind("nonvoluntary_ctxt_switches:", 0) == 0)
        c.switches += std::stod(line.substr(line.find(':') + 1));
  }
  return c;
}

/// Draws the round-trip CDFs with gnuplot; a message says what happened.
std::string plot_cdf(const std::string& png, const std::vector<std::pair<std::string, std::vector<double>>>& series,
                     const std::string& title) {
  FILE* gp = popen("gnuplot 2>/dev/null", "w");
  if (gp == nullptr) return "PNG skipped: gnuplot did not start";
  std::string g = "set terminal pngcairo size 1100,700 font 'sans,11'\nset output '" + png + "'\nset title '" + title +
                  "'\nset logscale x\nset xlabel 'round trip (us, log scale)'\nset ylabel 'fraction of requests'\n"
                  "set key bottom right\nset grid\nset yrange [0:1]\nplot ";
  for (size_t i = 0; i < series.size(); ++i)
    g += (i ? ", " : "") + std::string("'-' using 1:2 with lines lw 2 title '") + series[i].first + "'";
  g += "\n";
  for (const auto& [name, values] : series) {
    std::vector<double> v(values);
    std::sort(v.begin(), v.end());
    const size_t points = std::min<size_t>(v.size(), 1000);
    for (size_t k = 0; k < points; ++k) {
      const size_t i = k * (v.size() - 1) / std::max<size_t>(points - 1, 1);
      g += std::to_string(v[i]) + " " + std::to_string(static_cast<double>(i + 1) / static_cast<double>(v.size())) +
           "\n";
    }
    g += "e\n";
  }
  fwrite(g.data(), 1, g.size(), gp);
  const int rc = pclose(gp);
  if (rc != 0) return "PNG not written: gnuplot exited with " + std::to_string(rc);
  return "wrote " + png;
}

std::string fmt(double v, int prec = 1) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

// ---- the client ----

struct server_process {
  pid_t pid = -1;
  int life_fd = -1;
  uint16_t caf_port = 0, tcp_port = 0, shm_port = 0, raw_port = 0;
  uintptr_t shm_address = 0;  ///< the server's memory_shm, for process_vm_readv

  server_process(const std::vector<std::string>& args) {
    int ports[2], life[2];
    if (pipe(ports) != 0 || pipe(life) != 0) fail("pipe");
    pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
      // Child: the ports pipe's write end becomes fd 3, the life pipe's read end fd 4.
      dup2(ports[1], 3);
      dup2(life[0], 4);
      for (int fd : {ports[0], ports[1], life[0], life[1]})
        if (fd > 4) close(fd);
      std::vector<char*> argv;
      std::vector<std::string> a = args;
      for (auto& x : a) argv.push_back(x.data());
      argv.push_back(nullptr);
      execv("/proc/self/exe", argv.data());
      _exit(127);
    }
    close(ports[1]);
    close(life[0]);
    life_fd = life[1];
    fcntl(life_fd, F_SETFD, FD_CLOEXEC);
    std::string line;
    char ch;
    while (read(ports[0], &ch, 1) == 1 && ch != '\n') line += ch;
    close(ports[0]);
    std::istringstream in(line);
    if (!(in >> caf_port >> tcp_port >> shm_port >> raw_port >> shm_address))
      fail("the server process did not start (got '" + line + "')");
  }
  ~server_process() {
    close(life_fd);  // the server leaves when it reads EOF
    for (int i = 0; i < 100; ++i) {
      if (waitpid(pid, nullptr, WNOHANG) == pid) return;
      std::this_thread::sleep_for(50ms);
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
};

struct system_result {
  std::string name;
  std::vector<double> rtt_us;
  process_cost rtt_cost;  ///< both processes, during the timed round trips
  std::vector<double> read_gbps, write_gbps, message_gbps;
  std::vector<double> heap_read_gbps, heap_write_gbps;  ///< shm: the region in heap memory (owner-served)
};

int run_client(const settings& s, const std::string& json_path, const std::string& png_path, char* self_path) {
  std::vector<std::string> args = {self_path,
                                   "--role=server",
                                   "--bytes=" + std::to_string(s.bytes),
                                   "--caf-threads=" + std::to_string(s.caf_threads),
                                   "--caf-poll=" + s.caf_poll,
                                   "--busy-poll-us=" + std::to_string(s.busy_poll_us)};
  server_process server(args);

  caf_node c(s);
  auto caf_echo = c.sys->middleman().remote_actor<echo_actor>("127.0.0.1", server.caf_port);
  if (!caf_echo) fail("caf remote_actor: " + c.sys->render(caf_echo.error()));
  troupe_node tcp("cli-tcp", false, s), shm("cli-shm", true, s);
  struct troupe_peer {
    troupe_node* node;
    echo_actor echo;
    memory_descriptor region, heap_region;  ///< heap_region: shm only
  };
  auto attach = [](troupe_node& n, uint16_t port, const std::string& server_name) {
    if (auto err = n.net->connect("127.0.0.1", port, server_name)) fail("connect: " + n.sys->render(err));
    auto e = n.net->remote_actor<echo_actor>(server_name, "echo");
    if (!e) fail("remote_actor echo: " + n.sys->render(e.error()));
    troupe_peer p{&n, *e, {}, {}};
    caf::scoped_actor self{*n.sys};
    for (const char* name : {"region", "region-heap"}) {
      auto r = n.net->remote_actor<region_actor>(server_name, name);
      if (!r) continue;  // tcp publishes no heap region
      self->request(*r, 5s, region_atom::value)
          .receive([&](memory_descriptor& d) { (std::string(name) == "region" ? p.region : p.heap_region) = std::move(d); },
                   [&](caf::error& err) { fail(std::string(name) + ": " + n.sys->render(err)); });
    }
    return p;
  };
  troupe_peer ptcp = attach(tcp, server.tcp_port, "srv-tcp");
  troupe_peer pshm = attach(shm, server.shm_port, "srv-shm");
  if (ptcp.region.bytes < s.bytes || pshm.region.bytes < s.bytes || pshm.heap_region.bytes < s.bytes)
    fail("the server's regions are too small");
  if (pshm.region.mapped_fd < 0) fail("the server's shm region is not in a shared buffer");

  system_result rc, rt, rs;
  rc.name = "CAF BASP";
  rt.name = "troupe tcp";
  rs.name = "troupe shm";

  // Round trips: warm each path, then interleaved rounds.
  round_trips(*c.sys, *caf_echo, 200, s.request_timeout_ms);
  round_trips(*tcp.sys, ptcp.echo, 200, s.request_timeout_ms);
  round_trips(*shm.sys, pshm.echo, 200, s.request_timeout_ms);
  for (int r = 0; r < s.rounds; ++r) {
    for (auto* x : {&rc, &rt, &rs}) {
      if (!s.only.empty() && s.only != (x == &rc ? "caf" : x == &rt ? "tcp" : "shm")) continue;
      auto& sys = x == &rc ? *c.sys : x == &rt ? *tcp.sys : *shm.sys;
      const echo_actor& target = x == &rc ? *caf_echo : x == &rt ? ptcp.echo : pshm.echo;
      process_cost c0 = cost_of(getpid());
      c0 += cost_of(server.pid);
      auto v = round_trips(sys, target, s.rtt, s.request_timeout_ms);
      process_cost c1 = cost_of(getpid());
      c1 += cost_of(server.pid);
      x->rtt_cost += c1 - c0;
      x->rtt_us.insert(x->rtt_us.end(), v.begin(), v.end());
    }
  }

  // 64 MiB: CAF as a message; troupe on the data plane (and as a message, for reference).
  std::vector<char> blob(s.bytes, 7), local(s.bytes, 3);
  const double gb = static_cast<double>(s.bytes) / 1e9;
  auto te_read = [&](troupe_peer& p, const memory_descriptor& d) {
    return gb / engine_seconds([&](transfer_done cb) { p.node->te->read(d, 0, local.data(), s.bytes, cb); });
  };
  auto te_write = [&](troupe_peer& p, const memory_descriptor& d) {
    return gb / engine_seconds([&](transfer_done cb) { p.node->te->write(d, 0, local.data(), s.bytes, cb); });
  };
  std::vector<double> memcpy_gbps, cma_gbps, raw_tcp_gbps;
  const int raw_fd = s.big_reps > 0 ? raw_tcp_connect(server.raw_port) : -1;
  for (int rep = 0; s.big_reps > 0 && rep <= s.big_reps; ++rep) {
    const bool keep = rep > 0;  // rep 0 warms connections and pages
    const double caf_gbps = gb / blob_seconds(*c.sys, *caf_echo, blob);
    if (keep) rc.message_gbps.push_back(caf_gbps);
    for (auto* p : {&ptcp, &pshm}) {
      system_result& x = p == &ptcp ? rt : rs;
      const double rd = te_read(*p, p->region), wr = te_write(*p, p->region);
      if (keep) {
        x.read_gbps.push_back(rd);
        x.write_gbps.push_back(wr);
      }
      if (p == &pshm) {
        const double hr = te_read(*p, p->heap_region), hw = te_write(*p, p->heap_region);
        if (keep) {
          x.heap_read_gbps.push_back(hr);
          x.heap_write_gbps.push_back(hw);
        }
      }
      if (s.message_blob) {
        const double m = gb / blob_seconds(*p->node->sys, p->echo, blob);
        if (keep) x.message_gbps.push_back(m);
      }
    }
    // Ceilings: one memcpy here, one process_vm_readv from the server (what
    // cma does), one plain TCP socket on loopback.
    auto t0 = steady::now();
    std::memcpy(local.data(), blob.data(), s.bytes);
    const double mc = gb / std::chrono::duration<double>(steady::now() - t0).count();
    iovec to{local.data(), s.bytes}, from{reinterpret_cast<void*>(server.shm_address), s.bytes};
    t0 = steady::now();
    const ssize_t got = process_vm_readv(server.pid, &to, 1, &from, 1, 0);
    const double cma = got == static_cast<ssize_t>(s.bytes)
                           ? gb / std::chrono::duration<double>(steady::now() - t0).count()
                           : 0;  // not permitted here (ptrace scope): shown as 0
    const double raw = gb / raw_tcp_seconds(raw_fd, local.data(), s.bytes);
    if (keep) {
      memcpy_gbps.push_back(mc);
      cma_gbps.push_back(cma);
      raw_tcp_gbps.push_back(raw);
    }
  }
  if (raw_fd >= 0) close(raw_fd);

  // Idle cost: both processes, everything connected, nothing sent, 3 s.
  std::this_thread::sleep_for(1s);
  const auto w0 = steady::now();
  const double me0 = cost_of(getpid()).cpu_s, srv0 = cost_of(server.pid).cpu_s;
  const process_cost ucx0 = cost_of(server.pid, "troupe.ucx");
  std::this_thread::sleep_for(3s);
  const double wall = std::chrono::duration<double>(steady::now() - w0).count();
  const double idle_client = 100 * (cost_of(getpid()).cpu_s - me0) / wall;
  const double idle_server = 100 * (cost_of(server.pid).cpu_s - srv0) / wall;
  // The server's two ucx_node progress threads alone (named troupe.ucx).
  const double idle_server_ucx = 100 * (cost_of(server.pid, "troupe.ucx") - ucx0).cpu_s / wall;

  // The table.
  const double caf_bw = median(rc.message_gbps);
  struct row {
    std::string metric;
    double caf, tcp, shm;
    std::string target;
    int met_tcp = -1, met_shm = -1;  // -1: no target; 0/1
    bool lower_better = true;
  };
  std::vector<row> rows;
  const double p50c = percentile(rc.rtt_us, 50), p50t = percentile(rt.rtt_us, 50), p50s = percentile(rs.rtt_us, 50);
  rows.push_back(
      {"round trip p50 (us)", p50c, p50t, p50s, "<= 0.5 x CAF", p50t <= 0.5 * p50c, p50s <= 0.5 * p50c, true});
  for (double p : {90.0, 99.0})
    rows.push_back({"round trip p" + fmt(p, 0) + " (us)", percentile(rc.rtt_us, p), percentile(rt.rtt_us, p),
                    percentile(rs.rtt_us, p), "", -1, -1, true});
  auto per_rtt = [](const system_result& x, double v) {
    return v / static_cast<double>(std::max<size_t>(x.rtt_us.size(), 1));
  };
  rows.push_back({"CPU per round trip, both procs (us)", per_rtt(rc, 1e6 * rc.rtt_cost.cpu_s),
                  per_rtt(rt, 1e6 * rt.rtt_cost.cpu_s), per_rtt(rs, 1e6 * rs.rtt_cost.cpu_s), "", -1, -1, true});
  rows.push_back({"context switches per round trip", per_rtt(rc, rc.rtt_cost.switches),
                  per_rtt(rt, rt.rtt_cost.switches), per_rtt(rs, rs.rtt_cost.switches), "", -1, -1, true});
  const double rdt = median(rt.read_gbps), rds = median(rs.read_gbps);
  const double wrt = median(rt.write_gbps), wrs = median(rs.write_gbps);
  rows.push_back({"64 MiB GB/s: troupe engine read", caf_bw, rdt, rds, "tcp >= 3 x CAF, shm >= 8 GB/s",
                  rdt >= 3 * caf_bw, rds >= 8, false});
  rows.push_back({"64 MiB GB/s: troupe engine write", caf_bw, wrt, wrs, "tcp >= 3 x CAF, shm >= 8 GB/s",
                  wrt >= 3 * caf_bw, wrs >= 8, false});
  rows.push_back({"  shm read, heap region (owner)", caf_bw, rdt, median(rs.heap_read_gbps), "(reference)", -1, -1,
                  false});
  rows.push_back({"  shm write, heap region (owner)", caf_bw, wrt, median(rs.heap_write_gbps), "(reference)",
                  -1, -1, false});
  if (s.message_blob)
    rows.push_back({"64 MiB GB/s: troupe actor message", caf_bw, median(rt.message_gbps), median(rs.message_gbps),
                    "(reference)", -1, -1, false});

  std::printf("\nRemote actors, two processes on this host: troupe over UCX vs CAF BASP (caf::io over TCP)\n");
  std::printf(
      "round trips: %d rounds x %d per system, interleaved; 64 MiB: median of %d (CAF column: 64 MiB as a "
      "CAF message, request -> ack)\n",
      s.rounds, s.rtt, s.big_reps);
  std::printf(
      "CAF scheduler (every system, both processes): max-threads %s, polling %s; request timeout %s; "
      "ucx_node busy_poll %s\n\n",
      s.caf_threads > 0 ? std::to_string(s.caf_threads).c_str() : "default (4)", s.caf_poll.c_str(),
      s.request_timeout_ms > 0 ? (std::to_string(s.request_timeout_ms) + " ms").c_str() : "none",
      s.busy_poll_us >= 0 ? (std::to_string(s.busy_poll_us) + " us").c_str()
                          : (std::to_string(ucx_node_options{}.busy_poll.count()) + " us (default)").c_str());
  std::printf("%-34s %10s %11s %11s %10s %10s  %-30s %s\n", "metric", "CAF BASP", "troupe tcp", "troupe shm", "tcp/CAF",
              "shm/CAF", "target", "met?");
  nlohmann::json jrows = nlohmann::json::array();
  auto yes_no = [](int m) { return m < 0 ? nlohmann::json(nullptr) : nlohmann::json(m == 1); };
  for (const auto& r : rows) {
    const int prec = r.lower_better ? 1 : 2;
    const std::string met =
        r.met_tcp < 0 ? std::string()
                      : std::string("tcp ") + (r.met_tcp ? "yes" : "NO") + ", shm " + (r.met_shm ? "yes" : "NO");
    std::printf("%-34s %10s %11s %11s %10s %10s  %-30s %s\n", r.metric.c_str(), fmt(r.caf, prec).c_str(),
                fmt(r.tcp, prec).c_str(), fmt(r.shm, prec).c_str(), fmt(r.tcp / r.caf, 3).c_str(),
                fmt(r.shm / r.caf, 3).c_str(), r.target.c_str(), met.c_str());
    jrows.push_back({{"metric", r.metric},
                     {"caf_basp", r.caf},
                     {"troupe_tcp", r.tcp},
                     {"troupe_shm", r.shm},
                     {"ratio_tcp_to_caf", r.tcp / r.caf},
                     {"ratio_shm_to_caf", r.shm / r.caf},
                     {"target", r.target},
                     {"met_tcp", yes_no(r.met_tcp)},
                     {"met_shm", yes_no(r.met_shm)}});
  }
  if (s.big_reps > 0)
    std::printf(
        "\n64 MiB ceilings on this host, same run (median GB/s): memcpy in one process %.2f; "
        "process_vm_readv from the server (a cma copy) %.2f; one plain TCP socket on loopback %.2f\n",
        median(memcpy_gbps), median(cma_gbps), median(raw_tcp_gbps));
  std::printf(
      "\nidle CPU, 1 s after the last transfer, over %.1f s: client process %.2f%% of a core, server "
      "process %.2f%% (each: 3 actor systems, 2 troupe nodes, 2 engines); the server's 2 ucx_node progress threads "
      "%.3f%%\n",
      wall, idle_client, idle_server, idle_server_ucx);

  nlohmann::json j;
  j["bench"] = "remote_actor";
  j["settings"] = {{"rtt", s.rtt},
                   {"rounds", s.rounds},
                   {"big_reps", s.big_reps},
                   {"bytes", s.bytes},
                   {"caf_threads", s.caf_threads},
                   {"caf_poll", s.caf_poll},
                   {"request_timeout_ms", s.request_timeout_ms},
                   {"busy_poll_us", s.busy_poll_us >= 0 ? s.busy_poll_us : ucx_node_options{}.busy_poll.count()}};
  j["rows"] = jrows;
  j["idle_cpu_percent"] = {{"client", idle_client},
                           {"server", idle_server},
                           {"server_ucx_node_threads", idle_server_ucx},
                           {"window_s", wall}};
  j["ceilings_gbps"] = {{"memcpy", memcpy_gbps}, {"process_vm_readv", cma_gbps}, {"raw_tcp_socket", raw_tcp_gbps}};
  for (const auto* x : {&rc, &rt, &rs})
    j["systems"][x->name] = {
        {"rtt_us_p50", percentile(x->rtt_us, 50)},
        {"rtt_us_p90", percentile(x->rtt_us, 90)},
        {"rtt_us_p99", percentile(x->rtt_us, 99)},
        {"rtt_us_mean",
         std::accumulate(x->rtt_us.begin(), x->rtt_us.end(), 0.0) / std::max<size_t>(x->rtt_us.size(), 1)},
        {"rtt_samples", x->rtt_us.size()},
        {"rtt_cpu_us_per_round_trip", 1e6 * x->rtt_cost.cpu_s / std::max<size_t>(x->rtt_us.size(), 1)},
        {"rtt_context_switches_per_round_trip", x->rtt_cost.switches / std::max<size_t>(x->rtt_us.size(), 1)},
        {"read_gbps", x->read_gbps},
        {"write_gbps", x->write_gbps},
        {"heap_read_gbps", x->heap_read_gbps},
        {"heap_write_gbps", x->heap_write_gbps},
        {"message_gbps", x->message_gbps}};
  std::ofstream(json_path) << j.dump(2) << "\n";
  std::printf("wrote %s\n", json_path.c_str());
  if (!png_path.empty())
    std::printf("%s\n", plot_cdf(png_path,
                                 {{"CAF BASP (tcp)", rc.rtt_us}, {"troupe tcp", rt.rtt_us}, {"troupe shm", rs.rtt_us}},
                                 "request/response round trip between two processes")
                            .c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"remote actors: troupe over UCX vs CAF BASP, round trip and 64 MiB, two processes"};
  settings s;
  std::string role = "client", json = "remote_actor.json", png = "remote_actor.png";
  app.add_option("--role", role, "client (default) or server (started by the client)")
      ->check(CLI::IsMember({"client", "server"}));
  app.add_option("--rtt", s.rtt, "round trips per system per round")->check(CLI::Range(10, 10000000));
  app.add_option("--rounds", s.rounds, "interleaved rounds")->check(CLI::Range(1, 1000));
  app.add_option("--big-reps", s.big_reps, "64 MiB transfers per kind, after one warm-up")->check(CLI::Range(0, 1000));
  app.add_option("--bytes", s.bytes, "size of the large transfer")->check(CLI::Range(size_t{1}, size_t{1} << 31));
  app.add_option("--caf-threads", s.caf_threads, "scheduler.max-threads of every actor system (0: CAF's default)")
      ->check(CLI::Range(0, 256));
  app.add_option("--caf-poll", s.caf_poll,
                 "work-stealing polling of every actor system: low-latency (no 50 us sleeps; the default here), "
                 "default (CAF's), spin")
      ->check(CLI::IsMember({"default", "low-latency", "spin"}));
  app.add_option("--busy-poll-us", s.busy_poll_us, "ucx_node_options::busy_poll of the troupe nodes (-1: default)")
      ->check(CLI::Range(-1, 1000000));
  app.add_flag("--message-blob", s.message_blob,
               "also time 64 MiB as one troupe actor message (reference; wire_reader::apply_raw reads freed memory "
               "for a blob this large and crashes the server until that is fixed)");
  app.add_option("--request-timeout-ms", s.request_timeout_ms,
                 "timeout of each round-trip request, both systems (0: none; a timeout wakes CAF's clock thread twice "
                 "per request)")
      ->check(CLI::Range(0, 3600000));
  app.add_option("--only", s.only, "time the round trips of one system only (profiling)")
      ->check(CLI::IsMember({"caf", "tcp", "shm"}));
  app.add_option("--json", json, "where to write the results");
  app.add_option("--png", png, "round-trip CDF plot (empty: none)");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  try {
    if (role == "server") return run_server(s, 3, 4);
    return run_client(s, json, png, argv[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_remote_actor (%s): %s\n", role.c_str(), e.what());
    return 1;
  }
}
