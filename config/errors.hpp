// The one error vocabulary of troupe. Code at the edges (config parsing, model
// loading, main) throws troupe::error; runtime code returns an errc and the
// actor layer maps it onto caf::error. One enum keeps both views the same.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace troupe {

/// Every failure troupe reports, by kind.
enum class errc : uint8_t {
  ok = 0,
  errc_invalid_argument,   ///< a caller passed a value outside its domain
  errc_invalid_config,     ///< a config file (config.json, cluster.toml) is wrong
  errc_invalid_model_file, ///< a checkpoint file is corrupt, truncated or inconsistent
  errc_io,                 ///< a file could not be opened, mapped or read
  errc_kv_exhausted,       ///< the paged KV cache has no free page left
  errc_unknown_sequence,   ///< a sequence id the KV cache does not hold
  errc_context_overflow,   ///< a sequence would grow past the model's context
  errc_unsupported,        ///< a valid input troupe does not implement
  errc_cuda,               ///< the CUDA runtime, cuBLAS or a kernel launch failed
  errc_timeout,            ///< an operation did not finish within its time limit
  errc_peer_lost,          ///< the connection to another process or node failed or was closed
  errc_cancelled,          ///< the operation was abandoned because its owner shut down
};

/// Short stable name of an error code ("kv_exhausted").
const char* errc_name(errc e);

/// The exception thrown at edges; what() names the file, key or tensor at fault.
class error : public std::runtime_error {
 public:
  error(errc code, const std::string& what) : std::runtime_error(what), code_(code) {}
  /// The kind of failure.
  errc code() const noexcept { return code_; }

 private:
  errc code_;
};

}  // namespace troupe
