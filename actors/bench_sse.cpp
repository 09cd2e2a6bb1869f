// SSE splitting and OpenAI chunk classification for the benchmark client.
#include "actors/bench_sse.hpp"

#include <nlohmann/json.hpp>

namespace troupe {

void sse_splitter::line_done(std::string_view line, const on_event& f) {
  if (line.empty()) {
    if (has_data_) f(data_);
    data_.clear();
    has_data_ = false;
    return;
  }
  if (line.front() == ':') return;  // comment
  const size_t colon = line.find(':');
  if (line.substr(0, colon) != "data") return;  // event:, id:, retry: mean nothing here
  std::string_view value;
  if (colon != std::string_view::npos) {
    value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (has_data_) data_ += '\n';
  data_.append(value);
  has_data_ = true;
}

void sse_splitter::feed(std::string_view bytes, const on_event& f) {
  size_t i = 0;
  if (last_cr_ && !bytes.empty() && bytes[0] == '\n') i = 1;  // the LF of a CRLF split across reads
  last_cr_ = false;
  while (i < bytes.size()) {
    const size_t e = bytes.find_first_of("\r\n", i);
    if (e == std::string_view::npos) {
      line_.append(bytes.substr(i));
      return;
    }
    if (line_.empty()) {
      line_done(bytes.substr(i, e - i), f);  // the whole line is in this read: no copy
    } else {
      line_.append(bytes.substr(i, e - i));
      line_done(line_, f);
      line_.clear();
    }
    i = e + 1;
    if (bytes[e] == '\r') {
      if (i == bytes.size()) last_cr_ = true;
      else if (bytes[i] == '\n') ++i;
    }
  }
}

void sse_splitter::finish(const on_event& f) {
  if (!line_.empty()) line_done(line_, f);
  line_.clear();
  line_done({}, f);
}

namespace {

// What the classifier needs from one chunk, gathered by a SAX pass (no DOM:
// this runs for every streamed token, and building the tree costs ~3x more).
// Paths are tracked with a stack of (object key | array index) frames.
class chunk_sax : public nlohmann::json_sax<nlohmann::json> {
 public:
  bool root_object = false, has_error = false, choice0 = false, text_string = false, text_nonempty = false;
  bool finished = false, delta = false, content_string = false, content_nonempty = false, role = false;
  bool tool_calls = false;
  std::string error_msg;
  int64_t prompt_tokens = -1, completion_tokens = -1;

  bool null() override { value(kind_null); return true; }
  bool boolean(bool) override { value(kind_other); return true; }
  bool number_integer(number_integer_t v) override { value(kind_other); integer(static_cast<int64_t>(v)); return true; }
  bool number_unsigned(number_unsigned_t v) override { value(kind_other); integer(static_cast<int64_t>(v)); return true; }
  bool number_float(number_float_t, const string_t&) override { value(kind_other); return true; }
  bool binary(binary_t&) override { value(kind_other); return true; }
  bool string(string_t& v) override {
    value(kind_other);
    const size_t d = st_.size();
    if (d == 1 && is(0, "error")) error_msg = v;
    else if (d == 2 && is(0, "error") && is(1, "message")) error_msg = v;
    else if (d == 3 && in_choice0() && is(2, "text")) text_string = true, text_nonempty = !v.empty();
    else if (d == 4 && in_choice0() && is(2, "delta") && (is(3, "content") || is(3, "reasoning_content") || is(3, "reasoning"))) {
      if (is(3, "content")) content_string = true;
      content_nonempty = content_nonempty || !v.empty();
    }
    return true;
  }
  bool start_object(std::size_t) override {
    if (st_.empty()) root_object = true;
    else value(kind_container);
    st_.push_back({false, -1, {}});
    return true;
  }
  bool key(string_t& k) override {
    st_.back().key = k;
    return true;
  }
  bool end_object() override {
    st_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    value(kind_container);
    st_.push_back({true, -1, {}});
    return true;
  }
  bool end_array() override {
    st_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  enum value_kind { kind_null, kind_container, kind_other };
  struct frame {
    bool array;
    int64_t index;
    std::string key;
  };

  bool is(size_t i, const char* k) const { return !st_[i].array && st_[i].key == k; }
  bool in_choice0() const { return is(0, "choices") && st_[1].array && st_[1].index == 0; }

  // A value starts at the current path (after advancing the index of an enclosing array).
  void value(value_kind kind) {
    if (st_.empty()) return;
    if (st_.back().array) ++st_.back().index;
    const size_t d = st_.size();
    if (d == 1 && is(0, "error") && kind != kind_null) has_error = true;
    else if (d == 2 && in_choice0() && kind == kind_container) choice0 = true;
    else if (d == 3 && in_choice0() && is(2, "finish_reason") && kind != kind_null) finished = true;
    else if (d == 3 && in_choice0() && is(2, "delta") && kind == kind_container) delta = true;
    else if (d == 4 && in_choice0() && is(2, "delta") && is(3, "role") && kind != kind_null) role = true;
    else if (d == 5 && in_choice0() && is(2, "delta") && is(3, "tool_calls") && st_[4].array) tool_calls = true;
  }
  void integer(int64_t v) {
    if (st_.size() == 2 && is(0, "usage")) {
      if (is(1, "prompt_tokens")) prompt_tokens = v;
      else if (is(1, "completion_tokens")) completion_tokens = v;
    }
  }

  std::vector<frame> st_;
};

}  // namespace

sse_chunk sse_classify(std::string_view data, api_kind api) {
  sse_chunk c;
  if (data == "[DONE]") {
    c.kind = sse_chunk::chunk_done;
    return c;
  }
  chunk_sax sax;
  if (!nlohmann::json::sax_parse(data.begin(), data.end(), &sax) || !sax.root_object) {
    c.kind = sse_chunk::chunk_bad_json;
    c.error = "bad JSON in SSE event: " + std::string(data.substr(0, 80));
    return c;
  }
  if (sax.has_error) {
    c.kind = sse_chunk::chunk_error;
    c.error = "error event: " + (sax.error_msg.empty() ? std::string("(no message)") : sax.error_msg);
    return c;
  }
  c.prompt_tokens = sax.prompt_tokens;
  c.completion_tokens = sax.completion_tokens;
  if (!sax.choice0) return c;
  if (api == api_kind::api_completions) {
    if (sax.text_string && (sax.text_nonempty || !sax.finished)) c.kind = sse_chunk::chunk_token;
    else if (sax.finished) c.kind = sse_chunk::chunk_final;
    return c;
  }
  if (sax.content_nonempty || sax.tool_calls || (sax.delta && sax.content_string && !sax.finished && !sax.role))
    c.kind = sse_chunk::chunk_token;
  else if (sax.finished && !sax.role) c.kind = sse_chunk::chunk_final;
  return c;
}

}  // namespace troupe
