// Every message type and typed actor interface of troupe, in one place. Each
// struct has exactly one inspect() overload: it is the schema for CAF's own
// serialization and (with the transport work) for the msgpack wire codec.
// Plain types only (no std::optional/variant: CAF 0.17's inspectors lack
// them); "unset" is spelled with a flag or a sentinel documented per field.
//
// Flow of one request (single node):
//   gateway --generate_request--> router --> instance (supervisor) --> chunk_scheduler
//   chunk_scheduler --step_plan--> pipeline_stage --step_result--> chunk_scheduler
//   chunk_scheduler --token_event--> request sink (an actor of the gateway)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "model/sampler.hpp"

namespace troupe {

// ---- atoms (at most 10 characters) ----
using generate_atom = caf::atom_constant<caf::atom("generate")>;  ///< start a request
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;      ///< abort a request (client gone, stop string)
using token_atom = caf::atom_constant<caf::atom("token")>;        ///< tokens of a request (to its sink)
using step_atom = caf::atom_constant<caf::atom("step")>;          ///< run one forward step
using state_atom = caf::atom_constant<caf::atom("state")>;        ///< report state (admin, /metrics, /health)
using prefill_sz_atom = caf::atom_constant<caf::atom("prefillsz")>;  ///< set the chunked-prefill token budget
using drain_atom = caf::atom_constant<caf::atom("drain")>;        ///< drain (true) or undrain (false)
using tick_atom = caf::atom_constant<caf::atom("tick")>;          ///< internal scheduling tick
using stage_atom = caf::atom_constant<caf::atom("stage")>;        ///< supervisor -> scheduler: a new stage replaced a failed one
using done_atom = caf::atom_constant<caf::atom("done")>;          ///< scheduler -> supervisor: requests that got their final event
using join_atom = caf::atom_constant<caf::atom("join")>;          ///< an instance announces itself to the router
using directory_atom = caf::atom_constant<caf::atom("directory")>;  ///< the router's instances by name (admin)

/// Sampling settings on the wire (model/sampler.hpp's sampling_params, flattened).
struct wire_sampling {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  bool has_seed = false;
  uint64_t seed = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, wire_sampling& x) {
  return f(caf::meta::type_name("wire_sampling"), x.temperature, x.top_k, x.top_p, x.min_p, x.repetition_penalty,
           x.frequency_penalty, x.presence_penalty, x.has_seed, x.seed);
}

/// sampling_params -> wire form (the seed, when set, is shifted by seed_offset: choice i of a request with n > 1).
wire_sampling sampling_to_wire(const sampling_params& p, uint64_t seed_offset = 0);

/// Wire form -> sampling_params.
sampling_params sampling_from_wire(const wire_sampling& w);

/// One completion request, already tokenized and validated by the gateway.
/// (n > 1 arrives as n requests; stop strings are matched by the gateway,
/// which cancels the request when one appears.)
struct generate_request {
  uint64_t id = 0;                      ///< unique per gateway
  std::vector<int32_t> prompt;
  wire_sampling sampling;
  int32_t max_tokens = 16;              ///< > 0
  std::vector<int32_t> stop_token_ids;  ///< besides the model's eos ids (unless ignore_eos)
  bool ignore_eos = false;
  int32_t logprobs = -1;                ///< -1: none; 0..20: the chosen token's logprob plus that many top ones
  caf::actor sink;                      ///< receives token_event messages (token_atom)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_request& x) {
  return f(caf::meta::type_name("generate_request"), x.id, x.prompt, x.sampling, x.max_tokens, x.stop_token_ids,
           x.ignore_eos, x.logprobs, x.sink);
}

/// A (token id, logprob) pair.
struct token_logprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, token_logprob& x) {
  return f(caf::meta::type_name("token_logprob"), x.token, x.logprob);
}

