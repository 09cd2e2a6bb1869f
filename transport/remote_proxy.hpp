// The local stand-in for an actor on another node.
//
// Why it is built this way: CAF 0.17 lets a remote actor look like a local
// one through caf::actor_proxy (BASP's forwarding_actor_proxy is the model).
// Handles to it are ordinary caf::actor / typed_actor handles; what is sent to
// it is serialized on the sender's thread and queued on the UCX link to the
// owning node (ucx_node keeps per-link order, so messages from one sender
// arrive in order). Monitors and links attach to the proxy itself; the
// remote-actor core kills it, with the reason, when the owner reports the
// actor's exit or the link to the owner fails, and that fires them. The proxy
// holds its core weakly: once the node system is gone, sending to a proxy
// fails requests at once instead of touching freed state.
#pragma once

#include <caf/actor_proxy.hpp>
#include <memory>
#include <string>

namespace troupe {

class remote_core;

/// A proxy for actor `id()` on node `node()` (a troupe node name).
class remote_proxy final : public caf::actor_proxy {
 public:
  /// Made by remote_core::make_proxy (through caf::make_actor).
  remote_proxy(caf::actor_config& cfg, std::weak_ptr<remote_core> core, std::string node);
  ~remote_proxy() override;

  /// Serializes the message and sends it to the owning node; a request that
  /// cannot leave (proxy dead, link down, type not registered) gets an error
  /// response at once.
  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit* context) override;

  /// Links: tells the remote actor to link back to (a proxy of) `x`.
  bool add_backlink(caf::abstract_actor* x) override;
  /// Unlinks likewise.
  bool remove_backlink(caf::abstract_actor* x) override;

  /// Terminates the proxy with `reason`: monitors get a down message and
  /// linked actors an exit message carrying it.
  void kill_proxy(caf::execution_unit* context, caf::error reason) override;

  /// The troupe name of the node that owns the actor.
  const std::string& owner_node() const { return node_; }

  const char* name() const override { return "remote_proxy"; }

 private:
  std::weak_ptr<remote_core> core_;
  std::string node_;
};

}  // namespace troupe
