// node_runtime: start-up and shutdown of one node (the design is in
// node_runtime.hpp). What needs its own thread or timer lives elsewhere: the
// link keeper in node_links.cpp, the joiner of remote instances in
// node_instances.cpp; this file wires them to the actor system, the
// remote-actor layer, the gateway and the local instances, in start-up order.
#include "actors/node_runtime.hpp"

#include <algorithm>
#include <chrono>
#include <map>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/admin.hpp"
#include "actors/system_config.hpp"
#include "actors/chunk_scheduler.hpp"
#include "actors/errors.hpp"
#include "actors/gateway.hpp"
#include "actors/instance.hpp"
#include "actors/messages.hpp"
#include "actors/node_instances.hpp"
#include "actors/node_links.hpp"
#include "actors/node_plan.hpp"
#include "actors/router.hpp"
#include "config/errors.hpp"
#include "model/engine.hpp"
#include "model/tokenizer.hpp"
#include "transport/node_system.hpp"

namespace troupe {

namespace {

using ms = std::chrono::milliseconds;

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& x : v) out += (out.empty() ? "" : ", ") + x;
  return out;
}

// What the runtime can run of an instance today: one stage, aggregated serving.
bool runnable(const instance_config& ic) { return ic.stages.size() == 1 && ic.role == "mixed"; }

}  // namespace

struct node_runtime::state {
  cluster_config cluster;
  size_t index = 0;   ///< this node's position in cluster.nodes
  std::string where;  ///< "FILE: " for error messages

  std::unique_ptr<caf::actor_system_config> cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<node_system> net;
  caf::actor keeper;                        ///< the link keeper (node_links.hpp)
  std::unique_ptr<node_instances> joiner;  ///< the gateway's node: joins remote instances

  router_actor router;
  admin_actor admin;
  std::unique_ptr<gateway> gw;
  uint16_t gateway_port = 0;
  /// Instances running here: name, device, handle.
  struct local_instance {
    std::string name, device;
    supervisor_actor handle;
  };
  std::vector<local_instance> instances;
  std::vector<remote_instance> remote;  ///< routed instances on other nodes (gateway's node only)
  std::vector<std::string> not_run;     ///< instances of this node, or routed from here, the runtime cannot run yet

  const node_config& self() const { return cluster.nodes[index]; }
  void start_links();
  void start_local();
};

node_runtime::node_runtime(cluster_config cluster, const std::string& node) : s_(std::make_unique<state>()) {
  const node_config& n = cluster_config_node(cluster, node);
  s_->index = static_cast<size_t>(&n - cluster.nodes.data());
  s_->where = node_plan_where(cluster);
  s_->cluster = std::move(cluster);
}

node_runtime::~node_runtime() { stop(); }

const cluster_config& node_runtime::cluster() const { return s_->cluster; }
const node_config& node_runtime::node() const { return s_->self(); }
caf::actor_system& node_runtime::system() { return *s_->sys; }
node_system* node_runtime::transport() { return s_->net.get(); }

void node_runtime::start() {
  try {
    s_->cfg = std::make_unique<caf::actor_system_config>();
    const bool cluster = s_->cluster.nodes.size() > 1;
    if (cluster) node_system::configure(*s_->cfg);
    configure_actor_system(*s_->cfg);
    s_->sys = std::make_unique<caf::actor_system>(*s_->cfg);
    if (cluster) s_->start_links();
    s_->start_local();
  } catch (...) {
    stop();
    throw;
  }
}

