// Connections of the ucx transfer engine. The first operation towards an
// engine opens an endpoint to the worker address in its engine_address and
// says hello with this engine's own address; the peer opens an endpoint back
// and answers, and both sides then hold one connection for the pair, used in
// either direction. UCX joins the two endpoints into one connection; when
// both engines call each other at once, each answers the other's hello on
// the endpoint it already has. Endpoints are never opened from inside a UCX
// callback (defer()).

#include <cstring>

#include "transport/transfer_engine_ucx_impl.hpp"
#include "transport/ucx_util.hpp"
#include "transport/wire_codec.hpp"

namespace troupe {

namespace te_ucx {

namespace {

void on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* c = static_cast<conn*>(arg);
  impl* self = c->owner;
  const uint64_t id = c->id;
  self->defer([self, id, status] {
    if (conn* c = self->find_conn(id))
      self->fail_conn(c, outcome::peer_lost, std::string("endpoint error: ") + ucs_status_string(status), true);
  });
}

ucp_ep_params_t peer_mode_params(conn* c) {
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  p.err_handler.cb = on_ep_error;
  p.err_handler.arg = c;
  return p;
}

bool read_header(const void* header, size_t length, msg_header& out) {
  if (length != sizeof(msg_header)) return false;
  std::memcpy(&out, header, sizeof out);
  return true;
}

// The data-plane handlers: each finds the up connection of the sending engine
// and hands the message to the protocol code (transfer_engine_ucx_ops.cpp).
template <ucs_status_t (impl::*Handler)(conn*, const msg_header&)>
ucs_status_t control_handler(void* arg, const void* header, size_t header_length, void*, size_t,
                             const ucp_am_recv_param_t*) {
  auto* self = static_cast<impl*>(arg);
  msg_header h;
  if (!read_header(header, header_length, h)) return UCS_OK;
  conn* c = self->live_conn(h.from);
  if (c == nullptr) {
    log()->debug("transfer engine {}: message from unknown engine {:016x} dropped", self->opt_.name, h.from);
    return UCS_OK;
  }
  return (self->*Handler)(c, h);
}

template <ucs_status_t (impl::*Handler)(conn*, const msg_header&, void*, size_t, const ucp_am_recv_param_t*)>
ucs_status_t data_handler(void* arg, const void* header, size_t header_length, void* data, size_t length,
                          const ucp_am_recv_param_t* param) {
  auto* self = static_cast<impl*>(arg);
  msg_header h;
  if (!read_header(header, header_length, h)) return UCS_OK;
  conn* c = self->live_conn(h.from);
  if (c == nullptr) {
    log()->debug("transfer engine {}: payload of {} bytes from unknown engine {:016x} dropped", self->opt_.name,
                 length, h.from);
    return UCS_OK;
  }
  return (self->*Handler)(c, h, data, length, param);
}

ucs_status_t hello_handler(void* arg, const void* header, size_t header_length, void* data, size_t length,
                           const ucp_am_recv_param_t* param) {
  auto* self = static_cast<impl*>(arg);
  msg_header h;
  if (read_header(header, header_length, h) && (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0)
    self->on_hello(h, data, length);
  return UCS_OK;
}

ucs_status_t hello_ack_handler(void* arg, const void* header, size_t header_length, void*, size_t,
                               const ucp_am_recv_param_t*) {
  auto* self = static_cast<impl*>(arg);
  msg_header h;
  if (read_header(header, header_length, h)) self->on_hello_ack(h);
  return UCS_OK;
}

}  // namespace

std::string conn::label() const {
  return (peer.engine != 0 ? fmt::format("{:016x}", peer.engine) : std::string("?")) + " (" + peer.host + " pid " +
         std::to_string(peer.pid) + (shared_memory ? ", shared memory" : "") + ")";
}

void impl::register_am_handlers() {
  TROUPE_TE_UCS_CHECK(ucx_util::set_am_handlers(worker_,
                                                {
                                                    {am_hello, hello_handler},
                                                    {am_hello_ack, hello_ack_handler},
                                                    {am_read_req, control_handler<&impl::on_read_req>},
                                                    {am_read_resp, data_handler<&impl::on_read_resp>},
                                                    {am_write, data_handler<&impl::on_write>},
                                                    {am_ack, control_handler<&impl::on_ack>},
                                                    {am_send_eager, data_handler<&impl::on_send_eager>},
                                                    {am_send_rts, control_handler<&impl::on_send_rts>},
                                                    {am_send_cts, control_handler<&impl::on_send_cts>},
                                                    {am_send_data, data_handler<&impl::on_send_data>},
                                                    {am_abort, control_handler<&impl::on_abort>},
                                                },
                                                this),
                      "ucp_worker_set_am_recv_handler");
}

conn* impl::find_conn(uint64_t id) {
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : it->second.get();
}

conn* impl::live_conn(uint64_t engine) {
  auto it = by_engine_.find(engine);
  if (it == by_engine_.end()) return nullptr;
  conn* c = find_conn(it->second);
  if (c == nullptr) return nullptr;
  return c->state == conn_state::up || (c->client && c->state == conn_state::connecting) ? c : nullptr;
}

conn* impl::conn_for(const engine_address& peer) {
  auto it = by_engine_.find(peer.engine);
  if (it != by_engine_.end())
    if (conn* c = find_conn(it->second); c != nullptr && c->state != conn_state::closed) return c;
  if (shutting_down_) return nullptr;

  auto owned = std::make_unique<conn>();
  conn* c = owned.get();
  c->owner = this;
  c->id = next_conn_++;
  c->client = true;
  c->state = conn_state::connecting;
  c->peer = peer;
  c->deadline = clock::now() + opt_.connect_timeout;
  conns_.emplace(c->id, std::move(owned));
  by_engine_[peer.engine] = c->id;
  ++s_.connections;

  if (!open_peer_endpoint(c)) return c;
  auto* ctx = new request_ctx;
  ctx->owner = this;
  ctx->header.from = address_.engine;
  ctx->header.op = c->id;
  engine_address me = address_;
  ctx->copy = wire_pack(me);
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  rp.cb.send = request_cb;
  rp.user_data = ctx;
  rp.flags = UCP_AM_SEND_FLAG_EAGER;
  track(ucp_am_send_nbx(c->ep, am_hello, &ctx->header, sizeof ctx->header, ctx->copy.data(), ctx->copy.size(), &rp),
        ctx);
  log()->debug("transfer engine {}: connecting to {}", opt_.name, c->label());
  return c;
}

bool impl::open_peer_endpoint(conn* c) {
  if (c->peer.worker_address.empty()) {
    fail_conn(c, outcome::peer_lost, "the peer's address has no worker address", false);
    return false;
  }
  // One endpoint per connection, in one error mode for every connection
  // between two engines: UCX joins the endpoints two workers open to each
  // other, and refuses a pair whose modes differ ("asymmetric endpoint
  // configuration"). On one host with shared memory on both sides that is
  // mode NONE, the only one UCX 1.13 runs over shared memory (liveness then
  // comes from a watch on the peer's process, process_watch.hpp, with the
  // operations' timeouts as the fallback); elsewhere PEER, whose error
  // handler fails the connection at once.
  c->shared_memory = opt_.shared_memory && c->peer.shared_memory && c->peer.host_id == address_.host_id;
  if (c->peer.host_id == address_.host_id && c->watch == nullptr)
    c->watch = process_watch::open(static_cast<int>(c->peer.pid), c->peer.start_time, c->peer.pid_namespace);
  ucp_ep_params_t p{};
  if (c->shared_memory) {
    p.field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    p.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  } else {
    p = peer_mode_params(c);
  }
  p.field_mask |= UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
  p.address = reinterpret_cast<const ucp_address_t*>(c->peer.worker_address.data());
  const ucs_status_t st = ucp_ep_create(worker_, &p, &c->ep);
  if (st != UCS_OK) {
    c->ep = nullptr;
    fail_conn(c, outcome::peer_lost, std::string("ucp_ep_create: ") + ucs_status_string(st), false);
    return false;
  }
  if (log()->should_log(spdlog::level::trace)) ucp_ep_print_info(c->ep, stderr);  // lanes and transports
  return true;
}

void impl::on_hello(const msg_header& h, const void* data, size_t length) {
  engine_address peer;
  std::string why;
  const std::vector<char> bytes(static_cast<const char*>(data), static_cast<const char*>(data) + length);
  if (wire_unpack(bytes, peer, &why) != errc::ok || peer.engine == 0 || peer.engine != h.from) {
    log()->warn("transfer engine {}: bad hello dropped: {}", opt_.name, why.empty() ? std::string("engine id") : why);
    return;
  }
  // Endpoints are opened outside UCX callbacks.
  const uint64_t client_conn = h.op;
  defer([this, peer = std::move(peer), client_conn] { accept_hello(peer, client_conn); });
}

void impl::accept_hello(const engine_address& peer, uint64_t client_conn) {
  if (shutting_down_) return;
  auto answer = [this, client_conn](conn* c) {
    msg_header ack;
    ack.from = address_.engine;
    ack.op = client_conn;
    auto* ctx = new request_ctx;
    ctx->header = ack;
    send_am(c, am_hello_ack, ctx, nullptr, 0, true);
  };
  auto it = by_engine_.find(peer.engine);
  conn* existing = it == by_engine_.end() ? nullptr : find_conn(it->second);
  if (existing != nullptr && existing->state == conn_state::connecting) {
    // Both called at once: UCX has joined the two endpoints into one
    // connection, so each side answers on its own and both are up.
    answer(existing);
    return bring_up(existing);
  }
  if (existing != nullptr && existing->state == conn_state::up)  // the peer lost its side and calls again
    fail_conn(existing, outcome::peer_lost, "the peer opened a new connection", false);
  auto owned = std::make_unique<conn>();
  conn* c = owned.get();
  c->owner = this;
  c->id = next_conn_++;
  c->client = false;
  c->state = conn_state::up;
  c->peer = peer;
  c->deadline = clock::now() + opt_.connect_timeout;
  conns_.emplace(c->id, std::move(owned));
  by_engine_[peer.engine] = c->id;
  ++s_.connections;
  if (!open_peer_endpoint(c)) return;
  answer(c);
  bring_up(c);
}

void impl::on_hello_ack(const msg_header& h) {
  conn* c = find_conn(h.op);
  if (c == nullptr || !c->client || c->state != conn_state::connecting || c->peer.engine != h.from) return;
  const uint64_t id = c->id;
  defer([this, id] {
    conn* c = find_conn(id);
    if (c != nullptr && c->state == conn_state::connecting) bring_up(c);
  });
}

void impl::bring_up(conn* c) {
  c->state = conn_state::up;
  log()->debug("transfer engine {}: connection to {} up", opt_.name, c->label());
  std::vector<uint64_t> waiting;
  waiting.swap(c->waiting);
  for (uint64_t id : waiting) {
    auto it = ops_.find(id);
    if (it != ops_.end() && it->second->state == op_state::waiting_peer) run_op(it->second.get(), c);
  }
}

ucp_rkey_h impl::rkey(conn* c, const memory_descriptor& d) {
  if (!c->shared_memory || d.remote_key.empty()) return nullptr;
  auto it = c->rkeys.find(d.region);
  if (it != c->rkeys.end()) return it->second;
  ucp_rkey_h k = nullptr;
  const ucs_status_t st = ucp_ep_rkey_unpack(c->ep, d.remote_key.data(), &k);
  if (st != UCS_OK) {
    log()->warn("transfer engine {}: cannot unpack the key of region {} of {}: {}", opt_.name, d.region, c->label(),
                ucs_status_string(st));
    return nullptr;
  }
  c->rkeys.emplace(d.region, k);
  return k;
}

void impl::fail_conn(conn* c, outcome why, const std::string& reason, bool force) {
  if (c->state == conn_state::closed) return;
  const bool was_up = c->state == conn_state::up;
  c->state = conn_state::closed;
  if (c->peer.pid != 0 && c->peer.host_id == address_.host_id) mapped_.forget(c->peer.pid);
  auto it = by_engine_.find(c->peer.engine);
  if (it != by_engine_.end() && it->second == c->id) by_engine_.erase(it);
  if (was_up || c->client)
    log()->warn("transfer engine {}: connection to {} down: {}", opt_.name, c->label(), reason);
  else
    log()->debug("transfer engine {}: connection from {} closed: {}", opt_.name, c->label(), reason);
  // Operations on it (or waiting for it) fail; sends it delivered that wait
  // for a recv are dropped (their senders hear nothing and fail with it).
  std::vector<op*> affected;
  for (auto& [id, o] : ops_)
    if (o->conn == c->id) affected.push_back(o.get());
  for (op* o : affected) fail_op(o, o->failing ? o->fail : why);
  for (auto u = unexpected_.begin(); u != unexpected_.end();) {
    if (u->from == c->peer.engine && by_engine_.count(c->peer.engine) == 0) {
      unexpected_bytes_ -= u->data.size();
      u = unexpected_.erase(u);
    } else {
      ++u;
    }
  }
  const uint64_t id = c->id;
  defer([this, id, force] { close_endpoints(id, force); });
}

void impl::close_endpoints(uint64_t id, bool force) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  std::unique_ptr<conn> c = std::move(it->second);
  conns_.erase(it);
  if (c->state != conn_state::closed) {  // shutdown path: forget it quietly
    auto b = by_engine_.find(c->peer.engine);
    if (b != by_engine_.end() && b->second == c->id) by_engine_.erase(b);
    c->state = conn_state::closed;
  }
  for (auto& [region, k] : c->rkeys) ucp_rkey_destroy(k);
  c->rkeys.clear();
  auto close = [&](ucp_ep_h ep, bool forced) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = forced ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    const ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    if (UCS_PTR_IS_PTR(r))
      c->close_requests.push_back(r);
    else if (UCS_PTR_IS_ERR(r))
      log()->debug("transfer engine {}: closing an endpoint to {}: {}", opt_.name, c->label(),
                   ucs_status_string(UCS_PTR_STATUS(r)));
  };
  // A forced close of a NONE endpoint is undefined while the peer lives; it
  // is flushed (RMA and eager messages finish at once on one host). Once the
  // peer's process is gone a flush would never end: force it. (Rendezvous
  // receives UCX had started from that peer stay open until shutdown; UCX
  // 1.13 cannot cancel them. Their operations have failed already.)
  if (c->ep != nullptr) close(c->ep, force && (!c->shared_memory || c->peer_exited));
  c->ep = nullptr;
  closing_.push_back(std::move(c));
}

}  // namespace te_ucx

}  // namespace troupe
