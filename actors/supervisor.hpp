// The supervisor of one instance: it starts the pipeline stage and the chunk
// scheduler, watches both, and replaces whichever dies. It is also the
// instance's stable handle: it implements the scheduler's public interface by
// forwarding to the current scheduler, so a replaced scheduler is invisible
// to the gateway.
//
// What happens on a failure (nothing hangs, every request ends once):
// - Stage dies (an exception escaped a step, or it stopped answering): a new
//   stage is started with the same weights (the model is shared, not
//   reloaded) and handed to the scheduler with the reason; the scheduler
//   fails the requests of the step in flight ("stage failed: <reason>;
//   restarted"), recomputes its other running requests on the new stage and
//   resets its page accounting. If no stage can be started, every request
//   fails and the instance reports status "failed".
// - Scheduler dies: the supervisor itself holds the id and sink of every
//   request it forwarded and has not yet seen finished (the scheduler reports
//   finished ids after each step), sends each a final "error" event
//   ("scheduler failed: <reason>; restarted"), and starts a new scheduler
//   with the same settings (drain state and prefill budget included) whose
//   first plan clears the stage. (A request that ended in the very handler
//   that crashed may get this extra final event: sinks ignore events after a
//   final one.)
// restarts_total in instance_state counts both kinds. Restarts are rate
// limited (Erlang's restart intensity): more than max_restarts within
// restart_window marks the instance "failed" instead of restarting again;
// its requests fail, new ones are refused (retryable), so the router sends
// them elsewhere and a crash loop cannot burn the machine.
#pragma once

#include <chrono>

#include "actors/chunk_scheduler.hpp"
#include "actors/messages.hpp"
#include "actors/pipeline_stage.hpp"

namespace caf {
class actor_system;
}

namespace troupe {

/// How to build (and rebuild) an instance's actors.
struct supervisor_options {
  stage_options stage;
  scheduler_options scheduler;
  int64_t max_restarts = 5;                         ///< restarts allowed within restart_window
  std::chrono::seconds restart_window{60};
};

/// Starts the stage (throwing troupe::error when its KV cache cannot be
/// allocated), then the supervisor, which starts the scheduler. Sending the
/// supervisor an exit message (e.g. user_shutdown) stops the whole instance.
supervisor_actor supervisor_spawn(caf::actor_system& sys, supervisor_options opt);

}  // namespace troupe
