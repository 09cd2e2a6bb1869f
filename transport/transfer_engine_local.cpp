#include <cstring>
#include <mutex>
#include <unordered_map>

#include "transport/transfer_engine.hpp"

namespace troupe {

namespace {

class local_engine final : public transfer_engine {
 public:
  const char* backend() const override { return "local"; }

  memory_descriptor register_memory(void* base, size_t bytes) override {
    std::lock_guard lock(mutex_);
    const uint64_t id = next_++;
    regions_[id] = {static_cast<std::byte*>(base), bytes};
    return {"local", id, bytes, {}};
  }

  errc unregister_memory(uint64_t region) override {
    std::lock_guard lock(mutex_);
    return regions_.erase(region) ? errc::ok : errc::errc_invalid_argument;
  }

  void read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) override {
    std::byte* p = locate(remote, offset, bytes);
    if (p == nullptr) return done(errc::errc_invalid_argument, 0);
    std::memcpy(local, p, bytes);
    done(errc::ok, bytes);
  }

  void write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
             transfer_done done) override {
    std::byte* p = locate(remote, offset, bytes);
    if (p == nullptr) return done(errc::errc_invalid_argument, 0);
    std::memcpy(p, local, bytes);
    done(errc::ok, bytes);
  }

 private:
  struct region {
    std::byte* base;
    size_t bytes;
  };

  // The registered region behind a descriptor, or nullptr when the descriptor
  // is foreign, stale or the range falls outside it.
  std::byte* locate(const memory_descriptor& d, size_t offset, size_t bytes) {
    std::lock_guard lock(mutex_);
    if (d.backend != "local") return nullptr;
    auto it = regions_.find(d.region);
    if (it == regions_.end() || offset > it->second.bytes || bytes > it->second.bytes - offset) return nullptr;
    return it->second.base + offset;
  }

  std::mutex mutex_;
  std::unordered_map<uint64_t, region> regions_;
  uint64_t next_ = 1;
};

}  // namespace

std::unique_ptr<transfer_engine> transfer_engine_local() { return std::make_unique<local_engine>(); }

}  // namespace troupe
