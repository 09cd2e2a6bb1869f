// The link keeper's behaviour (the design is in node_links.hpp) and the
// check of a listener address against UCX 1.13's rules. The keeper holds no
// lock and calls only node_system's thread-safe, non-blocking members.
#include "actors/node_links.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <sys/ioctl.h>
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

// Two traps, both silent in UCX, where every connection attempt just fails:
// - its server side looks the listener's address up among the interfaces and
//   refuses the connection when none has it (127.0.0.2 on a lo that only has
//   127.0.0.1, although the kernel accepts the socket);
// - its tcp transport listens on each interface's primary IPv4 address but
//   the peer dials the address it connected to, so a secondary address of an
//   interface (127.0.0.2 added to lo) fails one step later.
// A wildcard address is fine.
std::string node_links_listen_problem(const std::string& host) {
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

}  // namespace troupe
