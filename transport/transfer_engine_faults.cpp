// The fault-injecting decorator (design in transfer_engine_faults.hpp). Each
// operation becomes a `pending` entry that knows how to pass itself on to the
// wrapped engine (with a byte count, for truncation); decisions are made
// under one mutex, user callbacks always run outside it. The timer thread
// forwards delayed operations when they are due and ends dropped ones at
// their deadline; it sleeps on its condition variable when nothing is held.
#include "transport/transfer_engine_faults.hpp"

#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

namespace troupe {

using clock_type = std::chrono::steady_clock;

struct transfer_fault_injector::impl {
  enum class kind { read, write, send, recv };

  // One operation as the caller started it.
  struct pending {
    uint64_t id = 0;
    kind k = kind::read;
    memory_descriptor remote;
    engine_address peer;
    size_t offset = 0;
    void* local = nullptr;
    size_t bytes = 0;
    uint64_t tag = 0;
    transfer_done done;
    clock_type::time_point deadline;    // a held operation not passed on by then ends with timeout
    clock_type::time_point forward_at;  // max(): dropped
  };

  impl(std::unique_ptr<transfer_engine> in, transfer_faults f, std::chrono::milliseconds t)
      : inner(std::move(in)), faults(f), rng(f.seed) {
    timeout = t.count() > 0 ? t : inner->timeout().count() > 0 ? inner->timeout() : std::chrono::milliseconds(1000);
    timer = std::thread([this] { run_timer(); });
  }

  ~impl() {
    std::vector<pending> cancelled;
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
      for (auto& [id, p] : held) cancelled.push_back(std::move(p));
      held.clear();
    }
    cv.notify_all();
    timer.join();
    for (auto& p : cancelled) end(p.done, transfer_error::cancelled, 0, counter::cancelled);
    inner.reset();  // cancels what it has in flight (through our wrappers, which live in the closures)
  }

  enum class counter { completed, failed, timed_out, peer_lost, cancelled };

  // Counts an outcome and calls the caller's done (never under the lock).
  void end(transfer_done& done, errc e, size_t n, counter c) {
    {
      std::lock_guard<std::mutex> lock(mu);
      --pending_now;
      switch (c) {
        case counter::completed: ++completed; break;
        case counter::failed: ++failed; break;
        case counter::timed_out: ++timed_out; break;
        case counter::peer_lost: ++peer_lost; break;
        case counter::cancelled: ++cancelled_n; break;
      }
    }
    done(e, n);
  }

  // The counter an inner engine's result belongs to.
  static counter classify(errc e) {
    if (e == errc::ok) return counter::completed;
    if (e == transfer_error::timeout) return counter::timed_out;
    if (e == transfer_error::peer_lost) return counter::peer_lost;
    if (e == transfer_error::cancelled) return counter::cancelled;
    return counter::failed;
  }

  void start(pending p) {
    std::unique_lock<std::mutex> lock(mu);
    ++started;
    ++pending_now;
    p.id = next_id++;
    if (p.k != kind::recv) peers[p.peer.engine] = p.peer;
    if (killed) {
      ++stats.refused;
      lock.unlock();
      return end(p.done, transfer_error::peer_lost, 0, counter::peer_lost);
    }
    const auto now = clock_type::now();
    p.deadline = now + timeout;
    if (faults.drop > 0.0 && std::uniform_real_distribution<double>(0.0, 1.0)(rng) < faults.drop) {
      ++stats.dropped;
      p.forward_at = clock_type::time_point::max();
      held.emplace(p.id, std::move(p));
      lock.unlock();
      cv.notify_all();
      return;
    }
    if (faults.delay.count() > 0) {
      ++stats.delayed;
      p.forward_at = now + faults.delay;
      held.emplace(p.id, std::move(p));
      lock.unlock();
      cv.notify_all();
      return;
    }
    forward(std::move(p), lock);
  }

