// The nccl transfer engine (design in transfer_engine_cuda.hpp).
//
// Threads: one engine thread owns every communicator, stream and table; the
// public calls and the control engine's callbacks hand it commands. While
// NCCL operations are in flight it polls their events every 100 us, else it
// sleeps until a command or the next deadline. Communicators are
// non-blocking (ncclConfig.blocking = 0) so that a peer that never joins or
// never matches cannot block the thread; every NCCL call is followed by
// waiting, with a deadline, for the communicator to leave ncclInProgress.
//
// Order: a transfer has two halves, a send on one engine and a recv on the
// other. A half is issued only after the request is checked (range, token,
// recv capacity) on the side that owns the region or the recv, and the pair's
// rank 0 numbers the transfers: it issues its half with the next sequence
// number and tells rank 1 (go), which issues its halves strictly in that
// order, so NCCL sees the same order on both sides. An operation gives up
// quietly (on timeout) only while no half of its transfer can be on a stream;
// otherwise its pair fails (tick). Messages (over the private ucx engine, tag 1):
//   id        rank 0 -> 1: the unique id of the pair's communicator
//   req_read / req_write / rts   initiator -> owner / receiver (op = initiator's half)
//   nack      the request is refused (status)
//   ready     rank 1 -> 0: checked; op = rank 0's half, op2 = rank 1's half
//   go        rank 0 -> 1: issue half `op` as number `seq`
//   cancel    rank 0 -> 1: half `op` will never be issued
//   ack       the receiving half of a write or send completed (op = initiator's op)
#include <nccl.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "transport/cuda/transfer_engine_cuda_impl.hpp"
#include "transport/transfer_engine_cuda.hpp"

#ifdef TROUPE_HAVE_NCCL

namespace troupe {

namespace {

using te_util::log;
using te_util::outcome;
using clock_type = std::chrono::steady_clock;

bool nccl_ok(ncclResult_t r, const char* what, const char* file, int line) {
  if (r == ncclSuccess || r == ncclInProgress) return true;
  log()->error("{}: {} at {}:{}", what, ncclGetErrorString(r), file, line);
  return false;
}

/// Runs an NCCL call of the data plane; true unless it failed (logged with file:line).
#define TROUPE_TE_NCCL_OK(expr) nccl_ok((expr), #expr, __FILE__, __LINE__)

constexpr uint64_t ctl_tag = 1;
constexpr auto poll_interval = std::chrono::microseconds(100);

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
};

struct unexpected_rts {
  uint64_t peer, tag, op, bytes;
  clock_type::time_point expires;
};

class nccl_engine final : public nccl_transfer_engine {
 public:
  explicit nccl_engine(const nccl_engine_options& o) : opt_(o) {
    int count = 0;
    TROUPE_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (o.device < 0 || o.device >= count)
      throw error(errc::errc_invalid_argument, "transfer_engine nccl: no device " + std::to_string(o.device));
    ucx_engine_options c = o.control;
    c.name = o.name + "-ctl";
    c.timeout = o.timeout;
    ctl_ = transfer_engine_ucx(c);
    address_ = ctl_->address();
    address_.device = o.device;
    thread_ = std::thread([this] { run(); });
  }

  ~nccl_engine() override {
    stopping_ = true;  // control callbacks post nothing more
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();  // operations cancelled, communicators aborted
    ctl_.reset();    // only now: the engine thread used it
  }

  const char* backend() const override { return "nccl"; }
  engine_address address() const override { return address_; }
  std::chrono::milliseconds timeout() const override { return opt_.timeout; }

  memory_descriptor register_memory(void* base, size_t bytes) override {
    cudaPointerAttributes a{};
    TROUPE_CUDA_CHECK(cudaPointerGetAttributes(&a, base));
    if (a.type != cudaMemoryTypeDevice || a.device != opt_.device)
      throw error(errc::errc_invalid_argument, "transfer_engine nccl: registers memory of device " +
                                                   std::to_string(opt_.device) + " only");
    memory_descriptor d;
    d.backend = "nccl";
    d.bytes = bytes;
    d.address = reinterpret_cast<uintptr_t>(base);
    d.token = te_util::random_id();
    d.owner = address_;
    std::lock_guard<std::mutex> lock(regions_mu_);
    d.region = next_region_++;
    regions_[d.region] = {static_cast<std::byte*>(base), bytes, d.token};
    ++c_.registrations;
    return d;
  }

