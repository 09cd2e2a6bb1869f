// A 64-byte aligned, move-only host allocation: weight arenas and KV pages are
// one block each, aligned for SIMD loads and for registration with transfer
// engines (which want stable, aligned addresses).
#pragma once

#include <cstddef>
#include <memory>
#include <new>

namespace troupe {

/// Owns `size` bytes aligned to 64; contents start uninitialised.
class host_buffer {
 public:
  host_buffer() = default;
  /// Allocates; throws std::bad_alloc when the memory is not there.
  explicit host_buffer(size_t size)
      : data_(size ? static_cast<std::byte*>(::operator new[](size, std::align_val_t{64})) : nullptr), size_(size) {}
  /// The bytes.
  std::byte* data() const { return data_.get(); }
  /// Their count.
  size_t size() const { return size_; }

 private:
  struct deleter {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  std::unique_ptr<std::byte[], deleter> data_;
  size_t size_ = 0;
};

}  // namespace troupe
