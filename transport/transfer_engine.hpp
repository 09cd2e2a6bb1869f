// The data plane: tensors (activations, KV, weights) move between instances
// through a transfer_engine, never inside control messages. A region of
// memory is registered once and described by a memory_descriptor, a plain
// serializable value that travels inside control messages and carries all a
// peer needs to reach the owner (its engine_address) and the region (id,
// size, address, access key). With it a peer makes one-sided reads and writes
// of (offset, bytes); two-sided send/recv, matched by (peer, tag), streams
// activations. Every started operation ends in exactly one call of its
// transfer_done callback (success, error, timeout, peer lost, or cancelled at
// shutdown), which the actor layer turns into a message; no operation can
// hang past the engine's per-operation timeout. Backends: `local` (same
// process, here), `ucx` (transfer_engine_ucx.hpp), `cuda_ipc` and `nccl`
// (transfer_engine_cuda.hpp, built with CUDA), and a fault-injecting
// decorator (transfer_engine_faults.hpp) for tests.
#pragma once

#include <caf/meta/type_name.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "config/errors.hpp"

namespace troupe {

/// How a peer reaches an engine. Backend-specific fields stay empty where a
/// backend does not use them.
struct engine_address {
  uint64_t engine = 0;         ///< random id of the engine instance (never 0 for a live engine)
  std::string host;            ///< the host's name, for logs
  std::string host_id;         ///< boot id of its host: equal ids mean one host (shared memory, CUDA IPC)
  uint32_t pid = 0;            ///< its process (cuda_ipc: a handle cannot be opened in its own process)
  std::string worker_address;  ///< ucx: packed UCX worker address, where peers open their endpoints
  bool shared_memory = false;  ///< ucx: it moves data over shared memory with peers of its host
  int32_t device = -1;         ///< CUDA device ordinal of a GPU engine; -1 for host memory
  uint64_t start_time = 0;     ///< its process's start time (process_watch.hpp): with pid, names the process; 0 unknown
  uint64_t pid_namespace = 0;  ///< the pid namespace `pid` belongs to (process_watch.hpp); 0 unknown
};

/// Schema of engine_address (CAF serialization and the wire codec).
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, engine_address& x) {
  return f(caf::meta::type_name("engine_address"), x.engine, x.host, x.host_id, x.pid, x.worker_address,
           x.shared_memory, x.device, x.start_time, x.pid_namespace);
}

/// What a peer needs to address a registered region.
struct memory_descriptor {
  std::string backend;     ///< which engine registered it ("local", "ucx", ...)
  uint64_t region = 0;     ///< id unique within the registering engine (never reused)
  uint64_t bytes = 0;      ///< size of the region
  std::string remote_key;  ///< backend-specific access key (packed rkey, IPC handle); empty for local
  uint64_t address = 0;    ///< the owner's address of the region's first byte (RMA, IPC); 0 where unused
  uint64_t token = 0;      ///< random capability the owner checks on every request it serves (0 for local)
  engine_address owner;    ///< the engine that registered it
  /// ucx, region inside a shared_host_buffer (shared_host_memory.hpp): the
  /// owner's descriptor number of its memfd (-1: none), the memfd's inode and
  /// the region's offset in it. A peer on the same host maps it and copies
  /// directly.
  int32_t mapped_fd = -1;
  uint64_t mapped_inode = 0;
  uint64_t mapped_offset = 0;
};

/// Schema of memory_descriptor (CAF serialization and the wire codec).
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, memory_descriptor& x) {
  return f(caf::meta::type_name("memory_descriptor"), x.backend, x.region, x.bytes, x.remote_key, x.address, x.token,
           x.owner, x.mapped_fd, x.mapped_inode, x.mapped_offset);
}

/// Completion of one transfer: ok and the bytes moved, or the error and the
/// bytes known to have moved before it (usually 0). Called exactly once per
/// started operation, on the engine's own thread or inline before the call
/// returns (local); it must not block and must not destroy the engine.
using transfer_done = std::function<void(errc, size_t bytes)>;

