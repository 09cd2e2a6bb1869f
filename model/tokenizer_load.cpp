// Loading a tokenizer: the files, the added tokens (ids assigned as HF's
// deserializer assigns them), the id -> string table decode reads, the
// added-token matchers, and tokenizer_config.json's bos/eos. The components are
// read in tokenizer_components.cpp. Errors name the file and the component's path
// in the JSON ("tokenizer.json: pre_tokenizer.pretokenizers[1]: type 'Punctuation'
// is not supported").
#include <atomic>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"
#include "model/tokenizer.hpp"
#include "model/tokenizer_json.hpp"

namespace troupe {
namespace {

using namespace tokenizer_parts;

// ---------------------------------------------------------------- files

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw error(errc::errc_io, p.string() + ": cannot open the file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw error(errc::errc_io, p.string() + ": cannot read the file");
  return ss.str();
}

json parse_json(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw error(errc::errc_invalid_config, origin + ": not valid JSON: " + e.what());
  }
}

/// bos_token / eos_token: a string, {"content": ...}, or null.
std::optional<int32_t> config_token(const reader& r, const json& cfg, const char* key, const tokenizer& tok) {
  const json* v = reader::find(cfg, key);
  if (!v) return std::nullopt;
  std::string content;
  if (v->is_string()) {
    content = v->get<std::string>();
  } else if (v->is_object() && v->contains("content") && (*v)["content"].is_string()) {
    content = (*v)["content"].get<std::string>();
  } else {
    r.fail(errc::errc_invalid_config, std::string("key '") + key + "'", "expected a string or {\"content\": ...}, got " + show(*v));
  }
  auto id = tok.token_to_id(content);
  if (!id) r.fail(errc::errc_invalid_config, std::string("key '") + key + "'", "token '" + content + "' is not in the vocabulary");
  return id;
}

std::atomic<uint64_t> next_serial{1};

}  // namespace

