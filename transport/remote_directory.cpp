// Names: publish() on the owning node, remote_actor<T>(name) on any other.
// A lookup is an ordinary request to the peer's directory actor (whose handle
// came in the peer's hello), so it travels the same proxies and links as any
// other message and fails the same way; the reply carries the actor's handle
// (it arrives as a proxy) and its message types for the interface check.
// The directory actor has a second, local job: it sends link requests on
// behalf of proxies, which CAF asks for while holding the actors' locks.
#include <spdlog/spdlog.h>

#include <caf/actor_cast.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/result.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "transport/caf_errors.hpp"
#include "transport/remote_core.hpp"
#include "transport/remote_protocol.hpp"
#include "transport/remote_proxy.hpp"

namespace troupe {


namespace {

std::string join(const std::set<std::string>& xs) {
  if (xs.empty()) return "{} (dynamically typed)";
  std::string out = "{";
  for (const auto& x : xs) {
    if (out.size() > 1) out += ", ";
    out += x;
  }
  return out + "}";
}

}  // namespace

void remote_core::spawn_directory() {
  std::weak_ptr<remote_core> weak = weak_from_this();
  auto directory = sys_.spawn<caf::hidden>([weak](caf::event_based_actor* self) -> caf::behavior {
    // Reachable from every peer: nothing a peer sends (a link it makes to a
    // proxy that then dies) may take it down; shutdown() kills it.
    self->set_exit_handler([](caf::exit_msg&) {});
    return {
        [weak](remote_protocol::lookup_atom,
               const std::string& name) -> caf::result<caf::strong_actor_ptr, std::set<std::string>> {
          auto core = weak.lock();
          if (core == nullptr) return caf::make_error(caf::sec::request_receiver_down, "the node system shut down");
          auto actor = core->published(name);
          if (actor == nullptr)
            return make_caf_error(errc::errc_invalid_argument,
                                "no actor named '" + name + "' is published on node '" + core->name() + "'");
          std::set<std::string> types = actor->get()->message_types();
          return {std::move(actor), std::move(types)};
        },
        [weak](caf::link_atom, caf::strong_actor_ptr& proxy, caf::strong_actor_ptr& other) {
          if (auto core = weak.lock()) core->send_link(std::move(proxy), std::move(other), true);
        },
        [weak](caf::unlink_atom, caf::strong_actor_ptr& proxy, caf::strong_actor_ptr& other) {
          if (auto core = weak.lock()) core->send_link(std::move(proxy), std::move(other), false);
        },
    };
  });
  std::lock_guard<std::mutex> lock(mu_);
  directory_ = std::move(directory);
}

void remote_core::relay_link(caf::actor_control_block* proxy, caf::actor_control_block* other, bool link) {
  caf::actor directory;
  {
    std::lock_guard<std::mutex> lock(mu_);
    directory = directory_;
  }
  if (directory == nullptr) return;
  if (link)
    caf::anon_send(directory, caf::link_atom::value, caf::strong_actor_ptr{proxy}, caf::strong_actor_ptr{other});
  else
    caf::anon_send(directory, caf::unlink_atom::value, caf::strong_actor_ptr{proxy}, caf::strong_actor_ptr{other});
}

void remote_core::send_link(caf::strong_actor_ptr proxy, caf::strong_actor_ptr other, bool link) {
  // Only this node's proxies, linked to this node's actors.
  auto* p = proxy != nullptr ? dynamic_cast<remote_proxy*>(proxy->get()) : nullptr;
  if (p == nullptr || other == nullptr || other->node() != sys_.node()) return;
  const std::string node = p->owner_node();
  const caf::actor_id aid = proxy->id();
  auto what = link ? caf::make_mailbox_element(std::move(proxy), caf::make_message_id(), {}, caf::link_atom::value,
                                               std::move(other))
                   : caf::make_mailbox_element(std::move(proxy), caf::make_message_id(), {}, caf::unlink_atom::value,
                                               std::move(other));
  forward(node, aid, std::move(what));
}

void remote_core::publish(const std::string& name, caf::strong_actor_ptr actor) {
  if (actor == nullptr || actor->node() != sys_.node()) {
    transport_log()->error("node {}: cannot publish '{}': {}", options_.name, name,
                           actor == nullptr ? "invalid handle" : "not an actor of this node");
    return;
  }
  const caf::actor_id aid = actor->id();
  sys_.registry().put(aid, actor);  // envelopes find their target by id
  {
    std::lock_guard<std::mutex> lock(mu_);
    published_[name] = actor;
  }
  std::weak_ptr<remote_core> weak = weak_from_this();
  actor->get()->attach_functor([weak, name, aid](const caf::error&) {
    auto core = weak.lock();
    if (core == nullptr) return;
    std::lock_guard<std::mutex> lock(core->mu_);
    auto it = core->published_.find(name);
    if (it != core->published_.end() && it->second != nullptr && it->second->id() == aid) core->published_.erase(it);
  });
  transport_log()->info("node {}: published actor {} as '{}'", options_.name, aid, name);
}

bool remote_core::unpublish(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  return published_.erase(name) > 0;
}

caf::strong_actor_ptr remote_core::published(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = published_.find(name);
  return it == published_.end() ? nullptr : it->second;
}

caf::error remote_core::connect(const std::string& host, uint16_t port, const std::string& expected_name,
                                std::chrono::milliseconds timeout) {
  errc rc = errc::errc_io;
  {
    std::shared_lock<std::shared_mutex> lock(node_mu_);
    if (node_ != nullptr) rc = node_->connect(host, port, expected_name);
  }
  const std::string where = host + ":" + std::to_string(port);
  if (rc != errc::ok) return make_caf_error(rc, "node '" + options_.name + "' cannot connect to " + where);
  if (expected_name.empty() || timeout.count() <= 0 || wait_ready(expected_name, timeout)) return caf::none;
  return make_caf_error(errc::errc_io, "node '" + expected_name + "' at " + where + " was not ready within " +
                                         std::to_string(timeout.count()) +
                                         " ms (refused, unreachable or slow: see the transport log)");
}

bool remote_core::wait_ready(const std::string& node, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return ready_cv_.wait_for(lock, timeout, [&] {
    auto it = peers_.find(node);
    return shut_down_ || (it != peers_.end() && it->second.directory != nullptr);
  }) && !shut_down_;
}

caf::expected<caf::strong_actor_ptr> remote_core::lookup(const std::string& node, const std::string& name,
                                                         const std::set<std::string>& expected, bool typed,
                                                         std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  // The directories to ask: the named node's, or every ready peer's.
  std::vector<std::pair<std::string, caf::actor>> directories;
  if (!node.empty()) {
    if (!wait_ready(node, timeout))
      return make_caf_error(errc::errc_invalid_argument, "cannot look up '" + name + "': node '" + node +
                                                           "' is not connected to node '" + options_.name + "'");
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(node);
    if (it != peers_.end()) directories.emplace_back(node, caf::actor_cast<caf::actor>(it->second.directory));
  } else {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [n, p] : peers_)
      if (p.directory != nullptr) directories.emplace_back(n, caf::actor_cast<caf::actor>(p.directory));
  }
  if (directories.empty())
    return make_caf_error(errc::errc_invalid_argument,
                        "cannot look up '" + name + "': node '" + options_.name + "' has no connected peer");
  // Ask them all at once, then collect the answers.
  struct answer {
    std::string node;
    caf::strong_actor_ptr actor;
    std::set<std::string> types;
  };
  std::vector<answer> found;
  std::string errors;
  {
    caf::scoped_actor self{sys_};
    const auto left =
        std::max(std::chrono::milliseconds(1),
                 std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
    using handle = decltype(self->request(caf::actor{}, left, remote_protocol::lookup_atom::value, name));
    std::vector<std::pair<std::string, handle>> asked;
    for (const auto& [n, d] : directories)
      asked.emplace_back(n, self->request(d, left, remote_protocol::lookup_atom::value, name));
    for (auto& [n, h] : asked)
      h.receive(
          [&, n = n](caf::strong_actor_ptr& actor, std::set<std::string>& types) {
            found.push_back(answer{n, std::move(actor), std::move(types)});
          },
          [&, n = n](caf::error& err) {
            if (!errors.empty()) errors += "; ";
            errors += n + ": " + sys_.render(err);
          });
  }
  if (found.empty())
    return make_caf_error(errc::errc_invalid_argument, "remote actor '" + name + "' not found (" + errors + ")");
  if (found.size() > 1) {
    std::string nodes;
    for (const auto& a : found) nodes += (nodes.empty() ? "" : ", ") + a.node;
    return make_caf_error(errc::errc_invalid_argument,
                        "remote actor '" + name + "' is published on several nodes (" + nodes + "): name the node");
  }
  answer& a = found.front();
  if (a.actor == nullptr)
    return make_caf_error(errc::errc_io, "remote actor '" + name + "' on node '" + a.node +
                                           "': its handle could not be read (link lost?)");
  if (typed && !sys_.assignable(a.types, expected))
    return make_caf_error(errc::errc_invalid_argument, "remote actor '" + name + "' on node '" + a.node +
                                                         "' has the interface " + join(a.types) +
                                                         ", which does not provide the requested " + join(expected));
  return std::move(a.actor);
}

}  // namespace troupe
