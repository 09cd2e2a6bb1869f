// An instance: one chunk_scheduler plus its pipeline stage (one stage for
// now), under a supervisor. instance_spawn is where the engine's tunables
// become an instance: it loads the model, sizes the paged KV cache from
// kv-cache-mib (instance_plan_make, also usable before loading), derives the
// longest sequence the instance can serve, and starts the actors. The handle it returns stays valid across restarts of the
// stage or the scheduler (it is the supervisor's).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/messages.hpp"
#include "actors/pipeline_stage.hpp"
#include "config/tunables.hpp"

namespace caf {
class actor_system;
}

namespace troupe {

class engine;

/// TEST-ONLY fault injection points; production leaves them empty.
struct instance_test_hooks {
  stage_fault_hook stage_step;  ///< see pipeline_stage.hpp: an errc fails the step, a throw kills the stage
  std::function<void(const generate_request&)> scheduler_generate;  ///< a throw kills the scheduler
};

/// How to build an instance.
struct instance_options {
  std::string name = "instance-0";
  std::filesystem::path model_dir;       ///< checkpoint directory (also read: generation_config.json's eos ids)
  std::shared_ptr<engine> loaded;        ///< an already loaded model to use instead of model_dir (not shared with
                                         ///< another running instance: a model runs one step at a time)
  std::string device = "cpu";            ///< where the model runs: cpu, cuda, cuda:N or auto (model/engine.hpp);
                                         ///< ignored when `loaded` is given
  engine_tunables tunables;              ///< kv-page-size, kv-cache-mib, chunked-prefill-size, threads, max-running-requests
  int64_t kv_pages = 0;                  ///< > 0: exactly this many KV pages instead of sizing from kv-cache-mib
  std::vector<int32_t> extra_eos_token_ids;  ///< more "stop" ids (e.g. the tokenizer's eos)
  instance_test_hooks test_hooks;
};

/// What an instance will be, known from config.json and the tunables before
/// any weight is read (the gateway serves /health and /v1/models meanwhile).
struct instance_plan {
  int64_t kv_pages = 0;
  int64_t page_size = 0;
  int64_t max_model_len = 0;  ///< min(model context, KV cache tokens)
};

/// Sizes the KV cache (kv-cache-mib, or opt.kv_pages when > 0) for the model
/// of opt.model_dir (or opt.loaded). Throws troupe::error for invalid
/// tunables, an unreadable config.json or a KV budget of less than one page.
instance_plan instance_plan_make(const instance_options& opt);

/// Loads the model, sizes the KV cache and starts the instance's actors.
/// Throws troupe::error for invalid tunables, a model that does not load, or
/// a KV budget of less than one page.
supervisor_actor instance_spawn(caf::actor_system& sys, const instance_options& opt);

}  // namespace troupe
