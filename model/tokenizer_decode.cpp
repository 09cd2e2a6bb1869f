// Decoding as a stream. HF decodes a whole id list at once: each decoder maps
// the list of token strings to a new list (ByteLevel and Fuse join it into one
// string) and the result is concatenated. Every decoder troupe supports can run
// on that list one token at a time with a small, bounded state, so the chain is
// built as stages that pass tokens (before a joining decoder) or fragments of
// the one joined string (after it) to the next stage:
//   ByteLevel     maps each token to bytes, then an incremental from_utf8_lossy
//                 holds back at most one incomplete character;
//   ByteFallback  holds a run of <0xXX> tokens until it ends, because HF turns a
//                 run that is not valid UTF-8 into one U+FFFD per byte;
//   Replace       per token, or after a join holds back a possible partial match;
//   Strip         per token, or after a join strips the start once and holds back
//                 at most `stop` trailing characters;
//   Metaspace     knows the first token; Fuse joins.
// Decoders that cannot run this way (ByteLevel/ByteFallback after a join, a
// regex Replace after a join) are refused at load. tokenizer::decode is this
// stream run to its end, so a streamed decode equals the batch decode exactly.
#include "config/errors.hpp"
#include "model/tokenizer_parts.hpp"

namespace troupe::tokenizer_parts {
namespace {

constexpr std::string_view replacement_char = "\xEF\xBF\xBD";

/// Whether `token` is "<0xXX>"; HF parses XX with u8::from_str_radix(.., 16),
/// which also takes "+X".
bool byte_token(std::string_view token, unsigned char& byte) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return false;
  const auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  const int lo = hex(token[4]);
  if (lo < 0) return false;
  if (token[3] == '+') {
    byte = static_cast<unsigned char>(lo);
    return true;
  }
  const int hi = hex(token[3]);
  if (hi < 0) return false;
  byte = static_cast<unsigned char>(hi * 16 + lo);
  return true;
}

/// HF Strip on one token.
std::string strip_token(std::string_view token, char32_t content, size_t start, size_t stop) {
  std::vector<char32_t> chars;
  for (size_t i = 0; i < token.size();) chars.push_back(utf8_next(token, i));
  size_t start_cut = 0;
  for (size_t i = 0; i < chars.size() && i < start; ++i) {
    if (chars[i] != content) break;
    start_cut = i + 1;
  }
  size_t stop_cut = chars.size();
  for (size_t i = 0; i < std::min(stop, chars.size() - start_cut); ++i) {
    const size_t index = chars.size() - i - 1;
    if (chars[index] != content) break;
    stop_cut = index;
  }
  std::string out;
  for (size_t i = start_cut; i < stop_cut; ++i) utf8_put(out, chars[i]);
  return out;
}

}  // namespace

decode_stream::decode_stream(const tokenizer_impl& t, bool skip_special_tokens)
    : t_(&t), skip_(skip_special_tokens), stages_(t.decoders.size()) {}

void decode_stream::push(int32_t id, std::string& out) {
  if (id < 0 || static_cast<size_t>(id) >= t_->tokens.size() ||
      !(t_->flags[static_cast<size_t>(id)] & tokenizer_impl::flag_present)) {
    throw error(errc::errc_invalid_argument, t_->origin + ": token id " + std::to_string(id) +
                                                 " is not in the vocabulary (vocab_size " +
                                                 std::to_string(t_->tokens.size()) + ")");
  }
  if (skip_ && (t_->flags[static_cast<size_t>(id)] & tokenizer_impl::flag_special)) return;
  feed(0, t_->tokens[static_cast<size_t>(id)], out);
}

void decode_stream::finish(std::string& out) {
  end(0, out);
  for (stage& s : stages_) s = stage{};
  sink_count_ = 0;
}

