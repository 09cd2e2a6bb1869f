// Request parsing: every bad input of issue 4 §4 gives a 400 naming the
// offending field (param) or none for a body that is not JSON; valid bodies
// give exactly the values sent, defaults otherwise.
#include "actors/openai_request.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

using troupe::openai_error;
using troupe::openai_parse_chat;
using troupe::openai_parse_completion;
using troupe::openai_parse_options;

namespace {

openai_parse_options test_options() {
  openai_parse_options o;
  o.max_model_len = 2048;
  o.vocab_size = 1000;
  o.max_n = 16;
  return o;
}

/// The error of a completions body that must be refused (status 400).
openai_error completion_error(const std::string& body, const openai_parse_options& o = test_options()) {
  auto r = openai_parse_completion(body, o);
  REQUIRE_MESSAGE(!r.ok(), body);
  CHECK(r.error.status == 400);
  CHECK(!r.error.message.empty());
  return r.error;
}

openai_error chat_error(const std::string& body, const openai_parse_options& o = test_options()) {
  auto r = openai_parse_chat(body, o);
  REQUIRE_MESSAGE(!r.ok(), body);
  CHECK(r.error.status == 400);
  return r.error;
}

troupe::openai_request completion_ok(const std::string& body, const openai_parse_options& o = test_options()) {
  auto r = openai_parse_completion(body, o);
  REQUIRE_MESSAGE(r.ok(), (body + " -> " + r.error.message));
  return *r.value;
}

troupe::openai_request chat_ok(const std::string& body, const openai_parse_options& o = test_options()) {
  auto r = openai_parse_chat(body, o);
  REQUIRE_MESSAGE(r.ok(), (body + " -> " + r.error.message));
  return *r.value;
}

const std::string user_hi = R"("messages":[{"role":"user","content":"hi"}])";

}  // namespace

TEST_CASE("openai request: a full completions body parses into exactly the values sent") {
  auto r = completion_ok(R"({"model":"demo","prompt":"Once upon","max_tokens":32,"temperature":0.5,"top_p":0.9,
    "top_k":40,"min_p":0.05,"n":3,"stop":["\n","END"],"stop_token_ids":[2,7],"seed":42,"presence_penalty":0.5,
    "frequency_penalty":-0.5,"repetition_penalty":1.1,"ignore_eos":true,"logprobs":5,"stream":true,
    "stream_options":{"include_usage":true},"user":"bob","skip_special_tokens":false})");
  CHECK(r.endpoint == troupe::openai_endpoint::endpoint_completions);
  CHECK(r.model == "demo");
  REQUIRE(r.prompts.size() == 1);
  CHECK(!r.prompts[0].is_tokens);
  CHECK(r.prompts[0].text == "Once upon");
  CHECK(r.max_tokens == 32);
  CHECK(r.sampling.temperature == doctest::Approx(0.5));
  CHECK(r.sampling.top_p == doctest::Approx(0.9));
  CHECK(r.sampling.top_k == 40);
  CHECK(r.sampling.min_p == doctest::Approx(0.05));
  CHECK(r.sampling.presence_penalty == doctest::Approx(0.5));
  CHECK(r.sampling.frequency_penalty == doctest::Approx(-0.5));
  CHECK(r.sampling.repetition_penalty == doctest::Approx(1.1));
  REQUIRE(r.sampling.seed.has_value());
  CHECK(*r.sampling.seed == 42);
  CHECK(r.n == 3);
  CHECK(r.stop == std::vector<std::string>{"\n", "END"});
  CHECK(r.stop_token_ids == std::vector<int32_t>{2, 7});
  CHECK(r.ignore_eos);
  CHECK(r.logprobs == 5);
  CHECK(r.stream);
  CHECK(r.include_usage);
  CHECK(!r.skip_special_tokens);
  CHECK(r.add_special_tokens);
}

