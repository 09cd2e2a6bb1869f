// The same-process backend. One-sided reads and writes are a memcpy after the
// bounds and registration checks every backend makes; done runs inline. All
// local engines of a process share one table (the fabric) of their regions
// and of their waiting sends and recvs, so any local engine reaches the
// regions of any other, and a send waits, unbuffered, until its recv is
// posted. The fabric, not the engines, owns the waiting operations, so a
// destroyed engine cancels its own and fails the ones of its peers that
// involve it. There is no timeout: nothing here can stall, only wait for a
// partner, and the fault decorator adds one for tests.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <vector>

#include "transport/transfer_engine.hpp"
#include "transport/transfer_engine_util.hpp"

namespace troupe {

namespace {

// The waiting sends and recvs of every local engine in this process.
class local_engine;

struct fabric {
  struct waiting {
    local_engine* engine;  // whose operation this is (alive while it waits here)
    uint64_t owner;  // engine whose operation this is
    uint64_t peer;   // the other engine
    uint64_t tag;
    std::byte* data;
    size_t bytes;
    transfer_done done;
  };
  struct region {
    std::byte* base;
    size_t bytes;
  };
  std::mutex mu;
  std::deque<waiting> sends, recvs;
  std::map<std::pair<uint64_t, uint64_t>, region> regions;  // (engine, region id) -> memory

  static fabric& get() {
    static fabric f;
    return f;
  }
};

class local_engine final : public transfer_engine {
 public:
  local_engine() { address_.engine = te_util::random_id(), address_.pid = static_cast<uint32_t>(getpid()); }

  ~local_engine() override {
    // Ours are cancelled; our peers' operations with us lose their peer.
    std::vector<fabric::waiting> fire;
    {
      fabric& f = fabric::get();
      std::lock_guard lock(f.mu);
      for (auto it = f.regions.begin(); it != f.regions.end();)
        it = it->first.first == address_.engine ? f.regions.erase(it) : std::next(it);
      for (auto* q : {&f.sends, &f.recvs}) {
        for (auto it = q->begin(); it != q->end();) {
          if (it->owner == address_.engine || it->peer == address_.engine) {
            fire.push_back(std::move(*it));
            it = q->erase(it);
          } else {
            ++it;
          }
        }
      }
    }
    for (auto& w : fire) {
      if (w.engine == this) {
        ++cancelled_;
        w.done(transfer_error::cancelled, 0);
      } else {
        ++w.engine->lost_;
        w.done(transfer_error::peer_lost, 0);
      }
    }
  }

  const char* backend() const override { return "local"; }
  engine_address address() const override { return address_; }
  std::chrono::milliseconds timeout() const override { return std::chrono::milliseconds(0); }

  memory_descriptor register_memory(void* base, size_t bytes) override {
    fabric& f = fabric::get();
    std::lock_guard lock(f.mu);
    const uint64_t id = next_++;
    f.regions[{address_.engine, id}] = {static_cast<std::byte*>(base), bytes};
    ++registrations_;
    memory_descriptor d;
    d.backend = "local";
    d.region = id;
    d.bytes = bytes;
    d.address = reinterpret_cast<uintptr_t>(base);
    d.owner = address_;
    return d;
  }

  errc unregister_memory(uint64_t region) override {
    fabric& f = fabric::get();
    std::lock_guard lock(f.mu);
    if (f.regions.erase({address_.engine, region}) == 0) return errc::errc_invalid_argument;
    --registrations_;
    return errc::ok;
  }

  void read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) override {
    ++started_;
    std::byte* p = locate(remote, offset, bytes);
    if (p == nullptr) return finish(done, transfer_error::bad_request, 0);
    std::memcpy(local, p, bytes);
    finish(done, errc::ok, bytes);
  }

  void write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
             transfer_done done) override {
    ++started_;
    std::byte* p = locate(remote, offset, bytes);
    if (p == nullptr) return finish(done, transfer_error::bad_request, 0);
    std::memcpy(p, local, bytes);
    finish(done, errc::ok, bytes);
  }

