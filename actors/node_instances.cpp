// The joiner's thread (the design is in node_instances.hpp): one scoped actor
// that looks instances up, monitors what it joined, and sleeps in receive()
// between rounds. Only node_system's thread-safe members and anon_send to the
// router are called from it.
#include "actors/node_instances.hpp"

#include <algorithm>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/chunk_scheduler.hpp"
#include "actors/errors.hpp"
#include "transport/node_system.hpp"

namespace troupe {

std::string node_instance_published_name(const std::string& instance) { return "instance/" + instance; }

node_instances::node_instances(caf::actor_system& sys, node_system& net, router_actor router,
                               node_instances_options options)
    : sys_(sys), net_(net), router_(std::move(router)), opt_(std::move(options)) {
  for (const remote_instance& ri : opt_.instances) {
    caf::anon_send(router_, join_atom::value, instance_join{ri.name, ri.role, {}, ""});
    status_[ri.name] = "waiting for node " + ri.node;
  }
  thread_ = std::thread([this] { run(); });
}

node_instances::~node_instances() { stop(); }

void node_instances::request_stop() { stop_ = true; }

void node_instances::stop() {
  request_stop();
  if (thread_.joinable()) thread_.join();
}

std::map<std::string, std::string> node_instances::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

void node_instances::set_status(const std::string& name, std::string status) {
  std::lock_guard<std::mutex> lock(mu_);
  status_[name] = std::move(status);
}

void node_instances::run() {
  struct slot {
    remote_instance where;
    supervisor_actor handle;                 ///< the joined proxy; invalid while not joined
    std::string why;                         ///< the last reason it is not joined (logged once per change)
    std::chrono::milliseconds wait{0};       ///< between failed lookups: doubles up to max_wait
    std::chrono::steady_clock::time_point next{};  ///< no lookup before this
  };
  using clock = std::chrono::steady_clock;
  // A node that is linked but has not published the instance yet is loading
  // its weights (seconds to minutes): ask it less and less often.
  const std::chrono::milliseconds max_wait = std::max(opt_.poll_interval, std::chrono::milliseconds(500));
  std::vector<slot> slots;
  for (const remote_instance& ri : opt_.instances) slots.push_back({ri, {}, {}, opt_.poll_interval, {}});
  caf::scoped_actor self{sys_};
  while (!stop_) {
    const std::vector<std::string> up = net_.peers();
    for (slot& s : slots) {
      if (stop_) break;
      if (s.handle) continue;
      const remote_instance& ri = s.where;
      std::string why;
      if (std::find(up.begin(), up.end(), ri.node) == up.end()) {
        why = "waiting for node " + ri.node;
        s.wait = opt_.poll_interval;  // look it up as soon as the node is linked
        s.next = {};
      } else if (clock::now() < s.next) {
        continue;
      } else {
        auto h = net_.remote_actor<supervisor_actor>(ri.node, node_instance_published_name(ri.name),
                                                     opt_.lookup_timeout);
        if (h) {
          s.handle = std::move(*h);
          s.why.clear();
          s.wait = opt_.poll_interval;
          self->monitor(s.handle);
          caf::anon_send(router_, join_atom::value, instance_join{ri.name, ri.role, s.handle, ""});
          set_status(ri.name, "joined");
          actors_log()->info("node {}: instance {} on node {} joined the router", opt_.self, ri.name, ri.node);
          continue;
        }
        why = error_text(sys_, h.error());
        s.next = clock::now() + s.wait;
        s.wait = std::min(s.wait * 2, max_wait);
      }
      if (why != s.why) {
        actors_log()->info("node {}: instance {} on node {} not joined yet: {}", opt_.self, ri.name, ri.node, why);
        set_status(ri.name, why);
        s.why = std::move(why);
      }
    }
    self->receive(
        [&](caf::down_msg& dm) {
          if (stop_) return;  // the node system shutting down kills every proxy: no news
          for (slot& s : slots) {
            if (!s.handle || s.handle.address() != dm.source) continue;
            const std::string reason = dm.reason ? error_text(sys_, dm.reason) : "it exited";
            actors_log()->warn("node {}: instance {} on node {} lost ({}); it joins again once node {} is back and "
                               "publishes it",
                               opt_.self, s.where.name, s.where.node, reason, s.where.node);
            set_status(s.where.name, "lost: " + reason);
            s.handle = supervisor_actor{};
            s.why = "lost: " + reason;
          }
        },
        caf::after(opt_.poll_interval) >> [] {});
  }
}

}  // namespace troupe
