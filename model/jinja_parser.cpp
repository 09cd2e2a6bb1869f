// Jinja parser, statements (see jinja_parser.hpp): template data, {{ }} and
// every tag, following jinja2's Parser.parse_* methods; expressions are in
// jinja_parser_expr.cpp.
#include <algorithm>

#include "model/jinja_parser_impl.hpp"

namespace troupe::jinja {
namespace detail {

std::string describe(const token& t) {
  switch (t.kind) {
    case token_kind::data: return "template data";
    case token_kind::variable_begin: return "begin of print statement";
    case token_kind::variable_end: return "end of print statement";
    case token_kind::block_begin: return "begin of statement block";
    case token_kind::block_end: return "end of statement block";
    case token_kind::string: return "string";
    case token_kind::integer: return "integer";
    case token_kind::floating: return "float";
    case token_kind::eof: return "end of template";
    default: return t.text;
  }
}

namespace {

/// Names of every variable a body reads, for the varargs/kwargs/caller checks.
void collect_names(const expr* e, std::vector<std::string>& out) {
  if (!e) return;
  if (e->op == expr_op::name) out.push_back(e->name);
  for (const auto& k : e->kids) collect_names(k.get(), out);
}
void collect_names(const std::vector<stmt_ptr>& body, std::vector<std::string>& out) {
  for (const auto& s : body) {
    collect_names(s->target.get(), out);
    for (const auto& e : s->exprs) collect_names(e.get(), out);
    for (const auto& e : s->defaults) collect_names(e.get(), out);
    collect_names(s->body, out);
    collect_names(s->else_body, out);
  }
}

}  // namespace

std::vector<stmt_ptr> parser::subparse(std::initializer_list<const char*> end_tokens) {
  nest guard(*this, cur());
  std::vector<stmt_ptr> body;
  while (true) {
    const token& t = cur();
    if (t.kind == token_kind::data) {
      auto s = statement(stmt_op::text, t.pos);
      s->text = next().text;
      body.push_back(std::move(s));
    } else if (t.kind == token_kind::variable_begin) {
      next();
      auto s = statement(stmt_op::output, t.pos);
      s->exprs.push_back(parse_tuple(false, true, {}, false));
      expect(token_kind::variable_end, "end of print statement");
      body.push_back(std::move(s));
    } else if (t.kind == token_kind::block_begin) {
      next();
      for (const char* end : end_tokens) {
        if (is_name(end)) return body;
      }
      parse_statement(body);
      expect(token_kind::block_end, "end of statement block");
    } else if (t.kind == token_kind::eof) {
      if (end_tokens.size() != 0) fail_eof(end_tokens);
      return body;
    } else {
      fail("unexpected '" + describe(t) + "'");
    }
  }
}

std::vector<stmt_ptr> parser::parse_statements(std::initializer_list<const char*> end_tokens, bool drop_needle) {
  skip_op(":");
  expect(token_kind::block_end, "end of statement block");
  auto body = subparse(end_tokens);
  if (drop_needle) next();
  return body;
}

void parser::parse_statement(std::vector<stmt_ptr>& out) {
  const token& t = cur();
  if (t.kind != token_kind::name) fail("tag name expected");
  const std::string tag = t.text;
  tag_stack_.push_back(tag);
  if (tag == "for") out.push_back(parse_for());
  else if (tag == "if") out.push_back(parse_if());
  else if (tag == "set") out.push_back(parse_set());
  else if (tag == "macro" || tag == "call") out.push_back(parse_macro(tag == "call"));
  else if (tag == "filter") out.push_back(parse_filter_block());
  else if (tag == "with") out.push_back(parse_with());
  else if (tag == "block" || tag == "generation") out.push_back(parse_scope(tag));
  else if (tag == "print") parse_print(out);
  else if (tag == "break" || tag == "continue") {
    if (loop_depth_ == 0) fail("'" + tag + "' outside of a loop");
    next();
    out.push_back(statement(tag == "break" ? stmt_op::break_ : stmt_op::continue_, t.pos));
  } else if (tag == "extends" || tag == "include" || tag == "import" || tag == "from" || tag == "autoescape") {
    fail("the '" + tag + "' tag is not supported by troupe's chat template renderer");
  } else {
    tag_stack_.pop_back();
    fail("Encountered unknown tag '" + tag + "'.");
  }
  tag_stack_.pop_back();
}

stmt_ptr parser::parse_for() {
  auto s = statement(stmt_op::for_, next().pos);
  s->target = parse_assign_target(true, false, {"in"});
  expect_name("in");
  s->exprs.push_back(parse_tuple(false, false, {"recursive"}, false));
  if (skip_name("if")) s->exprs.push_back(parse_expression(true));
  s->recursive = skip_name("recursive");
  ++loop_depth_;
  s->body = parse_statements({"endfor", "else"}, false);
  --loop_depth_;
  if (next().text == "else") s->else_body = parse_statements({"endfor"}, true);
  return s;
}

stmt_ptr parser::parse_if() {
  auto s = statement(stmt_op::if_, next().pos);
  s->exprs.push_back(parse_tuple(false, false, {}, false));
  s->body = parse_statements({"elif", "else", "endif"}, false);
  const token& t = next();
  if (t.text == "elif") {
    // `elif` parses exactly like a nested `if` that shares our `endif`.
    --i_;
    s->else_body.push_back(parse_if());
  } else if (t.text == "else") {
    s->else_body = parse_statements({"endif"}, true);
  }
  return s;
}

stmt_ptr parser::parse_set() {
  const source_pos pos = next().pos;
  expr_ptr target = parse_assign_target(true, true, {});
  if (skip_op("=")) {
    auto s = statement(stmt_op::set, pos);
    s->target = std::move(target);
    s->exprs.push_back(parse_tuple(false, true, {}, false));
    return s;
  }
  auto s = statement(stmt_op::set_block, pos);
  s->target = std::move(target);
  s->exprs.push_back(parse_filter(node(expr_op::block_input, pos), false));
  s->body = parse_statements({"endset"}, true);
  return s;
}

void parser::parse_signature(stmt& s) {
  expect_op("(");
  while (!is_op(")")) {
    if (!s.params.empty()) expect_op(",");
    s.params.push_back(expect_name().text);
    if (skip_op("=")) s.defaults.push_back(parse_expression(true));
    else if (!s.defaults.empty()) fail("non-default argument follows default argument");
  }
  expect_op(")");
}

stmt_ptr parser::parse_macro(bool call_block) {
  auto s = statement(call_block ? stmt_op::call_block : stmt_op::macro, next().pos);
  if (!call_block) {
    s->text = expect_name().text;
    parse_signature(*s);
  } else {
    if (is_op("(")) parse_signature(*s);
    s->exprs.push_back(parse_expression(true));
    if (s->exprs[0]->op != expr_op::call) fail("expected call", toks_[i_ - 1]);
  }
  const int loops = loop_depth_;
  loop_depth_ = 0;
  s->body = parse_statements({call_block ? "endcall" : "endmacro"}, true);
  loop_depth_ = loops;
  std::vector<std::string> names;
  collect_names(s->body, names);
  auto uses = [&](const char* n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  s->uses_varargs = uses("varargs");
  s->uses_kwargs = uses("kwargs");
  s->uses_caller = uses("caller");
  return s;
}

stmt_ptr parser::parse_filter_block() {
  auto s = statement(stmt_op::filter_block, next().pos);
  s->exprs.push_back(parse_filter(node(expr_op::block_input, s->pos), true));
  s->body = parse_statements({"endfilter"}, true);
  return s;
}

stmt_ptr parser::parse_with() {
  auto s = statement(stmt_op::with, next().pos);
  while (cur().kind != token_kind::block_end) {
    if (!s->params.empty()) expect_op(",");
    s->params.push_back(expect_name().text);
    expect_op("=");
    s->exprs.push_back(parse_expression(true));
  }
  s->body = parse_statements({"endwith"}, true);
  return s;
}

stmt_ptr parser::parse_scope(const std::string& tag) {
  auto s = statement(stmt_op::scope, next().pos);
  std::string name;
  if (tag == "block") {
    name = expect_name().text;
    skip_name("scoped");
    skip_name("required");
  }
  s->body = parse_statements({tag == "block" ? "endblock" : "endgeneration"}, true);
  if (!name.empty()) skip_name(name.c_str());
  return s;
}

void parser::parse_print(std::vector<stmt_ptr>& out) {
  next();
  bool first = true;
  while (cur().kind != token_kind::block_end) {
    if (!first) expect_op(",");
    first = false;
    auto s = statement(stmt_op::output, cur().pos);
    s->exprs.push_back(parse_expression(true));
    out.push_back(std::move(s));
  }
}

expr_ptr parser::parse_assign_target(bool with_tuple, bool with_namespace, std::initializer_list<const char*> extra_end) {
  const token& at = cur();
  expr_ptr target = with_tuple ? parse_tuple(true, true, extra_end, false, with_namespace)
                               : parse_primary(with_namespace);
  check_assignable(*target, at);
  return target;
}

void parser::check_assignable(const expr& e, const token& at) {
  if (e.op == expr_op::name) {
    static const char* const reserved[] = {"true", "false", "none", "True", "False", "None"};
    for (const char* r : reserved) {
      if (e.name == r) fail("can't assign to 'const'", at);
    }
    return;
  }
  if (e.op == expr_op::nsref) return;
  if (e.op == expr_op::tuple) {
    for (const auto& k : e.kids) check_assignable(*k, at);
    return;
  }
  fail(e.op == expr_op::literal ? "can't assign to 'const'" : "can't assign to this expression", at);
}

}  // namespace detail

std::unique_ptr<template_ast> parse_template(std::string_view source) { return detail::parser(tokenize(source)).run(); }

}  // namespace troupe::jinja
