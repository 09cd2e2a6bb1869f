// Jinja tokenizer (see jinja_lexer.hpp). The structure mirrors jinja2's
// lexer: a root state that finds the next `{{`, `{%`, `{#` or `{% raw %}` and
// applies the whitespace rules to the text before it, then tag states that
// read tokens until the closing delimiter, which is only recognised while no
// bracket is open (so `{{ {'a': {}}}}` works). Positions are byte offsets
// until the end, where they become line and column.
#include "model/jinja_lexer.hpp"

#include <algorithm>
#include <cstdlib>

#include "model/jinja_pystr.hpp"

namespace troupe::jinja {
namespace {

class lexer {
 public:
  explicit lexer(std::string_view source) {
    // Newlines become "\n" and one trailing newline goes (keep_trailing_newline=False).
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  std::vector<token> run() {
    bool line_starting = true;
    size_t pos = 0;
    while (pos < src_.size()) {
      const size_t at = find_tag(pos);
      if (at == std::string::npos) {
        emit_data(src_.substr(pos), pos);
        break;
      }
      const char type = src_[at + 1];
      size_t raw_end = 0;
      const bool raw = type == '%' && match_raw_begin(at, raw_end);
      const size_t sign_at = at + 2;
      const char sign = sign_at < src_.size() && (src_[sign_at] == '-' || src_[sign_at] == '+') ? src_[sign_at] : 0;
      emit_data(strip_before(src_.substr(pos, at - pos), sign, type != '{', line_starting), pos);
      if (raw) {
        line_starting = src_[raw_end - 1] == '\n';
        pos = lex_raw(raw_end, line_starting);
        continue;
      }
      pos = sign_at + (sign ? 1 : 0);
      if (type == '#') {
        pos = lex_comment(pos, at, line_starting);
      } else {
        push(type == '{' ? token_kind::variable_begin : token_kind::block_begin, "", at);
        pos = lex_tag(pos, type == '%', line_starting);
      }
    }
    push(token_kind::eof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<token> tokens_;
  std::vector<char> brackets_;

  [[noreturn]] void error(const std::string& message, size_t offset) const { throw syntax_error(message, where(offset)); }

  source_pos where(size_t offset) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset) - 1;
    const size_t start = *it;
    return {static_cast<int>(it - line_starts_.begin()) + 1,
            static_cast<int>(py::length(std::string_view(src_).substr(start, offset - start))) + 1};
  }

  token& push(token_kind kind, std::string text, size_t offset) {
    tokens_.push_back(token{kind, std::move(text), 0, 0.0, where(offset)});
    return tokens_.back();
  }

  void emit_data(std::string text, size_t offset) {
    if (!text.empty()) push(token_kind::data, std::move(text), offset);
  }

  bool starts(size_t pos, std::string_view s) const { return src_.compare(pos, s.size(), s) == 0; }

  /// The code point at `pos` and its byte length.
  char32_t code_point(size_t pos, size_t& n) const { return py::decode_at(src_, pos, n); }

  size_t skip_space(size_t pos) const {
    size_t n = 0;
    while (pos < src_.size() && py::is_space(code_point(pos, n))) pos += n;
    return pos;
  }

  size_t find_tag(size_t pos) const {
    for (size_t at = src_.find('{', pos); at != std::string::npos; at = src_.find('{', at + 1)) {
      if (at + 1 < src_.size() && (src_[at + 1] == '{' || src_[at + 1] == '%' || src_[at + 1] == '#')) return at;
    }
    return std::string::npos;
  }

  /// `{%[-+]?\s*raw\s*(-%}\s*|%})` at `at`; `end` receives where it stops.
  bool match_raw_begin(size_t at, size_t& end) const {
    size_t p = at + 2;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
    p = skip_space(p);
    if (!starts(p, "raw")) return false;
    p = skip_space(p + 3);
    if (starts(p, "-%}")) {
      end = skip_space(p + 3);
      return true;
    }
    if (starts(p, "%}")) {
      end = p + 2;
      return true;
    }
    return false;
  }

  /// Whitespace control of the text before a tag: `-` strips all trailing
  /// whitespace; otherwise lstrip_blocks drops the indentation of a block or
  /// comment tag that stands first on its line.
  std::string strip_before(std::string text, char sign, bool lstrip, bool line_starting) const {
    if (sign == '-') return py::strip(text, nullptr, false, true);
    if (sign == '+' || !lstrip) return text;
    const size_t nl = text.rfind('\n');
    const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
    if (l_pos == 0 && !line_starting) return text;
    if (l_pos == text.size()) return text;
    for (char32_t c : py::decode(std::string_view(text).substr(l_pos))) {
      if (!py::is_space(c)) return text;
    }
    return text.substr(0, l_pos);
  }

  /// After the closing delimiter of a block or comment: `-` eats all whitespace,
  /// `+` nothing, plain eats one newline (trim_blocks). Sets line_starting.
  size_t after_close(size_t pos, char sign, bool trim, bool& line_starting) const {
    size_t end = pos;
    if (sign == '-') end = skip_space(pos);
    else if (sign == 0 && trim && end < src_.size() && src_[end] == '\n') ++end;
    line_starting = end > 0 && src_[end - 1] == '\n' && end > pos;
    return end;
  }

  size_t lex_comment(size_t pos, size_t begin, bool& line_starting) {
    for (size_t at = src_.find("#}", pos); at != std::string::npos; at = src_.find("#}", at + 1)) {
      const char sign = at > pos && (src_[at - 1] == '-' || src_[at - 1] == '+') ? src_[at - 1] : 0;
      return after_close(at + 2, sign, true, line_starting);
    }
    error("Missing end of comment tag", begin);
  }

  size_t lex_raw(size_t pos, bool& line_starting) {
    for (size_t at = src_.find("{%", pos); at != std::string::npos; at = src_.find("{%", at + 1)) {
      size_t p = at + 2;
      const char open_sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (open_sign) ++p;
      p = skip_space(p);
      if (!starts(p, "endraw")) continue;
      p = skip_space(p + 6);
      char close_sign = 0;
      if (starts(p, "+%}") || starts(p, "-%}")) close_sign = src_[p++];
      if (!starts(p, "%}")) continue;
      emit_data(strip_before(src_.substr(pos, at - pos), open_sign, true, line_starting), pos);
      return after_close(p + 2, close_sign, true, line_starting);
    }
    error("Missing end of raw directive", pos);
  }

  /// The closing delimiter at `pos`, if any: its length and sign.
  bool match_close(size_t pos, bool block, size_t& len, char& sign) const {
    const char* close = block ? "%}" : "}}";
    sign = 0;
    if (starts(pos, "-") && starts(pos + 1, close)) sign = '-';
    else if (block && starts(pos, "+") && starts(pos + 1, close)) sign = '+';
    else if (!starts(pos, close)) return false;
    len = sign ? 3 : 2;
    return true;
  }

  size_t lex_tag(size_t pos, bool block, bool& line_starting) {
    brackets_.clear();
    while (pos < src_.size()) {
      size_t len = 0;
      char sign = 0;
      if (brackets_.empty() && match_close(pos, block, len, sign)) {
        push(block ? token_kind::block_end : token_kind::variable_end, "", pos);
        return after_close(pos + len, sign, block, line_starting);
      }
      size_t n = 0;
      const char32_t c = code_point(pos, n);
      if (py::is_space(c)) {
        pos += n;
      } else if (size_t end = lex_number(pos); end != pos) {
        pos = end;
      } else if (c == '_' || py::is_alpha(c) || (c >= 0x80 && py::is_word(c))) {
        size_t end2 = pos;
        while (end2 < src_.size() && py::is_word(code_point(end2, n))) end2 += n;
        push(token_kind::name, src_.substr(pos, end2 - pos), pos);
        pos = end2;
      } else if (c == '\'' || c == '"') {
        pos = lex_string(pos);
      } else {
        pos = lex_operator(pos);
      }
    }
    return pos;  // the parser reports the missing end of the tag
  }

  size_t digits(size_t pos, bool (*ok)(char)) const {
    // (_?D)+ after a first digit: digits with single underscores between them.
    size_t p = pos;
    if (p >= src_.size() || !ok(src_[p])) return pos;
    ++p;
    while (p < src_.size()) {
      if (ok(src_[p])) ++p;
      else if (src_[p] == '_' && p + 1 < src_.size() && ok(src_[p + 1])) p += 2;
      else break;
    }
    return p;
  }

  size_t lex_number(size_t pos) {
    auto dec = [](char ch) { return ch >= '0' && ch <= '9'; };
    if (!dec(src_[pos])) return pos;
    auto clean = [&](size_t b, size_t e) {
      std::string s = src_.substr(b, e - b);
      s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
      return s;
    };
    // Float: digits, then a fraction and/or an exponent (not right after a '.').
    const size_t int_end = digits(pos, dec);
    size_t p = int_end;
    bool is_float = false;
    if (p + 1 < src_.size() && src_[p] == '.' && dec(src_[p + 1])) {
      p = digits(p + 1, dec);
      is_float = true;
    }
    if (p < src_.size() && (src_[p] == 'e' || src_[p] == 'E')) {
      size_t q = p + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (const size_t e = digits(q, dec); e != q) {
        p = e;
        is_float = true;
      }
    }
    if (is_float && !(pos > 0 && src_[pos - 1] == '.')) {
      push(token_kind::floating, src_.substr(pos, p - pos), pos).float_value = std::strtod(clean(pos, p).c_str(), nullptr);
      return p;
    }
    // Integer: 0b / 0o / 0x prefixes, a decimal without leading zeros, or zeros.
    const char x = pos + 1 < src_.size() ? static_cast<char>(src_[pos + 1] | 0x20) : 0;
    int base = 10;
    size_t end = pos;
    if (src_[pos] == '0' && (x == 'b' || x == 'o' || x == 'x')) {
      base = x == 'b' ? 2 : x == 'o' ? 8 : 16;
      bool (*ok)(char) = base == 2    ? [](char ch) { return ch == '0' || ch == '1'; }
                         : base == 8  ? [](char ch) { return ch >= '0' && ch <= '7'; }
                                      : [](char ch) { return std::isxdigit(static_cast<unsigned char>(ch)) != 0; };
      size_t q = pos + 2;
      if (q < src_.size() && src_[q] == '_') ++q;
      end = digits(q, ok);
      if (end == q) end = pos;
    }
    if (end == pos) {
      base = 10;
      end = src_[pos] == '0' ? digits(pos, [](char ch) { return ch == '0'; }) : int_end;
    }
    const std::string text = clean(base == 10 ? pos : pos + 2, end);
    errno = 0;
    const long long v = std::strtoll(text.c_str(), nullptr, base);
    if (errno == ERANGE) error("integer literal out of the 64-bit range", pos);
    push(token_kind::integer, src_.substr(pos, end - pos), pos).int_value = v;
    return end;
  }

  size_t lex_string(size_t pos) {
    const char quote = src_[pos];
    std::string out;
    size_t p = pos + 1;
    for (; p < src_.size() && src_[p] != quote; ++p) {
      if (src_[p] != '\\') {
        out += src_[p];
        continue;
      }
      if (++p >= src_.size()) break;
      const char e = src_[p];
      auto hex = [&](int n) {
        if (p + n >= src_.size()) error("truncated \\x/\\u escape in string literal", p);
        char32_t v = 0;
        for (int i = 1; i <= n; ++i) {
          const char h = src_[p + i];
          if (!std::isxdigit(static_cast<unsigned char>(h))) error("truncated \\x/\\u escape in string literal", p);
          v = v * 16 + static_cast<char32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        p += n;
        return v;
      };
      switch (e) {
        case '\n': break;
        case '\\': case '\'': case '"': out += e; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': py::append_utf8(out, hex(2)); break;
        case 'u': py::append_utf8(out, hex(4)); break;
        case 'U': {
          const char32_t v = hex(8);
          if (v > 0x10ffff) error("illegal Unicode character in string literal", p);
          py::append_utf8(out, v);
          break;
        }
        case 'N': error("\\N{...} escapes are not supported", p);
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = static_cast<char32_t>(e - '0');
            for (int i = 0; i < 2 && p + 1 < src_.size() && src_[p + 1] >= '0' && src_[p + 1] <= '7'; ++i) {
              v = v * 8 + static_cast<char32_t>(src_[++p] - '0');
            }
            py::append_utf8(out, v);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    if (p >= src_.size()) error(std::string("unexpected char '") + quote + "'", pos);
    push(token_kind::string, std::move(out), pos);
    return p + 1;
  }

  size_t lex_operator(size_t pos) {
    static const char* const ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]",
                                      "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};
    for (const char* op : ops) {
      const std::string_view o(op);
      if (!starts(pos, o)) continue;
      if (o == "(" || o == "[" || o == "{") {
        brackets_.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
      } else if (o == ")" || o == "]" || o == "}") {
        if (brackets_.empty()) error("unexpected '" + std::string(o) + "'", pos);
        if (brackets_.back() != o[0]) {
          error("unexpected '" + std::string(o) + "', expected '" + std::string(1, brackets_.back()) + "'", pos);
        }
        brackets_.pop_back();
      }
      push(token_kind::op, std::string(o), pos);
      return pos + o.size();
    }
    size_t n = 0;
    code_point(pos, n);
    error("unexpected char '" + src_.substr(pos, n) + "' at " + std::to_string(py::length(std::string_view(src_).substr(0, pos))), pos);
  }
};

}  // namespace

std::vector<token> tokenize(std::string_view source) { return lexer(source).run(); }

}  // namespace troupe::jinja
