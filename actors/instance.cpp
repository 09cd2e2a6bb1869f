// instance_spawn turns tunables into an instance; the actors do the rest.
#include "actors/instance.hpp"

#include <algorithm>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/chunk_scheduler.hpp"
#include "actors/supervisor.hpp"
#include "model/generation_config.hpp"
#include "model/model_config.hpp"
#include "model/engine.hpp"

namespace troupe {

namespace {

instance_plan plan_for(const model_config& mc, const engine_tunables& t, int64_t kv_pages, dtype kv_type) {
  // One stage holds every layer; the geometry is engine::kv_config's.
  kv_cache_config kv{mc.n_layers, mc.n_kv_heads, mc.head_dim, t.kv_page_size.value, 0, kv_type};
  const size_t budget = static_cast<size_t>(t.kv_cache_mib.value) << 20;
  instance_plan p;
  p.page_size = kv.page_size;
  p.kv_pages = kv_pages > 0 ? kv_pages : kv_cache_pages_for_bytes(kv, budget);
  if (p.kv_pages < 1)
    throw error(errc::errc_invalid_argument, "--kv-cache-mib " + std::to_string(t.kv_cache_mib.value) +
                                                 " holds no KV page of " + std::to_string(kv.page_size) + " tokens");
  p.max_model_len = std::min(mc.max_position_embeddings, p.kv_pages * p.page_size);
  return p;
}

void validate(const engine_tunables& tun) {
  engine_tunables t = tun;
  if (std::string bad = tunables_validate(t); !bad.empty()) throw error(errc::errc_invalid_argument, bad);
}

}  // namespace

instance_plan instance_plan_make(const instance_options& opt) {
  validate(opt.tunables);
  if (opt.loaded) return plan_for(opt.loaded->config(), opt.tunables, opt.kv_pages, opt.loaded->kv_dtype());
  return plan_for(model_config_load(opt.model_dir), opt.tunables, opt.kv_pages,
                  engine_kv_dtype(engine_resolve_device(opt.device)));
}

supervisor_actor instance_spawn(caf::actor_system& sys, const instance_options& opt) {
  validate(opt.tunables);
  const engine_tunables& t = opt.tunables;
  std::shared_ptr<engine> m = opt.loaded ? opt.loaded : engine_load(opt.model_dir, {}, opt.device);
  const model_config& mc = m->config();
  const instance_plan plan = plan_for(mc, t, opt.kv_pages, m->kv_dtype());

  std::vector<int32_t> eos = mc.eos_token_ids;
  if (!opt.loaded && !opt.model_dir.empty()) {
    const generation_config gc = generation_config_load(opt.model_dir);
    eos.insert(eos.end(), gc.eos_token_ids.begin(), gc.eos_token_ids.end());
  }
  eos.insert(eos.end(), opt.extra_eos_token_ids.begin(), opt.extra_eos_token_ids.end());
  std::sort(eos.begin(), eos.end());
  eos.erase(std::unique(eos.begin(), eos.end()), eos.end());

  const int64_t pages = plan.kv_pages;
  const kv_cache_config kv = m->kv_config(plan.page_size, pages);

  supervisor_options so;
  so.stage.weights = m;
  so.stage.kv = kv;
  so.stage.threads = static_cast<int>(t.threads.value);
  so.stage.fault_hook = opt.test_hooks.stage_step;
  so.max_restarts = t.max_restarts.value;
  so.restart_window = std::chrono::seconds(t.restart_window_s.value);
  scheduler_options& sc = so.scheduler;
  sc.name = opt.name;
  sc.policy.page_size = kv.page_size;
  sc.policy.total_pages = pages;
  sc.policy.chunked_prefill_size = t.chunked_prefill_size.value;
  sc.policy.max_running = t.max_running_requests.value;
  sc.policy.reserve_pages = std::max<int64_t>(1, pages / 100);  // vLLM's 1% watermark
  sc.max_context = plan.max_model_len;
  sc.vocab_size = mc.vocab_size;
  sc.eos_token_ids = eos;
  sc.generate_hook = opt.test_hooks.scheduler_generate;
  actors_log()->info("{}: device {}, {} KV pages of {} tokens, max_model_len {}, chunked prefill {}, max running {}",
                     opt.name, m->device(), pages, kv.page_size, sc.max_context, sc.policy.chunked_prefill_size,
                     sc.policy.max_running);
  return supervisor_spawn(sys, std::move(so));
}

}  // namespace troupe
