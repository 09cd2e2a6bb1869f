// Evaluator (see jinja_eval.hpp). Scopes are frames chained to their parent;
// macros and loops keep only a weak reference to the frame they were made in,
// so a macro stored in the context it closes over does not leak the render.
// Errors thrown anywhere below an expression or statement get the position of
// the innermost node that saw them.
#include "model/jinja_eval.hpp"

#include <algorithm>

#include "model/jinja_builtins.hpp"
#include "model/jinja_ops.hpp"

namespace troupe::jinja {

struct frame {
  std::shared_ptr<frame> parent;
  std::vector<std::pair<std::string, value>> vars;

  const value* find(const std::string& name) const {
    for (const frame* f = this; f; f = f->parent.get()) {
      for (const auto& [k, v] : f->vars) {
        if (k == name) return &v;
      }
    }
    return nullptr;
  }
  void set(const std::string& name, value v) {
    for (auto& [k, old] : vars) {
      if (k == name) {
        old = std::move(v);
        return;
      }
    }
    vars.emplace_back(name, std::move(v));
  }
};

struct evaluator::macro_call {
  const stmt* def = nullptr;    ///< the macro or call block
  std::weak_ptr<frame> scope;   ///< where it was defined
  std::string name;
};

namespace {

std::shared_ptr<frame> child(const std::shared_ptr<frame>& parent) {
  auto f = std::make_shared<frame>();
  f->parent = parent;
  return f;
}

class macro_obj : public object {
 public:
  explicit macro_obj(evaluator::macro_call m) : m_(std::move(m)) {}
  std::string type_name() const override { return "Macro"; }
  std::string type_repr() const override { return "jinja2.runtime.Macro object"; }
  std::string repr() const override { return "<Macro '" + m_.name + "'>"; }
  std::optional<value> attr(const std::string& name) const override {
    if (name == "name") return value(m_.name);
    if (name == "arguments") {
      std::vector<value> params(m_.def->params.begin(), m_.def->params.end());
      return value::list(std::move(params), seq_kind::tuple);
    }
    return std::nullopt;
  }
  bool callable() const override { return true; }
  value call(evaluator& ev, call_args& args) const override { return ev.run_macro(m_, args); }

 private:
  evaluator::macro_call m_;
};

class loop_obj : public object, public std::enable_shared_from_this<loop_obj> {
 public:
  loop_obj(std::vector<value> items, int depth0, const stmt* def, std::weak_ptr<frame> scope)
      : items(std::move(items)), depth0(depth0), def(def), scope(std::move(scope)) {}
  std::string type_name() const override { return "LoopContext"; }
  std::string type_repr() const override { return "jinja2.runtime.LoopContext object"; }
  std::string repr() const override {
    return "<LoopContext " + std::to_string(index0 + 1) + "/" + std::to_string(items.size()) + ">";
  }
  std::optional<value> attr(const std::string& name) const override {
    const auto n = static_cast<int64_t>(items.size());
    const auto i = static_cast<int64_t>(index0);
    if (name == "index") return value(i + 1);
    if (name == "index0") return value(i);
    if (name == "revindex") return value(n - i);
    if (name == "revindex0") return value(n - i - 1);
    if (name == "first") return value(i == 0);
    if (name == "last") return value(i + 1 == n);
    if (name == "length") return value(n);
    if (name == "depth") return value(static_cast<int64_t>(depth0) + 1);
    if (name == "depth0") return value(static_cast<int64_t>(depth0));
    if (name == "previtem") return i > 0 ? items[index0 - 1] : value::undefined("there is no previous item");
    if (name == "nextitem") return i + 1 < n ? items[index0 + 1] : value::undefined("there is no next item");
    if (name == "cycle" || name == "changed") {
      return value::object(std::make_shared<loop_method>(std::const_pointer_cast<loop_obj>(shared_from_this()), name == "cycle"));
    }
    return std::nullopt;
  }
  bool callable() const override { return true; }
  value call(evaluator& ev, call_args& args) const override {
    if (!def->recursive) fail(error_kind::type, "Tried to call non recursive loop. Maybe you forgot the 'recursive' modifier.");
    arg_binder a("loop", args, {"iterable"});
    auto s = scope.lock();
    if (!s) fail(error_kind::unsupported, "recursive loop called after its scope ended");
    return ev.run_loop_again(*def, s, a.required(0), depth0 + 1);
  }