void node_runtime::state::start_links() {
  const node_config& me = self();
  const link_tunables& lt = cluster.links;
  ucx_node_options o;
  o.name = me.name;
  o.secret = cluster.secret;
  o.host = me.listen_host();
  o.advertised_host = me.address;
  o.port = me.port;
  o.heartbeat_interval = ms(lt.heartbeat_interval_ms.value);
  o.heartbeat_timeout = ms(lt.heartbeat_timeout_ms.value);
  o.handshake_timeout = ms(lt.handshake_timeout_ms.value);
  o.busy_poll = std::chrono::microseconds(lt.busy_poll_us.value);
  try {
    net = std::make_unique<node_system>(*sys, std::move(o));
  } catch (const error& e) {
    throw error(e.code(), where + e.what());  // transport errors name the node (and the address, for the listener)
  }
  node_links_options lo;
  lo.self = me.name;
  lo.others = cluster.nodes.size() - 1;
  lo.retry_max = ms(lt.connect_retry_max_ms.value);
  std::vector<std::string> names, accepts;
  for (size_t i = 0; i < cluster.nodes.size(); ++i) {
    const node_config& n = cluster.nodes[i];
    if (i < index) {
      lo.connect_to.push_back({n.name, n.address, n.port});
      names.push_back(n.name);
    }
    if (i > index) accepts.push_back(n.name);
  }
  actors_log()->info("node {}: links on {}:{}; connecting to [{}], accepting [{}]", me.name, me.listen_host(),
                     net->port(), joined(names), joined(accepts));
  keeper = node_links_spawn(*sys, *net, std::move(lo));
}

void node_runtime::state::start_local() {
  const node_config& me = self();
  const bool gateway_here = cluster.gateway.node == me.name;
  std::vector<const instance_config*> local;
  for (const instance_config& ic : cluster.instances) {
    std::vector<std::string> nodes;
    bool any_here = false;
    for (const stage_config& sc : ic.stages) {
      nodes.push_back(sc.node);
      any_here |= sc.node == me.name;
    }
    if (runnable(ic) && any_here) {
      local.push_back(&ic);
    } else if (runnable(ic) && gateway_here) {
      remote.push_back({ic.name, ic.stages[0].node, ic.role});
    } else if (any_here || gateway_here) {
      const std::string text = ic.name + " (" + ic.role + ", " + std::to_string(ic.stages.size()) + " stage(s) on " +
                               joined(nodes) + ")";
      not_run.push_back(text);
      actors_log()->warn("node {}: instance {} is not run: {}", me.name, text,
                         ic.stages.size() > 1 ? "pipelines across stages are not wired into the runtime yet"
                                              : "prefill/decode roles need the disaggregated runtime");
    }
  }
  for (const remote_instance& ri : remote)
    actors_log()->info("node {}: instance {} runs on node {}; the router joins it once that node is linked and "
                       "publishes it",
                       me.name, ri.name, ri.node);

  std::map<std::filesystem::path, std::vector<int32_t>> eos;  // tokenizer eos ids per model
  auto eos_of = [&](const std::filesystem::path& model) -> const std::vector<int32_t>& {
    auto it = eos.find(model);
    if (it == eos.end()) it = eos.emplace(model, tokenizer::load(model).eos_ids()).first;
    return it->second;
  };
  auto options_of = [&](const instance_config& ic) {
    instance_options io;
    io.name = ic.name;
    io.model_dir = ic.model;
    io.tunables = ic.tunables;
    try {
      io.device = engine_resolve_device(ic.stages[0].device);
    } catch (const error& e) {
      throw error(e.code(), where + "instance '" + ic.name + "': " + e.what());
    }
    io.extra_eos_token_ids = eos_of(ic.model);
    return io;
  };

  if (gateway_here) {
    gateway_options go = node_plan_gateway(cluster);
    go.max_model_len = node_plan_max_model_len(cluster);
    router = router_spawn(*sys);
    admin = admin_spawn(*sys, router);
    for (const instance_config* ic : local)
      caf::anon_send(router, join_atom::value, instance_join{ic->name, ic->role, {}, ""});
    if (!remote.empty() && net) {
      node_instances_options jo;
      jo.self = me.name;
      jo.instances = remote;
      joiner = std::make_unique<node_instances>(*sys, *net, router, std::move(jo));
    }
    gw = std::make_unique<gateway>(*sys, router, admin, go);
    gateway_port = gw->port();
    actors_log()->info("node {}: gateway on http://{}:{}", me.name, go.host, gateway_port);
  }
  for (const instance_config* ic : local) {
    const instance_options io = options_of(*ic);
    supervisor_actor h;
    try {
      h = instance_spawn(*sys, io);
    } catch (const error& e) {
      if (router) caf::anon_send(router, join_atom::value, instance_join{ic->name, ic->role, {}, e.what()});
      throw error(e.code(), where + "instance '" + ic->name + "': " + e.what());
    }
    if (router) caf::anon_send(router, join_atom::value, instance_join{ic->name, ic->role, h, ""});
    instances.push_back({ic->name, io.device, h});
    actors_log()->info("node {}: instance {} loaded {} on {}", me.name, ic->name, ic->model.string(), io.device);
    if (net) net->publish(node_instance_published_name(ic->name), h);
  }
}

