// Start-up, the progress loop, registration and the public calls of the ucx
// transfer engine (the design is in transfer_engine_ucx.hpp).
//
// The loop (as in ucx_node): run posted commands, progress the worker until
// it has nothing left, run what callbacks deferred, check deadlines, then arm
// the worker and sleep in poll() on its event fd and an eventfd until UCX has
// an event, a caller posts work, or the next deadline is due; with nothing
// pending the sleep has no timeout. Registration runs on the progress thread
// too (callers wait for it), so regions are touched by one thread only.
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <future>
#include <netdb.h>

#include "transport/net_device.hpp"
#include "transport/transfer_engine_ucx_impl.hpp"
#include "transport/ucx_util.hpp"

namespace troupe {

namespace te_ucx {

void request_cb(void* request, ucs_status_t status, void* user_data) {
  std::unique_ptr<request_ctx> ctx(static_cast<request_ctx*>(user_data));
  ctx->owner->in_ucx_.erase(ctx.get());
  ucp_request_free(request);
  if (ctx->then) ctx->then(status);
}

void recv_request_cb(void* request, ucs_status_t status, size_t, void* user_data) {
  request_cb(request, status, user_data);
}

// ---- start-up and teardown ----

impl::impl(const ucx_engine_options& o) : opt_(o) {
  if (opt_.timeout.count() <= 0 || opt_.connect_timeout.count() <= 0)
    throw error(errc::errc_invalid_argument, "transfer_engine ucx '" + opt_.name + "': timeouts must be positive");
  address_.engine = te_util::random_id();
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);
  address_.host = host;
  address_.shared_memory = opt_.shared_memory;
  address_.host_id = te_util::host_id();
  address_.pid = static_cast<uint32_t>(getpid());
  address_.start_time = own_start_time();
  address_.pid_namespace = own_pid_namespace();

