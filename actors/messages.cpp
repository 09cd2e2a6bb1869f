#include "actors/messages.hpp"

#include <caf/actor_system_config.hpp>

namespace troupe {

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
}

}  // namespace troupe
