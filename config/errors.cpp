#include "config/errors.hpp"

namespace troupe {

const char* errc_name(errc e) {
  switch (e) {
    case errc::ok: return "ok";
    case errc::errc_invalid_argument: return "invalid_argument";
    case errc::errc_invalid_config: return "invalid_config";
    case errc::errc_invalid_model_file: return "invalid_model_file";
    case errc::errc_io: return "io";
    case errc::errc_kv_exhausted: return "kv_exhausted";
    case errc::errc_unknown_sequence: return "unknown_sequence";
    case errc::errc_context_overflow: return "context_overflow";
    case errc::errc_unsupported: return "unsupported";
    case errc::errc_cuda: return "cuda";
    case errc::errc_timeout: return "timeout";
    case errc::errc_peer_lost: return "peer_lost";
    case errc::errc_cancelled: return "cancelled";
  }
  return "unknown";
}

}  // namespace troupe
