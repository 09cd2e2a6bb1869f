// Python operators and sandboxed lookups (see jinja_ops.hpp). Error messages
// use CPython's wording so a template author recognises them.
#include "model/jinja_ops.hpp"

#include <cmath>
#include <cstdio>

#include "model/jinja_builtins.hpp"
#include "model/jinja_format.hpp"
#include "model/jinja_pystr.hpp"

namespace troupe::jinja {
namespace {

const char* op_symbol(expr_op op) {
  switch (op) {
    case expr_op::add: return "+";
    case expr_op::sub: return "-";
    case expr_op::mul: return "*";
    case expr_op::div: return "/";
    case expr_op::floordiv: return "//";
    case expr_op::mod: return "%";
    case expr_op::pow: return "** or pow()";
    default: return "?";
  }
}

[[noreturn]] void unsupported_operands(expr_op op, const value& a, const value& b) {
  fail(error_kind::type, std::string("unsupported operand type(s) for ") + op_symbol(op) + ": '" + type_name(a) +
                             "' and '" + type_name(b) + "'");
}

[[noreturn]] void overflow() {
  fail(error_kind::value, "integer result exceeds 64 bits (troupe's templates use 64-bit integers)");
}

template <class F>
int64_t checked(F op) {
  int64_t r = 0;
  if (op(r)) overflow();
  return r;
}

value int_op(expr_op op, int64_t x, int64_t y) {
  switch (op) {
    case expr_op::add: return checked([&](int64_t& r) { return __builtin_add_overflow(x, y, &r); });
    case expr_op::sub: return checked([&](int64_t& r) { return __builtin_sub_overflow(x, y, &r); });
    case expr_op::mul: return checked([&](int64_t& r) { return __builtin_mul_overflow(x, y, &r); });
    case expr_op::div:
      if (y == 0) fail(error_kind::value, "division by zero");
      return static_cast<double>(x) / static_cast<double>(y);
    case expr_op::floordiv:
    case expr_op::mod: {
      if (y == 0) fail(error_kind::value, op == expr_op::mod ? "integer modulo by zero" : "integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) {
        if (op == expr_op::mod) return int64_t{0};
        overflow();
      }
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      return op == expr_op::mod ? m : q;
    }
    case expr_op::pow: {
      if (y < 0) {
        if (x == 0) fail(error_kind::value, "0.0 cannot be raised to a negative power");
        return std::pow(static_cast<double>(x), static_cast<double>(y));
      }
      int64_t result = 1, base = x;
      for (int64_t e = y; e > 0; e >>= 1) {
        if (e & 1) result = checked([&](int64_t& r) { return __builtin_mul_overflow(result, base, &r); });
        if (e > 1) base = checked([&](int64_t& r) { return __builtin_mul_overflow(base, base, &r); });
      }
      return result;
    }
    default: return value();
  }
}

value float_op(expr_op op, double x, double y) {
  switch (op) {
    case expr_op::add: return x + y;
    case expr_op::sub: return x - y;
    case expr_op::mul: return x * y;
    case expr_op::div:
      if (y == 0.0) fail(error_kind::value, "float division by zero");
      return x / y;
    case expr_op::floordiv:
    case expr_op::mod: {
      // CPython's float_divmod.
      if (y == 0.0) fail(error_kind::value, op == expr_op::mod ? "float modulo" : "float floor division by zero");
      double mod = std::fmod(x, y);
      double div = (x - mod) / y;
      if (mod != 0.0) {
        if ((y < 0) != (mod < 0)) {
          mod += y;
          div -= 1.0;
        }
      } else {
        mod = std::copysign(0.0, y);
      }
      double floordiv;
      if (div != 0.0) {
        floordiv = std::floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
      } else {
        floordiv = std::copysign(0.0, x / y);
      }
      return op == expr_op::mod ? mod : floordiv;
    }
    case expr_op::pow:
      if (x == 0.0 && y < 0.0) fail(error_kind::value, "0.0 cannot be raised to a negative power");
      if (x < 0.0 && y != std::floor(y)) fail(error_kind::value, "a negative number to a fractional power is complex");
      return std::pow(x, y);
    default: return value();
  }
}

value repeat(const value& seq, int64_t n, size_t max_bytes) {
  if (n < 0) n = 0;
  if (seq.is_string()) {
    const std::string& s = seq.as_string();
    if (!s.empty() && static_cast<uint64_t>(n) > max_bytes / s.size()) {
      fail(error_kind::limit, "string repetition exceeds the output bound");
    }
    std::string out;
    out.reserve(s.size() * static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out += s;
    return seq.is_markup() ? value::markup(std::move(out)) : value(std::move(out));
  }
  const list_obj& l = seq.as_list();
  if (!l.items.empty() && static_cast<uint64_t>(n) > max_list_items / l.items.size()) too_many_items();
  std::vector<value> out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), l.items.begin(), l.items.end());
  return value::list(std::move(out), l.kind);
}

bool is_plain_seq(const value& v) {
  return v.is_list() && (v.as_list().kind == seq_kind::list || v.as_list().kind == seq_kind::tuple);
}

}  // namespace

