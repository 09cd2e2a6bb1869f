// instance_spawn turns tunables into an instance; the actors do the rest.
#include "actors/instance.hpp"

#include <algorithm>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/chunk_scheduler.hpp"
#include "actors/supervisor.hpp"
#include "model/generation_config.hpp"
#include "model/model.hpp"

namespace troupe {

chunk_scheduler_actor instance_spawn(caf::actor_system& sys, const instance_options& opt) {
  engine_tunables t = opt.tunables;
  if (std::string bad = tunables_validate(t); !bad.empty()) throw error(errc::errc_invalid_argument, bad);
  std::shared_ptr<model> m = opt.loaded ? opt.loaded : std::make_shared<model>(model::load(opt.model_dir));
  const model_config& mc = m->config();

  std::vector<int32_t> eos = mc.eos_token_ids;
  if (!opt.loaded && !opt.model_dir.empty()) {
    const generation_config gc = generation_config_load(opt.model_dir);
    eos.insert(eos.end(), gc.eos_token_ids.begin(), gc.eos_token_ids.end());
  }
  eos.insert(eos.end(), opt.extra_eos_token_ids.begin(), opt.extra_eos_token_ids.end());
  std::sort(eos.begin(), eos.end());
  eos.erase(std::unique(eos.begin(), eos.end()), eos.end());

  kv_cache_config kv = m->kv_config(t.kv_page_size.value, 0);
  const size_t budget = static_cast<size_t>(t.kv_cache_mib.value) << 20;
  const int64_t pages = opt.kv_pages > 0 ? opt.kv_pages : kv_cache_pages_for_bytes(kv, budget);
  if (pages < 1)
    throw error(errc::errc_invalid_argument, "--kv-cache-mib " + std::to_string(t.kv_cache_mib.value) +
                                                 " holds no KV page of " + std::to_string(kv.page_size) + " tokens");
  kv.n_pages = pages;

  supervisor_options so;
  so.stage.weights = m;
  so.stage.kv = kv;
  so.stage.threads = static_cast<int>(t.threads.value);
  so.stage.fault_hook = opt.test_hooks.stage_step;
  scheduler_options& sc = so.scheduler;
  sc.name = opt.name;
  sc.policy.page_size = kv.page_size;
  sc.policy.total_pages = pages;
  sc.policy.chunked_prefill_size = t.chunked_prefill_size.value;
  sc.policy.max_running = t.max_running_requests.value;
  sc.policy.reserve_pages = std::max<int64_t>(1, pages / 100);  // vLLM's 1% watermark
  sc.max_context = std::min(mc.max_position_embeddings, pages * kv.page_size);
  sc.vocab_size = mc.vocab_size;
  sc.eos_token_ids = eos;
  sc.generate_hook = opt.test_hooks.scheduler_generate;
  actors_log()->info("{}: {} KV pages of {} tokens, max_model_len {}, chunked prefill {}, max running {}", opt.name,
                     pages, kv.page_size, sc.max_context, sc.policy.chunked_prefill_size, sc.policy.max_running);
  return supervisor_spawn(sys, std::move(so));
}

}  // namespace troupe
