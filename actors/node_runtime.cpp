// node_runtime: start-up and shutdown of one node (the design is in
// node_runtime.hpp). The transport's callbacks run on its progress thread:
// they only update the set of linked nodes under a mutex, log, and tell the
// link keeper; everything else happens on the caller's thread or in actors.
#include "actors/node_runtime.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/admin.hpp"
#include "actors/chunk_scheduler.hpp"
#include "actors/errors.hpp"
#include "actors/gateway.hpp"
#include "actors/instance.hpp"
#include "actors/messages.hpp"
#include "actors/router.hpp"
#include "config/errors.hpp"
#include "model/engine.hpp"
#include "model/tokenizer.hpp"
#include "transport/ucx_node.hpp"

namespace troupe {

namespace {

using ms = std::chrono::milliseconds;
using retry_atom = caf::atom_constant<caf::atom("nl_retry")>;
using lost_atom = caf::atom_constant<caf::atom("nl_lost")>;

/// The first wait before trying a peer again; it doubles up to connect-retry-max-ms.
constexpr ms first_retry{100};

/// A node this one connects to (one declared before it).
struct peer_target {
  std::string name;
  std::string host;
  uint16_t port = 0;
  ms wait = first_retry;
  bool pending = false;  ///< a retry is scheduled
};

struct keeper_state {
  ucx_node* net = nullptr;
  std::vector<peer_target> peers;
  ms max_wait{5000};
  static inline const char* name = "link_keeper";
};

using keeper_actor = caf::stateful_actor<keeper_state>;

peer_target* find_target(keeper_actor* self, const std::string& name) {
  for (peer_target& p : self->state.peers)
    if (p.name == name) return &p;
  return nullptr;
}

// Connects to p unless its link is up, and schedules the next look.
void attempt(keeper_actor* self, peer_target& p) {
  const std::vector<std::string> up = self->state.net->peers();
  if (std::find(up.begin(), up.end(), p.name) != up.end()) {
    p.wait = first_retry;
    return;
  }
  // A name that does not resolve yet (DNS of a pod still starting) is retried like a refused connection.
  self->state.net->connect(p.host, p.port, p.name);
  p.pending = true;
  self->delayed_send(self, p.wait, retry_atom::value, p.name);
  p.wait = std::min(p.wait * 2, self->state.max_wait);
}

caf::behavior link_keeper(keeper_actor* self, ucx_node* net, std::vector<peer_target> peers, ms max_wait) {
  self->state.net = net;
  self->state.peers = std::move(peers);
  self->state.max_wait = max_wait;
  for (peer_target& p : self->state.peers) attempt(self, p);
  return {
      [self](retry_atom, const std::string& name) {
        if (peer_target* p = find_target(self, name)) {
          p->pending = false;
          attempt(self, *p);
        }
      },
      [self](lost_atom, const std::string& name) {
        peer_target* p = find_target(self, name);
        if (p == nullptr) return;  // it connects to us; it will come back by itself
        p->wait = first_retry;
        if (!p->pending) {
          p->pending = true;
          self->delayed_send(self, first_retry, retry_atom::value, name);
        }
      },
  };
}

// Why UCX 1.13 would never accept a link on a listener bound to `host`, or
// "" (also when `host` does not resolve: ucx_node reports that). Two traps,
// both silent in UCX, where every connection attempt just fails:
// - its server side looks the listener's address up among the interfaces and
//   refuses the connection when none has it (127.0.0.2 on a lo that only has
//   127.0.0.1, although the kernel accepts the socket);
// - its tcp transport listens on each interface's primary IPv4 address but
//   the peer dials the address it connected to, so a secondary address of an
//   interface (127.0.0.2 added to lo) fails one step later.
// A wildcard address is fine.
std::string listen_address_problem(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) return {};
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) != 0) {
    freeaddrinfo(res);
    return {};
  }
  std::string problem;
  for (const addrinfo* r = res; r != nullptr && problem.empty(); r = r->ai_next) {
    char text[INET6_ADDRSTRLEN] = "?";
    const ifaddrs* owner = nullptr;
    if (r->ai_family == AF_INET) {
      const in_addr a = reinterpret_cast<const sockaddr_in*>(r->ai_addr)->sin_addr;
      if (a.s_addr == htonl(INADDR_ANY)) continue;
      inet_ntop(AF_INET, &a, text, sizeof text);
      for (const ifaddrs* i = ifs; i != nullptr && owner == nullptr; i = i->ifa_next)
        if (i->ifa_addr != nullptr && i->ifa_addr->sa_family == AF_INET &&
            reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr == a.s_addr)
          owner = i;
      if (owner == nullptr) {
        problem = std::string(text) + " is the address of no network interface here";
        break;
      }
      // The primary address is the one SIOCGIFADDR reports (and UCX uses).
      ifreq req{};
      std::strncpy(req.ifr_name, owner->ifa_name, IFNAMSIZ - 1);
      const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
      if (fd >= 0 && ::ioctl(fd, SIOCGIFADDR, &req) == 0) {
        const in_addr primary = reinterpret_cast<const sockaddr_in*>(&req.ifr_addr)->sin_addr;
        char ptext[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &primary, ptext, sizeof ptext);
        if (primary.s_addr != a.s_addr)
          problem = std::string(text) + " is a secondary address of " + owner->ifa_name + " (its primary is " + ptext +
                    ")";
      }
      if (fd >= 0) ::close(fd);
    } else if (r->ai_family == AF_INET6) {
      const in6_addr a = reinterpret_cast<const sockaddr_in6*>(r->ai_addr)->sin6_addr;
      if (std::memcmp(&a, &in6addr_any, sizeof a) == 0) continue;
      inet_ntop(AF_INET6, &a, text, sizeof text);
      for (const ifaddrs* i = ifs; i != nullptr && owner == nullptr; i = i->ifa_next)
        if (i->ifa_addr != nullptr && i->ifa_addr->sa_family == AF_INET6 &&
            std::memcmp(&reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr, &a, sizeof a) == 0)
          owner = i;
      if (owner == nullptr) problem = std::string(text) + " is the address of no network interface here";
    }
  }
  freeifaddrs(ifs);
  freeaddrinfo(res);
  return problem;
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& x : v) out += (out.empty() ? "" : ", ") + x;
  return out;
}

}  // namespace

