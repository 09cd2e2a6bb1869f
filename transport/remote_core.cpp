// remote_core: start-up and shutdown, proxies (make_proxy, the send path),
// local exits reported to peers, and the requests waiting on each peer. The
// receive path is in remote_bridge.cpp, the directory in remote_directory.cpp.
#include "transport/remote_core.hpp"

#include <spdlog/spdlog.h>

#include <caf/actor_cast.hpp>
#include <caf/exit_reason.hpp>
#include <caf/make_actor.hpp>
#include <caf/message_id.hpp>
#include <caf/scheduler/abstract_coordinator.hpp>
#include <caf/send.hpp>

#include "transport/remote_protocol.hpp"
#include "transport/remote_proxy.hpp"
#include "transport/wire_codec.hpp"

namespace troupe {


namespace {

/// At most this many requests per peer are remembered for failing them on
/// link loss; beyond it (requests nobody answers) they are left to time out.
constexpr size_t max_waiting_per_peer = 1u << 16;

}  // namespace

// ---- helpers ----

wire_context::wire_context(caf::actor_system& sys, caf::proxy_registry& proxies) : caf::execution_unit(&sys) {
  proxy_registry_ptr(&proxies);
}

void wire_context::exec_later(caf::resumable* job) { system().scheduler().enqueue(job); }

void remote_bounce(caf::mailbox_element& what, const caf::error& err) {
  if (!what.mid.is_request() || what.sender == nullptr) return;
  what.sender->enqueue(caf::make_mailbox_element(nullptr, what.mid.response_id(), {}, err), nullptr);
}

caf::error remote_down_error(caf::actor_system& sys, caf::actor_id aid, const std::string& node,
                             const caf::error& reason) {
  const std::string why = reason ? sys.render(reason) : std::string("it exited normally");
  return caf::make_error(caf::sec::request_receiver_down,
                         "actor " + std::to_string(aid) + " on node '" + node + "' is down: " + why);
}

caf::error write_message(wire_writer& w, caf::strong_actor_ptr& sender, std::vector<caf::strong_actor_ptr>& stages,
                         const caf::message& content) {
  if (auto err = w(sender, stages)) return err;
  return content.save(w);
}

caf::error read_message(wire_reader& r, caf::strong_actor_ptr& sender, std::vector<caf::strong_actor_ptr>& stages,
                        caf::message& content) {
  if (auto err = r(sender, stages)) return err;
  return content.load(r);
}

caf::error remote_link_error(const std::string& node, const std::string& why) {
  const caf::error base = caf::make_error(caf::exit_reason::remote_link_unreachable);
  return caf::error{base.code(), base.category(), caf::make_message("link to node '" + node + "' failed: " + why)};
}

// ---- life cycle ----

remote_core::remote_core(caf::actor_system& sys, ucx_node_options options)
    : sys_(sys), options_(std::move(options)), proxies_(sys, *this), context_(sys, proxies_) {}

remote_core::~remote_core() { shutdown(); }

void remote_core::start() {
  spawn_directory();
  ucx_node::handlers h;
  h.on_message = [this](const std::string& node, wire_envelope&& e) { on_message(node, std::move(e)); };
  h.on_link_up = [this](const std::string& node) { on_link_up(node); };
  h.on_link_down = [this](const std::string& node, const std::string& reason) { on_link_down(node, reason); };
  std::unique_ptr<ucx_node> node;
  try {
    node = std::make_unique<ucx_node>(options_, std::move(h));
  } catch (...) {
    caf::actor directory;
    {
      std::lock_guard<std::mutex> lock(mu_);
      directory.swap(directory_);
    }
    caf::anon_send_exit(directory, caf::exit_reason::kill);
    throw;
  }
  port_ = node->port();
  {
    std::unique_lock<std::shared_mutex> lock(node_mu_);
    node_ = std::move(node);
  }
  // Peers that came up before node_ was set (a fixed port, a fast peer) get
  // their hello now.
  std::vector<std::string> early;
  {
    std::lock_guard<std::mutex> lock(mu_);
    early.swap(early_up_);
  }
  for (const auto& n : early) send_hello(n);
}

void remote_core::shutdown() {
  if (shut_down_.exchange(true)) return;
  std::unique_ptr<ucx_node> node;
  {
    std::unique_lock<std::shared_mutex> lock(node_mu_);
    node = std::move(node_);
  }
  node.reset();  // peers hear goodbye; no callback runs after this
  caf::actor directory;
  {
    std::lock_guard<std::mutex> lock(mu_);
    directory.swap(directory_);
  }
  if (directory != nullptr) caf::anon_send_exit(directory, caf::exit_reason::kill);
  std::vector<std::pair<caf::node_id, std::string>> nodes;
  std::map<std::string, std::map<request_key, waiting_request>> waiting;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [nid, name] : names_) nodes.emplace_back(nid, name);
    names_.clear();
    peers_.clear();
    published_.clear();
    watched_.clear();
    waiting.swap(waiting_);
  }
  ready_cv_.notify_all();
  for (const auto& [nid, name] : nodes)
    kill_proxies(nid, remote_link_error(name, "node '" + options_.name + "' shut down"));
  proxies_.clear();
  for (auto& [name, w] : waiting)
    fail_waiting(std::move(w),
                 caf::make_error(caf::sec::request_receiver_down,
                                 "node '" + options_.name + "' shut down before node '" + name + "' answered"));
}

