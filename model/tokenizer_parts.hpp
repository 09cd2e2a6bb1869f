// The stages of the tokenizer pipeline (model/tokenizer.hpp), one type per
// tokenizer.json component, kept apart from the public header so that PCRE2,
// utf8proc and nlohmann stay private to the model library. Each stage mirrors the
// HF `tokenizers` type of the same name; comments say where troupe's form differs
// (e.g. byte-level pre-tokens stay raw bytes until the BPE model, which looks them
// up in a raw-byte vocabulary, instead of being rewritten into the GPT-2 alphabet).
#pragma once

#include <array>
#include <bitset>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

struct pcre2_real_code_8;

namespace troupe::tokenizer_parts {

// ---------------------------------------------------------------- UTF-8

/// Length of the UTF-8 sequence led by `c` (1 for a byte that cannot lead one).
inline size_t utf8_seq_len(unsigned char c) {
  return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}
/// The code point at s[i] of valid UTF-8; advances i past it.
char32_t utf8_next(std::string_view s, size_t& i);
/// Appends the UTF-8 form of `c`.
void utf8_put(std::string& out, char32_t c);
/// Whether `s` is valid UTF-8.
bool utf8_valid(std::string_view s);

/// Incremental form of Rust's String::from_utf8_lossy: each maximal invalid
/// subpart becomes one U+FFFD; a trailing incomplete sequence is held back until
/// more bytes complete it (feed) or the input ends (finish: one U+FFFD).
class utf8_lossy {
 public:
  /// Appends to `out` the text that `bytes` completes.
  void feed(std::string_view bytes, std::string& out);
  /// Ends the input.
  void finish(std::string& out);

 private:
  std::array<unsigned char, 4> pending_{};
  size_t n_pending_ = 0;
};

/// Unicode White_Space (Rust char::is_whitespace).
bool is_white_space(char32_t c);
/// General category N* (Rust char::is_numeric).
bool is_numeric(char32_t c);
/// A word character as Rust's regex \w (letters, marks, Nd, Pc, joiners).
bool is_word_char(char32_t c);

// ---------------------------------------------------------------- byte level

/// GPT-2's bytes_to_unicode: the printable stand-in of each byte.
const std::array<char32_t, 256>& byte_level_chars();
/// The byte a stand-in character means, or -1.
int byte_level_byte(char32_t c);
/// Appends the byte-level (mapped) form of raw bytes.
void byte_level_map(std::string_view raw, std::string& out);

// ---------------------------------------------------------------- patterns

/// A byte range [begin, end) of a string.
struct span {
  size_t begin = 0;
  size_t end = 0;
};

/// A PCRE2 regex compiled to behave as the Oniguruma regexes HF uses: UTF + UCP,
/// ^/$ at line ends (Ruby syntax), and \s \S \w \W rewritten to Oniguruma's
/// Unicode classes (PCRE2's \s also matches U+180E, its \w lacks marks and Pc).
class regex {
 public:
  /// Throws std::invalid_argument with PCRE2's message for a bad pattern.
  explicit regex(const std::string& pattern);
  /// Every match, left to right, as onig's find_iter: an empty match right
  /// after the previous match is skipped. `s` must be valid UTF-8.
  void find_all(std::string_view s, std::vector<span>& out) const;

 private:
  std::shared_ptr<pcre2_real_code_8> code_;
};

/// What a Split/Replace pattern matches: a literal string, a regex, or single
/// characters with a property (Digits, WhitespaceSplit).
class matcher {
 public:
  static matcher literal(std::string s);
  static matcher pattern(const std::string& re);
  static matcher chars(bool (*pred)(char32_t));
  /// Every match, left to right, non-overlapping (HF's Pattern::find_matches).
  void find_all(std::string_view s, std::vector<span>& out) const;
  bool is_regex() const { return re_ != nullptr; }
  const std::string& literal_text() const { return lit_; }

