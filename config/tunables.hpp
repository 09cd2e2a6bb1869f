// Every tunable is declared once here, with its name, default, range and
// doc. The command line and cluster.toml bind to these declarations; nothing
// else reads the environment or invents defaults.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace troupe {

/// One integer tunable.
struct tunable {
  const char* name;   ///< command-line spelling without "--", and config key
  int64_t value;      ///< the default, or the value once set
  int64_t min;
  int64_t max;
  const char* doc;
};

/// The engine's tunables with their defaults.
struct engine_tunables {
  tunable threads{"threads", 0, 0, 1024, "CPU threads for kernels and OpenBLAS (0 = all cores)"};
  tunable kv_page_size{"kv-page-size", 16, 1, 4096, "tokens per KV-cache page"};
  tunable kv_cache_mib{"kv-cache-mib", 1024, 1, int64_t{1} << 22, "memory for the paged KV cache, in MiB"};
  tunable chunked_prefill_size{"chunked-prefill-size", 512, 1, int64_t{1} << 20,
                               "most prompt tokens one forward step processes"};
  tunable max_running_requests{"max-running-requests", 256, 1, int64_t{1} << 16,
                               "most requests in an instance's running batch"};
  tunable max_restarts{"max-restarts", 5, 0, 1000,
                       "restarts of a failing stage or scheduler allowed within restart-window-s before the "
                       "instance is marked failed"};
  tunable restart_window_s{"restart-window-s", 60, 1, 86400, "window of the max-restarts limit, in seconds"};

  /// All of them, for binding and validation.
  std::vector<tunable*> all() {
    return {&threads,         &kv_page_size, &kv_cache_mib, &chunked_prefill_size, &max_running_requests,
            &max_restarts, &restart_window_s};
  }
};

/// The links between nodes ([links] in cluster.toml): liveness and reconnection.
struct link_tunables {
  tunable heartbeat_interval_ms{"heartbeat-interval-ms", 500, 10, 60000,
                                "how often an up node link says it is alive, in ms"};
  tunable heartbeat_timeout_ms{"heartbeat-timeout-ms", 2000, 20, 600000,
                               "a node link silent this long is declared down, in ms (at least twice "
                               "heartbeat-interval-ms)"};
  tunable handshake_timeout_ms{"handshake-timeout-ms", 2000, 10, 600000,
                               "a connecting node must finish authenticating within this, in ms"};
  tunable connect_retry_max_ms{"connect-retry-max-ms", 5000, 100, 600000,
                               "longest wait between attempts to reach a node that is not up, in ms (the wait "
                               "starts at 100 ms and doubles)"};
  tunable busy_poll_us{"busy-poll-us", 100, 0, 100000,
                       "after traffic a node's link thread keeps polling this long before it sleeps, in us: an "
                       "answer within it costs no wake-up; 0 on hosts whose cores are oversubscribed"};

  /// All of them, for binding and validation.
  std::vector<tunable*> all() {
    return {&heartbeat_interval_ms, &heartbeat_timeout_ms, &handshake_timeout_ms, &connect_retry_max_ms,
            &busy_poll_us};
  }
};

/// Empty when `v` is inside t's range, else a message naming t ("--name must be in [min, max], got v").
std::string tunable_check(const tunable& t, int64_t v);

/// Empty when every value is inside its range, else a message naming the first one outside.
std::string tunables_validate(engine_tunables& t);

}  // namespace troupe
