// Host memory that other processes on this host can map, for the data
// plane's same-host path. A region registered with the ucx transfer engine
// from such a buffer is read and written by a same-host peer with one memcpy
// into its own mapping of the buffer, with no UCX round trip and none of
// cma's per-page pinning (process_vm_readv): on the 2-core development VM one
// cma copy of 64 MiB runs at ~5 GB/s, a memcpy at ~8.
//
// How: the buffer is a memfd (memfd_create) mapped MAP_SHARED. Its
// descriptor names the owner's pid, the memfd's descriptor number and its
// inode; a peer opens /proc/PID/fd/FD (allowed for processes of the same user
// that may read each other's /proc, a weaker condition than cma's ptrace
// attach), checks the inode (a descriptor number can be reused) and maps it.
// A peer's mapping keeps the pages alive after the owner frees the buffer or
// dies, so a late access reads stale bytes instead of faulting; peers drop
// their mappings of an engine when its connection goes (forget) and keep at
// most a bounded number.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>

namespace troupe {

/// Where a range of a shared buffer is, as a peer process finds it.
struct shared_host_location {
  int32_t fd = -1;      ///< the owner's descriptor number of the memfd (-1: not shared)
  uint64_t inode = 0;   ///< the memfd's inode (checked after opening)
  uint64_t offset = 0;  ///< offset of the range in the memfd
};

/// A memfd-backed buffer of `bytes`, mapped read-write and zero-filled.
class shared_host_buffer {
 public:
  /// Throws troupe::error(errc_io) when the kernel refuses (memfd, size, mmap).
  explicit shared_host_buffer(size_t bytes, const std::string& name = "troupe-buffer");
  ~shared_host_buffer();
  shared_host_buffer(const shared_host_buffer&) = delete;
  shared_host_buffer& operator=(const shared_host_buffer&) = delete;

  void* data() const { return base_; }
  size_t size() const { return bytes_; }

 private:
  int fd_ = -1;
  void* base_ = nullptr;
  size_t bytes_ = 0;
};

/// Whether [p, p + n) lies inside one live shared_host_buffer of this
/// process, and where.
bool shared_host_lookup(const void* p, size_t n, shared_host_location& out);

/// A peer's mappings of other processes' shared buffers, cached by (pid,
/// inode); thread-safe.
class shared_host_mapper {
 public:
  explicit shared_host_mapper(size_t max_mappings = 64) : max_(max_mappings) {}
  shared_host_mapper(const shared_host_mapper&) = delete;
  shared_host_mapper& operator=(const shared_host_mapper&) = delete;

  /// The address of [loc.offset, loc.offset + bytes) of process pid's buffer
  /// in this process, or null with the reason in *why. The pointer keeps the
  /// mapping alive while it is held (another thread may evict or forget it).
  std::shared_ptr<std::byte> map(uint32_t pid, const shared_host_location& loc, uint64_t bytes, std::string* why);
  /// Unmaps everything mapped from process pid.
  void forget(uint32_t pid);
  /// Mappings held now.
  size_t size() const;

 private:
  struct mapping {
    uint32_t pid = 0;
    uint64_t inode = 0;
    std::shared_ptr<std::byte> base;  ///< unmaps when the last holder lets go
    size_t bytes = 0;
  };
  mutable std::mutex mu_;
  std::list<mapping> lru_;  ///< most recently used first
  size_t max_;
};

/// memcpy that splits a large copy over two threads: one core's copy
/// bandwidth is well below the memory's.
void copy_in_parallel(void* dst, const void* src, size_t n);

}  // namespace troupe