  ucp_config_t* config = nullptr;
  TROUPE_TE_UCS_CHECK(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read");
  const std::string device = std::getenv("UCX_NET_DEVICES") == nullptr ? net_device_for(opt_.advertised_host) : "";
  if (!device.empty()) {
    const ucs_status_t mst = ucp_config_modify(config, "NET_DEVICES", device.c_str());
    if (mst != UCS_OK) {
      ucp_config_release(config);
      TROUPE_TE_UCS_CHECK(mst, "ucp_config_modify NET_DEVICES=" + device);
    }
  }
  // No cma: UCX 1.13 aborts this process when a cma copy finds its peer
  // process gone (a NONE endpoint has no error path), so one peer that dies
  // in the middle of a transfer would take this one with it. Same-host
  // rendezvous then goes through the shared-memory fifos; regions in a
  // shared_host_buffer take the mapped path, which is faster than cma was.
  if (std::getenv("UCX_TLS") == nullptr) {
    const ucs_status_t tst = ucp_config_modify(config, "TLS", "^cma");
    if (tst != UCS_OK) {
      ucp_config_release(config);
      TROUPE_TE_UCS_CHECK(tst, "ucp_config_modify TLS=^cma");
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.name = opt_.name.c_str();
  const ucs_status_t st = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  TROUPE_TE_UCS_CHECK(st, "ucp_init");

  try {
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread calls into the worker
    TROUPE_TE_UCS_CHECK(ucp_worker_create(context_, &wp, &worker_), "ucp_worker_create");
    TROUPE_TE_UCS_CHECK(ucp_worker_get_efd(worker_, &worker_fd_), "ucp_worker_get_efd");
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw error(errc::errc_io, std::string("transfer_engine ucx: eventfd: ") + std::strerror(errno));
    register_am_handlers();

    ucp_address_t* addr = nullptr;
    size_t len = 0;
    TROUPE_TE_UCS_CHECK(ucp_worker_get_address(worker_, &addr, &len), "ucp_worker_get_address");
    address_.worker_address.assign(reinterpret_cast<const char*>(addr), len);
    ucp_worker_release_address(worker_, addr);
  } catch (...) {
    if (wake_fd_ >= 0) close(wake_fd_);
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    ucp_cleanup(context_);
    throw;
  }
  log()->info("transfer engine {} ({:016x}) ready (shared memory {})", opt_.name, address_.engine,
              opt_.shared_memory ? "on" : "off");
  thread_ = std::thread([this] { run(); });
  thread_id_ = thread_.get_id();
}

impl::~impl() {
  stop_ = true;
  wake();
  if (thread_.joinable()) thread_.join();
  close(wake_fd_);
  ucp_cleanup(context_);
}

void impl::shutdown() {
  shutting_down_ = true;
  // Every operation ends cancelled; those whose buffers UCX still uses end
  // when their requests are cancelled by the forced closes below (or, at the
  // latest, once the worker is gone and can touch no memory).
  std::vector<op*> all;
  for (auto& [id, o] : ops_) all.push_back(o.get());
  for (op* o : all) fail_op(o, outcome::cancelled);
  std::vector<conn*> cs;
  for (auto& [id, c] : conns_) cs.push_back(c.get());
  for (conn* c : cs) fail_conn(c, outcome::cancelled, "engine shutting down", true);
  run_deferred();
  const auto deadline = clock::now() + std::chrono::seconds(1);
  // Receives from a process that exited never end: do not wait for them.
  auto waiting = [this] {
    return std::any_of(in_ucx_.begin(), in_ucx_.end(), [this](const request_ctx* x) { return exited_.count(x->from) == 0; });
  };
  while ((!closing_.empty() || waiting()) && clock::now() < deadline) {
    ucp_worker_progress(worker_);
    run_deferred();
    reap_closing();
  }
  if (!closing_.empty() || waiting())
    log()->warn("transfer engine {}: {} endpoints and {} requests still open at shutdown", opt_.name,
                closing_.size(), in_ucx_.size());
  for (auto& [id, r] : regions_)
    if (r.memh != nullptr) ucp_mem_unmap(context_, r.memh);
  regions_.clear();
  s_.registrations = 0;
  ucp_worker_destroy(worker_);  // no UCX request can touch memory after this
  // Requests UCX never completed (a rendezvous from a peer that died cannot
  // be cancelled in UCX 1.13): their callbacks will not run now.
  for (request_ctx* ctx : in_ucx_) delete ctx;
  in_ucx_.clear();
  all.clear();
  for (auto& [id, o] : ops_) all.push_back(o.get());
  for (op* o : all) {
    o->inflight = 0;
    finish(o, outcome::cancelled, 0);
  }
  deferred_.clear();
  closing_.clear();
  conns_.clear();
  s_.peers = 0;
}

// ---- the progress loop ----

void impl::post(std::function<void()> fn) {
  bool was_empty = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    was_empty = commands_.empty();
    commands_.push_back(std::move(fn));
  }
  if (was_empty) wake();  // a non-empty queue has a wake-up pending already
}

void impl::call(const std::function<void()>& fn) {
  if (std::this_thread::get_id() == thread_id_) return fn();
  std::promise<void> done;
  std::future<void> f = done.get_future();
  post([&] {
    try {
      fn();
      done.set_value();
    } catch (...) {
      done.set_exception(std::current_exception());
    }
  });
  f.get();
}

void impl::wake() {
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof one) < 0 && errno != EAGAIN)
    log()->error("transfer engine {}: eventfd write: {}", opt_.name, std::strerror(errno));
}

void impl::run_commands() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch.swap(commands_);
  }
  for (auto& fn : batch) fn();
}

void impl::run_deferred() {
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
  }
}

void impl::reap_closing() {
  for (auto it = closing_.begin(); it != closing_.end();)
    it = ucx_util::reap_requests((*it)->close_requests) ? closing_.erase(it) : it + 1;
  s_.peers = conns_.size() + closing_.size();
}

