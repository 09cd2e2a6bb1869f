// The transport folder's spdlog logger ("transport"), shared by the control
// plane (ucx_node, remote actors) and the data plane (transfer engines).
#pragma once

#include <memory>

namespace spdlog {
class logger;
}  // namespace spdlog

namespace troupe {

/// The "transport" logger, registered on first use.
std::shared_ptr<spdlog::logger> transport_log();

}  // namespace troupe
