// Response building: the exact JSON text of each object shape.
#include "actors/openai_response.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <set>

using namespace troupe;

TEST_CASE("openai response: a completion, with logprobs in the completions format") {
  openai_choice a;
  a.index = 0;
  a.text = " world!";
  a.finish_reason = "length";
  a.has_logprobs = true;
  a.logprobs = {{" world", -0.1f, {{" world", -0.1f}, {" there", -2.5f}}},
                {"!", -1.25f, {{"!", -1.25f}, {"!", -3.0f}, {".", -INFINITY}}}};
  openai_choice b;
  b.index = 1;
  b.text = "";
  b.finish_reason = "stop";
  std::string got = openai_completion("cmpl-abc", 1700000000, "demo", {a, b}, {5, 2});
  CHECK(got ==
        R"({"id":"cmpl-abc","object":"text_completion","created":1700000000,"model":"demo","choices":[)"
        R"({"index":0,"text":" world!","logprobs":{"tokens":[" world","!"],"token_logprobs":[-0.1,-1.25],)"
        R"("top_logprobs":[{" world":-0.1," there":-2.5},{"!":-1.25,".":-9999.0}],"text_offset":[0,6]},"finish_reason":"length"},)"
        R"({"index":1,"text":"","logprobs":null,"finish_reason":"stop"}],)"
        R"("usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}})");
}

TEST_CASE("openai response: text_offset counts characters and starts at the choice's offset") {
  openai_choice c;
  c.has_logprobs = true;
  c.text_offset = 10;
  c.logprobs = {{"é", -1.0f, {}}, {"ab", -1.0f, {}}, {"c", -1.0f, {}}};
  std::string got = openai_completion_chunk("cmpl-x", 1, "m", {c});
  CHECK(got.find(R"("text_offset":[10,11,13])") != std::string::npos);
}

TEST_CASE("openai response: a chat completion, with logprobs in the chat format") {
  openai_choice c;
  c.text = "Hi";
  c.finish_reason = "stop";
  c.has_logprobs = true;
  c.logprobs = {{"Hi", -0.5f, {{"Hi", -0.5f}, {"Hello", -1.5f}}}};
  std::string got = openai_chat_completion("chatcmpl-1", 1700000001, "demo", {c}, {9, 1});
  CHECK(got ==
        R"({"id":"chatcmpl-1","object":"chat.completion","created":1700000001,"model":"demo","choices":[)"
        R"({"index":0,"message":{"role":"assistant","content":"Hi"},"logprobs":{"content":[)"
        R"({"token":"Hi","logprob":-0.5,"bytes":[72,105],"top_logprobs":[{"token":"Hi","logprob":-0.5,"bytes":[72,105]},)"
        R"({"token":"Hello","logprob":-1.5,"bytes":[72,101,108,108,111]}]}]},"finish_reason":"stop"}],)"
        R"("usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}})");
  openai_choice plain;
  plain.text = "ok";
  plain.finish_reason = "length";
  CHECK(openai_chat_completion("chatcmpl-2", 5, "m", {plain}, {1, 1}) ==
        R"({"id":"chatcmpl-2","object":"chat.completion","created":5,"model":"m","choices":[)"
        R"({"index":0,"message":{"role":"assistant","content":"ok"},"logprobs":null,"finish_reason":"length"}],)"
        R"("usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}})");
}

TEST_CASE("openai response: streamed chat chunks (role first, then content, then finish) and the usage chunk") {
  openai_choice c;
  CHECK(openai_chat_chunk("chatcmpl-1", 7, "m", {c}, openai_delta::delta_role) ==
        R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[)"
        R"({"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]})");
  c.text = "Hel";
  CHECK(openai_chat_chunk("chatcmpl-1", 7, "m", {c}, openai_delta::delta_content, true) ==
        R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[)"
        R"({"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null})");
  c.text.clear();
  c.finish_reason = "stop";
  CHECK(openai_chat_chunk("chatcmpl-1", 7, "m", {c}, openai_delta::delta_empty) ==
        R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[)"
        R"({"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]})");
  CHECK(openai_usage_chunk("chat.completion.chunk", "chatcmpl-1", 7, "m", {3, 4}) ==
        R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[],)"
        R"("usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}})");
}

TEST_CASE("openai response: streamed completion chunks and SSE framing") {
  openai_choice c;
  c.index = 2;
  c.text = "a\"b\n";
  std::string chunk = openai_completion_chunk("cmpl-9", 3, "m", {c});
  CHECK(chunk == R"({"id":"cmpl-9","object":"text_completion","created":3,"model":"m","choices":[)"
                 R"({"index":2,"text":"a\"b\n","logprobs":null,"finish_reason":null}]})");
  CHECK(sse_event(chunk) == "data: " + chunk + "\n\n");
  CHECK(sse_done == "data: [DONE]\n\n");
  CHECK(openai_usage_chunk("text_completion", "cmpl-9", 3, "m", {1, 0}) ==
        R"({"id":"cmpl-9","object":"text_completion","created":3,"model":"m","choices":[],)"
        R"("usage":{"prompt_tokens":1,"completion_tokens":0,"total_tokens":1}})");
  // A token that ends inside a UTF-8 character must not break the JSON.
  c.text = "\xe4\xbd";
  CHECK(openai_completion_chunk("cmpl-9", 3, "m", {c}).find(R"("text":"\ufffd")") == std::string::npos);
  CHECK(openai_completion_chunk("cmpl-9", 3, "m", {c}).find("\"text\":\"\xef\xbf\xbd\"") != std::string::npos);
}

TEST_CASE("openai response: errors, with OpenAI's type per status") {
  CHECK(openai_error_body({400, "bad n", "n", {}}) ==
        R"({"error":{"message":"bad n","type":"invalid_request_error","param":"n","code":null}})");
  CHECK(openai_error_body(openai_error_model_not_found("gpt-9")) ==
        R"({"error":{"message":"The model `gpt-9` does not exist.","type":"invalid_request_error","param":"model","code":"model_not_found"}})");
  CHECK(openai_error_body(openai_error_invalid_api_key()) ==
        R"({"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}})");
  CHECK(openai_error_body(503, "queue full") ==
        R"({"error":{"message":"queue full","type":"server_error","param":null,"code":null}})");
  CHECK(std::string(openai_error_type(413)) == "invalid_request_error");
  CHECK(std::string(openai_error_type(429)) == "rate_limit_error");
  CHECK(std::string(openai_error_type(500)) == "server_error");
}

TEST_CASE("openai response: /v1/models, /tokenize, /detokenize and ids") {
  CHECK(openai_models({{"demo", 1700000000, 2048}}) ==
        R"({"object":"list","data":[{"id":"demo","object":"model","created":1700000000,"owned_by":"troupe","max_model_len":2048}]})");
  CHECK(openai_models({}) == R"({"object":"list","data":[]})");
  CHECK(openai_tokenize_response({1, 2, 3}, 2048) ==
        R"({"count":3,"max_model_len":2048,"tokens":[1,2,3],"token_strs":null})");
  CHECK(openai_tokenize_response({5}, 10, {"hi"}) == R"({"count":1,"max_model_len":10,"tokens":[5],"token_strs":["hi"]})");
  CHECK(openai_detokenize_response("a\"b") == R"({"prompt":"a\"b"})");
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    std::string id = openai_make_id("chatcmpl-");
    CHECK(id.size() == 9 + 32);
    CHECK(id.find_first_not_of("0123456789abcdef", 9) == std::string::npos);
    ids.insert(id);
  }
  CHECK(ids.size() == 1000);
}