/// The errc each kind of transfer failure surfaces as.
namespace transfer_error {
/// A range outside the region, an unknown or stale region, a wrong key, a
/// recv buffer too small for the message, a descriptor of another backend.
inline constexpr errc bad_request = errc::errc_invalid_argument;
/// The operation did not finish within the engine's timeout (lost, stalled peer).
inline constexpr errc timeout = errc::errc_timeout;
/// The connection to the peer failed or was closed (peer died, disconnect()).
inline constexpr errc peer_lost = errc::errc_peer_lost;
/// The engine shut down before the operation finished.
inline constexpr errc cancelled = errc::errc_cancelled;
/// The backend cannot do this (e.g. send/recv on cuda_ipc).
inline constexpr errc unsupported = errc::errc_unsupported;
}  // namespace transfer_error

/// Counters of an engine; live values (registrations, pending, peers) fall
/// back to zero when everything is released, which the leak tests check.
struct transfer_engine_stats {
  uint64_t registrations = 0;  ///< regions registered now
  uint64_t pending = 0;        ///< operations started whose done has not been called
  uint64_t serving = 0;        ///< requests of peers this engine is serving now (owner side)
  uint64_t peers = 0;          ///< connections open now (including ones closing)
  uint64_t started = 0;        ///< operations started
  uint64_t completed = 0;      ///< of those, done with ok
  uint64_t failed = 0;         ///< done with bad_request or an internal error
  uint64_t timed_out = 0;      ///< done with timeout
  uint64_t peer_lost = 0;      ///< done because the connection went down
  uint64_t cancelled = 0;      ///< done because the engine shut down
  uint64_t bytes_shared_memory = 0;  ///< payload bytes moved by RMA / IPC / a mapping on one host
  uint64_t bytes_mapped = 0;         ///< of those, copied through a mapping of the owner's shared_host_buffer
  uint64_t bytes_network = 0;        ///< payload bytes moved over the network path (tcp, NCCL)
  uint64_t connections = 0;          ///< connections ever opened
};

/// A backend that moves bytes between registered regions and local memory,
/// and between engines by tag.
class transfer_engine {
 public:
  virtual ~transfer_engine() = default;
  /// Backend name.
  virtual const char* backend() const = 0;
  /// Where peers reach this engine.
  virtual engine_address address() const = 0;
  /// The per-operation timeout (zero: operations cannot stall, e.g. local).
  virtual std::chrono::milliseconds timeout() const = 0;
  /// Registers [base, base + bytes); the memory must outlive the registration.
  /// Throws troupe::error when the backend cannot register it (a set-up step).
  virtual memory_descriptor register_memory(void* base, size_t bytes) = 0;
  /// Ends a registration; errc_invalid_argument for an unknown region. Peers
  /// must be done with the region (one-sided paths cannot check it afterwards).
  virtual errc unregister_memory(uint64_t region) = 0;
  /// Copies remote[offset, offset + bytes) into local; calls done once.
  virtual void read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) = 0;
  /// Copies local into remote[offset, offset + bytes); calls done once.
  virtual void write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
                     transfer_done done) = 0;
  /// Sends bytes to the engine `to`, matched there by a recv with this
  /// engine's address and the same tag (FIFO among equal tags on one path);
  /// done when the receiver holds the bytes, or on error.
  virtual void send(const engine_address& to, uint64_t tag, const void* local, size_t bytes, transfer_done done) = 0;
  /// Receives one message sent by `from` with this tag into local (capacity
  /// bytes); done with the bytes received. A larger message fails both sides
  /// with bad_request.
  virtual void recv(const engine_address& from, uint64_t tag, void* local, size_t capacity, transfer_done done) = 0;
  /// Closes every connection to `peer`: its operations in flight end with
  /// peer_lost; a later operation connects again. No-op without one.
  virtual void disconnect(const engine_address& peer) = 0;
  /// A snapshot of the counters.
  virtual transfer_engine_stats stats() const = 0;
};

/// The same-process backend: a memcpy with the bounds and registration checks
/// every backend makes; send/recv match between local engines of one process.
std::unique_ptr<transfer_engine> transfer_engine_local();

}  // namespace troupe
