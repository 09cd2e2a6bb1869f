// Typed reading of tokenizer.json components (internal to the model library):
// a `reader` checks each value's type and names the file and the component's JSON
// path in every error, and one read_* function per component kind fills the
// pipeline stages of tokenizer_parts.hpp. tokenizer_load.cpp drives them.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"
#include "model/tokenizer_parts.hpp"

namespace troupe::tokenizer_parts {

using json = nlohmann::json;

/// A JSON value for an error message, shortened so a huge value stays readable.
std::string show(const json& v);

/// `where.key[i]`, the JSON path of an array element.
std::string json_index(const std::string& where, const char* key, size_t i);

/// Typed access to the components of one file; `where` is a component's JSON path.
class reader {
 public:
  explicit reader(std::string origin) : origin_(std::move(origin)) {}
  const std::string& origin() const { return origin_; }

  [[noreturn]] void fail(errc code, const std::string& where, const std::string& what) const {
    throw error(code, origin_ + ": " + where + ": " + what);
  }
  [[noreturn]] void unsupported(const std::string& where, const std::string& what) const {
    fail(errc::errc_unsupported, where, what + " is not supported");
  }

  /// `j[key]`, or nullptr when absent or null.
  static const json* find(const json& j, const char* key) {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  const json& need(const json& j, const std::string& where, const char* key) const {
    const json* v = find(j, key);
    if (!v) fail(errc::errc_invalid_config, where, std::string("key '") + key + "' is missing");
    return *v;
  }
  std::string string(const json& j, const std::string& where, const char* key) const {
    const json& v = need(j, where, key);
    if (!v.is_string()) fail(errc::errc_invalid_config, where + "." + key, "expected a string, got " + show(v));
    return v.get<std::string>();
  }
  std::optional<std::string> opt_string(const json& j, const std::string& where, const char* key) const {
    if (!find(j, key)) return std::nullopt;
    return string(j, where, key);
  }
  bool boolean(const json& j, const std::string& where, const char* key, bool fallback) const {
    const json* v = find(j, key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(errc::errc_invalid_config, where + "." + key, "expected true or false, got " + show(*v));
    return v->get<bool>();
  }
  int64_t integer(const json& j, const std::string& where, const char* key) const {
    const json& v = need(j, where, key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      fail(errc::errc_invalid_config, where + "." + key, "expected a non-negative integer, got " + show(v));
    }
    return v.get<int64_t>();
  }
  const json& array(const json& j, const std::string& where, const char* key) const {
    const json& v = need(j, where, key);
    if (!v.is_array()) fail(errc::errc_invalid_config, where + "." + key, "expected an array, got " + show(v));
    return v;
  }
  std::string type(const json& j, const std::string& where) const {
    if (!j.is_object()) fail(errc::errc_invalid_config, where, "expected an object, got " + show(j));
    return string(j, where, "type");
  }
  /// A one-character string (Metaspace replacement, Strip content).
  char32_t character(const json& j, const std::string& where, const char* key) const {
    const std::string s = string(j, where, key);
    size_t i = 0;
    if (s.empty() || !utf8_valid(s) || (utf8_next(s, i), i != s.size())) {
      fail(errc::errc_invalid_config, where + "." + key, "expected one character, got " + show(json(s)));
    }
    i = 0;
    return utf8_next(s, i);
  }
  /// {"String": s} or {"Regex": r}.
  matcher pattern(const json& j, const std::string& where) const {
    const json& p = need(j, where, "pattern");
    const std::string at = where + ".pattern";
    if (p.is_object() && p.size() == 1 && p.contains("String") && p["String"].is_string()) {
      return matcher::literal(p["String"].get<std::string>());
    }
    if (p.is_object() && p.size() == 1 && p.contains("Regex") && p["Regex"].is_string()) {
      try {
        return matcher::pattern(p["Regex"].get<std::string>());
      } catch (const std::invalid_argument& e) {
        fail(errc::errc_invalid_config, at, e.what());
      }
    }
    fail(errc::errc_invalid_config, at, "expected {\"String\": ...} or {\"Regex\": ...}, got " + show(p));
  }

 private:
  std::string origin_;
};

/// The normalizer at `where` (null: none), flattened into `out`.
void read_normalizer(const reader& r, const json& j, const std::string& where, std::vector<normalizer_step>& out);
/// The pre-tokenizer at `where` (null: none), flattened into `out`.
void read_pretokenizer(const reader& r, const json& j, const std::string& where, std::vector<pretokenizer_step>& out);
/// The BPE model at `where`; any other model type is unsupported.
void read_model(const reader& r, const json& j, const std::string& where, bpe_model& m);
/// Lets the model take raw bytes from a trailing ByteLevel pre-tokenizer.
void defer_byte_level(tokenizer_impl& t);
/// The ids a post-processor puts before and after the sequence (add_special_tokens).
void read_post_processor(const reader& r, const tokenizer_impl& t, const json& j, const std::string& where,
                         std::vector<int32_t>& prefix, std::vector<int32_t>& suffix);
/// The decoder at `where`, flattened into `out`, each step marked as seeing tokens or joined text.
void read_decoder(const reader& r, const json& j, const std::string& where, std::vector<decoder_step>& out);

}  // namespace troupe::tokenizer_parts