int impl::poll_timeout_ms(clock::time_point now) const {
  bool any = false;
  clock::time_point next = clock::time_point::max();
  auto consider = [&](clock::time_point t) {
    any = true;
    next = std::min(next, t);
  };
  if (!deadlines_.empty()) consider(deadlines_.begin()->first);
  if (!unexpected_.empty()) consider(unexpected_.front().expires);
  for (const auto& [id, c] : conns_)
    if (c->state == conn_state::connecting) consider(c->deadline);
  if (!closing_.empty()) consider(now + std::chrono::milliseconds(10));  // close requests are polled
  if (!any) return -1;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
  return static_cast<int>(std::clamp<int64_t>(ms, 0, INT_MAX));
}

void impl::run() {
  std::vector<pollfd> fds;
  std::vector<uint64_t> watched;  // the connection of fds[2 + i]
  for (;;) {
    run_commands();
    if (stop_) break;
    while (ucp_worker_progress(worker_) != 0) {
    }
    run_deferred();
    tick(clock::now());
    run_deferred();
    reap_closing();
    if (!ops_.empty() && opt_.busy_poll.count() > 0) {  // an answer is likely close: poll before sleeping
      const auto until = clock::now() + opt_.busy_poll;
      bool progressed = false;
      while (!progressed && clock::now() < until) progressed = ucp_worker_progress(worker_) != 0;
      std::lock_guard<std::mutex> lock(mu_);
      if (progressed || !commands_.empty()) continue;
    }
    const ucs_status_t st = ucp_worker_arm(worker_);
    if (st == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    if (st != UCS_OK) log()->error("transfer engine {}: ucp_worker_arm: {}", opt_.name, ucs_status_string(st));
    fds.assign({{worker_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}});
    watched.clear();
    for (const auto& [id, c] : conns_)
      if (c->watch != nullptr && c->state != conn_state::closed) {
        fds.push_back({c->watch->fd(), POLLIN, 0});
        watched.push_back(id);
      }
    const int n = ::poll(fds.data(), fds.size(), st == UCS_OK ? poll_timeout_ms(clock::now()) : 1);
    if (n > 0 && (fds[1].revents & POLLIN) != 0) {
      uint64_t v = 0;
      (void)!read(wake_fd_, &v, sizeof v);
    }
    for (size_t i = 0; n > 0 && i < watched.size(); ++i)
      if (fds[2 + i].revents != 0)
        if (conn* c = find_conn(watched[i])) {
          // UCX 1.13 cannot cancel the rendezvous receives it had started
          // from that peer: their operations fail after abandon_grace while
          // UCX still points at the callers' buffers. That is safe because a
          // process that has exited sends nothing more, and what it had
          // queued here is drained by progress within the grace.
          c->peer_exited = true;
          exited_.insert(c->peer.engine);
          fail_conn(c, outcome::peer_lost, "its process " + std::to_string(c->watch->pid()) + " exited", true);
        }
  }
  shutdown();
}

bool impl::owner_alive(const engine_address& owner) {
  std::lock_guard<std::mutex> lock(owners_mu_);
  const std::pair<uint32_t, uint64_t> key{owner.pid, owner.start_time};
  auto it = owners_.find(key);
  if (it == owners_.end()) {
    if (owners_.size() >= 256) owners_.clear();  // bounded; watches are cheap to open again
    it = owners_.emplace(key, process_watch::open(static_cast<int>(owner.pid), owner.start_time, owner.pid_namespace))
             .first;
  }
  return it->second == nullptr || !it->second->exited();
}

void impl::track(ucs_status_ptr_t r, request_ctx* ctx) {
  if (UCS_PTR_IS_PTR(r)) {
    in_ucx_.insert(ctx);
    return;  // send_cb (or the recv/flush callbacks) takes over ctx
  }
  std::unique_ptr<request_ctx> owned(ctx);
  if (owned->then) owned->then(UCS_PTR_STATUS(r));
}

void impl::send_am(conn* c, unsigned id, request_ctx* ctx, const void* payload, size_t bytes, bool force_eager) {
  ctx->owner = this;
  ctx->header.from = address_.engine;
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.cb.send = request_cb;
  p.user_data = ctx;
  p.flags = force_eager ? UCP_AM_SEND_FLAG_EAGER : 0;
  track(ucp_am_send_nbx(c->ep, id, &ctx->header, sizeof ctx->header, payload, bytes, &p), ctx);
}

void impl::send_control(uint64_t peer, unsigned id, const msg_header& h) {
  conn* c = live_conn(peer);
  if (c == nullptr) {
    log()->debug("transfer engine {}: message {} to {:016x} dropped: no connection", opt_.name, id, peer);
    return;
  }
  auto* ctx = new request_ctx;
  ctx->header = h;
  ctx->header.from = address_.engine;
  send_am(c, id, ctx, nullptr, 0, true);
}

void impl::recv_data(uint64_t from, void* desc, void* dest, size_t length, std::function<void(ucs_status_t)> then) {
  auto* ctx = new request_ctx;
  ctx->owner = this;
  ctx->from = from;
  ctx->then = std::move(then);
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.recv_am = recv_request_cb;
  p.user_data = ctx;
  track(ucp_am_recv_data_nbx(worker_, desc, dest, length, &p), ctx);
}

void impl::submit(std::unique_ptr<op> o) {
  o->id = next_op_++;
  o->deadline = clock::now() + opt_.timeout;
  ++s_.started;
  ++s_.pending;
  op* raw = o.release();
  post([this, raw] { start(std::unique_ptr<op>(raw)); });
}

}  // namespace te_ucx

