// How every troupe process configures its CAF actor system, in one place:
// the message types, troupe's error category and the scheduler's polling.
#pragma once

#include <caf/fwd.hpp>

namespace troupe {

/// Registers messages and errors and sets troupe's scheduler settings.
void configure_actor_system(caf::actor_system_config& cfg);

}  // namespace troupe
