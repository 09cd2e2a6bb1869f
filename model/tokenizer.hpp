// A Hugging Face tokenizer.json tokenizer that gives the ids and text the Rust
// `tokenizers` library gives. It is built as that library's pipeline, one stage
// per component of the file (added tokens, normalizer, pre-tokenizer, BPE model,
// post-processor, decoder), each stage following the library's source rather than
// its documentation, because the goal is bit-exact agreement with the ids a model
// was trained on. Components troupe does not implement are refused at load with
// the file and the component named, never approximated.
//
// A tokenizer is an immutable value behind a shared pointer: copies are cheap and
// every const method may run concurrently from many threads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

namespace tokenizer_parts {
struct tokenizer_impl;
}

/// A tokenizer.json tokenizer (BPE model) with HF `tokenizers` semantics.
class tokenizer {
 public:
  /// Loads DIR/tokenizer.json (and DIR/tokenizer_config.json when present, for
  /// bos/eos/add_bos_token), or a tokenizer.json path. Throws troupe::error:
  /// errc_io when a file cannot be read, errc_invalid_config when a file is not
  /// valid JSON or a component is malformed, errc_unsupported for a valid
  /// component troupe does not implement; the message names the file and the
  /// component ("tokenizer.json: pre_tokenizer: type 'Foo' is not supported").
  static tokenizer load(const std::filesystem::path& path);

  /// Same from JSON text; `origin` names the source in error messages and
  /// `config_json` (may be empty) is the text of tokenizer_config.json.
  static tokenizer parse(const std::string& tokenizer_json, const std::string& origin,
                         const std::string& config_json = "");

  /// Token ids of `text`, as HF encode(text, add_special_tokens).ids. Added tokens
  /// are split out first, then the normalizer, pre-tokenizer and BPE run on the
  /// text between them; add_special_tokens applies the post-processor (e.g. the
  /// BOS of a TemplateProcessing). Invalid UTF-8 in `text` is first replaced by
  /// U+FFFD (HF only ever sees valid Unicode strings).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;

  /// Text of `ids`, as HF decode(ids, skip_special_tokens) (no clean-up of
  /// tokenization spaces). Bytes that do not form UTF-8 become U+FFFD exactly
  /// where HF puts them. Throws troupe::error(errc_invalid_argument) naming the
  /// first id that is not in the vocabulary.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  /// Max id + 1 over the model vocabulary and the added tokens.
  int64_t vocab_size() const;
  /// Id of a token string (added tokens first, then the model vocabulary).
  std::optional<int32_t> token_to_id(std::string_view token) const;
  /// The string of an id as decoding reads it: the raw vocabulary string
  /// (byte-level tokens stay in their mapped alphabet, e.g. "Ġworld"), or an added
  /// token's content (its normalized form for a normalized=true token, as HF
  /// 0.23). Throws errc_invalid_argument for an unknown id.
  std::string id_to_token(int32_t id) const;
  /// Whether `id` is a special added token (dropped by skip_special_tokens).
  bool is_special(int32_t id) const;
  /// tokenizer_config.json's bos_token, when present and set.
  std::optional<int32_t> bos_id() const;
  /// tokenizer_config.json's eos_token, when present and set (empty otherwise).
  std::vector<int32_t> eos_ids() const;
  /// tokenizer_config.json's add_bos_token, when present.
  std::optional<bool> add_bos_token() const;

  /// The pipeline, for the streaming detokenizer.
  const tokenizer_parts::tokenizer_impl& parts() const { return *impl_; }

 private:
  explicit tokenizer(std::shared_ptr<const tokenizer_parts::tokenizer_impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const tokenizer_parts::tokenizer_impl> impl_;
};

}  // namespace troupe
