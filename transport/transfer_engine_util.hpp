// Small pieces every transfer_engine backend shares: the transport folder's
// logger, engine ids, the host id that tells "same host", and the outcome
// counters behind transfer_engine_stats. Kept apart so the CUDA backends
// need no UCX header.
#pragma once

#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "transport/transfer_engine.hpp"

namespace troupe::te_util {

/// The transport folder's spdlog logger ("transport").
std::shared_ptr<spdlog::logger> log();

/// A random non-zero id, fresh from the kernel (a generator's state would be
/// shared with a forked child, giving both processes' engines one id).
uint64_t random_id();

/// This host's boot id; equal ids mean one host.
std::string host_id();

/// How an operation ended (for the counters).
enum class outcome { ok, bad_request, timeout, peer_lost, cancelled };

/// The errc an outcome surfaces as.
errc outcome_errc(outcome o);

/// Counters of an engine, updated from any thread.
struct counters {
  std::atomic<uint64_t> registrations{0}, pending{0}, serving{0}, peers{0}, started{0}, completed{0}, failed{0},
      timed_out{0}, peer_lost{0}, cancelled{0}, bytes_shared_memory{0}, bytes_network{0}, connections{0},
      bytes_mapped{0};

  /// Counts one operation's end (pending down, its outcome up, bytes when ok).
  void ended(outcome o, size_t bytes, bool shared_memory);
  /// A snapshot.
  transfer_engine_stats snapshot() const;
};

}  // namespace troupe::te_util
