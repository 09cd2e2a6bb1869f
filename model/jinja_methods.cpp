// Methods of str, list, tuple and dict values, and the global functions (see
// jinja_builtins.hpp). A method name Python's type has but troupe does not
// implement still resolves (so `x.encode is defined` stays true) and fails
// with a clear message when called; mutating methods resolve to an undefined
// that raises SecurityError, exactly as ImmutableSandboxedEnvironment does.
#include <algorithm>
#include <ctime>
#include <string_view>

#include "model/jinja_builtins.hpp"
#include "model/jinja_eval.hpp"
#include "model/jinja_format.hpp"
#include "model/jinja_pystr.hpp"

namespace troupe::jinja {

arg_binder::arg_binder(const char* function, const call_args& args, std::initializer_list<const char*> names)
    : function_(function), names_(names), bound_(names.size(), nullptr) {
  if (args.positional.size() > names_.size()) {
    fail(error_kind::type, std::string(function) + "() takes at most " + std::to_string(names_.size()) +
                               " argument(s) (" + std::to_string(args.positional.size()) + " given)");
  }
  for (size_t i = 0; i < args.positional.size(); ++i) bound_[i] = &args.positional[i];
  for (const auto& [k, v] : args.keyword) {
    const auto it = std::find_if(names_.begin(), names_.end(), [&](const char* n) { return k == n; });
    if (it == names_.end()) fail(error_kind::type, std::string(function) + "() got an unexpected keyword argument '" + k + "'");
    const size_t i = static_cast<size_t>(it - names_.begin());
    if (bound_[i]) fail(error_kind::type, std::string(function) + "() got multiple values for argument '" + k + "'");
    bound_[i] = &v;
  }
}

const value& arg_binder::required(size_t i) const {
  if (!get(i)) fail(error_kind::type, std::string(function_) + "() missing required argument '" + names_[i] + "'");
  return *get(i);
}

int64_t int_arg(const value& v, const char* what) {
  if (!v.is_int() && !v.is_bool()) fail(error_kind::type, std::string(what) + ": '" + type_name(v) + "' object cannot be interpreted as an integer");
  return v.as_integral();
}

const std::string& str_arg(const value& v, const char* what) {
  if (!v.is_string()) fail(error_kind::type, std::string(what) + ": must be str, not " + type_name(v));
  return v.as_string();
}

namespace {

using method_fn = value (*)(evaluator& ev, const value& self, const call_args& args);

class method_obj : public object {
 public:
  method_obj(value self, std::string name, method_fn fn) : self_(std::move(self)), name_(std::move(name)), fn_(fn) {}
  std::string type_name() const override { return "builtin_function_or_method"; }
  std::string repr() const override { return "<built-in method " + name_ + " of " + jinja::type_name(self_) + " object>"; }
  bool callable() const override { return true; }
  value call(evaluator& ev, call_args& args) const override { return fn_(ev, self_, args); }

 private:
  value self_;
  std::string name_;
  method_fn fn_;
};

/// A str method called on Markup, as markupsafe wraps it: string arguments
/// are escaped first (join escapes the items), string results become Markup.
class markup_method_obj : public object {
 public:
  markup_method_obj(value self, std::string name, method_fn fn) : self_(std::move(self)), name_(std::move(name)), fn_(fn) {}
  std::string type_name() const override { return "function"; }
  bool callable() const override { return true; }
  value call(evaluator& ev, call_args& args) const override {
    static const std::string_view escaping[] = {"capitalize", "title", "lower", "upper", "replace", "ljust", "rjust",
                                                "lstrip", "rstrip", "center", "strip", "swapcase", "zfill",
                                                "removeprefix", "removesuffix", "partition", "rpartition", "format"};
    static const std::string_view wrapping[] = {"split", "rsplit", "splitlines", "join"};
    const bool esc = std::find(std::begin(escaping), std::end(escaping), name_) != std::end(escaping);
    const bool wrap = esc || std::find(std::begin(wrapping), std::end(wrapping), name_) != std::end(wrapping);
    call_args a = args;
    auto escape_arg = [](value& v) {
      if (v.is_string()) v = escape(v);
    };
    if (esc) {
      for (value& v : a.positional) escape_arg(v);
      for (auto& kv : a.keyword) escape_arg(kv.second);
    }
    if (name_ == "join" && !a.positional.empty()) {
      std::vector<value> items = iterate(a.positional[0]);
      for (value& v : items) escape_arg(v);
      a.positional[0] = value::list(std::move(items));
    }
    value r = fn_(ev, value(self_.as_string()), a);
    if (!wrap) return r;
    if (r.is_string()) return value::markup(r.as_string());
    if (!r.is_list()) return r;
    std::vector<value> items;
    for (const value& v : r.as_list().items) items.push_back(v.is_string() ? value::markup(v.as_string()) : v);
    return value::list(std::move(items), r.as_list().kind);
  }

