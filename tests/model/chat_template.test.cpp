// Tests of chat templates against transformers' apply_chat_template: the
// goldens in tests/fixtures/chat were written by make_golden.py, which renders
// every conversation of conversations.json with the real Llama-3 and Qwen3
// templates (tokenizer_config.json fetched by tests/fixtures/tokenizers/
// fetch.sh) and the demo model's ChatML template; troupe's text must equal
// transformers' byte for byte, and a conversation transformers fails on must
// fail here too. The other tests cover loading (template forms, special
// tokens, override files, errors that name the file) and rendering errors.
#include "model/chat_template.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

using namespace troupe;
using ojson = nlohmann::ordered_json;

namespace {

const std::filesystem::path chat_dir = std::filesystem::path(TROUPE_FIXTURES) / "chat";
const std::filesystem::path tokenizers_dir = TROUPE_TOKENIZERS;
const std::string golden_hint =
    "make it on a machine with transformers: python3 tests/fixtures/chat/make_golden.py build/tokenizers "
    "tests/fixtures/chat";

// The ChatML template of the demo model; make_golden.py holds the same text.
const std::string chatml =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

ojson read_json(const std::filesystem::path& p, const std::string& hint) {
  std::ifstream f(p);
  if (!f) FAIL("missing " << p.string() << ": " << hint);
  return ojson::parse(f);
}

chat_template load_real(const std::string& name) {
  const std::filesystem::path dir = tokenizers_dir / name;
  if (!std::filesystem::exists(dir / "tokenizer_config.json")) {
    FAIL("missing " << (dir / "tokenizer_config.json").string() << ": run tests/fixtures/tokenizers/fetch.sh "
                    << tokenizers_dir.string() << " (the CTest fixture fetch_tokenizers does)");
  }
  return chat_template::load(dir);
}

std::string quoted(const std::string& s) {
  const std::string q = ojson(s).dump(-1, ' ', false, ojson::error_handler_t::replace);
  return q.size() > 600 ? q.substr(0, 600) + "..." : q;
}

/// Renders every golden entry of `name` with `t`; reports the first mismatches.
void check_goldens(const chat_template& t, const std::string& name) {
  const ojson conversations = read_json(chat_dir / "conversations.json", "it is committed");
  const ojson golden = read_json(chat_dir / (name + ".golden.json"), golden_hint);
  REQUIRE_MESSAGE(golden.size() == 2 * conversations.size(), "golden is stale: " << golden_hint);
  size_t failed = 0;
  std::string details;
  for (const ojson& g : golden) {
    const ojson& conv = conversations.at(g["conversation"].get<size_t>());
    REQUIRE_MESSAGE(conv["name"] == g["name"], "golden is stale: " << golden_hint);
    const bool agp = g["add_generation_prompt"].get<bool>();
    std::string problem;
    try {
      const std::string text = t.render(conv["messages"], agp, conv.value("extra", ojson::object()));
      if (!g.contains("text")) problem = "transformers fails (" + g["error"].get<std::string>() + "), troupe renders " + quoted(text);
      else if (text != g["text"].get<std::string>()) problem = "transformers renders " + quoted(g["text"]) + "\n    troupe renders " + quoted(text);
    } catch (const error& e) {
      const std::string expected = g.contains("error") ? g["error"].get<std::string>() : std::string();
      const std::string message = expected.substr(expected.find(": ") + 2);
      if (expected.empty()) problem = "transformers renders " + quoted(g["text"]) + ", troupe fails: " + e.what();
      else if (std::string(e.what()).find(message) == std::string::npos) problem = "transformers fails with '" + expected + "', troupe with '" + e.what() + "'";
      else if (e.code() != errc::errc_invalid_argument) problem = std::string("wrong error code for ") + e.what();
    }
    if (!problem.empty() && ++failed <= 5) {
      details += "\n  " + g["name"].get<std::string>() + " (add_generation_prompt=" + (agp ? "true" : "false") + "): " + problem;
    }
  }
  CHECK_MESSAGE(failed == 0, failed << " of " << golden.size() << " renders differ from transformers (" << name << "):" << details);
}

/// A fresh folder under the temp directory, removed at scope exit.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("troupe_chat_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
  std::filesystem::path write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
    return path / name;
  }
};

/// Expects `fn` to throw troupe::error with `code` and a message holding every needle.
template <class F>
void expect_error(F&& fn, errc code, std::initializer_list<std::string> needles) {
  try {
    fn();
  } catch (const error& e) {
    const std::string msg = e.what();
    CHECK_MESSAGE(std::string(errc_name(e.code())) == errc_name(code), msg);
    for (const std::string& n : needles) {
      CHECK_MESSAGE(msg.find(n) != std::string::npos, "'" << msg << "' does not contain '" << n << "'");
    }
    return;
  }
  FAIL("no troupe::error thrown");
}

const ojson probe = ojson::parse(R"([{"role": "user", "content": "Hi"}])");

}  // namespace

TEST_CASE("chat_template: Llama-3 renders every conversation as transformers does") {
  check_goldens(load_real("llama3"), "llama3");
}

TEST_CASE("chat_template: Qwen3 renders every conversation as transformers does") {
  check_goldens(load_real("qwen3"), "qwen3");
}

TEST_CASE("chat_template: the demo model's ChatML renders every conversation as transformers does") {
  check_goldens(chat_template::parse(chatml, "chatml"), "chatml");
}