struct node_runtime::state {
  cluster_config cluster;
  size_t index = 0;  ///< this node's position in cluster.nodes
  std::string where;  ///< "FILE: " for error messages

  std::unique_ptr<caf::actor_system_config> cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<ucx_node> net;
  caf::actor keeper;

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
  std::vector<std::string> elsewhere;  ///< instances the gateway here cannot reach yet
  std::vector<std::string> waiting;    ///< parts on this node that span nodes

  mutable std::mutex mu;
  std::set<std::string> linked;  ///< other nodes with an up link

  const node_config& self() const { return cluster.nodes[index]; }
  void start_links();
  void start_local();
};

node_runtime::node_runtime(cluster_config cluster, const std::string& node) : s_(std::make_unique<state>()) {
  const node_config& n = cluster_config_node(cluster, node);
  s_->index = static_cast<size_t>(&n - cluster.nodes.data());
  s_->where = (cluster.file.empty() ? std::string("cluster config") : cluster.file.string()) + ": ";
  s_->cluster = std::move(cluster);
}

node_runtime::~node_runtime() { stop(); }

const cluster_config& node_runtime::cluster() const { return s_->cluster; }
const node_config& node_runtime::node() const { return s_->self(); }
caf::actor_system& node_runtime::system() { return *s_->sys; }
ucx_node* node_runtime::transport() { return s_->net.get(); }

