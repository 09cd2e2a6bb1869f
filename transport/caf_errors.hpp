// troupe::errc as CAF errors: the one errc enum mapped into CAF's error
// category "troupe" and rendered readably. Here, below the actor layer,
// because remote actors (transport/remote_*) answer with these errors too.
// CAF types are only forward-declared so that widely included headers stay
// free of CAF's heavy headers.
#pragma once

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

/// Registers the renderer so that actor_system::render prints "troupe.kv_exhausted: <context>".
void register_troupe_errors(caf::actor_system_config& cfg);

}  // namespace troupe