tokenizer tokenizer::parse(const std::string& tokenizer_json, const std::string& origin, const std::string& config_json) {
  const reader r(origin);
  const json j = parse_json(tokenizer_json, origin);
  if (!j.is_object()) r.fail(errc::errc_invalid_config, "top level", "expected an object");
  auto t = std::make_shared<tokenizer_impl>();
  t->origin = origin;
  t->serial = next_serial.fetch_add(1);
  t->model.serial = t->serial;

  read_model(r, r.need(j, "top level", "model"), "model", t->model);
  if (const json* n = reader::find(j, "normalizer")) read_normalizer(r, *n, "normalizer", t->normalizers);
  if (const json* p = reader::find(j, "pre_tokenizer")) read_pretokenizer(r, *p, "pre_tokenizer", t->pretokenizers);
  if (const json* d = reader::find(j, "decoder")) {
    read_decoder(r, *d, "decoder", t->decoders);
    t->has_decoder = true;
  }
  defer_byte_level(*t);

  // Added tokens, as HF's deserializer adds them: one at a time in file order, each
  // taking the id of its content when the vocabulary (or an earlier added token)
  // has it and the next free id otherwise; the file's "id" only draws a warning in
  // HF, so it is not trusted here either.
  std::vector<added_token> special_list, plain_list;  // HF's special_tokens / added_tokens
  std::unordered_set<std::string> special_contents;
  std::unordered_map<int32_t, size_t> slot;            // id -> index into t->added
  std::optional<int32_t> max_added;
  const auto key = [](const added_token& a) {
    return a.content + char('0' + a.single_word + 2 * a.lstrip + 4 * a.rstrip + 8 * a.normalized + 16 * a.special);
  };
  std::unordered_set<std::string> held;  // key() of the token each id holds
  if (const json* added = reader::find(j, "added_tokens")) {
    if (!added->is_array()) r.fail(errc::errc_invalid_config, "added_tokens", "expected an array");
    const auto vocab_len = static_cast<int64_t>(t->model.vocab.size());
    for (size_t i = 0; i < added->size(); ++i) {
      const json& a = (*added)[i];
      const std::string at = "added_tokens[" + std::to_string(i) + "]";
      if (!a.is_object()) r.fail(errc::errc_invalid_config, at, "expected an object, got " + show(a));
      added_token tok;
      r.integer(a, at, "id");
      tok.content = r.string(a, at, "content");
      tok.single_word = r.boolean(a, at, "single_word", false);
      tok.lstrip = r.boolean(a, at, "lstrip", false);
      tok.rstrip = r.boolean(a, at, "rstrip", false);
      tok.special = r.boolean(a, at, "special", false);
      tok.normalized = r.boolean(a, at, "normalized", !tok.special);
      if (tok.special && !tok.content.empty() && special_contents.insert(tok.content).second) {
        special_list.push_back(tok);
      }
      if (tok.content.empty()) continue;
      if (held.count(key(tok))) continue;  // the very same token again
      if (auto it = t->added_ids.find(tok.content); it != t->added_ids.end()) {
        tok.id = it->second;
      } else if (auto v = t->model.vocab.find(tok.content); v != t->model.vocab.end()) {
        tok.id = v->second;
      } else if (!max_added) {
        tok.id = static_cast<int32_t>(vocab_len);
      } else {
        tok.id = (*max_added >= vocab_len || vocab_len == 0) ? *max_added + 1 : static_cast<int32_t>(vocab_len);
      }
      t->added_ids[tok.content] = tok.id;
      max_added = std::max(max_added.value_or(tok.id), tok.id);
      if (!special_contents.count(tok.content)) plain_list.push_back(tok);
      if (auto it = slot.find(tok.id); it != slot.end()) {
        held.erase(key(t->added[it->second]));
        t->added[it->second] = tok;
      } else {
        slot.emplace(tok.id, t->added.size());
        t->added.push_back(tok);
      }
      held.insert(key(tok));
    }
  }
  int64_t max_id = -1;
  for (const auto& [tok, id] : t->model.vocab) max_id = std::max<int64_t>(max_id, id);
  for (const added_token& a : t->added) max_id = std::max<int64_t>(max_id, a.id);
  t->tokens.assign(static_cast<size_t>(max_id + 1), std::string());
  t->flags.assign(static_cast<size_t>(max_id + 1), 0);
  for (const auto& [tok, id] : t->model.vocab) {
    t->tokens[static_cast<size_t>(id)] = tok;
    t->flags[static_cast<size_t>(id)] = tokenizer_impl::flag_present;
  }
  // Decoding reads an added token in its normalized form when it has one (HF's
  // normalized_cache), and skip_special_tokens looks that string up among the
  // special contents.
  for (const added_token& a : t->added) {
    std::string text = a.content;
    bool at_start = true;
    if (a.normalized) normalize(t->normalizers, text, at_start);
    t->tokens[static_cast<size_t>(a.id)] = std::move(text);
    t->flags[static_cast<size_t>(a.id)] = tokenizer_impl::flag_present;
  }
  for (size_t id = 0; id < t->tokens.size(); ++id) {
    if ((t->flags[id] & tokenizer_impl::flag_present) && special_contents.count(t->tokens[id])) {
      t->flags[id] |= tokenizer_impl::flag_special;
    }
  }
  // HF matches special tokens first, then the others, each in the order added;
  // normalized tokens are matched in their normalized form on normalized text.
  // A match's options are those of the token its id holds last.
  for (const std::vector<added_token>* list : {&special_list, &plain_list}) {
    for (const added_token& a : *list) {
      const auto value = static_cast<int32_t>(slot.at(t->added_ids.at(a.content)));
      if (!a.normalized) {
        t->trie_raw.add(a.content, value);
      } else {
        std::string norm = a.content;
        bool at_start = true;
        normalize(t->normalizers, norm, at_start);
        t->trie_normalized.add(norm, value);
      }
    }
  }
  if (const json* p = reader::find(j, "post_processor")) {
    read_post_processor(r, *t, *p, "post_processor", t->post_prefix, t->post_suffix);
  }

  tokenizer tok(t);
  if (!config_json.empty()) {
    const std::string cfg_origin =
        origin.size() >= 14 && origin.compare(origin.size() - 14, 14, "tokenizer.json") == 0
            ? origin.substr(0, origin.size() - 14) + "tokenizer_config.json"
            : origin + " (tokenizer_config.json)";
    const reader cr(cfg_origin);
    const json cfg = parse_json(config_json, cfg_origin);
    if (!cfg.is_object()) cr.fail(errc::errc_invalid_config, "top level", "expected an object");
    t->bos = config_token(cr, cfg, "bos_token", tok);
    if (auto eos = config_token(cr, cfg, "eos_token", tok)) t->eos.push_back(*eos);
    if (reader::find(cfg, "add_bos_token")) t->add_bos = cr.boolean(cfg, "top level", "add_bos_token", false);
  }
  return tok;
}

tokenizer tokenizer::load(const std::filesystem::path& path) {
  std::error_code ec;
  const bool dir = std::filesystem::is_directory(path, ec);
  const std::filesystem::path file = dir ? path / "tokenizer.json" : path;
  const std::filesystem::path config = file.parent_path() / "tokenizer_config.json";
  const std::string text = read_file(file);
  const std::string cfg = std::filesystem::exists(config, ec) ? read_file(config) : std::string();
  return parse(text, file.string(), cfg);
}

}  // namespace troupe
