// Inside the nccl transfer engine: its control messages, operations, halves
// and pairs, and the engine class its source files share
// (transfer_engine_nccl.cpp: construction, the public calls, control
// messages, connecting pairs, the engine thread's loop and shutdown;
// _ops.cpp: the life of an operation and the messages that drive it). The
// threads, the order of a transfer's halves and the messages are described
// at the top of transfer_engine_nccl.cpp; the design in
// transfer_engine_cuda.hpp.
#pragma once

#include <nccl.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "transport/cuda/transfer_engine_cuda_impl.hpp"
#include "transport/process_watch.hpp"
#include "transport/transfer_engine_cuda.hpp"

#ifdef TROUPE_HAVE_NCCL

namespace troupe {

namespace te_nccl {

using te_util::log;
using te_util::outcome;
using clock_type = std::chrono::steady_clock;

inline bool nccl_ok(ncclResult_t r, const char* what, const char* file, int line) {
  if (r == ncclSuccess || r == ncclInProgress) return true;
  log()->error("{}: {} at {}:{}", what, ncclGetErrorString(r), file, line);
  return false;
}

/// Runs an NCCL call of the data plane; true unless it failed (logged with file:line).
#define TROUPE_TE_NCCL_OK(expr) nccl_ok((expr), #expr, __FILE__, __LINE__)

inline constexpr uint64_t ctl_tag = 1;
inline constexpr auto poll_interval = std::chrono::microseconds(100);
/// How often, while operations wait, the peers' processes are looked at
/// (check_peers): each look is one poll() per pair on this host.
inline constexpr auto peer_check_interval = std::chrono::milliseconds(10);

enum msg_kind : uint32_t { msg_id = 1, msg_req_read, msg_req_write, msg_rts, msg_nack, msg_ready, msg_go, msg_cancel, msg_ack };

struct ctl_msg {
  uint32_t kind = 0;
  uint32_t status = 0;  // an outcome
  uint64_t op = 0;
  uint64_t op2 = 0;
  uint64_t seq = 0;
  uint64_t region = 0, token = 0, offset = 0, bytes = 0, tag = 0;
  uint32_t send = 0;
  uint32_t reserved = 0;
  char id[NCCL_UNIQUE_ID_BYTES] = {};
};

enum class op_kind { read, write, send, recv };

struct op {
  uint64_t id = 0;
  op_kind kind = op_kind::read;
  uint64_t peer = 0;
  memory_descriptor remote;
  size_t offset = 0;
  void* local = nullptr;
  size_t bytes = 0;
  uint64_t tag = 0;
  transfer_done done;
  clock_type::time_point deadline;
  bool started = false;    // its request went out (or, recv, it is posted)
  bool issued = false;     // its half is on the stream
  bool half_done = false;  // its half completed
  bool acked = false;      // write/send: the peer's half completed
  outcome result = outcome::ok;
  size_t moved = 0;
};

// One side of a transfer.
struct half {
  uint64_t peer = 0;
  bool is_send = false;
  void* ptr = nullptr;
  size_t bytes = 0;
  uint64_t op = 0;                      // the local operation it belongs to (0: serving a peer)
  std::function<void()> on_complete;    // after its event (serving halves)
};

struct pair_state {
  engine_address peer;
  int rank = 0;
  enum class st { idle, connecting, up } state = st::idle;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  clock_type::time_point deadline;
  std::vector<transfer_done> waiters;
  bool have_id = false;
  ncclUniqueId id{};
  bool recv_posted = false;
  uint64_t next_seq = 0;
  std::map<uint64_t, ctl_msg> early_go;
  std::deque<std::pair<cudaEvent_t, uint64_t>> in_flight;  // event, half id
  std::vector<uint64_t> waiting_ops;
  std::vector<ctl_msg> early;  // messages that came before this side saw the communicator up
  // The peer's process when it runs on this host: NCCL kernels would wait
  // for a dead peer until the timeout; its exit fails the pair at once.
  std::shared_ptr<process_watch> watch;
  bool peer_exited = false;  ///< the watch saw it exit: connect() fails at once
};

struct unexpected_rts {
  uint64_t peer, tag, op, bytes;
  clock_type::time_point expires;
};

class nccl_engine final : public nccl_transfer_engine {
 public:
  explicit nccl_engine(const nccl_engine_options& o);
  ~nccl_engine() override;

