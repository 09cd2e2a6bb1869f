#include "actors/errors.hpp"

#include <doctest/doctest.h>

#include <caf/all.hpp>

TEST_CASE("errors: troupe errc travels as caf::error and renders with its context") {
  caf::actor_system_config cfg;
  troupe::register_troupe_errors(cfg);
  caf::actor_system sys{cfg};
  caf::error e = troupe::make_caf_error(troupe::errc::errc_kv_exhausted, "request 7 needs 3 pages");
  CHECK(troupe::errc_from_caf(e) == troupe::errc::errc_kv_exhausted);
  const std::string text = sys.render(e);
  CHECK(text.find("troupe.kv_exhausted") != std::string::npos);
  CHECK(text.find("request 7 needs 3 pages") != std::string::npos);
  CHECK(troupe::errc_from_caf(caf::make_error(caf::sec::runtime_error)) == troupe::errc::errc_unsupported);
}