void decode_stream::feed(size_t k, std::string_view piece, std::string& out) {
  const auto& decoders = t_->decoders;
  if (k == decoders.size()) {
    if (!t_->has_decoder && sink_count_++ > 0) out += ' ';  // no decoder: HF joins tokens with spaces
    out += piece;
    return;
  }
  const decoder_step& d = decoders[k];
  if (d.text_mode && piece.empty()) return;  // an empty fragment of the joined string changes nothing
  stage& st = stages_[k];
  switch (d.kind) {
    case decoder_step::dec_byte_level: {
      std::string bytes;
      bytes.reserve(piece.size());
      for (size_t i = 0; i < piece.size();) {
        const int b = byte_level_byte(utf8_next(piece, i));
        if (b < 0) {  // a character outside the byte alphabet: HF keeps the token's own bytes
          bytes.assign(piece);
          break;
        }
        bytes += static_cast<char>(b);
      }
      std::string text;
      st.lossy.feed(bytes, text);
      feed(k + 1, text, out);
      return;
    }
    case decoder_step::dec_metaspace: {
      const bool first = d.text_mode || st.count == 0;
      ++st.count;
      std::string text;
      text.reserve(piece.size());
      for (size_t i = 0; i < piece.size();) {
        const size_t b = i;
        const char32_t c = utf8_next(piece, i);
        if (c != d.replacement) {
          text.append(piece, b, i - b);
        } else if (!first || d.prepend_never) {
          text += ' ';
        }
      }
      feed(k + 1, text, out);
      return;
    }
    case decoder_step::dec_replace: {
      if (!d.text_mode) {
        std::string text(piece);
        if (!text.empty()) replace_all(text, *d.pattern, d.content);
        feed(k + 1, text, out);
        return;
      }
      // One joined string: replace what can no longer grow into a match, hold back
      // the earliest suffix that is a proper prefix of the pattern.
      st.held.append(piece);
      const std::string& lit = d.pattern->literal_text();
      std::string text;
      size_t prev = 0;
      for (size_t pos = st.held.find(lit); pos != std::string::npos; pos = st.held.find(lit, pos + lit.size())) {
        text.append(st.held, prev, pos - prev);
        text += d.content;
        prev = pos + lit.size();
      }
      size_t hold = st.held.size();
      for (size_t p = prev; p < st.held.size(); ++p) {
        const size_t n = st.held.size() - p;
        if (n < lit.size() && lit.compare(0, n, st.held, p, n) == 0) {
          hold = p;
          break;
        }
      }
      text.append(st.held, prev, hold - prev);
      st.held.erase(0, hold);
      feed(k + 1, text, out);
      return;
    }
    case decoder_step::dec_byte_fallback: {
      unsigned char b = 0;
      if (byte_token(piece, b)) {
        st.bytes += static_cast<char>(b);
        return;
      }
      flush_bytes(k, out);
      feed(k + 1, piece, out);
      return;
    }
    case decoder_step::dec_fuse:
      feed(k + 1, piece, out);
      return;
    case decoder_step::dec_strip: {
      if (!d.text_mode) {
        feed(k + 1, strip_token(piece, d.strip_content, d.strip_start, d.strip_stop), out);
        return;
      }
      std::string content;
      utf8_put(content, d.strip_content);
      std::string text;
      for (size_t i = 0; i < piece.size();) {
        const size_t b = i;
        const char32_t c = utf8_next(piece, i);
        if (!st.lead_done) {
          if (st.lead_stripped < d.strip_start && c == d.strip_content) {
            ++st.lead_stripped;
            continue;
          }
          st.lead_done = true;
        }
        if (d.strip_stop == 0) {
          text.append(piece, b, i - b);
        } else if (c == d.strip_content) {
          st.held += content;
          if (st.held.size() / content.size() > d.strip_stop) {
            text += content;
            st.held.erase(0, content.size());
          }
        } else {
          text += st.held;
          st.held.clear();
          text.append(piece, b, i - b);
        }
      }
      feed(k + 1, text, out);
      return;
    }
  }
}

void decode_stream::flush_bytes(size_t k, std::string& out) {
  stage& st = stages_[k];
  if (st.bytes.empty()) return;
  const std::string bytes = std::move(st.bytes);
  st.bytes.clear();
  if (utf8_valid(bytes)) {
    feed(k + 1, bytes, out);
  } else {
    for (size_t i = 0; i < bytes.size(); ++i) feed(k + 1, replacement_char, out);
  }
}

void decode_stream::end(size_t k, std::string& out) {
  const auto& decoders = t_->decoders;
  if (k == decoders.size()) return;
  const decoder_step& d = decoders[k];
  stage& st = stages_[k];
  switch (d.kind) {
    case decoder_step::dec_byte_level: {
      std::string text;
      st.lossy.finish(text);
      feed(k + 1, text, out);
      break;
    }
    case decoder_step::dec_byte_fallback:
      flush_bytes(k, out);
      break;
    case decoder_step::dec_replace:
      if (d.text_mode) {
        const std::string held = std::move(st.held);
        st.held.clear();
        feed(k + 1, held, out);
      }
      break;
    case decoder_step::dec_strip:
      st.held.clear();  // trailing content characters: stripped
      break;
    default:
      break;
  }
  end(k + 1, out);
}

}  // namespace troupe::tokenizer_parts
