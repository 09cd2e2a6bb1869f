// Remote actors: the one object an actor system needs to talk to actors on
// other nodes. It owns the node's UCX endpoint (ucx_node), a directory of
// actors published by name, and CAF proxies for the actors of other nodes;
// a handle from remote_actor<T>(name) or one that arrived inside a message is
// used exactly like a local one: send, request/response, monitor, link.
//
//   caf::actor_system_config cfg;
//   troupe::node_system::configure(cfg);   // before the system exists
//   caf::actor_system sys{cfg};
//   troupe::node_system net{sys, options};
//   net.connect("10.0.0.2", 7000, "decode-0");
//   auto inst = net.remote_actor<instance_actor>("instance");  // caf::expected
//
// Why it is built this way: CAF 0.17's own distribution layer (caf::io, BASP)
// runs over its TCP multiplexer; troupe's links are UCX (shared memory on one
// host, authenticated, with heartbeats that find a silent peer), so the same
// BASP design is rebuilt on top of them: a proxy_registry backend, proxies
// that serialize into the wire envelope, announce/down messages so that
// monitor() sees a remote exit, and a failed link killing that node's proxies
// (see remote_core.hpp, remote_protocol.hpp). The state lives behind a
// pointer so this header stays light; remote_actor<T> is a template only to
// compute T's interface for the check against the published actor's.
//
// Failure, as seen through a monitor() on a remote handle: the actor quits →
// down with its reason; its node's process dies → down within ~10 ms of the
// kill (UCX endpoint error); the node falls silent → down after
// heartbeat_timeout; down reasons name the node and the cause.
#pragma once

#include <caf/actor_cast.hpp>
#include <caf/actor_control_block.hpp>
#include <caf/actor_system.hpp>
#include <caf/expected.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "transport/ucx_node.hpp"

namespace troupe {

class remote_core;

/// What the remote-actor layer has done so far (monotonic counters).
struct node_system_counters {
  uint64_t messages_sent = 0;              ///< actor messages handed to a link
  uint64_t messages_received = 0;          ///< actor messages put into a local mailbox
  uint64_t dropped_malformed = 0;          ///< envelopes of a known type whose payload did not decode
  uint64_t dropped_unknown_type = 0;       ///< envelopes of a type this layer does not know
  uint64_t dropped_unknown_target = 0;     ///< messages for an actor not running here (requests answered with an error)
  uint64_t dropped_unknown_node = 0;       ///< envelopes that need a hello first, or hellos that clash
  uint64_t send_failures = 0;              ///< messages that could not be serialized or sent (requests answered)
  uint64_t requests_failed_link_down = 0;  ///< requests still waiting when their node's link failed, answered
  uint64_t proxies_created = 0;            ///< proxies made for actors of other nodes
  uint64_t proxies_killed = 0;             ///< proxies killed by a remote exit, a failed link or shutdown
  uint64_t remote_exits = 0;               ///< exit reports received from owners of proxied actors
  ucx_node_counters transport;             ///< the UCX node's own counters
};

/// A node of the cluster, for one actor system: see the file comment.
/// All members are thread-safe; remote_actor and connect block the calling
/// thread (call them from main or a setup thread, not from an actor handler).
class node_system {
 public:
  /// Prepares a config for remote actors: loads the module that gives the
  /// actor system a unique node id (CAF leaves it invalid without a
  /// networking module). Call before constructing the actor system; register
  /// every message type that crosses nodes on the same config.
  static void configure(caf::actor_system_config& cfg);

  /// Starts the node: its link listener, its directory. Throws troupe::error
  /// (errc_invalid_argument when `sys` was not configured with configure()
  /// or the options are bad, errc_io when UCX fails).
  node_system(caf::actor_system& sys, ucx_node_options options);
  /// shutdown().
  ~node_system();
  node_system(const node_system&) = delete;
  node_system& operator=(const node_system&) = delete;

  /// This node's name.
  const std::string& name() const;
  /// The port its listener is bound to.
  uint16_t port() const;

  /// Links to the node listening at host:port (a peer of another name is
  /// refused). With a non-empty expected_name and a positive timeout, waits
  /// until that node is ready (authenticated, its hello read) and fails after
  /// `timeout`; otherwise returns once the connection is started (watch
  /// peers() or wait_for_peer()). Connect in one direction per pair of nodes.
  caf::error connect(const std::string& host, uint16_t port, const std::string& expected_name,
                     std::chrono::milliseconds timeout = std::chrono::seconds(5));

  /// Waits until `node` is ready (see connect); false after `timeout`.
  bool wait_for_peer(const std::string& node, std::chrono::milliseconds timeout);

  /// Makes `actor` reachable from other nodes as `name` (replaces an earlier
  /// actor of that name; the entry goes away when the actor exits).
  void publish(const std::string& name, const caf::strong_actor_ptr& actor);
  /// publish() for any actor handle.
  template <class Handle>
  void publish(const std::string& name, const Handle& actor) {
    publish(name, caf::actor_cast<caf::strong_actor_ptr>(actor));
  }
  /// Removes a published name; false when it was not published.
  bool unpublish(const std::string& name);

  /// The actor published as `name` on node `node`, as a handle of type T:
  /// waits up to `timeout` for the node to be ready and for its answer; an
  /// error when the name is not published there, the node is not connected,
  /// the time runs out, or the actor's interface does not match T (the error
  /// names both interfaces). A dynamically typed T (caf::actor) takes any actor.
  template <class T>
  caf::expected<T> remote_actor(const std::string& node, const std::string& name,
                                std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    auto ptr = lookup(node, name, sys_.message_types<T>(), caf::is_typed_actor<T>::value, timeout);
    if (!ptr) return std::move(ptr.error());
    return caf::actor_cast<T>(std::move(*ptr));
  }

  /// The actor published as `name` on whichever connected node publishes it
  /// (an error when none does, or when several do: name the node then).
  template <class T>
  caf::expected<T> remote_actor(const std::string& name, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    return remote_actor<T>(std::string(), name, timeout);
  }

  /// Names of the ready peers.
  std::vector<std::string> peers() const;

  /// A snapshot of the counters.
  node_system_counters counters() const;

  /// Closes every link (peers see link_down at once), kills every proxy
  /// (monitors get down messages), answers every waiting request with an
  /// error; idempotent. The actor system must outlive this object.
  void shutdown();

 private:
  caf::expected<caf::strong_actor_ptr> lookup(const std::string& node, const std::string& name,
                                              const std::set<std::string>& expected, bool typed,
                                              std::chrono::milliseconds timeout);

  caf::actor_system& sys_;
  std::shared_ptr<remote_core> core_;
};

}  // namespace troupe
