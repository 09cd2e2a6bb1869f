// The Python protocol of Jinja values (see jinja_value.hpp): what CPython's
// bool(), str(), repr(), ==, <, `in`, len(), iter() and json.dumps() do for the
// types chat templates meet. Messages of TypeErrors follow CPython's wording.
#include "model/jinja_value.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "model/jinja_pystr.hpp"

namespace troupe::jinja {

void fail(error_kind kind, const std::string& message) { throw eval_error(kind, message); }

void too_many_items() {
  fail(error_kind::limit, "a list would hold more than " + std::to_string(max_list_items) + " items");
}

value value::list(std::vector<value> items, seq_kind kind) {
  if (items.size() > max_list_items) too_many_items();
  value v;
  v.v_ = std::make_shared<list_obj>(list_obj{std::move(items), kind});
  return v;
}
value value::dict(std::shared_ptr<dict_obj> d) {
  value v;
  v.v_ = std::move(d);
  return v;
}
value value::dict() { return dict(std::make_shared<dict_obj>()); }
value value::object(std::shared_ptr<jinja::object> o) {
  value v;
  v.v_ = std::move(o);
  return v;
}

const void* value::identity() const {
  switch (kind()) {
    case value_kind::list: return std::get<std::shared_ptr<list_obj>>(v_).get();
    case value_kind::dict: return std::get<std::shared_ptr<dict_obj>>(v_).get();
    case value_kind::object: return std::get<std::shared_ptr<jinja::object>>(v_).get();
    default: return nullptr;
  }
}

void value::raise_undefined() const {
  const undefined_t& u = as_undefined();
  fail(u.kind, u.message.empty() ? "value is undefined" : u.message);
}

value object::call(evaluator&, call_args&) const { fail(error_kind::type, "'" + type_name() + "' object is not callable"); }

const value* dict_obj::find(const value& key) const {
  for (const auto& [k, v] : entries) {
    if (equals(k, key)) return &v;
  }
  return nullptr;
}
const value* dict_obj::find(const std::string& key) const {
  for (const auto& [k, v] : entries) {
    if (k.is_string() && k.as_string() == key) return &v;
  }
  return nullptr;
}
void dict_obj::set(value key, value v) {
  for (auto& [k, old] : entries) {
    if (equals(k, key)) {
      old = std::move(v);
      return;
    }
  }
  entries.emplace_back(std::move(key), std::move(v));
}

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

value escape(const value& v) { return v.is_markup() ? v : value::markup(html_escape(to_str(v))); }

bool truthy(const value& v) {
  switch (v.kind()) {
    case value_kind::undefined:
    case value_kind::none: return false;
    case value_kind::boolean: return v.as_bool();
    case value_kind::integer: return v.as_int() != 0;
    case value_kind::floating: return v.as_float() != 0.0;
    case value_kind::string: return !v.as_string().empty();
    case value_kind::list: return v.as_list().kind == seq_kind::generator || !v.as_list().items.empty();
    case value_kind::dict: return !v.as_dict().entries.empty();
    case value_kind::object: return true;
  }
  return false;
}

std::string type_name(const value& v) {
  switch (v.kind()) {
    case value_kind::undefined: return "Undefined";
    case value_kind::none: return "NoneType";
    case value_kind::boolean: return "bool";
    case value_kind::integer: return "int";
    case value_kind::floating: return "float";
    case value_kind::string: return v.is_markup() ? "Markup" : "str";
    case value_kind::list:
      switch (v.as_list().kind) {
        case seq_kind::list: return "list";
        case seq_kind::tuple: return "tuple";
        case seq_kind::generator: return "generator";
        case seq_kind::dict_keys: return "dict_keys";
        case seq_kind::dict_values: return "dict_values";
        case seq_kind::dict_items: return "dict_items";
      }
      return "list";
    case value_kind::dict: return "dict";
    case value_kind::object: return v.as_object()->type_name();
  }
  return "object";
}

std::string type_repr(const value& v) {
  if (v.is_none()) return "None";
  if (v.is_object()) return v.as_object()->type_repr();
  if (v.is_markup()) return "markupsafe.Markup object";
  return type_name(v) + " object";
}

namespace {

void repr_into(const value& v, std::string& out);

/// Containers whose repr is being written, for Python's recursion guard: a
/// container met again inside itself prints as [...] or {...}.
thread_local std::vector<const void*> repr_active;

struct repr_guard {
  bool again;
  explicit repr_guard(const void* c) : again(std::find(repr_active.begin(), repr_active.end(), c) != repr_active.end()) {
    if (!again) repr_active.push_back(c);
  }
  ~repr_guard() {
    if (!again) repr_active.pop_back();
  }
};

void repr_items(const std::vector<value>& items, std::string& out) {
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    repr_into(items[i], out);
  }
}

void repr_into(const value& v, std::string& out) {
  switch (v.kind()) {
    case value_kind::undefined: out += "Undefined"; return;
    case value_kind::string:
      if (v.is_markup()) out += "Markup(" + py::repr_string(v.as_string()) + ")";
      else out += py::repr_string(v.as_string());
      return;
    case value_kind::list: {
      const list_obj& l = v.as_list();
      const repr_guard guard(&l);
      if (guard.again) {
        out += l.kind == seq_kind::tuple ? "(...)" : "[...]";
        return;
      }
      switch (l.kind) {
        case seq_kind::list: out += '['; repr_items(l.items, out); out += ']'; return;
        case seq_kind::tuple:
          out += '(';
          repr_items(l.items, out);
          out += l.items.size() == 1 ? ",)" : ")";
          return;
        case seq_kind::generator: out += "<generator object>"; return;
        default: out += type_name(v) + "(["; repr_items(l.items, out); out += "])"; return;
      }
    }
    case value_kind::dict: {
      const repr_guard guard(&v.as_dict());
      if (guard.again) {
        out += "{...}";
        return;
      }
      out += '{';
      bool first = true;
      for (const auto& [k, x] : v.as_dict().entries) {
        if (!first) out += ", ";
        first = false;
        repr_into(k, out);
        out += ": ";
        repr_into(x, out);
      }
      out += '}';
      return;
    }
    default: out += to_str(v); return;
  }
}

/// Python's < on two numbers, or nullopt when either is not a number.
std::optional<bool> number_less(const value& a, const value& b) {
  if (!a.is_number() || !b.is_number()) return std::nullopt;
  if (a.is_float() || b.is_float()) return a.as_double() < b.as_double();
  return a.as_integral() < b.as_integral();
}

bool is_sequence_pair(const value& a, const value& b) {
  return a.is_list() && b.is_list() && a.as_list().kind == b.as_list().kind &&
         (a.as_list().kind == seq_kind::list || a.as_list().kind == seq_kind::tuple);
}

}  // namespace

