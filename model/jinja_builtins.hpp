// The library a chat template can call: Jinja's filters and tests, the
// methods of Python's str, list and dict that the sandbox allows, and the
// globals transformers provides (range, namespace, dict, raise_exception,
// strftime_now). Mutating methods (list.append, dict.update, ...) exist but
// raise SecurityError when called, as in jinja2's ImmutableSandboxedEnvironment.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/jinja_parser.hpp"
#include "model/jinja_value.hpp"

namespace troupe::jinja {

/// The filter called `name`, or null.
filter_fn find_filter(std::string_view name);
/// Whether `name` is a Jinja filter troupe deliberately does not implement.
bool unsupported_filter(std::string_view name);
/// The test called `name` (including "==", "eq", "equalto" ...), or null.
test_fn find_test(std::string_view name);
/// A method of a str, list, tuple or dict value as a bound callable (an
/// undefined that raises SecurityError for mutating ones), or nullopt when
/// Python's type has no such attribute.
std::optional<value> builtin_method(const value& self, const std::string& name);
/// The global functions every template sees.
std::vector<std::pair<std::string, value>> builtin_globals();

/// Binds call arguments to a Python-style signature and raises TypeError for
/// extra or unknown arguments, as Python would.
class arg_binder {
 public:
  arg_binder(const char* function, const call_args& args, std::initializer_list<const char*> names);
  /// The argument for parameter `i`, or null when not passed.
  const value* get(size_t i) const { return i < bound_.size() ? bound_[i] : nullptr; }
  value get_or(size_t i, value fallback) const { return get(i) ? *get(i) : std::move(fallback); }
  /// The argument for parameter `i`; TypeError when missing.
  const value& required(size_t i) const;

 private:
  const char* function_;
  std::vector<const char*> names_;
  std::vector<const value*> bound_;
};

/// An integer argument (bool counts); TypeError naming `what` otherwise.
int64_t int_arg(const value& v, const char* what);
/// A string argument; TypeError naming `what` otherwise.
const std::string& str_arg(const value& v, const char* what);

}  // namespace troupe::jinja
