// The stage executes a step_plan in four moves: drop what the plan names
// (reset, release, preempt), create samplers for sequences seen for the first
// time, run one model::forward over every entry, then sample one token per
// entry that asks for it. Everything that can fail is checked before the
// forward pass, and model::forward itself is all-or-nothing, so an error
// reply leaves the cache exactly as the releases left it.
#include "actors/pipeline_stage.hpp"

#include <algorithm>
#include <exception>
#include <new>
#include <numeric>
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
  std::unordered_map<uint64_t, sampler> samplers;
  std::unordered_set<uint64_t> held;  // sequences the cache may hold
  std::vector<seq_chunk> batch;
  std::vector<float> logits, logprobs;
  static inline const char* name = "pipeline_stage";
};

using stage_ptr = pipeline_stage_actor::stateful_pointer<stage_state>;

void drop(stage_state& st, uint64_t seq, bool keep_sampler) {
  st.kv->free(static_cast<int64_t>(seq));
  st.held.erase(seq);
  if (!keep_sampler) st.samplers.erase(seq);
}

// The chosen token's logprob and the top n alternatives (vLLM: raw logits,
// log-softmax; ties broken by the lower id).
void fill_logprobs(std::span<const float> lsm, int32_t token, int32_t n, token_logprob& chosen,
                   std::vector<token_logprob>& top) {
  chosen = {token, lsm[static_cast<size_t>(token)]};
  const size_t k = std::min(static_cast<size_t>(std::max(n, 0)), lsm.size());
  std::vector<int32_t> ids(lsm.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + static_cast<long>(k), ids.end(), [&](int32_t a, int32_t b) {
    const float la = lsm[static_cast<size_t>(a)], lb = lsm[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  });
  top.clear();
  for (size_t i = 0; i < k; ++i) top.push_back({ids[i], lsm[static_cast<size_t>(ids[i])]});
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
    sampler& s = st.samplers.try_emplace(e.seq, p, vocab, std::span<const int32_t>(e.prompt)).first->second;
    for (int32_t t : e.generated) s.accept(t);
  }
  step_result r;
  r.step = plan.step;
  if (plan.entries.empty()) {  // a plan that only releases
    r.kv_pages_free = st.kv->free_pages();
    return r;
  }
  st.batch.clear();
  for (const plan_entry& e : plan.entries)
    st.batch.push_back({static_cast<int64_t>(e.seq), e.tokens, e.sample ? logits_mode::logits_last : logits_mode::logits_none});
  if (errc e = st.m->forward(st.batch, *st.kv, st.logits); e != errc::ok)
    return make_caf_error(e, where + "forward failed: " + errc_name(e) + " (" + std::to_string(st.kv->free_pages()) +
                                 " KV pages free)");
  for (const plan_entry& e : plan.entries) st.held.insert(e.seq);
  const bool any_logprobs = std::any_of(plan.entries.begin(), plan.entries.end(),
                                        [](const plan_entry& e) { return e.sample && e.logprobs >= 0; });
  size_t row = 0;
  for (const plan_entry& e : plan.entries) {
    if (!e.sample) continue;
    std::span<const float> logits(st.logits.data() + row * static_cast<size_t>(vocab), static_cast<size_t>(vocab));
    ++row;
    token_logprob chosen;
    std::vector<token_logprob> top;
    if (e.logprobs >= 0) {
      st.logprobs.resize(static_cast<size_t>(vocab));
      sampler::log_softmax(logits, st.logprobs);
    }
    const int32_t tok = st.samplers.at(e.seq).sample(logits);
    r.tokens.push_back(tok);
    if (!any_logprobs) continue;
    if (e.logprobs >= 0) fill_logprobs(st.logprobs, tok, e.logprobs, chosen, top);
    else chosen = {tok, 0.0f};
    r.logprobs.push_back(chosen);
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
