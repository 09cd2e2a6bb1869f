#include "actors/errors.hpp"

#include <caf/all.hpp>

namespace troupe {

caf::error exception_to_error(const std::string& who, std::exception_ptr& ep) {
  try {
    std::rethrow_exception(ep);
  } catch (const std::exception& e) {
    return caf::make_error(caf::sec::runtime_error, who + ": " + e.what());
  } catch (...) {
    return caf::make_error(caf::sec::runtime_error, who + ": unknown exception");
  }
}

}  // namespace troupe
