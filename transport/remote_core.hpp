// The state behind node_system: one per actor system that talks to other
// nodes. It is CAF's proxy_registry backend (proxies for remote actors are
// made here), the serialization context of every payload, the receiver of
// the UCX link's envelopes, the directory of published names and the record
// of which peers hold proxies of which local actors.
//
// Why it is built this way (CAF's BASP, without caf::io and with ucx_node
// underneath):
// - Actor handles inside messages are written as (actor id, node id) by CAF
//   itself (save_actor also puts a local actor into system().registry(), so
//   envelopes find it by id) and read back through the proxy registry of the
//   unit the reader carries: a handle of another node becomes a proxy.
// - No actor of its own sits on the message path: proxies serialize on the
//   sender's thread and hand bytes to ucx_node (thread-safe, ordered per
//   link); the UCX progress thread decodes and enqueues into the target's
//   mailbox. Nothing blocks there.
// - Failure: a local actor that a peer holds a proxy of gets one attached
//   functor that reports its exit to every such peer (BASP's announce/down);
//   a failed link kills every proxy of that node with a reason naming it and
//   answers the requests still waiting on it (BASP leaves them to time out).
// - Lock order: mu_ is never held while calling into CAF (registry, proxies,
//   mailboxes) or ucx_node; the proxy registry calls make_proxy under its own
//   lock, which takes mu_ briefly.
#pragma once

#include <atomic>
#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/execution_unit.hpp>
#include <caf/expected.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/proxy_registry.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "transport/log.hpp"
#include "transport/node_system.hpp"
#include "transport/ucx_node.hpp"

namespace troupe {

/// The execution unit wire_writer / wire_reader carry: it names the actor
/// system (registered types, the actor registry) and the proxy registry that
/// turns remote handles into proxies. Jobs CAF hands it go to the scheduler.
class wire_context final : public caf::execution_unit {
 public:
  /// A unit of `sys` whose proxies come from `proxies`.
  wire_context(caf::actor_system& sys, caf::proxy_registry& proxies);
  /// Schedules `job` on the actor system's scheduler.
  void exec_later(caf::resumable* job) override;
};

/// Answers the request in `what` with `err` (async messages: nothing to do).
void remote_bounce(caf::mailbox_element& what, const caf::error& err);

/// The error a request to a dead remote actor gets: request_receiver_down,
/// naming the actor, its node and why it went down.
caf::error remote_down_error(caf::actor_system& sys, caf::actor_id aid, const std::string& node,
                             const caf::error& reason);

/// Writes an actor message payload (remote_protocol.hpp): the sender, the
/// forwarding stages, then the content through message::save (which, unlike
/// the serializer's generic path, returns its errors).
caf::error write_message(wire_writer& w, caf::strong_actor_ptr& sender, std::vector<caf::strong_actor_ptr>& stages,
                         const caf::message& content);

/// Reads what write_message wrote.
caf::error read_message(wire_reader& r, caf::strong_actor_ptr& sender, std::vector<caf::strong_actor_ptr>& stages,
                        caf::message& content);

/// exit_reason::remote_link_unreachable whose context names the node and why
/// its link failed: the reason proxies of that node die with.
caf::error remote_link_error(const std::string& node, const std::string& why);

/// See the file comment.
class remote_core final : public caf::proxy_registry::backend, public std::enable_shared_from_this<remote_core> {
 public:
  /// State only; start() spawns the directory actor and brings up the node.
  remote_core(caf::actor_system& sys, ucx_node_options options);
  ~remote_core() override;
  remote_core(const remote_core&) = delete;
  remote_core& operator=(const remote_core&) = delete;

  /// Spawns the directory actor and starts the UCX node (throws troupe::error).
  void start();
  /// Closes every link, kills every proxy, answers every waiting request; idempotent.
  void shutdown();

  // ---- node_system's calls (any thread; remote_directory.cpp), as documented there ----
  /// This node's name.
  const std::string& name() const { return options_.name; }
  /// The listener's port.
  uint16_t port() const { return port_; }
  /// node_system::connect.
  caf::error connect(const std::string& host, uint16_t port, const std::string& expected_name,
                     std::chrono::milliseconds timeout);
  /// node_system::wait_for_peer.
  bool wait_ready(const std::string& node, std::chrono::milliseconds timeout);
  /// node_system::publish.
  void publish(const std::string& name, caf::strong_actor_ptr actor);
  /// node_system::unpublish.
  bool unpublish(const std::string& name);
  /// The actor published here as `name` (null when none is).
  caf::strong_actor_ptr published(const std::string& name) const;
  /// node_system::remote_actor without the cast: `expected` is T's interface,
  /// checked when `typed`; an empty `node` asks every ready peer.
  caf::expected<caf::strong_actor_ptr> lookup(const std::string& node, const std::string& name,
                                              const std::set<std::string>& expected, bool typed,
                                              std::chrono::milliseconds timeout);
  /// node_system::peers.
  std::vector<std::string> peers() const;
  /// node_system::counters.
  node_system_counters counters() const;

