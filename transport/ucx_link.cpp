// Links of ucx_node: opening them (both sides of the handshake in
// ucx_handshake.hpp), receiving envelopes in order, taking links down.
// Every message after hello names its link and token in the header, so a
// message is attributed to an authenticated link whichever endpoint carried
// it (the socket-address one or the shared-memory one); hello itself is
// attributed by its reply endpoint, which is the server's endpoint of that
// connection. UCX callbacks only read, send and change link state; creating
// and closing endpoints waits for defer().
#include <arpa/inet.h>

#include <cstring>

#include "transport/ucx_node_impl.hpp"

namespace troupe {

using namespace ucx_detail;
namespace hs = ucx_handshake;
using impl = ucx_node::impl;

namespace {

std::string address_text(const sockaddr_storage& sa) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (sa.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (sa.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

void on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* l = static_cast<link*>(arg);
  impl* self = l->owner;
  const uint32_t id = l->id;
  self->defer([self, id, status] {
    if (link* l = self->find(id))
      self->fail_link(l, std::string("endpoint error: ") + ucs_status_string(status), link_end::dead);
  });
}

ucp_ep_params_t peer_mode_params(link* l) {
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  p.err_handler.cb = on_ep_error;
  p.err_handler.arg = l;
  return p;
}

bool rendezvous(const ucp_am_recv_param_t* param) { return (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0; }
// ---- handshake steps (all inside UCX callbacks) ----

void server_hello(impl* self, link* l, const void* data, size_t length) {
  hs::hello m;
  const std::string why = hs::decode(data, length, m);
  if (!why.empty()) return self->fail_link(l, "bad hello: " + why, link_end::refused);
  l->peer_link = m.link;  // known before any refusal, so a refusal can say goodbye
  l->peer_token = m.token;
  if (!self->claim_name(l, m.name)) return;
  l->peer_nonce = m.n;
  l->same_host = m.boot_id == self->boot_id_;
  hs::challenge c;
  c.link = l->id;
  c.token = l->my_token;
  c.name = self->opt_.name;
  c.boot_id = self->boot_id_;
  c.n = l->my_nonce;
  c.p = hs::make_proof(self->opt_.secret, hs::role::server, m.n, l->my_nonce, m.name, self->opt_.name);
  l->state = link_state::awaiting_auth;
  self->send_am(l->ep, am_challenge, l->header_to_peer(), hs::encode(c));
}

void client_challenge(impl* self, link* l, const void* data, size_t length) {
  hs::challenge c;
  const std::string why = hs::decode(data, length, c);
  if (!why.empty()) return self->fail_link(l, "bad challenge: " + why, link_end::refused);
  l->peer_link = c.link;  // known before any refusal, so a refusal can say goodbye
  l->peer_token = c.token;
  const hs::proof expected =
      hs::make_proof(self->opt_.secret, hs::role::server, l->my_nonce, c.n, self->opt_.name, c.name);
  if (!hs::proof_equal(expected, c.p)) {
    ++self->c_.auth_failures;
    return self->fail_link(l, "node '" + c.name + "' failed to prove the cluster secret (do the secrets differ?)",
                           link_end::refused);
  }
  if (!self->claim_name(l, c.name)) return;
  l->peer_nonce = c.n;
  l->same_host = c.boot_id == self->boot_id_;
  hs::auth a;
  a.p = hs::make_proof(self->opt_.secret, hs::role::client, c.n, l->my_nonce, self->opt_.name, c.name);
  a.worker_address = self->worker_address_;
  l->state = link_state::awaiting_accept;
  self->send_am(l->ep, am_auth, l->header_to_peer(), hs::encode(a));
}

void server_auth(impl* self, link* l, const void* data, size_t length) {
  hs::auth a;
  const std::string why = hs::decode(data, length, a);
  if (!why.empty()) return self->fail_link(l, "bad auth: " + why, link_end::refused);
  const hs::proof expected =
      hs::make_proof(self->opt_.secret, hs::role::client, l->my_nonce, l->peer_nonce, l->peer_name, self->opt_.name);
  if (!hs::proof_equal(expected, a.p)) {
    ++self->c_.auth_failures;
    return self->fail_link(l, "node '" + l->peer_name + "' failed to prove the cluster secret (do the secrets differ?)",
                           link_end::refused);
  }
  l->peer_address = std::move(a.worker_address);
  // Our envelopes may overtake the accept (they may take the other
  // endpoint); the client, which has verified us already, holds them until
  // the accept arrives.
  const uint32_t id = l->id;
  self->defer([self, id] {
    link* l = self->find(id);
    if (l == nullptr || l->state != link_state::awaiting_auth) return;
    self->open_data_endpoint(l);
    hs::accept m;
    m.worker_address = self->worker_address_;
    self->send_am(l->ep, am_accept, l->header_to_peer(), hs::encode(m));
    self->bring_up(l);
  });
}

void client_accept(impl* self, link* l, const void* data, size_t length) {
  hs::accept m;
  const std::string why = hs::decode(data, length, m);
  if (!why.empty()) return self->fail_link(l, "bad accept: " + why, link_end::refused);
  l->peer_address = std::move(m.worker_address);
  // Up, delivering what the server sent ahead of the accept. Sends from
  // link_up are queued commands, which run after the deferred step below has
  // opened the shared-memory endpoint.
  self->bring_up(l);
  const uint32_t id = l->id;
  self->defer([self, id] {
    link* l = self->find(id);
    if (l != nullptr && l->state == link_state::up) self->open_data_endpoint(l);
  });
}

// Runs one handshake step for the link the message is for; anything else is dropped.
template <class Step>
ucs_status_t handshake(impl* self, link* l, const void* data, size_t length, const ucp_am_recv_param_t* param,
                       const char* what, Step step) {
  if (l == nullptr) {
    ++self->c_.dropped_unauthenticated;
    transport_log()->warn("node {}: dropped a {} that belongs to no link in that handshake step", self->opt_.name,
                          what);
    return UCS_OK;
  }
  if (rendezvous(param)) {  // megabytes claimed before authenticating: refuse unfetched
    self->fail_link(l, std::string(what) + " of " + std::to_string(length) + " bytes is too large", link_end::refused);
    return UCS_OK;
  }
  try {
    step(self, l, data, length);
  } catch (const std::exception& e) {
    self->fail_link(l, std::string(what) + ": " + e.what(), link_end::refused);
  }
  return UCS_OK;
}

ucs_status_t on_hello(void* arg, const void*, size_t, void* data, size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<impl*>(arg);
  link* l = nullptr;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 && param->reply_ep != nullptr) {
    auto it = self->by_ep_.find(param->reply_ep);
    if (it != self->by_ep_.end()) l = self->find(it->second);
  }
  if (l != nullptr && l->state != link_state::awaiting_hello) l = nullptr;
  return handshake(self, l, data, length, param, "hello", server_hello);
}

ucs_status_t on_challenge(void* arg, const void* header, size_t header_length, void* data, size_t length,
                          const ucp_am_recv_param_t* param) {
  auto* self = static_cast<impl*>(arg);
  return handshake(self, self->authentic(header, header_length, {link_state::connecting}), data, length, param,
                   "challenge", client_challenge);
}

ucs_status_t on_auth(void* arg, const void* header, size_t header_length, void* data, size_t length,
                     const ucp_am_recv_param_t* param) {
  auto* self = static_cast<impl*>(arg);
  return handshake(self, self->authentic(header, header_length, {link_state::awaiting_auth}), data, length, param,
                   "auth", server_auth);
}

ucs_status_t on_accept(void* arg, const void* header, size_t header_length, void* data, size_t length,
                       const ucp_am_recv_param_t* param) {
  auto* self = static_cast<impl*>(arg);
  return handshake(self, self->authentic(header, header_length, {link_state::awaiting_accept}), data, length, param,
                   "accept", client_accept);
}

ucs_status_t on_envelope_am(void* arg, const void* header, size_t header_length, void* data, size_t length,
                            const ucp_am_recv_param_t* param) {
  auto* self = static_cast<impl*>(arg);
  // A client that has verified the server (awaiting_accept) holds the
  // server's envelopes that overtook the accept.
  am_header h;
  link* l = self->authentic(header, header_length, {link_state::awaiting_accept, link_state::up}, &h);
  if (l == nullptr) {
    ++self->c_.dropped_unauthenticated;
    transport_log()->warn("node {}: dropped an envelope of {} bytes not from an authenticated link", self->opt_.name,
                          length);
    return UCS_OK;
  }
  self->on_envelope(l, h.seq, data, length, param);
  return UCS_OK;
}

ucs_status_t on_heartbeat(void* arg, const void* header, size_t header_length, void*, size_t,
                          const ucp_am_recv_param_t*) {
  auto* self = static_cast<impl*>(arg);
  if (link* l = self->authentic(header, header_length, {link_state::awaiting_accept, link_state::up}))
    l->last_heard = clock::now();
  else
    ++self->c_.dropped_unauthenticated;
  return UCS_OK;
}

ucs_status_t on_bye(void* arg, const void* header, size_t header_length, void*, size_t, const ucp_am_recv_param_t*) {
  auto* self = static_cast<impl*>(arg);
  if (link* l = self->authentic(
          header, header_length,
          {link_state::connecting, link_state::awaiting_auth, link_state::awaiting_accept, link_state::up}))
    self->fail_link(l, l->state == link_state::up ? "peer closed the link" : "peer refused the link", link_end::left);
  else
    ++self->c_.dropped_unauthenticated;
  return UCS_OK;
}

}  // namespace

void impl::register_am_handlers() {
  const std::pair<unsigned, ucp_am_recv_callback_t> table[] = {
      {am_hello, on_hello},          {am_challenge, on_challenge}, {am_auth, on_auth}, {am_accept, on_accept},
      {am_envelope, on_envelope_am}, {am_heartbeat, on_heartbeat}, {am_bye, on_bye},
  };
  for (const auto& [id, cb] : table) {
    ucp_am_handler_param_t p{};
    p.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS | UCP_AM_HANDLER_PARAM_FIELD_CB |
                   UCP_AM_HANDLER_PARAM_FIELD_ARG;
    p.id = id;
    p.flags = UCP_AM_FLAG_WHOLE_MSG;
    p.cb = cb;
    p.arg = this;
    TROUPE_UCS_CHECK(ucp_worker_set_am_recv_handler(worker_, &p), "ucp_worker_set_am_recv_handler");
  }
}

// ---- link table ----

link* impl::new_link(bool client, std::string where) {
  auto l = std::make_unique<link>();
  l->owner = this;
  l->id = next_link_id_++;
  l->client = client;
  l->where = std::move(where);
  l->state = client ? link_state::connecting : link_state::awaiting_hello;
  try {
    l->my_nonce = hs::random_nonce();
    l->my_token = hs::random_token();
  } catch (const std::exception& e) {
    ++c_.handshakes_failed;
    transport_log()->error("node {}: link with {} not opened: {}", opt_.name, l->where, e.what());
    return nullptr;
  }
  l->deadline = clock::now() + opt_.handshake_timeout;
  link* raw = l.get();
  links_.emplace(raw->id, std::move(l));
  return raw;
}

link* impl::find(uint32_t id) {
  auto it = links_.find(id);
  return it == links_.end() ? nullptr : it->second.get();
}

link* impl::authentic(const void* header, size_t length, std::initializer_list<link_state> states, am_header* out) {
  if (length != sizeof(am_header)) return nullptr;
  am_header h;
  std::memcpy(&h, header, sizeof h);
  link* l = find(h.link);
  if (l == nullptr || l->my_token != h.token) return nullptr;
  if (out != nullptr) *out = h;
  for (link_state s : states)
    if (l->state == s) return l;
  return nullptr;
}

bool impl::claim_name(link* l, const std::string& name) {
  std::string why;
  if (name == opt_.name)
    why = "peer claims this node's own name '" + name + "'";
  else if (!l->expected_name.empty() && name != l->expected_name)
    why = "expected node '" + l->expected_name + "', found '" + name + "'";
  else if (by_name_.count(name) != 0)
    why = "a link to '" + name + "' exists already (nodes connect in one direction only)";
  if (!why.empty()) {
    fail_link(l, why, link_end::refused);
    return false;
  }
  l->peer_name = name;
  by_name_[name] = l->id;
  return true;
}

// ---- opening ----

void impl::start_client(const sockaddr_storage& addr, socklen_t len, std::string where, std::string expected_name) {
  if (shutting_down_) return;
  link* l = new_link(true, std::move(where));
  if (l == nullptr) return;
  l->expected_name = std::move(expected_name);
  ucp_ep_params_t p = peer_mode_params(l);
  p.field_mask |= UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR;
  p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
  p.sockaddr.addrlen = len;
  const ucs_status_t st = ucp_ep_create(worker_, &p, &l->ep);
  if (st != UCS_OK) {
    l->ep = nullptr;
    return fail_link(l, std::string("ucp_ep_create: ") + ucs_status_string(st), link_end::dead);
  }
  hs::hello m;
  m.link = l->id;
  m.token = l->my_token;
  m.name = opt_.name;
  m.boot_id = boot_id_;
  m.n = l->my_nonce;
  send_am(l->ep, am_hello, am_header{}, hs::encode(m), UCP_AM_SEND_FLAG_REPLY);
  transport_log()->debug("node {}: connecting to {}", opt_.name, l->where);
}

void impl::accept_connection(ucp_conn_request_h request) {
  if (shutting_down_) {
    ucp_listener_reject(listener_, request);
    return;
  }
  ucp_conn_request_attr_t a{};
  a.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
  std::string where = ucp_conn_request_query(request, &a) == UCS_OK ? address_text(a.client_address) : "?";
  link* l = new_link(false, std::move(where));
  if (l == nullptr) {
    ucp_listener_reject(listener_, request);
    return;
  }
  ucp_ep_params_t p = peer_mode_params(l);
  p.field_mask |= UCP_EP_PARAM_FIELD_CONN_REQUEST;
  p.conn_request = request;
  const ucs_status_t st = ucp_ep_create(worker_, &p, &l->ep);
  if (st != UCS_OK) {
    l->ep = nullptr;
    return fail_link(l, std::string("ucp_ep_create from a connection request: ") + ucs_status_string(st),
                     link_end::dead);
  }
  by_ep_[l->ep] = l->id;
}

void impl::open_data_endpoint(link* l) {
  if (!opt_.shared_memory || !l->same_host || l->peer_address.empty()) return;
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  p.address = reinterpret_cast<const ucp_address_t*>(l->peer_address.data());
  p.err_mode = UCP_ERR_HANDLING_MODE_NONE;  // the only mode in which UCX 1.13 uses shared memory
  const ucs_status_t st = ucp_ep_create(worker_, &p, &l->data_ep);
  if (st != UCS_OK) {
    l->data_ep = nullptr;
    transport_log()->warn("node {}: no shared-memory endpoint to {} ({}); envelopes stay on tcp", opt_.name, l->label(),
                          ucs_status_string(st));
    return;
  }
  ++c_.shared_memory_endpoints;
}

void impl::bring_up(link* l) {
  l->state = link_state::up;
  l->last_heard = clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    up_names_.insert(l->peer_name);
  }
  ++c_.links_up;
  transport_log()->info("node {}: link to {} up", opt_.name, l->label());
  if (!shutting_down_ && h_.on_link_up) {
    try {
      h_.on_link_up(l->peer_name);
    } catch (const std::exception& e) {
      transport_log()->error("node {}: link_up handler threw: {}", opt_.name, e.what());
    }
  }
  drain_inbox(l);  // envelopes that overtook the accept
}

// ---- closing ----

void impl::fail_link(link* l, const std::string& reason, link_end how) {
  if (l->state == link_state::closed) return;
  const bool was_up = l->state == link_state::up;
  l->state = link_state::closed;
  if (!l->peer_name.empty()) {
    auto it = by_name_.find(l->peer_name);
    if (it != by_name_.end() && it->second == l->id) by_name_.erase(it);
  }
  if (was_up) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      up_names_.erase(l->peer_name);
    }
    ++c_.links_down;
    transport_log()->warn("node {}: link to {} down: {}", opt_.name, l->label(), reason);
    if (!shutting_down_ && h_.on_link_down) {
      try {
        h_.on_link_down(l->peer_name, reason);
      } catch (const std::exception& e) {
        transport_log()->error("node {}: link_down handler threw: {}", opt_.name, e.what());
      }
    }
  } else {
    ++c_.handshakes_failed;
    transport_log()->warn("node {}: refused link with {}: {}", opt_.name, l->label(), reason);
  }
  // A refused peer hears why at once instead of through an endpoint timeout;
  // the flushed close below sends the goodbye before it disconnects.
  if (how == link_end::refused && l->ep != nullptr && l->peer_token != 0)
    send_routed(l, am_bye, l->header_to_peer(), {}, nullptr);
  const uint32_t id = l->id;
  const bool force = how == link_end::dead;
  defer([this, id, force] { close_endpoints(id, force); });
}

void impl::close_endpoints(uint32_t id, bool force) {
  auto it = links_.find(id);
  if (it == links_.end()) return;
  std::unique_ptr<link> l = std::move(it->second);
  links_.erase(it);
  if (l->ep != nullptr) by_ep_.erase(l->ep);
  if (l->state != link_state::closed) {  // shutdown: no callbacks, just forget the link
    auto n = by_name_.find(l->peer_name);
    if (n != by_name_.end() && n->second == l->id) by_name_.erase(n);
    std::lock_guard<std::mutex> lock(mu_);
    if (l->state == link_state::up) up_names_.erase(l->peer_name);
    l->state = link_state::closed;
  }
  auto close = [&](ucp_ep_h ep) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    const ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    if (UCS_PTR_IS_PTR(r))
      l->close_requests.push_back(r);
    else if (UCS_PTR_IS_ERR(r))
      transport_log()->debug("node {}: closing an endpoint to {}: {}", opt_.name, l->label(),
                             ucs_status_string(UCS_PTR_STATUS(r)));
  };
  if (l->data_ep != nullptr) close(l->data_ep);
  if (l->ep != nullptr) close(l->ep);
  l->data_ep = l->ep = nullptr;
  closing_.push_back(std::move(l));
}

}  // namespace troupe
