// The protocols of the ucx transfer engine (design in transfer_engine_ucx.hpp)
// and the life of an operation: start (checks, connection), run (per path),
// answers from the peer, timeouts, failures, finish. Everything here runs on
// the progress thread; handlers run inside UCX callbacks and may send, but
// create and close endpoints only through defer().
//
// Who answers what:
//   read  am_read_resp from the owner   | (rma) the get's completion
//   write am_ack from the owner         | (rma) the flush after the put
//   send  am_ack from the receiver, once a recv holds the bytes
//   recv  the bytes landing (eager copy or rendezvous fetch)
// A peer's refusal (range, token, recv too small) comes back as a status and
// ends the operation with bad_request; silence ends it with timeout.
#include <cstring>

#include "transport/transfer_engine_ucx_impl.hpp"

namespace troupe {

namespace te_ucx {

namespace {

bool rendezvous(const ucp_am_recv_param_t* param) { return (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0; }

ucp_request_param_t request_param(request_ctx* ctx) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = request_cb;
  p.user_data = ctx;
  return p;
}

outcome status_outcome(uint32_t s) {
  return s <= static_cast<uint32_t>(outcome::cancelled) ? static_cast<outcome>(s) : outcome::bad_request;
}

}  // namespace

// ---- the life of an operation ----

void impl::start(std::unique_ptr<op> owned) {
  op* o = owned.get();
  ops_.emplace(o->id, std::move(owned));
  deadlines_.emplace(o->deadline, o->id);
  if (shutting_down_) return finish(o, outcome::cancelled, 0);

  if (o->kind == op_kind::read || o->kind == op_kind::write) {
    const memory_descriptor& d = o->remote;
    if (d.backend != "ucx" || d.owner.engine == 0 || o->offset > d.bytes || o->bytes > d.bytes - o->offset)
      return finish(o, outcome::bad_request, 0);
    if (o->bytes == 0) return finish(o, outcome::ok, 0);
    if (d.owner.engine == address_.engine) {  // our own region: a checked memcpy
      msg_header h;
      h.region = d.region, h.token = d.token, h.offset = o->offset, h.bytes = o->bytes;
      const region* r = serve_check(h);
      if (r == nullptr) return finish(o, outcome::bad_request, 0);
      if (o->kind == op_kind::read)
        std::memcpy(o->local, r->base + o->offset, o->bytes);
      else
        std::memcpy(r->base + o->offset, o->local, o->bytes);
      o->shared_memory = true;
      return finish(o, outcome::ok, o->bytes);
    }
  } else if (o->peer.engine == 0 || o->peer.engine == address_.engine) {
    return finish(o, outcome::bad_request, 0);  // no peer, or itself
  }

  if (o->kind == op_kind::recv) {
    o->state = op_state::posted;
    return match_recv(o);
  }
  conn* c = conn_for(o->peer);
  if (c == nullptr || c->state == conn_state::closed) return finish(o, outcome::peer_lost, 0);
  o->conn = c->id;
  if (c->state == conn_state::up) return run_op(o, c);
  o->state = op_state::waiting_peer;
  c->waiting.push_back(o->id);
}

void impl::run_op(op* o, conn* c) {
  o->conn = c->id;
  o->shared_memory = c->shared_memory;
  const uint64_t id = o->id;
  switch (o->kind) {
    case op_kind::read: {
      if (ucp_rkey_h k = rkey(c, o->remote)) {  // one host: get straight from the owner's memory
        o->state = op_state::moving;
        o->shared_memory = true;
        ++o->inflight;
        auto* ctx = new request_ctx;
        ctx->owner = this;
        const size_t n = o->bytes;
        ctx->then = [this, id, n](ucs_status_t st) { buffer_done(id, st, true, n); };
        ucp_request_param_t p = request_param(ctx);
        track(ucp_get_nbx(c->ep, o->local, o->bytes, o->remote.address + o->offset, k, &p), ctx);
        return;
      }
      o->state = op_state::requested;
      auto* ctx = new request_ctx;
      ctx->header.op = id;
      ctx->header.region = o->remote.region;
      ctx->header.token = o->remote.token;
      ctx->header.offset = o->offset;
      ctx->header.bytes = o->bytes;
      send_am(c, am_read_req, ctx, nullptr, 0, true);
      return;
    }
    case op_kind::write: {
      if (ucp_rkey_h k = rkey(c, o->remote)) {  // one host: put, then flush for remote completion
        o->state = op_state::moving;
        o->shared_memory = true;
        o->inflight += 2;
        const size_t n = o->bytes;
        auto* put = new request_ctx;
        put->owner = this;
        put->then = [this, id](ucs_status_t st) { buffer_done(id, st, false, 0); };
        ucp_request_param_t pp = request_param(put);
        const ucp_ep_h ep = c->ep;
        track(ucp_put_nbx(ep, o->local, o->bytes, o->remote.address + o->offset, k, &pp), put);
        auto* flush = new request_ctx;  // `o` may be gone after this one
        flush->owner = this;
        flush->then = [this, id, n](ucs_status_t st) { buffer_done(id, st, true, n); };
        ucp_request_param_t fp = request_param(flush);
        track(ucp_ep_flush_nbx(ep, &fp), flush);
        return;
      }
      o->state = op_state::requested;
      auto* ctx = new request_ctx;
      ctx->header.op = id;
      ctx->header.region = o->remote.region;
      ctx->header.token = o->remote.token;
      ctx->header.offset = o->offset;
      ctx->header.bytes = o->bytes;
      if (o->bytes <= copy_max_bytes) {
        ctx->copy.assign(reinterpret_cast<const char*>(o->local), reinterpret_cast<const char*>(o->local) + o->bytes);
        send_am(c, am_write, ctx, ctx->copy.data(), ctx->copy.size(), true);
      } else {
        ++o->inflight;
        ctx->then = [this, id](ucs_status_t st) { buffer_done(id, st, false, 0); };
        send_am(c, am_write, ctx, o->local, o->bytes, false);
      }
      return;
    }
    case op_kind::send: {
      o->state = op_state::requested;
      auto* ctx = new request_ctx;
      ctx->header.op = id;
      ctx->header.tag = o->tag;
      ctx->header.bytes = o->bytes;
      if (o->bytes <= copy_max_bytes) {
        ctx->copy.assign(reinterpret_cast<const char*>(o->local), reinterpret_cast<const char*>(o->local) + o->bytes);
        send_am(c, am_send_eager, ctx, ctx->copy.data(), ctx->copy.size(), true);
      } else {
        send_am(c, am_send_rts, ctx, nullptr, 0, true);  // the bytes follow the receiver's cts
      }
      return;
    }
    case op_kind::recv:
      return;  // recvs are matched, not run (match_recv)
  }
}

op* impl::find_op(uint64_t id, op_kind kind) {
  auto it = ops_.find(id);
  return it != ops_.end() && it->second->kind == kind ? it->second.get() : nullptr;
}

void impl::unpost(op* r) {
  auto it = posted_.find({r->peer.engine, r->tag});
  if (it == posted_.end()) return;
  auto& q = it->second;
  for (auto i = q.begin(); i != q.end(); ++i)
    if (*i == r->id) {
      q.erase(i);
      break;
    }
  if (q.empty()) posted_.erase(it);
}

void impl::finish(op* o, outcome how, size_t moved) {
  auto it = ops_.find(o->id);
  if (it == ops_.end()) return;
  std::unique_ptr<op> owned = std::move(it->second);
  ops_.erase(it);
  deadlines_.erase({o->deadline, o->id});
  if (o->kind == op_kind::recv && o->state == op_state::posted) unpost(o);
  s_.ended(how, moved, o->shared_memory);
  if (how != outcome::ok)
    log()->debug("transfer engine {}: operation {} ended: {}", opt_.name, o->id, errc_name(outcome_errc(how)));
  transfer_done done = std::move(o->done);
  if (!done) return;
  try {
    done(outcome_errc(how), how == outcome::ok ? moved : 0);
  } catch (const std::exception& e) {
    log()->error("transfer engine {}: a done callback threw: {}", opt_.name, e.what());
  }
}

void impl::fail_op(op* o, outcome how) {
  if (o->inflight > 0) {  // UCX still uses the buffer: finish when it lets go (or abandon_grace later)
    if (!o->failing) o->failing = true, o->fail = how;
    const clock::time_point limit = clock::now() + abandon_grace;
    if (o->deadline > limit || deadlines_.count({o->deadline, o->id}) == 0) {
      deadlines_.erase({o->deadline, o->id});
      o->deadline = limit;
      deadlines_.emplace(o->deadline, o->id);
    }
    return;
  }
  finish(o, o->failing ? o->fail : how, 0);
}

void impl::settle(op* o) {
  if (o->inflight > 0) return;
  if (o->failing) return finish(o, o->fail, 0);
  if (o->answered) finish(o, o->result, o->result == outcome::ok ? o->moved : 0);
}

void impl::buffer_done(uint64_t id, ucs_status_t st, bool answers, size_t moved) {
  auto it = ops_.find(id);
  if (it == ops_.end()) return;
  op* o = it->second.get();
  --o->inflight;
  if (st != UCS_OK && !o->failing) {
    o->failing = true;
    o->fail = shutting_down_ ? outcome::cancelled : outcome::peer_lost;
    log()->debug("transfer engine {}: operation {}: {}", opt_.name, id, ucs_status_string(st));
  } else if (st == UCS_OK && answers) {
    o->answered = true;
    o->result = outcome::ok;
    o->moved = moved;
  }
  settle(o);
}

void impl::ack(uint64_t peer, uint64_t op_id, outcome status, uint64_t bytes) {
  msg_header h;
  h.op = op_id;
  h.status = static_cast<uint32_t>(status);
  h.bytes = bytes;
  send_control(peer, am_ack, h);
}

void impl::tick(clock::time_point now) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const uint64_t id = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = ops_.find(id);
    if (it == ops_.end()) continue;
    op* o = it->second.get();
    if (o->failing) {  // its connection is closed: nothing moves on its buffer any more
      if (o->inflight > 0)
        log()->warn("transfer engine {}: operation {}: {} UCX requests abandoned on a closed connection", opt_.name,
                    id, o->inflight);
      o->inflight = 0;
      finish(o, o->fail, 0);
      continue;
    }
    if (o->inflight > 0) {
      // Bytes in flight on the caller's buffer: only closing the connection
      // stops them. Its other operations fail with it.
      log()->warn("transfer engine {}: operation {} timed out with data in flight", opt_.name, id);
      fail_op(o, outcome::timeout);
      if (conn* c = find_conn(o->conn)) fail_conn(c, outcome::peer_lost, "an operation stalled on it", true);
      continue;
    }
    finish(o, outcome::timeout, 0);
  }
  std::vector<conn*> late;
  for (auto& [id, c] : conns_)
    if (c->state == conn_state::connecting && c->deadline <= now)
      late.push_back(c.get());
  for (conn* c : late) fail_conn(c, outcome::timeout, "no answer within the connect timeout", true);
  while (!unexpected_.empty() && unexpected_.front().expires <= now) {
    unexpected_bytes_ -= unexpected_.front().data.size();
    unexpected_.pop_front();
  }
}

