#include "transport/caf_errors.hpp"

#include <caf/all.hpp>

namespace troupe {

namespace {
constexpr caf::atom_value category = caf::atom("troupe");
}

caf::error make_caf_error(errc code, const std::string& context) {
  return caf::error{static_cast<uint8_t>(code), category, caf::make_message(context)};
}

errc errc_from_caf(const caf::error& e) {
  if (e.category() != category) return errc::errc_unsupported;
  return static_cast<errc>(e.code());
}

void register_troupe_errors(caf::actor_system_config& cfg) {
  cfg.add_error_category(category, [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    std::string out = std::string(caf_error_category) + "." + errc_name(static_cast<errc>(code));
    if (ctx.match_elements<std::string>()) out += ": " + ctx.get_as<std::string>(0);
    return out;
  });
}

}  // namespace troupe
