// Shared pieces of the transfer_engine backends (see transfer_engine_util.hpp).
#include "transport/transfer_engine_util.hpp"

#include <sys/random.h>
#include <unistd.h>

#include <fstream>

#include "transport/log.hpp"

namespace troupe::te_util {

std::shared_ptr<spdlog::logger> log() { return transport_log(); }

uint64_t random_id() {
  uint64_t v = 0;
  while (v == 0)
    if (getrandom(&v, sizeof v, 0) != static_cast<ssize_t>(sizeof v)) v = 0;
  return v;
}

std::string host_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  if (id.empty()) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    id = host;
  }
  return id;
}

errc outcome_errc(outcome o) {
  switch (o) {
    case outcome::ok: return errc::ok;
    case outcome::bad_request: return transfer_error::bad_request;
    case outcome::timeout: return transfer_error::timeout;
    case outcome::peer_lost: return transfer_error::peer_lost;
    case outcome::cancelled: return transfer_error::cancelled;
  }
  return errc::errc_io;
}

void counters::ended(outcome o, size_t bytes, bool shared_memory) {
  --pending;
  switch (o) {
    case outcome::ok:
      ++completed;
      (shared_memory ? bytes_shared_memory : bytes_network) += bytes;
      break;
    case outcome::bad_request: ++failed; break;
    case outcome::timeout: ++timed_out; break;
    case outcome::peer_lost: ++peer_lost; break;
    case outcome::cancelled: ++cancelled; break;
  }
}

transfer_engine_stats counters::snapshot() const {
  transfer_engine_stats s;
  s.registrations = registrations;
  s.pending = pending;
  s.serving = serving;
  s.peers = peers;
  s.started = started;
  s.completed = completed;
  s.failed = failed;
  s.timed_out = timed_out;
  s.peer_lost = peer_lost;
  s.cancelled = cancelled;
  s.bytes_shared_memory = bytes_shared_memory;
  s.bytes_network = bytes_network;
  s.connections = connections;
  s.bytes_mapped = bytes_mapped;
  return s;
}

}  // namespace troupe::te_util
