// Data-plane throughput and latency of the ucx transfer engine between two
// processes on this host, over tcp only and over shared memory: 64 MiB read,
// write and send/recv (GB/s, median of the repetitions), and the round trip of
// a 64 B read (median and p99 of sequential reads). The owner runs in a
// child process so that each side has its own process, as two instances on
// one host would. Prints a table and writes JSON.
#include <CLI/CLI.hpp>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "transport/transfer_engine_ucx.hpp"
#include "transport/wire_codec.hpp"

using namespace troupe;

namespace {

using steady = std::chrono::steady_clock;

// Waits for one operation.
struct waiter {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  errc e = errc::ok;
  transfer_done cb() {
    return [this](errc err, size_t) {
      std::lock_guard<std::mutex> lock(mu);
      e = err;
      done = true;
      cv.notify_all();
    };
  }
  errc wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    return e;
  }
};

template <class Start>
double seconds(Start start) {
  waiter w;
  const auto t0 = steady::now();
  start(w.cb());
  if (w.wait() != errc::ok) throw error(errc::errc_io, "transfer failed");
  return std::chrono::duration<double>(steady::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int busy_poll_us = 20;  // --busy-poll-us
constexpr size_t bench_bytes = 64u << 20;

struct row {
  std::string path, op;
  double gbps = 0, lat_us_p50 = 0, lat_us_p99 = 0;
};

// The owner (this binary run with --owner): registers `bytes`, reports the
// descriptor on fd 3, reads the parent's address from fd 4, then echoes tag 1
// as tag 2 until it is killed.
[[noreturn]] void run_owner(bool shm, size_t bytes) {
  constexpr int up = 3, down = 4;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  ucx_engine_options o;
  o.name = "owner";
  o.advertised_host = "127.0.0.1";
  o.shared_memory = shm;
  o.busy_poll = std::chrono::microseconds(busy_poll_us);
  auto te = transfer_engine_ucx(o);
  std::vector<char> memory(bytes, 1);
  memory_descriptor d = te->register_memory(memory.data(), memory.size());
  const std::vector<char> packed = wire_pack(d);
  const uint32_t len = static_cast<uint32_t>(packed.size());
  if (write(up, &len, 4) != 4 || write(up, packed.data(), len) != static_cast<ssize_t>(len)) _exit(2);
  uint32_t plen = 0;
  if (read(down, &plen, 4) != 4) _exit(3);
  std::vector<char> pb(plen);
  if (read(down, pb.data(), plen) != static_cast<ssize_t>(plen)) _exit(3);
  engine_address parent;
  if (wire_unpack(pb, parent, nullptr) != errc::ok) _exit(4);
  std::vector<char> buf(bytes);
  for (;;) {
    waiter r;
    te->recv(parent, 1, buf.data(), buf.size(), r.cb());
    r.wait();
    waiter s;
    te->send(parent, 2, buf.data(), buf.size(), s.cb());
    s.wait();
  }
}

// Starts the owner as a new image of this binary (exec right after fork): a
// child that only forks from a process that has used UCX can hang in its
// ucp_init on a lock of UCX's memory hooks that the fork copied held.
pid_t start_owner(bool shm, memory_descriptor& region, int& to_child) {
  int up[2], down[2];
  if (pipe(up) != 0 || pipe(down) != 0) throw error(errc::errc_io, "pipe");
  std::string self = "/proc/self/exe", mode = "--owner", path = shm ? "shm" : "tcp", poll = "--busy-poll-us",
              poll_us = std::to_string(busy_poll_us);
  char* args[] = {self.data(), mode.data(), path.data(), poll.data(), poll_us.data(), nullptr};
  const pid_t pid = fork();
  if (pid < 0) throw error(errc::errc_io, "fork");
  if (pid == 0) {  // only async-signal-safe calls until exec
    dup2(up[1], 3);
    dup2(down[0], 4);
    for (int fd : {up[0], up[1], down[0], down[1]})
      if (fd > 4) close(fd);
    execv(self.c_str(), args);
    _exit(127);
  }
  close(up[1]);
  close(down[0]);
  uint32_t len = 0;
  if (read(up[0], &len, 4) != 4) throw error(errc::errc_io, "owner did not start");
  std::vector<char> packed(len);
  if (read(up[0], packed.data(), len) != static_cast<ssize_t>(len)) throw error(errc::errc_io, "owner did not start");
  close(up[0]);
  if (wire_unpack(packed, region, nullptr) != errc::ok) throw error(errc::errc_io, "bad descriptor");
  to_child = down[1];
  return pid;
}

std::vector<row> measure(bool shm, size_t bytes, int reps, int small_reps) {
  memory_descriptor d;
  int to_child = -1;
  const pid_t pid = start_owner(shm, d, to_child);
  ucx_engine_options o;
  o.name = "bench";
  o.advertised_host = "127.0.0.1";
  o.shared_memory = shm;
  o.timeout = std::chrono::seconds(60);
  o.busy_poll = std::chrono::microseconds(busy_poll_us);
  auto te = transfer_engine_ucx(o);
  engine_address me = te->address();
  const std::vector<char> packed = wire_pack(me);
  const uint32_t len = static_cast<uint32_t>(packed.size());
  if (write(to_child, &len, 4) != 4 || write(to_child, packed.data(), len) != static_cast<ssize_t>(len))
    throw error(errc::errc_io, "pipe");
  const std::string path = shm ? "shm" : "tcp";
  std::vector<char> buf(bytes, 2);
  std::vector<row> rows;
  auto bandwidth = [&](const std::string& op, auto once) {
    for (int i = 0; i < 2; ++i) once();  // warm: connection, page faults
    std::vector<double> rates;
    for (int i = 0; i < reps; ++i) rates.push_back(static_cast<double>(bytes) / once() / 1e9);
    rows.push_back({path, op, median(rates), 0, 0});
  };
  bandwidth("read 64 MiB", [&] {
    return seconds([&](transfer_done cb) { te->read(d, 0, buf.data(), bytes, std::move(cb)); });
  });
  bandwidth("write 64 MiB", [&] {
    return seconds([&](transfer_done cb) { te->write(d, 0, buf.data(), bytes, std::move(cb)); });
  });
  std::vector<char> back(bytes);
  bandwidth("send+echo 64 MiB (2x bytes)", [&] {
    const double t = seconds([&](transfer_done cb) {
      auto got = std::make_shared<waiter>();
      te->recv(d.owner, 2, back.data(), back.size(), got->cb());
      waiter sent;
      te->send(d.owner, 1, buf.data(), bytes, sent.cb());
      if (sent.wait() != errc::ok) throw error(errc::errc_io, "send failed");
      cb(got->wait(), bytes);
    });
    return t / 2;  // each way moves `bytes`
  });
  std::vector<double> lat;
  std::vector<char> small(64);
  for (int i = 0; i < small_reps; ++i)
    lat.push_back(1e6 * seconds([&](transfer_done cb) { te->read(d, 64, small.data(), 64, std::move(cb)); }));
  std::sort(lat.begin(), lat.end());
  rows.push_back({path, "read 64 B round trip", 0, lat[lat.size() / 2], lat[lat.size() * 99 / 100]});
  te.reset();
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  close(to_child);
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ucx transfer engine: 64 MiB GB/s and 64 B latency, tcp vs shared memory"};
  int reps = 5, small_reps = 2000;
  std::string json = "transfer_engine.json";
  app.add_option("--reps", reps, "repetitions of each 64 MiB transfer")->check(CLI::Range(1, 1000));
  app.add_option("--small-reps", small_reps, "64 B reads for the latency")->check(CLI::Range(10, 1000000));
  app.add_option("--json", json, "where to write the results");
  app.add_option("--busy-poll-us", busy_poll_us, "ucx_engine_options::busy_poll of both engines")
      ->check(CLI::Range(0, 1000000));
  std::string owner;  // set only in the owner process this bench starts
  app.add_option("--owner", owner, "internal: run as the owner over tcp or shm")->check(CLI::IsMember({"tcp", "shm"}));
  CLI11_PARSE(app, argc, argv);
  if (!owner.empty()) run_owner(owner == "shm", bench_bytes);
  if (getenv("TROUPE_TE_TRACE")) spdlog::set_level(spdlog::level::trace);  // prints the UCX lanes of each endpoint
  try {
    std::vector<row> rows;
    for (const bool shm : {false, true})
      for (auto& r : measure(shm, bench_bytes, reps, small_reps)) rows.push_back(r);
    std::printf("%-5s %-28s %10s %12s %12s\n", "path", "operation", "GB/s", "p50 us", "p99 us");
    for (const auto& r : rows)
      std::printf("%-5s %-28s %10.2f %12.1f %12.1f\n", r.path.c_str(), r.op.c_str(), r.gbps, r.lat_us_p50,
                  r.lat_us_p99);
    std::ofstream out(json);
    out << "{\"bench\": \"transfer_engine\", \"bytes\": " << bench_bytes << ", \"rows\": [";
    for (size_t i = 0; i < rows.size(); ++i)
      out << (i ? ", " : "") << "{\"path\": \"" << rows[i].path << "\", \"op\": \"" << rows[i].op
          << "\", \"gbps\": " << rows[i].gbps << ", \"p50_us\": " << rows[i].lat_us_p50
          << ", \"p99_us\": " << rows[i].lat_us_p99 << "}";
    out << "]}\n";
    std::printf("wrote %s\n", json.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench transfer_engine: %s\n", e.what());
    return 1;
  }
  return 0;
}
