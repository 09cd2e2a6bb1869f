// A pipeline stage: the actor that owns a model (one stage = the whole model
// for now) and its paged KV cache, and executes step plans in order. It makes
// no decisions: the chunk_scheduler says which sequences run which tokens,
// which to sample and which to drop. It runs on its own thread (a detached
// actor) so that a long forward pass never blocks CAF's scheduler workers.
//
// A plan that fails (errc from the model, invalid sampling settings) is
// answered with a caf::error of category "troupe" and leaves the cache as it
// was after the plan's releases. An exception kills the stage with an error
// that carries its what(); the supervisor then replaces it.
#pragma once

#include <functional>
#include <memory>

#include "actors/messages.hpp"
#include "config/errors.hpp"
#include "model/engine.hpp"

namespace caf {
class actor_system;
}

namespace troupe {

/// TEST-ONLY fault injection: called by the stage with every plan before it
/// runs. Returning an errc other than ok fails that step with an error reply
/// (the stage lives on); throwing kills the stage as an escaped exception
/// would. Production instances leave it empty; nothing else calls it.
using stage_fault_hook = std::function<errc(const step_plan&)>;

/// What a stage is built from.
struct stage_options {
  std::shared_ptr<engine> weights;  ///< the model on its device (CPU or CUDA); shared with later incarnations of
                                   ///< the stage; one stage runs it at a time
  kv_cache_config kv;              ///< geometry and page count of the stage's cache (page_size, n_pages are used;
                                   ///< the engine decides the element type)
  int threads = 0;                 ///< CPU threads for the kernels (0 = all cores), set on the stage's thread
  stage_fault_hook fault_hook;     ///< tests only
};

/// Allocates the KV cache on the engine's device, then spawns the stage on its own thread. Throws
/// troupe::error when the cache cannot be allocated (bad geometry).
pipeline_stage_actor pipeline_stage_spawn(caf::actor_system& sys, const stage_options& opt);

}  // namespace troupe
