// Hugging Face chat templates, rendered byte for byte as transformers'
// apply_chat_template renders them (Jinja2 in an ImmutableSandboxedEnvironment
// with trim_blocks and lstrip_blocks, loopcontrols, raise_exception,
// strftime_now and a json.dumps-based tojson). The Jinja interpreter lives in
// model/jinja_*.{hpp,cpp}; this class is the model-facing edge: it loads the
// template and special tokens of a checkpoint, rejects at load time what it
// could not render, and turns template failures into troupe::error.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace troupe {

namespace jinja {
struct template_ast;
}

/// A parsed chat template.
class chat_template {
 public:
  /// Parses `source`; throws troupe::error(errc_invalid_config) with origin,
  /// line and column for syntax errors, unknown filters or tests and
  /// unsupported tags, so a template troupe cannot render fails at model load.
  static chat_template parse(const std::string& source, const std::string& origin);

  /// Loads the chat template of checkpoint folder `dir`: `override_file` when
  /// given, else DIR/chat_template.jinja when present, else the chat_template
  /// of DIR/tokenizer_config.json (a string, or the list-of-{name, template}
  /// form, of which "default" is used). Special tokens of tokenizer_config
  /// (bos_token, eos_token, ... as strings or {"content": ...} objects; unset
  /// ones omitted, as transformers' special_tokens_map omits them) become
  /// template variables. Throws troupe::error naming the file when it is
  /// absent (errc_io) or invalid (errc_invalid_config). After parsing, renders
  /// a probe conversation (system, user, assistant, user with
  /// add_generation_prompt; without the system turn if the template rejects
  /// system turns with raise_exception) and throws errc_invalid_config naming
  /// the origin if that fails.
  static chat_template load(const std::filesystem::path& dir, const std::filesystem::path& override_file = {});

  /// Renders `messages` (a JSON array of {"role", "content", ...} objects)
  /// with `add_generation_prompt` and `extra` (a JSON object of further
  /// variables: tools, documents, enable_thinking, ...; null for none).
  /// Object keys keep the order of the JSON value: nlohmann::json sorts them,
  /// so pass ordered_json or JSON text where the template prints objects
  /// (tojson of tools). Throws troupe::error(errc_invalid_argument) carrying
  /// raise_exception's message or the evaluation error, with its position.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt) const;
  std::string render(const nlohmann::json& messages, bool add_generation_prompt, const nlohmann::json& extra) const;
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt) const;
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra) const;
  /// Same, from JSON text (key order preserved); empty `extra_json` means none.
  std::string render(const std::string& messages_json, bool add_generation_prompt,
                     const std::string& extra_json = {}) const;
  std::string render(const char* messages_json, bool add_generation_prompt, const char* extra_json = nullptr) const;

  /// Where the template came from (a file path, or what parse() was given).
  const std::string& origin() const { return origin_; }
  /// The special tokens passed to every render, as (name, text).
  const std::vector<std::pair<std::string, std::string>>& special_tokens() const { return special_tokens_; }

 private:
  chat_template() = default;
  std::string render_ordered(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                             const nlohmann::ordered_json& extra) const;

  std::shared_ptr<const jinja::template_ast> ast_;
  std::string origin_;
  std::vector<std::pair<std::string, std::string>> special_tokens_;
};

}  // namespace troupe
