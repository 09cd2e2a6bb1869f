// Connections of the ucx transfer engine. The first operation towards an
// engine opens a client connection to the listener in its engine_address and
// says hello with this engine's own address; the server answers once it knows
// who is calling, and both sides then hold one connection for the pair, used
// in either direction. When both engines call each other at once, the
// connection opened by the engine with the smaller id wins on both sides.
// On one host with shared memory on both sides, each side adds an endpoint
// from the other's worker address (error mode NONE) that then carries every
// message (and RMA, with rma on); the tcp endpoint (error mode PEER) stays the liveness channel: its
// error handler fails the whole connection, the NONE endpoint included.
#include <netdb.h>

#include <cstring>

#include "transport/transfer_engine_ucx_impl.hpp"
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
    self->on_hello(h, data, length, param);
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
  return (peer.engine != 0 ? fmt::format("{:016x}", peer.engine) : std::string("?")) + " (" + peer.host + ":" +
         std::to_string(peer.port) + (shm_ep != nullptr ? ", shared memory" : "") + ")";
}

void impl::register_am_handlers() {
  const std::pair<unsigned, ucp_am_recv_callback_t> table[] = {
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
  };
  for (const auto& [id, cb] : table) {
    ucp_am_handler_param_t p{};
    p.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS | UCP_AM_HANDLER_PARAM_FIELD_CB |
                   UCP_AM_HANDLER_PARAM_FIELD_ARG;
    p.id = id;
    p.flags = UCP_AM_FLAG_WHOLE_MSG;
    p.cb = cb;
    p.arg = this;
    TROUPE_TE_UCS_CHECK(ucp_worker_set_am_recv_handler(worker_, &p), "ucp_worker_set_am_recv_handler");
  }
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

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(peer.port);
  const int rc = getaddrinfo(peer.host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr || peer.port == 0) {
    if (res != nullptr) freeaddrinfo(res);
    fail_conn(c, outcome::peer_lost, "cannot resolve " + peer.host + ":" + service, false);
    return c;
  }
  ucp_ep_params_t p = peer_mode_params(c);
  p.field_mask |= UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR;
  p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  p.sockaddr.addr = res->ai_addr;
  p.sockaddr.addrlen = res->ai_addrlen;
  const ucs_status_t st = ucp_ep_create(worker_, &p, &c->ep);
  freeaddrinfo(res);
  if (st != UCS_OK) {
    c->ep = nullptr;
    fail_conn(c, outcome::peer_lost, std::string("ucp_ep_create: ") + ucs_status_string(st), false);
    return c;
  }
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
  rp.flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER;
  track(ucp_am_send_nbx(c->ep, am_hello, &ctx->header, sizeof ctx->header, ctx->copy.data(), ctx->copy.size(), &rp),
        ctx);
  log()->debug("transfer engine {}: connecting to {}", opt_.name, c->label());
  return c;
}

void impl::accept(ucp_conn_request_h request) {
  if (shutting_down_) {
    ucp_listener_reject(listener_, request);
    return;
  }
  auto owned = std::make_unique<conn>();
  conn* c = owned.get();
  c->owner = this;
  c->id = next_conn_++;
  c->client = false;
  c->state = conn_state::awaiting_hello;
  c->deadline = clock::now() + opt_.connect_timeout;
  ucp_ep_params_t p = peer_mode_params(c);
  p.field_mask |= UCP_EP_PARAM_FIELD_CONN_REQUEST;
  p.conn_request = request;
  const ucs_status_t st = ucp_ep_create(worker_, &p, &c->ep);
  if (st != UCS_OK) {
    log()->warn("transfer engine {}: connection not accepted: {}", opt_.name, ucs_status_string(st));
    return;
  }
  conns_.emplace(c->id, std::move(owned));
  by_ep_[c->ep] = c->id;
  ++s_.connections;
}

