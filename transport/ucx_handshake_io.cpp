// The handshake's sockets of ucx_node: the node's TCP listener, a
// non-blocking connection per link in the handshake, frames in and out
// (ucx_handshake.hpp). Why TCP of our own and not UCX's socket-address
// listener: UCX 1.13's tcp_sockcm aborts the whole process when a client
// sends more bytes than its connection header announces (4 KiB of zeros
// do), before any code of ours could refuse it. Here every byte from an
// unauthenticated peer is read by this file under a size limit and a
// deadline; UCX endpoints are opened only to worker addresses that came
// with a valid proof. All of it runs on the progress thread, which polls
// these descriptors with UCX's event fd.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "transport/ucx_node_impl.hpp"

namespace troupe {

using namespace ucx_detail;
namespace hs = ucx_handshake;
using impl = ucx_node::impl;

namespace {

std::string address_text(const sockaddr_storage& sa) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (sa.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (sa.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

// Small frames answered at once: Nagle's delay would only add latency.
void no_delay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool in_handshake(const link& l) {
  return l.fd >= 0;
}

}  // namespace

void impl::open_listener() {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(opt_.port);
  const int rc = getaddrinfo(opt_.host.empty() ? nullptr : opt_.host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr)
    throw error(errc::errc_invalid_argument,
                "ucx_node '" + opt_.name + "': listener cannot resolve '" + opt_.host + "': " + gai_strerror(rc));
  const int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  // A node restarted on its fixed port (systemd, Kubernetes) must not wait
  // ~60 s for the old connections' TIME_WAIT.
  const int one = 1;
  const bool ok = fd >= 0 && ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
                  ::bind(fd, res->ai_addr, res->ai_addrlen) == 0 && ::listen(fd, 128) == 0;
  const int err = errno;
  freeaddrinfo(res);
  if (!ok) {
    if (fd >= 0) ::close(fd);
    throw error(errc::errc_io, "node '" + opt_.name + "' cannot listen on " + opt_.host + ":" +
                                   std::to_string(opt_.port) + ": " + std::strerror(err));
  }
  sockaddr_storage sa{};
  socklen_t len = sizeof sa;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    const int e = errno;
    ::close(fd);
    throw error(errc::errc_io, "node '" + opt_.name + "': getsockname: " + std::strerror(e));
  }
  port_ = ntohs(sa.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&sa)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&sa)->sin_port);
  listen_fd_ = fd;
}

void impl::start_client(const sockaddr_storage& addr, socklen_t len, std::string where, std::string expected_name) {
  if (shutting_down_) return;
  link* l = new_link(true, std::move(where));
  if (l == nullptr) return;
  l->expected_name = std::move(expected_name);
  l->fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (l->fd < 0) return fail_link(l, std::string("socket: ") + std::strerror(errno), link_end::dead);
  no_delay(l->fd);
  if (::connect(l->fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0 && errno != EINPROGRESS)
    return fail_link(l, std::string("connect: ") + std::strerror(errno), link_end::dead);
  hs::hello m;
  m.link = l->id;
  m.token = l->my_token;
  m.name = opt_.name;
  m.boot_id = offered_boot_id();
  m.n = l->my_nonce;
  l->out = hs::frame(hs::frame_hello, hs::encode(m));  // written once the connect finishes
  transport_log()->debug("node {}: connecting to {}", opt_.name, l->where);
}

bool impl::refusal_logged() {
  const clock::time_point now = clock::now();
  if (now - refusal_window_ >= std::chrono::seconds(1)) {
    if (refusals_suppressed_ > 0)
      transport_log()->warn("node {}: {} more refused connections not logged", opt_.name, refusals_suppressed_);
    refusal_window_ = now;
    refusals_logged_ = refusals_suppressed_ = 0;
  }
  if (refusals_logged_ < max_refusal_logs_per_second) {
    ++refusals_logged_;
    return true;
  }
  ++refusals_suppressed_;
  return false;
}

void impl::accept_connections() {
  for (int round = 0; round < 256; ++round) {  // bounded: the loop has other work too
    sockaddr_storage sa{};
    socklen_t len = sizeof sa;
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      // Out of descriptors or memory: the listener stays readable, so wait
      // before trying again instead of spinning on it.
      listen_paused_until_ = clock::now() + std::chrono::milliseconds(100);
      if (refusal_logged()) transport_log()->warn("node {}: accept: {}", opt_.name, std::strerror(errno));
      return;
    }
    if (shutting_down_) {
      ::close(fd);
      continue;
    }
    // Accepted connections still in the handshake; past the limit the oldest
    // one that has not said hello makes room, else this one is refused.
    size_t pending = 0;
    link* oldest_silent = nullptr;
    for (const auto& [id, l] : links_) {
      if (l->client || !in_handshake(*l) || l->state == link_state::up) continue;
      ++pending;
      if (l->state == link_state::awaiting_hello && (oldest_silent == nullptr || l->deadline < oldest_silent->deadline))
        oldest_silent = l.get();
    }
    if (pending >= max_pending_handshakes) {
      if (oldest_silent == nullptr) {
        ++c_.handshakes_failed;
        if (refusal_logged())
          transport_log()->warn("node {}: refused a connection from {}: too many handshakes in progress", opt_.name,
                                address_text(sa));
        ::close(fd);
        continue;
      }
      fail_link(oldest_silent, "silent while the handshake limit was reached", link_end::dead);
    }
    link* l = new_link(false, address_text(sa));
    if (l == nullptr) {
      ::close(fd);
      continue;
    }
    no_delay(fd);
    l->fd = fd;
  }
}