value binary_op(expr_op op, const value& a, const value& b, size_t max_bytes) {
  if (a.is_undefined()) a.raise_undefined();
  if (b.is_undefined()) b.raise_undefined();
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return float_op(op, a.as_double(), b.as_double());
    return int_op(op, a.as_integral(), b.as_integral());
  }
  if (op == expr_op::add && (a.is_markup() || b.is_markup())) {
    // Markup.__add__ / __radd__: the plain side is escaped, the result is Markup.
    if (!a.is_string() || !b.is_string()) unsupported_operands(op, a, b);
    const std::string joined = escape(a).as_string() + escape(b).as_string();
    if (joined.size() > max_bytes) fail(error_kind::limit, "string exceeds the output bound");
    return value::markup(joined);
  }
  if (op == expr_op::add) {
    if (a.is_string()) {
      if (!b.is_string()) fail(error_kind::type, "can only concatenate str (not \"" + type_name(b) + "\") to str");
      if (a.as_string().size() + b.as_string().size() > max_bytes) fail(error_kind::limit, "string exceeds the output bound");
      return a.as_string() + b.as_string();
    }
    if (is_plain_seq(a)) {
      if (!b.is_list() || b.as_list().kind != a.as_list().kind) {
        fail(error_kind::type, "can only concatenate " + type_name(a) + " (not \"" + type_name(b) + "\") to " + type_name(a));
      }
      if (a.as_list().items.size() + b.as_list().items.size() > max_list_items) too_many_items();
      std::vector<value> items = a.as_list().items;
      items.insert(items.end(), b.as_list().items.begin(), b.as_list().items.end());
      return value::list(std::move(items), a.as_list().kind);
    }
  }
  if (op == expr_op::mul) {
    if ((a.is_string() || is_plain_seq(a)) && (b.is_int() || b.is_bool())) return repeat(a, b.as_integral(), max_bytes);
    if ((b.is_string() || is_plain_seq(b)) && (a.is_int() || a.is_bool())) return repeat(b, a.as_integral(), max_bytes);
  }
  if (op == expr_op::mod && a.is_string()) {
    if (!a.is_markup()) return percent_format(a.as_string(), b);
    // Markup.__mod__ escapes string arguments and returns Markup.
    auto esc = [](const value& x) { return x.is_string() ? escape(x) : x; };
    value args = esc(b);
    if (b.is_list() && b.as_list().kind == seq_kind::tuple) {
      std::vector<value> items;
      for (const value& x : b.as_list().items) items.push_back(esc(x));
      args = value::list(std::move(items), seq_kind::tuple);
    } else if (b.is_dict()) {
      auto d = std::make_shared<dict_obj>();
      for (const auto& [k, x] : b.as_dict().entries) d->entries.emplace_back(k, esc(x));
      args = value::dict(d);
    }
    return value::markup(percent_format(a.as_string(), args));
  }
  unsupported_operands(op, a, b);
}

bool compare(cmp_op op, const value& a, const value& b) {
  switch (op) {
    case cmp_op::eq: return equals(a, b);
    case cmp_op::ne: return !equals(a, b);
    case cmp_op::in: return contains(b, a);
    case cmp_op::not_in: return !contains(b, a);
    default: break;
  }
  if (a.is_number() && b.is_number() && (a.is_float() || b.is_float())) {
    const double x = a.as_double(), y = b.as_double();
    return op == cmp_op::lt ? x < y : op == cmp_op::le ? x <= y : op == cmp_op::gt ? x > y : x >= y;
  }
  const char* sym = op == cmp_op::lt ? "<" : op == cmp_op::le ? "<=" : op == cmp_op::gt ? ">" : ">=";
  if (a.is_undefined()) a.raise_undefined();
  if (b.is_undefined()) b.raise_undefined();
  const bool comparable = (a.is_number() && b.is_number()) || (a.is_string() && b.is_string()) ||
                          (a.is_list() && b.is_list() && a.as_list().kind == b.as_list().kind &&
                           a.as_list().kind <= seq_kind::tuple);
  if (!comparable) {
    fail(error_kind::type, std::string("'") + sym + "' not supported between instances of '" + type_name(a) +
                               "' and '" + type_name(b) + "'");
  }
  switch (op) {
    case cmp_op::lt: return less(a, b, sym);
    case cmp_op::le: return less(a, b, sym) || equals(a, b);
    case cmp_op::gt: return less(b, a, sym);
    default: return less(b, a, sym) || equals(a, b);
  }
}

