// The actor layer's error helpers. The errc <-> caf::error mapping itself is
// transport/caf_errors.hpp (remote actors answer with it too).
#pragma once

#include <exception>
#include <string>

#include "transport/caf_errors.hpp"

namespace troupe {

/// For set_exception_handler: turns what an actor's handler threw into its
/// exit reason (sec::runtime_error), keeping what() prefixed with `who`, so
/// supervisors and logs see why an actor died.
caf::error exception_to_error(const std::string& who, std::exception_ptr& ep);

}  // namespace troupe
