#include "config/tunables.hpp"

#include <doctest/doctest.h>

#include <set>
#include <string>

#include "config/errors.hpp"

TEST_CASE("tunables: defaults are valid, names unique, out-of-range values named") {
  troupe::engine_tunables t;
  CHECK(troupe::tunables_validate(t).empty());
  std::set<std::string> names;
  for (auto* v : t.all()) {
    CHECK(names.insert(v->name).second);
    CHECK(v->value >= v->min);
    CHECK(v->value <= v->max);
  }
  t.kv_page_size.value = 0;
  CHECK(troupe::tunables_validate(t).find("--kv-page-size") != std::string::npos);
  t.kv_page_size.value = 16;
  t.threads.value = -1;
  CHECK(troupe::tunables_validate(t).find("--threads") != std::string::npos);
}

TEST_CASE("errors: every code has a distinct name") {
  std::set<std::string> names;
  for (int i = 0; i <= static_cast<int>(troupe::errc::errc_cancelled); ++i)
    CHECK(names.insert(troupe::errc_name(static_cast<troupe::errc>(i))).second);
  troupe::error e(troupe::errc::errc_io, "x.json: cannot read");
  CHECK(e.code() == troupe::errc::errc_io);
  CHECK(std::string(e.what()) == "x.json: cannot read");
}
