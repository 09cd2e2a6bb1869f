// Tests of the Jinja interpreter. The main check is against real Jinja:
// tests/fixtures/chat/jinja_cases.json holds small templates covering the
// language chat templates use, and jinja_cases.golden.json what the Jinja
// environment of transformers rendered from them (make_golden.py), so the
// interpreter is compared with Jinja rather than with our reading of it; an
// error in the golden must be an error here, with Jinja's message. The other
// tests pin down, with expectations checked by hand against jinja2 3.1, the
// behaviour that matters most (whitespace control, Python printing, scoping),
// the positions of syntax and runtime errors, and the bounds that keep a
// hostile template from hanging or exhausting the stack.
#include "model/jinja_eval.hpp"
#include "model/jinja_parser.hpp"
#include "model/jinja_pystr.hpp"
#include "model/jinja_value.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

using namespace troupe::jinja;
using ojson = nlohmann::ordered_json;

namespace {

const std::filesystem::path chat_dir = std::filesystem::path(TROUPE_FIXTURES) / "chat";
const std::string golden_hint =
    "make it on a machine with jinja2 (and transformers): python3 tests/fixtures/chat/make_golden.py "
    "build/tokenizers tests/fixtures/chat";

ojson read_json(const std::filesystem::path& p, const std::string& hint) {
  std::ifstream f(p);
  if (!f) FAIL("missing " << p.string() << ": " << hint);
  return ojson::parse(f);
}

value to_value(const ojson& j) {
  switch (j.type()) {
    case ojson::value_t::null: return value::none();
    case ojson::value_t::boolean: return j.get<bool>();
    case ojson::value_t::number_integer:
    case ojson::value_t::number_unsigned: return j.get<int64_t>();
    case ojson::value_t::number_float: return j.get<double>();
    case ojson::value_t::string: return j.get<std::string>();
    case ojson::value_t::array: {
      std::vector<value> items;
      for (const auto& x : j) items.push_back(to_value(x));
      return value::list(std::move(items));
    }
    default: {
      auto d = std::make_shared<dict_obj>();
      for (auto it = j.begin(); it != j.end(); ++it) d->entries.emplace_back(it.key(), to_value(it.value()));
      return value::dict(d);
    }
  }
}

/// What rendering a template gave: text, or the error and where it happened.
struct outcome {
  bool ok = false;
  bool syntax = false;  ///< failed while parsing
  std::string text;
  std::string error;
  error_kind kind = error_kind::type;
  source_pos pos;
};

outcome run(const std::string& source, const ojson& context = ojson::object(), render_limits limits = {}) {
  outcome o;
  try {
    const auto ast = parse_template(source);
    std::vector<std::pair<std::string, value>> vars;
    for (auto it = context.begin(); it != context.end(); ++it) vars.emplace_back(it.key(), to_value(it.value()));
    evaluator ev(limits);
    o.text = ev.render(*ast, std::move(vars));
    o.ok = true;
  } catch (const syntax_error& e) {
    o.syntax = true;
    o.error = e.what();
    o.pos = e.pos;
  } catch (const eval_error& e) {
    o.error = e.what();
    o.kind = e.kind;
    o.pos = e.pos;
  }
  return o;
}

/// Renders and expects success.
std::string render(const std::string& source, const ojson& context = ojson::object()) {
  const outcome o = run(source, context);
  CHECK_MESSAGE(o.ok, source << " failed: " << o.error);
  return o.text;
}

std::string quoted(const std::string& s) { return ojson(s).dump(-1, ' ', false, ojson::error_handler_t::replace).substr(0, 300); }

}  // namespace

TEST_CASE("jinja: every snippet renders as real Jinja renders it (jinja_cases.golden.json)") {
  const ojson cases = read_json(chat_dir / "jinja_cases.json", "it is committed");
  const ojson golden = read_json(chat_dir / "jinja_cases.golden.json", golden_hint);
  REQUIRE_MESSAGE(golden.size() == cases.size(), "golden is stale: " << golden_hint);
  size_t failed = 0;
  std::string details;
  for (size_t i = 0; i < cases.size(); ++i) {
    const ojson& c = cases[i];
    const ojson& g = golden[i];
    REQUIRE_MESSAGE(g["name"] == c["name"], "golden is stale: " << golden_hint);
    const outcome o = run(c["template"].get<std::string>(), c.value("context", ojson::object()));
    std::string problem;
    if (g.contains("text")) {
      if (!o.ok) problem = "Jinja renders " + quoted(g["text"]) + ", troupe fails: " + o.error;
      else if (o.text != g["text"].get<std::string>()) problem = "Jinja renders " + quoted(g["text"]) + "\n    troupe renders " + quoted(o.text);
    } else {
      const std::string jinja_error = g["error"].get<std::string>();
      const std::string message = jinja_error.substr(jinja_error.find(": ") + 2);
      if (o.ok) problem = "Jinja fails (" + jinja_error + "), troupe renders " + quoted(o.text);
      else if (o.error.find(message) == std::string::npos) problem = "Jinja fails with '" + jinja_error + "', troupe with '" + o.error + "'";
    }
    if (!problem.empty()) {
      if (++failed <= 8) details += "\n  " + c["name"].get<std::string>() + ": " + problem;
    }
  }
  CHECK_MESSAGE(failed == 0, failed << " of " << cases.size() << " snippets differ from Jinja:" << details);
}

