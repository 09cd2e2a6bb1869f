#include "config/tunables.hpp"

namespace troupe {

std::string tunables_validate(engine_tunables& t) {
  for (const tunable* v : t.all())
    if (v->value < v->min || v->value > v->max)
      return std::string("--") + v->name + " must be in [" + std::to_string(v->min) + ", " + std::to_string(v->max) +
             "], got " + std::to_string(v->value);
  return {};
}

}  // namespace troupe