std::string repr(const value& v) {
  std::string out;
  repr_into(v, out);
  return out;
}

std::string to_str(const value& v) {
  switch (v.kind()) {
    case value_kind::undefined: return "";
    case value_kind::none: return "None";
    case value_kind::boolean: return v.as_bool() ? "True" : "False";
    case value_kind::integer: return std::to_string(v.as_int());
    case value_kind::floating: return py::repr_float(v.as_float());
    case value_kind::string: return v.as_string();
    case value_kind::object: return v.as_object()->repr();
    default: return repr(v);
  }
}

bool equals(const value& a, const value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_double() == b.as_double();
    return a.as_integral() == b.as_integral();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case value_kind::undefined:
    case value_kind::none: return true;
    case value_kind::string: return a.as_string() == b.as_string();
    case value_kind::list: {
      const list_obj& x = a.as_list();
      const list_obj& y = b.as_list();
      if (x.kind != y.kind) return false;
      if (x.kind == seq_kind::generator) return &x == &y;
      if (x.items.size() != y.items.size()) return false;
      for (size_t i = 0; i < x.items.size(); ++i) {
        if (!equals(x.items[i], y.items[i])) return false;
      }
      return true;
    }
    case value_kind::dict: {
      const dict_obj& x = a.as_dict();
      const dict_obj& y = b.as_dict();
      if (x.entries.size() != y.entries.size()) return false;
      for (const auto& [k, v] : x.entries) {
        const value* other = y.find(k);
        if (!other || !equals(v, *other)) return false;
      }
      return true;
    }
    case value_kind::object: return a.identity() == b.identity();
    default: return false;
  }
}

bool less(const value& a, const value& b, const char* op) {
  if (a.is_undefined()) a.raise_undefined();
  if (b.is_undefined()) b.raise_undefined();
  if (auto r = number_less(a, b)) return *r;
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();
  if (is_sequence_pair(a, b)) {
    const auto& x = a.as_list().items;
    const auto& y = b.as_list().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return less(x[i], y[i], op);
    }
    return x.size() < y.size();
  }
  fail(error_kind::type, std::string("'") + op + "' not supported between instances of '" + type_name(a) +
                             "' and '" + type_name(b) + "'");
}

