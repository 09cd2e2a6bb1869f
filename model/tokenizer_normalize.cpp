// Normalizers and pre-tokenizers: the text stages between the added-token split
// and the model. Each follows the HF `tokenizers` component of the same name on
// plain strings; HF's offset alignments are not kept, except for the one fact a
// later stage reads from them (whether a piece still starts the original text,
// for Metaspace's prepend_scheme "first"). Unicode normalization is utf8proc's.
#include <utf8proc.h>

#include <cstdlib>

#include "model/tokenizer_parts.hpp"

namespace troupe::tokenizer_parts {
namespace {

/// NFC/NFD/NFKC/NFKD through utf8proc, skipping text the form cannot change.
void unicode_normalize(std::string& s, normalizer_step::kind_t kind) {
  unsigned char top = 0;
  for (const char c : s) top = std::max(top, static_cast<unsigned char>(c));
  if (top < 0x80) return;                                         // ASCII is invariant under every form
  if (kind == normalizer_step::norm_nfc && top < 0xCC) return;         // all below U+0300: NFC already
  int options = UTF8PROC_STABLE;
  switch (kind) {
    case normalizer_step::norm_nfc: options |= UTF8PROC_COMPOSE; break;
    case normalizer_step::norm_nfd: options |= UTF8PROC_DECOMPOSE; break;
    case normalizer_step::norm_nfkc: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &out,
                                          static_cast<utf8proc_option_t>(options));
  if (n >= 0) s.assign(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
}

/// Rust's char::to_lowercase per character: the simple mapping plus the one
/// unconditional multi-character one (U+0130 -> "i\u0307").
void lowercase(std::string& s) {
  bool ascii = true;
  for (const char c : s) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii) {
    for (char& c : s) c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    return;
  }
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const char32_t c = utf8_next(s, i);
    if (c == 0x130) {
      out += "i\xCC\x87";
    } else {
      utf8_put(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
    }
  }
  s = std::move(out);
}

/// Start of the run of White_Space characters that ends `s`.
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t b = end - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t i = b;
    if (!is_white_space(utf8_next(s, i))) break;
    end = b;
  }
  return end;
}

/// End of the run of White_Space characters that starts `s`.
size_t leading_space_end(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!is_white_space(utf8_next(s, j))) break;
    i = j;
  }
  return i;
}

}  // namespace

void normalize(const std::vector<normalizer_step>& steps, std::string& s, bool& at_start) {
  for (const normalizer_step& st : steps) {
    if (s.empty()) return;  // HF: every normalizer leaves an empty string empty
    switch (st.kind) {
      case normalizer_step::norm_nfc:
      case normalizer_step::norm_nfd:
      case normalizer_step::norm_nfkc:
      case normalizer_step::norm_nfkd:
        unicode_normalize(s, st.kind);
        break;
      case normalizer_step::norm_lowercase:
        lowercase(s);
        break;
      case normalizer_step::norm_strip: {
        const size_t b = st.strip_left ? leading_space_end(s) : 0;
        const size_t e = st.strip_right ? std::max(b, trailing_space_start(s)) : s.size();
        if (b > 0) at_start = false;
        s = s.substr(b, e - b);
        break;
      }
      case normalizer_step::norm_prepend:
        s.insert(0, st.text);
        break;
      case normalizer_step::norm_replace:
        if (replace_all(s, *st.pattern, st.text)) at_start = false;
        break;
    }
  }
}

namespace {

/// Appends the non-empty ranges of `text` as pieces.
void push_ranges(const std::string& text, bool at_start, const std::vector<span>& ranges, std::vector<piece>& out) {
  for (const span& r : ranges) {
    if (r.end > r.begin) out.push_back({text.substr(r.begin, r.end - r.begin), at_start && r.begin == 0});
  }
}

void pretokenize_one(const pretokenizer_step& st, piece& p, std::vector<piece>& out, std::vector<span>& ranges) {
  ranges.clear();
  switch (st.kind) {
    case pretokenizer_step::pre_split:
      split_ranges(p.text, *st.pattern, st.behavior, st.invert, ranges);
      push_ranges(p.text, p.at_start, ranges, out);
      return;
    case pretokenizer_step::pre_digits: {
      static const matcher digit = matcher::chars(is_numeric);
      split_ranges(p.text, digit, st.individual_digits ? split_behavior::split_isolated : split_behavior::split_contiguous,
                   false, ranges);
      push_ranges(p.text, p.at_start, ranges, out);
      return;
    }
    case pretokenizer_step::pre_whitespace:
      split_ranges(p.text, *st.pattern, split_behavior::split_removed, true, ranges);
      push_ranges(p.text, p.at_start, ranges, out);
      return;
    case pretokenizer_step::pre_whitespace_split: {
      static const matcher space = matcher::chars(is_white_space);
      split_ranges(p.text, space, split_behavior::split_removed, false, ranges);
      push_ranges(p.text, p.at_start, ranges, out);
      return;
    }
    case pretokenizer_step::pre_byte_level: {
      if (st.add_prefix_space && p.text[0] != ' ') p.text.insert(0, 1, ' ');
      const size_t first = out.size();
      if (st.use_regex) {
        split_ranges(p.text, *st.pattern, split_behavior::split_isolated, false, ranges);
        push_ranges(p.text, p.at_start, ranges, out);
      } else {
        out.push_back(std::move(p));
      }
      if (st.map_bytes) {
        std::string mapped;
        for (size_t i = first; i < out.size(); ++i) {
          mapped.clear();
          byte_level_map(out[i].text, mapped);
          out[i].text.swap(mapped);
        }
      }
      return;
    }
    case pretokenizer_step::pre_metaspace: {
      std::string rep;
      utf8_put(rep, st.replacement);
      std::string text;
      text.reserve(p.text.size() + 8);
      for (const char c : p.text) {
        if (c == ' ') {
          text += rep;
        } else {
          text += c;
        }
      }
      const bool starts = text.compare(0, rep.size(), rep) == 0;
      if (!starts && (st.prepend == pretokenizer_step::prepend_always ||
                      (st.prepend == pretokenizer_step::prepend_first && p.at_start))) {
        text.insert(0, rep);
      }
      if (!st.split_pieces) {
        out.push_back({std::move(text), p.at_start});
        return;
      }
      split_ranges(text, *st.pattern, split_behavior::split_merged_with_next, false, ranges);
      push_ranges(text, p.at_start, ranges, out);
      return;
    }
  }
}

}  // namespace

void pretokenize(const std::vector<pretokenizer_step>& steps, std::vector<piece>& pieces) {
  std::vector<piece> next;
  std::vector<span> ranges;
  for (const pretokenizer_step& st : steps) {
    next.clear();
    next.reserve(pieces.size());
    for (piece& p : pieces) pretokenize_one(st, p, next, ranges);
    pieces.swap(next);
  }
}

}  // namespace troupe::tokenizer_parts
