// Syntax tree and parser of Jinja templates. The grammar, operator precedence
// and the places where tuples, conditional expressions and tests may appear
// follow jinja2's parser function by function, because chat templates are only
// ever checked against that parser. Filters and tests are resolved while
// parsing, so a template using one troupe lacks fails when it is loaded, not
// when the first request renders it; so do tags troupe does not implement
// (extends, include, import, autoescape).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/jinja_value.hpp"

namespace troupe::jinja {

/// A filter: input value and call arguments to result.
using filter_fn = value (*)(evaluator& ev, const value& input, call_args& args);
/// A test (`x is name(args)`).
using test_fn = bool (*)(evaluator& ev, const value& input, call_args& args);

/// The kind of an expression node; comments give the meaning of its kids.
enum class expr_op : uint8_t {
  literal,      ///< constant
  name,         ///< variable `name`
  nsref,        ///< `name.attr` as an assignment target (namespace attribute)
  list,         ///< [kids...]
  tuple,        ///< (kids...)
  dict,         ///< {kids[0]: kids[1], ...}
  getattr,      ///< kids[0].name
  getitem,      ///< kids[0][kids[1]]
  slice,        ///< start:stop:step in a subscript; kids may be null
  call,         ///< kids[0](kids[1..]); the last `keywords.size()` are keyword arguments
  filter,       ///< kids[0]|name(kids[1..])
  test,         ///< kids[0] is name(kids[1..])
  not_,
  neg,
  pos,
  add,
  sub,
  mul,
  div,
  floordiv,
  mod,
  pow,
  concat,       ///< kids[0] ~ kids[1] ~ ...
  and_,
  or_,
  compare,      ///< kids[0] ops[0] kids[1] ops[1] kids[2] ... (Python chaining)
  cond,         ///< kids[0] if kids[1] else kids[2] (kids[2] may be null)
  block_input,  ///< the rendered body that a filter block or `set` block filters
};

/// Comparison operators of a compare node.
enum class cmp_op : uint8_t { eq, ne, lt, le, gt, ge, in, not_in };

/// An expression node.
struct expr {
  expr_op op = expr_op::literal;
  source_pos pos;
  value constant;                           ///< literal's value
  std::string name;                         ///< variable, attribute, filter or test name
  std::vector<std::unique_ptr<expr>> kids;  ///< operands (see expr_op)
  std::vector<std::string> keywords;        ///< names of the trailing keyword arguments
  std::vector<cmp_op> ops;                  ///< compare's operators
  filter_fn filter = nullptr;               ///< resolved while parsing
  test_fn test = nullptr;                   ///< resolved while parsing
};
using expr_ptr = std::unique_ptr<expr>;

/// The kind of a statement node.
enum class stmt_op : uint8_t {
  text,          ///< template data
  output,        ///< {{ exprs[0] }}
  if_,           ///< if exprs[0]: body else else_body (elif nests in else_body)
  for_,          ///< for target in exprs[0] [if exprs[1]]: body, else_body when nothing iterated
  set,           ///< set target = exprs[0]
  set_block,     ///< set target [| filters exprs[0]] = rendered body
  macro,         ///< macro name(params=defaults): body
  call_block,    ///< call(params) exprs[0]: body becomes caller()
  filter_block,  ///< filter exprs[0]: body
  with,          ///< with params = exprs: body
  scope,         ///< a body rendered in place (block, generation)
  break_,
  continue_,
};

struct stmt;
using stmt_ptr = std::unique_ptr<stmt>;

/// A statement node; which fields are used depends on `op` (see stmt_op).
struct stmt {
  stmt_op op = stmt_op::text;
  source_pos pos;
  std::string text;                 ///< text data, or the macro name
  expr_ptr target;                  ///< for/set target: name, tuple or namespace attribute
  std::vector<expr_ptr> exprs;      ///< the statement's expressions
  std::vector<stmt_ptr> body;
  std::vector<stmt_ptr> else_body;
  std::vector<std::string> params;  ///< macro/call/with parameter names
  std::vector<expr_ptr> defaults;   ///< defaults of the last defaults.size() params
  bool recursive = false;           ///< for ... recursive
  bool uses_varargs = false;        ///< macro body reads varargs / kwargs / caller
  bool uses_kwargs = false;
  bool uses_caller = false;
};

/// A parsed template.
struct template_ast {
  std::vector<stmt_ptr> body;
};

/// Parses `source`. Throws syntax_error with the position of the offending
/// token for syntax errors, unknown filters or tests and unsupported tags.
std::unique_ptr<template_ast> parse_template(std::string_view source);

}  // namespace troupe::jinja