TEST_CASE("chat_template: load passes tokenizer_config's special tokens, omitting unset ones") {
  const chat_template llama = load_real("llama3");
  CHECK(llama.render(probe, false) == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                                      "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const chat_template qwen = load_real("qwen3");
  bool has_bos = false, has_eos = false;
  for (const auto& [name, text] : qwen.special_tokens()) {
    has_bos = has_bos || name == "bos_token";
    has_eos = has_eos || (name == "eos_token" && text == "<|im_end|>");
  }
  CHECK_FALSE(has_bos);  // "bos_token": null
  CHECK(has_eos);
}

TEST_CASE("chat_template: load accepts the named-template list, chat_template.jinja and override files") {
  temp_dir d;
  d.write("tokenizer_config.json", R"({
    "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null,
    "chat_template": [{"name": "tool_use", "template": "TOOLS"},
                      {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}{{ eos_token }}{{ pad_token is defined }}"}]})");
  CHECK(chat_template::load(d.path).render(probe, true) == "<s>[Hi]</s>False");

  const auto override_file = d.write("override.jinja", "O{{ messages|length }}{{ bos_token }}");
  const chat_template o = chat_template::load(d.path, override_file);
  CHECK(o.render(probe, true) == "O1<s>");
  CHECK(o.origin() == override_file.string());

  d.write("chat_template.jinja", "J{{ messages[0].content }}");
  CHECK(chat_template::load(d.path).render(probe, true) == "JHi");
}

TEST_CASE("chat_template: load errors name the file and, for syntax errors, line and column") {
  temp_dir d;
  expect_error([&] { chat_template::load(d.path); }, errc::errc_io, {(d.path / "tokenizer_config.json").string()});

  d.write("tokenizer_config.json", "{not json");
  expect_error([&] { chat_template::load(d.path); }, errc::errc_invalid_config, {"tokenizer_config.json", "invalid JSON"});

  d.write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  expect_error([&] { chat_template::load(d.path); }, errc::errc_invalid_config, {"tokenizer_config.json", "chat_template"});

  d.write("tokenizer_config.json", R"({"chat_template": [{"name": "rag", "template": "x"}]})");
  expect_error([&] { chat_template::load(d.path); }, errc::errc_invalid_config, {"'default'", "rag"});

  d.write("tokenizer_config.json", R"({"chat_template": "ok"})");
  expect_error([&] { chat_template::load(d.path, d.path / "missing.jinja"); }, errc::errc_io, {"missing.jinja"});

  d.write("tokenizer_config.json", R"({"chat_template": "line 1\n{% for m in messages %}\n{{ m.content|frobnicate }}{% endfor %}"})");
  expect_error([&] { chat_template::load(d.path); }, errc::errc_invalid_config,
               {"tokenizer_config.json:3:14", "No filter named 'frobnicate'"});

  expect_error([&] { chat_template::parse("{% for x in y %}", "inline"); }, errc::errc_invalid_config,
               {"inline:1:", "endfor"});
}

TEST_CASE("chat_template: load renders a probe conversation and rejects a template that fails on it") {
  temp_dir d;
  d.write("tokenizer_config.json", R"({"chat_template": "{% for m in messages %}{{ m.content + 1 }}{% endfor %}"})");
  expect_error([&] { chat_template::load(d.path); }, errc::errc_invalid_config,
               {"tokenizer_config.json", "probe", "can only concatenate str"});

  // A template that refuses system turns by design still loads; it fails only when given one.
  d.write("tokenizer_config.json",
          R"({"chat_template": "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"})");
  const chat_template t = chat_template::load(d.path);
  CHECK(t.render(probe, true) == "Hi");
  expect_error([&] { t.render(ojson::parse(R"([{"role": "system", "content": "S"}])"), true); },
               errc::errc_invalid_argument, {"System role not supported", "tokenizer_config.json:1:"});
}

TEST_CASE("chat_template: render errors are invalid_argument and carry raise_exception's message") {
  const chat_template t = chat_template::parse(
      "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
      "{{ m.content }}{% endfor %}",
      "alternate");
  CHECK(t.render(R"([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])", false) == "ab");
  expect_error([&] { t.render(R"([{"role": "assistant", "content": "a"}])", false); }, errc::errc_invalid_argument,
               {"Conversation roles must alternate user/assistant/user/assistant/...", "alternate:1:"});
  expect_error([&] { t.render("{\"role\": \"user\"}", false); }, errc::errc_invalid_argument, {"must be a JSON array"});
  expect_error([&] { t.render("[", false); }, errc::errc_invalid_argument, {"invalid JSON"});
  expect_error([&] { t.render(probe, false, ojson{{"messages", ojson::array()}}); }, errc::errc_invalid_argument, {"messages"});
}

TEST_CASE("chat_template: JSON text and ordered_json keep key order for tojson; extra variables reach the template") {
  const chat_template t = chat_template::parse("{{ tools|tojson }}|{{ enable_thinking }}|{{ documents }}", "t");
  const std::string tools = R"([{"type": "function", "function": {"name": "f"}}])";
  CHECK(t.render("[]", true, R"({"tools": )" + tools + R"(, "enable_thinking": false})") ==
        tools + "|False|None");
  const nlohmann::json sorted = nlohmann::json::parse(R"({"tools": )" + tools + "}");
  CHECK(t.render(nlohmann::json::array(), true, sorted) == R"([{"function": {"name": "f"}, "type": "function"}]||None)");
}