// ---- serving a peer's read or write ----

const region* impl::serve_check(const msg_header& h) const {
  auto it = regions_.find(h.region);
  if (it == regions_.end() || it->second.token != h.token) return nullptr;
  const region& r = it->second;
  if (h.offset > r.bytes || h.bytes > r.bytes - h.offset) return nullptr;
  return &r;
}

ucs_status_t impl::on_read_req(conn* c, const msg_header& h) {
  auto* ctx = new request_ctx;
  ctx->header.op = h.op;
  const region* r = serve_check(h);
  if (r == nullptr) {
    ctx->header.status = static_cast<uint32_t>(outcome::bad_request);
    send_am(c, am_read_resp, ctx, nullptr, 0, true);
    return UCS_OK;
  }
  ctx->header.bytes = h.bytes;
  ++s_.serving;
  ctx->then = [this](ucs_status_t) { --s_.serving; };
  send_am(c, am_read_resp, ctx, r->base + h.offset, h.bytes, false);
  return UCS_OK;
}

ucs_status_t impl::on_write(conn* c, const msg_header& h, void* data, size_t length, const ucp_am_recv_param_t* p) {
  const region* r = serve_check(h);
  if (r == nullptr || length != h.bytes) {
    ack(h.from, h.op, outcome::bad_request, 0);
    return UCS_OK;  // a rendezvous payload is dropped unfetched
  }
  std::byte* dest = r->base + h.offset;
  if (!rendezvous(p)) {
    std::memcpy(dest, data, length);
    ack(h.from, h.op, outcome::ok, length);
    return UCS_OK;
  }
  ++s_.serving;
  const uint64_t peer = h.from, op_id = h.op;
  recv_data(peer, data, dest, length, [this, peer, op_id, length](ucs_status_t st) {
    --s_.serving;
    ack(peer, op_id, st == UCS_OK ? outcome::ok : outcome::peer_lost, st == UCS_OK ? length : 0);
  });
  return UCS_OK;
}