  void send(const engine_address& to, uint64_t tag, const void* local, size_t bytes, transfer_done done) override {
    ++started_;
    match(fabric::waiting{this, address_.engine, to.engine, tag, static_cast<std::byte*>(const_cast<void*>(local)),
                          bytes, std::move(done)},
          true);
  }

  void recv(const engine_address& from, uint64_t tag, void* local, size_t capacity, transfer_done done) override {
    ++started_;
    match(fabric::waiting{this, address_.engine, from.engine, tag, static_cast<std::byte*>(local), capacity,
                          std::move(done)},
          false);
  }

  // No connection to close: the operations waiting for that peer fail.
  void disconnect(const engine_address& peer) override {
    std::vector<fabric::waiting> fire;
    {
      fabric& f = fabric::get();
      std::lock_guard lock(f.mu);
      for (auto* q : {&f.sends, &f.recvs})
        for (auto it = q->begin(); it != q->end();) {
          if (it->owner == address_.engine && it->peer == peer.engine) {
            fire.push_back(std::move(*it));
            it = q->erase(it);
          } else {
            ++it;
          }
        }
    }
    for (auto& w : fire) finish(w.done, transfer_error::peer_lost, 0);
  }

  transfer_engine_stats stats() const override {
    transfer_engine_stats s;
    s.registrations = registrations_;
    s.started = started_;
    s.completed = completed_;
    s.failed = failed_;
    s.peer_lost = lost_;
    s.cancelled = cancelled_;
    s.pending = started_ - completed_ - failed_ - lost_ - cancelled_;
    s.bytes_shared_memory = bytes_;
    return s;
  }

 private:
  // The registered region behind a descriptor, or nullptr when the descriptor
  // is foreign, stale or the range falls outside it. (The memcpy that follows
  // runs outside the lock: unregistering a region in use is the caller's race.)
  std::byte* locate(const memory_descriptor& d, size_t offset, size_t bytes) {
    fabric& f = fabric::get();
    std::lock_guard lock(f.mu);
    if (d.backend != "local") return nullptr;
    auto it = f.regions.find({d.owner.engine, d.region});
    if (it == f.regions.end() || offset > it->second.bytes || bytes > it->second.bytes - offset) return nullptr;
    return it->second.base + offset;
  }

  void finish(const transfer_done& done, errc e, size_t n) {
    count(e, n);
    done(e, n);
  }

  void count(errc e, size_t n) {
    if (e == errc::ok) {
      ++completed_;
      bytes_ += n;
    } else if (e == transfer_error::bad_request) {
      ++failed_;
    } else {
      ++lost_;
    }
  }

  // Pairs a send with a waiting recv (or a recv with a waiting send) and
  // copies; otherwise leaves the operation waiting in the fabric.
  void match(fabric::waiting op, bool is_send) {
    fabric& f = fabric::get();
    std::unique_lock lock(f.mu);
    auto& others = is_send ? f.recvs : f.sends;
    auto it = std::find_if(others.begin(), others.end(), [&](const fabric::waiting& w) {
      return w.owner == op.peer && w.peer == op.owner && w.tag == op.tag;
    });
    if (it == others.end()) {
      (is_send ? f.sends : f.recvs).push_back(std::move(op));
      return;
    }
    fabric::waiting other = std::move(*it);
    others.erase(it);
    lock.unlock();
    fabric::waiting& s = is_send ? op : other;
    fabric::waiting& r = is_send ? other : op;
    if (s.bytes > r.bytes) {
      s.engine->finish(s.done, transfer_error::bad_request, 0);
      r.engine->finish(r.done, transfer_error::bad_request, 0);
      return;
    }
    if (s.bytes > 0) std::memcpy(r.data, s.data, s.bytes);
    r.engine->finish(r.done, errc::ok, s.bytes);
    s.engine->finish(s.done, errc::ok, s.bytes);
  }

  engine_address address_;
  uint64_t next_ = 1;  // under the fabric's mutex
  std::atomic<uint64_t> registrations_{0}, started_{0}, completed_{0}, failed_{0}, lost_{0}, cancelled_{0}, bytes_{0};
};

}  // namespace

std::unique_ptr<transfer_engine> transfer_engine_local() { return std::make_unique<local_engine>(); }

}  // namespace troupe
