// The router: the gateway's one entry point to the serving instances. It
// keeps the directory of instances (starting, ready, draining, failed),
// sends each request to the least-loaded ready instance that is not
// draining, and answers with that instance's handle so that the request's
// cancels go straight to it (the router holds no per-request state).
//
// Load is what the instance last reported (running + waiting, polled every
// 100 ms) plus what the router sent it since: fresh enough to spread a burst
// without waiting for the next report. Scenario groups and P:D ratios (the
// disaggregation work) extend this actor.
#pragma once

#include "actors/messages.hpp"

namespace caf {
class actor_system;
}

namespace troupe {

/// Spawns an empty router; instances announce themselves with join_atom.
router_actor router_spawn(caf::actor_system& sys);

}  // namespace troupe
