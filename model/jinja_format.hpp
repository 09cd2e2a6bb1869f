// String formatting of Jinja values: Python's `fmt % args` and str.format()
// (see jinja_format.cpp for the parts of the format languages covered).
#pragma once

#include <string>

#include "model/jinja_value.hpp"

namespace troupe::jinja {

/// Python `fmt % args`: a tuple gives the positional arguments, a dict the
/// %(name)s ones, anything else is the single argument.
std::string percent_format(const std::string& fmt, const value& args);

/// Python `fmt.format(*args, **kwargs)`; field lookups go through `ev`.
std::string str_format(evaluator& ev, const std::string& fmt, const call_args& args);

}  // namespace troupe::jinja