 private:
  std::string lit_;
  std::shared_ptr<const regex> re_;
  bool (*pred_)(char32_t) = nullptr;
};

/// HF SplitDelimiterBehavior.
enum class split_behavior : uint8_t {
  split_removed,
  split_isolated,
  split_merged_with_previous,
  split_merged_with_next,
  split_contiguous,
};

/// HF NormalizedString::split: the ranges of `s` that remain, in order (some may be empty).
void split_ranges(std::string_view s, const matcher& m, split_behavior behavior, bool invert,
                  std::vector<span>& out);

/// HF NormalizedString::replace: every match of `m` in `s` replaced by `content`.
/// Returns whether something at the very start was removed without replacement.
bool replace_all(std::string& s, const matcher& m, const std::string& content);

// ---------------------------------------------------------------- normalizers

/// One normalizer (Sequences are flattened).
struct normalizer_step {
  enum kind_t : uint8_t {
    norm_nfc, norm_nfd, norm_nfkc, norm_nfkd, norm_lowercase, norm_strip, norm_prepend, norm_replace
  } kind = norm_nfc;
  bool strip_left = false, strip_right = false;  ///< strip
  std::string text;                              ///< prepend: the prefix; replace: the content
  std::optional<matcher> pattern;                ///< replace
};

/// Applies `steps` to `s`. `at_start` (the piece begins the original text)
/// becomes false when leading characters are removed outright, as HF's alignments do.
void normalize(const std::vector<normalizer_step>& steps, std::string& s, bool& at_start);

// ---------------------------------------------------------------- pre-tokenizers

/// A piece of text on its way to the model.
struct piece {
  std::string text;
  bool at_start = false;  ///< begins at offset 0 of the original text (Metaspace prepend_scheme first)
};

/// One pre-tokenizer (Sequences are flattened).
struct pretokenizer_step {
  enum kind_t : uint8_t {
    pre_split, pre_byte_level, pre_metaspace, pre_digits, pre_whitespace, pre_whitespace_split
  } kind = pre_split;
  std::optional<matcher> pattern;  ///< split
  split_behavior behavior = split_behavior::split_isolated;
  bool invert = false;
  bool add_prefix_space = false;   ///< byte_level
  bool use_regex = false;          ///< byte_level: split with the GPT-2 regex
  bool map_bytes = true;           ///< byte_level: false when the model takes raw bytes
  char32_t replacement = U'\u2581';  ///< metaspace
  enum prepend_t : uint8_t { prepend_always, prepend_first, prepend_never } prepend = prepend_always;
  bool split_pieces = true;        ///< metaspace split
  bool individual_digits = false;  ///< digits
};

/// Runs the pre-tokenizers over `pieces` (empty pieces are dropped after every step).
void pretokenize(const std::vector<pretokenizer_step>& steps, std::vector<piece>& pieces);

// ---------------------------------------------------------------- BPE model

/// Open-addressing map from a merge pair (left id, right id) to (rank, merged id).
class merge_map {
 public:
  void reserve(size_t n);
  /// Inserts or overwrites (HF builds a HashMap: a repeated pair keeps the last rank).
  void set(int32_t a, int32_t b, uint32_t rank, int32_t merged);
  /// The merge of (a, b), or nullptr.
  const std::pair<uint32_t, int32_t>* find(int32_t a, int32_t b) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = pack(a, b);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      const slot& s = slots_[i];
      if (s.key == key) return &s.value;
      if (s.key == empty_key) return nullptr;
    }
  }

 private:
  static constexpr uint64_t empty_key = ~uint64_t{0};
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t hash(uint64_t k) { return size_t((k * 0x9E3779B97F4A7C15ull) >> 17); }
  struct slot {
    uint64_t key = empty_key;
    std::pair<uint32_t, int32_t> value{};
  };
  void grow();
  std::vector<slot> slots_;
  size_t mask_ = 0, used_ = 0;
};

/// Transparent string hashing so lookups by string_view do not allocate.
struct string_hash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using string_map = std::unordered_map<std::string, int32_t, string_hash, std::equal_to<>>;

/// HF models::bpe::BPE (dropout unsupported).
struct bpe_model {
  string_map vocab;                   ///< token string -> id
  string_map raw_vocab;               ///< byte-level vocabularies: raw bytes of a token -> id
  std::array<int32_t, 256> byte_ids;  ///< raw byte -> id of its byte-level character, or -1
  std::array<int32_t, 256> fallback_ids;  ///< byte -> id of "<0xXX>", or -1
  merge_map merges;
  std::optional<int32_t> unk_id;
  bool unk_token_set = false;         ///< an unk_token is named (its id may be missing: HF fails on use)
  std::string unk_token;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  uint64_t serial = 0;                ///< identifies this model in the per-thread word cache
  std::string continuing_subword_prefix, end_of_word_suffix;

  /// Appends the ids of one pre-token. `raw_bytes`: the word is raw bytes that a
  /// deferred ByteLevel pre-tokenizer has not mapped (looked up in raw_vocab).
  void encode_word(std::string_view word, bool raw_bytes, std::vector<int32_t>& out) const;

 private:
  void encode_chars(std::string_view word, std::vector<int32_t>& out) const;
};

// ---------------------------------------------------------------- added tokens

