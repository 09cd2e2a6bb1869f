// Python operators on Jinja values: arithmetic with Python's rules (true
// division gives a float, // and % floor, str * int repeats, list + list
// concatenates), printf-style `str % args`, slicing, and the sandbox's
// attribute and item lookup that ends in an undefined value instead of an
// error. (String formatting, `str % args`, is in jinja_format.hpp.) Integers are 64-bit: results beyond that raise an error where Python
// would switch to big integers.
#pragma once

#include <optional>
#include <string>

#include "model/jinja_parser.hpp"
#include "model/jinja_value.hpp"

namespace troupe::jinja {

/// Python `a op b` for add, sub, mul, div, floordiv, mod, pow. Strings and lists
/// that + and * build are bounded by `max_bytes` (bytes, or elements for lists).
value binary_op(expr_op op, const value& a, const value& b, size_t max_bytes);
/// Python `a op b` for ==, !=, <, <=, >, >=, in, not in; TypeErrors name the
/// operand types in order ('<' not supported between 'str' and 'int').
bool compare(cmp_op op, const value& a, const value& b);
/// Python unary minus / plus.
value unary_op(expr_op op, const value& a);
/// `obj[start:stop:step]` on str, list and tuple (null parts are None); nullopt
/// where Python raises TypeError (Jinja's subscript then yields undefined).
std::optional<value> slice(const value& obj, const value& start, const value& stop, const value& step);
/// Sandboxed `obj.name` for a defined `obj`: attribute or method, then item,
/// then an undefined value naming what was missing.
value get_attribute(const value& obj, const std::string& name);
/// Sandboxed `obj[key]` for a defined `obj`: item, then attribute for string
/// keys, then an undefined value.
value get_item(const value& obj, const value& key);

}  // namespace troupe::jinja
