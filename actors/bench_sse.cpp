// SSE splitting and OpenAI chunk classification for the benchmark client.
#include "actors/bench_sse.hpp"

#include <nlohmann/json.hpp>

namespace troupe {

void sse_splitter::line_done(const on_event& f) {
  if (line_.empty()) {
    if (has_data_) f(data_);
    data_.clear();
    has_data_ = false;
    return;
  }
  if (line_.front() != ':') {
    const size_t colon = line_.find(':');
    const std::string_view field = std::string_view(line_).substr(0, colon);
    if (field == "data") {
      std::string_view value;
      if (colon != std::string::npos) {
        value = std::string_view(line_).substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      }
      if (has_data_) data_ += '\n';
      data_.append(value);
      has_data_ = true;
    }
  }
  line_.clear();
}

void sse_splitter::feed(std::string_view bytes, const on_event& f) {
  for (char c : bytes) {
    if (c == '\n' && last_cr_) {  // the LF of a CRLF already ended the line
      last_cr_ = false;
      continue;
    }
    last_cr_ = c == '\r';
    if (c == '\n' || c == '\r') line_done(f);
    else line_ += c;
  }
}

void sse_splitter::finish(const on_event& f) {
  if (!line_.empty()) line_done(f);
  line_done(f);
}

namespace {

bool non_empty_string(const nlohmann::json& obj, const char* key) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() && !it->get_ref<const std::string&>().empty();
}

bool has_key(const nlohmann::json& obj, const char* key) {
  auto it = obj.find(key);
  return it != obj.end() && !it->is_null();
}

}  // namespace

sse_chunk sse_classify(std::string_view data, api_kind api) {
  sse_chunk c;
  if (data == "[DONE]") {
    c.kind = sse_chunk::chunk_done;
    return c;
  }
  nlohmann::json j = nlohmann::json::parse(data.begin(), data.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    c.kind = sse_chunk::chunk_bad_json;
    c.error = "bad JSON in SSE event: " + std::string(data.substr(0, 80));
    return c;
  }
  if (auto e = j.find("error"); e != j.end() && !e->is_null()) {
    c.kind = sse_chunk::chunk_error;
    const nlohmann::json* msg = e->is_object() && e->contains("message") ? &(*e)["message"] : &*e;
    c.error = "error event: " + (msg->is_string() ? msg->get<std::string>() : msg->dump());
    return c;
  }
  if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
    if (auto p = u->find("prompt_tokens"); p != u->end() && p->is_number_integer()) c.prompt_tokens = p->get<int64_t>();
    if (auto t = u->find("completion_tokens"); t != u->end() && t->is_number_integer())
      c.completion_tokens = t->get<int64_t>();
  }
  auto ch = j.find("choices");
  if (ch == j.end() || !ch->is_array() || ch->empty() || !(*ch)[0].is_object()) return c;
  const nlohmann::json& choice = (*ch)[0];
  const bool finished = has_key(choice, "finish_reason");
  if (api == api_kind::api_completions) {
    auto t = choice.find("text");
    if (t == choice.end() || !t->is_string()) return c;
    if (!t->get_ref<const std::string&>().empty() || !finished) c.kind = sse_chunk::chunk_token;
    return c;
  }
  auto d = choice.find("delta");
  if (d == choice.end() || !d->is_object()) return c;
  if (non_empty_string(*d, "content") || non_empty_string(*d, "reasoning_content") ||
      non_empty_string(*d, "reasoning") || (has_key(*d, "tool_calls") && !(*d)["tool_calls"].empty())) {
    c.kind = sse_chunk::chunk_token;
  } else if (auto ct = d->find("content"); ct != d->end() && ct->is_string() && !finished && !has_key(*d, "role")) {
    c.kind = sse_chunk::chunk_token;
  }
  return c;
}

}  // namespace troupe
