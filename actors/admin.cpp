// Fan-out with one response promise per call: the reply comes when every
// targeted instance has answered, or carries the first error.
#include "actors/admin.hpp"

#include <chrono>
#include <memory>

#include <caf/all.hpp>

#include "actors/errors.hpp"
#include "config/tunables.hpp"

namespace troupe {

namespace {

constexpr auto ask_timeout = std::chrono::seconds(5);

struct admin_state {
  admin_state() = default;  // not an aggregate: CAF would construct it from the actor pointer (C++20 paren-init)
  router_actor router;
  static inline const char* name = "admin";
};

using admin_ptr = admin_actor::stateful_pointer<admin_state>;

caf::result<int64_t> set_prefill(admin_ptr self, const std::string& name, int64_t size) {
  if (std::string bad = tunable_check(engine_tunables{}.chunked_prefill_size, size); !bad.empty())
    return make_caf_error(errc::errc_invalid_argument, bad);
  auto rp = self->make_response_promise<int64_t>();
  self->request(self->state.router, ask_timeout, directory_atom::value)
      .then(
          [self, rp, name, size](std::vector<instance_ref>& dir) mutable {
            std::vector<supervisor_actor> targets;
            bool known = false;
            for (const instance_ref& r : dir)
              if (name.empty() || r.name == name) {
                known = true;
                if (r.handle) targets.push_back(r.handle);
              }
            if (!known || targets.empty()) {
              rp.deliver(make_caf_error(errc::errc_invalid_argument, known ? "instance '" + name + "' is not running"
                                                                           : "unknown instance '" + name + "'"));
              return;
            }
            auto pending = std::make_shared<size_t>(targets.size());
            for (const supervisor_actor& t : targets)
              self->request(t, ask_timeout, prefill_sz_atom::value, size)
                  .then(
                      [rp, pending](int64_t v) mutable {
                        if (--*pending == 0 && rp.pending()) rp.deliver(v);
                      },
                      [rp](caf::error& e) mutable {
                        if (rp.pending()) rp.deliver(std::move(e));
                      });
          },
          [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
  return rp;
}

admin_actor::behavior_type admin(admin_ptr self, router_actor r) {
  self->state.router = std::move(r);
  return {
      [self](state_atom) -> caf::result<cluster_state> { return self->delegate(self->state.router, state_atom::value); },
      [self](prefill_sz_atom, const std::string& name, int64_t size) -> caf::result<int64_t> { return set_prefill(self, name, size); },
      [self](drain_atom, const std::string& name, bool on) -> caf::result<bool> {
        return self->delegate(self->state.router, drain_atom::value, name, on);
      },
  };
}

}  // namespace

admin_actor admin_spawn(caf::actor_system& sys, router_actor router) { return sys.spawn(admin, std::move(router)); }

}  // namespace troupe
