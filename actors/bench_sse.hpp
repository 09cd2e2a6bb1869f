// Server-sent events as the benchmark client reads them: bytes of a response
// body split into events, and each event classified as an OpenAI streaming
// chunk. Separate from the socket code so the rules that decide TTFT and ITL
// (which chunk counts as a token) are tested on their own.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace troupe {

/// Which OpenAI API a request goes to; decides where a chunk's text lives.
enum class api_kind : uint8_t {
  api_completions,  ///< /v1/completions: choices[0].text
  api_chat,         ///< /v1/chat/completions: choices[0].delta.content
};

/// Splits a byte stream into SSE events (WHATWG rules: lines end in LF, CRLF or
/// CR; "data:" lines of one event are joined with LF; a blank line ends the
/// event; comments and other fields are ignored).
class sse_splitter {
 public:
  /// Called with the data of each complete event.
  using on_event = std::function<void(std::string_view data)>;

  /// Consumes `bytes`; calls `f` for every event they complete.
  void feed(std::string_view bytes, const on_event& f);
  /// End of stream: an event left without its blank line is still delivered.
  void finish(const on_event& f);

 private:
  void line_done(std::string_view line, const on_event& f);

  std::string line_;
  std::string data_;
  bool has_data_ = false;
  bool last_cr_ = false;
};

/// What one SSE event of an OpenAI stream means to the benchmark.
struct sse_chunk {
  /// The event's role.
  enum kind_t : uint8_t {
    chunk_token,     ///< carries generated output: counts for TTFT and ITL
    chunk_other,     ///< valid but no token (role header, usage)
    chunk_final,     ///< finish_reason with empty text: a bare terminator, or the last token with its text held back
    chunk_done,      ///< the "[DONE]" sentinel
    chunk_bad_json,  ///< not JSON (the request fails)
    chunk_error,     ///< an {"error": ...} object sent mid-stream (the request fails)
  };
  kind_t kind = chunk_other;    ///< the role
  std::string error;            ///< error text for chunk_bad_json and chunk_error
  int64_t prompt_tokens = -1;   ///< usage.prompt_tokens when the event has usage
  int64_t completion_tokens = -1;  ///< usage.completion_tokens when the event has usage
};

/// Classifies one event's data. A chunk counts as a token when its text
/// (completions) or delta content / reasoning content / tool calls (chat) is
/// non-empty, or when the text is empty but the chunk is neither a role header
/// nor a finish marker (a token whose text the server is holding back, e.g. an
/// incomplete UTF-8 sequence or a special token). An empty chunk with a
/// finish_reason is `chunk_final`: the reader decides at the end of the stream
/// (with the usage counts) whether it carried the last token.
sse_chunk sse_classify(std::string_view data, api_kind api);

}  // namespace troupe