// ---- proxies ----

caf::strong_actor_ptr remote_core::make_proxy(caf::node_id nid, caf::actor_id aid) {
  if (!nid || aid == caf::invalid_actor_id || shut_down_) return nullptr;
  std::string node;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = names_.find(nid);
    if (it == names_.end()) {
      transport_log()->debug("node {}: no proxy for actor {} of {}: no link to that node", options_.name, aid,
                             caf::to_string(nid));
      return nullptr;
    }
    node = it->second;
  }
  caf::actor_config cfg;
  auto proxy = caf::make_actor<remote_proxy, caf::strong_actor_ptr>(aid, nid, &sys_, cfg, weak_from_this(), node);
  ++c_.proxies_created;
  // The owner reports the actor's exit to nodes that announced a proxy.
  wire_envelope e;
  e.type = remote_protocol::announce_type;
  e.target = aid;
  if (send_envelope(node, e) != errc::ok)
    transport_log()->debug("node {}: proxy for actor {} of {} not announced: the link is down", options_.name, aid,
                           node);
  return proxy;
}

void remote_core::forward(const std::string& node, caf::actor_id target, caf::mailbox_element_ptr what) {
  const caf::message_id mid = what->mid;
  wire_envelope e;
  e.type = remote_protocol::message_type;
  e.source = what->sender != nullptr ? what->sender->id() : 0;
  e.target = target;
  e.request_id = mid.integer_value();
  {
    caf::message content = what->move_content_to_message();
    wire_writer w(&context_);
    caf::error err;
    try {
      err = write_message(w, what->sender, what->stages, content);
    } catch (const std::exception& ex) {
      err = caf::make_error(caf::sec::runtime_error, ex.what());
    }
    std::string why = err ? sys_.render(err) : w.failure();
    // CAF 0.17.6 writes nothing, and reports nothing, for a message nested in
    // an error or a message whose types are not all registered: read those
    // back before they leave (they are rare: error replies, exits).
    if (why.empty()) {
      bool nested = false;
      for (size_t i = 0; i < content.size() && !nested; ++i)
        nested = content.match_element<caf::error>(i) || content.match_element<caf::message>(i) ||
                 content.match_element<caf::down_msg>(i) || content.match_element<caf::exit_msg>(i);
      if (nested) why = unreadable_message(w.bytes());
    }
    if (!why.empty()) {
      ++c_.send_failures;
      why = "cannot serialize a message for actor " + std::to_string(target) + " on node '" + node + "' (" + why +
            "; is every type in it registered?)";
      transport_log()->warn("node {}: {}", options_.name, why);
      remote_bounce(*what, caf::make_error(caf::sec::unknown_type, why));
      return;
    }
    e.payload = w.bytes();
  }
  // Remember requests from local actors, so a failing link can answer them.
  const bool track = mid.is_request() && what->sender != nullptr && what->sender->node() == sys_.node();
  const request_key key{track ? what->sender->id() : 0, mid.request_id().integer_value()};
  if (track) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& m = waiting_[node];
    if (m.size() < max_waiting_per_peer) {
      m[key] = waiting_request{caf::weak_actor_ptr{what->sender.get()}, mid.integer_value()};
    } else if (!waiting_full_logged_) {
      waiting_full_logged_ = true;
      transport_log()->warn("node {}: over {} unanswered requests to {}; further ones are not failed on link loss",
                            options_.name, max_waiting_per_peer, node);
    }
  }
  if (send_envelope(node, e) != errc::ok) {
    ++c_.send_failures;
    if (track) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = waiting_.find(node);
      if (it != waiting_.end()) it->second.erase(key);
    }
    remote_bounce(*what,
                  caf::make_error(caf::sec::request_receiver_down,
                                  "actor " + std::to_string(target) + " on node '" + node + "': no link to that node"));
    return;
  }
  ++c_.messages_sent;
}