TEST_CASE("openai request: defaults, generation_config defaults and unknown fields") {
  auto o = test_options();
  o.defaults.temperature = 0.6f;
  o.defaults.top_k = 20;
  auto r = completion_ok(R"({"prompt":"x","top_p":0.8,"frobnicate":{"a":[1,{"b":null}]},"suffix":null,
                             "user":"u","metadata":{"k":"v"}})", o);
  CHECK(r.model.empty());
  CHECK(r.max_tokens == 16);  // OpenAI's and vLLM's completions default
  CHECK(r.n == 1);
  CHECK(r.sampling.temperature == doctest::Approx(0.6));
  CHECK(r.sampling.top_k == 20);
  CHECK(r.sampling.top_p == doctest::Approx(0.8));
  CHECK(!r.sampling.seed.has_value());
  CHECK(r.logprobs == -1);
  CHECK(!r.stream);
  CHECK(r.stop.empty());
  // null means "not set"
  auto n = completion_ok(R"({"prompt":"x","max_tokens":null,"temperature":null,"stop":null,"n":null})");
  CHECK(n.max_tokens == 16);
  CHECK(n.sampling.temperature == doctest::Approx(1.0));
  // an unknown model is reported, not judged: the gateway answers 404
  CHECK(completion_ok(R"({"model":"no-such-model","prompt":"x"})").model == "no-such-model");
  CHECK(completion_ok(R"({"prompt":"x","max_tokens":10.0})").max_tokens == 10);
  CHECK(completion_ok(R"({"prompt":"x","temperature":5})").sampling.temperature == doctest::Approx(5.0));
  CHECK(*completion_ok(R"({"prompt":"x","seed":-1})").sampling.seed == UINT64_MAX);
  CHECK(*completion_ok(R"({"prompt":"x","seed":18446744073709551615})").sampling.seed == UINT64_MAX);
  CHECK(completion_ok(R"({"prompt":"x","stop":"END"})").stop == std::vector<std::string>{"END"});
}

TEST_CASE("openai request: the four prompt forms, and bad prompts") {
  auto a = completion_ok(R"({"prompt":["one","two"]})");
  REQUIRE(a.prompts.size() == 2);
  CHECK(a.prompts[1].text == "two");
  auto b = completion_ok(R"({"prompt":[1,2,999]})");
  REQUIRE(b.prompts.size() == 1);
  CHECK(b.prompts[0].is_tokens);
  CHECK(b.prompts[0].tokens == std::vector<int32_t>{1, 2, 999});
  auto c = completion_ok(R"({"prompt":[[1,2],[3]]})");
  REQUIRE(c.prompts.size() == 2);
  CHECK(c.prompts[1].tokens == std::vector<int32_t>{3});
  CHECK(completion_ok(R"({"prompt":""})").prompts.at(0).text.empty());  // the gateway judges the token count

  CHECK(completion_error(R"({})").param == "prompt");
  CHECK(completion_error(R"({"prompt":null})").param == "prompt");
  CHECK(completion_error(R"({"prompt":[]})").param == "prompt");
  CHECK(completion_error(R"({"prompt":42})").param == "prompt");
  CHECK(completion_error(R"({"prompt":{"text":"x"}})").param == "prompt");
  CHECK(completion_error(R"({"prompt":["a",1]})").param == "prompt");
  CHECK(completion_error(R"({"prompt":[1,"a"]})").param == "prompt");
  CHECK(completion_error(R"({"prompt":[1,1000]})").param == "prompt");  // outside the vocabulary
  CHECK(completion_error(R"({"prompt":[-1]})").param == "prompt");
  CHECK(completion_error(R"({"prompt":[1.5]})").param == "prompt");
  CHECK(completion_error(R"({"prompt":[[1],[]]})").param == "prompt");
  auto o = test_options();
  o.max_prompts = 2;
  CHECK(completion_error(R"({"prompt":["a","b","c"]})", o).param == "prompt");
}

TEST_CASE("openai request: malformed, truncated and non-object JSON is a 400 with param null") {
  for (const std::string& body : std::vector<std::string>{"", "{", R"({"prompt": "x")", R"({"prompt": "x",})", "not json", R"({"prompt": "x"} trailing)", "[1,2]",
        "null", "\"prompt\"", "42", R"({"prompt": "unterminated)", R"({'prompt': 'x'})",
        std::string("{\"prompt\":\"\xff\xfe\"}"), R"({"prompt":"\ud800"})", R"({"prompt":"x","max_tokens":1e400})"}) {
    CAPTURE(body);
    auto e = completion_error(body);
    CHECK(e.param.empty());
  }
  // Nesting deep enough to exhaust a recursive walk is refused up front.
  std::string deep = R"({"prompt":"x","extra":)" + std::string(200000, '[') + std::string(200000, ']') + "}";
  auto e = completion_error(deep);
  CHECK(e.param.empty());
  CHECK(e.message.find("nesting") != std::string::npos);
  // Brackets inside strings do not count.
  CHECK(completion_ok(R"({"prompt":")" + std::string(1000, '[') + R"("})").prompts.at(0).text.size() == 1000);
}

