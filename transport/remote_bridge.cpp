// The receive path of remote_core: what ucx_node's progress thread hands over.
// Each envelope is decoded and dispatched here and then left: an actor
// message goes into the target's mailbox (CAF schedules it), an exit report
// kills a proxy, a failed link kills all of that node's proxies. Nothing here
// waits on anything; a payload that does not decode is dropped, logged and
// counted, never thrown past the handler.
#include <spdlog/spdlog.h>

#include <caf/actor_cast.hpp>
#include <caf/actor_proxy.hpp>
#include <caf/exit_reason.hpp>
#include <caf/message_id.hpp>

#include "transport/remote_core.hpp"
#include "transport/remote_protocol.hpp"
#include "transport/wire_codec.hpp"

namespace troupe {


namespace {

// Runs `read` over a payload; false (and why) when it fails, leaves a failure
// behind (one CAF swallowed) or leaves bytes unread.
template <class F>
bool read_payload(const wire_envelope& e, const wire_limits& limits, caf::execution_unit* context, std::string* why,
                  F read) {
  wire_reader r(e.payload.data(), e.payload.size(), limits, context);
  caf::error err;
  try {
    err = read(r);
  } catch (const std::exception& ex) {
    *why = ex.what();
    return false;
  }
  if (err) {
    *why = context->system().render(err);
    return false;
  }
  if (!r.failure().empty()) {
    *why = r.failure();
    return false;
  }
  if (!r.at_end()) {
    *why = "trailing bytes after the payload";
    return false;
  }
  return true;
}

}  // namespace

void remote_core::on_message(const std::string& node, wire_envelope&& e) {
  if (shut_down_) return;
  if (e.type == remote_protocol::message_type)
    on_actor_message(node, e);
  else if (e.type == remote_protocol::hello_type)
    on_hello(node, e);
  else if (e.type == remote_protocol::announce_type)
    on_announce(node, e);
  else if (e.type == remote_protocol::down_type)
    on_down(node, e);
  else {
    ++c_.dropped_unknown_type;
    transport_log()->warn("node {}: dropped an envelope of unknown type '{}' from {}", options_.name, e.type, node);
  }
}

void remote_core::drop_malformed(const std::string& node, const wire_envelope& e, const std::string& why) {
  ++c_.dropped_malformed;
  transport_log()->warn("node {}: dropped a malformed {} envelope ({} payload bytes) from {}: {}", options_.name,
                        e.type, e.payload.size(), node, why);
}

// ---- links ----

void remote_core::on_link_up(const std::string& node) {
  {
    std::shared_lock<std::shared_mutex> lock(node_mu_);
    if (node_ == nullptr) {  // start() has not set it yet: it sends the hello
      std::lock_guard<std::mutex> guard(mu_);
      early_up_.push_back(node);
      return;
    }
  }
  send_hello(node);
}

void remote_core::send_hello(const std::string& node) {
  caf::node_id self = sys_.node();
  caf::strong_actor_ptr directory;
  {
    std::lock_guard<std::mutex> lock(mu_);
    directory = caf::actor_cast<caf::strong_actor_ptr>(directory_);
  }
  wire_writer w(&context_);
  if (auto err = w(self, directory)) {
    transport_log()->error("node {}: cannot write the hello for {}: {}", options_.name, node, sys_.render(err));
    return;
  }
  wire_envelope e;
  e.type = remote_protocol::hello_type;
  e.payload = w.bytes();
  if (send_envelope(node, e) != errc::ok)
    transport_log()->warn("node {}: hello to {} not sent: the link is down", options_.name, node);
}

void remote_core::on_hello(const std::string& node, const wire_envelope& e) {
  // The node id first: reading the directory handle needs the mapping.
  wire_reader r(e.payload.data(), e.payload.size(), options_.limits, &context_);
  caf::node_id nid;
  if (auto err = r(nid)) return drop_malformed(node, e, sys_.render(err));
  if (!nid || nid == sys_.node())
    return drop_malformed(node, e, nid ? "the hello carries this node's own id" : "the hello carries no node id");
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto named = names_.find(nid);
    auto known = peers_.find(node);
    if ((named != names_.end() && named->second != node) || (known != peers_.end() && known->second.id != nid)) {
      ++c_.dropped_unknown_node;
      transport_log()->error("node {}: hello from {} refused: node id {} clashes with a known peer", options_.name,
                             node, caf::to_string(nid));
      return;
    }
    names_[nid] = node;
    peers_[node].id = nid;
  }
  caf::strong_actor_ptr directory;
  caf::error err;
  try {
    err = r(directory);
  } catch (const std::exception& ex) {
    err = caf::make_error(caf::sec::runtime_error, ex.what());
  }
  if (err || !r.failure().empty() || !r.at_end() || directory == nullptr)
    return drop_malformed(node, e,
                          err                    ? sys_.render(err)
                          : !r.failure().empty() ? r.failure()
                          : !r.at_end()          ? std::string("trailing bytes after the payload")
                                                 : std::string("the hello carries no directory actor"));
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(node);
    if (it != peers_.end()) it->second.directory = std::move(directory);
  }
  transport_log()->info("node {}: peer {} ready (CAF node {})", options_.name, node, caf::to_string(nid));
  ready_cv_.notify_all();
}

