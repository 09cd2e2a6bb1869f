// Jinja's filters and tests (see jinja_builtins.hpp), each written after the
// jinja2 3.1 function of the same name, including its quirks: sort, unique,
// min and max ignore case unless told otherwise; map/select/reject/unique/batch
// return generators (always true, no length) while sort and list return lists;
// `tojson` is transformers' override (json.dumps with ensure_ascii=False).
// Jinja filters troupe does not implement (groupby, urlize, ...) are rejected
// when the template is parsed.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "model/jinja_builtins.hpp"
#include "model/jinja_eval.hpp"
#include "model/jinja_ops.hpp"
#include "model/jinja_pystr.hpp"

namespace troupe::jinja {
namespace {

value generator(std::vector<value> items) { return value::list(std::move(items), seq_kind::generator); }

value ignore_case(const value& v) { return v.is_string() ? value(py::lower(v.as_string())) : v; }

/// Jinja's make_attrgetter: "a.b.0" looks up a, then b, then item 0.
std::vector<value> attribute_parts(const value* attribute) {
  std::vector<value> parts;
  if (!attribute || attribute->is_none()) return parts;
  if (!attribute->is_string()) return {*attribute};
  static const std::string dot = ".";
  for (const std::string& p : py::split(attribute->as_string(), &dot, -1, false)) {
    const bool digits = !p.empty() && std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; });
    parts.push_back(digits ? value(static_cast<int64_t>(std::stoll(p))) : value(p));
  }
  return parts;
}

value get_path(evaluator& ev, value item, const std::vector<value>& parts, const value* fallback = nullptr) {
  for (const value& part : parts) {
    item = ev.getitem(item, part);
    if (fallback && item.is_undefined()) item = *fallback;
  }
  return item;
}

/// Sort/unique/min/max key: the attribute path, lower-cased unless case-sensitive.
value sort_key(evaluator& ev, const value& item, const std::vector<value>& parts, bool case_sensitive) {
  const value k = get_path(ev, item, parts);
  return case_sensitive ? k : ignore_case(k);
}

/// The result of a str-returning filter on `v`: Markup in, Markup out, as
/// the filters that call str methods on soft_str(v) behave.
value keep_markup(const value& v, std::string text) {
  return v.is_markup() ? value::markup(std::move(text)) : value(std::move(text));
}

/// Python float(str): surrounding whitespace, underscores between digits, inf/nan.
std::optional<double> parse_float(const std::string& text) {
  std::string s = py::strip(text, nullptr, true, true);
  std::string clean;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_' && i > 0 && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i - 1])) &&
        std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
      continue;
    }
    clean += s[i];
  }
  if (clean.empty() || clean.find_first_of("xXpP") != std::string::npos) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(clean.c_str(), &end);
  if (end != clean.c_str() + clean.size()) return std::nullopt;
  return d;
}

/// Python int(str, base) (base 10 or with a prefix for 2, 8, 16, or 0).
std::optional<int64_t> parse_int(const std::string& text, int64_t base) {
  std::string s = py::strip(text, nullptr, true, true);
  bool neg = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    neg = s[0] == '-';
    s.erase(0, 1);
  }
  if (s.size() > 1 && s[0] == '0' && std::string_view("bBoOxX").find(s[1]) != std::string_view::npos) {
    const int64_t prefix_base = (s[1] | 0x20) == 'b' ? 2 : (s[1] | 0x20) == 'o' ? 8 : 16;
    if (base == 0 || base == prefix_base) {
      base = prefix_base;
      s.erase(0, 2);
      if (!s.empty() && s[0] == '_') s.erase(0, 1);
    }
  }
  if (base == 0) base = 10;
  if (s.empty() || s.front() == '_' || s.back() == '_' || s.find("__") != std::string::npos) return std::nullopt;
  s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, static_cast<int>(base));
  if (end != s.c_str() + s.size() || errno == ERANGE || s[0] == '-' || s[0] == '+' || std::isspace(static_cast<unsigned char>(s[0]))) return std::nullopt;
  return neg ? -v : v;
}

#define TROUPE_F(...) [](evaluator & ev, const value& v, call_args& args) -> value { __VA_ARGS__ }

