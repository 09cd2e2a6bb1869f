// Jinja parser, expressions (see jinja_parser.hpp): precedence climbing from
// conditional expressions down to primaries, then subscripts, calls, filters
// and tests, as jinja2's Parser does it. Filters and tests are looked up here,
// so an unknown one is a syntax error at load time.
#include "model/jinja_builtins.hpp"
#include "model/jinja_parser_impl.hpp"

namespace troupe::jinja::detail {

bool parser::is_tuple_end(std::initializer_list<const char*> extra_end) const {
  const token_kind k = cur().kind;
  if (k == token_kind::variable_end || k == token_kind::block_end || is_op(")")) return true;
  for (const char* e : extra_end) {
    if (is_name(e)) return true;
  }
  return false;
}

expr_ptr parser::parse_tuple(bool simplified, bool with_condexpr, std::initializer_list<const char*> extra_end,
                     bool explicit_parens, bool with_namespace) {
  const source_pos pos = cur().pos;
  std::vector<expr_ptr> items;
  bool is_tuple = false;
  while (true) {
    if (!items.empty()) expect_op(",");
    if (is_tuple_end(extra_end)) break;
    items.push_back(simplified ? parse_primary(with_namespace) : parse_expression(with_condexpr));
    if (is_op(",")) is_tuple = true;
    else break;
  }
  if (!is_tuple) {
    if (!items.empty()) return std::move(items[0]);
    if (!explicit_parens) fail("Expected an expression, got '" + describe(cur()) + "'");
  }
  auto t = node(expr_op::tuple, pos);
  t->kids = std::move(items);
  return t;
}

expr_ptr parser::parse_condexpr() {
  nest guard(*this, cur());
  source_pos pos = cur().pos;
  expr_ptr e = parse_or();
  while (skip_name("if")) {
    auto c = node(expr_op::cond, pos, std::move(e), parse_or());
    c->kids.push_back(skip_name("else") ? parse_condexpr() : nullptr);
    e = std::move(c);
    pos = cur().pos;
  }
  return e;
}

expr_ptr parser::parse_or() {
  expr_ptr e = parse_and();
  while (is_name("or")) {
    const source_pos at = next().pos;
    e = node(expr_op::or_, at, std::move(e), parse_and());
  }
  return e;
}

expr_ptr parser::parse_and() {
  expr_ptr e = parse_not();
  while (is_name("and")) {
    const source_pos at = next().pos;
    e = node(expr_op::and_, at, std::move(e), parse_not());
  }
  return e;
}

expr_ptr parser::parse_not() {
  nest guard(*this, cur());
  if (is_name("not")) {
    const source_pos at = next().pos;
    return node(expr_op::not_, at, parse_not());
  }
  return parse_compare();
}

expr_ptr parser::parse_compare() {
  const source_pos pos = cur().pos;
  expr_ptr first = parse_math1();
  expr_ptr cmp;
  static const std::pair<const char*, cmp_op> table[] = {{"==", cmp_op::eq}, {"!=", cmp_op::ne}, {"<", cmp_op::lt},
                                                         {"<=", cmp_op::le}, {">", cmp_op::gt},  {">=", cmp_op::ge}};
  while (true) {
    std::optional<cmp_op> op;
    for (const auto& [text, o] : table) {
      if (is_op(text)) op = o;
    }
    if (op) next();
    else if (skip_name("in")) op = cmp_op::in;
    else if (is_name("not") && look().kind == token_kind::name && look().text == "in") {
      next();
      next();
      op = cmp_op::not_in;
    } else {
      break;
    }
    if (!cmp) cmp = node(expr_op::compare, pos, std::move(first));
    cmp->ops.push_back(*op);
    cmp->kids.push_back(parse_math1());
  }
  return cmp ? std::move(cmp) : std::move(first);
}

expr_ptr parser::parse_math1() {
  expr_ptr e = parse_concat();
  while (is_op("+") || is_op("-")) {
    const expr_op op = cur().text == "+" ? expr_op::add : expr_op::sub;
    const source_pos at = next().pos;
    e = node(op, at, std::move(e), parse_concat());
  }
  return e;
}

expr_ptr parser::parse_concat() {
  const source_pos pos = cur().pos;
  expr_ptr e = parse_math2();
  if (!is_op("~")) return e;
  auto c = node(expr_op::concat, pos, std::move(e));
  while (skip_op("~")) c->kids.push_back(parse_math2());
  return c;
}

expr_ptr parser::parse_math2() {
  expr_ptr e = parse_pow();
  while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
    const std::string& t = cur().text;
    const expr_op op = t == "*" ? expr_op::mul : t == "/" ? expr_op::div : t == "//" ? expr_op::floordiv : expr_op::mod;
    const source_pos at = next().pos;
    e = node(op, at, std::move(e), parse_pow());
  }
  return e;
}