// ---- the public face ----

namespace {

using te_ucx::op;
using te_ucx::op_kind;

class ucx_engine final : public transfer_engine {
 public:
  explicit ucx_engine(const ucx_engine_options& o) : impl_(std::make_unique<te_ucx::impl>(o)) {}

  const char* backend() const override { return "ucx"; }
  engine_address address() const override { return impl_->address_; }
  std::chrono::milliseconds timeout() const override { return impl_->opt_.timeout; }

  memory_descriptor register_memory(void* base, size_t bytes) override {
    te_ucx::impl* self = impl_.get();
    memory_descriptor d;
    self->call([&] {
      te_ucx::region r;
      r.base = static_cast<std::byte*>(base);
      r.bytes = bytes;
      r.token = te_util::random_id();
      if (self->opt_.shared_memory && self->opt_.rma && bytes > 0) {
        ucp_mem_map_params_t mp{};
        mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
        mp.address = base;
        mp.length = bytes;
        TROUPE_TE_UCS_CHECK(ucp_mem_map(self->context_, &mp, &r.memh), "ucp_mem_map");
        void* packed = nullptr;
        size_t packed_len = 0;
        const ucs_status_t st = ucp_rkey_pack(self->context_, r.memh, &packed, &packed_len);
        if (st != UCS_OK) ucp_mem_unmap(self->context_, r.memh);
        TROUPE_TE_UCS_CHECK(st, "ucp_rkey_pack");
        d.remote_key.assign(static_cast<const char*>(packed), packed_len);
        ucp_rkey_buffer_release(packed);
      }
      shared_host_location where;
      if (self->opt_.shared_memory && bytes > 0 && shared_host_lookup(base, bytes, where)) {
        d.mapped_fd = where.fd;
        d.mapped_inode = where.inode;
        d.mapped_offset = where.offset;
      }
      d.region = self->next_region_++;
      self->regions_.emplace(d.region, r);
      ++self->s_.registrations;
      d.token = r.token;
    });
    d.backend = "ucx";
    d.bytes = bytes;
    d.address = reinterpret_cast<uintptr_t>(base);
    d.owner = impl_->address_;
    return d;
  }

  errc unregister_memory(uint64_t region) override {
    te_ucx::impl* self = impl_.get();
    errc result = errc::errc_invalid_argument;
    self->call([&] {
      auto it = self->regions_.find(region);
      if (it == self->regions_.end()) return;
      if (it->second.memh != nullptr) ucp_mem_unmap(self->context_, it->second.memh);
      self->regions_.erase(it);
      --self->s_.registrations;
      result = errc::ok;
    });
    return result;
  }

