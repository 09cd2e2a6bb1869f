#include "config/tunables.hpp"

namespace troupe {

std::string tunable_check(const tunable& t, int64_t v) {
  if (v >= t.min && v <= t.max) return {};
  return std::string("--") + t.name + " must be in [" + std::to_string(t.min) + ", " + std::to_string(t.max) +
         "], got " + std::to_string(v);
}

std::string tunables_validate(engine_tunables& t) {
  for (const tunable* v : t.all())
    if (std::string bad = tunable_check(*v, v->value); !bad.empty()) return bad;
  return {};
}

}  // namespace troupe