value unary_op(expr_op op, const value& a) {
  if (a.is_undefined()) a.raise_undefined();
  if (a.is_float()) return op == expr_op::neg ? -a.as_float() : a.as_float();
  if (a.is_int() || a.is_bool()) {
    const int64_t x = a.as_integral();
    if (op == expr_op::pos) return x;
    if (x == INT64_MIN) overflow();
    return -x;
  }
  fail(error_kind::type, std::string("bad operand type for unary ") + (op == expr_op::neg ? "-" : "+") + ": '" +
                             type_name(a) + "'");
}

std::optional<value> slice(const value& obj, const value& start, const value& stop, const value& step) {
  const bool is_str = obj.is_string();
  if (!is_str && !is_plain_seq(obj)) return std::nullopt;
  auto as_index = [](const value& v) -> std::optional<int64_t> {
    if (v.is_int() || v.is_bool()) return v.as_integral();
    return std::nullopt;
  };
  for (const value* v : {&start, &stop, &step}) {
    if (!v->is_none() && !as_index(*v)) return std::nullopt;
  }
  const int64_t st = step.is_none() ? 1 : *as_index(step);
  if (st == 0) fail(error_kind::value, "slice step cannot be zero");
  std::u32string chars;
  if (is_str) chars = py::decode(obj.as_string());
  const int64_t n = is_str ? static_cast<int64_t>(chars.size()) : static_cast<int64_t>(obj.as_list().items.size());
  // CPython's PySlice_AdjustIndices.
  auto adjust = [&](const value& v, int64_t dflt) {
    if (v.is_none()) return dflt;
    int64_t i = *as_index(v);
    if (i < 0) {
      i += n;
      if (i < 0) i = st < 0 ? -1 : 0;
    } else if (i >= n) {
      i = st < 0 ? n - 1 : n;
    }
    return i;
  };
  const int64_t b = adjust(start, st < 0 ? n - 1 : 0);
  const int64_t e = adjust(stop, st < 0 ? -1 : n);
  std::u32string out_chars;
  std::vector<value> out_items;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) {
    if (is_str) out_chars += chars[static_cast<size_t>(i)];
    else out_items.push_back(obj.as_list().items[static_cast<size_t>(i)]);
  }
  if (is_str) return obj.is_markup() ? value::markup(py::encode(out_chars)) : value(py::encode(out_chars));
  return value::list(std::move(out_items), obj.as_list().kind);
}

value get_attribute(const value& obj, const std::string& name) {
  if (obj.is_undefined()) obj.raise_undefined();
  if (obj.is_object()) {
    if (name.empty() || name[0] != '_') {
      if (auto a = obj.as_object()->attr(name)) return *a;
    }
  } else if (auto m = builtin_method(obj, name)) {
    return *m;
  } else if (obj.is_dict()) {
    if (const value* v = obj.as_dict().find(name)) return *v;
  }
  std::string message = "'";
  message.append(type_repr(obj)).append("' has no attribute '").append(name).append("'");
  return value::undefined(std::move(message));
}

value get_item(const value& obj, const value& key) {
  if (obj.is_undefined()) obj.raise_undefined();
  if (obj.is_dict()) {
    if (const value* v = obj.as_dict().find(key)) return *v;
  } else if ((is_plain_seq(obj) || obj.is_string()) && (key.is_int() || key.is_bool())) {
    int64_t i = key.as_integral();
    if (obj.is_string()) {
      const std::u32string chars = py::decode(obj.as_string());
      if (i < 0) i += static_cast<int64_t>(chars.size());
      if (i >= 0 && i < static_cast<int64_t>(chars.size())) {
        std::string one = py::encode(chars.substr(static_cast<size_t>(i), 1));
        return obj.is_markup() ? value::markup(std::move(one)) : value(std::move(one));
      }
    } else {
      const auto& items = obj.as_list().items;
      if (i < 0) i += static_cast<int64_t>(items.size());
      if (i >= 0 && i < static_cast<int64_t>(items.size())) return items[static_cast<size_t>(i)];
    }
  }
  // Jinja falls back to the attribute (a method, or an undefined naming it).
  if (key.is_string()) return get_attribute(obj, key.as_string());
  return value::undefined(type_repr(obj) + " has no element " + repr(key));
}

}  // namespace troupe::jinja
