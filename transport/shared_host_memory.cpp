// memfd buffers, the registry of this process's buffers, and peers' cached
// mappings (see shared_host_memory.hpp).
#include "transport/shared_host_memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <thread>

#include "config/errors.hpp"

namespace troupe {

namespace {

struct registered {
  size_t bytes = 0;
  int fd = -1;
  uint64_t inode = 0;
};

// Live buffers of this process by base address.
std::mutex registry_mu;
std::map<const std::byte*, registered>& registry() {
  static std::map<const std::byte*, registered> r;
  return r;
}

}  // namespace

shared_host_buffer::shared_host_buffer(size_t bytes, const std::string& name) : bytes_(bytes) {
  if (bytes == 0) throw error(errc::errc_invalid_argument, "shared_host_buffer: size 0");
  fd_ = ::memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd_ < 0) throw error(errc::errc_io, std::string("shared_host_buffer: memfd_create: ") + std::strerror(errno));
  struct stat st {};
  if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0 || ::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    throw error(errc::errc_io, "shared_host_buffer: sizing " + std::to_string(bytes) + " bytes: " + std::strerror(err));
  }
  base_ = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (base_ == MAP_FAILED) {
    const int err = errno;
    ::close(fd_);
    throw error(errc::errc_io, "shared_host_buffer: mmap of " + std::to_string(bytes) + " bytes: " + std::strerror(err));
  }
  std::lock_guard<std::mutex> lock(registry_mu);
  registry()[static_cast<const std::byte*>(base_)] = {bytes, fd_, static_cast<uint64_t>(st.st_ino)};
}

shared_host_buffer::~shared_host_buffer() {
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    registry().erase(static_cast<const std::byte*>(base_));
  }
  ::munmap(base_, bytes_);
  ::close(fd_);
}

bool shared_host_lookup(const void* p, size_t n, shared_host_location& out) {
  const auto* b = static_cast<const std::byte*>(p);
  std::lock_guard<std::mutex> lock(registry_mu);
  auto& r = registry();
  auto it = r.upper_bound(b);
  if (it == r.begin()) return false;
  --it;
  const size_t offset = static_cast<size_t>(b - it->first);
  if (offset > it->second.bytes || n > it->second.bytes - offset) return false;
  out = {it->second.fd, it->second.inode, offset};
  return true;
}

std::shared_ptr<std::byte> shared_host_mapper::map(uint32_t pid, const shared_host_location& loc, uint64_t bytes, std::string* why) {
  std::lock_guard<std::mutex> lock(mu_);
  auto fits = [&](const mapping& m) { return loc.offset <= m.bytes && bytes <= m.bytes - loc.offset; };
  for (auto it = lru_.begin(); it != lru_.end(); ++it) {
    if (it->pid != pid || it->inode != loc.inode) continue;
    if (!fits(*it)) {
      *why = "range beyond the shared buffer";
      return {};
    }
    lru_.splice(lru_.begin(), lru_, it);
    return std::shared_ptr<std::byte>(lru_.front().base, lru_.front().base.get() + loc.offset);
  }
  const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(loc.fd);
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    *why = "open " + path + ": " + std::strerror(errno);
    return {};
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_ino) != loc.inode || st.st_size <= 0) {
    ::close(fd);
    *why = path + " is no longer that buffer";
    return {};
  }
  mapping m{pid, loc.inode, nullptr, static_cast<size_t>(st.st_size)};
  if (!fits(m)) {
    ::close(fd);
    *why = "range beyond the shared buffer";
    return {};
  }
  void* base = ::mmap(nullptr, m.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);  // the mapping keeps the memfd alive
  if (base == MAP_FAILED) {
    *why = std::string("mmap of ") + path + ": " + std::strerror(errno);
    return {};
  }
  const size_t length = m.bytes;
  m.base = std::shared_ptr<std::byte>(static_cast<std::byte*>(base), [length](std::byte* b) { ::munmap(b, length); });
  lru_.push_front(m);
  while (lru_.size() > max_) lru_.pop_back();
  return std::shared_ptr<std::byte>(m.base, m.base.get() + loc.offset);
}

void shared_host_mapper::forget(uint32_t pid) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = lru_.begin(); it != lru_.end();) {
    it = it->pid == pid ? lru_.erase(it) : std::next(it);
  }
}

size_t shared_host_mapper::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

void copy_in_parallel(void* dst, const void* src, size_t n) {
  constexpr size_t split_from = 8u << 20;  // below it a thread's start-up (~50 us) is not repaid
  if (n == 0) return;
  if (n < split_from || std::thread::hardware_concurrency() < 2) {
    std::memcpy(dst, src, n);
    return;
  }
  const size_t half = (n / 2) & ~size_t{4095};
  std::thread other([=] { std::memcpy(static_cast<std::byte*>(dst) + half, static_cast<const std::byte*>(src) + half, n - half); });
  std::memcpy(dst, src, half);
  other.join();
}

}  // namespace troupe
