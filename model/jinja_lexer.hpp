// Tokenizer of Jinja templates, configured as transformers configures Jinja for
// chat templates (trim_blocks, lstrip_blocks, default delimiters, no line
// statements, keep_trailing_newline off). Whitespace control decides the bytes
// a chat template emits, so this follows jinja2's lexer rule by rule rather than
// its documentation: `-` strips all whitespace on its side, lstrip_blocks
// removes the indentation before a block or comment tag (not before `{{`),
// trim_blocks removes one newline after a block or comment tag (not after
// `}}` and not after `{% raw %}`), `+` disables both.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/jinja_value.hpp"

namespace troupe::jinja {

/// What a token is.
enum class token_kind : uint8_t {
  data,            ///< template text (raw blocks included)
  variable_begin,  ///< {{
  variable_end,    ///< }}
  block_begin,     ///< {%
  block_end,       ///< %}
  name,            ///< identifier or keyword
  string,          ///< string literal; `text` holds the unescaped value
  integer,
  floating,
  op,              ///< operator or punctuation; `text` holds it ("//", "(", "|")
  eof,
};

/// One token and where it starts.
struct token {
  token_kind kind = token_kind::eof;
  std::string text;          ///< data, name, operator, unescaped string, or a number's spelling
  int64_t int_value = 0;     ///< integer tokens
  double float_value = 0.0;  ///< floating tokens
  source_pos pos;
};

/// Splits `source` into tokens, ending with one eof token. Throws syntax_error
/// for an unterminated comment or raw block, an unknown character inside a tag,
/// unbalanced brackets and malformed string escapes.
std::vector<token> tokenize(std::string_view source);

}  // namespace troupe::jinja