// ---- answers to this engine's reads and writes ----

ucs_status_t impl::on_read_resp(conn* c, const msg_header& h, void* data, size_t length,
                                const ucp_am_recv_param_t* p) {
  op* o = find_op(h.op, op_kind::read);
  if (o == nullptr || o->state != op_state::requested || o->conn != c->id) return UCS_OK;  // late: dropped
  if (h.status != static_cast<uint32_t>(outcome::ok) || length != o->bytes) {
    o->answered = true;
    o->result = h.status != static_cast<uint32_t>(outcome::ok) ? status_outcome(h.status) : outcome::bad_request;
    settle(o);
    return UCS_OK;
  }
  if (!rendezvous(p)) {
    std::memcpy(o->local, data, length);
    o->answered = true;
    o->moved = length;
    settle(o);
    return UCS_OK;
  }
  o->state = op_state::moving;
  ++o->inflight;
  const uint64_t id = o->id;
  recv_data(h.from, data, o->local, length, [this, id, length](ucs_status_t st) { buffer_done(id, st, true, length); });
  return UCS_OK;
}

ucs_status_t impl::on_ack(conn* c, const msg_header& h) {
  auto it = ops_.find(h.op);
  if (it == ops_.end()) return UCS_OK;
  op* o = it->second.get();
  if ((o->kind != op_kind::write && o->kind != op_kind::send) || o->conn != c->id || o->answered ||
      (o->state != op_state::requested && o->state != op_state::moving))
    return UCS_OK;
  o->answered = true;
  o->result = status_outcome(h.status);
  o->moved = h.bytes;
  settle(o);
  return UCS_OK;
}