/// What a request's sink receives: new tokens, and once, the end.
struct token_event {
  uint64_t id = 0;
  std::vector<int32_t> tokens;              ///< newly generated tokens (may be empty in the final event)
  std::vector<token_logprob> logprobs;      ///< per token when asked: the chosen token's logprob
  std::vector<std::vector<token_logprob>> top_logprobs;  ///< per token: the top-N alternatives
  std::string finish_reason;                ///< "" while running; "stop", "length", "abort" or "error" at the end
  std::string error;                        ///< with finish_reason "error": what went wrong
  int32_t prompt_tokens = 0;                ///< usage, filled in the final event
  int32_t completion_tokens = 0;
  double queue_seconds = 0.0;               ///< time from arrival to first scheduling (final event)
  double engine_seconds = 0.0;              ///< time from the scheduler's receipt to this final event (final event)
  bool retryable = false;                   ///< with "error": refused before it started (draining, no instance): HTTP 503
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, token_event& x) {
  return f(caf::meta::type_name("token_event"), x.id, x.tokens, x.logprobs, x.top_logprobs, x.finish_reason, x.error,
           x.prompt_tokens, x.completion_tokens, x.queue_seconds, x.engine_seconds, x.retryable);
}

/// State of one instance, for /health, /metrics and the admin API.
struct instance_state {
  std::string name;
  std::string role;          ///< "mixed" for now
  std::string status;        ///< "starting", "ready", "draining", "restarting", "failed"
  int32_t running = 0;       ///< requests in the running batch
  int32_t waiting = 0;       ///< requests queued
  int64_t kv_pages_total = 0;
  int64_t kv_pages_free = 0;   ///< free once the stage has run the plans already sent (a cancel frees within one step)
  int64_t chunked_prefill_size = 0;
  int64_t prompt_tokens_total = 0;
  int64_t generation_tokens_total = 0;
  int64_t preemptions_total = 0;
  int64_t restarts_total = 0;
  int64_t max_model_len = 0;  ///< longest sequence (prompt + completion) the instance serves: min(model context, KV cache)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, instance_state& x) {
  return f(caf::meta::type_name("instance_state"), x.name, x.role, x.status, x.running, x.waiting, x.kv_pages_total,
           x.kv_pages_free, x.chunked_prefill_size, x.prompt_tokens_total, x.generation_tokens_total,
           x.preemptions_total, x.restarts_total, x.max_model_len);
}

/// One sequence's part of a forward step, as the scheduler decided it.
struct plan_entry {
  uint64_t seq = 0;               ///< request id
  std::vector<int32_t> tokens;    ///< the chunk (prefill) or the one token (decode)
  bool sample = false;            ///< sample a token after this chunk (last prefill chunk, or decode)
  wire_sampling sampling;         ///< used when `sample` (the stage keeps a sampler per seq)
  std::vector<int32_t> prompt;    ///< only on a sequence's first chunk: for penalties
  int32_t logprobs = -1;
  std::vector<int32_t> generated;  ///< only on a first chunk: tokens generated before a recomputation; a new sampler records them (penalties)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, plan_entry& x) {
  return f(caf::meta::type_name("plan_entry"), x.seq, x.tokens, x.sample, x.sampling, x.prompt, x.logprobs,
           x.generated);
}

/// One forward step. The stage first drops what `reset`, `release` and
/// `preempt` name (so their pages serve this very step), then runs `entries`.
struct step_plan {
  uint64_t step = 0;
  std::vector<plan_entry> entries;
  std::vector<uint64_t> release;  ///< finished or cancelled sequences: free their pages and samplers
  std::vector<uint64_t> preempt;  ///< preempted sequences (recomputed later): free their pages, keep their samplers
  bool reset = false;             ///< drop every sequence and sampler first (a new scheduler took over the stage)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_plan& x) {
  return f(caf::meta::type_name("step_plan"), x.step, x.entries, x.release, x.preempt, x.reset);
}