  const char* backend() const override { return "nccl"; }
  engine_address address() const override { return address_; }
  std::chrono::milliseconds timeout() const override { return opt_.timeout; }

  memory_descriptor register_memory(void* base, size_t bytes) override;
  errc unregister_memory(uint64_t region) override;
  void read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) override;
  void write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
             transfer_done done) override;
  void send(const engine_address& to, uint64_t tag, const void* local, size_t bytes, transfer_done done) override;
  void recv(const engine_address& from, uint64_t tag, void* local, size_t capacity, transfer_done done) override;
  void connect(const engine_address& peer, transfer_done done) override;
  void disconnect(const engine_address& peer) override;

  transfer_engine_stats stats() const override { return c_.snapshot(); }

 private:
  struct region {
    std::byte* base;
    size_t bytes;
    uint64_t token;
  };

  // ---- any thread (transfer_engine_nccl.cpp) ----
  std::unique_ptr<op> make(op_kind k, uint64_t peer, void* local, size_t bytes, transfer_done done);
  void post(std::function<void()> fn);
  void submit(std::unique_ptr<op> o);

  // ---- control messages (transfer_engine_nccl.cpp) ----
  void send_ctl(uint64_t peer, const ctl_msg& m);
  void post_ctl_recv(const engine_address& peer);

  // ---- connecting (transfer_engine_nccl.cpp) ----
  pair_state& pair_for(const engine_address& peer);
  void start_connect(const engine_address& peer, transfer_done done);
  void init_comm(pair_state& p);
  void poll_connecting(clock_type::time_point now);
  bool settle_comm(pair_state& p);
  void fail_pair(pair_state& p, outcome why, const std::string& reason);

  // ---- operations (transfer_engine_nccl_ops.cpp) ----
  void start(std::unique_ptr<op> owned);
  void run_op(op* o, pair_state& p);
  void accept_rts(op* r, pair_state& p, uint64_t sender_op, uint64_t bytes);
  void ready(pair_state& p, uint64_t mine, uint64_t theirs);
  void issue(pair_state& p, uint64_t half_id, bool is_send, void* ptr, size_t bytes);
  const region* serve_check(const ctl_msg& m);
  void on_msg(uint64_t from, const ctl_msg& m);
  void poll_events();
  void complete_half(uint64_t hid);
  void settle(op* o);
  void finish(op* o, outcome how, size_t moved);

  // ---- the engine thread (transfer_engine_nccl.cpp) ----
  void tick(clock_type::time_point now);
  /// Fails every active pair whose peer process on this host has exited,
  /// and marks such pairs so that connecting again fails at once.
  void check_peers();
  void run();
  void shutdown();

  nccl_engine_options opt_;
  std::unique_ptr<transfer_engine> ctl_;
  engine_address address_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> next_id_{1};

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<std::function<void()>> commands_;
  std::thread thread_;

  std::mutex regions_mu_;
  std::unordered_map<uint64_t, region> regions_;
  uint64_t next_region_ = 1;

  // Engine thread only.
  std::unordered_map<uint64_t, pair_state> pairs_;
  std::unordered_map<uint64_t, std::unique_ptr<op>> ops_;
  std::unordered_map<uint64_t, half> halves_;
  std::map<std::pair<uint64_t, uint64_t>, std::deque<uint64_t>> posted_;
  std::deque<unexpected_rts> unexpected_;
  te_util::counters c_;
};

}  // namespace te_nccl

}  // namespace troupe

#endif  // TROUPE_HAVE_NCCL