  std::vector<value> items;
  size_t index0 = 0;
  int depth0 = 0;
  const stmt* def;
  std::weak_ptr<frame> scope;
  std::optional<value> last_changed;

 private:
  class loop_method : public object {
   public:
    loop_method(std::shared_ptr<loop_obj> loop, bool cycle) : loop_(std::move(loop)), cycle_(cycle) {}
    std::string type_name() const override { return "method"; }
    bool callable() const override { return true; }
    value call(evaluator&, call_args& args) const override {
      if (cycle_) {
        if (args.positional.empty()) fail(error_kind::type, "no items for cycling given");
        return args.positional[loop_->index0 % args.positional.size()];
      }
      const value now = value::list(args.positional, seq_kind::tuple);
      if (loop_->last_changed && equals(*loop_->last_changed, now)) return false;
      loop_->last_changed = now;
      return true;
    }

   private:
    std::shared_ptr<loop_obj> loop_;
    bool cycle_;
  };
};

}  // namespace

evaluator::evaluator(render_limits limits) : limits_(limits) {}
evaluator::~evaluator() = default;

std::string evaluator::render(const template_ast& t, std::vector<std::pair<std::string, value>> vars) {
  struct release_at_end {
    std::vector<std::weak_ptr<object>>& objects;
    ~release_at_end() {
      for (const auto& w : objects) {
        if (auto o = w.lock()) o->release();
      }
      objects.clear();
    }
  } release{mutables_};
  auto globals = std::make_shared<frame>();
  globals->vars = builtin_globals();
  auto context = child(globals);
  for (auto& [k, v] : vars) context->set(k, std::move(v));
  std::string out;
  exec(t.body, context, out);
  return out;
}

void evaluator::step(uint64_t n) {
  steps_ += n;
  if (steps_ > limits_.max_steps) {
    fail(error_kind::limit, "template exceeded " + std::to_string(limits_.max_steps) +
                                " evaluation steps (loop iterations and calls); it may loop without end");
  }
}

void evaluator::check_size(size_t bytes) const {
  if (bytes > limits_.max_output_bytes) {
    fail(error_kind::limit, "template output exceeds " + std::to_string(limits_.max_output_bytes) + " bytes");
  }
}

void evaluator::append(std::string& out, std::string_view text) const {
  check_size(out.size() + text.size());
  out += text;
}

value evaluator::getattr(const value& obj, const std::string& name) { return get_attribute(obj, name); }
value evaluator::getitem(const value& obj, const value& key) { return get_item(obj, key); }

value evaluator::call(const value& callee, call_args& args) {
  if (callee.is_undefined()) callee.raise_undefined();
  if (callee.is_object() && callee.as_object()->callable()) {
    step();
    return callee.as_object()->call(*this, args);
  }
  fail(error_kind::type, "'" + type_name(callee) + "' object is not callable");
}

value evaluator::call_filter(const std::string& name, const value& input, call_args& args) {
  const filter_fn f = find_filter(name);
  if (!f) fail(error_kind::type, "No filter named '" + name + "'.");
  return f(*this, input, args);
}

bool evaluator::call_test(const std::string& name, const value& input, call_args& args) {
  const test_fn t = find_test(name);
  if (!t) fail(error_kind::type, "No test named '" + name + "'.");
  return t(*this, input, args);
}

value evaluator::make_macro(const stmt& def, const std::shared_ptr<frame>& scope, const std::string& name) {
  return value::object(std::make_shared<macro_obj>(macro_call{&def, scope, name}));
}

value evaluator::run_macro(const macro_call& m, call_args& args) {
  if (depth_ >= limits_.max_call_depth) {
    fail(error_kind::limit, "template calls nested deeper than " + std::to_string(limits_.max_call_depth) + " levels");
  }
  auto scope = m.scope.lock();
  if (!scope) fail(error_kind::unsupported, "macro '" + m.name + "' called after the scope it was defined in ended");
  const stmt& d = *m.def;
  auto f = child(scope);
  const size_t np = d.params.size();
  std::vector<bool> bound(np, false);
  std::vector<value> extra;
  for (size_t i = 0; i < args.positional.size(); ++i) {
    if (i < np) {
      f->set(d.params[i], args.positional[i]);
      bound[i] = true;
    } else {
      extra.push_back(args.positional[i]);
    }
  }
  if (!extra.empty() && !d.uses_varargs) {
    fail(error_kind::type, "macro '" + m.name + "' takes not more than " + std::to_string(np) + " argument(s)");
  }
  auto kwargs = std::make_shared<dict_obj>();
  value caller = value::undefined("No caller defined");
  for (auto& [k, v] : args.keyword) {
    const auto it = std::find(d.params.begin(), d.params.end(), k);
    if (it != d.params.end()) {
      const size_t i = static_cast<size_t>(it - d.params.begin());
      if (bound[i]) fail(error_kind::type, "macro '" + m.name + "' got multiple values for argument '" + k + "'");
      f->set(k, v);
      bound[i] = true;
    } else if (k == "caller" && d.uses_caller) {
      caller = v;
    } else if (d.uses_kwargs) {
      kwargs->set(k, v);
    } else {
      fail(error_kind::type, "macro '" + m.name + "' takes no keyword argument '" + k + "'");
    }
  }
  const size_t first_default = np - d.defaults.size();
  for (size_t i = 0; i < np; ++i) {
    if (bound[i]) continue;
    f->set(d.params[i], i >= first_default ? eval(*d.defaults[i - first_default], f)
                                           : value::undefined("parameter '" + d.params[i] + "' was not provided"));
  }
  if (d.uses_varargs) f->set("varargs", value::list(std::move(extra), seq_kind::tuple));
  if (d.uses_kwargs) f->set("kwargs", value::dict(kwargs));
  if (d.uses_caller) f->set("caller", caller);
  ++depth_;
  std::string out;
  try {
    exec(d.body, f, out);
  } catch (...) {
    --depth_;
    throw;
  }
  --depth_;
  return out;
}

value evaluator::run_loop_again(const stmt& loop, const std::shared_ptr<frame>& scope, const value& iterable, int depth0) {
  if (depth_ >= limits_.max_call_depth) {
    fail(error_kind::limit, "template calls nested deeper than " + std::to_string(limits_.max_call_depth) + " levels");
  }
  ++depth_;
  std::string out;
  try {
    exec_for(loop, scope, iterable, depth0, out);
  } catch (...) {
    --depth_;
    throw;
  }
  --depth_;
  return out;
}

evaluator::flow evaluator::exec(const std::vector<stmt_ptr>& body, const std::shared_ptr<frame>& f, std::string& out) {
  for (const stmt_ptr& s : body) {
    if (const flow r = exec_stmt(*s, f, out); r != flow::normal) return r;
  }
  return flow::normal;
}

evaluator::flow evaluator::exec_stmt(const stmt& s, const std::shared_ptr<frame>& f, std::string& out) {
  try {
    switch (s.op) {
      case stmt_op::text: append(out, s.text); return flow::normal;
      case stmt_op::output: append(out, to_str(eval(*s.exprs[0], f))); return flow::normal;
      case stmt_op::if_: return exec(truthy(eval(*s.exprs[0], f)) ? s.body : s.else_body, f, out);
      case stmt_op::for_: exec_for(s, f, eval(*s.exprs[0], f), 0, out); return flow::normal;
      case stmt_op::set: assign(*s.target, eval(*s.exprs[0], f), f); return flow::normal;
      case stmt_op::macro: f->set(s.text, make_macro(s, f, s.text)); return flow::normal;
      case stmt_op::set_block:
      case stmt_op::filter_block: {
        std::string body;
        exec(s.body, child(f), body);
        value saved = std::move(block_input_);
        block_input_ = std::move(body);
        value result = eval(*s.exprs[0], f);
        block_input_ = std::move(saved);
        if (s.op == stmt_op::set_block) assign(*s.target, std::move(result), f);
        else append(out, to_str(result));
        return flow::normal;
      }
      case stmt_op::call_block: {
        const expr& c = *s.exprs[0];
        const value callee = eval(*c.kids[0], f);
        call_args args = eval_args(c, 1, f);
        args.keyword.emplace_back("caller", make_macro(s, f, "caller"));
        append(out, to_str(call(callee, args)));
        return flow::normal;
      }
      case stmt_op::with: {
        auto inner = child(f);
        for (size_t i = 0; i < s.params.size(); ++i) inner->set(s.params[i], eval(*s.exprs[i], f));
        return exec(s.body, inner, out);
      }
      case stmt_op::scope: return exec(s.body, child(f), out);
      case stmt_op::break_: return flow::break_;
      case stmt_op::continue_: return flow::continue_;
    }
  } catch (eval_error& e) {
    if (e.pos.line == 0) e.pos = s.pos;
    throw;
  }
  return flow::normal;
}

void evaluator::exec_for(const stmt& s, const std::shared_ptr<frame>& f, const value& iterable, int depth0, std::string& out) {
  std::vector<value> items = iterate(iterable);
  if (s.exprs.size() > 1) {
    std::vector<value> kept;
    for (value& item : items) {
      step();
      auto test_frame = child(f);
      assign(*s.target, item, test_frame);
      if (truthy(eval(*s.exprs[1], test_frame))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    exec(s.else_body, child(f), out);
    return;
  }
  auto loop = std::make_shared<loop_obj>(std::move(items), depth0, &s, f);
  const value loop_value = value::object(loop);
  for (size_t i = 0; i < loop->items.size(); ++i) {
    step();
    loop->index0 = i;
    auto it = child(f);
    assign(*s.target, loop->items[i], it);
    it->set("loop", loop_value);
    if (exec(s.body, it, out) == flow::break_) break;
  }
}

void evaluator::assign(const expr& target, value v, const std::shared_ptr<frame>& f) {
  if (target.op == expr_op::name) {
    f->set(target.name, std::move(v));
  } else if (target.op == expr_op::tuple) {
    std::vector<value> items = iterate(v);
    const size_t want = target.kids.size();
    if (items.size() > want) fail(error_kind::value, "too many values to unpack (expected " + std::to_string(want) + ")");
    if (items.size() < want) {
      fail(error_kind::value, "not enough values to unpack (expected " + std::to_string(want) + ", got " +
                                  std::to_string(items.size()) + ")");
    }
    for (size_t i = 0; i < want; ++i) assign(*target.kids[i], std::move(items[i]), f);
  } else {  // nsref
    const value* ns = f->find(target.name);
    if (!ns || !ns->is_object() || !ns->as_object()->set_attr(target.kids[0]->constant.as_string(), std::move(v))) {
      fail(error_kind::type, "cannot assign attribute on non-namespace object");
    }
  }
}

call_args evaluator::eval_args(const expr& e, size_t first, const std::shared_ptr<frame>& f) {
  call_args args;
  const size_t n_kw = e.keywords.size();
  const size_t end = e.kids.size() - n_kw;
  for (size_t i = first; i < end; ++i) args.positional.push_back(eval(*e.kids[i], f));
  for (size_t i = 0; i < n_kw; ++i) args.keyword.emplace_back(e.keywords[i], eval(*e.kids[end + i], f));
  return args;
}

value evaluator::eval(const expr& e, const std::shared_ptr<frame>& f) {
  try {
    return eval_node(e, f);
  } catch (eval_error& err) {
    if (err.pos.line == 0) err.pos = e.pos;
    throw;
  }
}

value evaluator::eval_compare(const expr& e, const std::shared_ptr<frame>& f) {
  value left = eval(*e.kids[0], f);
  for (size_t i = 0; i < e.ops.size(); ++i) {
    value right = eval(*e.kids[i + 1], f);
    if (!compare(e.ops[i], left, right)) return false;
    left = std::move(right);
  }
  return true;
}

value evaluator::eval_node(const expr& e, const std::shared_ptr<frame>& f) {
  switch (e.op) {
    case expr_op::literal: return e.constant;
    case expr_op::name: {
      if (const value* v = f->find(e.name)) return *v;
      return value::undefined("'" + e.name + "' is undefined");
    }
    case expr_op::list:
    case expr_op::tuple: {
      std::vector<value> items;
      for (const auto& k : e.kids) items.push_back(eval(*k, f));
      return value::list(std::move(items), e.op == expr_op::list ? seq_kind::list : seq_kind::tuple);
    }
    case expr_op::dict: {
      auto d = std::make_shared<dict_obj>();
      for (size_t i = 0; i + 1 < e.kids.size(); i += 2) {
        value k = eval(*e.kids[i], f);
        if (k.is_list() || k.is_dict()) fail(error_kind::type, "unhashable type: '" + type_name(k) + "'");
        d->set(std::move(k), eval(*e.kids[i + 1], f));
      }
      return value::dict(d);
    }
    case expr_op::getattr: return getattr(eval(*e.kids[0], f), e.name);
    case expr_op::getitem: {
      const value obj = eval(*e.kids[0], f);
      const expr& idx = *e.kids[1];
      if (idx.op != expr_op::slice) return getitem(obj, eval(idx, f));
      if (obj.is_undefined()) obj.raise_undefined();
      auto part = [&](size_t i) { return idx.kids[i] ? eval(*idx.kids[i], f) : value::none(); };
      const value a = part(0), b = part(1), c = part(2);
      if (auto r = slice(obj, a, b, c)) return *r;
      return value::undefined(type_repr(obj) + " has no element slice(" + repr(a) + ", " + repr(b) + ", " + repr(c) + ")");
    }
    case expr_op::call: {
      const value callee = eval(*e.kids[0], f);
      call_args args = eval_args(e, 1, f);
      return call(callee, args);
    }
    case expr_op::filter: {
      const value input = eval(*e.kids[0], f);
      call_args args = eval_args(e, 1, f);
      return e.filter(*this, input, args);
    }
    case expr_op::test: {
      const value input = eval(*e.kids[0], f);
      call_args args = eval_args(e, 1, f);
      return e.test(*this, input, args);
    }
    case expr_op::not_: return !truthy(eval(*e.kids[0], f));
    case expr_op::neg:
    case expr_op::pos: return unary_op(e.op, eval(*e.kids[0], f));
    case expr_op::add:
    case expr_op::sub:
    case expr_op::mul:
    case expr_op::div:
    case expr_op::floordiv:
    case expr_op::mod:
    case expr_op::pow: {
      const value a = eval(*e.kids[0], f);
      return binary_op(e.op, a, eval(*e.kids[1], f), limits_.max_output_bytes);
    }
    case expr_op::concat: {
      std::string s;
      for (const auto& k : e.kids) {
        s += to_str(eval(*k, f));
        check_size(s.size());
      }
      return s;
    }
    case expr_op::and_: {
      value a = eval(*e.kids[0], f);
      return truthy(a) ? eval(*e.kids[1], f) : a;
    }
    case expr_op::or_: {
      value a = eval(*e.kids[0], f);
      return truthy(a) ? a : eval(*e.kids[1], f);
    }
    case expr_op::compare: return eval_compare(e, f);
    case expr_op::cond:
      if (truthy(eval(*e.kids[1], f))) return eval(*e.kids[0], f);
      if (e.kids[2]) return eval(*e.kids[2], f);
      return value::undefined("the inline if-expression on line " + std::to_string(e.pos.line) +
                              " evaluated to false and no else section was defined.");
    case expr_op::block_input: return block_input_;
    case expr_op::nsref:
    case expr_op::slice: break;
  }
  fail(error_kind::unsupported, "expression cannot be evaluated here");
}

}  // namespace troupe::jinja