TEST_CASE("jinja: whitespace control follows trim_blocks, lstrip_blocks and -/+ markers") {
  CHECK(render("a  \n  {% if true %}\n  x\n  {% endif %}\n  y") == "a  \n  x\n  y");
  CHECK(render("a  \n  {%- if true -%}  \n  x  \n  {%- endif -%}\n  y") == "axy");
  CHECK(render("[ {{- 'v' -}} ]\n[ {{ 'v' }} ]") == "[v]\n[ v ]");
  CHECK(render("x\n    {%+ if true %}y{% endif %}") == "x\n    y");
  CHECK(render("{% raw %}\n {{ x }} \n  {% endraw %}\nz") == "\n {{ x }} \nz");
  CHECK(render("x {# c #}\ny\n   {# c2 #}   \nz") == "x y\n   \nz");
  CHECK(render("{{ 'a' }}\n  {% if true %}b{% endif %}") == "a\nb");
  CHECK(render("\n\nx\n\n") == "\n\nx\n");   // one trailing newline is dropped
  CHECK(render("a\r\nb\rc") == "a\nb\nc");    // newlines are normalised
  CHECK(render("{% if true %}   \n{% endif %}|") == "   \n|");
}

TEST_CASE("jinja: values print as Python's str() and repr()") {
  CHECK(render("{{ none }}|{{ true }}|{{ 1.0 }}|{{ 0.1 + 0.2 }}|{{ 1e20 }}|{{ 1.5e-7 }}|{{ 10 / 4 }}|{{ 4 / 2 }}") ==
        "None|True|1.0|0.30000000000000004|1e+20|1.5e-07|2.5|2.0");
  CHECK(render("{{ [1, 'a', none, true, {'k': 'v'}, (1,), \"it's\"] }}") ==
        "[1, 'a', None, True, {'k': 'v'}, (1,), \"it's\"]");
  CHECK(render("{{ ['a\\nb', 'é😀'] }}") == "['a\\nb', 'é😀']");
  CHECK(render("{{ 'a' ~ 1 ~ none ~ undefined_name }}") == "a1None");
  CHECK(render("{{ x }}", {{"x", {{"b", 1}, {"a", 2}}}}) == "{'b': 1, 'a': 2}");
}

TEST_CASE("jinja: loops, scopes and namespace() behave as in Jinja") {
  CHECK(render("{% for x in 'abc' %}{{ loop.index }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }} {% endfor %}") ==
        "12TrueFalse 21FalseFalse 30FalseTrue ");
  CHECK(render("{% set x = 5 %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}[{{ x }}]{% endfor %}|{{ x }}") ==
        "[5][1][5][2]|5");
  CHECK(render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}") == "6");
  CHECK(render("{% for m in messages[::-1] %}{{ m }}{% endfor %}", {{"messages", {1, 2, 3}}}) == "321");
  CHECK(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}") == "2/2 4/2 ");
  CHECK(render("{% for x in range(9) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}") == "02");
  CHECK(render("{% macro m(a, b=2) %}{{ a }}{{ b }}{% endmacro %}{{ m(1) }}{{ m(3, b=4) }}") == "1234");
}

TEST_CASE("jinja: tojson is transformers' json.dumps (ensure_ascii=False, key order kept)") {
  const ojson ctx = ojson::parse(R"({"t": {"z": "ü\"\n", "a": [1, 2.5, null, true]}})");
  CHECK(render("{{ t|tojson }}", ctx) == "{\"z\": \"ü\\\"\\n\", \"a\": [1, 2.5, null, true]}");
  CHECK(render("{{ t|tojson(indent=2) }}", ctx) == "{\n  \"z\": \"ü\\\"\\n\",\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ]\n}");
  CHECK(render("{{ t|tojson(sort_keys=true) }}", ctx) == "{\"a\": [1, 2.5, null, true], \"z\": \"ü\\\"\\n\"}");
}

TEST_CASE("jinja: Python string semantics count code points and use Unicode whitespace") {
  CHECK(py::repr_float(1.0) == "1.0");
  CHECK(py::repr_float(1e16) == "1e+16");
  CHECK(py::repr_float(1e15) == "1000000000000000.0");
  CHECK(py::repr_float(0.0001) == "0.0001");
  CHECK(py::repr_float(0.00001) == "1e-05");
  CHECK(py::repr_float(-0.0) == "-0.0");
  CHECK(py::length("héllo 😀") == 7);
  const std::string comma = ",";
  CHECK(py::split("a,b,c", &comma, 1, true) == std::vector<std::string>{"a,b", "c"});
  CHECK(py::split("  a  b ", nullptr, -1, false) == std::vector<std::string>{"a", "b"});
  CHECK(py::strip("\u3000 x\u00a0", nullptr, true, true) == "x");
  CHECK(py::title("hello wORLD") == "Hello World");
  CHECK(py::repr_string("it's") == "\"it's\"");
  CHECK(py::repr_string("a\x01\u00a0") == "'a\\x01\\xa0'");
  CHECK(render("{{ s|length }} {{ s[1] }} {{ s[-1] }} {{ s[1:3] }}", {{"s", "héllo 😀"}}) == "7 é 😀 él");
}