 private:
  value self_;
  std::string name_;
  method_fn fn_;
};

using global_fn = value (*)(evaluator& ev, const call_args& args);

class function_obj : public object {
 public:
  function_obj(std::string name, global_fn fn) : name_(std::move(name)), fn_(fn) {}
  std::string type_name() const override { return "function"; }
  std::string repr() const override { return "<function " + name_ + ">"; }
  bool callable() const override { return true; }
  value call(evaluator& ev, call_args& args) const override { return fn_(ev, args); }

 private:
  std::string name_;
  global_fn fn_;
};

class namespace_obj : public object {
 public:
  explicit namespace_obj(std::shared_ptr<dict_obj> attrs) : attrs_(std::move(attrs)) {}
  std::string type_name() const override { return "Namespace"; }
  std::string type_repr() const override { return "jinja2.utils.Namespace object"; }
  std::string repr() const override { return "<Namespace " + jinja::repr(value::dict(attrs_)) + ">"; }
  std::optional<value> attr(const std::string& name) const override {
    if (const value* v = attrs_->find(name)) return *v;
    return std::nullopt;
  }
  bool set_attr(const std::string& name, value v) override {
    attrs_->set(name, std::move(v));
    return true;
  }
  void release() override { attrs_->entries.clear(); }

 private:
  std::shared_ptr<dict_obj> attrs_;
};

const std::string& self_str(const value& self) { return self.as_string(); }

/// The code points of `s` between Python-style optional start/end arguments.
std::string str_range(const std::string& s, const value* start, const value* end, int64_t& offset) {
  const std::u32string u = py::decode(s);
  const int64_t n = static_cast<int64_t>(u.size());
  auto norm = [&](const value* v, int64_t dflt) {
    if (!v || v->is_none()) return dflt;
    int64_t i = int_arg(*v, "slice index");
    if (i < 0) i = std::max<int64_t>(0, i + n);
    return std::min(i, n);
  };
  const int64_t b = norm(start, 0), e = norm(end, n);
  offset = b;
  return e <= b ? std::string() : py::encode(std::u32string_view(u).substr(static_cast<size_t>(b), static_cast<size_t>(e - b)));
}

value str_affix(const value& self, const call_args& args, bool prefix) {
  arg_binder a(prefix ? "startswith" : "endswith", args, {"prefix", "start", "end"});
  int64_t off = 0;
  const std::string s = str_range(self_str(self), a.get(1), a.get(2), off);
  auto test = [&](const value& p) {
    const std::string& x = str_arg(p, prefix ? "startswith" : "endswith");
    return s.size() >= x.size() && (prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0);
  };
  const value& p = a.required(0);
  if (p.is_list() && p.as_list().kind == seq_kind::tuple) {
    return std::any_of(p.as_list().items.begin(), p.as_list().items.end(), test);
  }
  return test(p);
}

value str_strip(const value& self, const call_args& args, bool left, bool right, const char* name) {
  arg_binder a(name, args, {"chars"});
  const value* chars = a.get(0);
  if (chars && chars->is_none()) chars = nullptr;
  return py::strip(self_str(self), chars ? &str_arg(*chars, name) : nullptr, left, right);
}

value str_split(const value& self, const call_args& args, bool right) {
  arg_binder a(right ? "rsplit" : "split", args, {"sep", "maxsplit"});
  const value* sep = a.get(0);
  if (sep && sep->is_none()) sep = nullptr;
  const int64_t maxsplit = a.get(1) ? int_arg(*a.get(1), "maxsplit") : -1;
  std::vector<value> parts;
  try {
    for (auto& p : py::split(self_str(self), sep ? &str_arg(*sep, "split") : nullptr, maxsplit, right)) parts.emplace_back(std::move(p));
  } catch (const std::invalid_argument&) {
    fail(error_kind::value, "empty separator");
  }
  return value::list(std::move(parts));
}

value str_find(const value& self, const call_args& args, bool right, bool raise, const char* name) {
  arg_binder a(name, args, {"sub", "start", "end"});
  int64_t off = 0;
  const std::string s = str_range(self_str(self), a.get(1), a.get(2), off);
  const int64_t at = py::find(s, str_arg(a.required(0), name), right);
  if (at < 0 && raise) fail(error_kind::value, "substring not found");
  return at < 0 ? at : at + off;
}

value str_pad(const value& self, const call_args& args, char align, const char* name) {
  arg_binder a(name, args, {"width", "fillchar"});
  const int64_t width = int_arg(a.required(0), name);
  const std::string fill = a.get(1) ? str_arg(*a.get(1), name) : " ";
  const std::string& s = self_str(self);
  const int64_t n = static_cast<int64_t>(py::length(s));
  if (width <= n) return s;
  const int64_t marg = width - n;
  const int64_t left = align == '<' ? 0 : align == '>' ? marg : marg / 2 + (marg & width & 1);
  std::string out;
  for (int64_t i = 0; i < left; ++i) out += fill;
  out += s;
  for (int64_t i = 0; i < marg - left; ++i) out += fill;
  return out;
}

value str_partition(const value& self, const call_args& args, bool right) {
  arg_binder a(right ? "rpartition" : "partition", args, {"sep"});
  const std::string& s = self_str(self);
  const std::string& sep = str_arg(a.required(0), "partition");
  if (sep.empty()) fail(error_kind::value, "empty separator");
  const size_t at = right ? s.rfind(sep) : s.find(sep);
  if (at == std::string::npos) {
    return right ? value::list({"", "", s}, seq_kind::tuple) : value::list({s, "", ""}, seq_kind::tuple);
  }
  return value::list({s.substr(0, at), sep, s.substr(at + sep.size())}, seq_kind::tuple);
}

bool is_alnum(char32_t c) { return c != '_' && py::is_word(c); }

template <bool (*pred)(char32_t)>
value str_all(const value& self, const call_args&) {
  const std::u32string u = py::decode(self_str(self));
  return !u.empty() && std::all_of(u.begin(), u.end(), pred);
}

struct method_entry {
  std::string_view name;
  method_fn fn;
};

#define TROUPE_M(...) [](evaluator & ev, const value& self, const call_args& args) -> value { __VA_ARGS__ }

const method_entry str_methods[] = {
    {"startswith", TROUPE_M(return str_affix(self, args, true);)},
    {"endswith", TROUPE_M(return str_affix(self, args, false);)},
    {"strip", TROUPE_M(return str_strip(self, args, true, true, "strip");)},
    {"lstrip", TROUPE_M(return str_strip(self, args, true, false, "lstrip");)},
    {"rstrip", TROUPE_M(return str_strip(self, args, false, true, "rstrip");)},
    {"split", TROUPE_M(return str_split(self, args, false);)},
    {"rsplit", TROUPE_M(return str_split(self, args, true);)},
    {"upper", TROUPE_M(arg_binder("upper", args, {}); return py::upper(self_str(self));)},
    {"lower", TROUPE_M(arg_binder("lower", args, {}); return py::lower(self_str(self));)},
    {"casefold", TROUPE_M(arg_binder("casefold", args, {}); return py::lower(self_str(self));)},
    {"title", TROUPE_M(arg_binder("title", args, {}); return py::title(self_str(self));)},
    {"capitalize", TROUPE_M(arg_binder("capitalize", args, {}); return py::capitalize(self_str(self));)},
    {"replace", TROUPE_M(arg_binder a("replace", args, {"old", "new", "count"});
                         return py::replace(self_str(self), str_arg(a.required(0), "replace"), str_arg(a.required(1), "replace"),
                                            a.get(2) ? int_arg(*a.get(2), "replace") : -1);)},
    {"find", TROUPE_M(return str_find(self, args, false, false, "find");)},
    {"rfind", TROUPE_M(return str_find(self, args, true, false, "rfind");)},
    {"index", TROUPE_M(return str_find(self, args, false, true, "index");)},
    {"rindex", TROUPE_M(return str_find(self, args, true, true, "rindex");)},
    {"count", TROUPE_M(arg_binder a("count", args, {"sub", "start", "end"}); int64_t off = 0;
                       return py::count(str_range(self_str(self), a.get(1), a.get(2), off), str_arg(a.required(0), "count"));)},
    {"format", TROUPE_M(return str_format(ev, self.as_string(), args);)},
    {"join", TROUPE_M(arg_binder a("join", args, {"iterable"}); std::string out; bool first = true;
                      for (const value& x : iterate(a.required(0))) {
                        if (!first) out += self_str(self);
                        first = false;
                        out += str_arg(x, "sequence item");
                        ev.check_size(out.size());
                      } return out;)},
    {"splitlines", TROUPE_M(arg_binder a("splitlines", args, {"keepends"}); std::vector<value> lines;
                            for (auto& l : py::splitlines(self_str(self), a.get(0) && truthy(*a.get(0)))) lines.emplace_back(std::move(l));
                            return value::list(std::move(lines));)},
    {"isdigit", TROUPE_M(return str_all<py::is_digit>(self, args);)},
    {"isdecimal", TROUPE_M(return str_all<py::is_digit>(self, args);)},
    {"isnumeric", TROUPE_M(return str_all<py::is_digit>(self, args);)},
    {"isalpha", TROUPE_M(return str_all<py::is_alpha>(self, args);)},
    {"isalnum", TROUPE_M(return str_all<is_alnum>(self, args);)},
    {"isspace", TROUPE_M(return str_all<py::is_space>(self, args);)},
    {"isascii", TROUPE_M(const std::string& s = self_str(self);
                         return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });)},
    {"islower", TROUPE_M(return py::str_islower(self_str(self));)},
    {"isupper", TROUPE_M(return py::str_isupper(self_str(self));)},
    {"center", TROUPE_M(return str_pad(self, args, '^', "center");)},
    {"ljust", TROUPE_M(return str_pad(self, args, '<', "ljust");)},
    {"rjust", TROUPE_M(return str_pad(self, args, '>', "rjust");)},
    {"zfill", TROUPE_M(arg_binder a("zfill", args, {"width"}); std::string s = self_str(self);
                       const int64_t w = int_arg(a.required(0), "zfill"), n = static_cast<int64_t>(py::length(s));
                       if (w <= n) return s;
                       const size_t at = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
                       s.insert(at, static_cast<size_t>(w - n), '0'); return s;)},
    {"removeprefix", TROUPE_M(arg_binder a("removeprefix", args, {"prefix"}); const std::string& s = self_str(self);
                              const std::string& p = str_arg(a.required(0), "removeprefix");
                              return s.compare(0, p.size(), p) == 0 ? s.substr(p.size()) : s;)},
    {"removesuffix", TROUPE_M(arg_binder a("removesuffix", args, {"suffix"}); const std::string& s = self_str(self);
                              const std::string& p = str_arg(a.required(0), "removesuffix");
                              return !p.empty() && s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0
                                         ? s.substr(0, s.size() - p.size()) : s;)},
    {"partition", TROUPE_M(return str_partition(self, args, false);)},
    {"rpartition", TROUPE_M(return str_partition(self, args, true);)},
};