TEST_CASE("openai request: wrong types name the field") {
  struct bad {
    const char* fields;
    const char* param;
  };
  for (const bad& b : {bad{R"("max_tokens":"ten")", "max_tokens"}, bad{R"("max_tokens":true)", "max_tokens"},
                       bad{R"("max_tokens":[10])", "max_tokens"}, bad{R"("temperature":"hot")", "temperature"},
                       bad{R"("temperature":false)", "temperature"}, bad{R"("top_p":"1")", "top_p"},
                       bad{R"("top_k":1.5)", "top_k"}, bad{R"("min_p":{})", "min_p"}, bad{R"("n":true)", "n"},
                       bad{R"("n":"2")", "n"}, bad{R"("stream":"yes")", "stream"}, bad{R"("stream":1)", "stream"},
                       bad{R"("stop":5)", "stop"}, bad{R"("stop":["a",5])", "stop"},
                       bad{R"("stop_token_ids":"2")", "stop_token_ids"},
                       bad{R"("stop_token_ids":[2,"3"])", "stop_token_ids"},
                       bad{R"("stop_token_ids":[5000])", "stop_token_ids"}, bad{R"("seed":"1")", "seed"},
                       bad{R"("seed":1.5)", "seed"}, bad{R"("model":5)", "model"},
                       bad{R"("logprobs":true)", "logprobs"}, bad{R"("ignore_eos":"true")", "ignore_eos"},
                       bad{R"("presence_penalty":"0")", "presence_penalty"},
                       bad{R"("stream":true,"stream_options":[])", "stream_options"},
                       bad{R"("stream":true,"stream_options":{"include_usage":"yes"})", "stream_options.include_usage"},
                       bad{R"("echo":"no")", "echo"}, bad{R"("logit_bias":[1])", "logit_bias"}}) {
    CAPTURE(b.fields);
    CHECK(completion_error(std::string(R"({"prompt":"x",)") + b.fields + "}").param == b.param);
  }
  auto e = completion_error(R"({"prompt":"x","max_tokens":"ten"})");
  CHECK(e.message == "max_tokens must be an integer, got a string");
}

TEST_CASE("openai request: values out of range name the field") {
  struct bad {
    const char* fields;
    const char* param;
  };
  for (const bad& b : {bad{R"("max_tokens":-5)", "max_tokens"}, bad{R"("max_tokens":0)", "max_tokens"},
                       bad{R"("max_tokens":2049)", "max_tokens"},  // more than the context
                       bad{R"("max_tokens":1e30)", "max_tokens"},
                       bad{R"("max_tokens":99999999999999999999)", "max_tokens"},
                       bad{R"("temperature":-0.1)", "temperature"}, bad{R"("temperature":1e39)", "temperature"},
                       bad{R"("top_p":1.5)", "top_p"}, bad{R"("top_p":0)", "top_p"}, bad{R"("top_p":-1)", "top_p"},
                       bad{R"("top_k":-2)", "top_k"}, bad{R"("top_k":4294967296)", "top_k"},
                       bad{R"("min_p":1.5)", "min_p"}, bad{R"("presence_penalty":2.5)", "presence_penalty"},
                       bad{R"("frequency_penalty":-3)", "frequency_penalty"},
                       bad{R"("repetition_penalty":0)", "repetition_penalty"}, bad{R"("n":0)", "n"},
                       bad{R"("n":17)", "n"}, bad{R"("n":1000000)", "n"}, bad{R"("logprobs":21)", "logprobs"},
                       bad{R"("logprobs":-1)", "logprobs"}, bad{R"("stop":["a","b","c","d","e"])", "stop"},
                       bad{R"("stop":"")", "stop"}, bad{R"("stream_options":{"include_usage":true})", "stream_options"},
                       bad{R"("echo":true)", "echo"}, bad{R"("logit_bias":{"5":10})", "logit_bias"},
                       bad{R"("response_format":{"type":"json_object"})", "response_format"},
                       bad{R"("best_of":3)", "best_of"}}) {
    CAPTURE(b.fields);
    CHECK(completion_error(std::string(R"({"prompt":"x",)") + b.fields + "}").param == b.param);
  }
  CHECK(completion_error(R"({"prompt":"x","max_tokens":-5})").message == "max_tokens must be at least 1, got -5");
  CHECK(completion_error(R"({"prompt":"x","max_tokens":5000})").message ==
        "max_tokens must be at most 2048 (the model's context length), got 5000");
  CHECK(completion_error(R"({"prompt":"x","top_p":1.5})").message.find("top_p must be in (0, 1]") == 0);
  // Edges that are allowed.
  CHECK(completion_ok(R"({"prompt":"x","max_tokens":2048,"top_p":1,"temperature":0,"n":16,"logprobs":20,
                          "stop":["a","b","c","d"],"top_k":-1,"best_of":16,"logit_bias":{},
                          "response_format":{"type":"text"}})").n == 16);
  auto o = test_options();
  o.echo_supported = true;
  CHECK(completion_ok(R"({"prompt":"x","echo":true})", o).echo);
  CHECK(completion_error(R"({"prompt":"x","echo":true,"logprobs":1})", o).param == "echo");
}