  void read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) override {
    if (const std::shared_ptr<std::byte> m = mapped(remote, offset, bytes)) {
      copy_in_parallel(local, m.get(), bytes);
      return mapped_done(bytes, done);
    }
    auto o = std::make_unique<op>();
    o->kind = op_kind::read;
    o->remote = remote;
    o->peer = remote.owner;
    o->offset = offset;
    o->local = static_cast<std::byte*>(local);
    o->bytes = bytes;
    o->done = std::move(done);
    impl_->submit(std::move(o));
  }

  void write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
             transfer_done done) override {
    if (const std::shared_ptr<std::byte> m = mapped(remote, offset, bytes)) {
      copy_in_parallel(m.get(), local, bytes);
      return mapped_done(bytes, done);
    }
    auto o = std::make_unique<op>();
    o->kind = op_kind::write;
    o->remote = remote;
    o->peer = remote.owner;
    o->offset = offset;
    o->local = static_cast<std::byte*>(const_cast<void*>(local));
    o->bytes = bytes;
    o->done = std::move(done);
    impl_->submit(std::move(o));
  }

  void send(const engine_address& to, uint64_t tag, const void* local, size_t bytes, transfer_done done) override {
    auto o = std::make_unique<op>();
    o->kind = op_kind::send;
    o->peer = to;
    o->tag = tag;
    o->local = static_cast<std::byte*>(const_cast<void*>(local));
    o->bytes = bytes;
    o->done = std::move(done);
    impl_->submit(std::move(o));
  }

  void recv(const engine_address& from, uint64_t tag, void* local, size_t capacity, transfer_done done) override {
    auto o = std::make_unique<op>();
    o->kind = op_kind::recv;
    o->peer = from;
    o->tag = tag;
    o->local = static_cast<std::byte*>(local);
    o->bytes = capacity;
    o->done = std::move(done);
    impl_->submit(std::move(o));
  }

  void disconnect(const engine_address& peer) override {
    te_ucx::impl* self = impl_.get();
    const uint64_t id = peer.engine;
    self->post([self, id] {
      auto it = self->by_engine_.find(id);
      if (it == self->by_engine_.end()) return;
      if (te_ucx::conn* c = self->find_conn(it->second))
        self->fail_conn(c, te_ucx::outcome::peer_lost, "disconnected by this engine", true);
    });
  }

  transfer_engine_stats stats() const override { return impl_->s_.snapshot(); }

 private:
  /// Where a same-host region in a shared buffer is mapped here (the pointer
  /// keeps the mapping alive), or null: then the operation takes the
  /// owner-served path, which also reports any bad range.
  std::shared_ptr<std::byte> mapped(const memory_descriptor& r, size_t offset, size_t bytes) {
    const te_ucx::impl& self = *impl_;
    if (!self.opt_.shared_memory || r.mapped_fd < 0 || r.backend != "ucx" || r.owner.host_id != self.address_.host_id ||
        offset > r.bytes || bytes > r.bytes - offset || bytes == 0)
      return nullptr;
    if (!impl_->owner_alive(r.owner)) {  // the owner-served path reports it (peer_lost)
      impl_->mapped_.forget(r.owner.pid);
      return nullptr;
    }
    std::string why;
    const shared_host_location loc{r.mapped_fd, r.mapped_inode, r.mapped_offset + offset};
    std::shared_ptr<std::byte> m = impl_->mapped_.map(r.owner.pid, loc, bytes, &why);
    if (m == nullptr)
      te_util::log()->debug("transfer engine {}: region {} not mapped ({}); the owner serves it", self.opt_.name,
                            r.region, why);
    return m;
  }
  /// Counts and completes an operation done through a mapping (inline, as the interface allows).
  void mapped_done(size_t bytes, transfer_done& done) {
    te_util::counters& s = impl_->s_;
    ++s.started;
    ++s.pending;
    s.bytes_mapped += bytes;
    s.ended(te_util::outcome::ok, bytes, true);
    done(errc::ok, bytes);
  }

  std::unique_ptr<te_ucx::impl> impl_;
};

}  // namespace

std::unique_ptr<transfer_engine> transfer_engine_ucx(const ucx_engine_options& options) {
  return std::make_unique<ucx_engine>(options);
}

}  // namespace troupe
