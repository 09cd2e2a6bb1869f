// Streaming detokenization for token-by-token generation. Unlike vLLM's
// re-decoding of a sliding window of ids (prefix_offset/read_offset), which can
// disagree with a full decode around U+FFFD or stripped spaces, this runs the
// tokenizer's decoder chain itself as a stream (tokenizer_parts::decode_stream):
// each push does work proportional to its token, text leaves as soon as no later
// token can change it, and the concatenation of every push() and flush() equals
// tokenizer::decode of all ids, byte for byte.
#pragma once

#include <cstdint>
#include <string>

#include "model/tokenizer.hpp"
#include "model/tokenizer_parts.hpp"

namespace troupe {

/// Turns a stream of generated ids into a stream of complete UTF-8 text.
class detokenizer {
 public:
  /// Decodes with `tok` (shared: the detokenizer keeps it alive).
  detokenizer(const tokenizer& tok, bool skip_special_tokens);
  /// Feeds one id and returns the text it completes: never a partial UTF-8
  /// character (a token ending mid-character is held back until the character
  /// completes). Throws troupe::error(errc_invalid_argument) for an unknown id.
  std::string push(int32_t id);
  /// Ends the sequence: returns what was held back (a dangling partial character
  /// becomes U+FFFD, as in decode) and makes the detokenizer ready for a new one.
  std::string flush();

 private:
  tokenizer tok_;
  tokenizer_parts::decode_stream stream_;
};

}  // namespace troupe