TEST_CASE("openai request: chat messages, content parts, roles and chat-only fields") {
  auto r = chat_ok(R"({"model":"demo","messages":[
      {"role":"system","content":"Be brief."},
      {"role":"user","content":[{"type":"text","text":"Hello"},{"type":"text","text":"there"}],"name":"ann"},
      {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
      {"role":"tool","content":"42","tool_call_id":"c1"}],
    "max_tokens":100,"max_completion_tokens":50,"logprobs":true,"top_logprobs":3,"stream":true,
    "chat_template_kwargs":{"enable_thinking":false}})");
  CHECK(r.endpoint == troupe::openai_endpoint::endpoint_chat);
  REQUIRE(r.chat.messages.size() == 4);
  CHECK(r.chat.messages[1].content == "Hello\nthere");
  CHECK(r.chat.messages[2].content.empty());
  CHECK(r.chat.messages_json ==
        R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hello\nthere","name":"ann"},)"
        R"({"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},)"
        R"({"role":"tool","content":"42","tool_call_id":"c1"}])");
  CHECK(r.chat.extra_json == R"({"enable_thinking":false})");
  CHECK(r.chat.add_generation_prompt);
  CHECK(r.max_tokens == 50);  // max_completion_tokens wins
  CHECK(r.logprobs == 3);
  CHECK(!r.add_special_tokens);

  auto d = chat_ok("{" + user_hi + "}");
  CHECK(d.max_tokens == -1);  // the rest of the context, once the prompt is known
  CHECK(d.logprobs == -1);
  CHECK(d.chat.extra_json.empty());
  CHECK(chat_ok("{" + user_hi + R"(,"logprobs":true})").logprobs == 0);
  CHECK(chat_ok("{" + user_hi + R"(,"max_tokens":7})").max_tokens == 7);
  auto cont = chat_ok(R"({"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}],
                          "continue_final_message":true})");
  CHECK(cont.chat.continue_final_message);
  CHECK(!cont.chat.add_generation_prompt);
  auto tools = chat_ok("{" + user_hi + R"(,"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto"})");
  CHECK(tools.chat.extra_json == R"({"tools":[{"type":"function","function":{"name":"f"}}]})");
}

TEST_CASE("openai request: bad chat bodies name the message field") {
  struct bad {
    std::string body;
    const char* param;
  };
  for (const bad& b :
       {bad{R"({})", "messages"}, bad{R"({"messages":[]})", "messages"}, bad{R"({"messages":"hi"})", "messages"},
        bad{R"({"messages":{"role":"user"}})", "messages"}, bad{R"({"messages":[42]})", "messages[0]"},
        bad{R"({"messages":[{"content":"hi"}]})", "messages[0].role"},
        bad{R"({"messages":[{"role":"user","content":"a"},{"role":"wizard","content":"b"}]})", "messages[1].role"},
        bad{R"({"messages":[{"role":5,"content":"b"}]})", "messages[0].role"},
        bad{R"({"messages":[{"role":"user"}]})", "messages[0].content"},
        bad{R"({"messages":[{"role":"user","content":null}]})", "messages[0].content"},
        bad{R"({"messages":[{"role":"assistant"}]})", "messages[0].content"},
        bad{R"({"messages":[{"role":"user","content":7}]})", "messages[0].content"},
        bad{R"({"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{}}]}]})",
            "messages[0].content[1].type"},
        bad{R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})", "messages[0].content[0].text"},
        bad{R"({"messages":[{"role":"user","content":["a"]}]})", "messages[0].content[0]"},
        bad{"{" + user_hi + R"(,"max_completion_tokens":0})", "max_completion_tokens"},
        bad{"{" + user_hi + R"(,"max_tokens":-1})", "max_tokens"},
        bad{"{" + user_hi + R"(,"top_logprobs":5})", "top_logprobs"},
        bad{"{" + user_hi + R"(,"logprobs":true,"top_logprobs":21})", "top_logprobs"},
        bad{"{" + user_hi + R"(,"logprobs":1})", "logprobs"}, bad{"{" + user_hi + R"(,"n":100})", "n"},
        bad{"{" + user_hi + R"(,"temperature":-1})", "temperature"},
        bad{"{" + user_hi + R"(,"tool_choice":"required"})", "tool_choice"},
        bad{"{" + user_hi + R"(,"chat_template_kwargs":"x"})", "chat_template_kwargs"},
        bad{"{" + user_hi + R"(,"continue_final_message":true})", "continue_final_message"},
        bad{"{" + user_hi + R"(,"continue_final_message":true,"add_generation_prompt":true})",
            "continue_final_message"}}) {
    CAPTURE(b.body);
    CHECK(chat_error(b.body).param == b.param);
  }
  CHECK(chat_error(R"({"messages":[]})").message == "messages must not be empty");
  CHECK(chat_error(R"({"messages":[{"role":"wizard","content":"b"}]})").message ==
        "messages[0].role must be one of system, developer, user, assistant, tool; got 'wizard'");
  CHECK(chat_error("{\"messages\":[").param.empty());
}

