// Response bodies of the OpenAI-compatible API, in OpenAI's shapes and field
// order: completions, chat completions, their streaming chunks, the final
// usage chunk, SSE framing, errors, the model list, and vLLM's /tokenize and
// /detokenize answers.
//
// Why it is built this way: the gateway hands in plain values (texts already
// detokenized, logprobs already paired with token strings) and gets JSON text
// back, so no JSON type leaks into the gateway's headers and every shape is
// pinned by a test of the exact text. Objects are built with
// nlohmann::ordered_json to keep OpenAI's field order; floats are printed in
// their shortest float form (0.1f prints as 0.1, not 0.10000000149011612);
// -inf logprobs become -9999.0 as in vLLM (JSON has no infinity).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe {

/// An API error: HTTP status plus the fields of OpenAI's error object.
struct openai_error {
  int status = 400;
  std::string message;
  std::string param;  ///< the offending request field; empty: null
  std::string code;   ///< empty: null
};

/// OpenAI's error type for a status: "invalid_request_error" for 4xx (401 and
/// 404 too, as api.openai.com answers), "rate_limit_error" for 429,
/// "server_error" for 5xx. Clients (the openai npm package) map the status.
const char* openai_error_type(int status);
/// {"error":{"message","type","param","code"}}
std::string openai_error_body(const openai_error& e);
/// Same, from a status and message (param and code null).
std::string openai_error_body(int status, std::string_view message);
/// 404 for a model that is not served (code "model_not_found", param "model").
openai_error openai_error_model_not_found(std::string_view model);
/// 401 for a missing or wrong API key (code "invalid_api_key").
openai_error openai_error_invalid_api_key();

/// One position's logprobs: the chosen token and the top alternatives.
struct openai_token_logprob {
  std::string token;  ///< the token's text
  float logprob = 0.0f;
  std::vector<std::pair<std::string, float>> top;  ///< (text, logprob), best first
};

/// Token counts of a request.
struct openai_usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

/// One choice of a completion or chat completion (or of a streamed chunk).
struct openai_choice {
  int32_t index = 0;
  std::string text;           ///< completions: text; chat: message content / delta content
  std::string finish_reason;  ///< "stop", "length", ...; empty: null (a chunk in mid-stream)
  bool has_logprobs = false;  ///< false: "logprobs": null
  std::vector<openai_token_logprob> logprobs;
  /// completions only: text_offset of the first token (characters of text
  /// before it in this choice: the prompt when echoing, earlier chunks when streaming)
  int64_t text_offset = 0;
};

/// A fresh id: prefix + 32 random hex digits ("cmpl-", "chatcmpl-").
std::string openai_make_id(std::string_view prefix);

/// A non-streamed completion ("object": "text_completion").
std::string openai_completion(std::string_view id, int64_t created, std::string_view model,
                              const std::vector<openai_choice>& choices, const openai_usage& usage);
/// A streamed completion chunk ("text_completion"; no usage, or "usage": null with include_usage).
std::string openai_completion_chunk(std::string_view id, int64_t created, std::string_view model,
                                    const std::vector<openai_choice>& choices, bool usage_null = false);

/// A non-streamed chat completion ("chat.completion"; message role "assistant").
std::string openai_chat_completion(std::string_view id, int64_t created, std::string_view model,
                                   const std::vector<openai_choice>& choices, const openai_usage& usage);
/// What a chat chunk's delta carries.
enum class openai_delta {
  delta_role,     ///< the first chunk of a choice: {"role":"assistant","content":""}
  delta_content,  ///< {"content": text}
  delta_empty,    ///< {} (the chunk carrying finish_reason)
};
/// A streamed chat chunk ("chat.completion.chunk"); every choice gets the same delta kind.
std::string openai_chat_chunk(std::string_view id, int64_t created, std::string_view model,
                              const std::vector<openai_choice>& choices, openai_delta delta, bool usage_null = false);
/// The last chunk when stream_options.include_usage: "choices": [] and the usage.
/// `object` is "text_completion" or "chat.completion.chunk".
std::string openai_usage_chunk(std::string_view object, std::string_view id, int64_t created,
                               std::string_view model, const openai_usage& usage);

/// "data: " + json + "\n\n"
std::string sse_event(std::string_view json);
/// "data: [DONE]\n\n"
inline constexpr std::string_view sse_done = "data: [DONE]\n\n";

/// One served model, for GET /v1/models.
struct openai_model_card {
  std::string id;
  int64_t created = 0;
  int64_t max_model_len = 0;
};
/// {"object":"list","data":[{"id","object":"model","created","owned_by":"troupe","max_model_len"}]}
std::string openai_models(const std::vector<openai_model_card>& models);

/// vLLM's /tokenize answer: {"count","max_model_len","tokens","token_strs"} (token_strs null when empty).
std::string openai_tokenize_response(const std::vector<int32_t>& tokens, int64_t max_model_len,
                                     const std::vector<std::string>& token_strs = {});
/// vLLM's /detokenize answer: {"prompt": text}.
std::string openai_detokenize_response(std::string_view text);

}  // namespace troupe
