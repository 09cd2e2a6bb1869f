// The patterns that Split, Replace and the added-token checks use: a PCRE2 regex
// (JIT) that behaves as the Oniguruma regexes HF compiles, literal strings, and
// character predicates; HF's split behaviors over their matches. Oniguruma and
// PCRE2 agree on \p{..} classes, alternation order and lookaround; they differ
// in \s (PCRE2 adds U+180E) and \w (PCRE2 lacks marks, Pc and joiners), so those
// escapes are rewritten into Oniguruma's explicit classes before compiling.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <stdexcept>

#include "config/errors.hpp"
#include "model/tokenizer_parts.hpp"

namespace troupe::tokenizer_parts {

// ---------------------------------------------------------------- regex

namespace {

/// Oniguruma's Unicode \s (White_Space) and \w (Alphabetic, Mark, Decimal_Number,
/// Connector_Punctuation, Join_Control), as PCRE2 class contents. Rust's regex
/// \w, which HF's single_word check uses, is the same class.
constexpr const char* onig_space =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
constexpr const char* onig_word = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}";

/// Rewrites \s \S \w \W of an Oniguruma pattern into explicit classes (negated
/// forms only outside brackets, where they can be written as [^...]).
std::string onig_compatible(const std::string& p) {
  std::string out;
  out.reserve(p.size() * 2);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      const char* cls = d == 's' || d == 'S' ? onig_space : d == 'w' || d == 'W' ? onig_word : nullptr;
      if (cls && (d == 's' || d == 'w')) {
        out += in_class ? std::string(cls) : "[" + std::string(cls) + "]";
        ++i;
        continue;
      }
      if (cls && !in_class) {
        out += "[^" + std::string(cls) + "]";
        ++i;
        continue;
      }
      out += c;
      out += d;
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ] is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      const size_t e = p.find(":]", i + 2);
      if (e != std::string::npos) {
        out.append(p, i, e + 2 - i);
        i = e + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

/// Per-thread PCRE2 match state: one ovector pair and a JIT stack that lets long
/// runs of repeated classes match without running out of stack.
struct match_state {
  pcre2_match_data_8* data = pcre2_match_data_create_8(1, nullptr);
  pcre2_jit_stack_8* stack = pcre2_jit_stack_create_8(64 * 1024, 16 * 1024 * 1024, nullptr);
  pcre2_match_context_8* context = pcre2_match_context_create_8(nullptr);
  match_state() { pcre2_jit_stack_assign_8(context, nullptr, stack); }
  ~match_state() {
    pcre2_match_context_free_8(context);
    pcre2_jit_stack_free_8(stack);
    pcre2_match_data_free_8(data);
  }
  match_state(const match_state&) = delete;
  match_state& operator=(const match_state&) = delete;
};

}  // namespace

regex::regex(const std::string& pattern) {
  const std::string p = onig_compatible(pattern);
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code_8* code = pcre2_compile_8(reinterpret_cast<PCRE2_SPTR8>(p.data()), p.size(),
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &offset, nullptr);
  if (!code) {
    PCRE2_UCHAR8 msg[256];
    pcre2_get_error_message_8(err, msg, sizeof msg);
    throw std::invalid_argument("regex " + pattern + " does not compile: " +
                                reinterpret_cast<const char*>(msg) + " at offset " + std::to_string(offset));
  }
  pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter where JIT is unavailable
  code_ = std::shared_ptr<pcre2_real_code_8>(code, [](pcre2_code_8* c) { pcre2_code_free_8(c); });
}

void regex::find_all(std::string_view s, std::vector<span>& out) const {
  thread_local match_state st;
  const auto* subject = reinterpret_cast<PCRE2_SPTR8>(s.data());
  const size_t n = s.size();
  size_t start = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (start <= n) {
    const int rc = pcre2_match_8(code_.get(), subject, n, start, PCRE2_NO_UTF_CHECK, st.data, st.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR8 msg[256];
      pcre2_get_error_message_8(rc, msg, sizeof msg);
      throw error(errc::errc_invalid_argument,
                  std::string("tokenizer: pre-tokenization regex failed on the input: ") +
                      reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer_8(st.data);
    const size_t b = ov[0], e = ov[1];
    if (b == e && have_last && last_end == e) {
      // onig's find_iter: no empty match right after the previous match.
      if (start >= n) break;
      start += utf8_seq_len(static_cast<unsigned char>(s[start]));
      continue;
    }
    out.push_back({b, e});
    have_last = true;
    last_end = e;
    start = e;
  }
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  static const regex word(std::string("[") + onig_word + "]");
  std::string s;
  utf8_put(s, c);
  std::vector<span> m;
  word.find_all(s, m);
  return !m.empty();
}

// ---------------------------------------------------------------- matcher

matcher matcher::literal(std::string s) {
  matcher m;
  m.lit_ = std::move(s);
  return m;
}

matcher matcher::pattern(const std::string& re) {
  matcher m;
  m.re_ = std::make_shared<const regex>(re);
  m.lit_ = re;
  return m;
}

matcher matcher::chars(bool (*pred)(char32_t)) {
  matcher m;
  m.pred_ = pred;
  return m;
}

void matcher::find_all(std::string_view s, std::vector<span>& out) const {
  if (re_) {
    re_->find_all(s, out);
  } else if (pred_) {
    for (size_t i = 0; i < s.size();) {
      const size_t b = i;
      const char32_t c = utf8_next(s, i);
      if (pred_(c)) out.push_back({b, i});
    }
  } else if (lit_.empty()) {
    // An empty pattern matches at every character boundary (onig semantics).
    for (size_t i = 0;; i += utf8_seq_len(static_cast<unsigned char>(s[i]))) {
      out.push_back({i, i});
      if (i >= s.size()) break;
    }
  } else {
    for (size_t pos = s.find(lit_); pos != std::string_view::npos; pos = s.find(lit_, pos + lit_.size())) {
      out.push_back({pos, pos + lit_.size()});
    }
  }
}

void split_ranges(std::string_view s, const matcher& m, split_behavior behavior, bool invert,
                  std::vector<span>& out) {
  struct part {
    span r;
    bool is_match;
  };
  std::vector<part> parts;
  if (s.empty()) {
    parts.push_back({{0, 0}, false});
  } else {
    std::vector<span> matches;
    m.find_all(s, matches);
    size_t prev = 0;
    for (const span& x : matches) {
      if (prev != x.begin) parts.push_back({{prev, x.begin}, false});
      parts.push_back({x, true});
      prev = x.end;
    }
    if (prev != s.size()) parts.push_back({{prev, s.size()}, false});
  }
  if (invert) {
    for (part& p : parts) p.is_match = !p.is_match;
  }
  const size_t first = out.size();
  bool previous = false;
  switch (behavior) {
    case split_behavior::split_isolated:
      for (const part& p : parts) out.push_back(p.r);
      break;
    case split_behavior::split_removed:
      for (const part& p : parts) {
        if (!p.is_match) out.push_back(p.r);
      }
      break;
    case split_behavior::split_contiguous:
      for (const part& p : parts) {
        if (p.is_match == previous && out.size() > first) {
          out.back().end = p.r.end;
        } else {
          out.push_back(p.r);
        }
        previous = p.is_match;
      }
      break;
    case split_behavior::split_merged_with_previous:
      for (const part& p : parts) {
        if (p.is_match && !previous && out.size() > first) {
          out.back().end = p.r.end;
        } else {
          out.push_back(p.r);
        }
        previous = p.is_match;
      }
      break;
    case split_behavior::split_merged_with_next:
      for (size_t i = parts.size(); i-- > 0;) {
        const part& p = parts[i];
        if (p.is_match && !previous && out.size() > first) {
          out.back().begin = p.r.begin;
        } else {
          out.push_back(p.r);
        }
        previous = p.is_match;
      }
      std::reverse(out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
      break;
  }
}

bool replace_all(std::string& s, const matcher& m, const std::string& content) {
  std::vector<span> matches;
  m.find_all(s, matches);
  if (matches.empty()) return false;
  const bool removed_start = content.empty() && matches.front().begin == 0 && matches.front().end > 0;
  std::string out;
  out.reserve(s.size());
  size_t prev = 0;
  for (const span& x : matches) {
    out.append(s, prev, x.begin - prev);
    out += content;
    prev = x.end;
  }
  out.append(s, prev, std::string::npos);
  s = std::move(out);
  return removed_start;
}

}  // namespace troupe::tokenizer_parts