  // Passes an operation on to the inner engine, within the byte budget.
  // Called with the lock held; releases it.
  void forward(pending p, std::unique_lock<std::mutex>& lock) {
    if (killed) {
      ++stats.refused;
      lock.unlock();
      return end(p.done, transfer_error::peer_lost, 0, counter::peer_lost);
    }
    size_t n = p.bytes;
    bool cut = false;
    if (p.k != kind::recv) {
      const uint64_t left = faults.fail_after_bytes > stats.bytes ? faults.fail_after_bytes - stats.bytes : 0;
      if (n > left) {
        cut = true;
        ++stats.truncated;
        n = p.k == kind::send ? 0 : static_cast<size_t>(left);  // a message is all or nothing
      }
      stats.bytes += n;
    }
    lock.unlock();
    if (cut) {
      if (n == 0) {
        kill_link();
        return end(p.done, transfer_error::peer_lost, 0, counter::peer_lost);
      }
      // The bytes below the limit move; then the link is dead.
      auto done = std::make_shared<transfer_done>(std::move(p.done));
      auto wrapped = [this, done](errc e, size_t moved) {
        kill_link();
        end(*done, transfer_error::peer_lost, e == errc::ok ? moved : 0, counter::peer_lost);
      };
      return pass(p, n, std::move(wrapped));
    }
    auto done = std::make_shared<transfer_done>(std::move(p.done));
    auto wrapped = [this, done](errc e, size_t moved) { end(*done, e, moved, classify(e)); };
    pass(p, n, std::move(wrapped));
  }

  void pass(const pending& p, size_t n, transfer_done done) {
    switch (p.k) {
      case kind::read: return inner->read(p.remote, p.offset, p.local, n, std::move(done));
      case kind::write: return inner->write(p.remote, p.offset, p.local, n, std::move(done));
      case kind::send: return inner->send(p.peer, p.tag, p.local, n, std::move(done));
      case kind::recv: return inner->recv(p.peer, p.tag, p.local, n, std::move(done));
    }
  }

  void run_timer() {
    std::unique_lock<std::mutex> lock(mu);
    while (!stop) {
      auto next = clock_type::time_point::max();
      for (auto& [id, p] : held) next = std::min(next, std::min(p.forward_at, p.deadline));
      if (next == clock_type::time_point::max())
        cv.wait(lock);
      else
        cv.wait_until(lock, next);
      if (stop) break;
      const auto now = clock_type::now();
      std::vector<pending> due, late;
      for (auto it = held.begin(); it != held.end();) {
        pending& p = it->second;
        if (p.deadline <= now && p.forward_at >= p.deadline) {
          late.push_back(std::move(p));  // dropped, or delayed past its timeout
          it = held.erase(it);
        } else if (p.forward_at <= now) {
          due.push_back(std::move(p));
          it = held.erase(it);
        } else {
          ++it;
        }
      }
      for (auto& p : late) {
        lock.unlock();
        end(p.done, transfer_error::timeout, 0, counter::timed_out);
        lock.lock();
      }
      for (auto& p : due) {
        forward(std::move(p), lock);  // releases the lock
        lock.lock();
      }
    }
  }

  void kill_link() {
    std::vector<pending> failed_ops;
    std::vector<engine_address> to_disconnect;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (killed) return;
      killed = true;
      for (auto& [id, p] : held) failed_ops.push_back(std::move(p));
      held.clear();
      for (auto& [id, a] : peers) to_disconnect.push_back(a);
    }
    for (auto& p : failed_ops) end(p.done, transfer_error::peer_lost, 0, counter::peer_lost);
    for (auto& a : to_disconnect) inner->disconnect(a);
  }

  std::unique_ptr<transfer_engine> inner;
  std::chrono::milliseconds timeout{1000};
  mutable std::mutex mu;
  std::condition_variable cv;
  std::thread timer;
  bool stop = false;
  bool killed = false;
  transfer_faults faults;
  std::mt19937_64 rng;
  uint64_t next_id = 1;
  std::map<uint64_t, pending> held;
  std::unordered_map<uint64_t, engine_address> peers;  // every engine an operation went to
  transfer_fault_stats stats;
  uint64_t started = 0, completed = 0, failed = 0, timed_out = 0, peer_lost = 0, cancelled_n = 0, pending_now = 0;
};

