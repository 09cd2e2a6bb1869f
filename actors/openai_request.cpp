// OpenAI request parsing: one typed accessor per field kind, each naming its
// field in the error. A local exception carries the first problem up to the
// public functions, which turn it into an openai_error (this file is an
// edge: nothing throws out of it). See openai_request.hpp for the rules.
#include "actors/openai_request.hpp"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

namespace troupe {

using ojson = nlohmann::ordered_json;

namespace {

constexpr int max_json_depth = 64;

/// The first problem found, with the field it concerns ("" = the body itself).
struct bad_request {
  std::string param;
  std::string message;
};

[[noreturn]] void fail(std::string param, std::string message) {
  throw bad_request{std::move(param), std::move(message)};
}

const char* kind_of(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null: return "null";
    case ojson::value_t::boolean: return "a boolean";
    case ojson::value_t::string: return "a string";
    case ojson::value_t::array: return "an array";
    case ojson::value_t::object: return "an object";
    case ojson::value_t::number_float: return "a non-integer number";
    default: return "a number";
  }
}

[[noreturn]] void fail_type(const std::string& param, const char* expected, const ojson& v) {
  fail(param, param + " must be " + expected + ", got " + kind_of(v));
}

/// Refuses nesting deeper than max_json_depth (a scan that skips strings).
void check_depth(std::string_view body) {
  int depth = 0;
  bool in_string = false, escape = false;
  for (char c : body) {
    if (in_string) {
      if (escape) escape = false;
      else if (c == '\\') escape = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_json_depth)
        fail("", "Invalid JSON body: nesting deeper than " + std::to_string(max_json_depth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

ojson parse_object(std::string_view body) {
  check_depth(body);
  ojson j;
  try {
    j = ojson::parse(body.begin(), body.end());
  } catch (const ojson::exception& e) {
    std::string detail = e.what();  // "[json.exception.parse_error.101] parse error at line 1, column 9: ..."
    if (auto p = detail.find("] "); p != std::string::npos && detail.front() == '[') detail.erase(0, p + 2);
    fail("", "Invalid JSON body: " + detail);
  }
  if (!j.is_object()) fail("", std::string("The request body must be a JSON object, got ") + kind_of(j));
  return j;
}

/// The field, or nullptr when absent or null (null means "not set", as OpenAI's clients send it).
const ojson* field(const ojson& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return nullptr;
  return &*it;
}

/// An integer (integral floats such as 10.0 are accepted, as pydantic does).
std::optional<int64_t> get_int(const ojson& o, const char* key, int64_t lo, int64_t hi) {
  const ojson* v = field(o, key);
  if (!v) return std::nullopt;
  int64_t x = 0;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    x = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                                        : static_cast<int64_t>(u);
  } else if (v->is_number_integer()) {
    x = v->get<int64_t>();
  } else if (v->is_number_float()) {
    double d = v->get<double>();
    if (!(std::isfinite(d) && d == std::floor(d))) fail_type(key, "an integer", *v);
    x = d >= 9.2e18 ? std::numeric_limits<int64_t>::max() : d <= -9.2e18 ? std::numeric_limits<int64_t>::min()
                                                                           : static_cast<int64_t>(d);
  } else {
    fail_type(key, "an integer", *v);
  }
  if (x < lo) fail(key, std::string(key) + " must be at least " + std::to_string(lo) + ", got " + v->dump());
  if (x > hi) fail(key, std::string(key) + " must be at most " + std::to_string(hi) + ", got " + v->dump());
  return x;
}

std::optional<float> get_float(const ojson& o, const char* key) {
  const ojson* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) fail_type(key, "a number", *v);
  double d = v->get<double>();
  if (d > std::numeric_limits<float>::max()) return std::numeric_limits<float>::infinity();
  if (d < -std::numeric_limits<float>::max()) return -std::numeric_limits<float>::infinity();
  return static_cast<float>(d);
}

std::optional<bool> get_bool(const ojson& o, const char* key, const std::string& param = {}) {
  const ojson* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) fail_type(param.empty() ? key : param, "a boolean", *v);
  return v->get<bool>();
}

std::optional<std::string> get_string(const ojson& o, const char* key, const std::string& param = {}) {
  const ojson* v = field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) fail_type(param.empty() ? key : param, "a string", *v);
  return v->get<std::string>();
}

/// Token ids in [0, vocab_size) (or [0, INT32_MAX] when the vocabulary is unknown).
std::vector<int32_t> token_ids(const ojson& a, const std::string& param, int64_t vocab_size) {
  std::vector<int32_t> ids;
  ids.reserve(a.size());
  const int64_t hi = vocab_size > 0 ? vocab_size - 1 : std::numeric_limits<int32_t>::max();
  for (std::size_t i = 0; i < a.size(); ++i) {
    const ojson& t = a[i];
    if (!t.is_number_integer()) fail_type(param, "an array of token ids (integers)", t);
    if (t.is_number_unsigned() ? t.get<uint64_t>() > static_cast<uint64_t>(hi)
                               : (t.get<int64_t>() < 0 || t.get<int64_t>() > hi))
      fail(param, param + "[" + std::to_string(i) + "] = " + t.dump() + " is not a token id (0.." +
                      std::to_string(hi) + ")");
    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  return ids;
}

std::vector<openai_prompt> parse_prompt(const ojson& o, const openai_parse_options& opts) {
  const ojson* p = field(o, "prompt");
  if (!p) fail("prompt", "prompt is required");
  std::vector<openai_prompt> out;
  if (p->is_string()) {
    out.push_back({false, p->get<std::string>(), {}});
    return out;
  }
  if (!p->is_array()) fail_type("prompt", "a string, an array of strings or an array of token ids", *p);
  if (p->empty()) fail("prompt", "prompt must not be empty");
  const ojson& first = p->front();
  if (first.is_number()) {
    out.push_back({true, {}, token_ids(*p, "prompt", opts.vocab_size)});
    return out;
  }
  if (static_cast<int64_t>(p->size()) > opts.max_prompts)
    fail("prompt", "prompt may hold at most " + std::to_string(opts.max_prompts) + " prompts, got " +
                       std::to_string(p->size()));
  for (std::size_t i = 0; i < p->size(); ++i) {
    const ojson& e = (*p)[i];
    const std::string param = "prompt";
    if (first.is_string()) {
      if (!e.is_string()) fail_type(param, "an array of strings", e);
      out.push_back({false, e.get<std::string>(), {}});
    } else if (first.is_array()) {
      if (!e.is_array()) fail_type(param, "an array of token id arrays", e);
      if (e.empty()) fail(param, "prompt[" + std::to_string(i) + "] must not be empty");
      out.push_back({true, {}, token_ids(e, param, opts.vocab_size)});
    } else {
      fail_type(param, "a string, an array of strings or an array of token ids", first);
    }
  }
  return out;
}

bool role_known(std::string_view r) {
  return r == "system" || r == "developer" || r == "user" || r == "assistant" || r == "tool";
}

/// Flattens a message's content: a string, or [{"type":"text","text":...}] parts joined with "\n".
std::optional<std::string> content_text(const ojson& m, const std::string& at) {
  const ojson* c = field(m, "content");
  if (!c) return std::nullopt;
  if (c->is_string()) return c->get<std::string>();
  const std::string param = at + ".content";
  if (!c->is_array()) fail_type(param, "a string or an array of content parts", *c);
  std::string text;
  for (std::size_t j = 0; j < c->size(); ++j) {
    const ojson& part = (*c)[j];
    const std::string pp = param + "[" + std::to_string(j) + "]";
    if (!part.is_object()) fail_type(pp, "an object", part);
    auto type = get_string(part, "type", pp + ".type");
    if (!type) fail(pp + ".type", pp + ".type is required");
    if (*type != "text") fail(pp + ".type", "content part type '" + *type + "' is not supported (only 'text')");
    auto t = get_string(part, "text", pp + ".text");
    if (!t) fail(pp + ".text", pp + ".text is required");
    if (j > 0) text += '\n';
    text += *t;
  }
  return text;
}

openai_chat_input parse_chat_input(const ojson& o) {
  const ojson* ms = field(o, "messages");
  if (!ms) fail("messages", "messages is required");
  if (!ms->is_array()) fail_type("messages", "an array", *ms);
  if (ms->empty()) fail("messages", "messages must not be empty");
  openai_chat_input in;
  ojson out = ojson::array();
  for (std::size_t i = 0; i < ms->size(); ++i) {
    const ojson& m = (*ms)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) fail_type(at, "an object", m);
    auto role = get_string(m, "role", at + ".role");
    if (!role) fail(at + ".role", at + ".role is required");
    if (!role_known(*role))
      fail(at + ".role", at + ".role must be one of system, developer, user, assistant, tool; got '" + *role + "'");
    const ojson* tool_calls = field(m, "tool_calls");
    if (tool_calls && !tool_calls->is_array()) fail_type(at + ".tool_calls", "an array", *tool_calls);
    const bool has_calls = tool_calls && !tool_calls->empty() && *role == "assistant";
    auto text = content_text(m, at);
    if (!text && !has_calls) fail(at + ".content", at + ".content is required");
    ojson msg;
    msg["role"] = *role;
    msg["content"] = text ? ojson(*text) : ojson(nullptr);
    if (auto name = get_string(m, "name", at + ".name")) msg["name"] = *name;
    if (has_calls) msg["tool_calls"] = *tool_calls;
    if (auto id = get_string(m, "tool_call_id", at + ".tool_call_id")) msg["tool_call_id"] = *id;
    out.push_back(std::move(msg));
    in.messages.push_back({*role, text.value_or("")});
  }
  in.messages_json = out.dump();

  ojson extra = ojson::object();
  if (const ojson* kw = field(o, "chat_template_kwargs")) {
    if (!kw->is_object()) fail_type("chat_template_kwargs", "an object", *kw);
    for (auto it = kw->begin(); it != kw->end(); ++it) extra[it.key()] = it.value();
  }
  if (const ojson* tools = field(o, "tools")) {
    if (!tools->is_array()) fail_type("tools", "an array", *tools);
    if (!tools->empty()) extra["tools"] = *tools;
  }
  if (!extra.empty()) in.extra_json = extra.dump();
  in.add_generation_prompt = get_bool(o, "add_generation_prompt").value_or(true);
  in.continue_final_message = get_bool(o, "continue_final_message").value_or(false);
  if (in.add_generation_prompt && in.continue_final_message && field(o, "add_generation_prompt"))
    fail("continue_final_message", "Cannot set both continue_final_message and add_generation_prompt to true");
  if (in.continue_final_message) in.add_generation_prompt = false;
  if (in.continue_final_message && in.messages.back().role != "assistant")
    fail("continue_final_message", "continue_final_message needs an assistant message last");
  return in;
}

void parse_sampling(const ojson& o, const openai_parse_options& opts, openai_request& r) {
  sampling_params& s = r.sampling;
  s = opts.defaults;
  if (auto v = get_float(o, "temperature")) s.temperature = *v;
  if (auto v = get_float(o, "top_p")) s.top_p = *v;
  if (auto v = get_int(o, "top_k", -1, std::numeric_limits<int32_t>::max())) s.top_k = static_cast<int32_t>(*v);
  if (auto v = get_float(o, "min_p")) s.min_p = *v;
  if (auto v = get_float(o, "repetition_penalty")) s.repetition_penalty = *v;
  if (auto v = get_float(o, "frequency_penalty")) s.frequency_penalty = *v;
  if (auto v = get_float(o, "presence_penalty")) s.presence_penalty = *v;
  if (const ojson* seed = field(o, "seed")) {
    if (seed->is_number_unsigned()) s.seed = seed->get<uint64_t>();
    else s.seed = static_cast<uint64_t>(*get_int(o, "seed", std::numeric_limits<int64_t>::min(),
                                                  std::numeric_limits<int64_t>::max()));
  }
  std::string problem = sampling_params_validate(s);
  if (!problem.empty()) fail(problem.substr(0, problem.find(' ')), problem);
}

/// Fields common to completions and chat.
void parse_common(const ojson& o, const openai_parse_options& opts, openai_request& r) {
  r.model = get_string(o, "model").value_or("");
  parse_sampling(o, opts, r);
  r.n = static_cast<int32_t>(get_int(o, "n", 1, opts.max_n).value_or(1));
  if (auto best_of = get_int(o, "best_of", 1, std::numeric_limits<int32_t>::max()); best_of && *best_of > r.n)
    fail("best_of", "best_of > n is not supported");
  if (const ojson* stop = field(o, "stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (static_cast<int64_t>(stop->size()) > opts.max_stop)
        fail("stop", "stop may hold at most " + std::to_string(opts.max_stop) + " strings, got " +
                         std::to_string(stop->size()));
      for (const ojson& s : *stop) {
        if (!s.is_string()) fail_type("stop", "a string or an array of strings", s);
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      fail_type("stop", "a string or an array of strings", *stop);
    }
    for (const auto& s : r.stop)
      if (s.empty()) fail("stop", "stop strings must not be empty");
  }
  if (const ojson* ids = field(o, "stop_token_ids")) {
    if (!ids->is_array()) fail_type("stop_token_ids", "an array of token ids", *ids);
    r.stop_token_ids = token_ids(*ids, "stop_token_ids", opts.vocab_size);
  }
  r.ignore_eos = get_bool(o, "ignore_eos").value_or(false);
  r.stream = get_bool(o, "stream").value_or(false);
  if (const ojson* so = field(o, "stream_options")) {
    if (!so->is_object()) fail_type("stream_options", "an object", *so);
    if (!r.stream) fail("stream_options", "stream_options can only be set when stream is true");
    auto usage = get_bool(*so, "include_usage", "stream_options.include_usage");
    r.include_usage = usage.value_or(false);
  }
  r.skip_special_tokens = get_bool(o, "skip_special_tokens").value_or(true);
  r.include_stop_str_in_output = get_bool(o, "include_stop_str_in_output").value_or(false);
  if (const ojson* bias = field(o, "logit_bias")) {
    if (!bias->is_object()) fail_type("logit_bias", "an object", *bias);
    if (!bias->empty()) fail("logit_bias", "logit_bias is not supported");
  }
  if (const ojson* rf = field(o, "response_format")) {
    if (!rf->is_object()) fail_type("response_format", "an object", *rf);
    auto type = get_string(*rf, "type", "response_format.type");
    if (type && *type != "text") fail("response_format", "response_format type '" + *type + "' is not supported");
  }
}

int32_t parse_max_tokens(const ojson& o, const char* key, const openai_parse_options& opts) {
  auto v = get_int(o, key, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
  if (!v) return -1;
  if (*v < 1) fail(key, std::string(key) + " must be at least 1, got " + std::to_string(*v));
  if (*v > opts.max_model_len)
    fail(key, std::string(key) + " must be at most " + std::to_string(opts.max_model_len) +
                  " (the model's context length), got " + std::to_string(*v));
  return static_cast<int32_t>(*v);
}

template <class T, class F>
openai_result<T> guarded(std::string_view body, F&& parse) {
  openai_result<T> res;
  try {
    const ojson o = parse_object(body);
    res.value = parse(o);
  } catch (const bad_request& b) {
    res.error = openai_error{400, b.message, b.param, {}};
  } catch (const std::exception& e) {  // a JSON accessor we did not guard, or allocation failure
    res.error = openai_error{400, std::string("Invalid request: ") + e.what(), {}, {}};
  }
  return res;
}

}  // namespace

openai_result<openai_request> openai_parse_completion(std::string_view body, const openai_parse_options& opts) {
  return guarded<openai_request>(body, [&](const ojson& o) {
    openai_request r;
    r.endpoint = openai_endpoint::endpoint_completions;
    parse_common(o, opts, r);
    r.prompts = parse_prompt(o, opts);
    int32_t mt = parse_max_tokens(o, "max_tokens", opts);
    r.max_tokens = mt < 0 ? static_cast<int32_t>(std::min<int64_t>(16, opts.max_model_len)) : mt;
    if (auto lp = get_int(o, "logprobs", 0, opts.max_logprobs)) r.logprobs = static_cast<int32_t>(*lp);
    r.echo = get_bool(o, "echo").value_or(false);
    if (r.echo && !opts.echo_supported) fail("echo", "echo is not supported");
    if (r.echo && r.logprobs >= 0) fail("echo", "echo together with logprobs is not supported");
    r.add_special_tokens = get_bool(o, "add_special_tokens").value_or(true);
    return r;
  });
}

openai_result<openai_request> openai_parse_chat(std::string_view body, const openai_parse_options& opts) {
  return guarded<openai_request>(body, [&](const ojson& o) {
    openai_request r;
    r.endpoint = openai_endpoint::endpoint_chat;
    parse_common(o, opts, r);
    r.chat = parse_chat_input(o);
    const int32_t legacy = parse_max_tokens(o, "max_tokens", opts);
    const int32_t mct = parse_max_tokens(o, "max_completion_tokens", opts);
    r.max_tokens = mct >= 0 ? mct : legacy;
    const bool logprobs = get_bool(o, "logprobs").value_or(false);
    auto top = get_int(o, "top_logprobs", 0, opts.max_logprobs);
    if (top && *top > 0 && !logprobs) fail("top_logprobs", "top_logprobs needs logprobs set to true");
    if (logprobs) r.logprobs = static_cast<int32_t>(top.value_or(0));
    if (const ojson* tc = field(o, "tool_choice")) {
      const bool ok = tc->is_string() && (tc->get<std::string>() == "none" || tc->get<std::string>() == "auto");
      if (!ok) fail("tool_choice", "tool_choice other than 'none' or 'auto' is not supported");
    }
    r.add_special_tokens = get_bool(o, "add_special_tokens").value_or(false);
    return r;
  });
}

openai_result<openai_tokenize_request> openai_parse_tokenize(std::string_view body,
                                                             const openai_parse_options& opts) {
  return guarded<openai_tokenize_request>(body, [&](const ojson& o) {
    openai_tokenize_request r;
    r.model = get_string(o, "model").value_or("");
    r.is_chat = field(o, "messages") != nullptr;
    if (r.is_chat) {
      r.chat = parse_chat_input(o);
    } else {
      auto p = get_string(o, "prompt");
      if (!p) fail("prompt", "prompt (a string) or messages is required");
      r.prompt = *p;
    }
    r.add_special_tokens = get_bool(o, "add_special_tokens").value_or(!r.is_chat);
    r.return_token_strs = get_bool(o, "return_token_strs").value_or(false);
    return r;
  });
}

openai_result<openai_detokenize_request> openai_parse_detokenize(std::string_view body,
                                                                 const openai_parse_options& opts) {
  return guarded<openai_detokenize_request>(body, [&](const ojson& o) {
    openai_detokenize_request r;
    r.model = get_string(o, "model").value_or("");
    const ojson* t = field(o, "tokens");
    if (!t) fail("tokens", "tokens is required");
    if (!t->is_array()) fail_type("tokens", "an array of token ids", *t);
    r.tokens = token_ids(*t, "tokens", opts.vocab_size);
    return r;
  });
}

std::optional<openai_error> openai_resolve_max_tokens(int32_t& max_tokens, int64_t prompt_tokens,
                                                      int64_t max_model_len, bool chat) {
  const std::string ctx = std::to_string(max_model_len);
  if (prompt_tokens >= max_model_len)
    return openai_error{400,
                        "This model's maximum context length is " + ctx + " tokens. However, your request has " +
                            std::to_string(prompt_tokens) + " input tokens. Please reduce the length of the input " +
                            (chat ? "messages." : "prompt."),
                        chat ? "messages" : "prompt",
                        {}};
  if (max_tokens < 0) {
    max_tokens = static_cast<int32_t>(max_model_len - prompt_tokens);
    return std::nullopt;
  }
  if (prompt_tokens + max_tokens > max_model_len) {
    const char* key = chat ? "max_completion_tokens" : "max_tokens";
    return openai_error{400,
                        std::string("'") + key + "' is too large: " + std::to_string(max_tokens) +
                            ". This model's maximum context length is " + ctx + " tokens and your request has " +
                            std::to_string(prompt_tokens) + " input tokens (" + std::to_string(max_tokens) + " > " +
                            ctx + " - " + std::to_string(prompt_tokens) + ").",
                        key,
                        {}};
  }
  return std::nullopt;
}

}  // namespace troupe
