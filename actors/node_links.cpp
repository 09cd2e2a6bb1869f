// The link keeper's behaviour (the design is in node_links.hpp) and the
// check of a listener address against UCX 1.13's rules. The keeper holds no
// lock and calls only node_system's thread-safe, non-blocking members.
#include "actors/node_links.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/chunk_scheduler.hpp"
#include "transport/node_system.hpp"

namespace troupe {

namespace {

using ms = std::chrono::milliseconds;
using retry_atom = caf::atom_constant<caf::atom("nl_retry")>;
using watch_atom = caf::atom_constant<caf::atom("nl_watch")>;

/// The first wait before trying a peer again; it doubles up to retry_max.
constexpr ms first_retry{100};

/// A node this one connects to, and where its retries stand.
struct target {
  node_link_target where;
  ms wait = first_retry;
  bool pending = false;  ///< a retry is scheduled
};

struct keeper_state {
  node_system* net = nullptr;
  node_links_options opt;
  std::vector<target> targets;
  std::set<std::string> up;  ///< the peers at the last look
  static inline const char* name = "link_keeper";
};

using keeper_actor = caf::stateful_actor<keeper_state>;

target* find_target(keeper_actor* self, const std::string& name) {
  for (target& t : self->state.targets)
    if (t.where.name == name) return &t;
  return nullptr;
}

// Connects to t unless its link is up, and schedules the next look.
void attempt(keeper_actor* self, target& t) {
  if (self->state.up.count(t.where.name) != 0) {
    t.wait = first_retry;
    return;
  }
  // A name that does not resolve yet (DNS of a pod still starting) is retried like a refused connection.
  if (caf::error err = self->state.net->connect(t.where.host, t.where.port, t.where.name, ms(0)))
    actors_log()->debug("node {}: connecting to {} at {}:{}: {}", self->state.opt.self, t.where.name, t.where.host,
                        t.where.port, self->system().render(err));
  t.pending = true;
  self->delayed_send(self, t.wait, retry_atom::value, t.where.name);
  t.wait = std::min(t.wait * 2, self->state.opt.retry_max);
}

// Compares peers() with the last view: logs each change, reconnects lost targets.
void watch(keeper_actor* self) {
  keeper_state& st = self->state;
  const std::vector<std::string> now = st.net->peers();
  const std::set<std::string> current(now.begin(), now.end());
  for (const std::string& p : current)
    if (st.up.count(p) == 0)
      actors_log()->info("node {}: link to {} up ({} of {} other nodes linked)", st.opt.self, p, current.size(),
                         st.opt.others);
  for (const std::string& p : st.up) {
    if (current.count(p) != 0) continue;
    target* t = find_target(self, p);
    actors_log()->warn("node {}: link to {} down; {}", st.opt.self, p,
                       t != nullptr ? "reconnecting" : "waiting for it to reconnect");
    if (t == nullptr) continue;  // it connects to us; it will come back by itself
    t->wait = first_retry;
    if (!t->pending) {
      t->pending = true;
      self->delayed_send(self, first_retry, retry_atom::value, p);
    }
  }
  st.up = current;
}

caf::behavior link_keeper(keeper_actor* self, node_system* net, node_links_options opt) {
  keeper_state& st = self->state;
  st.net = net;
  for (const node_link_target& t : opt.connect_to) st.targets.push_back({t, first_retry, false});
  st.opt = std::move(opt);
  watch(self);
  for (target& t : st.targets) attempt(self, t);
  self->delayed_send(self, st.opt.watch_interval, watch_atom::value);
  return {
      [self](retry_atom, const std::string& name) {
        if (target* t = find_target(self, name)) {
          t->pending = false;
          attempt(self, *t);
        }
      },
      [self](watch_atom) {
        watch(self);
        self->delayed_send(self, self->state.opt.watch_interval, watch_atom::value);
      },
  };
}

}  // namespace

caf::actor node_links_spawn(caf::actor_system& sys, node_system& net, node_links_options options) {
  return sys.spawn<caf::detached>(link_keeper, &net, std::move(options));
}

}  // namespace troupe
