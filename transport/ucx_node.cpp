// Start-up, the progress loop and the public calls of ucx_node (the design is
// in ucx_node.hpp; the handshake steps and links in ucx_link.cpp, their
// sockets in ucx_handshake_io.cpp, the receive path in ucx_receive.cpp).
//
// The loop: run queued commands, progress the worker until it has nothing
// left, run what callbacks deferred, send heartbeats and check deadlines,
// then arm the worker and sleep in poll() on its event fd, our eventfd, the
// TCP listener and the sockets of handshakes in progress until one of them
// has an event or the next timer is due.
// Within options.busy_poll of traffic (an envelope in, a command, an inline
// send) it does not sleep but loops again, yielding the core between rounds:
// the answer to a request just sent is then picked up without a wake-up.
//
// Sends: a round trip between actors on two nodes crosses threads several
// times (actor -> progress thread -> peer's progress thread -> peer's actor
// and back), and each wake-up of a sleeping thread costs tens of
// microseconds on a busy host. So an envelope is sent from the calling
// thread itself when that is safe: the UCX lock is free (try_lock, never a
// wait) and no earlier command is still queued (which keeps the order of one
// caller's sends). The worker runs in UCS_THREAD_MODE_SERIALIZED for that:
// several threads, one at a time. Everything else, and every callback into
// the user, stays on the progress thread.
#include <cstdlib>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <thread>

#include "transport/net_device.hpp"
#include "transport/ucx_node_impl.hpp"
#include "transport/ucx_util.hpp"

namespace troupe {

using namespace ucx_detail;

namespace {

// host:port → socket address; errc_invalid_argument (why in *why) when it does not resolve.
errc resolve(const std::string& host, uint16_t port, bool passive, sockaddr_storage& out, socklen_t& len,
             std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    *why = "cannot resolve '" + host + "': " + gai_strerror(rc);
    return errc::errc_invalid_argument;
  }
  std::memcpy(&out, res->ai_addr, res->ai_addrlen);
  len = res->ai_addrlen;
  freeaddrinfo(res);
  return errc::ok;
}

void send_done(void* request, ucs_status_t status, void* user_data);

// An active message in flight: its header and bytes must outlive the send.
struct send_op {
  ucx_node::impl* owner;
  am_header header;
  std::vector<char> bytes;
};

void send_done(void* request, ucs_status_t status, void* user_data) {
  auto* op = static_cast<send_op*>(user_data);
  if (status != UCS_OK && status != UCS_ERR_CANCELED)
    transport_log()->debug("active message send failed: {}", ucs_status_string(status));
  --op->owner->outstanding_;
  delete op;
  ucp_request_free(request);
}

}  // namespace

// ---- start-up and teardown ----

