// The data plane: tensors (activations, KV, weights) move between instances
// through a transfer_engine, never inside control messages. A region of
// memory is registered once and described by a memory_descriptor that a peer
// can use for one-sided reads and writes of (offset, bytes). Completion is a
// callback, which the actor layer turns into a message. Backends: `local`
// (same process) here; ucx, nccl and cuda_ipc come with the transport work.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "config/errors.hpp"

namespace troupe {

/// What a peer needs to address a registered region.
struct memory_descriptor {
  std::string backend;    ///< which engine registered it ("local", "ucx", ...)
  uint64_t region = 0;    ///< id unique within the registering engine
  uint64_t bytes = 0;     ///< size of the region
  std::string remote_key; ///< backend-specific access key (packed rkey, IPC handle); empty for local
};

/// Completion of one transfer: ok and the bytes moved, or the error.
using transfer_done = std::function<void(errc, size_t bytes)>;

/// A backend that moves bytes between registered regions and local memory.
class transfer_engine {
 public:
  virtual ~transfer_engine() = default;
  /// Backend name.
  virtual const char* backend() const = 0;
  /// Registers [base, base + bytes); the memory must outlive the registration.
  virtual memory_descriptor register_memory(void* base, size_t bytes) = 0;
  /// Ends a registration; errc_invalid_argument for an unknown region.
  virtual errc unregister_memory(uint64_t region) = 0;
  /// Copies remote[offset, offset + bytes) into local; calls done once.
  virtual void read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) = 0;
  /// Copies local into remote[offset, offset + bytes); calls done once.
  virtual void write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
                     transfer_done done) = 0;
};

/// The same-process backend: a memcpy with the bounds and registration checks
/// every backend makes.
std::unique_ptr<transfer_engine> transfer_engine_local();

}  // namespace troupe