transfer_fault_injector::transfer_fault_injector(std::unique_ptr<transfer_engine> inner, transfer_faults faults,
                                                 std::chrono::milliseconds timeout)
    : impl_(std::make_unique<impl>(std::move(inner), faults, timeout)) {}

transfer_fault_injector::~transfer_fault_injector() = default;

void transfer_fault_injector::set_faults(const transfer_faults& faults) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (faults.seed != impl_->faults.seed) impl_->rng.seed(faults.seed);
  impl_->faults = faults;
}

void transfer_fault_injector::kill_link() { impl_->kill_link(); }

void transfer_fault_injector::heal() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->killed = false;
  impl_->stats.bytes = 0;
}

transfer_fault_stats transfer_fault_injector::fault_stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  transfer_fault_stats s = impl_->stats;
  s.held = impl_->held.size();
  return s;
}

transfer_engine& transfer_fault_injector::inner() { return *impl_->inner; }

const char* transfer_fault_injector::backend() const { return impl_->inner->backend(); }
engine_address transfer_fault_injector::address() const { return impl_->inner->address(); }
std::chrono::milliseconds transfer_fault_injector::timeout() const { return impl_->timeout; }

memory_descriptor transfer_fault_injector::register_memory(void* base, size_t bytes) {
  return impl_->inner->register_memory(base, bytes);
}

errc transfer_fault_injector::unregister_memory(uint64_t region) { return impl_->inner->unregister_memory(region); }

void transfer_fault_injector::read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes,
                                   transfer_done done) {
  impl::pending p;
  p.k = impl::kind::read;
  p.remote = remote;
  p.peer = remote.owner;
  p.offset = offset;
  p.local = local;
  p.bytes = bytes;
  p.done = std::move(done);
  impl_->start(std::move(p));
}

void transfer_fault_injector::write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
                                    transfer_done done) {
  impl::pending p;
  p.k = impl::kind::write;
  p.remote = remote;
  p.peer = remote.owner;
  p.offset = offset;
  p.local = const_cast<void*>(local);
  p.bytes = bytes;
  p.done = std::move(done);
  impl_->start(std::move(p));
}

void transfer_fault_injector::send(const engine_address& to, uint64_t tag, const void* local, size_t bytes,
                                   transfer_done done) {
  impl::pending p;
  p.k = impl::kind::send;
  p.peer = to;
  p.tag = tag;
  p.local = const_cast<void*>(local);
  p.bytes = bytes;
  p.done = std::move(done);
  impl_->start(std::move(p));
}

void transfer_fault_injector::recv(const engine_address& from, uint64_t tag, void* local, size_t capacity,
                                   transfer_done done) {
  impl::pending p;
  p.k = impl::kind::recv;
  p.peer = from;
  p.tag = tag;
  p.local = local;
  p.bytes = capacity;
  p.done = std::move(done);
  impl_->start(std::move(p));
}

void transfer_fault_injector::disconnect(const engine_address& peer) { impl_->inner->disconnect(peer); }

transfer_engine_stats transfer_fault_injector::stats() const {
  transfer_engine_stats s = impl_->inner->stats();
  std::lock_guard<std::mutex> lock(impl_->mu);
  s.started = impl_->started;
  s.completed = impl_->completed;
  s.failed = impl_->failed;
  s.timed_out = impl_->timed_out;
  s.peer_lost = impl_->peer_lost;
  s.cancelled = impl_->cancelled_n;
  s.pending = impl_->pending_now;
  return s;
}

}  // namespace troupe