bool node_runtime::ready() {
  state& s = *s_;
  if (!s.sys) return false;
  if (s.net && s.net->peers().size() + 1 < s.cluster.nodes.size()) return false;
  caf::scoped_actor self{*s.sys};
  for (const state::local_instance& li : s.instances) {
    bool up = false;
    self->request(li.handle, std::chrono::seconds(5), state_atom::value)
        .receive([&](const instance_state& st) { up = st.status == "ready"; }, [&](const caf::error&) {});
    if (!up) return false;
  }
  if (!s.router) return true;
  bool all = false;
  self->request(s.router, std::chrono::seconds(5), state_atom::value)
      .receive(
          [&](const cluster_state& cs) {
            all = std::all_of(cs.instances.begin(), cs.instances.end(),
                              [](const instance_state& i) { return i.status == "ready"; });
          },
          [&](const caf::error&) {});
  return all;
}

std::string node_runtime::describe() const {
  const state& s = *s_;
  const node_config& me = s.self();
  std::vector<std::string> parts;
  if (s.net) {
    const std::vector<std::string> up = s.net->peers();
    parts.push_back("links on " + me.listen_host() + ":" + std::to_string(s.net->port()) + " up to " +
                    (up.empty() ? std::string("none") : joined(up)));
  } else {
    parts.push_back("one-node cluster (no links)");
  }
  if (s.gw) parts.push_back("gateway http://" + s.cluster.gateway.host + ":" + std::to_string(s.gateway_port));
  for (const state::local_instance& li : s.instances) parts.push_back("instance " + li.name + " on " + li.device);
  if (s.joiner) {
    const std::map<std::string, std::string> st = s.joiner->status();
    for (const remote_instance& ri : s.remote) {
      auto it = st.find(ri.name);
      parts.push_back("instance " + ri.name + " on node " + ri.node + " (" +
                      (it == st.end() ? std::string("unknown") : it->second) + ")");
    }
  }
  if (!s.not_run.empty()) parts.push_back("not run: " + joined(s.not_run));
  if (!s.gw && s.instances.empty() && s.not_run.empty()) parts.push_back("no gateway or instance here");
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : "; ") + p;
  return "node " + me.name + ": " + out;
}

void node_runtime::stop() {
  state& s = *s_;
  if (!s.sys) return;
  if (s.gw) {
    s.gw->set_accepting(false);
    s.gw->stop();
  }
  for (const state::local_instance& li : s.instances) caf::anon_send_exit(li.handle, caf::exit_reason::user_shutdown);
  if (s.admin) caf::anon_send_exit(s.admin, caf::exit_reason::user_shutdown);
  if (s.router) caf::anon_send_exit(s.router, caf::exit_reason::user_shutdown);
  if (s.joiner) s.joiner->request_stop();
  if (s.keeper) {  // the keeper uses the remote-actor layer: it must be gone first
    caf::scoped_actor self{*s.sys};
    caf::anon_send_exit(s.keeper, caf::exit_reason::user_shutdown);
    self->wait_for(s.keeper);
    s.keeper = nullptr;
  }
  if (s.net) s.net->shutdown();  // says goodbye (peers see link_down at once), ends lookups in progress
  s.joiner.reset();              // joins its thread
  s.net.reset();
  s.gw.reset();
  s.instances.clear();
  s.router = nullptr;
  s.admin = nullptr;
  s.sys.reset();  // waits for every actor
  s.cfg.reset();
}

}  // namespace troupe
