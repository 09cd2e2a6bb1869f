// The link keeper of a node process: keeps this node linked to the nodes of
// its cluster, on top of node_system (transport/node_system.hpp).
//
// Why it is built this way:
// - Links are made in one direction only (the transport refuses a second link
//   between two nodes): each node connects to every node declared before it
//   in the config and accepts the others.
// - node_system reports links through peers() only, so the keeper watches
//   that list on a short timer (a few µs under a lock) and logs every change;
//   for a node it connects to it retries with a doubling backoff (100 ms up
//   to links.connect-retry-max-ms) until the link is up, and starts again at
//   100 ms once the link is lost, so nodes may start in any order and a
//   restarted peer is found again.
// - It is a detached actor: node_system::connect(host, port, name, 0 ms)
//   only starts a connection, but resolving a host name (DNS of a pod still
//   starting) may block for seconds and must not stall the scheduler.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

namespace troupe {

class node_system;

/// A node the keeper connects to (one declared before this node).
struct node_link_target {
  std::string name;   ///< its node name (a peer of another name is refused)
  std::string host;   ///< its address
  uint16_t port = 0;  ///< its listener port
};

/// What the keeper keeps.
struct node_links_options {
  std::string self;                                   ///< this node's name (for the log)
  std::vector<node_link_target> connect_to;           ///< the nodes declared before this one
  size_t others = 0;                                  ///< how many other nodes the cluster has
  std::chrono::milliseconds retry_max{5000};          ///< longest wait between connection attempts
  std::chrono::milliseconds watch_interval{20};       ///< how often peers() is compared with the last view
};

/// Spawns the keeper (detached); it runs until it is told to exit. `net` must
/// outlive it: stop the keeper (and wait for it) before destroying `net`.
caf::actor node_links_spawn(caf::actor_system& sys, node_system& net, node_links_options options);

}  // namespace troupe