expr_ptr parser::parse_pow() {
  expr_ptr e = parse_unary(true);
  while (is_op("**")) {
    const source_pos at = next().pos;
    e = node(expr_op::pow, at, std::move(e), parse_unary(true));
  }
  return e;
}

expr_ptr parser::parse_unary(bool with_filter) {
  nest guard(*this, cur());
  expr_ptr e;
  if (is_op("-") || is_op("+")) {
    const expr_op op = is_op("-") ? expr_op::neg : expr_op::pos;
    const source_pos at = next().pos;
    e = node(op, at, parse_unary(false));
  } else {
    e = parse_primary(false);
  }
  e = parse_postfix(std::move(e));
  if (with_filter) e = parse_filter_expr(std::move(e));
  return e;
}

expr_ptr parser::parse_primary(bool with_namespace) {
  nest guard(*this, cur());
  const token& t = cur();
  if (t.kind == token_kind::name) {
    next();
    auto e = node(expr_op::literal, t.pos);
    if (t.text == "true" || t.text == "True") e->constant = true;
    else if (t.text == "false" || t.text == "False") e->constant = false;
    else if (t.text == "none" || t.text == "None") e->constant = value::none();
    else if (with_namespace && is_op(".")) {
      next();
      e->op = expr_op::nsref;
      e->name = t.text;
      e->kids.push_back(node(expr_op::literal, t.pos));
      e->kids[0]->constant = expect_name().text;
    } else {
      e->op = expr_op::name;
      e->name = t.text;
    }
    return e;
  }
  if (t.kind == token_kind::string) {
    auto e = node(expr_op::literal, t.pos);
    std::string s;
    while (cur().kind == token_kind::string) s += next().text;
    e->constant = std::move(s);
    return e;
  }
  if (t.kind == token_kind::integer || t.kind == token_kind::floating) {
    next();
    auto e = node(expr_op::literal, t.pos);
    e->constant = t.kind == token_kind::integer ? value(t.int_value) : value(t.float_value);
    return e;
  }
  if (skip_op("(")) {
    expr_ptr e = parse_tuple(false, true, {}, true);
    expect_op(")");
    return e;
  }
  if (is_op("[") || is_op("{")) {
    const bool is_list = is_op("[");
    auto e = node(is_list ? expr_op::list : expr_op::dict, next().pos);
    const char* close = is_list ? "]" : "}";
    while (!is_op(close)) {
      if (!e->kids.empty()) expect_op(",");
      if (is_op(close)) break;
      e->kids.push_back(parse_expression(true));
      if (!is_list) {
        expect_op(":");
        e->kids.push_back(parse_expression(true));
      }
    }
    expect_op(close);
    return e;
  }
  fail("unexpected '" + describe(t) + "'");
}

expr_ptr parser::parse_postfix(expr_ptr e) {
  while (true) {
    if (is_op(".") || is_op("[")) e = parse_subscript(std::move(e));
    else if (is_op("(")) e = parse_call(std::move(e));
    else return e;
  }
}

expr_ptr parser::parse_filter_expr(expr_ptr e) {
  while (true) {
    if (is_op("|")) e = parse_filter(std::move(e), false);
    else if (is_name("is")) e = parse_test(std::move(e));
    else if (is_op("(")) e = parse_call(std::move(e));
    else return e;
  }
}