const std::string_view str_unimplemented[] = {"encode", "expandtabs", "format_map", "isidentifier", "isprintable",
                                              "istitle", "maketrans", "swapcase", "translate"};

value seq_count(const value& self, const call_args& args) {
  arg_binder a("count", args, {"value"});
  const auto& items = self.as_list().items;
  return static_cast<int64_t>(std::count_if(items.begin(), items.end(), [&](const value& x) { return equals(x, a.required(0)); }));
}

value seq_index(const value& self, const call_args& args) {
  arg_binder a("index", args, {"value", "start", "stop"});
  const auto& items = self.as_list().items;
  const int64_t n = static_cast<int64_t>(items.size());
  auto norm = [&](const value* v, int64_t d) {
    if (!v) return d;
    int64_t i = int_arg(*v, "index");
    if (i < 0) i = std::max<int64_t>(0, i + n);
    return std::min(i, n);
  };
  for (int64_t i = norm(a.get(1), 0), e = norm(a.get(2), n); i < e; ++i) {
    if (equals(items[static_cast<size_t>(i)], a.required(0))) return i;
  }
  fail(error_kind::value, self.as_list().kind == seq_kind::tuple ? "tuple.index(x): x not in tuple" : repr(a.required(0)) + " is not in list");
}

value dict_view(const value& self, seq_kind kind) {
  std::vector<value> items;
  for (const auto& [k, v] : self.as_dict().entries) {
    items.push_back(kind == seq_kind::dict_keys ? k : kind == seq_kind::dict_values ? v : value::list({k, v}, seq_kind::tuple));
  }
  return value::list(std::move(items), kind);
}

