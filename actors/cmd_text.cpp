// `troupe tokenize` and `troupe detokenize`: line-oriented JSON filters over a
// checkpoint's tokenizer (and chat template). Only tokenizer.json and
// tokenizer_config.json are read, never the weights. A bad input line is
// reported on stderr with its line number, answered with `null` so output lines
// stay aligned with input lines, and makes the exit code 1.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/commands.hpp"
#include "config/errors.hpp"
#include "model/chat_template.hpp"
#include "model/tokenizer.hpp"

namespace troupe {

namespace {

// Runs `answer` on every stdin line; returns the exit code.
template <class F>
int for_each_line(const char* what, F&& answer) {
  std::string line;
  int code = 0;
  for (int64_t n = 1; std::getline(std::cin, line); ++n) {
    try {
      std::cout << answer(line) << "\n";
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe %s: line %lld: %s\n", what, static_cast<long long>(n), e.what());
      std::cout << "null\n";
      code = 1;
    }
  }
  std::cout.flush();
  return code;
}

nlohmann::ordered_json parse_line(const std::string& line) {
  try {
    return nlohmann::ordered_json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    throw error(errc::errc_invalid_argument, std::string("not JSON: ") + e.what());
  }
}

}  // namespace

command command_tokenize(CLI::App& app) {
  struct opts {
    std::string model_dir = default_model_dir().string(), template_file;
    bool chat = false;
  };
  auto o = std::make_shared<opts>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize", "stdin: one JSON string per line -> one JSON array of ids (no special tokens added); "
                  "with --chat: one JSON array of {role, content} messages -> the rendered prompt as a JSON string");
  cmd->add_option("--model", o->model_dir, "folder with tokenizer.json and tokenizer_config.json")->capture_default_str();
  cmd->add_flag("--chat", o->chat, "render chat conversations with the model's chat template (adds the generation prompt)");
  cmd->add_option("--chat-template", o->template_file, "a Jinja file overriding the checkpoint's chat template");
  return {cmd, [o] {
            if (o->chat) {
              const chat_template tpl = chat_template::load(o->model_dir, o->template_file);
              return for_each_line("tokenize", [&](const std::string& line) {
                const nlohmann::ordered_json msgs = parse_line(line);
                if (!msgs.is_array()) throw error(errc::errc_invalid_argument, "expected a JSON array of messages");
                return nlohmann::json(tpl.render(msgs, true)).dump();
              });
            }
            const tokenizer tok = tokenizer::load(o->model_dir);
            return for_each_line("tokenize", [&](const std::string& line) {
              const nlohmann::ordered_json s = parse_line(line);
              if (!s.is_string()) throw error(errc::errc_invalid_argument, "expected a JSON string");
              return nlohmann::json(tok.encode(s.get<std::string>(), false)).dump();
            });
          }};
}

command command_detokenize(CLI::App& app) {
  auto model_dir = std::make_shared<std::string>(default_model_dir().string());
  CLI::App* cmd = app.add_subcommand("detokenize", "stdin: one JSON array of ids per line -> one JSON string per line");
  cmd->add_option("--model", *model_dir, "folder with tokenizer.json and tokenizer_config.json")->capture_default_str();
  return {cmd, [model_dir] {
            const tokenizer tok = tokenizer::load(*model_dir);
            return for_each_line("detokenize", [&](const std::string& line) {
              const nlohmann::ordered_json a = parse_line(line);
              if (!a.is_array()) throw error(errc::errc_invalid_argument, "expected a JSON array of token ids");
              std::vector<int32_t> ids;
              for (const auto& v : a) {
                if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
                  throw error(errc::errc_invalid_argument, "not a token id: " + v.dump());
                ids.push_back(v.get<int32_t>());
              }
              return nlohmann::json(tok.decode(ids, false)).dump();
            });
          }};
}

}  // namespace troupe