TEST_CASE("openai request: /tokenize and /detokenize bodies (vLLM's shapes)") {
  auto o = test_options();
  auto p = troupe::openai_parse_tokenize(R"({"model":"m","prompt":"hello"})", o);
  REQUIRE(p.ok());
  CHECK(!p.value->is_chat);
  CHECK(p.value->prompt == "hello");
  CHECK(p.value->add_special_tokens);
  auto c = troupe::openai_parse_tokenize(R"({"messages":[{"role":"user","content":"hi"}],"return_token_strs":true})", o);
  REQUIRE(c.ok());
  CHECK(c.value->is_chat);
  CHECK(!c.value->add_special_tokens);
  CHECK(c.value->return_token_strs);
  CHECK(c.value->chat.add_generation_prompt);
  CHECK(troupe::openai_parse_tokenize(R"({"model":"m"})", o).error.param == "prompt");
  CHECK(troupe::openai_parse_tokenize(R"({"prompt":[1,2]})", o).error.param == "prompt");
  CHECK(troupe::openai_parse_tokenize(R"({"messages":[]})", o).error.param == "messages");
  CHECK(troupe::openai_parse_tokenize("{", o).error.status == 400);

  auto d = troupe::openai_parse_detokenize(R"({"model":"m","tokens":[1,2,3]})", o);
  REQUIRE(d.ok());
  CHECK(d.value->tokens == std::vector<int32_t>{1, 2, 3});
  CHECK(d.value->model == "m");
  CHECK(troupe::openai_parse_detokenize(R"({"tokens":[1,1000]})", o).error.param == "tokens");
  CHECK(troupe::openai_parse_detokenize(R"({"tokens":"1 2"})", o).error.param == "tokens");
  CHECK(troupe::openai_parse_detokenize(R"({})", o).error.param == "tokens");
}

TEST_CASE("openai request: max_tokens against the prompt and the context (vLLM's wording)") {
  int32_t mt = -1;
  CHECK(!troupe::openai_resolve_max_tokens(mt, 100, 2048, true));
  CHECK(mt == 1948);
  mt = 1948;
  CHECK(!troupe::openai_resolve_max_tokens(mt, 100, 2048, false));
  mt = 1949;
  auto e = troupe::openai_resolve_max_tokens(mt, 100, 2048, false);
  REQUIRE(e);
  CHECK(e->status == 400);
  CHECK(e->param == "max_tokens");
  CHECK(e->message ==
        "'max_tokens' is too large: 1949. This model's maximum context length is 2048 tokens and your request has "
        "100 input tokens (1949 > 2048 - 100).");
  mt = -1;
  e = troupe::openai_resolve_max_tokens(mt, 2048, 2048, true);
  REQUIRE(e);
  CHECK(e->param == "messages");
  CHECK(e->message.find("maximum context length is 2048 tokens") != std::string::npos);
  mt = 5;
  CHECK(troupe::openai_resolve_max_tokens(mt, 5000, 2048, false)->param == "prompt");
}

TEST_CASE("openai request: a validation error renders as OpenAI's error object") {
  auto e = completion_error(R"({"prompt":"x","top_p":2})");
  CHECK(troupe::openai_error_body(e) ==
        R"({"error":{"message":"top_p must be in (0, 1], got 2","type":"invalid_request_error","param":"top_p","code":null}})");
  auto j = completion_error("{");
  CHECK(troupe::openai_error_body(j).find(R"("param":null,"code":null}})") != std::string::npos);
}
