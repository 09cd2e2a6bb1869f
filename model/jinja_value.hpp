// Values of the Jinja interpreter and the Python protocol they follow. Jinja
// evaluates Python objects, and chat templates lean on Python behaviour all the
// time (truthiness of '' and [], `str(None) == 'None'`, `[1] != (1,)`,
// `{'a': 1}|string`, generators that are always true), so each value carries
// its Python type closely enough to reproduce str(), repr(), ==, <, `in`,
// len(), iter() and json.dumps(). Containers are shared (Python references);
// only namespace() objects are mutable, as in Jinja's immutable sandbox.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace troupe::jinja {

/// A place in template source; line and column count from 1 (column in code points).
struct source_pos {
  int line = 0;
  int column = 0;
};

/// The kinds of failure a template can raise, after Jinja's and Python's exceptions.
enum class error_kind : uint8_t {
  undefined,       ///< jinja2 UndefinedError
  security,        ///< jinja2 SecurityError (a mutating method in the immutable sandbox)
  type,            ///< Python TypeError (and other operand errors)
  value,           ///< Python ValueError / ZeroDivisionError / OverflowError
  template_error,  ///< raise_exception(msg) in the template
  limit,           ///< troupe's recursion, step or output bound
  unsupported,     ///< valid Jinja that troupe does not implement
};

/// A template failed while rendering; `pos` is filled in by the evaluator.
class eval_error : public std::runtime_error {
 public:
  eval_error(error_kind kind, const std::string& message) : std::runtime_error(message), kind(kind) {}
  error_kind kind;
  source_pos pos;
};

/// A template failed to parse.
class syntax_error : public std::runtime_error {
 public:
  syntax_error(const std::string& message, source_pos pos) : std::runtime_error(message), pos(pos) {}
  source_pos pos;
};

/// Throws eval_error.
[[noreturn]] void fail(error_kind kind, const std::string& message);

/// The most items one list (or the characters of one string iterated) may
/// have, so that a template cannot grow memory without bound by doubling a list.
constexpr size_t max_list_items = size_t{1} << 20;
/// Throws the limit error for a list past max_list_items.
[[noreturn]] void too_many_items();

class value;
class object;
class evaluator;

/// Python's list-like types that troupe tells apart.
enum class seq_kind : uint8_t { list, tuple, generator, dict_keys, dict_values, dict_items };

/// A list, tuple, generator or dict view: its items (materialised) and type.
struct list_obj {
  std::vector<value> items;
  seq_kind kind = seq_kind::list;
};

/// An insertion-ordered dict; keys compare with Python == (1 == 1.0 == True).
struct dict_obj {
  std::vector<std::pair<value, value>> entries;  ///< in insertion order
  /// The value for `key`, or null.
  const value* find(const value& key) const;
  /// The value for the string key `key`, or null.
  const value* find(const std::string& key) const;
  /// d[key] = v, keeping the position of an existing key.
  void set(value key, value v);
};

/// Arguments of a call: positional, then keyword in source order.
struct call_args {
  std::vector<value> positional;
  std::vector<std::pair<std::string, value>> keyword;
};

/// The alternatives of a value, in the order of its variant.
enum class value_kind : uint8_t { undefined, none, boolean, integer, floating, string, list, dict, object };

/// One Jinja value. Undefined carries the message its misuse raises.
class value {
 public:
  /// What an undefined value raises when misused.
  struct undefined_t {
    std::string message;  ///< empty: a generic "value is undefined"
    error_kind kind = error_kind::undefined;
  };
  /// Python's None.
  struct none_t {};

  /// Undefined. The converting constructors make bool, int, float and str values.
  value() : v_(undefined_t{}) {}
  value(bool b) : v_(b) {}
  template <class I, std::enable_if_t<std::is_integral_v<I> && !std::is_same_v<I, bool>, int> = 0>
  value(I i) : v_(static_cast<int64_t>(i)) {}
  value(double d) : v_(d) {}
  value(std::string s) : v_(std::move(s)) {}
  value(const char* s) : v_(std::string(s)) {}

  /// An undefined value whose misuse raises `message` as `kind`.
  static value undefined(std::string message, error_kind kind = error_kind::undefined) {
    value v;
    v.v_ = undefined_t{std::move(message), kind};
    return v;
  }
  /// A markupsafe.Markup string (from |safe or |escape): concatenating a plain
  /// string to it HTML-escapes that string, as Python's Markup does.
  static value markup(std::string s) {
    value v(std::move(s));
    v.markup_ = true;
    return v;
  }
  /// Python's None.
  static value none() {
    value v;
    v.v_ = none_t{};
    return v;
  }
  /// A list (or tuple, generator, dict view) of `items`.
  static value list(std::vector<value> items, seq_kind kind = seq_kind::list);
  /// A dict sharing `d`; dict() makes an empty one.
  static value dict(std::shared_ptr<dict_obj> d);
  static value dict();
  /// An object value sharing `o`.
  static value object(std::shared_ptr<jinja::object> o);