/// What a step produced: one sampled token per entry with sample == true, in order.
struct step_result {
  uint64_t step = 0;
  std::vector<int32_t> tokens;
  /// Empty when no entry of the step asked for logprobs; else one per sampled
  /// token (entries that did not ask get {token, 0} and an empty top list).
  std::vector<token_logprob> logprobs;
  std::vector<std::vector<token_logprob>> top_logprobs;  ///< per sampled token, same rule
  int64_t kv_pages_free = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_result& x) {
  return f(caf::meta::type_name("step_result"), x.step, x.tokens, x.logprobs, x.top_logprobs, x.kv_pages_free);
}

/// Every instance the router knows, in the order they joined.
struct cluster_state {
  std::vector<instance_state> instances;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cluster_state& x) {
  return f(caf::meta::type_name("cluster_state"), x.instances);
}

// ---- typed actor interfaces ----

/// A pipeline stage (one stage = the whole model for now): runs plans in order.
/// A plan that fails (KV exhaustion, exception) is answered with an error; the
/// stage stays usable.
using pipeline_stage_actor = caf::typed_actor<caf::replies_to<step_atom, step_plan>::with<step_result>>;

/// The chunk scheduler of an instance: the one decision-maker of its pipeline.
using chunk_scheduler_actor =
    caf::typed_actor<caf::reacts_to<generate_atom, generate_request>, caf::reacts_to<cancel_atom, uint64_t>,
                     caf::replies_to<state_atom>::with<instance_state>,
                     caf::replies_to<prefill_sz_atom, int64_t>::with<int64_t>,
                     caf::replies_to<drain_atom, bool>::with<bool>>;

/// The scheduler as its supervisor sees it: the public interface plus the
/// stage hand-over (a new stage and why the old one died; an invalid handle
/// when no new stage could be started).
using chunk_scheduler_ctl_actor =
    chunk_scheduler_actor::extend<caf::reacts_to<stage_atom, pipeline_stage_actor, std::string>>;

/// An instance's supervisor: the instance's stable handle (it forwards the
/// public interface to the current scheduler) plus the scheduler's reports of
/// finished requests, so that it can end them if the scheduler dies.
using supervisor_actor = chunk_scheduler_actor::extend<caf::reacts_to<done_atom, std::vector<uint64_t>>>;

/// An instance as the router and the admin see it.
struct instance_ref {
  std::string name;
  supervisor_actor handle;  ///< invalid while the instance is starting or after it failed to start
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, instance_ref& x) {
  return f(caf::meta::type_name("instance_ref"), x.name, x.handle);
}

/// An instance's announcement to the router: starting (no handle yet),
/// ready (with its handle), or failed to start (no handle, `error` says why).
struct instance_join {
  std::string name;
  std::string role = "mixed";
  supervisor_actor handle;
  std::string error;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, instance_join& x) {
  return f(caf::meta::type_name("instance_join"), x.name, x.role, x.handle, x.error);
}

/// The router: the gateway's one entry point to the instances. It routes each
/// request to the least-loaded ready instance that is not draining, keeps
/// cancels going to the instance that holds the request, and reports the
/// state of every instance (starting ones included). tick is its own timer.
/// generate answers with the chosen instance (invalid when none could take
/// the request: the sink then got a final retryable error event).
using router_actor =
    caf::typed_actor<caf::replies_to<generate_atom, generate_request>::with<supervisor_actor>,
                     caf::replies_to<state_atom>::with<cluster_state>, caf::reacts_to<join_atom, instance_join>,
                     caf::replies_to<directory_atom>::with<std::vector<instance_ref>>,
                     caf::replies_to<drain_atom, std::string, bool>::with<bool>, caf::reacts_to<tick_atom>>;

/// The admin: turns each admin API call into messages to the actors. An
/// empty instance name means every instance; an unknown one is an error.
using admin_actor = caf::typed_actor<caf::replies_to<state_atom>::with<cluster_state>,
                                     caf::replies_to<prefill_sz_atom, std::string, int64_t>::with<int64_t>,
                                     caf::replies_to<drain_atom, std::string, bool>::with<bool>>;

/// Registers every message type with the actor system config (CAF silently
/// serializes unregistered types to 0 bytes).
void messages_register(caf::actor_system_config& cfg);

}  // namespace troupe
