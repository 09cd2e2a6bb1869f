// The stage executes a step_plan in three moves: drop what the plan names
// (reset, release, preempt), create samplers for sequences seen for the first
// time, then one engine::forward_sample over every entry, which samples one
// token per entry that asks for it (on the device for a CUDA engine, so only
// token ids and logprobs come back; on the host with each request's CPU
// sampler otherwise). Everything that can fail is checked before the forward
// pass, and the forward itself is all-or-nothing, so an error reply leaves
// the cache exactly as the releases left it.
#include "actors/pipeline_stage.hpp"

#include <algorithm>
#include <exception>
#include <new>
#include <unordered_map>
#include <unordered_set>

#include <caf/all.hpp>

#include "actors/errors.hpp"
#include "kernels/threads.hpp"
#include "model/engine.hpp"
#include "model/sampler.hpp"

namespace troupe {

namespace {

struct stage_state {
  std::shared_ptr<engine> m;
  std::shared_ptr<engine_kv> kv;
  stage_fault_hook hook;
  int threads = 0;
  bool threads_set = false;
  std::unordered_map<uint64_t, request_sampler> samplers;  // node-based: pointers stay valid across inserts
  std::unordered_set<uint64_t> held;  // sequences the cache may hold
  std::vector<seq_chunk> batch;
  std::vector<sample_request> rows;
  std::vector<sample_outcome> sampled;
  static inline const char* name = "pipeline_stage";
};

using stage_ptr = pipeline_stage_actor::stateful_pointer<stage_state>;

void drop(stage_state& st, uint64_t seq, bool keep_sampler) {
  st.kv->free(static_cast<int64_t>(seq));
  st.held.erase(seq);
  if (!keep_sampler) st.samplers.erase(seq);
}

caf::result<step_result> run_step(stage_state& st, const step_plan& plan) {
  if (!st.threads_set) {
    cpu_threads_set(st.threads);  // OpenMP settings are per thread: set them on the stage's own
    st.threads_set = true;
  }
  const std::string where = "step " + std::to_string(plan.step) + ": ";
  if (st.hook)
    if (errc e = st.hook(plan); e != errc::ok) return make_caf_error(e, where + "injected fault (test hook)");
  if (plan.reset) {
    for (uint64_t s : st.held) st.kv->free(static_cast<int64_t>(s));
    st.held.clear();
    st.samplers.clear();
  }
  for (uint64_t s : plan.release) drop(st, s, false);
  for (uint64_t s : plan.preempt) drop(st, s, true);
  const int64_t vocab = st.m->config().vocab_size;
  for (const plan_entry& e : plan.entries) {
    if (e.tokens.empty())
      return make_caf_error(errc::errc_invalid_argument, where + "sequence " + std::to_string(e.seq) + " has no tokens");
    if (e.logprobs > 20)
      return make_caf_error(errc::errc_invalid_argument, where + "logprobs must be at most 20");
    if (st.samplers.count(e.seq) != 0) continue;
    const sampling_params p = sampling_from_wire(e.sampling);
    if (std::string bad = sampling_params_validate(p); !bad.empty())
      return make_caf_error(errc::errc_invalid_argument, where + "sequence " + std::to_string(e.seq) + ": " + bad);
    request_sampler& s = st.samplers.try_emplace(e.seq, p, vocab, std::span<const int32_t>(e.prompt)).first->second;
    for (int32_t t : e.generated) s.accept(t);
  }
  step_result r;
  r.step = plan.step;
  if (plan.entries.empty()) {  // a plan that only releases
    r.kv_pages_free = st.kv->free_pages();
    return r;
  }
  st.batch.clear();
  st.rows.clear();
  for (const plan_entry& e : plan.entries) {
    st.batch.push_back({static_cast<int64_t>(e.seq), e.tokens, e.sample ? logits_mode::logits_last : logits_mode::logits_none});
    if (e.sample) st.rows.push_back({&st.samplers.at(e.seq), e.logprobs});
  }
  if (errc e = st.m->forward_sample(st.batch, *st.kv, st.rows, st.sampled); e != errc::ok)
    return make_caf_error(e, where + "forward failed: " + errc_name(e) + " (" + std::to_string(st.kv->free_pages()) +
                                 " KV pages free)");
  for (const plan_entry& e : plan.entries) st.held.insert(e.seq);
  const bool any_logprobs = std::any_of(plan.entries.begin(), plan.entries.end(),
                                        [](const plan_entry& e) { return e.sample && e.logprobs >= 0; });
  size_t row = 0;
  for (const plan_entry& e : plan.entries) {
    if (!e.sample) continue;
    const sample_outcome& o = st.sampled[row++];
    r.tokens.push_back(o.token);
    if (!any_logprobs) continue;
    std::vector<token_logprob> top;
    if (e.logprobs >= 0)
      for (const auto& [id, lp] : o.top) top.push_back({id, lp});
    r.logprobs.push_back({o.token, e.logprobs >= 0 ? o.logprob : 0.0f});
    r.top_logprobs.push_back(std::move(top));
  }
  r.kv_pages_free = st.kv->free_pages();
  return r;
}

pipeline_stage_actor::behavior_type pipeline_stage(stage_ptr self, std::shared_ptr<engine> m,
                                                   std::shared_ptr<engine_kv> kv, int threads, stage_fault_hook hook) {
  self->state.m = std::move(m);
  self->state.kv = std::move(kv);
  self->state.threads = threads;
  self->state.hook = std::move(hook);
  self->set_exception_handler([](std::exception_ptr& p) { return exception_to_error("pipeline stage", p); });
  return {
      [self](step_atom, const step_plan& plan) -> caf::result<step_result> { return run_step(self->state, plan); },
  };
}

}  // namespace

pipeline_stage_actor pipeline_stage_spawn(caf::actor_system& sys, const stage_options& opt) {
  if (!opt.weights) throw error(errc::errc_invalid_argument, "pipeline stage: no model");
  std::shared_ptr<engine_kv> kv;
  try {
    kv = opt.weights->kv_make(opt.kv.page_size, opt.kv.n_pages);
  } catch (const std::bad_alloc&) {
    throw error(errc::errc_kv_exhausted,
                "pipeline stage: cannot allocate " + std::to_string(opt.kv.n_pages) + " KV pages");
  }
  return sys.spawn<caf::detached>(pipeline_stage, opt.weights, std::move(kv), opt.threads, opt.fault_hook);
}

}  // namespace troupe
