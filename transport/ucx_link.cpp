// Links of ucx_node: the steps of the handshake (ucx_handshake.hpp; its
// sockets are in ucx_handshake_io.cpp), opening the endpoints to the peer's
// worker address, the active-message handlers, taking links down. Every
// active message names its link and token in the header, so it is
// attributed to an authenticated link whichever endpoint carried it. UCX
// callbacks only read, send and change link state; closing endpoints waits
// for defer().
#include <arpa/inet.h>

#include <cstring>

#include "transport/ucx_node_impl.hpp"
#include "transport/ucx_util.hpp"

namespace troupe {

using namespace ucx_detail;
namespace hs = ucx_handshake;
using impl = ucx_node::impl;

namespace {

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

}  // namespace

// ---- handshake steps (one per frame, on the progress thread) ----

void impl::server_hello(link* l, const char* data, size_t length) {
  hs::hello m;
  const std::string why = hs::decode(data, length, m);
  if (!why.empty()) return fail_link(l, "bad hello: " + why, link_end::refused);
  l->peer_link = m.link;
  l->peer_token = m.token;
  // The name is claimed once the client has proved itself (server_auth): an
  // unauthenticated hello must not block a real node of that name.
  if (m.name == opt_.name) return fail_link(l, "peer claims this node's own name '" + m.name + "'", link_end::refused);
  l->peer_name = m.name;
  l->peer_nonce = m.n;
  l->same_host = !m.boot_id.empty() && m.boot_id == offered_boot_id();
  hs::challenge c;
  c.link = l->id;
  c.token = l->my_token;
  c.name = opt_.name;
  c.boot_id = offered_boot_id();
  c.n = l->my_nonce;
  c.p = hs::make_proof(opt_.secret, hs::role::server, m.n, l->my_nonce, m.name, opt_.name);
  l->state = link_state::awaiting_auth;
  send_frame(l, hs::frame_challenge, hs::encode(c));
}

void impl::client_challenge(link* l, const char* data, size_t length) {
  hs::challenge c;
  const std::string why = hs::decode(data, length, c);
  if (!why.empty()) return fail_link(l, "bad challenge: " + why, link_end::refused);
  l->peer_link = c.link;
  l->peer_token = c.token;
  const hs::proof expected = hs::make_proof(opt_.secret, hs::role::server, l->my_nonce, c.n, opt_.name, c.name);
  if (!hs::proof_equal(expected, c.p)) {
    ++c_.auth_failures;
    return fail_link(l, "node '" + c.name + "' failed to prove the cluster secret (do the secrets differ?)",
                     link_end::refused);
  }
  if (!claim_name(l, c.name)) return;
  l->peer_nonce = c.n;
  l->same_host = !c.boot_id.empty() && c.boot_id == offered_boot_id();
  hs::auth a;
  a.p = hs::make_proof(opt_.secret, hs::role::client, c.n, l->my_nonce, opt_.name, c.name, worker_address_);
  a.worker_address = worker_address_;
  l->state = link_state::awaiting_accept;
  send_frame(l, hs::frame_auth, hs::encode(a));
}

void impl::server_auth(link* l, const char* data, size_t length) {
  hs::auth a;
  const std::string why = hs::decode(data, length, a);
  if (!why.empty()) return fail_link(l, "bad auth: " + why, link_end::refused);
  const hs::proof expected = hs::make_proof(opt_.secret, hs::role::client, l->my_nonce, l->peer_nonce, l->peer_name,
                                            opt_.name, a.worker_address);
  if (!hs::proof_equal(expected, a.p)) {
    ++c_.auth_failures;
    return fail_link(l, "node '" + l->peer_name + "' failed to prove the cluster secret (do the secrets differ?)",
                     link_end::refused);
  }
  if (a.worker_address.empty()) return fail_link(l, "auth carries no worker address", link_end::refused);
  const std::string name = l->peer_name;
  l->peer_name.clear();  // claim_name sets it again
  if (!claim_name(l, name)) return;
  l->peer_address = std::move(a.worker_address);
  if (!open_endpoints(l)) return;
  // Our envelopes may overtake the accept (they travel on UCX); the client,
  // which has verified us already, holds them until the accept arrives.
  hs::accept m;
  m.p = hs::make_proof(opt_.secret, hs::role::server_accept, l->peer_nonce, l->my_nonce, l->peer_name, opt_.name,
                       worker_address_);
  m.worker_address = worker_address_;
  l->close_after_flush = true;
  send_frame(l, hs::frame_accept, hs::encode(m));
  if (l->state != link_state::closed) bring_up(l);
}

void impl::client_accept(link* l, const char* data, size_t length) {
  hs::accept m;
  const std::string why = hs::decode(data, length, m);
  if (!why.empty()) return fail_link(l, "bad accept: " + why, link_end::refused);
  const hs::proof expected = hs::make_proof(opt_.secret, hs::role::server_accept, l->my_nonce, l->peer_nonce,
                                            opt_.name, l->peer_name, m.worker_address);
  if (!hs::proof_equal(expected, m.p)) {
    ++c_.auth_failures;
    return fail_link(l, "the accept of node '" + l->peer_name + "' carries no valid proof", link_end::refused);
  }
  if (m.worker_address.empty()) return fail_link(l, "accept carries no worker address", link_end::refused);
  l->peer_address = std::move(m.worker_address);
  close_socket(l);
  if (!open_endpoints(l)) return;
  bring_up(l);  // delivers what the server sent ahead of the accept
}

namespace {

ucs_status_t on_envelope_am(void* arg, const void* header, size_t header_length, void* data, size_t length,
                            const ucp_am_recv_param_t* param) {
  auto* self = static_cast<impl*>(arg);
  // A client that has verified the server (awaiting_accept) holds the
  // server's envelopes that overtook the accept.
  am_header h;
  link* l = self->authentic(header, header_length, {link_state::awaiting_accept, link_state::up}, &h);
  if (l == nullptr) {
    ++self->c_.dropped_unauthenticated;
    // While this node shuts down its links are gone and peers may still be talking: not worth a warning.
    transport_log()->log(self->shutting_down_ ? spdlog::level::debug : spdlog::level::warn,
                         "node {}: dropped an envelope of {} bytes not from an authenticated link", self->opt_.name,
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
  am_header h;
  link* l = self->authentic(header, header_length, {link_state::awaiting_accept, link_state::up}, &h);
  if (l == nullptr) {
    ++self->c_.dropped_unauthenticated;
  } else if (l->state == link_state::up) {
    l->bye_after = h.seq;  // down once the envelopes sent before it are delivered
    self->settle_bye(l);
  } else {
    self->fail_link(l, "peer closed the link before its accept arrived", link_end::left);
  }
  return UCS_OK;
}

}  // namespace

void impl::register_am_handlers() {
  TROUPE_UCS_CHECK(ucx_util::set_am_handlers(worker_,
                                             {{am_envelope, on_envelope_am}, {am_heartbeat, on_heartbeat}, {am_bye, on_bye}},
                                             this),
                   "ucp_worker_set_am_recv_handler");
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

bool impl::open_endpoints(link* l) {
  ucp_ep_params_t p = peer_mode_params(l);
  p.field_mask |= UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
  p.address = reinterpret_cast<const ucp_address_t*>(l->peer_address.data());
  const ucs_status_t st = ucp_ep_create(worker_, &p, &l->ep);
  if (st != UCS_OK) {
    l->ep = nullptr;
    fail_link(l, std::string("ucp_ep_create to the peer's worker address: ") + ucs_status_string(st), link_end::dead);
    return false;
  }
  if (!opt_.shared_memory || !l->same_host) return true;
  ucp_ep_params_t q{};
  q.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  q.address = p.address;
  q.err_mode = UCP_ERR_HANDLING_MODE_NONE;  // the only mode in which UCX 1.13 uses shared memory
  const ucs_status_t sq = ucp_ep_create(worker_, &q, &l->data_ep);
  if (sq != UCS_OK) {
    l->data_ep = nullptr;
    transport_log()->warn("node {}: no shared-memory endpoint to {} ({}); envelopes stay on tcp", opt_.name, l->label(),
                          ucs_status_string(sq));
    return true;
  }
  ++c_.shared_memory_endpoints;
  return true;
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
    if (refusal_logged())  // anyone can cause these: rate-limited
      transport_log()->warn("node {}: refused link with {}: {}", opt_.name, l->label(), reason);
  }
  // A refused peer hears it at once: in the handshake its connection closes;
  // later the goodbye goes ahead of the flushed close below.
  close_socket(l);
  if (how == link_end::refused && l->ep != nullptr && l->peer_token != 0)
    send_routed(l, am_bye, l->header_to_peer(l->next_seq), {}, nullptr);
  const uint32_t id = l->id;
  const bool force = how == link_end::dead;
  defer([this, id, force] { close_endpoints(id, force); });
}

void impl::close_endpoints(uint32_t id, bool force) {
  auto it = links_.find(id);
  if (it == links_.end()) return;
  std::unique_ptr<link> l = std::move(it->second);
  links_.erase(it);
  close_socket(l.get());
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
