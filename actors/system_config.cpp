#include "actors/system_config.hpp"

#include <caf/actor_system_config.hpp>

#include "actors/errors.hpp"
#include "actors/messages.hpp"

namespace troupe {

void configure_actor_system(caf::actor_system_config& cfg) {
  messages_register(cfg);
  register_troupe_errors(cfg);
  // An idle CAF worker polls 500 times with a 50 us sleep in between before
  // it waits on its condition variable. Every message that finds the workers
  // idle then pays those sleeps, and each costs a context switch: measured
  // by bench_remote_actor (benches/RESULTS.md), ~50 switches and 650-890 us
  // of CPU per request/response across two processes, and CAF's own remote
  // round trip fell from 550-625 us to 110-380 us without them. With 0 an
  // idle worker waits right after its short spin and an enqueue wakes it.
  cfg.set("work-stealing.moderate-poll-attempts", size_t{0});
}

}  // namespace troupe