void impl::socket_pollfds(std::vector<pollfd>& fds) const {
  // While paused the listener is left out; the entry stays so that indices
  // line up, with fd -1 (poll ignores it).
  fds.push_back({clock::now() < listen_paused_until_ ? -1 : listen_fd_, POLLIN, 0});
  for (const auto& [id, l] : links_) {
    if (!in_handshake(*l)) continue;
    const bool want_out = !l->out.empty() || (l->client && !l->tcp_connected);
    fds.push_back({l->fd, static_cast<short>(POLLIN | (want_out ? POLLOUT : 0)), 0});
  }
}

void impl::on_socket_events(const pollfd* fds, size_t n) {
  std::vector<std::pair<int, short>> ready;
  for (size_t i = 0; i < n; ++i)
    if (fds[i].revents != 0) ready.emplace_back(fds[i].fd, fds[i].revents);
  for (const auto& [fd, revents] : ready) {
    if (fd == listen_fd_) {
      accept_connections();
      continue;
    }
    // The link may have closed (and its descriptor number been reused) by an
    // earlier entry's handling: find it by descriptor now.
    link* owner = nullptr;
    for (auto& [id, l] : links_)
      if (l->fd == fd) owner = l.get();
    if (owner != nullptr) on_socket(owner, revents);
  }
}

void impl::poll_sockets() {
  std::vector<pollfd> fds;
  socket_pollfds(fds);
  if (::poll(fds.data(), fds.size(), 0) > 0) on_socket_events(fds.data(), fds.size());
}

void impl::send_frame(link* l, hs::frame_type type, const std::vector<char>& body) {
  const std::vector<char> f = hs::frame(type, body);
  l->out.insert(l->out.end(), f.begin(), f.end());
  on_socket(l, POLLOUT);
}

void impl::close_socket(link* l) {
  if (l->fd < 0) return;
  ::close(l->fd);
  l->fd = -1;
  l->in.clear();
  l->out.clear();
}

void impl::on_socket(link* l, short revents) {
  if (l->client && !l->tcp_connected) {
    if ((revents & (POLLOUT | POLLERR | POLLHUP)) == 0) return;
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return fail_link(l, std::string("connect: ") + std::strerror(err), link_end::dead);
    l->tcp_connected = true;
  }
  // Write what is queued.
  while (!l->out.empty()) {
    const ssize_t n = ::send(l->fd, l->out.data(), l->out.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      // Up (a server writing its accept) or not, the peer did not get it all.
      return fail_link(l, std::string("handshake connection: ") + std::strerror(errno),
                       l->state == link_state::up ? link_end::refused : link_end::dead);
    }
    l->out.erase(l->out.begin(), l->out.begin() + n);
  }
  if (l->out.empty() && l->close_after_flush) return close_socket(l);
  if ((revents & (POLLIN | POLLHUP | POLLERR)) == 0) return;
  // Read whole frames, one step each; bytes of a frame not yet complete wait.
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(l->fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      if (l->state == link_state::up)  // a server whose accept is not all written: the client never got it
        return fail_link(l, "the connection closed before the accept was delivered", link_end::refused);
      return fail_link(l,
                       n == 0 ? "the peer closed the connection during the handshake (it refused the link, or is no "
                                "troupe node)"
                              : std::string("handshake connection: ") + std::strerror(errno),
                       link_end::dead);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (l->state == link_state::up || l->close_after_flush)
      return fail_link(l, "bytes after the handshake on its connection", link_end::refused);
    l->in.insert(l->in.end(), buf, buf + n);
    while (l->fd >= 0 && l->in.size() >= hs::frame_head_bytes) {
      const auto* p = reinterpret_cast<const unsigned char*>(l->in.data());
      const size_t size = (size_t{p[0]} << 24) | (size_t{p[1]} << 16) | (size_t{p[2]} << 8) | size_t{p[3]};
      if (size == 0 || size - 1 > hs::max_message_bytes)
        return fail_link(l, "handshake frame of " + std::to_string(size) + " bytes (at most " +
                                std::to_string(hs::max_message_bytes + 1) + ")",
                         link_end::refused);
      if (l->in.size() < 4 + size) break;
      const unsigned type = p[4];
      const std::vector<char> body(l->in.begin() + hs::frame_head_bytes, l->in.begin() + 4 + static_cast<long>(size));
      l->in.erase(l->in.begin(), l->in.begin() + 4 + static_cast<long>(size));
      // Exactly one frame type is acceptable in each state.
      struct step {
        link_state state;
        bool client;
        unsigned type;
        void (impl::*run)(link*, const char*, size_t);
        const char* name;
      };
      static const step steps[] = {
          {link_state::awaiting_hello, false, hs::frame_hello, &impl::server_hello, "hello"},
          {link_state::connecting, true, hs::frame_challenge, &impl::client_challenge, "challenge"},
          {link_state::awaiting_auth, false, hs::frame_auth, &impl::server_auth, "auth"},
          {link_state::awaiting_accept, true, hs::frame_accept, &impl::client_accept, "accept"},
      };
      const step* s = nullptr;
      for (const step& x : steps)
        if (x.state == l->state && x.client == l->client) s = &x;
      if (s == nullptr || s->type != type)
        return fail_link(l,
                         "unexpected handshake frame of type " + std::to_string(type) +
                             (s != nullptr ? std::string(" (expected the ") + s->name + ")" : std::string()),
                         link_end::refused);
      try {
        (this->*(s->run))(l, body.data(), body.size());
      } catch (const std::exception& e) {
        return fail_link(l, std::string(s->name) + ": " + e.what(), link_end::refused);
      }
      if (l->state == link_state::closed) return;
    }
    if (l->fd < 0) return;
  }
}

}  // namespace troupe