// ---- send and recv ----

void impl::match_recv(op* r) {
  for (auto u = unexpected_.begin(); u != unexpected_.end(); ++u) {
    if (u->from != r->peer.engine || u->tag != r->tag) continue;
    unexpected m = std::move(*u);
    unexpected_.erase(u);
    unexpected_bytes_ -= m.data.size();
    if (m.rts) return accept_rts(r, m.from, m.sender_op, m.bytes);
    return deliver_eager(r, m.data.data(), m.data.size(), m.from, m.sender_op);
  }
  posted_[{r->peer.engine, r->tag}].push_back(r->id);
}

void impl::deliver_eager(op* r, const char* data, size_t length, uint64_t sender, uint64_t sender_op) {
  if (r->state == op_state::posted) unpost(r);
  r->state = op_state::moving;
  if (length > r->bytes) {
    ack(sender, sender_op, outcome::bad_request, 0);
    return finish(r, outcome::bad_request, 0);
  }
  if (length > 0) std::memcpy(r->local, data, length);
  ack(sender, sender_op, outcome::ok, length);
  if (conn* c = live_conn(sender)) r->shared_memory = c->shared_memory;
  finish(r, outcome::ok, length);
}

void impl::accept_rts(op* r, uint64_t sender, uint64_t sender_op, uint64_t bytes) {
  if (r->state == op_state::posted) unpost(r);
  r->state = op_state::requested;
  if (bytes > r->bytes) {
    ack(sender, sender_op, outcome::bad_request, 0);
    return finish(r, outcome::bad_request, 0);
  }
  conn* c = live_conn(sender);
  if (c == nullptr) return finish(r, outcome::peer_lost, 0);
  r->conn = c->id;
  r->remote_op = sender_op;
  msg_header h;
  h.op = sender_op;
  h.op2 = r->id;
  send_control(sender, am_send_cts, h);
}