void remote_core::on_link_down(const std::string& node, const std::string& reason) {
  caf::node_id nid;
  std::map<request_key, waiting_request> waiting;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(node);
    if (it != peers_.end()) {
      nid = it->second.id;
      peers_.erase(it);
    }
    if (nid) names_.erase(nid);
    for (auto& [aid, nodes] : watched_) nodes.erase(node);
    auto w = waiting_.find(node);
    if (w != waiting_.end()) {
      waiting.swap(w->second);
      waiting_.erase(w);
    }
  }
  if (nid) kill_proxies(nid, remote_link_error(node, reason));
  fail_waiting(std::move(waiting), caf::make_error(caf::sec::request_receiver_down,
                                                   "link to node '" + node + "' failed before it answered: " + reason));
}

// ---- envelopes ----

void remote_core::on_actor_message(const std::string& node, const wire_envelope& e) {
  caf::strong_actor_ptr sender;
  std::vector<caf::strong_actor_ptr> stages;
  caf::message content;
  std::string why;
  if (!read_payload(e, options_.limits, &context_, &why,
                    [&](wire_reader& r) { return read_message(r, sender, stages, content); }))
    return drop_malformed(node, e, why);
  const caf::message_id mid{e.request_id};
  if (mid.is_response()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = waiting_.find(node);
    if (it != waiting_.end()) it->second.erase(request_key{e.target, mid.request_id().integer_value()});
  }
  auto target = sys_.registry().get(static_cast<caf::actor_id>(e.target));
  if (target == nullptr) {
    ++c_.dropped_unknown_target;
    transport_log()->info("node {}: message from {} for actor {}, which is not running here", options_.name, node,
                           e.target);
    if (mid.is_request() && sender != nullptr)
      sender->enqueue(caf::make_mailbox_element(nullptr, mid.response_id(), {},
                                                caf::make_error(caf::sec::request_receiver_down,
                                                                "actor " + std::to_string(e.target) +
                                                                    " is not running on node '" + options_.name + "'")),
                      nullptr);
    return;
  }
  // A proxy on the sending node was linked to: link the target to (the
  // proxy here of) the actor that linked (BASP's link_atom interception).
  if (content.match_elements<caf::atom_value, caf::strong_actor_ptr>()) {
    const auto op = content.get_as<caf::atom_value>(0);
    if (op == caf::link_atom::value || op == caf::unlink_atom::value) {
      const auto& other = content.get_as<caf::strong_actor_ptr>(1);
      auto* proxy = other != nullptr ? dynamic_cast<caf::actor_proxy*>(other->get()) : nullptr;
      if (proxy == nullptr) return drop_malformed(node, e, "a link request without a remote actor to link to");
      if (op == caf::link_atom::value)
        proxy->add_link(target->get());
      else
        proxy->remove_link(target->get());
      return;
    }
  }
  target->enqueue(caf::make_mailbox_element(std::move(sender), mid, std::move(stages), std::move(content)), nullptr);
  ++c_.messages_received;
}

void remote_core::on_announce(const std::string& node, const wire_envelope& e) {
  if (!e.payload.empty()) return drop_malformed(node, e, "an announce carries no payload");
  const auto aid = static_cast<caf::actor_id>(e.target);
  auto actor = sys_.registry().get(aid);
  if (actor == nullptr || actor->node() != sys_.node()) {
    // Gone already (or never here): the proxy dies at once.
    const caf::error base = caf::make_error(caf::exit_reason::unknown);
    send_down({node}, aid,
              caf::error{base.code(), base.category(),
                         caf::make_message("actor " + std::to_string(aid) + " is not running on node '" +
                                           options_.name + "'")});
    return;
  }
  bool attach = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = watched_.find(aid);
    attach = it == watched_.end();
    watched_[aid].insert(node);
  }
  if (attach) {
    std::weak_ptr<remote_core> weak = weak_from_this();
    actor->get()->attach_functor([weak, aid](const caf::error& reason) {
      if (auto core = weak.lock()) core->on_local_exit(aid, reason);
    });
  }
}

void remote_core::on_down(const std::string& node, const wire_envelope& e) {
  caf::error reason;
  std::string why;
  if (!read_payload(e, options_.limits, &context_, &why, [&](wire_reader& r) { return r(reason); }))
    return drop_malformed(node, e, why);
  const caf::node_id nid = node_id_of(node);
  if (!nid) {
    ++c_.dropped_unknown_node;
    return;
  }
  ++c_.remote_exits;
  const auto aid = static_cast<caf::actor_id>(e.target);
  if (proxies_.get(nid, aid) == nullptr) return;
  // Counted first: erasing sends the down messages, and whoever receives one
  // may read the counters at once.
  ++c_.proxies_killed;
  proxies_.erase(nid, aid, std::move(reason));
}

}  // namespace troupe
