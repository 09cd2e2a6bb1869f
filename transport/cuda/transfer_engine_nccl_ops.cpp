// The operations of the nccl transfer engine (design at the top of
// transfer_engine_nccl.cpp): start (checks, pair), the request each kind
// sends, the checks and numbering that put both halves of a transfer on the
// streams in the same order, the control messages that drive them, and the
// completion of halves and operations. A file of its own so that the engine
// stays under the size limit; everything here runs on the engine thread.
#include <cstring>

#include "transport/cuda/transfer_engine_nccl_impl.hpp"

#ifdef TROUPE_HAVE_NCCL

namespace troupe {

namespace te_nccl {

// ---- operations ----

void nccl_engine::start(std::unique_ptr<op> owned) {
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
  if (it != pairs_.end() && it->second.peer_exited) return finish(o, outcome::peer_lost, 0);
  if (it == pairs_.end() || it->second.state == pair_state::st::idle)
    return finish(o, outcome::bad_request, 0);  // connect() first
  if (it->second.state == pair_state::st::connecting) return it->second.waiting_ops.push_back(o->id);
  run_op(o, it->second);
}

void nccl_engine::run_op(op* o, pair_state& p) {
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

void nccl_engine::accept_rts(op* r, pair_state& p, uint64_t sender_op, uint64_t bytes) {
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
void nccl_engine::ready(pair_state& p, uint64_t mine, uint64_t theirs) {
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

void nccl_engine::issue(pair_state& p, uint64_t half_id, bool is_send, void* ptr, size_t bytes) {
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

const nccl_engine::region* nccl_engine::serve_check(const ctl_msg& m) {
  std::lock_guard<std::mutex> lock(regions_mu_);
  auto it = regions_.find(m.region);
  if (it == regions_.end() || it->second.token != m.token || m.offset > it->second.bytes ||
      m.bytes > it->second.bytes - m.offset)
    return nullptr;
  return &it->second;
}

void nccl_engine::on_msg(uint64_t from, const ctl_msg& m) {
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
void nccl_engine::poll_events() {
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

void nccl_engine::complete_half(uint64_t hid) {
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

void nccl_engine::settle(op* o) {
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

void nccl_engine::finish(op* o, outcome how, size_t moved) {
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

}  // namespace te_nccl

}  // namespace troupe

#endif  // TROUPE_HAVE_NCCL
