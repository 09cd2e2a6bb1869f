// Builds OpenAI response bodies with nlohmann::ordered_json (field order as
// OpenAI sends it). See openai_response.hpp.
#include "actors/openai_response.hpp"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <random>

#include <nlohmann/json.hpp>

namespace troupe {

using ojson = nlohmann::ordered_json;

namespace {

/// The double whose shortest decimal form is the float's shortest form, so
/// that 0.1f prints "0.1"; non-finite logprobs become -9999.0 (vLLM's choice).
double tidy_logprob(float f) {
  if (!std::isfinite(f)) return -9999.0;
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf - 1, f);
  *r.ptr = '\0';
  return std::strtod(buf, nullptr);
}

ojson bytes_of(std::string_view s) {
  ojson a = ojson::array();
  for (unsigned char c : s) a.push_back(static_cast<int>(c));
  return a;
}

/// Characters (code points) of UTF-8 text, as Python's len() counts text_offset.
int64_t code_points(std::string_view s) {
  int64_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

ojson completion_logprobs(const openai_choice& c) {
  if (!c.has_logprobs) return nullptr;
  ojson tokens = ojson::array(), token_logprobs = ojson::array(), top = ojson::array(), offsets = ojson::array();
  int64_t offset = c.text_offset;
  for (const auto& t : c.logprobs) {
    tokens.push_back(t.token);
    token_logprobs.push_back(tidy_logprob(t.logprob));
    ojson alts = ojson::object();
    for (const auto& [text, lp] : t.top)
      if (!alts.contains(text)) alts[text] = tidy_logprob(lp);  // a dict: the best of equal texts wins
    top.push_back(std::move(alts));
    offsets.push_back(offset);
    offset += code_points(t.token);
  }
  ojson o;
  o["tokens"] = std::move(tokens);
  o["token_logprobs"] = std::move(token_logprobs);
  o["top_logprobs"] = std::move(top);
  o["text_offset"] = std::move(offsets);
  return o;
}

ojson chat_logprobs(const openai_choice& c) {
  if (!c.has_logprobs) return nullptr;
  ojson content = ojson::array();
  for (const auto& t : c.logprobs) {
    ojson e;
    e["token"] = t.token;
    e["logprob"] = tidy_logprob(t.logprob);
    e["bytes"] = bytes_of(t.token);
    ojson top = ojson::array();
    for (const auto& [text, lp] : t.top) {
      ojson a;
      a["token"] = text;
      a["logprob"] = tidy_logprob(lp);
      a["bytes"] = bytes_of(text);
      top.push_back(std::move(a));
    }
    e["top_logprobs"] = std::move(top);
    content.push_back(std::move(e));
  }
  ojson o;
  o["content"] = std::move(content);
  return o;
}

ojson finish_of(const openai_choice& c) {
  if (c.finish_reason.empty()) return nullptr;
  return c.finish_reason;
}

ojson usage_of(const openai_usage& u) {
  ojson o;
  o["prompt_tokens"] = u.prompt_tokens;
  o["completion_tokens"] = u.completion_tokens;
  o["total_tokens"] = u.prompt_tokens + u.completion_tokens;
  return o;
}

ojson header(std::string_view id, std::string_view object, int64_t created, std::string_view model) {
  ojson o;
  o["id"] = id;
  o["object"] = object;
  o["created"] = created;
  o["model"] = model;
  return o;
}

ojson completion_choices(const std::vector<openai_choice>& choices) {
  ojson a = ojson::array();
  for (const auto& c : choices) {
    ojson o;
    o["index"] = c.index;
    o["text"] = c.text;
    o["logprobs"] = completion_logprobs(c);
    o["finish_reason"] = finish_of(c);
    a.push_back(std::move(o));
  }
  return a;
}

/// Dumps with invalid UTF-8 replaced (a token text may end inside a character).
std::string dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

}  // namespace

const char* openai_error_type(int status) {
  if (status == 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

std::string openai_error_body(const openai_error& e) {
  ojson err;
  err["message"] = e.message;
  err["type"] = openai_error_type(e.status);
  err["param"] = e.param.empty() ? ojson(nullptr) : ojson(e.param);
  err["code"] = e.code.empty() ? ojson(nullptr) : ojson(e.code);
  ojson o;
  o["error"] = std::move(err);
  return dump(o);
}

std::string openai_error_body(int status, std::string_view message) {
  return openai_error_body(openai_error{status, std::string(message), {}, {}});
}

openai_error openai_error_model_not_found(std::string_view model) {
  return {404, "The model `" + std::string(model) + "` does not exist.", "model", "model_not_found"};
}

openai_error openai_error_invalid_api_key() {
  return {401, "Incorrect API key provided.", {}, "invalid_api_key"};
}

std::string openai_make_id(std::string_view prefix) {
  thread_local std::mt19937_64 rng{(static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()};
  static constexpr char hex[] = "0123456789abcdef";
  std::string id(prefix);
  for (int half = 0; half < 2; ++half) {
    uint64_t r = rng();
    for (int i = 0; i < 16; ++i, r >>= 4) id += hex[r & 15];
  }
  return id;
}

std::string openai_completion(std::string_view id, int64_t created, std::string_view model,
                              const std::vector<openai_choice>& choices, const openai_usage& usage) {
  ojson o = header(id, "text_completion", created, model);
  o["choices"] = completion_choices(choices);
  o["usage"] = usage_of(usage);
  return dump(o);
}

std::string openai_completion_chunk(std::string_view id, int64_t created, std::string_view model,
                                    const std::vector<openai_choice>& choices, bool usage_null) {
  ojson o = header(id, "text_completion", created, model);
  o["choices"] = completion_choices(choices);
  if (usage_null) o["usage"] = nullptr;
  return dump(o);
}

std::string openai_chat_completion(std::string_view id, int64_t created, std::string_view model,
                                   const std::vector<openai_choice>& choices, const openai_usage& usage) {
  ojson o = header(id, "chat.completion", created, model);
  ojson a = ojson::array();
  for (const auto& c : choices) {
    ojson ch;
    ch["index"] = c.index;
    ojson msg;
    msg["role"] = "assistant";
    msg["content"] = c.text;
    ch["message"] = std::move(msg);
    ch["logprobs"] = chat_logprobs(c);
    ch["finish_reason"] = finish_of(c);
    a.push_back(std::move(ch));
  }
  o["choices"] = std::move(a);
  o["usage"] = usage_of(usage);
  return dump(o);
}

std::string openai_chat_chunk(std::string_view id, int64_t created, std::string_view model,
                              const std::vector<openai_choice>& choices, openai_delta delta, bool usage_null) {
  ojson o = header(id, "chat.completion.chunk", created, model);
  ojson a = ojson::array();
  for (const auto& c : choices) {
    ojson ch;
    ch["index"] = c.index;
    ojson d = ojson::object();
    if (delta == openai_delta::delta_role) {
      d["role"] = "assistant";
      d["content"] = "";
    } else if (delta == openai_delta::delta_content) {
      d["content"] = c.text;
    }
    ch["delta"] = std::move(d);
    ch["logprobs"] = chat_logprobs(c);
    ch["finish_reason"] = finish_of(c);
    a.push_back(std::move(ch));
  }
  o["choices"] = std::move(a);
  if (usage_null) o["usage"] = nullptr;
  return dump(o);
}

std::string openai_usage_chunk(std::string_view object, std::string_view id, int64_t created,
                               std::string_view model, const openai_usage& usage) {
  ojson o = header(id, object, created, model);
  o["choices"] = ojson::array();
  o["usage"] = usage_of(usage);
  return dump(o);
}

std::string sse_event(std::string_view json) {
  std::string s;
  s.reserve(json.size() + 8);
  s += "data: ";
  s += json;
  s += "\n\n";
  return s;
}

std::string openai_models(const std::vector<openai_model_card>& models) {
  ojson data = ojson::array();
  for (const auto& m : models) {
    ojson c;
    c["id"] = m.id;
    c["object"] = "model";
    c["created"] = m.created;
    c["owned_by"] = "troupe";
    c["max_model_len"] = m.max_model_len;
    data.push_back(std::move(c));
  }
  ojson o;
  o["object"] = "list";
  o["data"] = std::move(data);
  return dump(o);
}

std::string openai_tokenize_response(const std::vector<int32_t>& tokens, int64_t max_model_len,
                                     const std::vector<std::string>& token_strs) {
  ojson o;
  o["count"] = tokens.size();
  o["max_model_len"] = max_model_len;
  o["tokens"] = tokens;
  o["token_strs"] = token_strs.empty() ? ojson(nullptr) : ojson(token_strs);
  return dump(o);
}

std::string openai_detokenize_response(std::string_view text) {
  ojson o;
  o["prompt"] = text;
  return dump(o);
}

}  // namespace troupe
