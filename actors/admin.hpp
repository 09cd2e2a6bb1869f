// The admin: the actor behind /admin/*. Each admin API call arrives as one
// typed message; the admin resolves the instances it names through the
// router's directory and talks to them (or to the router, for what changes
// routing: drain). Authorization stays in the gateway (--admin-key); the
// admin validates values and names and reports unknown instances as errors.
#pragma once

#include "actors/messages.hpp"

namespace caf {
class actor_system;
}

namespace troupe {

/// Spawns the admin of the instances known to `router`.
admin_actor admin_spawn(caf::actor_system& sys, router_actor router);

}  // namespace troupe