ucx_node::impl::impl(ucx_node_options o, handlers h) : opt_(std::move(o)), h_(std::move(h)) {
  if (opt_.name.empty() || opt_.name.size() > ucx_handshake::max_name_bytes)
    throw error(errc::errc_invalid_argument, "ucx_node: name must have 1..255 bytes, got '" + opt_.name + "'");
  if (opt_.secret.empty()) throw error(errc::errc_invalid_argument, "ucx_node '" + opt_.name + "': secret is empty");
  if (opt_.heartbeat_interval.count() <= 0 || opt_.heartbeat_timeout <= opt_.heartbeat_interval)
    throw error(errc::errc_invalid_argument, "ucx_node '" + opt_.name +
                                                 "': need 0 < heartbeat_interval < heartbeat_timeout, got " +
                                                 std::to_string(opt_.heartbeat_interval.count()) + " ms and " +
                                                 std::to_string(opt_.heartbeat_timeout.count()) + " ms");
  if (opt_.handshake_timeout.count() <= 0)
    throw error(errc::errc_invalid_argument, "ucx_node '" + opt_.name + "': handshake_timeout must be positive");
  boot_id_ = ucx_handshake::local_boot_id();

  ucp_config_t* config = nullptr;
  TROUPE_UCS_CHECK(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read");
  // Pin the links to the interface peers reach this node on (an explicit
  // UCX_NET_DEVICES wins): UCX would otherwise also advertise, and may pick,
  // interfaces the peer cannot reach.
  std::string device;
  if (std::getenv("UCX_NET_DEVICES") == nullptr) {
    device = net_device_for(opt_.host);
    if (device.empty()) device = net_device_for(opt_.advertised_host);
    if (!device.empty()) {
      const ucs_status_t mst = ucp_config_modify(config, "NET_DEVICES", device.c_str());
      if (mst != UCS_OK) {
        ucp_config_release(config);
        TROUPE_UCS_CHECK(mst, "ucp_config_modify NET_DEVICES=" + device);
      }
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_TAG | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.name = opt_.name.c_str();
  const ucs_status_t st = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  TROUPE_UCS_CHECK(st, "ucp_init");

  try {
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // the progress thread or an inline sender, under ucx_mu_
    TROUPE_UCS_CHECK(ucp_worker_create(context_, &wp, &worker_), "ucp_worker_create");
    TROUPE_UCS_CHECK(ucp_worker_get_efd(worker_, &worker_fd_), "ucp_worker_get_efd");
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw error(errc::errc_io, std::string("ucx_node: eventfd: ") + std::strerror(errno));
    register_am_handlers();

    ucp_address_t* addr = nullptr;
    size_t len = 0;
    TROUPE_UCS_CHECK(ucp_worker_get_address(worker_, &addr, &len), "ucp_worker_get_address");
    worker_address_.assign(reinterpret_cast<const char*>(addr), reinterpret_cast<const char*>(addr) + len);
    ucp_worker_release_address(worker_, addr);
    if (worker_address_.size() > ucx_handshake::max_message_bytes - 64)
      throw error(errc::errc_io, "ucx_node '" + opt_.name + "': the UCX worker address has " +
                                     std::to_string(len) + " bytes, more than a handshake message holds " +
                                     "(restrict UCX_NET_DEVICES / UCX_TLS)");
    open_listener();
  } catch (...) {
    if (listen_fd_ >= 0) close(listen_fd_);
    if (wake_fd_ >= 0) close(wake_fd_);
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    ucp_cleanup(context_);
    throw;
  }
  next_heartbeat_ = clock::now() + opt_.heartbeat_interval;
  transport_log()->info("node {} listening on {}:{} (shared memory {}, UCX network device {})", opt_.name,
                        opt_.host, port_, opt_.shared_memory ? "on" : "off", device.empty() ? "any" : device);
  thread_ = std::thread([this] { run(); });
}

ucx_node::impl::~impl() {
  stop_ = true;
  wake();
  if (thread_.joinable()) thread_.join();
  close(wake_fd_);
  ucp_cleanup(context_);
}

void ucx_node::impl::shutdown() {
  shutting_down_ = true;
  // Let envelopes already handed to UCX arrive (a rendezvous send completes
  // once the peer has fetched it), then say goodbye with the number of
  // envelopes sent: up peers see link_down once those are delivered.
  auto drain = [this](std::chrono::milliseconds limit) {
    const auto deadline = clock::now() + limit;
    while (outstanding_ > 0 && clock::now() < deadline) ucp_worker_progress(worker_);
  };
  drain(std::chrono::milliseconds(1000));
  for (auto& [id, l] : links_)
    if (l->state == link_state::up) send_routed(l.get(), am_bye, l->header_to_peer(l->next_seq), {}, nullptr);
  drain(std::chrono::milliseconds(200));
  std::vector<uint32_t> ids;
  for (auto& [id, l] : links_) ids.push_back(id);
  for (uint32_t id : ids) close_endpoints(id, false);
  const auto close_deadline = clock::now() + std::chrono::seconds(1);
  while ((!closing_.empty() || outstanding_ > 0) && clock::now() < close_deadline) {
    ucp_worker_progress(worker_);
    run_deferred();
    reap_closing();
  }
  if (!closing_.empty() || outstanding_ > 0)
    transport_log()->warn("node {}: {} endpoints and {} operations still open at shutdown", opt_.name, closing_.size(),
                          outstanding_);
  for (auto& [id, l] : links_) close_socket(l.get());
  for (auto& l : closing_) close_socket(l.get());
  close(listen_fd_);
  ucp_worker_destroy(worker_);
  finished_ = true;
  deferred_.clear();
  closing_.clear();
  links_.clear();
}

// ---- the progress loop ----

void ucx_node::impl::post(std::function<void()> fn) {
  bool was_empty = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    was_empty = commands_.empty();
    commands_.push_back(std::move(fn));
  }
  // A non-empty queue already has a wake-up pending; a thread that is not
  // sleeping checks the queue before it does (run() sets sleeping_ first).
  if (was_empty && sleeping_.load()) wake();
}

void ucx_node::impl::wake() {
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof one) < 0 && errno != EAGAIN)
    transport_log()->error("node {}: eventfd write: {}", opt_.name, std::strerror(errno));
}