value select_or_reject(evaluator& ev, const value& v, call_args& args, bool select, bool attr) {
  if (!truthy(v)) return generator({});
  std::vector<value> rest = args.positional;
  std::vector<value> parts;
  if (attr) {
    if (rest.empty()) fail(error_kind::type, "Missing parameter for attribute name");
    parts = attribute_parts(&rest[0]);
    rest.erase(rest.begin());
  }
  std::string test;
  if (!rest.empty()) {
    test = str_arg(rest[0], "test name");
    rest.erase(rest.begin());
  }
  std::vector<value> out;
  for (const value& item : iterate(v)) {
    ev.step();
    const value x = attr ? get_path(ev, item, parts) : item;
    call_args targs{rest, args.keyword};
    const bool ok = test.empty() ? truthy(x) : ev.call_test(test, x, targs);
    if (ok == select) out.push_back(item);
  }
  return generator(std::move(out));
}

value min_max(evaluator& ev, const value& v, call_args& args, bool want_max) {
  arg_binder a(want_max ? "max" : "min", args, {"case_sensitive", "attribute"});
  const std::vector<value> items = iterate(v);
  if (items.empty()) return value::undefined("No aggregated item, sequence was empty.");
  const auto parts = attribute_parts(a.get(1));
  const bool cs = a.get(0) && truthy(*a.get(0));
  size_t best = 0;
  value best_key = sort_key(ev, items[0], parts, cs);
  for (size_t i = 1; i < items.size(); ++i) {
    const value k = sort_key(ev, items[i], parts, cs);
    if (want_max ? less(best_key, k, ">") : less(k, best_key)) {
      best = i;
      best_key = k;
    }
  }
  return items[best];
}

value f_tojson(evaluator& ev, const value& v, call_args& args) {
  arg_binder a("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  json_options o;
  o.ensure_ascii = a.get(0) && truthy(*a.get(0));
  if (const value* indent = a.get(1); indent && !indent->is_none()) {
    o.indent = indent->is_string() ? indent->as_string() : std::string(static_cast<size_t>(std::max<int64_t>(0, int_arg(*indent, "indent"))), ' ');
    o.item_separator = ",";
  }
  if (const value* seps = a.get(2); seps && !seps->is_none()) {
    const std::vector<value> s = iterate(*seps);
    if (s.size() != 2) fail(error_kind::value, "separators must be a pair of strings");
    o.item_separator = str_arg(s[0], "separators");
    o.key_separator = str_arg(s[1], "separators");
  }
  o.sort_keys = a.get(3) && truthy(*a.get(3));
  std::string out = to_json(v, o);
  ev.check_size(out.size());
  return out;
}

value f_indent(evaluator&, const value& v, call_args& args) {
  arg_binder a("indent", args, {"width", "first", "blank"});
  const value width = a.get_or(0, int64_t{4});
  const std::string ind = width.is_string() ? width.as_string() : std::string(static_cast<size_t>(std::max<int64_t>(0, int_arg(width, "indent"))), ' ');
  const bool first = a.get(1) && truthy(*a.get(1)), blank = a.get(2) && truthy(*a.get(2));
  const std::vector<std::string> lines = py::splitlines(to_str(v) + "\n", false);
  std::string rv;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) rv += "\n";
    rv += (i > 0 && (blank || !lines[i].empty()) ? ind : "") + lines[i];
  }
  return keep_markup(v, first ? ind + rv : rv);
}

value f_round(evaluator&, const value& v, call_args& args) {
  arg_binder a("round", args, {"precision", "method"});
  const int64_t precision = a.get(0) ? int_arg(*a.get(0), "round") : 0;
  const std::string method = a.get(1) ? str_arg(*a.get(1), "round") : "common";
  if (method != "common" && method != "ceil" && method != "floor") fail(error_kind::value, "method must be common, ceil or floor");
  if (!v.is_number()) fail(error_kind::type, "type " + type_name(v) + " doesn't define __round__ method");
  if (method == "common" && !v.is_float()) return v.as_integral();
  const double x = v.as_double();
  if (method != "common") {
    const double scale = std::pow(10.0, static_cast<double>(precision));
    return (method == "ceil" ? std::ceil(x * scale) : std::floor(x * scale)) / scale;
  }
  if (!std::isfinite(x) || precision > 300) return x;
  if (precision < 0) {
    const double scale = std::pow(10.0, static_cast<double>(-precision));
    return std::nearbyint(x / scale) * scale;
  }
  char buf[400];
  std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(precision), x);  // exact value, ties to even
  return std::strtod(buf, nullptr);
}

