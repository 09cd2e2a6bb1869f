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
//
// Files: this one holds construction, the public calls, control messages,
// connecting pairs and the engine thread's loop; transfer_engine_nccl_ops.cpp
// holds the life of an operation and the handler of the messages above;
// transfer_engine_nccl_impl.hpp the types and the engine class both share.
#include <unistd.h>

#include <cstring>

#include "transport/cuda/transfer_engine_nccl_impl.hpp"

#ifdef TROUPE_HAVE_NCCL

namespace troupe {

namespace te_nccl {

nccl_engine::nccl_engine(const nccl_engine_options& o) : opt_(o) {
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

nccl_engine::~nccl_engine() {
  stopping_ = true;  // control callbacks post nothing more
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();  // operations cancelled, communicators aborted
  ctl_.reset();    // only now: the engine thread used it
}

memory_descriptor nccl_engine::register_memory(void* base, size_t bytes) {
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

errc nccl_engine::unregister_memory(uint64_t region) {
  std::lock_guard<std::mutex> lock(regions_mu_);
  if (regions_.erase(region) == 0) return errc::errc_invalid_argument;
  --c_.registrations;
  return errc::ok;
}

void nccl_engine::read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) {
  auto o = make(op_kind::read, remote.owner.engine, local, bytes, std::move(done));
  o->remote = remote;
  o->offset = offset;
  submit(std::move(o));
}

void nccl_engine::write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
                        transfer_done done) {
  auto o = make(op_kind::write, remote.owner.engine, const_cast<void*>(local), bytes, std::move(done));
  o->remote = remote;
  o->offset = offset;
  submit(std::move(o));
}

void nccl_engine::send(const engine_address& to, uint64_t tag, const void* local, size_t bytes, transfer_done done) {
  auto o = make(op_kind::send, to.engine, const_cast<void*>(local), bytes, std::move(done));
  o->tag = tag;
  submit(std::move(o));
}

void nccl_engine::recv(const engine_address& from, uint64_t tag, void* local, size_t capacity, transfer_done done) {
  auto o = make(op_kind::recv, from.engine, local, capacity, std::move(done));
  o->tag = tag;
  submit(std::move(o));
}

void nccl_engine::connect(const engine_address& peer, transfer_done done) {
  post([this, peer, done = std::move(done)]() mutable { start_connect(peer, std::move(done)); });
}

void nccl_engine::disconnect(const engine_address& peer) {
  const uint64_t id = peer.engine;
  post([this, id] {
    if (auto it = pairs_.find(id); it != pairs_.end()) fail_pair(it->second, outcome::peer_lost, "disconnected");
  });
  ctl_->disconnect(peer);
}

std::unique_ptr<op> nccl_engine::make(op_kind k, uint64_t peer, void* local, size_t bytes, transfer_done done) {
  auto o = std::make_unique<op>();
  o->kind = k;
  o->peer = peer;
  o->local = local;
  o->bytes = bytes;
  o->done = std::move(done);
  return o;
}

void nccl_engine::post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    commands_.push_back(std::move(fn));
  }
  cv_.notify_all();
}

void nccl_engine::submit(std::unique_ptr<op> o) {
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

void nccl_engine::send_ctl(uint64_t peer, const ctl_msg& m) {
  auto it = pairs_.find(peer);
  if (it == pairs_.end()) return;
  auto buf = std::make_shared<ctl_msg>(m);
  ctl_->send(it->second.peer, ctl_tag, buf.get(), sizeof(ctl_msg), [buf](errc, size_t) {});
}

void nccl_engine::post_ctl_recv(const engine_address& peer) {
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

pair_state& nccl_engine::pair_for(const engine_address& peer) {
  auto [it, fresh] = pairs_.try_emplace(peer.engine);
  pair_state& p = it->second;
  if (fresh || p.peer.engine == 0) {
    p.peer = peer;
    p.rank = address_.engine < peer.engine ? 0 : 1;
    if (peer.host_id == address_.host_id)
      p.watch = process_watch::open(static_cast<int>(peer.pid), peer.start_time, peer.pid_namespace);
  }
  return p;
}

void nccl_engine::start_connect(const engine_address& peer, transfer_done done) {
  ++c_.started;
  ++c_.pending;
  if (peer.engine == 0 || peer.engine == address_.engine) {
    c_.ended(outcome::bad_request, 0, false);
    return done(transfer_error::bad_request, 0);
  }
  pair_state& p = pair_for(peer);
  check_peers();  // a pair can look up while its peer is gone (the thread slept through the exit)
  if (p.peer_exited) {
    c_.ended(outcome::peer_lost, 0, false);
    return done(transfer_error::peer_lost, 0);
  }
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

void nccl_engine::init_comm(pair_state& p) {
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  if (!TROUPE_TE_NCCL_OK(ncclCommInitRankConfig(&p.comm, 2, p.id, p.rank, &cfg)))
    return fail_pair(p, outcome::peer_lost, "ncclCommInitRankConfig");
}

// Connecting pairs whose communicator finished initialising come up.
void nccl_engine::poll_connecting(clock_type::time_point now) {
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
bool nccl_engine::settle_comm(pair_state& p) {
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
void nccl_engine::fail_pair(pair_state& p, outcome why, const std::string& reason) {
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

// ---- the engine thread ----

// A late operation ends quietly only while no half of its transfer can be
// on a stream: not yet sent, a recv not yet matched, or (rank 0, which
// orders the pair) its own half not yet issued; rank 0 then answers a later
// `ready` with `cancel`. Otherwise only aborting the communicator stops the
// other side's half, and the pair fails.
void nccl_engine::tick(clock_type::time_point now) {
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

void nccl_engine::run() {
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
    check_peers();
    bool busy = false;
    auto next = clock_type::time_point::max();
    for (auto& [id, p] : pairs_) {
      busy = busy || !p.in_flight.empty() || p.state == pair_state::st::connecting;
    }
    for (auto& [id, o] : ops_) next = std::min(next, o->deadline);
    if (!ops_.empty()) next = std::min(next, now + peer_check_interval);  // see check_peers
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

void nccl_engine::check_peers() {
  for (auto& [id, p] : pairs_) {
    if (p.watch == nullptr || !p.watch->exited()) continue;
    p.peer_exited = true;
    if (p.state != pair_state::st::idle)
      fail_pair(p, outcome::peer_lost, "its process " + std::to_string(p.watch->pid()) + " exited");
    p.watch.reset();  // its pidfd is not needed any more
  }
}

void nccl_engine::shutdown() {
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

}  // namespace te_nccl

std::unique_ptr<nccl_transfer_engine> transfer_engine_nccl(const nccl_engine_options& options) {
  return std::make_unique<te_nccl::nccl_engine>(options);
}

}  // namespace troupe

#endif  // TROUPE_HAVE_NCCL