bool ucx_node::impl::run_commands() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch.swap(commands_);
  }
  for (auto& fn : batch) fn();
  return !batch.empty();
}

void ucx_node::impl::run_deferred() {
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
  }
}

void ucx_node::impl::reap_closing() {
  for (auto it = closing_.begin(); it != closing_.end();)
    it = ucx_util::reap_requests((*it)->close_requests) ? closing_.erase(it) : it + 1;
}

int ucx_node::impl::poll_timeout_ms(clock::time_point now) const {
  clock::time_point next = next_heartbeat_;
  if (listen_paused_until_ > now) next = std::min(next, listen_paused_until_);
  for (const auto& [id, l] : links_) {
    if (l->state == link_state::up)
      next = std::min(next, l->last_heard + opt_.heartbeat_timeout);
    else if (l->state != link_state::closed)
      next = std::min(next, l->deadline);
  }
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
  return static_cast<int>(std::clamp<int64_t>(ms, 0, INT_MAX));
}

void ucx_node::impl::tick(clock::time_point now) {
  const bool beat = now >= next_heartbeat_;
  if (beat) next_heartbeat_ = now + opt_.heartbeat_interval;
  std::vector<link*> snapshot;
  for (auto& [id, l] : links_) snapshot.push_back(l.get());
  for (link* l : snapshot) {
    if (l->state == link_state::closed) continue;
    if (l->state != link_state::up) {
      if (now >= l->deadline)
        fail_link(l, "did not finish the handshake within " + std::to_string(opt_.handshake_timeout.count()) + " ms",
                  link_end::dead);
      continue;
    }
    if (now - l->last_heard >= opt_.heartbeat_timeout) {
      fail_link(l, "silent for " + std::to_string(opt_.heartbeat_timeout.count()) + " ms (heartbeat timeout)",
                link_end::dead);
      continue;
    }
    if (beat) send_am(l->ep, am_heartbeat, l->header_to_peer(), {});
  }
}

