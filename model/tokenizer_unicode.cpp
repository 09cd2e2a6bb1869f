// Text primitives of the tokenizer: UTF-8, the lossy decoding Rust's
// String::from_utf8_lossy does (HF decodes bytes with it, so troupe must put
// U+FFFD exactly where it does), Unicode character classes through utf8proc, and
// GPT-2's byte-level alphabet.
#include <utf8proc.h>

#include "model/tokenizer_parts.hpp"

namespace troupe::tokenizer_parts {

// ---------------------------------------------------------------- UTF-8

char32_t utf8_next(std::string_view s, size_t& i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) {
    ++i;
    return c;
  }
  if (c < 0xE0) {
    const char32_t r = (char32_t(c & 0x1F) << 6) | (b(i + 1) & 0x3F);
    i += 2;
    return r;
  }
  if (c < 0xF0) {
    const char32_t r = (char32_t(c & 0x0F) << 12) | (char32_t(b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
    i += 3;
    return r;
  }
  const char32_t r = (char32_t(c & 0x07) << 18) | (char32_t(b(i + 1) & 0x3F) << 12) |
                     (char32_t(b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
  i += 4;
  return r;
}

void utf8_put(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

namespace {

constexpr std::string_view replacement_char = "\xEF\xBF\xBD";

/// The continuation bytes a lead byte needs and the range its first one must be
/// in (Unicode's well-formed UTF-8 table); false for a byte that cannot lead.
bool lead_info(unsigned char c, size_t& need, unsigned char& lo, unsigned char& hi) {
  lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c == 0xE0) {
    need = 2, lo = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    need = 2;
  } else if (c == 0xED) {
    need = 2, hi = 0x9F;
  } else if (c == 0xF0) {
    need = 3, lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    need = 3;
  } else if (c == 0xF4) {
    need = 3, hi = 0x8F;
  } else {
    return false;
  }
  return true;
}

/// Scans b[0, n) as from_utf8_lossy does, appending valid text and one U+FFFD
/// per maximal invalid subpart. Returns where a trailing incomplete (but so far
/// valid) sequence starts, or n.
size_t lossy_scan(const unsigned char* b, size_t n, std::string& out) {
  size_t i = 0;
  while (i < n) {
    const unsigned char c = b[i];
    if (c < 0x80) {
      size_t j = i + 1;
      while (j < n && b[j] < 0x80) ++j;
      out.append(reinterpret_cast<const char*>(b + i), j - i);
      i = j;
      continue;
    }
    size_t need = 0;
    unsigned char lo = 0, hi = 0;
    if (!lead_info(c, need, lo, hi)) {
      out += replacement_char;
      ++i;
      continue;
    }
    size_t j = i + 1, k = 0;
    while (k < need) {
      if (j >= n) return i;
      const unsigned char l = k == 0 ? lo : 0x80, h = k == 0 ? hi : 0xBF;
      if (b[j] < l || b[j] > h) break;
      ++j, ++k;
    }
    if (k == need) {
      out.append(reinterpret_cast<const char*>(b + i), j - i);
    } else {
      out += replacement_char;
    }
    i = j;
  }
  return n;
}

}  // namespace

bool utf8_valid(std::string_view s) {
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    if (b[i] < 0x80) {
      ++i;
      continue;
    }
    size_t need = 0;
    unsigned char lo = 0, hi = 0;
    if (!lead_info(b[i], need, lo, hi) || i + need >= n) return false;
    for (size_t k = 0; k < need; ++k) {
      const unsigned char l = k == 0 ? lo : 0x80, h = k == 0 ? hi : 0xBF;
      if (b[i + 1 + k] < l || b[i + 1 + k] > h) return false;
    }
    i += need + 1;
  }
  return true;
}

void utf8_lossy::feed(std::string_view bytes, std::string& out) {
  if (n_pending_ == 0) {
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
    const size_t stop = lossy_scan(b, bytes.size(), out);
    n_pending_ = bytes.size() - stop;
    std::copy(b + stop, b + bytes.size(), pending_.begin());
    return;
  }
  std::string buf(reinterpret_cast<const char*>(pending_.data()), n_pending_);
  buf.append(bytes);
  const auto* b = reinterpret_cast<const unsigned char*>(buf.data());
  const size_t stop = lossy_scan(b, buf.size(), out);
  n_pending_ = buf.size() - stop;
  std::copy(b + stop, b + buf.size(), pending_.begin());
}

void utf8_lossy::finish(std::string& out) {
  if (n_pending_ > 0) out += replacement_char;
  n_pending_ = 0;
}

// ---------------------------------------------------------------- classes

bool is_white_space(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

// ---------------------------------------------------------------- byte level

namespace {

struct byte_level_tables {
  std::array<char32_t, 256> to_char{};
  std::array<int16_t, 324> to_byte{};
  std::array<std::string, 256> utf8;
  byte_level_tables() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = printable ? char32_t(b) : next++;
      to_byte[to_char[b]] = static_cast<int16_t>(b);
      utf8_put(utf8[b], to_char[b]);
    }
  }
};

const byte_level_tables& tables() {
  static const byte_level_tables t;
  return t;
}

}  // namespace

const std::array<char32_t, 256>& byte_level_chars() { return tables().to_char; }

int byte_level_byte(char32_t c) { return c < 324 ? tables().to_byte[c] : -1; }

void byte_level_map(std::string_view raw, std::string& out) {
  const auto& t = tables();
  for (const char ch : raw) out += t.utf8[static_cast<unsigned char>(ch)];
}

}  // namespace troupe::tokenizer_parts