void impl::on_hello(const msg_header& h, const void* data, size_t length, const ucp_am_recv_param_t* param) {
  conn* c = nullptr;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 && param->reply_ep != nullptr) {
    auto it = by_ep_.find(param->reply_ep);
    if (it != by_ep_.end()) c = find_conn(it->second);
  }
  if (c == nullptr || c->state != conn_state::awaiting_hello) return;
  engine_address peer;
  std::string why;
  const std::vector<char> bytes(static_cast<const char*>(data), static_cast<const char*>(data) + length);
  if (wire_unpack(bytes, peer, &why) != errc::ok || peer.engine == 0 || peer.engine != h.from) {
    return fail_conn(c, outcome::peer_lost, "bad hello: " + (why.empty() ? std::string("engine id") : why), false);
  }
  c->peer = peer;
  auto it = by_engine_.find(peer.engine);
  if (it != by_engine_.end()) {
    conn* other = find_conn(it->second);
    if (other != nullptr && other->state != conn_state::closed) {
      if (other->client && address_.engine < peer.engine) {
        // Both called; ours (smaller id) wins on both sides: the peer adopts it.
        return fail_conn(c, outcome::peer_lost, "crossed connection (ours wins)", false);
      }
      if (other->client) {  // theirs wins: operations waiting on ours move over
        c->waiting.swap(other->waiting);
        for (uint64_t id : c->waiting)
          if (auto o = ops_.find(id); o != ops_.end()) o->second->conn = c->id;
        fail_conn(other, outcome::peer_lost, "crossed connection (theirs wins)", false);
      } else {
        fail_conn(other, outcome::peer_lost, "replaced by a new connection from the peer", false);
      }
    }
  }
  by_engine_[peer.engine] = c->id;
  const uint64_t id = c->id;
  const uint64_t client_conn = h.op;
  defer([this, id, client_conn] {
    conn* c = find_conn(id);
    if (c == nullptr || c->state != conn_state::awaiting_hello) return;
    open_shm(c);
    msg_header ack;
    ack.from = address_.engine;
    ack.op = client_conn;
    auto* ctx = new request_ctx;
    ctx->header = ack;
    c->state = conn_state::up;  // send_am routes by state-independent endpoints
    send_am(c, am_hello_ack, ctx, nullptr, 0, true);
    bring_up(c);
  });
}

void impl::on_hello_ack(const msg_header& h) {
  conn* c = find_conn(h.op);
  if (c == nullptr || !c->client || c->state != conn_state::connecting || c->peer.engine != h.from) return;
  const uint64_t id = c->id;
  defer([this, id] {
    conn* c = find_conn(id);
    if (c == nullptr || c->state != conn_state::connecting) return;
    open_shm(c);
    bring_up(c);
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

void impl::open_shm(conn* c) {
  if (!opt_.shared_memory || c->peer.worker_address.empty() || c->peer.host_id != address_.host_id) return;
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  p.address = reinterpret_cast<const ucp_address_t*>(c->peer.worker_address.data());
  p.err_mode = UCP_ERR_HANDLING_MODE_NONE;  // the only mode in which UCX 1.13 uses shared memory
  const ucs_status_t st = ucp_ep_create(worker_, &p, &c->shm_ep);
  if (st != UCS_OK) {
    c->shm_ep = nullptr;
    log()->warn("transfer engine {}: no shared-memory endpoint to {} ({}); staying on tcp", opt_.name, c->label(),
                ucs_status_string(st));
    return;
  }
  if (log()->should_log(spdlog::level::trace)) ucp_ep_print_info(c->shm_ep, stderr);  // lanes and transports
}

ucp_rkey_h impl::rkey(conn* c, const memory_descriptor& d) {
  if (c->shm_ep == nullptr || d.remote_key.empty()) return nullptr;
  auto it = c->rkeys.find(d.region);
  if (it != c->rkeys.end()) return it->second;
  ucp_rkey_h k = nullptr;
  const ucs_status_t st = ucp_ep_rkey_unpack(c->shm_ep, d.remote_key.data(), &k);
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
  if (c->ep != nullptr) by_ep_.erase(c->ep);
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
  // A forced close of the NONE endpoint is undefined while the peer lives;
  // it is flushed (RMA and eager messages finish at once on one host).
  if (c->shm_ep != nullptr) close(c->shm_ep, false);
  if (c->ep != nullptr) close(c->ep, force);
  c->shm_ep = c->ep = nullptr;
  closing_.push_back(std::move(c));
}

}  // namespace te_ucx

}  // namespace troupe