errc remote_core::send_envelope(const std::string& node, const wire_envelope& e) {
  std::shared_lock<std::shared_mutex> lock(node_mu_);
  if (node_ == nullptr) return errc::errc_invalid_argument;
  return node_->send(node, e);
}

caf::node_id remote_core::node_id_of(const std::string& node) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(node);
  return it == peers_.end() ? caf::node_id{} : it->second.id;
}

void remote_core::kill_proxies(const caf::node_id& nid, const caf::error& reason) {
  for (const auto& p : proxies_.get_all(nid)) {
    if (p == nullptr) continue;
    ++c_.proxies_killed;  // before the down messages go out (see on_down)
    proxies_.erase(nid, p->id(), reason);
  }
  proxies_.erase(nid);  // entries of handles that never became proxies
}

void remote_core::fail_waiting(std::map<request_key, waiting_request> waiting, const caf::error& reason) {
  for (auto& [key, w] : waiting) {
    auto sender = w.sender.lock();
    if (sender == nullptr) continue;
    sender->enqueue(caf::make_mailbox_element(nullptr, caf::message_id{w.mid}.response_id(), {}, reason), nullptr);
    ++c_.requests_failed_link_down;
  }
}

// ---- local actors that peers hold proxies of ----

void remote_core::on_local_exit(caf::actor_id aid, const caf::error& reason) {
  std::set<std::string> nodes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = watched_.find(aid);
    if (it == watched_.end()) return;
    nodes = std::move(it->second);
    watched_.erase(it);
  }
  send_down(nodes, aid, reason);
}

void remote_core::send_down(const std::set<std::string>& nodes, caf::actor_id aid, const caf::error& reason) {
  if (nodes.empty()) return;
  wire_envelope e;
  e.type = remote_protocol::down_type;
  e.target = aid;
  // The reason as it is; if its context does not survive the trip (types not
  // registered: CAF does not say so), its code and category alone.
  auto readable = [&](const std::vector<char>& bytes) {
    wire_reader r(bytes.data(), bytes.size(), options_.limits, &context_);
    caf::error back;
    return !r(back) && r.failure().empty() && r.at_end();
  };
  caf::error r = reason;
  wire_writer w(&context_);
  if (!w(r) && w.failure().empty() && readable(w.bytes())) {
    e.payload = w.bytes();
  } else {
    caf::error bare{reason.code(), reason.category()};
    wire_writer w2(&context_);
    if (w2(bare)) return;
    e.payload = w2.bytes();
  }
  for (const auto& n : nodes) send_envelope(n, e);
}

std::string remote_core::unreadable_message(const std::vector<char>& payload) {
  wire_reader r(payload.data(), payload.size(), options_.limits, &context_);
  caf::strong_actor_ptr sender;
  std::vector<caf::strong_actor_ptr> stages;
  caf::message content;
  if (auto err = read_message(r, sender, stages, content)) return sys_.render(err);
  if (!r.failure().empty()) return r.failure();
  return r.at_end() ? std::string() : std::string("it does not read back whole");
}

// ---- queries ----

std::vector<std::string> remote_core::peers() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [name, p] : peers_)
    if (p.directory != nullptr) out.push_back(name);
  return out;
}

node_system_counters remote_core::counters() const {
  node_system_counters out;
  out.messages_sent = c_.messages_sent;
  out.messages_received = c_.messages_received;
  out.dropped_malformed = c_.dropped_malformed;
  out.dropped_unknown_type = c_.dropped_unknown_type;
  out.dropped_unknown_target = c_.dropped_unknown_target;
  out.dropped_unknown_node = c_.dropped_unknown_node;
  out.send_failures = c_.send_failures;
  out.requests_failed_link_down = c_.requests_failed_link_down;
  out.proxies_created = c_.proxies_created;
  out.proxies_killed = c_.proxies_killed;
  out.remote_exits = c_.remote_exits;
  std::shared_lock<std::shared_mutex> lock(node_mu_);
  if (node_ != nullptr) out.transport = node_->counters();
  return out;
}

}  // namespace troupe