void node_runtime::start() {
  try {
    s_->cfg = std::make_unique<caf::actor_system_config>();
    messages_register(*s_->cfg);
    register_troupe_errors(*s_->cfg);
    s_->sys = std::make_unique<caf::actor_system>(*s_->cfg);
    if (s_->cluster.nodes.size() > 1) s_->start_links();
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
  o.port = me.port;
  o.heartbeat_interval = ms(lt.heartbeat_interval_ms.value);
  o.heartbeat_timeout = ms(lt.heartbeat_timeout_ms.value);
  o.handshake_timeout = ms(lt.handshake_timeout_ms.value);
  const size_t others = cluster.nodes.size() - 1;
  ucx_node::handlers h;
  h.on_link_up = [this, others](const std::string& peer) {
    size_t n = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      linked.insert(peer);
      n = linked.size();
    }
    actors_log()->info("node {}: link to {} up ({} of {} other nodes linked)", self().name, peer, n, others);
  };
  h.on_link_down = [this](const std::string& peer, const std::string& reason) {
    caf::actor k;
    {
      std::lock_guard<std::mutex> lock(mu);
      linked.erase(peer);
      k = keeper;
    }
    const bool ours = std::any_of(cluster.nodes.begin(), cluster.nodes.begin() + static_cast<long>(index),
                                  [&](const node_config& n) { return n.name == peer; });
    actors_log()->warn("node {}: link to {} down ({}); {}", self().name, peer, reason,
                       !k ? "stopping" : ours ? "reconnecting" : "waiting for it to reconnect");
    if (k) caf::anon_send(k, lost_atom::value, peer);
  };
  h.on_message = [this](const std::string& peer, wire_envelope&&) {
    actors_log()->debug("node {}: dropped an envelope from {}: no remote actors yet", self().name, peer);
  };
  // Nodes declared after this one connect to it: refuse at once what UCX would refuse silently on every attempt.
  if (index + 1 < cluster.nodes.size()) {
    const std::string problem = listen_address_problem(me.listen_host());
    if (!problem.empty())
      throw error(errc::errc_invalid_config,
                  where + "node '" + me.name + "' cannot accept links on " + me.listen_host() + ": " + problem +
                      "; UCX 1.13 accepts links only on an interface's primary address (on one host: every node "
                      "on 127.0.0.1 with its own port, or one network namespace per node with deploy/netns.sh)");
  }
  try {
    net = std::make_unique<ucx_node>(std::move(o), std::move(h));
  } catch (const error& e) {
    throw error(e.code(), where + "node '" + me.name + "' cannot listen on " + me.listen_host() + ":" +
                              std::to_string(me.port) + ": " + e.what());
  }
  std::vector<peer_target> targets;
  std::vector<std::string> accepts;
  for (size_t i = 0; i < cluster.nodes.size(); ++i) {
    const node_config& n = cluster.nodes[i];
    if (i < index) targets.push_back({n.name, n.address, n.port});
    if (i > index) accepts.push_back(n.name);
  }
  std::vector<std::string> names;
  for (const peer_target& t : targets) names.push_back(t.name);
  actors_log()->info("node {}: links on {}:{}; connecting to [{}], accepting [{}]", me.name, me.listen_host(),
                     net->port(), joined(names), joined(accepts));
  // Detached: connect() resolves host names, which may block for seconds (DNS of a pod still starting).
  caf::actor k =
      sys->spawn<caf::detached>(link_keeper, net.get(), std::move(targets), ms(cluster.links.connect_retry_max_ms.value));
  std::lock_guard<std::mutex> lock(mu);
  keeper = k;
}

