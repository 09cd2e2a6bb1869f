// The scheduler's loop: every event that can make work (a request arrives, a
// step returns, a request ends, a new stage comes) calls schedule(), which
// sends the next plan unless one is in flight. The policy (batch_policy)
// decides; this file keeps per-request state (tokens, sampling, sink), turns
// decisions into plans and results into token_events, and makes sure each
// request ends exactly once.
#include "actors/chunk_scheduler.hpp"

#include <algorithm>
#include <chrono>
#include <exception>
#include <map>
#include <optional>
#include <unordered_map>

#include <caf/all.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "actors/errors.hpp"
#include "config/tunables.hpp"
#include "model/sampler.hpp"

namespace troupe {

namespace {

using clock_type = std::chrono::steady_clock;

constexpr caf::atom_value troupe_category = caf::atom("troupe");  // errors.hpp's caf_error_category

struct request {
  generate_request req;            // its prompt was moved into `tokens`
  std::vector<int32_t> tokens;     // prompt, then generated tokens
  size_t prompt_len = 0;
  clock_type::time_point arrival;
  double queue_seconds = -1.0;     // set when first admitted
  bool cancel = false;             // cancelled while its step was in flight: ends when the step returns
  bool sampler_in_stage = false;   // the stage holds a sampler for it

  int32_t generated() const { return static_cast<int32_t>(tokens.size() - prompt_len); }
};

struct scheduler_state {
  scheduler_options opt;
  std::optional<batch_policy> policy;
  pipeline_stage_actor stage;
  caf::actor_addr supervisor;
  std::unordered_map<uint64_t, request> reqs;
  std::map<caf::actor_addr, int> sinks;  // monitored sinks -> requests using them
  std::vector<uint64_t> forget;          // ended waiting requests whose sampler the stage still holds
  std::vector<uint64_t> done;            // final events sent since the last report to the supervisor
  uint64_t next_step = 1;
  bool in_flight = false;
  uint64_t flight_step = 0;
  std::vector<scheduled_chunk> flight;   // chunks of the step in flight (or lost with the stage)
  bool stage_lost = false;               // the stage did not answer: waiting for its replacement
  bool failed = false;                   // no stage could be started: every request fails
  bool reset_pending = false;
  int64_t prompt_tokens_total = 0;
  int64_t generation_tokens_total = 0;
  int64_t last_drift = 0;
  static inline const char* name = "chunk_scheduler";
};

using sched_ptr = chunk_scheduler_ctl_actor::stateful_pointer<scheduler_state>;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

bool contains(const std::vector<int32_t>& v, int32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// Sinks are dynamically typed actors (the gateway's): a typed actor reaches
// them with anon_send. Order between two events of one sink is kept.
void send_event(sched_ptr, const caf::actor& sink, token_event ev) {
  if (sink) caf::anon_send(sink, token_atom::value, std::move(ev));
}

void flush_done(sched_ptr self) {
  auto& st = self->state;
  if (st.done.empty()) return;
  if (auto sup = caf::actor_cast<supervisor_actor>(st.supervisor)) self->send(sup, done_atom::value, std::move(st.done));
  st.done.clear();
}

// Answers a request that is not accepted with its one (final) event.
void reject(sched_ptr self, const generate_request& req, const std::string& why, bool report = true,
            bool retryable = false) {
  token_event ev;
  ev.id = req.id;
  ev.finish_reason = "error";
  ev.error = why;
  ev.retryable = retryable;
  ev.prompt_tokens = static_cast<int32_t>(req.prompt.size());
  send_event(self, req.sink, std::move(ev));
  if (report) self->state.done.push_back(req.id);
}

// Sends the final event of request `id` and forgets it; its pages (and its
// sampler in the stage) are dropped by the next step.
void finish_request(sched_ptr self, uint64_t id, const std::string& reason, const std::string& error,
                    token_event ev = {}) {
  auto& st = self->state;
  auto it = st.reqs.find(id);
  if (it == st.reqs.end()) return;
  request& r = it->second;
  ev.id = id;
  ev.finish_reason = reason;
  ev.error = error;
  ev.prompt_tokens = static_cast<int32_t>(r.prompt_len);
  ev.completion_tokens = r.generated();
  ev.queue_seconds = r.queue_seconds >= 0 ? r.queue_seconds : seconds_since(r.arrival);
  ev.engine_seconds = seconds_since(r.arrival);
  send_event(self, r.req.sink, std::move(ev));
  // A running request's pages (and sampler) are released by the next plan; a
  // waiting one holds no pages, but maybe a sampler from before a preemption.
  const bool running = st.policy->is_running(id);
  st.policy->finish(id);
  if (!running && r.sampler_in_stage) st.forget.push_back(id);
  if (r.req.sink) {
    auto s = st.sinks.find(r.req.sink.address());
    if (s != st.sinks.end() && --s->second == 0) {
      self->demonitor(s->first);
      st.sinks.erase(s);
    }
  }
  st.reqs.erase(it);
  st.done.push_back(id);
}

bool in_flight_step(const scheduler_state& st, uint64_t id) {
  if (!st.in_flight && !st.stage_lost) return false;
  return std::any_of(st.flight.begin(), st.flight.end(), [id](const scheduled_chunk& c) { return c.id == id; });
}

void schedule(sched_ptr self);

void cancel_request(sched_ptr self, uint64_t id) {
  auto& st = self->state;
  auto it = st.reqs.find(id);
  if (it == st.reqs.end()) return;
  if (in_flight_step(st, id)) {
    it->second.cancel = true;  // its step's result still counts for the page accounting
    return;
  }
  finish_request(self, id, "abort", "");
}

std::string validate(const scheduler_state& st, const generate_request& req) {
  if (req.prompt.empty()) return "the prompt is empty";
  if (static_cast<int64_t>(req.prompt.size()) >= st.opt.max_context)
    return "the prompt has " + std::to_string(req.prompt.size()) + " tokens; this instance serves at most " +
           std::to_string(st.opt.max_context) + " tokens per sequence (prompt + completion)";
  for (size_t i = 0; i < req.prompt.size(); ++i)
    if (req.prompt[i] < 0 || req.prompt[i] >= st.opt.vocab_size)
      return "prompt token " + std::to_string(req.prompt[i]) + " at position " + std::to_string(i) +
             " is outside the vocabulary of " + std::to_string(st.opt.vocab_size);
  if (req.max_tokens < 1) return "max_tokens must be at least 1, got " + std::to_string(req.max_tokens);
  if (req.logprobs < -1 || req.logprobs > 20)
    return "logprobs must be in [0, 20], got " + std::to_string(req.logprobs);
  return sampling_params_validate(sampling_from_wire(req.sampling));
}

void on_generate(sched_ptr self, generate_request& req) {
  auto& st = self->state;
  if (st.opt.generate_hook) st.opt.generate_hook(req);
  if (st.failed) return reject(self, req, "instance failed: no pipeline stage could be started", true, true);
  if (st.opt.draining) return reject(self, req, "instance is draining", true, true);
  if (st.reqs.count(req.id) != 0) return reject(self, req, "duplicate request id " + std::to_string(req.id), false);
  if (std::string bad = validate(st, req); !bad.empty()) return reject(self, req, bad);
  request r;
  r.prompt_len = req.prompt.size();
  r.tokens = std::move(req.prompt);
  r.req = std::move(req);
  r.arrival = clock_type::now();
  const uint64_t id = r.req.id;
  st.policy->enqueue(id, static_cast<int64_t>(r.prompt_len));  // validate() made sure it fits
  if (r.req.sink && st.sinks[r.req.sink.address()]++ == 0) self->monitor(r.req.sink);
  st.reqs.emplace(id, std::move(r));
}

const char* end_reason(const scheduler_state& st, const request& r, int32_t tok) {
  if (contains(r.req.stop_token_ids, tok) || (!r.req.ignore_eos && contains(st.opt.eos_token_ids, tok))) return "stop";
  if (r.generated() >= r.req.max_tokens) return "length";
  if (static_cast<int64_t>(r.tokens.size()) >= st.opt.max_context) return "length";
  if (r.cancel) return "abort";
  return "";
}

// Fails every request of a step the stage answered with an error.
void fail_chunks(sched_ptr self, const std::vector<scheduled_chunk>& chunks, const std::string& why) {
  for (const scheduled_chunk& c : chunks) finish_request(self, c.id, "error", why);
}

void on_result(sched_ptr self, uint64_t step, step_result& res) {
  auto& st = self->state;
  if (!st.in_flight || step != st.flight_step) return;  // a stale answer (the stage was replaced)
  st.in_flight = false;
  std::vector<scheduled_chunk> chunks = std::move(st.flight);
  st.flight.clear();
  const size_t n_sample = static_cast<size_t>(
      std::count_if(chunks.begin(), chunks.end(), [](const scheduled_chunk& c) { return c.sample; }));
  if (res.tokens.size() != n_sample || (!res.logprobs.empty() && res.logprobs.size() != n_sample) ||
      (!res.top_logprobs.empty() && res.top_logprobs.size() != n_sample)) {
    fail_chunks(self, chunks,
                "step failed: the stage returned " + std::to_string(res.tokens.size()) + " tokens for " +
                    std::to_string(n_sample) + " sampled sequences");
  } else {
    if (const int64_t drift = res.kv_pages_free - st.policy->cache_free_pages(); drift != st.last_drift) {
      if (drift != 0)
        actors_log()->error("{}: KV page accounting drift after step {}: stage has {} pages free, scheduler expects {}",
                            st.opt.name, step, res.kv_pages_free, st.policy->cache_free_pages());
      st.last_drift = drift;
    }
    size_t k = 0;
    for (const scheduled_chunk& c : chunks) {
      const size_t row = c.sample ? k++ : 0;
      auto it = st.reqs.find(c.id);
      if (it == st.reqs.end()) continue;  // cannot happen: requests of a step in flight end when it returns
      request& r = it->second;
      if (!c.sample) {
        if (r.cancel) finish_request(self, c.id, "abort", "");
        continue;
      }
      const int32_t tok = res.tokens[row];
      token_event ev;
      ev.id = c.id;
      ev.tokens = {tok};
      if (r.req.logprobs >= 0 && !res.logprobs.empty()) {
        ev.logprobs = {res.logprobs[row]};
        if (!res.top_logprobs.empty()) ev.top_logprobs = {std::move(res.top_logprobs[row])};
      }
      r.tokens.push_back(tok);
      st.policy->append_token(c.id);
      ++st.generation_tokens_total;
      const std::string reason = end_reason(st, r, tok);
      if (reason.empty()) send_event(self, r.req.sink, std::move(ev));
      else finish_request(self, c.id, reason, "", std::move(ev));
    }
  }
  flush_done(self);
  schedule(self);
}

void on_step_error(sched_ptr self, uint64_t step, const caf::error& err) {
  auto& st = self->state;
  if (!st.in_flight || step != st.flight_step) return;
  st.in_flight = false;
  if (err.category() == troupe_category) {
    // The stage answered: it lives on and its cache is as the plan's releases left it.
    std::vector<scheduled_chunk> chunks = std::move(st.flight);
    st.flight.clear();
    fail_chunks(self, chunks, "step failed: " + error_text(self->system(), err));
    flush_done(self);
    schedule(self);
    return;
  }
  // No answer: the stage is gone. The supervisor hands over a new one
  // (stage_atom), which fails this step's requests with the stage's exit
  // reason. Make sure the old stage is really down so that it happens.
  st.stage_lost = true;
  self->send_exit(st.stage, err);
}

void on_stage(sched_ptr self, pipeline_stage_actor stage, const std::string& reason) {
  auto& st = self->state;
  std::vector<uint64_t> failed;
  if (st.in_flight || st.stage_lost)
    for (const scheduled_chunk& c : st.flight) failed.push_back(c.id);
  st.in_flight = false;
  st.stage_lost = false;
  st.flight.clear();
  st.forget.clear();
  st.reset_pending = false;
  st.policy->stage_lost(failed);  // the others are recomputed on the new stage
  for (auto& [id, r] : st.reqs) r.sampler_in_stage = false;
  const std::string why = "stage failed: " + reason + (stage ? "; restarted" : "; no new stage could be started");
  for (uint64_t id : failed) finish_request(self, id, "error", why);
  st.stage = std::move(stage);
  std::vector<uint64_t> rest;
  for (const auto& [id, r] : st.reqs)
    if (r.cancel || !st.stage) rest.push_back(id);
  for (uint64_t id : rest) {
    if (st.stage) finish_request(self, id, "abort", "");
    else finish_request(self, id, "error", why);
  }
  if (!st.stage) st.failed = true;
  flush_done(self);
  schedule(self);
}

void schedule(sched_ptr self) {
  auto& st = self->state;
  if (st.in_flight || st.stage_lost || st.failed || !st.stage) return;
  const bool extra = !st.forget.empty() || st.reset_pending;
  if (!st.policy->has_work() && !extra) return;
  step_decision d = st.policy->schedule();
  if (d.empty() && !extra) return;
  step_plan plan;
  plan.step = st.next_step++;
  plan.reset = st.reset_pending;
  st.reset_pending = false;
  plan.release = std::move(d.released);
  plan.release.insert(plan.release.end(), st.forget.begin(), st.forget.end());
  st.forget.clear();
  plan.preempt = d.preempted;  // their samplers stay in the stage for the recomputation
  for (uint64_t id : d.admitted) {
    request& r = st.reqs.at(id);
    if (r.queue_seconds < 0) {
      r.queue_seconds = seconds_since(r.arrival);
      st.prompt_tokens_total += static_cast<int64_t>(r.prompt_len);
    }
  }
  for (const scheduled_chunk& c : d.chunks) {
    request& r = st.reqs.at(c.id);
    plan_entry e;
    e.seq = c.id;
    e.tokens.assign(r.tokens.begin() + c.begin, r.tokens.begin() + c.begin + c.n);
    e.sample = c.sample;
    e.sampling = r.req.sampling;
    e.logprobs = r.req.logprobs;
    if (!r.sampler_in_stage) {
      if (r.req.sampling.repetition_penalty != 1.0f)
        e.prompt.assign(r.tokens.begin(), r.tokens.begin() + static_cast<long>(r.prompt_len));
      e.generated.assign(r.tokens.begin() + static_cast<long>(r.prompt_len), r.tokens.end());
      r.sampler_in_stage = true;
    }
    plan.entries.push_back(std::move(e));
  }
  st.in_flight = true;
  st.flight_step = plan.step;
  st.flight = std::move(d.chunks);
  const uint64_t step = plan.step;
  self->request(st.stage, caf::infinite, step_atom::value, std::move(plan))
      .then([self, step](step_result& r) { on_result(self, step, r); },
            [self, step](caf::error& e) { on_step_error(self, step, e); });
}

instance_state make_state(const scheduler_state& st) {
  instance_state s;
  s.name = st.opt.name;
  s.role = "mixed";
  s.status = st.failed ? "failed" : st.stage_lost ? "restarting" : st.opt.draining ? "draining" : "ready";
  s.running = static_cast<int32_t>(st.policy->running());
  s.waiting = static_cast<int32_t>(st.policy->waiting());
  s.kv_pages_total = st.policy->config().total_pages;
  s.kv_pages_free = st.policy->cache_free_pages();
  s.chunked_prefill_size = st.policy->config().chunked_prefill_size;
  s.prompt_tokens_total = st.prompt_tokens_total;
  s.generation_tokens_total = st.generation_tokens_total;
  s.preemptions_total = st.policy->preemptions();
  s.max_model_len = st.opt.max_context;
  return s;
}

chunk_scheduler_ctl_actor::behavior_type chunk_scheduler(sched_ptr self, pipeline_stage_actor stage,
                                                         caf::actor_addr supervisor, scheduler_options opt) {
  auto& st = self->state;
  st.policy.emplace(opt.policy);
  st.reset_pending = opt.reset_stage;
  st.opt = std::move(opt);
  st.stage = std::move(stage);
  st.supervisor = std::move(supervisor);
  st.failed = !st.stage;
  self->set_exception_handler([](std::exception_ptr& p) { return exception_to_error("chunk scheduler", p); });
  // A sink that goes down is a client gone: cancel its requests.
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& s = self->state;
    s.sinks.erase(dm.source);
    std::vector<uint64_t> ids;
    for (const auto& [id, r] : s.reqs)
      if (r.req.sink.address() == dm.source) ids.push_back(id);
    for (uint64_t id : ids) cancel_request(self, id);
    flush_done(self);
    schedule(self);
  });
  schedule(self);  // a replacing scheduler resets the stage at once
  return {
      [self](generate_atom, generate_request& req) {
        on_generate(self, req);
        flush_done(self);
        schedule(self);
      },
      [self](cancel_atom, uint64_t id) {
        cancel_request(self, id);
        flush_done(self);
        schedule(self);
      },
      [self](state_atom) { return make_state(self->state); },
      [self](prefill_sz_atom, int64_t n) -> caf::result<int64_t> {
        if (std::string bad = tunable_check(engine_tunables{}.chunked_prefill_size, n); !bad.empty())
          return make_caf_error(errc::errc_invalid_argument, bad);
        self->state.policy->set_chunked_prefill_size(n);
        return n;
      },
      [self](drain_atom, bool on) {
        self->state.opt.draining = on;
        return on;
      },
      [self](stage_atom, pipeline_stage_actor stage, const std::string& reason) {
        on_stage(self, std::move(stage), reason);
      },
  };
}

}  // namespace

chunk_scheduler_ctl_actor chunk_scheduler_spawn(caf::actor_system& sys, pipeline_stage_actor stage,
                                                const caf::actor_addr& supervisor, scheduler_options opt) {
  return sys.spawn(chunk_scheduler, std::move(stage), supervisor, std::move(opt));
}

std::shared_ptr<spdlog::logger> actors_log() {
  static const std::shared_ptr<spdlog::logger> log = [] {
    if (auto l = spdlog::get("actors")) return l;
    try {
      return spdlog::stderr_color_mt("actors");
    } catch (const spdlog::spdlog_ex&) {  // another thread registered it first
      return spdlog::get("actors");
    }
  }();
  return log;
}

std::string error_text(caf::actor_system& sys, const caf::error& e) {
  if (e.category() != troupe_category && e.context().match_elements<std::string>())
    return e.context().get_as<std::string>(0);
  return sys.render(e);
}

}  // namespace troupe