TEST_CASE("jinja: syntax errors name line and column") {
  outcome o = run("line1\n{{ 1 + }}");
  CHECK(o.syntax);
  CHECK(o.pos.line == 2);
  CHECK(o.pos.column == 8);
  CHECK(o.error.find("unexpected 'end of print statement'") != std::string::npos);

  o = run("{% if x %}\nhello");
  CHECK(o.syntax);
  CHECK(o.pos.line == 2);
  CHECK(o.error.find("'endif'") != std::string::npos);

  o = run("ok\n  {{ x|frobnicate }}");
  CHECK(o.syntax);
  CHECK(o.pos.line == 2);
  CHECK(o.pos.column == 8);
  CHECK(o.error == "No filter named 'frobnicate'.");

  o = run("{{ x is frobnicated }}");
  CHECK(o.syntax);
  CHECK(o.error == "No test named 'frobnicated'.");

  for (const char* unsupported : {"{% include 'x.jinja' %}", "{% extends 'base' %}", "{{ xs|groupby('a') }}", "{{ f(*xs) }}"}) {
    o = run(unsupported);
    CHECK_MESSAGE(o.syntax, unsupported << " should fail to parse");
  }
}

TEST_CASE("jinja: runtime errors carry the position of the failing expression") {
  const outcome o = run("\n\n  {{ 'a' + 1 }}");
  REQUIRE_FALSE(o.ok);
  CHECK(o.kind == error_kind::type);
  CHECK(o.pos.line == 3);
  CHECK(o.pos.column == 10);
  CHECK(o.error == "can only concatenate str (not \"int\") to str");
}

TEST_CASE("jinja: raise_exception surfaces its message") {
  const outcome o = run("{% if messages[0].role != 'user' %}{{ raise_exception('Roles must alternate') }}{% endif %}",
                        ojson::parse(R"({"messages": [{"role": "assistant"}]})"));
  REQUIRE_FALSE(o.ok);
  CHECK(o.kind == error_kind::template_error);
  CHECK(o.error == "Roles must alternate");
  CHECK(o.pos.line == 1);
}

TEST_CASE("jinja: the immutable sandbox refuses to mutate lists and dicts") {
  outcome o = run("{% set xs = [] %}{{ xs.append(1) }}");
  CHECK(o.kind == error_kind::security);
  CHECK(o.error == "access to attribute 'append' of 'list' object is unsafe.");
  o = run("{% set d = {} %}{{ d.update({'a': 1}) }}");
  CHECK(o.kind == error_kind::security);
  CHECK(render("[{{ xs.append }}]", {{"xs", {1}}}) == "[]");  // only calling it fails, as in Jinja
}

TEST_CASE("jinja: recursion, loops and output are bounded") {
  // Unbounded macro recursion stops at the call depth bound instead of the stack.
  outcome o = run("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  CHECK(o.kind == error_kind::limit);
  CHECK(o.error.find("nested deeper") != std::string::npos);
  o = run("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}");
  CHECK(o.kind == error_kind::limit);

  // 10^10 iterations stop at the step budget, quickly, with the default limits.
  const auto start = std::chrono::steady_clock::now();
  o = run("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(o.kind == error_kind::limit);
  CHECK(o.error.find("steps") != std::string::npos);
  CHECK_MESSAGE(seconds < 20.0, "the step budget took " << seconds << " s to run out");

  // Output and single strings are bounded.
  o = run("{{ 'x' * 10000000000 }}");
  CHECK(o.kind == error_kind::limit);
  render_limits small;
  small.max_output_bytes = 1000;
  o = run("{% for i in range(100) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}{% endfor %}", ojson::object(), small);
  CHECK(o.kind == error_kind::limit);
  CHECK(o.error.find("output exceeds 1000 bytes") != std::string::npos);

  // A list doubled in a loop stops at the item bound instead of exhausting memory.
  o = run("{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}");
  CHECK(o.kind == error_kind::limit);
  CHECK(o.error.find("more than 1048576 items") != std::string::npos);

  // Deeply nested source is a syntax error, not a stack overflow.
  o = run("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}");
  CHECK(o.syntax);
  std::string deep;
  for (int i = 0; i < 5000; ++i) deep += "{% if true %}";
  o = run(deep);
  CHECK(o.syntax);
  CHECK(o.error.find("nested too deeply") != std::string::npos);
}