void ucx_node::impl::run() {
  progress_id_ = std::this_thread::get_id();
  pthread_setname_np(pthread_self(), "troupe.ucx");  // for top, perf and the benchmarks
  std::unique_lock<std::mutex> ucx(ucx_mu_);
  std::vector<pollfd> fds;
  const bool busy_poll = opt_.busy_poll.count() > 0;
  clock::time_point busy_until{}, next_tick{}, contended_until{};
  const clock::duration contention_threshold =
      std::max<clock::duration>(std::chrono::milliseconds(1), 2 * opt_.busy_poll);
  for (;;) {
    const bool ran = run_commands();
    if (stop_) break;
    bool progressed = false;
    while (ucp_worker_progress(worker_) != 0) progressed = true;
    run_deferred();
    const clock::time_point now = clock::now();
    bool busy = false;
    const bool contended = now < contended_until;
    if (busy_poll && !contended) {
      if (ran || progressed) busy_until = now + opt_.busy_poll;
      const clock::time_point sent{clock::duration(inline_sent_ns_.load())};
      busy_until = std::max(busy_until, sent + opt_.busy_poll);
      busy = now < busy_until;
    }
    // Timers have millisecond resolution: while busy-polling, once a millisecond is enough.
    if (!busy || now >= next_tick) {
      if (busy) poll_sockets();  // otherwise the poll() below watches them
      tick(now);
      run_deferred();
      next_tick = now + std::chrono::milliseconds(1);
    }
    reap_closing();
    if (busy) {
      ucx.unlock();  // an inline sender may take it meanwhile
      const clock::time_point yielded = clock::now();
      std::this_thread::yield();
      // A yield that gave the core away for a millisecond or more means
      // other threads keep this core busy (a CAF worker handling the message
      // just delivered takes tens of microseconds): polling would only queue
      // this thread behind them (measured: a remote round trip 5-7x slower
      // beside three busy processes on two cores). Sleep in poll() for a
      // while instead, where the event wakes it with the scheduler's priority.
      if (clock::now() - yielded >= contention_threshold) contended_until = clock::now() + std::chrono::milliseconds(20);
      ucx.lock();
      continue;
    }
    const ucs_status_t st = ucp_worker_arm(worker_);
    if (st == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    if (st != UCS_OK) transport_log()->error("node {}: ucp_worker_arm: {}", opt_.name, ucs_status_string(st));
    sleeping_ = true;  // before looking at the queue and the last inline send: post() and send_inline() then wake us
    bool queued = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queued = !commands_.empty();
    }
    if (busy_poll && !contended &&
        clock::time_point{clock::duration(inline_sent_ns_.load())} + opt_.busy_poll > clock::now())
      queued = true;  // an inline send since the check above: poll for its answer
    if (queued) {
      sleeping_ = false;
      continue;
    }
    fds.assign({{worker_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}});
    socket_pollfds(fds);
    ucx.unlock();
    const int n = ::poll(fds.data(), fds.size(), st == UCS_OK ? poll_timeout_ms(clock::now()) : 1);
    ucx.lock();
    sleeping_ = false;
    if (n > 0 && (fds[1].revents & POLLIN) != 0) {
      uint64_t v = 0;
      (void)!read(wake_fd_, &v, sizeof v);
    }
    if (n > 0) on_socket_events(fds.data() + 2, fds.size() - 2);
  }
  shutdown();
}

bool ucx_node::impl::send_am(ucp_ep_h ep, unsigned id, const am_header& h, std::vector<char> bytes, uint32_t flags) {
  auto* op = new send_op{this, h, std::move(bytes)};
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.cb.send = send_done;
  p.user_data = op;
  p.flags = flags;
  const ucs_status_ptr_t r =
      ucp_am_send_nbx(ep, id, &op->header, sizeof op->header, op->bytes.data(), op->bytes.size(), &p);
  if (UCS_PTR_IS_ERR(r)) {
    transport_log()->warn("node {}: active message {} not sent: {}", opt_.name, id,
                          ucs_status_string(UCS_PTR_STATUS(r)));
    delete op;
    return false;
  }
  if (r == nullptr)
    delete op;  // sent at once; the callback will not run
  else
    ++outstanding_;
  return true;
}

bool ucx_node::impl::send_routed(link* l, unsigned id, const am_header& h, std::vector<char> bytes, bool* ok) {
  const bool shm = l->data_ep != nullptr && bytes.size() <= shm_eager_max_bytes;
  const bool sent = shm ? send_am(l->data_ep, id, h, std::move(bytes), UCP_AM_SEND_FLAG_EAGER)
                        : send_am(l->ep, id, h, std::move(bytes));
  if (ok != nullptr) *ok = sent;
  return shm;
}

// ---- the public face ----

ucx_node::ucx_node(ucx_node_options options, handlers h)
    : impl_(std::make_unique<impl>(std::move(options), std::move(h))) {}

ucx_node::~ucx_node() = default;

const std::string& ucx_node::name() const { return impl_->opt_.name; }

uint16_t ucx_node::port() const { return impl_->port_; }

errc ucx_node::connect(const std::string& host, uint16_t port, const std::string& expected_name) {
  sockaddr_storage sa{};
  socklen_t len = 0;
  std::string why;
  if (resolve(host, port, false, sa, len, &why) != errc::ok) {
    transport_log()->error("node {}: connect: {}", impl_->opt_.name, why);
    return errc::errc_invalid_argument;
  }
  impl* self = impl_.get();
  std::string where = host + ":" + std::to_string(port);
  self->post(
      [self, sa, len, where = std::move(where), expected_name] { self->start_client(sa, len, where, expected_name); });
  return errc::ok;
}

