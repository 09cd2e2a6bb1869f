// Supervision by monitor + link: the supervisor monitors its children to
// replace them (down handler) and links them so that they stop with it; exit
// messages from its own children are therefore ignored (the down handler
// deals with them), any other exit message stops the instance.
#include "actors/supervisor.hpp"

#include <deque>
#include <exception>
#include <set>
#include <unordered_map>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/errors.hpp"
#include "config/tunables.hpp"

namespace troupe {

namespace {

struct supervisor_state {
  supervisor_options opt;
  pipeline_stage_actor stage;
  chunk_scheduler_ctl_actor sched;
  std::set<caf::actor_addr> children;              // every child ever started (their exits are not ours)
  std::unordered_map<uint64_t, caf::actor> inflight;  // requests forwarded and not reported done: id -> sink
  int64_t restarts = 0;
  std::deque<std::chrono::steady_clock::time_point> recent;  // restarts inside the window
  bool failed = false;  // no stage could be restarted, or the restart limit was reached
  static inline const char* name = "instance_supervisor";
};

using sup_ptr = supervisor_actor::stateful_pointer<supervisor_state>;

void adopt(sup_ptr self, const caf::actor_addr& child) {
  self->state.children.insert(child);
}

void start_scheduler(sup_ptr self) {
  auto& st = self->state;
  st.sched = chunk_scheduler_spawn(self->system(), st.stage, self->address(), st.opt.scheduler);
  self->link_to(st.sched);
  self->monitor(st.sched);
  adopt(self, st.sched.address());
}

// Counts a restart; false (with the reason in *why) once the limit is reached.
bool restart_allowed(supervisor_state& st, std::string* why) {
  const auto now = std::chrono::steady_clock::now();
  while (!st.recent.empty() && now - st.recent.front() > st.opt.restart_window) st.recent.pop_front();
  if (static_cast<int64_t>(st.recent.size()) >= st.opt.max_restarts) {
    *why = "restart limit reached (" + std::to_string(st.recent.size()) + " restarts within " +
           std::to_string(st.opt.restart_window.count()) + " s); instance failed";
    return false;
  }
  st.recent.push_back(now);
  ++st.restarts;
  return true;
}

void restart_stage(sup_ptr self, const std::string& reason) {
  auto& st = self->state;
  std::string why = reason, limit;
  st.stage = pipeline_stage_actor{};
  if (!restart_allowed(st, &limit)) {
    actors_log()->error("{}: pipeline stage failed ({}); {}", st.opt.scheduler.name, reason, limit);
    st.failed = true;
    if (st.sched) self->send(st.sched, stage_atom::value, st.stage, why + "; " + limit);
    return;
  }
  actors_log()->warn("{}: pipeline stage failed ({}); restarting it", st.opt.scheduler.name, reason);
  try {
    st.stage = pipeline_stage_spawn(self->system(), st.opt.stage);
    self->link_to(st.stage);
    self->monitor(st.stage);
    adopt(self, st.stage.address());
  } catch (const std::exception& e) {
    actors_log()->error("{}: cannot restart the pipeline stage: {}", st.opt.scheduler.name, e.what());
    why += std::string("; restart failed: ") + e.what();
    st.failed = true;
  }
  if (st.sched) self->send(st.sched, stage_atom::value, st.stage, why);
}

void fail_request(uint64_t id, const caf::actor& sink, const std::string& why, bool retryable) {
  token_event ev;
  ev.id = id;
  ev.finish_reason = "error";
  ev.error = why;
  ev.retryable = retryable;
  if (sink) caf::anon_send(sink, token_atom::value, std::move(ev));
}

void restart_scheduler(sup_ptr self, const std::string& reason) {
  auto& st = self->state;
  std::string limit;
  const bool allowed = restart_allowed(st, &limit);
  actors_log()->warn("{}: chunk scheduler failed ({}); failing {} requests; {}", st.opt.scheduler.name, reason,
                     st.inflight.size(), allowed ? "restarting it" : limit);
  for (auto& [id, sink] : st.inflight)
    fail_request(id, sink, "scheduler failed: " + reason + (allowed ? "; restarted" : "; " + limit), false);
  st.inflight.clear();
  st.sched = chunk_scheduler_ctl_actor{};
  if (!allowed) {
    st.failed = true;
    return;
  }
  st.opt.scheduler.reset_stage = true;  // the stage still holds the dead scheduler's sequences
  start_scheduler(self);
}

instance_state own_state(const supervisor_state& st) {
  instance_state s;
  s.name = st.opt.scheduler.name;
  s.role = "mixed";
  s.status = st.failed ? "failed" : "restarting";
  s.kv_pages_total = st.opt.scheduler.policy.total_pages;
  s.chunked_prefill_size = st.opt.scheduler.policy.chunked_prefill_size;
  s.restarts_total = st.restarts;
  s.max_model_len = st.opt.scheduler.max_context;
  return s;
}

supervisor_actor::behavior_type supervisor(sup_ptr self, pipeline_stage_actor stage, supervisor_options opt) {
  auto& st = self->state;
  st.opt = std::move(opt);
  st.stage = std::move(stage);
  self->link_to(st.stage);
  self->monitor(st.stage);
  adopt(self, st.stage.address());
  start_scheduler(self);
  self->set_exception_handler([](std::exception_ptr& p) { return exception_to_error("supervisor", p); });
  self->set_exit_handler([self](caf::exit_msg& em) {
    if (self->state.children.count(em.source) != 0) return;
    self->quit(em.reason);
  });
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& s = self->state;
    const std::string reason = dm.reason ? error_text(self->system(), dm.reason) : std::string("exited");
    if (s.stage && dm.source == s.stage.address()) restart_stage(self, reason);
    else if (dm.source == s.sched.address()) restart_scheduler(self, reason);
  });
  return {
      [self](generate_atom, generate_request& req) {
        auto& s = self->state;
        if (!s.sched) return fail_request(req.id, req.sink, "instance failed: " + s.opt.scheduler.name, true);
        s.inflight[req.id] = req.sink;
        self->send(s.sched, generate_atom::value, std::move(req));
      },
      [self](cancel_atom, uint64_t id) {
        if (self->state.sched) self->send(self->state.sched, cancel_atom::value, id);
      },
      [self](state_atom) -> caf::result<instance_state> {
        if (!self->state.sched) return own_state(self->state);
        auto rp = self->make_response_promise<instance_state>();
        self->request(self->state.sched, caf::infinite, state_atom::value)
            .then(
                [self, rp](instance_state& s) mutable {
                  s.restarts_total = self->state.restarts;
                  if (self->state.failed) s.status = "failed";
                  rp.deliver(std::move(s));
                },
                [self, rp](caf::error&) mutable { rp.deliver(own_state(self->state)); });
        return rp;
      },
      [self](prefill_sz_atom, int64_t n) -> caf::result<int64_t> {
        if (std::string bad = tunable_check(engine_tunables{}.chunked_prefill_size, n); !bad.empty())
          return make_caf_error(errc::errc_invalid_argument, bad);
        self->state.opt.scheduler.policy.chunked_prefill_size = n;  // a replacing scheduler keeps it
        if (!self->state.sched) return n;
        return self->delegate(self->state.sched, prefill_sz_atom::value, n);
      },
      [self](drain_atom, bool on) -> caf::result<bool> {
        self->state.opt.scheduler.draining = on;
        if (!self->state.sched) return on;
        return self->delegate(self->state.sched, drain_atom::value, on);
      },
      [self](done_atom, const std::vector<uint64_t>& ids) {
        for (uint64_t id : ids) self->state.inflight.erase(id);
      },
  };
}

}  // namespace

supervisor_actor supervisor_spawn(caf::actor_system& sys, supervisor_options opt) {
  pipeline_stage_actor stage = pipeline_stage_spawn(sys, opt.stage);
  return sys.spawn(supervisor, std::move(stage), std::move(opt));
}

}  // namespace troupe
