#include "transport/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace troupe {

std::shared_ptr<spdlog::logger> transport_log() {
  static const std::shared_ptr<spdlog::logger> log = [] {
    if (auto l = spdlog::get("transport")) return l;
    try {
      return spdlog::stderr_color_mt("transport");
    } catch (const spdlog::spdlog_ex&) {  // another thread registered it first
      return spdlog::get("transport");
    }
  }();
  return log;
}

}  // namespace troupe