struct filter_entry {
  std::string_view name;
  filter_fn fn;
};

const filter_entry filters[] = {
    {"abs", TROUPE_F(arg_binder("abs", args, {});
                     if (v.is_float()) return std::fabs(v.as_float());
                     if (v.is_int() || v.is_bool()) return v.as_integral() < 0 ? unary_op(expr_op::neg, v) : value(v.as_integral());
                     fail(error_kind::type, "bad operand type for abs(): '" + type_name(v) + "'");)},
    {"attr", TROUPE_F(arg_binder a("attr", args, {"name"}); if (v.is_undefined()) v.raise_undefined();
                      const std::string& n = str_arg(a.required(0), "attr");
                      if (v.is_object()) { if (auto x = v.as_object()->attr(n)) return *x; }
                      else if (auto m = builtin_method(v, n)) return *m;
                      return value::undefined("'" + type_repr(v) + "' has no attribute '" + n + "'");)},
    {"batch", TROUPE_F(arg_binder a("batch", args, {"linecount", "fill_with"});
                       const int64_t n = int_arg(a.required(0), "batch");
                       if (n <= 0) fail(error_kind::value, "batch size must be positive");
                       std::vector<value> out, tmp;
                       for (const value& x : iterate(v)) {
                         if (static_cast<int64_t>(tmp.size()) == n) { out.push_back(value::list(std::move(tmp))); tmp.clear(); }
                         tmp.push_back(x);
                       }
                       if (!tmp.empty()) {
                         if (const value* fill = a.get(1); fill && !fill->is_none()) tmp.resize(static_cast<size_t>(n), *fill);
                         out.push_back(value::list(std::move(tmp)));
                       } return generator(std::move(out));)},
    {"capitalize", TROUPE_F(arg_binder("capitalize", args, {}); return keep_markup(v, py::capitalize(to_str(v)));)},
    {"center", TROUPE_F(arg_binder a("center", args, {"width"}); call_args c{{a.get_or(0, int64_t{80})}, {}};
                        return keep_markup(v, builtin_method(to_str(v), "center")->as_object()->call(ev, c).as_string());)},
    {"count", TROUPE_F(arg_binder("count", args, {}); return len(v);)},
    {"d", TROUPE_F(arg_binder a("default", args, {"default_value", "boolean"});
                   return v.is_undefined() || (a.get(1) && truthy(*a.get(1)) && !truthy(v)) ? a.get_or(0, "") : v;)},
    {"dictsort", TROUPE_F(arg_binder a("dictsort", args, {"case_sensitive", "by", "reverse"});
                          if (!v.is_dict()) fail(error_kind::type, "'" + type_name(v) + "' object has no attribute 'items'");
                          const std::string by = a.get(1) ? str_arg(*a.get(1), "dictsort") : "key";
                          if (by != "key" && by != "value") fail(error_kind::value, "You can only sort by either \"key\" or \"value\"");
                          const bool cs = a.get(0) && truthy(*a.get(0)), rev = a.get(2) && truthy(*a.get(2));
                          std::vector<std::pair<value, value>> e = v.as_dict().entries;
                          auto key = [&](const std::pair<value, value>& p) { const value& k = by == "key" ? p.first : p.second; return cs ? k : ignore_case(k); };
                          std::stable_sort(e.begin(), e.end(), [&](const auto& x, const auto& y) { return rev ? less(key(y), key(x)) : less(key(x), key(y)); });
                          std::vector<value> out;
                          for (auto& [k, x] : e) out.push_back(value::list({k, x}, seq_kind::tuple));
                          return value::list(std::move(out));)},
    {"e", TROUPE_F(arg_binder("escape", args, {}); return escape(v);)},
    {"forceescape", TROUPE_F(arg_binder("forceescape", args, {}); return value::markup(html_escape(to_str(v)));)},
    {"first", TROUPE_F(arg_binder("first", args, {}); const auto items = iterate(v);
                       return items.empty() ? value::undefined("No first item, sequence was empty.") : items.front();)},
    {"float", TROUPE_F(arg_binder a("float", args, {"default"}); if (v.is_undefined()) v.raise_undefined();
                       if (v.is_number()) return v.as_double();
                       if (v.is_string()) { if (auto d = parse_float(v.as_string())) return *d; }
                       return a.get_or(0, 0.0);)},
    {"format", TROUPE_F(if (!args.positional.empty() && !args.keyword.empty()) fail(error_kind::type, "can't handle positional and keyword arguments at the same time");
                        const value fmt = v.is_markup() ? v : value(to_str(v));
                        if (args.keyword.empty()) return binary_op(expr_op::mod, fmt, value::list(args.positional, seq_kind::tuple), ev.limits().max_output_bytes);
                        auto d = std::make_shared<dict_obj>();
                        for (const auto& [k, x] : args.keyword) d->set(k, x);
                        return binary_op(expr_op::mod, fmt, value::dict(d), ev.limits().max_output_bytes);)},
    {"indent", f_indent},
    {"int", TROUPE_F(arg_binder a("int", args, {"default", "base"}); if (v.is_undefined()) v.raise_undefined();
                     if (v.is_int() || v.is_bool()) return v.as_integral();
                     if (v.is_float()) { if (std::isfinite(v.as_float())) return static_cast<int64_t>(v.as_float()); }
                     else if (v.is_string()) {
                       if (auto i = parse_int(v.as_string(), a.get(1) ? int_arg(*a.get(1), "int") : 10)) return *i;
                       if (auto d = parse_float(v.as_string()); d && std::isfinite(*d)) return static_cast<int64_t>(*d);
                     } return a.get_or(0, int64_t{0});)},
    {"items", TROUPE_F(arg_binder("items", args, {}); if (v.is_undefined()) return generator({});
                       if (!v.is_dict()) fail(error_kind::type, "Can only get item pairs from a mapping.");
                       std::vector<value> out;
                       for (const auto& [k, x] : v.as_dict().entries) out.push_back(value::list({k, x}, seq_kind::tuple));
                       return generator(std::move(out));)},
    {"join", TROUPE_F(arg_binder a("join", args, {"d", "attribute"}); const std::string sep = to_str(a.get_or(0, ""));
                      const auto parts = attribute_parts(a.get(1));
                      std::string out; bool first = true;
                      for (const value& x : iterate(v)) {
                        if (!first) out += sep;
                        first = false;
                        out += to_str(get_path(ev, x, parts));
                        ev.check_size(out.size());
                      } return out;)},
    {"last", TROUPE_F(arg_binder("last", args, {});
                      if (v.is_list() && v.as_list().kind == seq_kind::generator) fail(error_kind::type, "'generator' object is not reversible");
                      const auto items = iterate(v);
                      return items.empty() ? value::undefined("No last item, sequence was empty.") : items.back();)},
    {"list", TROUPE_F(arg_binder("list", args, {}); return value::list(iterate(v));)},
    {"lower", TROUPE_F(arg_binder("lower", args, {}); return keep_markup(v, py::lower(to_str(v)));)},
    {"map", TROUPE_F(if (!truthy(v)) return generator({});
                     std::vector<value> out;
                     if (args.positional.empty() && !args.keyword.empty() && args.keyword[0].first == "attribute") {
                       arg_binder a("map", args, {"attribute", "default"});
                       const auto parts = attribute_parts(a.get(0));
                       for (const value& x : iterate(v)) { ev.step(); out.push_back(get_path(ev, x, parts, a.get(1) && !a.get(1)->is_none() ? a.get(1) : nullptr)); }
                       return generator(std::move(out));
                     }
                     if (args.positional.empty()) fail(error_kind::type, "map requires a filter argument");
                     const std::string name = str_arg(args.positional[0], "map");
                     call_args rest{{args.positional.begin() + 1, args.positional.end()}, args.keyword};
                     for (const value& x : iterate(v)) { ev.step(); call_args c = rest; out.push_back(ev.call_filter(name, x, c)); }
                     return generator(std::move(out));)},
    {"max", TROUPE_F(return min_max(ev, v, args, true);)},
    {"min", TROUPE_F(return min_max(ev, v, args, false);)},
    {"reject", TROUPE_F(return select_or_reject(ev, v, args, false, false);)},
    {"rejectattr", TROUPE_F(return select_or_reject(ev, v, args, false, true);)},
    {"replace", TROUPE_F(arg_binder a("replace", args, {"old", "new", "count"});
                         const value* count = a.get(2);
                         return py::replace(to_str(v), to_str(a.required(0)), to_str(a.required(1)), count && !count->is_none() ? int_arg(*count, "replace") : -1);)},
    {"reverse", TROUPE_F(arg_binder("reverse", args, {});
                         if (v.is_string()) { std::u32string u = py::decode(v.as_string()); std::reverse(u.begin(), u.end()); return py::encode(u); }
                         std::vector<value> items = iterate(v);
                         std::reverse(items.begin(), items.end());
                         const bool gen = v.is_list() && v.as_list().kind == seq_kind::generator;
                         return gen ? value::list(std::move(items)) : generator(std::move(items));)},
    {"round", f_round},
    {"safe", TROUPE_F(arg_binder("safe", args, {}); return v.is_markup() ? v : value::markup(to_str(v));)},
    {"select", TROUPE_F(return select_or_reject(ev, v, args, true, false);)},
    {"selectattr", TROUPE_F(return select_or_reject(ev, v, args, true, true);)},
    {"slice", TROUPE_F(arg_binder a("slice", args, {"slices", "fill_with"});
                       const std::vector<value> seq = iterate(v);
                       const int64_t slices = int_arg(a.required(0), "slice");
                       if (slices <= 0) fail(error_kind::value, "slice count must be positive");
                       const int64_t n = static_cast<int64_t>(seq.size()), per = n / slices, extra = n % slices;
                       std::vector<value> out; int64_t offset = 0;
                       for (int64_t s = 0; s < slices; ++s) {
                         const int64_t start = offset + s * per;
                         if (s < extra) ++offset;
                         const int64_t end = offset + (s + 1) * per;
                         std::vector<value> part(seq.begin() + start, seq.begin() + end);
                         if (const value* fill = a.get(1); fill && !fill->is_none() && s >= extra) part.push_back(*fill);
                         out.push_back(value::list(std::move(part)));
                       } return generator(std::move(out));)},
    {"sort", TROUPE_F(arg_binder a("sort", args, {"reverse", "case_sensitive", "attribute"});
                      std::vector<value> items = iterate(v);
                      const bool rev = a.get(0) && truthy(*a.get(0)), cs = a.get(1) && truthy(*a.get(1));
                      std::vector<std::vector<value>> attrs;
                      if (const value* at = a.get(2); at && at->is_string()) {
                        static const std::string comma = ",";
                        for (const std::string& p : py::split(at->as_string(), &comma, -1, false)) {
                          const value part(p);
                          attrs.push_back(attribute_parts(&part));
                        }
                      } else {
                        attrs.push_back(attribute_parts(a.get(2)));
                      }
                      std::vector<std::pair<value, value>> keyed;
                      for (value& x : items) {
                        std::vector<value> k;
                        for (const auto& parts : attrs) k.push_back(sort_key(ev, x, parts, cs));
                        keyed.emplace_back(value::list(std::move(k)), std::move(x));
                      }
                      std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) { return rev ? less(y.first, x.first) : less(x.first, y.first); });
                      std::vector<value> out;
                      for (auto& kv : keyed) out.push_back(std::move(kv.second));
                      return value::list(std::move(out));)},
    {"string", TROUPE_F(arg_binder("string", args, {}); return v.is_markup() ? v : value(to_str(v));)},
    {"sum", TROUPE_F(arg_binder a("sum", args, {"attribute", "start"});
                     const auto parts = attribute_parts(a.get(0));
                     value total = a.get_or(1, int64_t{0});
                     for (const value& x : iterate(v)) total = binary_op(expr_op::add, total, get_path(ev, x, parts), ev.limits().max_output_bytes);
                     return total;)},
    {"title", TROUPE_F(arg_binder("title", args, {});
                       // re.split(r"([-\s({\[<]+)") keeps separators; each piece gets item[0].upper() + item[1:].lower().
                       const std::u32string u = py::decode(to_str(v));
                       auto boundary = [](char32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py::is_space(c); };
                       std::string out;
                       for (size_t i = 0; i < u.size();) {
                         size_t j = i;
                         const bool sep = boundary(u[i]);
                         while (j < u.size() && boundary(u[j]) == sep) ++j;
                         const std::string piece = py::encode(std::u32string_view(u).substr(i, j - i));
                         out += sep ? piece : py::upper_first_lower_rest(piece);
                         i = j;
                       } return out;)},
    {"tojson", f_tojson},
    {"trim", TROUPE_F(arg_binder a("trim", args, {"chars"}); const value* chars = a.get(0);
                      if (chars && chars->is_none()) chars = nullptr;
                      return keep_markup(v, py::strip(to_str(v), chars ? &str_arg(*chars, "trim") : nullptr, true, true));)},
    {"truncate", TROUPE_F(arg_binder a("truncate", args, {"length", "killwords", "end", "leeway"});
                          const std::string s = to_str(v);
                          const int64_t length = a.get(0) ? int_arg(*a.get(0), "truncate") : 255;
                          const std::string end = a.get(2) ? str_arg(*a.get(2), "truncate") : "...";
                          const int64_t leeway = a.get(3) && !a.get(3)->is_none() ? int_arg(*a.get(3), "truncate") : 5;
                          const int64_t end_len = static_cast<int64_t>(py::length(end));
                          if (length < end_len || leeway < 0) fail(error_kind::value, "invalid truncate arguments");
                          const std::u32string u = py::decode(s);
                          if (static_cast<int64_t>(u.size()) <= length + leeway) return s;
                          std::string head = py::encode(u.substr(0, static_cast<size_t>(length - end_len)));
                          static const std::string space = " ";
                          if (!(a.get(1) && truthy(*a.get(1)))) head = py::split(head, &space, 1, true)[0];
                          return head + end;)},
    {"unique", TROUPE_F(arg_binder a("unique", args, {"case_sensitive", "attribute"});
                        const bool cs = a.get(0) && truthy(*a.get(0));
                        const auto parts = attribute_parts(a.get(1));
                        std::vector<value> seen, out;
                        for (const value& x : iterate(v)) {
                          ev.step();
                          const value k = sort_key(ev, x, parts, cs);
                          if (k.is_list() || k.is_dict()) fail(error_kind::type, "unhashable type: '" + type_name(k) + "'");
                          if (std::none_of(seen.begin(), seen.end(), [&](const value& s) { return equals(s, k); })) { seen.push_back(k); out.push_back(x); }
                        } return generator(std::move(out));)},
    {"upper", TROUPE_F(arg_binder("upper", args, {}); return keep_markup(v, py::upper(to_str(v)));)},
    {"wordcount", TROUPE_F(arg_binder("wordcount", args, {}); int64_t n = 0; bool in_word = false;
                           for (char32_t c : py::decode(to_str(v))) { const bool w = py::is_word(c); n += w && !in_word; in_word = w; }
                           return n;)},
};