  // ---- proxies (any thread; remote_core.cpp) ----
  /// proxy_registry::backend: a proxy for `aid` on `nid`, or null when `nid`
  /// is no connected node (the handle then reads as invalid).
  caf::strong_actor_ptr make_proxy(caf::node_id nid, caf::actor_id aid) override;
  /// proxy_registry::backend: unused (every link is direct; no routing).
  void set_last_hop(caf::node_id*) override {}
  /// Sends what a proxy for actor `target` of `node` was given.
  void forward(const std::string& node, caf::actor_id target, caf::mailbox_element_ptr what);
  /// Asks the owner of `proxy` to link (or unlink) its actor to `other`, by
  /// way of the directory actor: callable inside CAF's link critical section.
  void relay_link(caf::actor_control_block* proxy, caf::actor_control_block* other, bool link);

  // ---- the link's callbacks (UCX progress thread; remote_bridge.cpp) ----
  /// An envelope from `node`: decode, dispatch, never block or throw.
  void on_message(const std::string& node, wire_envelope&& e);
  /// The link to `node` is up: send it this node's hello.
  void on_link_up(const std::string& node);
  /// The link to `node` failed: kill its proxies, answer requests waiting on it.
  void on_link_down(const std::string& node, const std::string& reason);

 private:
  struct peer {
    caf::node_id id;                  ///< from its hello
    caf::strong_actor_ptr directory;  ///< proxy of its directory actor (null until the hello is read)
  };
  struct waiting_request {
    caf::weak_actor_ptr sender;
    uint64_t mid = 0;
  };
  using request_key = std::pair<caf::actor_id, uint64_t>;  ///< (sender, request id without flags)

  struct atomic_counters {
    std::atomic<uint64_t> messages_sent{0}, messages_received{0}, dropped_malformed{0}, dropped_unknown_type{0},
        dropped_unknown_target{0}, dropped_unknown_node{0}, send_failures{0}, requests_failed_link_down{0},
        proxies_created{0}, proxies_killed{0}, remote_exits{0};
  };

  // remote_bridge.cpp
  void on_hello(const std::string& node, const wire_envelope& e);
  void on_actor_message(const std::string& node, const wire_envelope& e);
  void on_announce(const std::string& node, const wire_envelope& e);
  void on_down(const std::string& node, const wire_envelope& e);
  void drop_malformed(const std::string& node, const wire_envelope& e, const std::string& why);
  void send_hello(const std::string& node);
  // remote_core.cpp
  errc send_envelope(const std::string& node, const wire_envelope& e);
  void on_local_exit(caf::actor_id aid, const caf::error& reason);
  void send_down(const std::set<std::string>& nodes, caf::actor_id aid, const caf::error& reason);
  /// Why `payload` (an actor message) would not read back here; empty when it does.
  std::string unreadable_message(const std::vector<char>& payload);
  caf::node_id node_id_of(const std::string& node) const;
  void kill_proxies(const caf::node_id& nid, const caf::error& reason);
  void fail_waiting(std::map<request_key, waiting_request> waiting, const caf::error& reason);
  // remote_directory.cpp
  void spawn_directory();
  void send_link(caf::strong_actor_ptr proxy, caf::strong_actor_ptr other, bool link);

  caf::actor_system& sys_;
  ucx_node_options options_;
  caf::proxy_registry proxies_;
  wire_context context_;
  uint16_t port_ = 0;
  std::atomic<bool> shut_down_{false};

  // The node: shared by senders, taken away (exclusively) at shutdown.
  mutable std::shared_mutex node_mu_;
  std::unique_ptr<ucx_node> node_;

  caf::actor directory_;  ///< (mu_) answers lookup_atom for published names; relays link requests

  mutable std::mutex mu_;
  std::condition_variable ready_cv_;                     ///< a peer's hello was read (connect and lookup wait for it)
  std::map<std::string, peer> peers_;                    ///< by troupe node name
  std::unordered_map<caf::node_id, std::string> names_;  ///< CAF node id → troupe node name
  std::map<std::string, caf::strong_actor_ptr> published_;
  std::unordered_map<caf::actor_id, std::set<std::string>> watched_;  ///< local actor → peers holding a proxy of it
  std::map<std::string, std::map<request_key, waiting_request>> waiting_;  ///< per peer: requests sent, no response yet
  std::vector<std::string> early_up_;  ///< peers up before start() had set node_: their hello is still due
  bool waiting_full_logged_ = false;

  atomic_counters c_;
};

}  // namespace troupe