  /// Which alternative this is; the is_* tests below name them.
  value_kind kind() const { return static_cast<value_kind>(v_.index()); }
  bool is_undefined() const { return kind() == value_kind::undefined; }
  bool is_none() const { return kind() == value_kind::none; }
  bool is_bool() const { return kind() == value_kind::boolean; }
  bool is_int() const { return kind() == value_kind::integer; }
  bool is_float() const { return kind() == value_kind::floating; }
  /// int, float or bool (Python's numbers.Number).
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return kind() == value_kind::string; }
  /// A Markup string (see markup()).
  bool is_markup() const { return markup_; }
  bool is_list() const { return kind() == value_kind::list; }
  bool is_dict() const { return kind() == value_kind::dict; }
  bool is_object() const { return kind() == value_kind::object; }

  /// The payload; each accessor requires the matching kind.
  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const { return std::get<int64_t>(v_); }
  double as_float() const { return std::get<double>(v_); }
  /// int or bool as an integer (Python bool is an int).
  int64_t as_integral() const { return is_bool() ? as_bool() : as_int(); }
  /// Any number as a double.
  double as_double() const { return is_float() ? as_float() : static_cast<double>(as_integral()); }
  const std::string& as_string() const { return std::get<std::string>(v_); }
  const list_obj& as_list() const { return *std::get<std::shared_ptr<list_obj>>(v_); }
  const dict_obj& as_dict() const { return *std::get<std::shared_ptr<dict_obj>>(v_); }
  const std::shared_ptr<jinja::object>& as_object() const { return std::get<std::shared_ptr<jinja::object>>(v_); }
  const undefined_t& as_undefined() const { return std::get<undefined_t>(v_); }
  /// Identity of a container or object (Python `is`); null for scalars.
  const void* identity() const;

  /// Raises the error this undefined value stands for.
  [[noreturn]] void raise_undefined() const;

 private:
  std::variant<undefined_t, none_t, bool, int64_t, double, std::string, std::shared_ptr<list_obj>,
               std::shared_ptr<dict_obj>, std::shared_ptr<jinja::object>>
      v_;
  bool markup_ = false;
};

/// A Python object that is neither scalar nor container: namespace(), loop,
/// macros, bound methods, global functions.
class object {
 public:
  virtual ~object() = default;
  /// Python's type(x).__name__ ("Namespace", "builtin_function_or_method").
  virtual std::string type_name() const = 0;
  /// Jinja's object_type_repr(), used in undefined messages.
  virtual std::string type_repr() const { return type_name() + " object"; }
  /// Python repr(x), also what printing it gives.
  virtual std::string repr() const { return std::string("<").append(type_name()).append(" object>"); }
  /// An attribute, or nullopt when the object has none by that name.
  virtual std::optional<value> attr(const std::string& name) const { return std::nullopt; }
  /// Assigns an attribute (namespace objects only); false when not allowed.
  virtual bool set_attr(const std::string& name, value v) { return false; }
  /// Drops what the object refers to; the evaluator calls it on every mutable
  /// object when a render ends, which breaks reference cycles
  /// (`{% set ns.me = ns %}`) that would otherwise leak.
  virtual void release() {}
  /// Python callable(x).
  virtual bool callable() const { return false; }
  /// x(*args); the default raises "'T' object is not callable".
  virtual value call(evaluator& ev, call_args& args) const;
};

/// markupsafe.escape(x): Markup stays as it is, anything else becomes the
/// HTML-escaped Markup of str(x).
value escape(const value& v);
/// HTML-escapes & < > " ' as markupsafe does.
std::string html_escape(std::string_view s);

/// Python bool(x).
bool truthy(const value& v);
/// Python str(x) as Jinja prints it (undefined prints empty).
std::string to_str(const value& v);
/// Python repr(x).
std::string repr(const value& v);
/// Python type(x).__name__.
std::string type_name(const value& v);
/// Jinja's object_type_repr(x): "dict object", "None", "jinja2.utils.Namespace object".
std::string type_repr(const value& v);
/// Python a == b.
bool equals(const value& a, const value& b);
/// Python a < b; throws TypeError for unorderable operands (`op` names the operator).
bool less(const value& a, const value& b, const char* op = "<");
/// Python `item in container`.
bool contains(const value& container, const value& item);
/// Python len(x); throws TypeError where Python does.
int64_t len(const value& v);
/// Python list(iter(x)); throws TypeError for non-iterables. Undefined yields nothing.
std::vector<value> iterate(const value& v);
/// Whether len(x) works on `v` (Jinja's `sequence` test also wants __getitem__).
bool has_len(const value& v);

/// Options of Python's json.dumps as transformers' tojson passes them.
struct json_options {
  std::optional<std::string> indent;  ///< the per-level indent string, none for one line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
/// Python json.dumps(v, ...); throws TypeError for values JSON cannot hold.
std::string to_json(const value& v, const json_options& options);

}  // namespace troupe::jinja
