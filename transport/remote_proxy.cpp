// Sending through a proxy: hand the mailbox element to the core, which
// serializes it on this thread and queues it on the link; link requests
// become (link_atom, handle) messages that the owner intercepts.
#include "transport/remote_proxy.hpp"

#include <caf/actor_system.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/message_id.hpp>

#include "transport/remote_core.hpp"

namespace troupe {

remote_proxy::remote_proxy(caf::actor_config& cfg, std::weak_ptr<remote_core> core, std::string node)
    : caf::actor_proxy(cfg), core_(std::move(core)), node_(std::move(node)) {}

remote_proxy::~remote_proxy() = default;

void remote_proxy::enqueue(caf::mailbox_element_ptr what, caf::execution_unit*) {
  if (what == nullptr) return;
  if (getf(is_cleaned_up_flag)) {
    remote_bounce(*what, remote_down_error(home_system(), id(), node_, fail_state()));
    return;
  }
  auto core = core_.lock();
  if (core == nullptr) {
    remote_bounce(*what, caf::make_error(caf::sec::request_receiver_down,
                                         "actor " + std::to_string(id()) + " on node '" + node_ +
                                             "': the node system of this process has shut down"));
    return;
  }
  core->forward(node_, id(), std::move(what));
}

// CAF calls these inside its critical section of both actors: serializing
// `x` here would register it and attach to it, taking its lock again. The
// core relays the request through an actor instead (BASP's broker hop).
bool remote_proxy::add_backlink(caf::abstract_actor* x) {
  if (!caf::monitorable_actor::add_backlink(x)) return false;
  if (auto core = core_.lock()) core->relay_link(ctrl(), x->ctrl(), true);
  return true;
}

bool remote_proxy::remove_backlink(caf::abstract_actor* x) {
  if (!caf::monitorable_actor::remove_backlink(x)) return false;
  if (auto core = core_.lock()) core->relay_link(ctrl(), x->ctrl(), false);
  return true;
}

void remote_proxy::kill_proxy(caf::execution_unit* context, caf::error reason) { cleanup(std::move(reason), context); }

}  // namespace troupe
