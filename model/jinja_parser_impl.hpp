// Internals of the Jinja parser, shared by jinja_parser.cpp (statements) and
// jinja_parser_expr.cpp (expressions): the token cursor and one method per
// jinja2 Parser method, with a nesting bound so that a hostile template cannot
// exhaust the stack.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "model/jinja_lexer.hpp"
#include "model/jinja_parser.hpp"

namespace troupe::jinja::detail {

/// Deepest nesting of blocks and expressions a template may have.
constexpr int max_nesting = 200;

/// How jinja2 names a token in messages ("end of print statement", "'('").
std::string describe(const token& t);

/// Recursive descent over a token list.
class parser {
 public:
  explicit parser(std::vector<token> tokens) : toks_(std::move(tokens)) {}

  std::unique_ptr<template_ast> run() {
    auto t = std::make_unique<template_ast>();
    t->body = subparse({});
    return t;
  }

 private:
  std::vector<token> toks_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  std::vector<std::string> tag_stack_;

  struct nest {
    parser& p;
    explicit nest(parser& p, const token& at) : p(p) {
      if (++p.depth_ > max_nesting) p.fail("template nested too deeply (more than 200 levels)", at);
    }
    ~nest() { --p.depth_; }
  };

  [[noreturn]] void fail(const std::string& message, const token& at) const { throw syntax_error(message, at.pos); }
  [[noreturn]] void fail(const std::string& message) const { fail(message, cur()); }

  const token& cur() const { return toks_[i_]; }
  const token& look() const { return toks_[std::min(i_ + 1, toks_.size() - 1)]; }
  const token& next() {
    const token& t = toks_[i_];
    if (i_ + 1 < toks_.size()) ++i_;
    return t;
  }
  bool is_op(const char* op) const { return cur().kind == token_kind::op && cur().text == op; }
  bool is_name(const char* n) const { return cur().kind == token_kind::name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  [[noreturn]] void fail_expected(const char* what) const {
    if (cur().kind == token_kind::eof) fail(std::string("unexpected end of template, expected '") + what + "'.");
    fail(std::string("expected token '") + what + "', got '" + describe(cur()) + "'");
  }
  const token& expect(token_kind kind, const char* what) {
    if (cur().kind != kind) fail_expected(what);
    return next();
  }
  const token& expect_op(const char* op) {
    if (!is_op(op)) fail_expected(op);
    return next();
  }
  const token& expect_name(const char* n = nullptr) {
    if (cur().kind != token_kind::name || (n && cur().text != n)) fail_expected(n ? n : "name");
    return next();
  }

  expr_ptr node(expr_op op, source_pos pos) {
    auto e = std::make_unique<expr>();
    e->op = op;
    e->pos = pos;
    return e;
  }
  expr_ptr node(expr_op op, source_pos pos, expr_ptr a, expr_ptr b = nullptr) {
    auto e = node(op, pos);
    e->kids.push_back(std::move(a));
    if (b) e->kids.push_back(std::move(b));
    return e;
  }
  stmt_ptr statement(stmt_op op, source_pos pos) {
    auto s = std::make_unique<stmt>();
    s->op = op;
    s->pos = pos;
    return s;
  }

  // ---- statements (jinja_parser.cpp) ----------------------------------------

  std::vector<stmt_ptr> subparse(std::initializer_list<const char*> end_tokens);

  [[noreturn]] void fail_eof(std::initializer_list<const char*> end_tokens) {
    std::string msg = "Unexpected end of template. Jinja was looking for the following tags: ";
    bool first = true;
    for (const char* e : end_tokens) {
      msg += (first ? "'" : " or '") + std::string(e) + "'";
      first = false;
    }
    msg += ".";
    if (!tag_stack_.empty()) msg += " The innermost block that needs to be closed is '" + tag_stack_.back() + "'.";
    fail(msg);
  }

  /// Body up to one of `end_tokens`; leaves the end token current (or drops it).
  std::vector<stmt_ptr> parse_statements(std::initializer_list<const char*> end_tokens, bool drop_needle);
  void parse_statement(std::vector<stmt_ptr>& out);
  stmt_ptr parse_for();
  stmt_ptr parse_if();
  stmt_ptr parse_set();
  void parse_signature(stmt& s);
  stmt_ptr parse_macro(bool call_block);
  stmt_ptr parse_filter_block();
  stmt_ptr parse_with();
  stmt_ptr parse_scope(const std::string& tag);
  void parse_print(std::vector<stmt_ptr>& out);

  // ---- assignment targets ---------------------------------------------------

  expr_ptr parse_assign_target(bool with_tuple, bool with_namespace, std::initializer_list<const char*> extra_end);
  void check_assignable(const expr& e, const token& at);

  // ---- expressions (jinja_parser_expr.cpp) ----------------------------------

  bool is_tuple_end(std::initializer_list<const char*> extra_end) const;

  expr_ptr parse_tuple(bool simplified, bool with_condexpr, std::initializer_list<const char*> extra_end,
                       bool explicit_parens, bool with_namespace = false);

  expr_ptr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  expr_ptr parse_condexpr();
  expr_ptr parse_or();
  expr_ptr parse_and();
  expr_ptr parse_not();
  expr_ptr parse_compare();
  expr_ptr parse_math1();
  expr_ptr parse_concat();
  expr_ptr parse_math2();
  expr_ptr parse_pow();
  expr_ptr parse_unary(bool with_filter);
  expr_ptr parse_primary(bool with_namespace);
  expr_ptr parse_postfix(expr_ptr e);
  expr_ptr parse_filter_expr(expr_ptr e);
  expr_ptr parse_subscript(expr_ptr e);
  expr_ptr parse_subscribed();

  /// `(args, key=value)` appended to `e->kids`; keyword names into `e->keywords`.
  void parse_call_args(expr& e);
  expr_ptr parse_call(expr_ptr callee);
  std::string dotted_name();
  expr_ptr parse_filter(expr_ptr e, bool start_inline);
  expr_ptr parse_test(expr_ptr e);
};

}  // namespace troupe::jinja::detail
