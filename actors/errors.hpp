// troupe::errc as CAF errors. Actors reply with caf::error; this maps the one
// errc enum into CAF's error category "troupe" and renders it readably.
// CAF types are only forward-declared here so that widely included headers
// stay free of CAF's heavy headers.
#pragma once

#include <exception>
#include <string>

#include "config/errors.hpp"

namespace caf {
class error;
class actor_system_config;
}  // namespace caf

namespace troupe {

/// The CAF error category name of troupe errors.
inline constexpr const char* caf_error_category = "troupe";

/// A caf::error of category "troupe" carrying `code` and a context message.
caf::error make_caf_error(errc code, const std::string& context);

/// The errc inside a caf::error of category "troupe" (errc_unsupported for other categories).
errc errc_from_caf(const caf::error& e);

/// For set_exception_handler: turns what an actor's handler threw into its
/// exit reason (sec::runtime_error), keeping what() prefixed with `who`, so
/// supervisors and logs see why an actor died.
caf::error exception_to_error(const std::string& who, std::exception_ptr& ep);

/// Registers the renderer so that actor_system::render prints "troupe.kv_exhausted: <context>".
void register_troupe_errors(caf::actor_system_config& cfg);

}  // namespace troupe