expr_ptr parser::parse_subscript(expr_ptr e) {
  const token& t = next();
  if (t.text == ".") {
    const token& a = next();
    if (a.kind == token_kind::name) {
      auto g = node(expr_op::getattr, t.pos, std::move(e));
      g->name = a.text;
      return g;
    }
    if (a.kind != token_kind::integer) fail("expected name or number", a);
    auto idx = node(expr_op::literal, a.pos);
    idx->constant = a.int_value;
    return node(expr_op::getitem, t.pos, std::move(e), std::move(idx));
  }
  std::vector<expr_ptr> args;
  while (!is_op("]")) {
    if (!args.empty()) expect_op(",");
    args.push_back(parse_subscribed());
  }
  expect_op("]");
  expr_ptr arg;
  if (args.size() == 1) {
    arg = std::move(args[0]);
  } else {
    arg = node(expr_op::tuple, t.pos);
    arg->kids = std::move(args);
  }
  return node(expr_op::getitem, t.pos, std::move(e), std::move(arg));
}

expr_ptr parser::parse_subscribed() {
  const source_pos pos = cur().pos;
  expr_ptr start;
  if (!skip_op(":")) {
    start = parse_expression(true);
    if (!skip_op(":")) return start;
  }
  auto s = node(expr_op::slice, pos);
  s->kids.push_back(std::move(start));
  s->kids.push_back(is_op(":") || is_op("]") || is_op(",") ? nullptr : parse_expression(true));
  expr_ptr step;
  if (skip_op(":") && !is_op("]") && !is_op(",")) step = parse_expression(true);
  s->kids.push_back(std::move(step));
  return s;
}

void parser::parse_call_args(expr& e) {
  const token& open = expect_op("(");
  bool need_comma = false;
  while (!is_op(")")) {
    if (need_comma) {
      expect_op(",");
      if (is_op(")")) break;
    }
    if (is_op("*") || is_op("**")) fail("*args and **kwargs in calls are not supported by troupe", cur());
    if (cur().kind == token_kind::name && look().kind == token_kind::op && look().text == "=") {
      e.keywords.push_back(next().text);
      next();
      e.kids.push_back(parse_expression(true));
    } else {
      if (!e.keywords.empty()) fail("invalid syntax for function call expression", open);
      e.kids.push_back(parse_expression(true));
    }
    need_comma = true;
  }
  expect_op(")");
}

expr_ptr parser::parse_call(expr_ptr callee) {
  auto c = node(expr_op::call, cur().pos, std::move(callee));
  parse_call_args(*c);
  return c;
}

std::string parser::dotted_name() {
  std::string name = expect_name().text;
  while (skip_op(".")) name += "." + expect_name().text;
  return name;
}

expr_ptr parser::parse_filter(expr_ptr e, bool start_inline) {
  while (is_op("|") || start_inline) {
    if (!start_inline) next();
    start_inline = false;
    const token& t = cur();
    auto f = node(expr_op::filter, t.pos, std::move(e));
    f->name = dotted_name();
    f->filter = find_filter(f->name);
    if (!f->filter && unsupported_filter(f->name)) fail("the '" + f->name + "' filter is not supported by troupe", t);
    if (!f->filter) fail("No filter named '" + f->name + "'.", t);
    if (is_op("(")) parse_call_args(*f);
    e = std::move(f);
  }
  return e;
}

expr_ptr parser::parse_test(expr_ptr e) {
  const token& is = next();
  const bool negated = skip_name("not");
  const token& t = cur();
  auto x = node(expr_op::test, is.pos, std::move(e));
  x->name = dotted_name();
  x->test = find_test(x->name);
  if (!x->test) fail("No test named '" + x->name + "'.", t);
  const token_kind k = cur().kind;
  if (is_op("(")) {
    parse_call_args(*x);
  } else if ((k == token_kind::name || k == token_kind::string || k == token_kind::integer ||
              k == token_kind::floating || is_op("[") || is_op("{")) &&
             !is_name("else") && !is_name("or") && !is_name("and")) {
    if (is_name("is")) fail("You cannot chain multiple tests with is");
    x->kids.push_back(parse_postfix(parse_primary(false)));
  }
  return negated ? node(expr_op::not_, is.pos, std::move(x)) : std::move(x);
}

}  // namespace troupe::jinja::detail
