// The remote-instance joiner of the gateway's node: brings the instances that
// run on other nodes into the local router, and back into it after their
// node was lost and has returned.
//
// Why it is built this way:
// - Every node publishes the supervisor of each instance it runs as
//   `instance/<name>` (node_instance_published_name); the joiner looks each
//   remote one up with node_system::remote_actor<supervisor_actor> once its
//   node is linked (until then the router lists it as "starting") and joins
//   the handle (a proxy) to the router with instance_join.
// - remote_actor blocks (a request to the peer's directory and a wait), so
//   the joiner runs on a thread of its own with a scoped actor, never inside
//   an actor handler. It wakes on a down message or every poll interval, so
//   no queue or condition variable of its own is needed. A node that is
//   linked but has not published yet (loading weights) is asked with a
//   growing wait, up to 500 ms.
// - Failure is seen twice, on purpose: the router monitors every joined
//   handle and marks the instance failed the moment its proxy dies (node
//   killed, link down), and the request actors' monitors fail the requests
//   in flight; the joiner monitors the same handle only to know that it must
//   look the instance up again, which it does once the node is linked again
//   and publishes it again (a restarted node has new actors behind the name).
// Every transition is logged: joined, lost (with the reason), and why a
// lookup did not succeed yet (once per distinct reason).
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "actors/messages.hpp"

namespace caf {
class actor_system;
}

namespace troupe {

class node_system;

/// The name under which a node publishes the supervisor of instance `instance`.
std::string node_instance_published_name(const std::string& instance);

/// An instance that runs on another node, as the gateway's node knows it.
struct remote_instance {
  std::string name;            ///< its name in the cluster config
  std::string node;            ///< the node that runs (and publishes) it
  std::string role = "mixed";  ///< as joined to the router
};

/// Settings of the joiner.
struct node_instances_options {
  std::string self;                                    ///< this node's name (for the log)
  std::vector<remote_instance> instances;              ///< what to join
  std::chrono::milliseconds poll_interval{50};         ///< how often links are checked; the first wait after a
                                                       ///< failed lookup (it doubles up to 500 ms)
  std::chrono::milliseconds lookup_timeout{2000};      ///< one remote_actor call at most this long
};

/// The joiner: see the file comment. Starts its thread at construction.
class node_instances {
 public:
  /// Announces every instance to `router` as starting, then starts the thread.
  /// `sys` and `net` must outlive this object (stop() it before they go).
  node_instances(caf::actor_system& sys, node_system& net, router_actor router, node_instances_options options);
  /// stop().
  ~node_instances();
  node_instances(const node_instances&) = delete;
  node_instances& operator=(const node_instances&) = delete;

  /// Tells the thread to stop; returns at once (a lookup in progress ends
  /// within its timeout, or at once when the node system shuts down).
  void request_stop();
  /// request_stop() and waits for the thread. Idempotent.
  void stop();

  /// Instance name -> "joined", "lost" or "waiting for node N" / why it is not joined yet.
  std::map<std::string, std::string> status() const;

 private:
  void run();
  void set_status(const std::string& name, std::string status);

  caf::actor_system& sys_;
  node_system& net_;
  router_actor router_;
  node_instances_options opt_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::map<std::string, std::string> status_;
  std::thread thread_;
};

}  // namespace troupe