void node_runtime::state::start_local() {
  const node_config& me = self();
  const bool gateway_here = cluster.gateway.node == me.name;
  std::vector<const instance_config*> local;
  for (const instance_config& ic : cluster.instances) {
    std::vector<std::string> nodes;
    bool all_here = true, any_here = false;
    for (const stage_config& sc : ic.stages) {
      nodes.push_back(sc.node);
      all_here &= sc.node == me.name;
      any_here |= sc.node == me.name;
    }
    const std::string text = ic.name + " (" + ic.role + ", " + std::to_string(ic.stages.size()) + " stage(s) on " +
                             joined(nodes) + ")";
    if (all_here && ic.stages.size() == 1 && ic.role == "mixed")
      local.push_back(&ic);
    else if (any_here)
      waiting.push_back(text);
    else if (gateway_here)
      elsewhere.push_back(text);
  }
  for (const std::string& w : waiting)
    actors_log()->info("node {}: instance {} waits for the remote-actor layer", me.name, w);
  for (const std::string& e : elsewhere)
    actors_log()->info("node {}: instance {} runs elsewhere; the gateway routes to it once remote actors exist",
                       me.name, e);

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
    const gateway_config& g = cluster.gateway;
    const instance_config& first = cluster.instances.front();
    int64_t max_model_len = 0;
    for (const instance_config& ic : cluster.instances) {
      if (ic.model != first.model || ic.chat_template != first.chat_template)
        throw error(errc::errc_invalid_config, where + "instance '" + ic.name +
                                                   "' serves another model or template than '" + first.name +
                                                   "'; one gateway serves one model");
      instance_options io;
      io.model_dir = ic.model;
      io.tunables = ic.tunables;
      const int64_t len = instance_plan_make(io).max_model_len;
      max_model_len = max_model_len == 0 ? len : std::min(max_model_len, len);
    }
    gateway_options go;
    go.host = g.host;
    go.port = g.port;
    go.api_keys = g.api_keys;
    go.admin_key = g.admin_key;
    go.model_name = g.served_model_name;
    go.http_threads = static_cast<int>(g.http_threads);
    go.max_queue = static_cast<int32_t>(g.max_queue);
    go.max_body_bytes = static_cast<size_t>(g.max_body_mib) << 20;
    go.model_dir = first.model;
    go.chat_template_file = first.chat_template;
    go.max_model_len = max_model_len;
    router = router_spawn(*sys);
    admin = admin_spawn(*sys, router);
    for (const instance_config* ic : local) caf::anon_send(router, join_atom::value, instance_join{ic->name, "mixed", {}, ""});
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
      if (router) caf::anon_send(router, join_atom::value, instance_join{ic->name, "mixed", {}, e.what()});
      throw error(e.code(), where + "instance '" + ic->name + "': " + e.what());
    }
    if (router) caf::anon_send(router, join_atom::value, instance_join{ic->name, "mixed", h, ""});
    instances.push_back({ic->name, io.device, h});
    actors_log()->info("node {}: instance {} loaded {} on {}", me.name, ic->name, ic->model.string(), io.device);
  }
}

bool node_runtime::ready() {
  if (!s_->sys) return false;
  {
    std::lock_guard<std::mutex> lock(s_->mu);
    if (s_->linked.size() + 1 < s_->cluster.nodes.size()) return false;
  }
  for (const state::local_instance& li : s_->instances) {
    caf::scoped_actor self{*s_->sys};
    bool up = false;
    self->request(li.handle, std::chrono::seconds(5), state_atom::value)
        .receive([&](const instance_state& st) { up = st.status == "ready"; }, [&](const caf::error&) {});
    if (!up) return false;
  }
  return true;
}

std::string node_runtime::describe() const {
  const state& s = *s_;
  const node_config& me = s.self();
  std::vector<std::string> parts;
  if (s.net) {
    std::vector<std::string> up;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      up.assign(s.linked.begin(), s.linked.end());
    }
    parts.push_back("links on " + me.listen_host() + ":" + std::to_string(s.net->port()) + " up to " +
                    (up.empty() ? std::string("none") : joined(up)));
  } else {
    parts.push_back("one-node cluster (no links)");
  }
  if (s.gw) parts.push_back("gateway http://" + s.cluster.gateway.host + ":" + std::to_string(s.gateway_port));
  for (const state::local_instance& li : s.instances) parts.push_back("instance " + li.name + " on " + li.device);
  if (!s.elsewhere.empty()) parts.push_back("instances on other nodes, not routed yet: " + joined(s.elsewhere));
  if (!s.waiting.empty()) parts.push_back("waiting for remote actors: " + joined(s.waiting));
  if (!s.gw && s.instances.empty() && s.waiting.empty()) parts.push_back("no gateway or instance here");
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
  {  // the keeper uses the transport: it must be gone first (and no handle to it may outlive this block)
    caf::actor k;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      std::swap(k, s.keeper);
    }
    if (k) {
      caf::scoped_actor self{*s.sys};
      caf::anon_send_exit(k, caf::exit_reason::user_shutdown);
      self->wait_for(k);
    }
  }
  s.net.reset();  // says goodbye: peers see link_down at once
  s.gw.reset();
  s.instances.clear();
  s.router = nullptr;
  s.admin = nullptr;
  s.sys.reset();  // waits for every actor
  s.cfg.reset();
}

}  // namespace troupe
