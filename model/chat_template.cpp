// Chat template loading and rendering (see chat_template.hpp). Context
// variables are what transformers passes to Jinja: the special tokens of the
// tokenizer, then messages, tools (None when absent), documents (None when
// absent) and add_generation_prompt, then every extra variable. JSON is
// converted to Jinja values through ordered_json so that object keys keep the
// order they were written in, which `tojson` prints.
#include "model/chat_template.hpp"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"
#include "model/jinja_eval.hpp"
#include "model/jinja_parser.hpp"

namespace troupe {
namespace {

using ojson = nlohmann::ordered_json;

template <class J>
jinja::value to_value(const J& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return jinja::value::none();
    case nlohmann::json::value_t::boolean: return j.template get<bool>();
    case nlohmann::json::value_t::number_integer: return j.template get<int64_t>();
    case nlohmann::json::value_t::number_unsigned: {
      const auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return static_cast<double>(u);
      return static_cast<int64_t>(u);
    }
    case nlohmann::json::value_t::number_float: return j.template get<double>();
    case nlohmann::json::value_t::string: return j.template get<std::string>();
    case nlohmann::json::value_t::array: {
      std::vector<jinja::value> items;
      for (const auto& x : j) items.push_back(to_value(x));
      return jinja::value::list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      auto d = std::make_shared<jinja::dict_obj>();
      for (auto it = j.begin(); it != j.end(); ++it) d->entries.emplace_back(it.key(), to_value(it.value()));
      return jinja::value::dict(d);
    }
    default: throw error(errc::errc_invalid_argument, "chat template input: unsupported JSON value (binary)");
  }
}

std::string where(const std::string& origin, const jinja::source_pos& pos) {
  return "chat template " + origin + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) + ": ";
}

const char* kind_prefix(jinja::error_kind kind) {
  switch (kind) {
    case jinja::error_kind::undefined: return "UndefinedError: ";
    case jinja::error_kind::security: return "SecurityError: ";
    case jinja::error_kind::type: return "TypeError: ";
    case jinja::error_kind::value: return "ValueError: ";
    case jinja::error_kind::template_error: return "";
    case jinja::error_kind::limit: return "limit: ";
    case jinja::error_kind::unsupported: return "unsupported: ";
  }
  return "";
}

std::string read_file(const std::filesystem::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(errc::errc_io, path.string() + ": cannot open " + what);
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw error(errc::errc_io, path.string() + ": cannot read " + what);
  return s.str();
}

/// The text of a special token entry: a string or an AddedToken {"content": ...}.
std::optional<std::string> token_text(const ojson& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

std::string template_from_config(const ojson& config, const std::string& origin) {
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) {
    throw error(errc::errc_invalid_config, origin + ": key 'chat_template': missing (and no chat_template.jinja or override file)");
  }
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    std::string names;
    for (const auto& entry : *it) {
      if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") || !entry["name"].is_string() ||
          !entry["template"].is_string()) {
        throw error(errc::errc_invalid_config, origin + ": key 'chat_template': expected a string or a list of {name, template}");
      }
      if (entry["name"] == "default") return entry["template"].get<std::string>();
      names += (names.empty() ? "" : ", ") + entry["name"].get<std::string>();
    }
    throw error(errc::errc_invalid_config, origin + ": key 'chat_template': no template named 'default' (have: " + names + ")");
  }
  throw error(errc::errc_invalid_config, origin + ": key 'chat_template': expected a string or a list of {name, template}");
}

ojson probe_conversation(bool with_system) {
  ojson m = ojson::array();
  if (with_system) m.push_back({{"role", "system"}, {"content", "You are a helpful assistant."}});
  m.push_back({{"role", "user"}, {"content", "Hello!"}});
  m.push_back({{"role", "assistant"}, {"content", "Hi there. How can I help?"}});
  m.push_back({{"role", "user"}, {"content", "Tell me a joke."}});
  return m;
}

/// The variables transformers passes to the template, in its order.
std::vector<std::pair<std::string, jinja::value>> build_context(const chat_template& t, const ojson& messages,
                                                                bool add_generation_prompt, const ojson& extra) {
  if (!messages.is_array()) throw error(errc::errc_invalid_argument, "chat template " + t.origin() + ": messages must be a JSON array");
  if (!extra.is_null() && !extra.is_object()) {
    throw error(errc::errc_invalid_argument, "chat template " + t.origin() + ": extra variables must be a JSON object");
  }
  std::vector<std::pair<std::string, jinja::value>> vars;
  for (const auto& [name, text] : t.special_tokens()) vars.emplace_back(name, text);
  vars.emplace_back("messages", to_value(messages));
  vars.emplace_back("tools", jinja::value::none());
  vars.emplace_back("documents", jinja::value::none());
  vars.emplace_back("add_generation_prompt", add_generation_prompt);
  if (extra.is_object()) {
    for (auto it = extra.begin(); it != extra.end(); ++it) {
      if (it.key() == "messages" || it.key() == "add_generation_prompt") {
        throw error(errc::errc_invalid_argument, "chat template " + t.origin() + ": extra variable '" + it.key() + "' is set by render() itself");
      }
      vars.emplace_back(it.key(), to_value(it.value()));
    }
  }
  return vars;
}

}  // namespace