errc ucx_node::send(const std::string& node, const wire_envelope& envelope) {
  if (envelope.payload.size() > UINT32_MAX) return errc::errc_invalid_argument;
  return send_raw(node, wire_encode(envelope));
}

errc ucx_node::send_raw(const std::string& node, std::vector<char> bytes) {
  impl* self = impl_.get();
  {
    std::lock_guard<std::mutex> lock(self->mu_);
    if (self->up_names_.count(node) == 0) return errc::errc_invalid_argument;
  }
  if (self->send_inline(node, bytes)) return errc::ok;
  self->post([self, node, bytes = std::move(bytes)]() mutable {
    self->send_envelope_now(node, std::move(bytes), true);
  });
  return errc::ok;
}

bool ucx_node::impl::send_inline(const std::string& node, std::vector<char>& bytes) {
  // The progress thread (a handler sending) already holds the lock: post, as
  // before, so nothing is sent from inside a callback.
  if (std::this_thread::get_id() == progress_id_.load()) return false;
  std::unique_lock<std::mutex> ucx(ucx_mu_, std::try_to_lock);
  if (!ucx.owns_lock() || finished_ || stop_) return false;
  {
    // Queued commands may hold this caller's earlier sends: keep the order.
    std::lock_guard<std::mutex> lock(mu_);
    if (!commands_.empty()) return false;
  }
  const size_t before = outstanding_;
  send_envelope_now(node, std::move(bytes), false);
  const bool pending = outstanding_ > before;
  ucx.unlock();
  if (opt_.busy_poll.count() > 0) {
    // The answer is likely to come soon: have the progress thread poll for
    // it (woken now, off the critical path, while the envelope travels).
    inline_sent_ns_.store(clock::now().time_since_epoch().count());  // then sleeping_: see run()
    if (sleeping_.load()) wake();
  } else if (pending) {
    wake();  // UCX holds a request that only progress completes
  }
  return true;
}

void ucx_node::impl::send_envelope_now(const std::string& node, std::vector<char> bytes, bool on_progress_thread) {
  auto it = by_name_.find(node);
  link* l = it == by_name_.end() ? nullptr : find(it->second);
  if (l == nullptr || l->state != link_state::up) {
    ++c_.dropped_no_link;
    transport_log()->warn("node {}: envelope to {} dropped: the link went down", opt_.name, node);
    return;
  }
  bool ok = false;
  const bool shm = send_routed(l, am_envelope, l->header_to_peer(l->next_seq++), std::move(bytes), &ok);
  if (!ok) {  // the peer would wait for this sequence number forever
    if (on_progress_thread) return fail_link(l, "an envelope could not be sent", link_end::dead);
    // link_down runs on the progress thread; later sends queue behind this.
    post([this, id = l->id] {
      if (link* x = find(id)) fail_link(x, "an envelope could not be sent", link_end::dead);
    });
    return;
  }
  ++c_.sent;
  if (shm) ++c_.sent_shared_memory;
}

std::vector<std::string> ucx_node::peers() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return {impl_->up_names_.begin(), impl_->up_names_.end()};
}

ucx_node_counters ucx_node::counters() const {
  const auto& c = impl_->c_;
  ucx_node_counters out;
  out.sent = c.sent;
  out.delivered = c.delivered;
  out.received_rendezvous = c.received_rendezvous;
  out.dropped_malformed = c.dropped_malformed;
  out.dropped_oversized = c.dropped_oversized;
  out.dropped_version = c.dropped_version;
  out.dropped_unauthenticated = c.dropped_unauthenticated;
  out.dropped_no_link = c.dropped_no_link;
  out.auth_failures = c.auth_failures;
  out.handshakes_failed = c.handshakes_failed;
  out.links_up = c.links_up;
  out.links_down = c.links_down;
  out.shared_memory_endpoints = c.shared_memory_endpoints;
  out.sent_shared_memory = c.sent_shared_memory;
  return out;
}

}  // namespace troupe
