// One node process of a cluster: what `troupe node --name N` runs. It owns
// the node's actor system and its remote-actor layer (node_system,
// transport/node_system.hpp) and starts what the cluster config places on
// this node.
//
// Why it is built this way:
// - The actor system is configured for remote actors (node_system::configure
//   and every message type registered, as `troupe serve` registers them), so
//   a handle of an actor on another node is used like a local one: the
//   gateway's router sends requests to a remote instance's proxy, the
//   instance streams tokens back to the request actor on the gateway's node,
//   and monitor() sees a killed node within ~10 ms.
// - A link keeper (node_links.hpp) keeps the links: each node connects to
//   the nodes declared before it, retries with backoff, reconnects after a
//   loss.
// - Every instance whose single stage runs here (role mixed) is started here
//   and published as `instance/<name>` (its supervisor). The gateway's node
//   joins the local ones to its router directly and the remote ones through
//   the joiner (node_instances.hpp), which looks them up once their node is
//   linked and again after the node was lost and came back. Instances the
//   runtime cannot run yet (several stages, prefill/decode roles) are named
//   in the log and left out of routing.
// - "Ready" means: a link to every other node is up, every local instance is
//   ready and, on the gateway's node, every routed instance of the cluster
//   (local or remote) is joined and ready. The caller polls ready() and
//   prints one line.
#pragma once

#include <memory>
#include <string>

#include "config/cluster_config.hpp"

namespace caf {
class actor_system;
}

namespace troupe {

class node_system;

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

  /// Starts, in this order: the actor system; the remote-actor layer (listener
  /// on the node's bind address and port, links to the nodes declared before
  /// it) when the cluster has more than one node; the gateway with router and
  /// admin when it runs here, and the joiner of the instances on other nodes;
  /// every instance that runs entirely here (weights load now), published.
  /// Throws troupe::error (errc_io for a port in use, model and device errors
  /// naming the config file and instance); what had started is stopped again.
  void start();

  /// Whether a link to every other node is up, every local instance reports
  /// ready and, with the gateway here, every routed instance of the cluster is
  /// joined and ready. Asks the actors (a few round trips): poll it, not in a hot loop.
  bool ready();

  /// One line for humans: listener and links, gateway URL, local instances,
  /// the remote instances the gateway routes to, and what is not run.
  std::string describe() const;

  /// Stops the gateway, the instances, the joiner and the links, the
  /// remote-actor layer and the actor system, in that order; returns when all
  /// are gone. Idempotent.
  void stop();

  /// The cluster this node belongs to.
  const cluster_config& cluster() const;
  /// This node's entry of the cluster config.
  const node_config& node() const;
  /// The node's actor system (valid between start() and stop()).
  caf::actor_system& system();
  /// The node's remote-actor layer: null in a one-node cluster or before start().
  node_system* transport();

  /// The private state (node_runtime.cpp).
  struct state;

 private:
  std::unique_ptr<state> s_;
};

}  // namespace troupe