const method_entry list_methods[] = {
    {"count", TROUPE_M(return seq_count(self, args);)},
    {"index", TROUPE_M(return seq_index(self, args);)},
    {"copy", TROUPE_M(arg_binder("copy", args, {}); return value::list(self.as_list().items);)},
};
const std::string_view list_mutators[] = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};

const method_entry dict_methods[] = {
    {"items", TROUPE_M(arg_binder("items", args, {}); return dict_view(self, seq_kind::dict_items);)},
    {"keys", TROUPE_M(arg_binder("keys", args, {}); return dict_view(self, seq_kind::dict_keys);)},
    {"values", TROUPE_M(arg_binder("values", args, {}); return dict_view(self, seq_kind::dict_values);)},
    {"get", TROUPE_M(arg_binder a("get", args, {"key", "default"}); const value* v = self.as_dict().find(a.required(0));
                     return v ? *v : a.get_or(1, value::none());)},
    {"copy", TROUPE_M(arg_binder("copy", args, {}); return value::dict(std::make_shared<dict_obj>(self.as_dict()));)},
};
const std::string_view dict_mutators[] = {"clear", "pop", "popitem", "setdefault", "update"};

template <size_t N>
const method_entry* find_entry(const method_entry (&table)[N], std::string_view name) {
  for (const method_entry& e : table) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

template <size_t N>
bool listed(const std::string_view (&names)[N], std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

value bound(const value& self, const std::string& name, method_fn fn) {
  return value::object(std::make_shared<method_obj>(self, name, fn));
}

value unsafe(const value& self, const std::string& name) {
  return value::undefined("access to attribute '" + name + "' of '" + type_name(self) + "' object is unsafe.", error_kind::security);
}

}  // namespace

std::optional<value> builtin_method(const value& self, const std::string& name) {
  if (self.is_string()) {
    if (const method_entry* e = find_entry(str_methods, name)) {
      if (self.is_markup()) return value::object(std::make_shared<markup_method_obj>(self, name, e->fn));
      return bound(self, name, e->fn);
    }
    if (listed(str_unimplemented, name)) {
      return bound(self, name, TROUPE_M(fail(error_kind::unsupported, "this str method is not supported by troupe");));
    }
  } else if (self.is_list() && (self.as_list().kind == seq_kind::list || self.as_list().kind == seq_kind::tuple)) {
    const bool is_list = self.as_list().kind == seq_kind::list;
    if (name == "count" || name == "index" || (is_list && name == "copy")) return bound(self, name, find_entry(list_methods, name)->fn);
    if (is_list && listed(list_mutators, name)) return unsafe(self, name);
  } else if (self.is_dict()) {
    if (const method_entry* e = find_entry(dict_methods, name)) return bound(self, name, e->fn);
    if (listed(dict_mutators, name)) return unsafe(self, name);
  }
  return std::nullopt;
}

#define TROUPE_G(...) [](evaluator & ev, const call_args& args) -> value { __VA_ARGS__ }

std::vector<std::pair<std::string, value>> builtin_globals() {
  auto fn = [](const char* name, global_fn f) { return std::pair<std::string, value>(name, value::object(std::make_shared<function_obj>(name, f))); };
  return {
      fn("range", TROUPE_G(
          if (!args.keyword.empty()) fail(error_kind::type, "range() takes no keyword arguments");
          const auto& p = args.positional;
          if (p.empty() || p.size() > 3) fail(error_kind::type, "range expected 1 to 3 arguments, got " + std::to_string(p.size()));
          const int64_t start = p.size() == 1 ? 0 : int_arg(p[0], "range");
          const int64_t stop = int_arg(p.size() == 1 ? p[0] : p[1], "range");
          const int64_t stride = p.size() == 3 ? int_arg(p[2], "range") : 1;
          if (stride == 0) fail(error_kind::value, "range() arg 3 must not be zero");
          const int64_t count = stride > 0 ? (stop > start ? (stop - start + stride - 1) / stride : 0)
                                           : (start > stop ? (start - stop - stride - 1) / -stride : 0);
          if (count > 100000) fail(error_kind::value, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
          ev.step(static_cast<uint64_t>(count));
          std::vector<value> items;
          for (int64_t i = 0; i < count; ++i) items.emplace_back(start + i * stride);
          return value::list(std::move(items));)),
      fn("namespace", TROUPE_G(
          auto attrs = std::make_shared<dict_obj>();
          if (args.positional.size() > 1) fail(error_kind::type, "namespace() takes at most one positional argument");
          if (!args.positional.empty()) {
            const value& init = args.positional[0];
            if (!init.is_dict()) fail(error_kind::type, "namespace() argument must be a mapping");
            *attrs = init.as_dict();
          }
          for (const auto& [k, v] : args.keyword) attrs->set(k, v);
          auto ns = std::make_shared<namespace_obj>(attrs);
          ev.track(ns);
          return value::object(ns);)),
      fn("dict", TROUPE_G(
          auto d = std::make_shared<dict_obj>();
          if (args.positional.size() > 1) fail(error_kind::type, "dict expected at most 1 argument");
          if (!args.positional.empty()) {
            const value& init = args.positional[0];
            if (init.is_dict()) {
              *d = init.as_dict();
            } else {
              for (const value& pair : iterate(init)) {
                const std::vector<value> kv = iterate(pair);
                if (kv.size() != 2) fail(error_kind::value, "dictionary update sequence element has length " + std::to_string(kv.size()) + "; 2 is required");
                d->set(kv[0], kv[1]);
              }
            }
          }
          for (const auto& [k, v] : args.keyword) d->set(k, v);
          return value::dict(d);)),
      fn("raise_exception", TROUPE_G(
          arg_binder a("raise_exception", args, {"message"});
          fail(error_kind::template_error, to_str(a.required(0)));)),
      fn("strftime_now", TROUPE_G(
          arg_binder a("strftime_now", args, {"format"});
          const std::string& f = str_arg(a.required(0), "strftime_now");
          const std::time_t now = std::time(nullptr);
          std::tm local{};
          localtime_r(&now, &local);
          std::string buf(256 + f.size() * 8, '\0');
          buf.resize(std::strftime(buf.data(), buf.size(), f.c_str(), &local));
          return buf;)),
  };
}

}  // namespace troupe::jinja
