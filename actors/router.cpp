// Routing by a fresh load estimate; state queries fan out to every instance
// and are answered when the last one replies (or times out: a silent instance
// is reported "unreachable", it never blocks /health).
#include "actors/router.hpp"

#include <algorithm>
#include <chrono>
#include <memory>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/chunk_scheduler.hpp"
#include "actors/errors.hpp"

namespace troupe {

namespace {

constexpr auto poll_interval = std::chrono::milliseconds(100);
constexpr auto state_timeout = std::chrono::seconds(2);

struct entry {
  std::string name;
  std::string role = "mixed";
  supervisor_actor handle;
  std::string status = "starting";  // own view when there is no handle: "starting" or "failed"
  std::string error;
  instance_state last;               // the last report
  int64_t routed_since_report = 0;
  bool draining = false;             // set by drain through the router, before the instance confirms
};

struct router_state {
  std::vector<entry> entries;
  size_t next = 0;  // round-robin start among equally loaded instances
  bool polling = false;
  static inline const char* name = "router";
};

using router_ptr = router_actor::stateful_pointer<router_state>;

entry* find(router_state& st, const std::string& name) {
  for (entry& e : st.entries)
    if (e.name == name) return &e;
  return nullptr;
}

bool routable(const entry& e) { return e.handle && !e.draining && e.last.status == "ready"; }

int64_t load(const entry& e) { return e.last.running + e.last.waiting + e.routed_since_report; }

instance_state own_view(const entry& e) {
  instance_state s = e.last;
  s.name = e.name;
  s.role = e.role;
  if (!e.handle) s.status = e.status;
  return s;
}

void poll(router_ptr self) {
  for (size_t i = 0; i < self->state.entries.size(); ++i) {
    entry& e = self->state.entries[i];
    if (!e.handle) continue;
    self->request(e.handle, state_timeout, state_atom::value)
        .then(
            [self, name = e.name, h = e.handle](instance_state& s) {
              entry* x = find(self->state, name);
              if (x == nullptr || x->handle != h) return;
              x->last = std::move(s);
              x->routed_since_report = 0;
              x->draining = x->last.status == "draining";
            },
            [](caf::error&) {});
  }
  self->delayed_send(self, poll_interval, tick_atom::value);
}

void refuse(const generate_request& req, const std::string& why) {
  token_event ev;
  ev.id = req.id;
  ev.finish_reason = "error";
  ev.error = why;
  ev.retryable = true;
  ev.prompt_tokens = static_cast<int32_t>(req.prompt.size());
  if (req.sink) caf::anon_send(req.sink, token_atom::value, std::move(ev));
}

std::string no_instance_reason(const router_state& st) {
  if (st.entries.empty()) return "no instance is configured";
  bool starting = false, draining = false;
  for (const entry& e : st.entries) {
    starting |= !e.handle && e.status == "starting";
    draining |= e.handle && (e.draining || e.last.status == "draining");
  }
  if (starting) return "no instance is ready yet (starting)";
  if (draining) return "every instance is draining";
  return "no instance is available (all failed)";
}

router_actor::behavior_type router(router_ptr self) {
    self->set_down_handler([self](caf::down_msg& dm) {
      for (entry& e : self->state.entries)
        if (e.handle && e.handle.address() == dm.source) {
          e.error = dm.reason ? error_text(self->system(), dm.reason) : "exited";
          actors_log()->error("router: instance {} is down: {}", e.name, e.error);
          e.handle = supervisor_actor{};
          e.status = "failed";
          e.last.status = "failed";
        }
    });
    return {
        [self](generate_atom, generate_request& req) -> supervisor_actor {
          auto& st = self->state;
          entry* best = nullptr;
          const size_t n = st.entries.size();
          for (size_t k = 0; k < n; ++k) {
            entry& e = st.entries[(st.next + k) % n];
            if (routable(e) && (best == nullptr || load(e) < load(*best))) best = &e;
          }
          if (best == nullptr) {
            refuse(req, no_instance_reason(st));
            return {};
          }
          st.next = (st.next + 1) % n;
          ++best->routed_since_report;
          self->send(best->handle, generate_atom::value, std::move(req));
          return best->handle;
        },
        [self](state_atom) -> caf::result<cluster_state> {
          auto& st = self->state;
          auto rp = self->make_response_promise<cluster_state>();
          auto out = std::make_shared<cluster_state>();
          auto pending = std::make_shared<size_t>(0);
          for (const entry& e : st.entries) {
            out->instances.push_back(own_view(e));
            if (e.handle) ++*pending;
          }
          if (*pending == 0) {
            rp.deliver(*out);
            return rp;
          }
          for (size_t i = 0; i < st.entries.size(); ++i) {
            if (!st.entries[i].handle) continue;
            auto answer = [self, rp, out, pending, i](std::optional<instance_state> s) mutable {
              if (s) {
                out->instances[i] = std::move(*s);
                if (i < self->state.entries.size()) self->state.entries[i].last = out->instances[i];
              } else {
                out->instances[i].status = "unreachable";
              }
              if (--*pending == 0) rp.deliver(*out);
            };
            self->request(st.entries[i].handle, state_timeout, state_atom::value)
                .then([answer](instance_state& s) mutable { answer(std::move(s)); },
                      [answer](caf::error&) mutable { answer(std::nullopt); });
          }
          return rp;
        },
        [self](join_atom, instance_join& j) {
          auto& st = self->state;
          entry* e = find(st, j.name);
          if (e == nullptr) {
            st.entries.emplace_back();
            e = &st.entries.back();
            e->name = j.name;
          }
          e->role = j.role;
          e->error = j.error;
          e->handle = j.handle;
          e->routed_since_report = 0;
          e->draining = false;
          e->status = j.handle ? "ready" : j.error.empty() ? "starting" : "failed";
          e->last = instance_state{};
          e->last.status = e->status;
          if (j.handle) {
            self->monitor(j.handle);
            if (!st.polling) {
              st.polling = true;
              poll(self);
            }
          }
          actors_log()->info("router: instance {} {}{}", j.name, e->status, j.error.empty() ? "" : ": " + j.error);
        },
        [self](directory_atom) {
          std::vector<instance_ref> out;
          for (const entry& e : self->state.entries) out.push_back({e.name, e.handle});
          return out;
        },
        [self](drain_atom, const std::string& name, bool on) -> caf::result<bool> {
          auto& st = self->state;
          std::vector<entry*> targets;
          for (entry& e : st.entries)
            if (name.empty() || e.name == name) targets.push_back(&e);
          if (targets.empty()) return make_caf_error(errc::errc_invalid_argument, "unknown instance '" + name + "'");
          auto rp = self->make_response_promise<bool>();
          auto pending = std::make_shared<size_t>(0);
          for (entry* e : targets) {
            e->draining = on;
            if (e->handle) ++*pending;
          }
          if (*pending == 0) {
            rp.deliver(on);
            return rp;
          }
          for (entry* e : targets) {
            if (!e->handle) continue;
            self->request(e->handle, state_timeout, drain_atom::value, on)
                .then(
                    [self, rp, pending, name = e->name, on](bool v) mutable {
                      // The instance confirmed: route by the new state now, not after the next report.
                      if (entry* x = find(self->state, name); x != nullptr && x->handle &&
                                                             (x->last.status == "ready" || x->last.status == "draining"))
                        x->last.status = on ? "draining" : "ready";
                      if (--*pending == 0) rp.deliver(v);
                    },
                    [rp, pending](caf::error& err) mutable {
                      if (rp.pending()) rp.deliver(std::move(err));
                    });
          }
          return rp;
        },
        [self](tick_atom) { poll(self); },
    };
}

}  // namespace

router_actor router_spawn(caf::actor_system& sys) { return sys.spawn(router); }

}  // namespace troupe
