// A fault-injecting decorator around any transfer_engine, for tests (after
// Mooncake's fault_proxy transport): it drops, delays, cuts off after N
// bytes, or kills the link, so tests drive the real error paths of the layer
// above and of the wrapped engine. Faults act where the operation enters:
// a dropped operation never reaches the wrapped engine (so never the peer)
// and ends with timeout after the engine's timeout, as a lost message would;
// a delayed one is passed on late (or times out if the delay exceeds the
// timeout); the operation that crosses the byte limit moves only the bytes
// below it and ends with peer_lost, and the link is then dead; killing the
// link disconnects the wrapped engine from every peer it was used with, so
// operations in flight fail through the wrapped engine's own peer-loss path.
// Every operation still ends in exactly one done. Held operations wait on one
// timer thread of the decorator; this is test tooling, not a runtime path.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "transport/transfer_engine.hpp"

namespace troupe {

/// What the fault injector does to the operations passing through it.
struct transfer_faults {
  double drop = 0.0;                      ///< probability that an operation is dropped (0..1)
  std::chrono::milliseconds delay{0};     ///< every operation waits this long before it is passed on
  uint64_t fail_after_bytes = UINT64_MAX; ///< the link breaks once this many payload bytes have passed
  uint64_t seed = 1;                      ///< of the drop decisions
};

/// What the fault injector has done.
struct transfer_fault_stats {
  uint64_t dropped = 0;    ///< operations dropped (ended with timeout)
  uint64_t delayed = 0;    ///< operations held back before being passed on
  uint64_t truncated = 0;  ///< operations cut off by the byte limit
  uint64_t refused = 0;    ///< operations failed at once because the link was dead
  uint64_t held = 0;       ///< operations held by the injector now (dropped or delayed)
  uint64_t bytes = 0;      ///< payload bytes passed on so far (against fail_after_bytes)
};

/// The decorator. stats() counts the operations as the caller sees them
/// (including held ones in pending); registrations, serving, peers and bytes
/// are the wrapped engine's.
class transfer_fault_injector final : public transfer_engine {
 public:
  /// Wraps `inner`; `timeout` ends dropped operations (zero: the inner
  /// engine's timeout, or 1 s when it has none).
  explicit transfer_fault_injector(std::unique_ptr<transfer_engine> inner, transfer_faults faults = {},
                                   std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  /// Ends held operations with cancelled, then destroys the wrapped engine.
  ~transfer_fault_injector() override;
  transfer_fault_injector(const transfer_fault_injector&) = delete;
  transfer_fault_injector& operator=(const transfer_fault_injector&) = delete;

  /// Replaces the faults; operations started afterwards see the new ones.
  void set_faults(const transfer_faults& faults);
  /// Kills the link: held operations fail with peer_lost, the wrapped engine
  /// disconnects from every peer used so far (its operations in flight fail),
  /// and new operations fail at once with peer_lost until heal().
  void kill_link();
  /// Brings the link back (and restarts the byte count).
  void heal();
  /// A snapshot of what the injector has done.
  transfer_fault_stats fault_stats() const;
  /// The wrapped engine.
  transfer_engine& inner();

  const char* backend() const override;
  engine_address address() const override;
  std::chrono::milliseconds timeout() const override;
  memory_descriptor register_memory(void* base, size_t bytes) override;
  errc unregister_memory(uint64_t region) override;
  void read(const memory_descriptor& remote, size_t offset, void* local, size_t bytes, transfer_done done) override;
  void write(const memory_descriptor& remote, size_t offset, const void* local, size_t bytes,
             transfer_done done) override;
  void send(const engine_address& to, uint64_t tag, const void* local, size_t bytes, transfer_done done) override;
  void recv(const engine_address& from, uint64_t tag, void* local, size_t capacity, transfer_done done) override;
  void disconnect(const engine_address& peer) override;
  transfer_engine_stats stats() const override;

  /// The private state (transfer_engine_faults.cpp).
  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace troupe
