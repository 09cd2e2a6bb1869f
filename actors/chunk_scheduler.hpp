// The chunk scheduler: the one decision-maker of an instance's pipeline. It
// holds the waiting queue and the running batch (through batch_policy), builds
// one step_plan at a time, sends it to the stage (exactly one step in flight),
// and turns the step_result into token_events for each request's sink.
//
// Guarantees:
// - Every accepted or rejected generate_request gets exactly one final
//   token_event (finish_reason "stop", "length", "abort" or "error"), also
//   when it is cancelled, when its sink dies, or when a step fails.
// - A cancelled request's KV pages are released by the very next step (sent
//   at once when the scheduler is idle).
// - A step that fails with an error reply fails the requests of that step and
//   the rest go on; when the stage dies the supervisor hands over a new stage
//   (stage_atom): the requests of the step in flight fail with "stage failed:
//   <reason>; restarted", the other running requests are recomputed.
// - Draining refuses new requests at once (final "error": "instance is
//   draining"); requests already queued or running are served to the end.
// - Tokens in events include the eos / stop token that ended a request
//   (completion_tokens counts it, as vLLM's usage does); the gateway drops
//   special tokens from the text.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/batch_policy.hpp"
#include "actors/messages.hpp"

namespace caf {
class actor_system;
class actor_addr;
}  // namespace caf

namespace spdlog {
class logger;
}

namespace troupe {

/// What a scheduler needs to know about its instance.
struct scheduler_options {
  std::string name = "instance-0";  ///< reported in instance_state
  batch_policy_config policy;       ///< pages, token budget, max running requests
  int64_t max_context = 0;          ///< longest sequence served: min(model context, KV cache tokens)
  int64_t vocab_size = 0;           ///< prompt token ids must be below it
  std::vector<int32_t> eos_token_ids;  ///< "stop" ids unless a request sets ignore_eos
  bool draining = false;            ///< start drained (a scheduler replacing a drained one)
  bool reset_stage = false;         ///< the first plan drops everything the stage holds (a replaced scheduler's sequences)
  /// TEST-ONLY fault injection: called with every generate_request on
  /// arrival; a throw kills the scheduler like a bug would. Empty in production.
  std::function<void(const generate_request&)> generate_hook;
};

/// Spawns a scheduler driving `stage`; finished request ids are reported to
/// `supervisor` (held weakly; may be invalid).
chunk_scheduler_ctl_actor chunk_scheduler_spawn(caf::actor_system& sys, pipeline_stage_actor stage,
                                                const caf::actor_addr& supervisor, scheduler_options opt);

/// The logger of the actors folder ("actors").
std::shared_ptr<spdlog::logger> actors_log();

/// Text of an error: CAF's rendering ("troupe.kv_exhausted: ..."), or just the
/// message of an exit reason made from an exception.
std::string error_text(caf::actor_system& sys, const caf::error& e);

}  // namespace troupe