  errc unregister_memory(uint64_t region) override {
    std::lock_guard<std::mutex> lock(regions_mu_);
    if (regions_.erase(region) == 0) return errc::errc_invalid_argument;
    --c_.registrations;
    return errc::ok;
  }

  void read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) override {
    auto o = make(op_kind::read, remote.owner.engine, local, bytes, std::move(done));
    o->remote = remote;
    o->offset = offset;
    submit(std::move(o));
  }

  void write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
             transfer_done done) override {
    auto o = make(op_kind::write, remote.owner.engine, const_cast<void*>(local), bytes, std::move(done));
    o->remote = remote;
    o->offset = offset;
    submit(std::move(o));
  }

  void send(const engine_address& to, uint64_t tag, const void* local, size_t bytes, transfer_done done) override {
    auto o = make(op_kind::send, to.engine, const_cast<void*>(local), bytes, std::move(done));
    o->tag = tag;
    submit(std::move(o));
  }

  void recv(const engine_address& from, uint64_t tag, void* local, size_t capacity, transfer_done done) override {
    auto o = make(op_kind::recv, from.engine, local, capacity, std::move(done));
    o->tag = tag;
    submit(std::move(o));
  }

  void connect(const engine_address& peer, transfer_done done) override {
    post([this, peer, done = std::move(done)]() mutable { start_connect(peer, std::move(done)); });
  }

  void disconnect(const engine_address& peer) override {
    const uint64_t id = peer.engine;
    post([this, id] {
      if (auto it = pairs_.find(id); it != pairs_.end()) fail_pair(it->second, outcome::peer_lost, "disconnected");
    });
    ctl_->disconnect(peer);
  }

  transfer_engine_stats stats() const override { return c_.snapshot(); }

 private:
  struct region {
    std::byte* base;
    size_t bytes;
    uint64_t token;
  };

  std::unique_ptr<op> make(op_kind k, uint64_t peer, void* local, size_t bytes, transfer_done done) {
    auto o = std::make_unique<op>();
    o->kind = k;
    o->peer = peer;
    o->local = local;
    o->bytes = bytes;
    o->done = std::move(done);
    return o;
  }

  void post(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      commands_.push_back(std::move(fn));
    }
    cv_.notify_all();
  }

  void submit(std::unique_ptr<op> o) {
    o->id = next_id_++;
    o->deadline = clock_type::now() + opt_.timeout;
    ++c_.started;
    ++c_.pending;
    op* raw = o.release();
    bool accepted = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stop_) {
        commands_.push_back([this, raw] { start(std::unique_ptr<op>(raw)); });
        accepted = true;
      }
    }
    if (accepted) return cv_.notify_all();
    std::unique_ptr<op> o2(raw);
    c_.ended(outcome::cancelled, 0, false);
    o2->done(transfer_error::cancelled, 0);
  }

  // ---- control messages ----

  void send_ctl(uint64_t peer, const ctl_msg& m) {
    auto it = pairs_.find(peer);
    if (it == pairs_.end()) return;
    auto buf = std::make_shared<ctl_msg>(m);
    ctl_->send(it->second.peer, ctl_tag, buf.get(), sizeof(ctl_msg), [buf](errc, size_t) {});
  }

  void post_ctl_recv(const engine_address& peer) {
    if (stopping_) return;
    auto buf = std::make_shared<ctl_msg>();
    ctl_->recv(peer, ctl_tag, buf.get(), sizeof(ctl_msg), [this, peer, buf](errc e, size_t n) {
      if (stopping_) return;
      if (e == errc::ok && n == sizeof(ctl_msg)) {
        const ctl_msg m = *buf;
        post([this, id = peer.engine, m] { on_msg(id, m); });
      }
      post_ctl_recv(peer);  // the next one (also after a timeout: the channel just stays open)
    });
  }

  // ---- connecting ----

  pair_state& pair_for(const engine_address& peer) {
    auto [it, fresh] = pairs_.try_emplace(peer.engine);
    pair_state& p = it->second;
    if (fresh || p.peer.engine == 0) {
      p.peer = peer;
      p.rank = address_.engine < peer.engine ? 0 : 1;
    }
    return p;
  }

  void start_connect(const engine_address& peer, transfer_done done) {
    ++c_.started;
    ++c_.pending;
    if (peer.engine == 0 || peer.engine == address_.engine) {
      c_.ended(outcome::bad_request, 0, false);
      return done(transfer_error::bad_request, 0);
    }
    pair_state& p = pair_for(peer);
    if (p.state == pair_state::st::up) {
      c_.ended(outcome::ok, 0, false);
      return done(errc::ok, 0);
    }
    p.waiters.push_back(std::move(done));
    if (!p.recv_posted) {
      p.recv_posted = true;
      post_ctl_recv(peer);
    }
    if (p.state == pair_state::st::connecting) return;
    p.state = pair_state::st::connecting;
    p.deadline = clock_type::now() + opt_.timeout;
    if (p.rank == 0) {
      if (!TROUPE_TE_NCCL_OK(ncclGetUniqueId(&p.id))) return fail_pair(p, outcome::peer_lost, "ncclGetUniqueId");
      ctl_msg m;
      m.kind = msg_id;
      std::memcpy(m.id, &p.id, sizeof p.id);
      send_ctl(peer.engine, m);
      p.have_id = true;
    }
    if (p.have_id) init_comm(p);
  }

  void init_comm(pair_state& p) {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    if (!TROUPE_TE_NCCL_OK(ncclCommInitRankConfig(&p.comm, 2, p.id, p.rank, &cfg)))
      return fail_pair(p, outcome::peer_lost, "ncclCommInitRankConfig");
  }

  // Connecting pairs whose communicator finished initialising come up.
  void poll_connecting(clock_type::time_point now) {
    std::vector<uint64_t> ids;
    for (auto& [id, p] : pairs_)
      if (p.state == pair_state::st::connecting) ids.push_back(id);
    for (uint64_t id : ids) {
      pair_state& p = pairs_[id];
      if (p.comm != nullptr) {
        ncclResult_t state = ncclSuccess;
        ncclCommGetAsyncError(p.comm, &state);
        if (state == ncclSuccess) {
          if (!TROUPE_TE_CUDA_OK(cudaStreamCreateWithFlags(&p.stream, cudaStreamNonBlocking))) {
            fail_pair(p, outcome::peer_lost, "cudaStreamCreate");
            continue;
          }
          p.state = pair_state::st::up;
          ++c_.peers;
          ++c_.connections;
          log()->info("transfer engine {}: communicator with {:016x} up (rank {})", opt_.name, id, p.rank);
          for (auto& w : p.waiters) {
            c_.ended(outcome::ok, 0, false);
            w(errc::ok, 0);
          }
          p.waiters.clear();
          std::vector<ctl_msg> early;
          early.swap(p.early);
          for (const ctl_msg& m : early) on_msg(id, m);
          std::vector<uint64_t> waiting;
          waiting.swap(p.waiting_ops);
          for (uint64_t oid : waiting)
            if (auto it = ops_.find(oid); it != ops_.end() && p.state == pair_state::st::up) run_op(it->second.get(), p);
          continue;
        }
        if (state != ncclInProgress) {
          TROUPE_TE_NCCL_OK(state);
          fail_pair(p, outcome::peer_lost, "communicator init failed");
          continue;
        }
      }
      if (now >= p.deadline) fail_pair(p, outcome::timeout, "connect timed out");
    }
  }

  // Waits, bounded, for a non-blocking communicator to take a call.
  bool settle_comm(pair_state& p) {
    const auto until = clock_type::now() + std::chrono::milliseconds(std::min<int64_t>(opt_.timeout.count(), 5000));
    ncclResult_t state = ncclInProgress;
    while (clock_type::now() < until) {
      ncclCommGetAsyncError(p.comm, &state);
      if (state != ncclInProgress) break;
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    return state == ncclSuccess;
  }

  // Ends a pair: aborts its communicator (its kernels exit), fails every
  // operation and half that depends on it; connect() starts it again.
  void fail_pair(pair_state& p, outcome why, const std::string& reason) {
    const uint64_t id = p.peer.engine;
    log()->warn("transfer engine {}: communicator with {:016x} down: {}", opt_.name, id, reason);
    if (p.comm != nullptr) {
      ncclCommAbort(p.comm);
      p.comm = nullptr;
    }
    if (p.stream != nullptr) {
      cudaStreamSynchronize(p.stream);
      for (auto& [ev, h] : p.in_flight) cudaEventDestroy(ev);
      cudaStreamDestroy(p.stream);
      p.stream = nullptr;
      if (p.state == pair_state::st::up) --c_.peers;
    }
    // Reset in place (references to the pair stay valid); the control channel stays open.
    std::vector<transfer_done> waiters;
    waiters.swap(p.waiters);
    p.state = pair_state::st::idle;
    p.have_id = false;
    p.next_seq = 0;
    p.early_go.clear();
    p.in_flight.clear();
    p.waiting_ops.clear();
    p.early.clear();
    for (auto& w : waiters) {
      c_.ended(why, 0, false);
      w(te_util::outcome_errc(why), 0);
    }
    std::vector<uint64_t> dead_ops;
    for (auto& [oid, o] : ops_)
      if (o->peer == id && o->kind != op_kind::recv) dead_ops.push_back(oid);
    for (auto it = halves_.begin(); it != halves_.end();) {
      if (it->second.peer != id) {
        ++it;
        continue;
      }
      if (it->second.op != 0)
        dead_ops.push_back(it->second.op);
      else
        --c_.serving;
      it = halves_.erase(it);
    }
    for (uint64_t oid : dead_ops)
      if (auto it = ops_.find(oid); it != ops_.end()) finish(it->second.get(), why, 0);
  }

  // ---- operations ----

  void start(std::unique_ptr<op> owned) {
    op* o = owned.get();
    ops_.emplace(o->id, std::move(owned));
    if (o->kind == op_kind::read || o->kind == op_kind::write) {
      const memory_descriptor& d = o->remote;
      if (d.backend != "nccl" || o->offset > d.bytes || o->bytes > d.bytes - o->offset)
        return finish(o, outcome::bad_request, 0);
    }
    if (o->peer == 0 || o->peer == address_.engine) return finish(o, outcome::bad_request, 0);
    if (o->bytes == 0 && o->kind != op_kind::recv && o->kind != op_kind::send) return finish(o, outcome::ok, 0);
    auto it = pairs_.find(o->peer);
    if (it == pairs_.end() || it->second.state == pair_state::st::idle)
      return finish(o, outcome::bad_request, 0);  // connect() first
    if (it->second.state == pair_state::st::connecting) return it->second.waiting_ops.push_back(o->id);
    run_op(o, it->second);
  }

  void run_op(op* o, pair_state& p) {
    o->started = true;
    ctl_msg m;
    m.op = o->id;
    m.bytes = o->bytes;
    switch (o->kind) {
      case op_kind::read:
        halves_[o->id] = {p.peer.engine, false, o->local, o->bytes, o->id, {}};
        m.kind = msg_req_read;
        break;
      case op_kind::write:
        halves_[o->id] = {p.peer.engine, true, o->local, o->bytes, o->id, {}};
        m.kind = msg_req_write;
        break;
      case op_kind::send:
        halves_[o->id] = {p.peer.engine, true, o->local, o->bytes, o->id, {}};
        m.kind = msg_rts;
        m.tag = o->tag;
        break;
      case op_kind::recv:
        for (auto u = unexpected_.begin(); u != unexpected_.end(); ++u)
          if (u->peer == o->peer && u->tag == o->tag) {
            const unexpected_rts r = *u;
            unexpected_.erase(u);
            return accept_rts(o, p, r.op, r.bytes);
          }
        posted_[{o->peer, o->tag}].push_back(o->id);
        return;
    }
    if (o->kind != op_kind::send) {
      m.region = o->remote.region;
      m.token = o->remote.token;
      m.offset = o->offset;
    }
    send_ctl(p.peer.engine, m);
  }

  void accept_rts(op* r, pair_state& p, uint64_t sender_op, uint64_t bytes) {
    if (bytes > r->bytes) {
      ctl_msg n;
      n.kind = msg_nack;
      n.op = sender_op;
      n.status = static_cast<uint32_t>(outcome::bad_request);
      send_ctl(p.peer.engine, n);
      return finish(r, outcome::bad_request, 0);
    }
    r->started = true;
    r->moved = bytes;
    const uint64_t peer = p.peer.engine;
    half h{peer, false, r->local, bytes, r->id, {}};
    h.on_complete = [this, peer, sender_op, bytes] {  // the sender's op waits for this
      ctl_msg a;
      a.kind = msg_ack;
      a.op = sender_op;
      a.bytes = bytes;
      send_ctl(peer, a);
    };
    halves_[r->id] = std::move(h);
    ready(p, r->id, sender_op);
  }

  // Both halves exist: rank 0 numbers the transfer and issues its half; rank 1 says so.
  void ready(pair_state& p, uint64_t mine, uint64_t theirs) {
    if (p.rank == 1) {
      ctl_msg m;
      m.kind = msg_ready;
      m.op = theirs;
      m.op2 = mine;
      return send_ctl(p.peer.engine, m);
    }
    const half& h = halves_[mine];
    ctl_msg g;
    g.kind = msg_go;
    g.seq = p.next_seq++;
    g.op = theirs;
    g.bytes = h.bytes;
    g.send = h.is_send ? 0 : 1;
    send_ctl(p.peer.engine, g);
    issue(p, mine, h.is_send, h.ptr, h.bytes);
  }

  void issue(pair_state& p, uint64_t half_id, bool is_send, void* ptr, size_t bytes) {
    const int peer_rank = 1 - p.rank;
    const ncclResult_t r = is_send ? ncclSend(ptr, bytes, ncclUint8, peer_rank, p.comm, p.stream)
                                   : ncclRecv(ptr, bytes, ncclUint8, peer_rank, p.comm, p.stream);
    if (!TROUPE_TE_NCCL_OK(r) || !settle_comm(p)) return fail_pair(p, outcome::peer_lost, "ncclSend/ncclRecv");
    cudaEvent_t ev = nullptr;
    if (!TROUPE_TE_CUDA_OK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming)) ||
        !TROUPE_TE_CUDA_OK(cudaEventRecord(ev, p.stream)))
      return fail_pair(p, outcome::peer_lost, "cudaEventRecord");
    p.in_flight.emplace_back(ev, half_id);
    if (auto it = halves_.find(half_id); it != halves_.end() && it->second.op != 0)
      if (auto o = ops_.find(it->second.op); o != ops_.end()) o->second->issued = true;
  }

  const region* serve_check(const ctl_msg& m) {
    std::lock_guard<std::mutex> lock(regions_mu_);
    auto it = regions_.find(m.region);
    if (it == regions_.end() || it->second.token != m.token || m.offset > it->second.bytes ||
        m.bytes > it->second.bytes - m.offset)
      return nullptr;
    return &it->second;
  }

  void on_msg(uint64_t from, const ctl_msg& m) {
    auto pit = pairs_.find(from);
    if (pit == pairs_.end()) return;
    pair_state& p = pit->second;
    if (m.kind == msg_id) {
      if (p.rank != 1) return;
      std::memcpy(&p.id, m.id, sizeof p.id);
      p.have_id = true;
      if (p.state == pair_state::st::connecting && p.comm == nullptr) init_comm(p);
      return;
    }
    if (p.state == pair_state::st::connecting) return p.early.push_back(m);  // replayed once up
    if (p.state != pair_state::st::up) return;
    switch (m.kind) {
      case msg_req_read:
      case msg_req_write: {
        const region* r = serve_check(m);
        if (r == nullptr) {
          ctl_msg n;
          n.kind = msg_nack;
          n.op = m.op;
          n.status = static_cast<uint32_t>(outcome::bad_request);
          return send_ctl(from, n);
        }
        const uint64_t item = next_id_++;
        const bool is_read = m.kind == msg_req_read;
        ++c_.serving;
        half h{from, is_read, r->base + m.offset, m.bytes, 0, {}};
        const uint64_t initiator_op = m.op, bytes = m.bytes;
        h.on_complete = [this, from, is_read, initiator_op, bytes] {
          --c_.serving;
          if (is_read) return;
          ctl_msg a;
          a.kind = msg_ack;
          a.op = initiator_op;
          a.bytes = bytes;
          send_ctl(from, a);
        };
        halves_[item] = std::move(h);
        return ready(p, item, m.op);
      }
      case msg_rts: {
        auto q = posted_.find({from, m.tag});
        if (q != posted_.end() && !q->second.empty()) {
          const uint64_t rid = q->second.front();
          q->second.pop_front();
          if (q->second.empty()) posted_.erase(q);
          if (auto it = ops_.find(rid); it != ops_.end()) return accept_rts(it->second.get(), p, m.op, m.bytes);
        }
        unexpected_.push_back({from, m.tag, m.op, m.bytes, clock_type::now() + opt_.timeout});
        return;
      }
      case msg_nack:
        if (auto it = ops_.find(m.op); it != ops_.end()) {
          halves_.erase(m.op);
          finish(it->second.get(), static_cast<outcome>(m.status), 0);
        }
        return;
      case msg_ready: {  // rank 0: both halves are checked
        auto h = halves_.find(m.op);
        if (h == halves_.end()) {
          ctl_msg c;
          c.kind = msg_cancel;
          c.op = m.op2;
          return send_ctl(from, c);
        }
        return ready(p, m.op, m.op2);
      }
      case msg_go: {  // rank 1: issue in rank 0's order
        p.early_go[m.seq] = m;
        while (!p.early_go.empty() && p.early_go.begin()->first == p.next_seq) {
          const ctl_msg g = p.early_go.begin()->second;
          p.early_go.erase(p.early_go.begin());
          ++p.next_seq;
          auto h = halves_.find(g.op);
          // Rank 1 gives up a half only by failing the pair (see tick), so a
          // go always finds its half; anything else breaks the order.
          if (h == halves_.end()) return fail_pair(p, outcome::peer_lost, "go for an unknown half");
          issue(p, g.op, h->second.is_send, h->second.ptr, h->second.bytes);
          if (p.state != pair_state::st::up) return;  // the pair failed while issuing
        }
        return;
      }
      case msg_cancel: {
        auto h = halves_.find(m.op);
        if (h == halves_.end()) return;
        const uint64_t oid = h->second.op;
        if (oid == 0) --c_.serving;
        halves_.erase(h);
        if (auto it = ops_.find(oid); it != ops_.end()) finish(it->second.get(), outcome::timeout, 0);
        return;
      }
      case msg_ack:
        if (auto it = ops_.find(m.op); it != ops_.end()) {
          op* o = it->second.get();
          o->acked = true;
          o->result = static_cast<outcome>(m.status);
          o->moved = m.bytes;
          settle(o);
        }
        return;
      default:
        return;
    }
  }

  // Completed halves, in issue order per pair.
  void poll_events() {
    std::vector<uint64_t> ids;
    for (auto& [id, p] : pairs_)
      if (!p.in_flight.empty()) ids.push_back(id);
    for (uint64_t id : ids) {
      auto pit = pairs_.find(id);
      if (pit == pairs_.end()) continue;
      pair_state& p = pit->second;
      while (!p.in_flight.empty()) {
        auto [ev, hid] = p.in_flight.front();
        const cudaError_t e = cudaEventQuery(ev);
        if (e == cudaErrorNotReady) {
          // NCCL's proxy sees a peer that died (its sockets close) and
          // reports it here, while the kernel would wait for it forever:
          // fail the pair now rather than at the operation's timeout.
          ncclResult_t state = ncclSuccess;
          if (p.comm != nullptr && ncclCommGetAsyncError(p.comm, &state) == ncclSuccess && state != ncclSuccess &&
              state != ncclInProgress)
            fail_pair(p, outcome::peer_lost, std::string("NCCL: ") + ncclGetErrorString(state));
          break;
        }
        p.in_flight.pop_front();
        cudaEventDestroy(ev);
        if (e != cudaSuccess) {
          TROUPE_TE_CUDA_OK(e);
          fail_pair(p, outcome::peer_lost, "a transfer failed on the GPU");
          break;
        }
        complete_half(hid);
      }
    }
  }

  void complete_half(uint64_t hid) {
    auto h = halves_.find(hid);
    if (h == halves_.end()) return;
    half done = std::move(h->second);
    halves_.erase(h);
    if (done.on_complete) done.on_complete();
    if (done.op == 0) return;
    auto it = ops_.find(done.op);
    if (it == ops_.end()) return;
    op* o = it->second.get();
    o->half_done = true;
    settle(o);
  }

  void settle(op* o) {
    switch (o->kind) {
      case op_kind::read:
        if (o->half_done) finish(o, outcome::ok, o->bytes);
        return;
      case op_kind::recv:
        if (o->half_done) finish(o, outcome::ok, o->moved);
        return;
      case op_kind::write:
      case op_kind::send:
        if (o->acked && o->result != outcome::ok) return finish(o, o->result, 0);
        if (o->half_done && o->acked) finish(o, outcome::ok, o->bytes);
        return;
    }
  }

  void finish(op* o, outcome how, size_t moved) {
    auto it = ops_.find(o->id);
    if (it == ops_.end()) return;
    std::unique_ptr<op> owned = std::move(it->second);
    ops_.erase(it);
    if (how != outcome::ok || !o->issued) {
      if (auto h = halves_.find(o->id); h != halves_.end() && !o->issued) halves_.erase(h);
    }
    if (o->kind == op_kind::recv) {
      auto q = posted_.find({o->peer, o->tag});
      if (q != posted_.end()) {
        auto& d = q->second;
        for (auto i = d.begin(); i != d.end(); ++i)
          if (*i == o->id) {
            d.erase(i);
            break;
          }
        if (d.empty()) posted_.erase(q);
      }
    }
    c_.ended(how, moved, false);
    transfer_done done = std::move(o->done);
    try {
      done(te_util::outcome_errc(how), how == outcome::ok ? moved : 0);
    } catch (const std::exception& e) {
      log()->error("transfer engine {}: a done callback threw: {}", opt_.name, e.what());
    }
  }

  // A late operation ends quietly only while no half of its transfer can be
  // on a stream: not yet sent, a recv not yet matched, or (rank 0, which
  // orders the pair) its own half not yet issued; rank 0 then answers a later
  // `ready` with `cancel`. Otherwise only aborting the communicator stops the
  // other side's half, and the pair fails.
  void tick(clock_type::time_point now) {
    std::vector<uint64_t> late;
    for (auto& [id, o] : ops_)
      if (o->deadline <= now) late.push_back(id);
    for (uint64_t id : late) {
      auto it = ops_.find(id);
      if (it == ops_.end()) continue;  // ended with an earlier one's pair
      op* o = it->second.get();
      auto pit = pairs_.find(o->peer);
      const bool quiet = !o->started || pit == pairs_.end() || pit->second.state != pair_state::st::up ||
                         (o->kind == op_kind::recv && halves_.count(o->id) == 0) ||
                         (pit->second.rank == 0 && !o->issued);
      if (quiet) {
        halves_.erase(o->id);
        finish(o, outcome::timeout, 0);
        continue;
      }
      o->result = outcome::timeout;
      fail_pair(pit->second, outcome::timeout, "an operation stalled");
    }
    while (!unexpected_.empty() && unexpected_.front().expires <= now) unexpected_.pop_front();
  }

  void run() {
    cudaSetDevice(opt_.device);
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      std::vector<std::function<void()>> batch;
      batch.swap(commands_);
      const bool stopping = stop_;
      lock.unlock();
      for (auto& fn : batch) fn();
      if (stopping) return shutdown();
      const auto now = clock_type::now();
      poll_events();
      poll_connecting(now);
      tick(now);
      bool busy = false;
      auto next = clock_type::time_point::max();
      for (auto& [id, p] : pairs_) {
        busy = busy || !p.in_flight.empty() || p.state == pair_state::st::connecting;
      }
      for (auto& [id, o] : ops_) next = std::min(next, o->deadline);
      if (!unexpected_.empty()) next = std::min(next, unexpected_.front().expires);
      lock.lock();
      if (!commands_.empty() || stop_) continue;
      if (busy)
        cv_.wait_for(lock, poll_interval);
      else if (next == clock_type::time_point::max())
        cv_.wait(lock);
      else
        cv_.wait_until(lock, next);
    }
  }

  void shutdown() {
    std::vector<op*> all;
    for (auto& [id, o] : ops_) all.push_back(o.get());
    for (op* o : all) finish(o, outcome::cancelled, 0);
    std::vector<uint64_t> ids;
    for (auto& [id, p] : pairs_) ids.push_back(id);
    for (uint64_t id : ids)
      if (auto it = pairs_.find(id); it != pairs_.end())
        if (it->second.comm != nullptr || !it->second.waiters.empty())
          fail_pair(it->second, outcome::cancelled, "engine shutting down");
    halves_.clear();
    c_.serving = 0;
  }

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

}  // namespace

std::unique_ptr<nccl_transfer_engine> transfer_engine_nccl(const nccl_engine_options& options) {
  return std::make_unique<nccl_engine>(options);
}

}  // namespace troupe

#endif  // TROUPE_HAVE_NCCL
