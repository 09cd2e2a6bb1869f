// One node process of a cluster: what `troupe node --name N` runs. It owns
// the node's actor system and its transport (transport/ucx_node.hpp) and
// starts what the cluster config places on this node.
//
// Why it is built this way:
// - Links are made in one direction only (ucx_node refuses a second link
//   between two nodes): each node connects to every node declared before it
//   in the config and accepts the others. A small actor keeps those links:
//   it retries with a doubling backoff (100 ms up to links.connect-retry-max-ms)
//   until a peer is up and starts again when its link goes down, so nodes may
//   start in any order and a restarted peer is found again.
// - What runs here without the remote-actor layer runs as `troupe serve
//   --config` runs it: the gateway with its router and admin when the gateway
//   is on this node, and every mixed one-stage instance whose stage is on this
//   node (joined to the local router when there is one). Parts that span nodes
//   are named in the log and wait for that layer, which extends this class.
// - "Ready" means: every local part is ready and a link to every other node
//   is up; the caller polls ready() and prints one line.
#pragma once

#include <memory>
#include <string>

#include "config/cluster_config.hpp"

namespace caf {
class actor_system;
}

namespace troupe {

class ucx_node;

/// One node of a cluster, started and stopped as a unit.
class node_runtime {
 public:
  /// Picks `node` out of `cluster`; throws troupe::error(errc_invalid_config)
  /// naming the config file, the unknown name and the declared nodes. Starts nothing.
  node_runtime(cluster_config cluster, const std::string& node);
  /// Stops whatever is running (see stop()).
  ~node_runtime();
  node_runtime(const node_runtime&) = delete;
  node_runtime& operator=(const node_runtime&) = delete;

  /// Starts, in this order: the actor system; the transport (listener on the
  /// node's bind address and port, links to the nodes declared before it) when
  /// the cluster has more than one node; the gateway with router and admin when
  /// it runs here; every instance that runs entirely here (weights load now).
  /// Throws troupe::error (errc_io for a port in use, model and device errors
  /// naming the config file and instance); what had started is stopped again.
  void start();

  /// Whether every local instance reports ready and a link to every other
  /// node is up. Asks the instances (a few round trips): poll it, not in a hot loop.
  bool ready();

  /// One line for humans: listener and links, gateway URL, local instances,
  /// and what waits for other nodes.
  std::string describe() const;

  /// Stops the gateway, the instances, the links and the actor system, in
  /// that order; returns when all are gone. Idempotent.
  void stop();

  /// The cluster this node belongs to.
  const cluster_config& cluster() const;
  /// This node's entry of the cluster config.
  const node_config& node() const;
  /// The node's actor system (valid between start() and stop()).
  caf::actor_system& system();
  /// The node's transport: null in a one-node cluster or before start().
  ucx_node* transport();

  /// The private state (node_runtime.cpp).
  struct state;

 private:
  std::unique_ptr<state> s_;
};

}  // namespace troupe
