// Evaluator of parsed Jinja templates. Scoping follows jinja2: a `for` body
// gets a fresh scope each iteration (so `set` inside a loop does not leak,
// which is why templates use namespace()), `if` shares its scope, macros see
// the scope they were defined in plus their arguments, and top-level `set`
// writes the template's context. Every loop iteration and call is charged
// against a step budget and every output against a size bound, and call
// nesting is bounded, so no template can hang the server or blow its stack.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/jinja_parser.hpp"
#include "model/jinja_value.hpp"

namespace troupe::jinja {

/// Bounds on one render.
struct render_limits {
  size_t max_output_bytes = size_t{32} << 20;  ///< output, and any one string a template builds
  int max_call_depth = 100;                     ///< nesting of macro, caller() and recursive loop calls
  uint64_t max_steps = 10'000'000;              ///< loop iterations, calls and filter element visits
};

/// A variable scope (defined in jinja_eval.cpp).
struct frame;

/// Renders one template once; also the service interface for builtins.
class evaluator {
 public:
  explicit evaluator(render_limits limits = {});
  ~evaluator();

  /// Renders `t` with `vars` as the context on top of the builtin globals.
  /// Throws eval_error with the position of the failing node.
  std::string render(const template_ast& t, std::vector<std::pair<std::string, value>> vars);

  /// Jinja's sandboxed `obj.name`: attribute (method), then item, then undefined.
  value getattr(const value& obj, const std::string& name);
  /// Jinja's sandboxed `obj[key]`: item, then attribute for string keys, then undefined.
  value getitem(const value& obj, const value& key);
  /// Calls a callable value.
  value call(const value& callee, call_args& args);
  /// Applies the filter `name` (for map('name')).
  value call_filter(const std::string& name, const value& input, call_args& args);
  /// Applies the test `name` (for select('name')).
  bool call_test(const std::string& name, const value& input, call_args& args);
  /// Charges `n` steps; throws a limit error past the budget.
  void step(uint64_t n = 1);
  /// Throws a limit error if a string of `bytes` would exceed the output bound.
  void check_size(size_t bytes) const;
  /// The bounds of this render.
  const render_limits& limits() const { return limits_; }
  /// Registers a mutable object (namespace) to release() when the render ends.
  void track(const std::shared_ptr<object>& o) { mutables_.push_back(o); }

  /// A macro or caller() as a callable value holds it (defined in jinja_eval.cpp).
  struct macro_call;
  /// Calls a macro: binds arguments, renders its body, returns the text.
  value run_macro(const macro_call& m, call_args& args);
  /// `loop(iterable)` of a recursive for loop: renders the loop body over `iterable`.
  value run_loop_again(const stmt& loop, const std::shared_ptr<frame>& scope, const value& iterable, int depth0);

 private:
  enum class flow : uint8_t { normal, break_, continue_ };

  value eval(const expr& e, const std::shared_ptr<frame>& f);
  value eval_node(const expr& e, const std::shared_ptr<frame>& f);
  value eval_compare(const expr& e, const std::shared_ptr<frame>& f);
  call_args eval_args(const expr& e, size_t first, const std::shared_ptr<frame>& f);
  flow exec(const std::vector<stmt_ptr>& body, const std::shared_ptr<frame>& f, std::string& out);
  flow exec_stmt(const stmt& s, const std::shared_ptr<frame>& f, std::string& out);
  void exec_for(const stmt& s, const std::shared_ptr<frame>& f, const value& iterable, int depth0, std::string& out);
  void assign(const expr& target, value v, const std::shared_ptr<frame>& f);
  void append(std::string& out, std::string_view text) const;
  value make_macro(const stmt& def, const std::shared_ptr<frame>& scope, const std::string& name);

  render_limits limits_;
  std::vector<std::weak_ptr<object>> mutables_;
  uint64_t steps_ = 0;
  int depth_ = 0;
  value block_input_;
};

}  // namespace troupe::jinja