/// One entry of tokenizer.json "added_tokens".
struct added_token {
  int32_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

/// Leftmost-longest matching of a set of strings (HF's Aho-Corasick with
/// MatchKind::LeftmostLongest), as a byte trie walked from each candidate start.
class token_trie {
 public:
  /// Adds `pattern` meaning `value`; the first of equal patterns wins.
  void add(std::string_view pattern, int32_t value);
  bool empty() const { return nodes_.size() <= 1; }
  /// The longest pattern starting at s[pos]: its value (or -1) and length.
  int32_t longest_at(std::string_view s, size_t pos, size_t& len) const;
  /// Whether any pattern starts with byte c.
  bool may_start(unsigned char c) const { return first_[c]; }

 private:
  struct node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t value = -1;
  };
  std::vector<node> nodes_{1};
  std::bitset<256> first_;
};

/// A piece of input: an added token (index into tokenizer_impl::added) or text.
struct added_split {
  int32_t token = -1;  ///< index into added, or -1 for text
  span range;
};

/// HF AddedVocabulary::find_matches: splits `s` on the tokens of `trie`
/// honouring single_word/lstrip/rstrip; text ranges may be empty.
void find_added(const std::vector<added_token>& added, const token_trie& trie, std::string_view s,
                std::vector<added_split>& out);

// ---------------------------------------------------------------- decoders

/// One decoder (Sequences are flattened). `text_mode`: it runs after a decoder
/// that joined the tokens into one string (ByteLevel, Fuse).
struct decoder_step {
  enum kind_t : uint8_t { dec_byte_level, dec_metaspace, dec_replace, dec_byte_fallback, dec_fuse, dec_strip } kind = dec_byte_level;
  bool text_mode = false;
  char32_t replacement = U'\u2581';  ///< metaspace
  bool prepend_never = false;        ///< metaspace
  std::optional<matcher> pattern;    ///< replace
  std::string content;               ///< replace
  char32_t strip_content = U' ';     ///< strip
  size_t strip_start = 0, strip_stop = 0;
};

struct tokenizer_impl;

/// The decoder as a stream: tokens go in one at a time and text comes out as
/// soon as no later token can change it. decode() is this stream run over all
/// ids, so streaming and batch decoding agree by construction. Per-token cost
/// is constant: what is held back is bounded by one UTF-8 character, one
/// Replace pattern, Strip's stop count, or one run of byte-fallback tokens.
class decode_stream {
 public:
  decode_stream(const tokenizer_impl& t, bool skip_special_tokens);
  /// Feeds one id (throws errc_invalid_argument for an unknown id); appends finished text.
  void push(int32_t id, std::string& out);
  /// Ends the sequence, appends the rest, and starts over.
  void finish(std::string& out);

 private:
  struct stage {
    size_t count = 0;           // tokens seen (metaspace: first token)
    std::string held;           // replace: possible partial match; strip: trailing content chars
    std::string bytes;          // byte_fallback: the current run
    utf8_lossy lossy;           // byte_level
    size_t lead_stripped = 0;   // strip (text mode)
    bool lead_done = false;
  };
  void feed(size_t k, std::string_view piece, std::string& out);
  void end(size_t k, std::string& out);
  void flush_bytes(size_t k, std::string& out);

  const tokenizer_impl* t_;
  bool skip_;
  std::vector<stage> stages_;
  size_t sink_count_ = 0;
  std::string scratch_;
};

// ---------------------------------------------------------------- the pipeline

/// Everything tokenizer.json and tokenizer_config.json say, ready to run.
struct tokenizer_impl {
  std::string origin;
  std::vector<std::string> tokens;   ///< id -> token string (added content or vocab)
  std::vector<uint8_t> flags;        ///< id -> flag_* bits
  static constexpr uint8_t flag_present = 1, flag_special = 2;
  std::vector<added_token> added;
  string_map added_ids;              ///< content -> id
  token_trie trie_raw, trie_normalized;  ///< values index `added`
  std::vector<normalizer_step> normalizers;
  std::vector<pretokenizer_step> pretokenizers;
  bool raw_bytes = false;            ///< a trailing ByteLevel is deferred to the model
  bpe_model model;
  std::vector<int32_t> post_prefix, post_suffix;  ///< add_special_tokens
  bool has_decoder = false;
  std::vector<decoder_step> decoders;
  std::optional<int32_t> bos;
  std::vector<int32_t> eos;
  std::optional<bool> add_bos;
  uint64_t serial = 0;               ///< distinguishes instances in thread-local caches

  /// The ids of `text` without post-processing.
  void encode_into(std::string_view text, std::vector<int32_t>& out) const;
};

}  // namespace troupe::tokenizer_parts