bool contains(const value& container, const value& item) {
  switch (container.kind()) {
    case value_kind::undefined: return false;
    case value_kind::string:
      if (!item.is_string()) {
        fail(error_kind::type, "'in <string>' requires string as left operand, not " + type_name(item));
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    case value_kind::list:
      for (const value& x : container.as_list().items) {
        if (equals(x, item)) return true;
      }
      return false;
    case value_kind::dict: return container.as_dict().find(item) != nullptr;
    default: fail(error_kind::type, "argument of type '" + type_name(container) + "' is not iterable");
  }
}

bool has_len(const value& v) {
  return v.is_undefined() || v.is_string() || v.is_dict() || (v.is_list() && v.as_list().kind != seq_kind::generator);
}

int64_t len(const value& v) {
  if (!has_len(v)) fail(error_kind::type, "object of type '" + type_name(v) + "' has no len()");
  if (v.is_undefined()) return 0;
  if (v.is_string()) return static_cast<int64_t>(py::length(v.as_string()));
  if (v.is_dict()) return static_cast<int64_t>(v.as_dict().entries.size());
  return static_cast<int64_t>(v.as_list().items.size());
}

std::vector<value> iterate(const value& v) {
  switch (v.kind()) {
    case value_kind::undefined: return {};
    case value_kind::string: {
      if (py::length(v.as_string()) > max_list_items) too_many_items();
      std::vector<value> chars;
      std::string one;
      for (char32_t c : py::decode(v.as_string())) {
        one.clear();
        py::append_utf8(one, c);
        chars.emplace_back(one);
      }
      return chars;
    }
    case value_kind::list: return v.as_list().items;
    case value_kind::dict: {
      std::vector<value> keys;
      for (const auto& entry : v.as_dict().entries) keys.push_back(entry.first);
      return keys;
    }
    default: fail(error_kind::type, "'" + type_name(v) + "' object is not iterable");
  }
}

namespace {

void json_string(const std::string& s, bool ensure_ascii, std::string& out) {
  out += '"';
  char buf[16];
  auto escape_unit = [&](unsigned u) {
    std::snprintf(buf, sizeof buf, "\\u%04x", u);
    out += buf;
  };
  for (char32_t c : py::decode(s)) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || (ensure_ascii && c >= 0x7f)) {
          if (c >= 0x10000) {
            escape_unit(0xd800 + ((c - 0x10000) >> 10));
            escape_unit(0xdc00 + ((c - 0x10000) & 0x3ff));
          } else {
            escape_unit(c);
          }
        } else {
          py::append_utf8(out, c);
        }
    }
  }
  out += '"';
}

std::string json_float(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x < 0 ? "-Infinity" : "Infinity";
  return py::repr_float(x);
}

void json_dump(const value& v, const json_options& o, int level, std::string& out) {
  auto newline = [&](int lvl) {
    out += '\n';
    for (int i = 0; i < lvl; ++i) out += *o.indent;
  };
  auto open = [&](char c) {
    out += c;
    if (o.indent) newline(level + 1);
  };
  auto close = [&](char c) {
    if (o.indent) newline(level);
    out += c;
  };
  auto separate = [&] {
    out += o.item_separator;
    if (o.indent) newline(level + 1);
  };
  switch (v.kind()) {
    case value_kind::none: out += "null"; return;
    case value_kind::boolean: out += v.as_bool() ? "true" : "false"; return;
    case value_kind::integer: out += std::to_string(v.as_int()); return;
    case value_kind::floating: out += json_float(v.as_float()); return;
    case value_kind::string: json_string(v.as_string(), o.ensure_ascii, out); return;
    case value_kind::list: {
      const list_obj& l = v.as_list();
      if (l.kind != seq_kind::list && l.kind != seq_kind::tuple) break;
      if (l.items.empty()) {
        out += "[]";
        return;
      }
      open('[');
      for (size_t i = 0; i < l.items.size(); ++i) {
        if (i) separate();
        json_dump(l.items[i], o, level + 1, out);
      }
      close(']');
      return;
    }
    case value_kind::dict: {
      std::vector<const std::pair<value, value>*> entries;
      for (const auto& e : v.as_dict().entries) entries.push_back(&e);
      if (entries.empty()) {
        out += "{}";
        return;
      }
      if (o.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto* a, const auto* b) { return less(a->first, b->first); });
      }
      open('{');
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) separate();
        const value& k = entries[i]->first;
        std::string key;
        if (k.is_string()) key = k.as_string();
        else if (k.is_bool()) key = k.as_bool() ? "true" : "false";
        else if (k.is_int()) key = std::to_string(k.as_int());
        else if (k.is_float()) key = json_float(k.as_float());
        else if (k.is_none()) key = "null";
        else fail(error_kind::type, "keys must be str, int, float, bool or None, not " + type_name(k));
        json_string(key, o.ensure_ascii, out);
        out += o.key_separator;
        json_dump(entries[i]->second, o, level + 1, out);
      }
      close('}');
      return;
    }
    default: break;
  }
  fail(error_kind::type, "Object of type " + type_name(v) + " is not JSON serializable");
}

}  // namespace

std::string to_json(const value& v, const json_options& options) {
  std::string out;
  json_dump(v, options, 0, out);
  return out;
}

}  // namespace troupe::jinja