/// Jinja filters that exist but troupe does not implement: a clearer parse error.
const std::string_view unsupported_filters[] = {"filesizeformat", "groupby", "pprint", "random",
                                                "striptags", "urlencode", "urlize", "wordwrap", "xmlattr"};

#define TROUPE_T(...) [](evaluator & ev, const value& v, call_args& args) -> bool { __VA_ARGS__ }

bool compare_test(const value& v, call_args& args, cmp_op op) {
  arg_binder a("compare", args, {"other"});
  const value& o = a.required(0);
  switch (op) {
    case cmp_op::eq: return equals(v, o);
    case cmp_op::ne: return !equals(v, o);
    case cmp_op::lt: return less(v, o, "<");
    case cmp_op::le: return less(v, o, "<=") || equals(v, o);
    case cmp_op::gt: return less(o, v, ">");
    default: return less(o, v, ">=") || equals(v, o);
  }
}

struct test_entry {
  std::string_view name;
  test_fn fn;
};

const test_entry tests[] = {
    {"defined", TROUPE_T(return !v.is_undefined();)},
    {"undefined", TROUPE_T(return v.is_undefined();)},
    {"none", TROUPE_T(return v.is_none();)},
    {"boolean", TROUPE_T(return v.is_bool();)},
    {"false", TROUPE_T(return v.is_bool() && !v.as_bool();)},
    {"true", TROUPE_T(return v.is_bool() && v.as_bool();)},
    {"integer", TROUPE_T(return v.is_int();)},
    {"float", TROUPE_T(return v.is_float();)},
    {"number", TROUPE_T(return v.is_number();)},
    {"string", TROUPE_T(return v.is_string();)},
    {"mapping", TROUPE_T(return v.is_dict();)},
    {"sequence", TROUPE_T(return has_len(v) && !(v.is_list() && v.as_list().kind >= seq_kind::dict_keys);)},
    {"iterable", TROUPE_T(return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict() ||
                                 (v.is_object() && v.as_object()->type_name() == "LoopContext");)},
    {"callable", TROUPE_T(return v.is_undefined() || (v.is_object() && v.as_object()->callable());)},
    {"sameas", TROUPE_T(arg_binder a("sameas", args, {"other"}); const value& o = a.required(0);
                        if (v.identity() || o.identity()) return v.identity() == o.identity();
                        return v.kind() == o.kind() && equals(v, o);)},
    {"escaped", TROUPE_T(return v.is_markup();)},
    {"in", TROUPE_T(arg_binder a("in", args, {"seq"}); return contains(a.required(0), v);)},
    {"lower", TROUPE_T(return py::str_islower(to_str(v));)},
    {"upper", TROUPE_T(return py::str_isupper(to_str(v));)},
    {"odd", TROUPE_T(return equals(binary_op(expr_op::mod, v, int64_t{2}, 0), int64_t{1});)},
    {"even", TROUPE_T(return equals(binary_op(expr_op::mod, v, int64_t{2}, 0), int64_t{0});)},
    {"divisibleby", TROUPE_T(arg_binder a("divisibleby", args, {"num"}); return equals(binary_op(expr_op::mod, v, a.required(0), 0), int64_t{0});)},
    {"filter", TROUPE_T(return v.is_string() && find_filter(v.as_string()) != nullptr;)},
    {"test", TROUPE_T(return v.is_string() && find_test(v.as_string()) != nullptr;)},
    {"eq", TROUPE_T(return compare_test(v, args, cmp_op::eq);)},
    {"equalto", TROUPE_T(return compare_test(v, args, cmp_op::eq);)},
    {"==", TROUPE_T(return compare_test(v, args, cmp_op::eq);)},
    {"ne", TROUPE_T(return compare_test(v, args, cmp_op::ne);)},
    {"!=", TROUPE_T(return compare_test(v, args, cmp_op::ne);)},
    {"lt", TROUPE_T(return compare_test(v, args, cmp_op::lt);)},
    {"lessthan", TROUPE_T(return compare_test(v, args, cmp_op::lt);)},
    {"<", TROUPE_T(return compare_test(v, args, cmp_op::lt);)},
    {"le", TROUPE_T(return compare_test(v, args, cmp_op::le);)},
    {"<=", TROUPE_T(return compare_test(v, args, cmp_op::le);)},
    {"gt", TROUPE_T(return compare_test(v, args, cmp_op::gt);)},
    {"greaterthan", TROUPE_T(return compare_test(v, args, cmp_op::gt);)},
    {">", TROUPE_T(return compare_test(v, args, cmp_op::gt);)},
    {"ge", TROUPE_T(return compare_test(v, args, cmp_op::ge);)},
    {">=", TROUPE_T(return compare_test(v, args, cmp_op::ge);)},
};

}  // namespace

filter_fn find_filter(std::string_view name) {
  if (name == "default") name = "d";
  if (name == "length") name = "count";
  if (name == "escape") name = "e";
  for (const filter_entry& f : filters) {
    if (f.name == name) return f.fn;
  }
  return nullptr;
}

bool unsupported_filter(std::string_view name) {
  return std::find(std::begin(unsupported_filters), std::end(unsupported_filters), name) != std::end(unsupported_filters);
}

test_fn find_test(std::string_view name) {
  for (const test_entry& t : tests) {
    if (t.name == name) return t.fn;
  }
  return nullptr;
}

}  // namespace troupe::jinja