chat_template chat_template::parse(const std::string& source, const std::string& origin) {
  chat_template t;
  t.origin_ = origin;
  try {
    t.ast_ = jinja::parse_template(source);
  } catch (const jinja::syntax_error& e) {
    throw error(errc::errc_invalid_config, where(origin, e.pos) + e.what());
  }
  return t;
}

chat_template chat_template::load(const std::filesystem::path& dir, const std::filesystem::path& override_file) {
  const std::filesystem::path config_path = dir / "tokenizer_config.json";
  const std::string config_origin = config_path.string();
  ojson config;
  try {
    config = ojson::parse(read_file(config_path, "tokenizer config"));
  } catch (const ojson::exception& e) {
    throw error(errc::errc_invalid_config, config_origin + ": invalid JSON: " + e.what());
  }
  if (!config.is_object()) throw error(errc::errc_invalid_config, config_origin + ": expected a JSON object");

  std::string source, origin;
  const std::filesystem::path jinja_file = dir / "chat_template.jinja";
  if (!override_file.empty()) {
    source = read_file(override_file, "chat template");
    origin = override_file.string();
  } else if (std::filesystem::exists(jinja_file)) {
    source = read_file(jinja_file, "chat template");
    origin = jinja_file.string();
  } else {
    source = template_from_config(config, config_origin);
    origin = config_origin;
  }
  chat_template t = parse(source, origin);
  for (const char* name : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    const auto it = config.find(name);
    if (it == config.end() || it->is_null()) continue;
    const auto text = token_text(*it);
    if (!text) throw error(errc::errc_invalid_config, config_origin + ": key '" + name + "': expected a string or {\"content\": string}");
    if (!text->empty()) t.special_tokens_.emplace_back(name, *text);
  }

  // A template that cannot render an ordinary conversation must fail now, not
  // on the first request. Some templates refuse system turns by design
  // (raise_exception); for them the probe is retried without one.
  auto probe = [&](bool with_system) {
    jinja::evaluator ev;
    ev.render(*t.ast_, build_context(t, probe_conversation(with_system), true, ojson::object()));
  };
  try {
    probe(true);
  } catch (const jinja::eval_error& e) {
    bool ok = false;
    if (e.kind == jinja::error_kind::template_error) {
      try {
        probe(false);
        ok = true;
      } catch (const jinja::eval_error&) {
      }
    }
    if (!ok) {
      throw error(errc::errc_invalid_config, origin + ": the chat template fails on a probe conversation: " +
                                                 where(origin, e.pos) + kind_prefix(e.kind) + e.what());
    }
  }
  return t;
}

std::string chat_template::render_ordered(const ojson& messages, bool add_generation_prompt, const ojson& extra) const {
  auto vars = build_context(*this, messages, add_generation_prompt, extra);
  try {
    jinja::evaluator ev;
    return ev.render(*ast_, std::move(vars));
  } catch (const jinja::eval_error& e) {
    throw error(errc::errc_invalid_argument, where(origin_, e.pos) + kind_prefix(e.kind) + e.what());
  }
}

std::string chat_template::render(const nlohmann::json& messages, bool add_generation_prompt) const {
  return render_ordered(ojson(messages), add_generation_prompt, ojson());
}
std::string chat_template::render(const nlohmann::json& messages, bool add_generation_prompt, const nlohmann::json& extra) const {
  return render_ordered(ojson(messages), add_generation_prompt, ojson(extra));
}
std::string chat_template::render(const ojson& messages, bool add_generation_prompt) const {
  return render_ordered(messages, add_generation_prompt, ojson());
}
std::string chat_template::render(const ojson& messages, bool add_generation_prompt, const ojson& extra) const {
  return render_ordered(messages, add_generation_prompt, extra);
}
std::string chat_template::render(const std::string& messages_json, bool add_generation_prompt, const std::string& extra_json) const {
  ojson messages, extra;
  try {
    messages = ojson::parse(messages_json);
    if (!extra_json.empty()) extra = ojson::parse(extra_json);
  } catch (const ojson::exception& e) {
    throw error(errc::errc_invalid_argument, "chat template " + origin_ + ": invalid JSON input: " + e.what());
  }
  return render_ordered(messages, add_generation_prompt, extra);
}
std::string chat_template::render(const char* messages_json, bool add_generation_prompt, const char* extra_json) const {
  return render(std::string(messages_json), add_generation_prompt, extra_json ? std::string(extra_json) : std::string());
}

}  // namespace troupe