ucs_status_t impl::on_send_eager(conn* c, const msg_header& h, void* data, size_t length,
                                 const ucp_am_recv_param_t* p) {
  if (rendezvous(p)) {  // senders force eager; anything else is a protocol error
    ack(h.from, h.op, outcome::bad_request, 0);
    return UCS_OK;
  }
  auto it = posted_.find({h.from, h.tag});
  if (it != posted_.end()) {
    op* r = find_op(it->second.front(), op_kind::recv);
    if (r != nullptr) {
      deliver_eager(r, static_cast<const char*>(data), length, h.from, h.op);
      return UCS_OK;
    }
  }
  if (unexpected_bytes_ + length > opt_.max_unexpected_bytes) {
    log()->warn("transfer engine {}: send of {} bytes from {} refused: {} bytes wait for recvs already", opt_.name,
                length, c->label(), unexpected_bytes_);
    ack(h.from, h.op, outcome::timeout, 0);
    return UCS_OK;
  }
  unexpected u;
  u.from = h.from;
  u.tag = h.tag;
  u.sender_op = h.op;
  u.bytes = length;
  u.data.assign(static_cast<const char*>(data), static_cast<const char*>(data) + length);
  u.expires = clock::now() + opt_.timeout;
  unexpected_bytes_ += length;
  unexpected_.push_back(std::move(u));
  return UCS_OK;
}

ucs_status_t impl::on_send_rts(conn*, const msg_header& h) {
  auto it = posted_.find({h.from, h.tag});
  if (it != posted_.end()) {
    if (op* r = find_op(it->second.front(), op_kind::recv)) {
      accept_rts(r, h.from, h.op, h.bytes);
      return UCS_OK;
    }
  }
  unexpected u;
  u.from = h.from;
  u.tag = h.tag;
  u.sender_op = h.op;
  u.rts = true;
  u.bytes = h.bytes;
  u.expires = clock::now() + opt_.timeout;
  unexpected_.push_back(std::move(u));
  return UCS_OK;
}

ucs_status_t impl::on_send_cts(conn* c, const msg_header& h) {
  op* s = find_op(h.op, op_kind::send);
  if (s == nullptr || s->state != op_state::requested || s->conn != c->id) {
    msg_header a;
    a.op = h.op2;
    send_control(h.from, am_abort, a);  // the send gave up: the recv must not wait for it
    return UCS_OK;
  }
  s->remote_op = h.op2;
  s->state = op_state::moving;
  ++s->inflight;
  auto* ctx = new request_ctx;
  ctx->header.op = h.op2;
  ctx->header.op2 = s->id;
  ctx->header.bytes = s->bytes;
  const uint64_t id = s->id;
  ctx->then = [this, id](ucs_status_t st) { buffer_done(id, st, false, 0); };
  send_am(c, am_send_data, ctx, s->local, s->bytes, false);
  return UCS_OK;
}

ucs_status_t impl::on_send_data(conn* c, const msg_header& h, void* data, size_t length,
                                const ucp_am_recv_param_t* p) {
  op* r = find_op(h.op, op_kind::recv);
  if (r == nullptr || r->state != op_state::requested || r->remote_op != h.op2 || r->peer.engine != h.from) {
    ack(h.from, h.op2, outcome::timeout, 0);  // the recv is gone (timed out)
    return UCS_OK;
  }
  if (length > r->bytes) {
    ack(h.from, h.op2, outcome::bad_request, 0);
    finish(r, outcome::bad_request, 0);
    return UCS_OK;
  }
  r->shared_memory = c->shared_memory;
  if (!rendezvous(p)) {
    if (length > 0) std::memcpy(r->local, data, length);
    ack(h.from, h.op2, outcome::ok, length);
    finish(r, outcome::ok, length);
    return UCS_OK;
  }
  r->state = op_state::moving;
  ++r->inflight;
  const uint64_t id = r->id, sender = h.from, sender_op = h.op2;
  recv_data(sender, data, r->local, length, [this, id, sender, sender_op, length](ucs_status_t st) {
    ack(sender, sender_op, st == UCS_OK ? outcome::ok : outcome::peer_lost, st == UCS_OK ? length : 0);
    buffer_done(id, st, true, length);
  });
  return UCS_OK;
}

ucs_status_t impl::on_abort(conn*, const msg_header& h) {
  op* r = find_op(h.op, op_kind::recv);
  if (r != nullptr && r->state == op_state::requested && r->inflight == 0) finish(r, outcome::timeout, 0);
  return UCS_OK;
}

}  // namespace te_ucx

}  // namespace troupe
