#include "actors/messages.hpp"

#include <caf/actor_system_config.hpp>

namespace troupe {

wire_sampling sampling_to_wire(const sampling_params& p, uint64_t seed_offset) {
  wire_sampling w;
  w.temperature = p.temperature;
  w.top_k = p.top_k;
  w.top_p = p.top_p;
  w.min_p = p.min_p;
  w.repetition_penalty = p.repetition_penalty;
  w.frequency_penalty = p.frequency_penalty;
  w.presence_penalty = p.presence_penalty;
  w.has_seed = p.seed.has_value();
  w.seed = p.seed.value_or(0) + seed_offset;
  return w;
}

sampling_params sampling_from_wire(const wire_sampling& w) {
  sampling_params p;
  p.temperature = w.temperature;
  p.top_k = w.top_k;
  p.top_p = w.top_p;
  p.min_p = w.min_p;
  p.repetition_penalty = w.repetition_penalty;
  p.frequency_penalty = w.frequency_penalty;
  p.presence_penalty = w.presence_penalty;
  if (w.has_seed) p.seed = w.seed;
  return p;
}

void messages_register(caf::actor_system_config& cfg) {
  cfg.add_message_type<wire_sampling>("troupe.wire_sampling");
  cfg.add_message_type<generate_request>("troupe.generate_request");
  cfg.add_message_type<token_logprob>("troupe.token_logprob");
  cfg.add_message_type<std::vector<token_logprob>>("troupe.token_logprobs");
  cfg.add_message_type<std::vector<std::vector<token_logprob>>>("troupe.token_logprobs2");
  cfg.add_message_type<token_event>("troupe.token_event");
  cfg.add_message_type<instance_state>("troupe.instance_state");
  cfg.add_message_type<plan_entry>("troupe.plan_entry");
  cfg.add_message_type<step_plan>("troupe.step_plan");
  cfg.add_message_type<step_result>("troupe.step_result");
  cfg.add_message_type<std::vector<uint64_t>>("troupe.ids");
  cfg.add_message_type<pipeline_stage_actor>("troupe.pipeline_stage_actor");
  cfg.add_message_type<cluster_state>("troupe.cluster_state");
  cfg.add_message_type<std::vector<instance_state>>("troupe.instance_states");
  cfg.add_message_type<supervisor_actor>("troupe.supervisor_actor");
  cfg.add_message_type<instance_ref>("troupe.instance_ref");
  cfg.add_message_type<std::vector<instance_ref>>("troupe.instance_refs");
  cfg.add_message_type<instance_join>("troupe.instance_join");
}

}  // namespace troupe
