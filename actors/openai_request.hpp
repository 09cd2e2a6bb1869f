// Parsing and validation of OpenAI-compatible request bodies into plain
// structs: POST /v1/completions, /v1/chat/completions, and vLLM's /tokenize
// and /detokenize.
//
// Why it is built this way:
// - The gateway must answer every bad input with a 400 naming the offending
//   field (OpenAI's "param"), never crash and never guess. So each field is
//   read by one typed accessor that knows its name, and the first problem
//   becomes an openai_error; no exception leaves these functions.
// - vLLM's semantics are the reference where OpenAI is silent or stricter:
//   temperature only needs to be >= 0 (vLLM has no upper bound; OpenAI's 2 is
//   not enforced), top_k -1/0 = off, top_logprobs needs logprobs=true,
//   stream_options needs stream=true, chat content parts are joined with
//   "\n", max_tokens defaults to 16 for completions and to "the rest of the
//   context" for chat. Sampling fields start from the caller's defaults
//   (generation_config.json) and pass sampling_params_validate.
// - Unknown fields are ignored; known fields whose semantics troupe does not
//   implement (logit_bias, response_format other than text, best_of > n,
//   tool_choice "required", echo unless enabled) are refused with a 400 rather
//   than silently dropped.
// - Nesting deeper than 64 is refused before parsing, so no hostile body can
//   exhaust the stack in any later recursive walk.
// - The model name is only reported: the gateway decides whether it is served (404).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "actors/openai_response.hpp"
#include "model/sampler.hpp"

namespace troupe {

/// What the parser may accept, from the served model and the server's options.
struct openai_parse_options {
  int64_t max_model_len = 4096;  ///< max_tokens above this is refused
  int64_t vocab_size = 0;        ///< > 0: token ids must be below it
  int32_t max_n = 16;            ///< n above this is refused
  int32_t max_logprobs = 20;     ///< logprobs / top_logprobs above this are refused
  int32_t max_stop = 4;          ///< stop strings
  int32_t max_prompts = 64;      ///< entries of a batched completions prompt
  bool echo_supported = false;   ///< false: echo=true is refused (param "echo")
  sampling_params defaults;      ///< sampling before the request's fields (generation_config.json)
};

/// One completions prompt: text, or token ids.
struct openai_prompt {
  bool is_tokens = false;
  std::string text;
  std::vector<int32_t> tokens;
};

/// One chat message, content flattened to text.
struct openai_chat_message {
  std::string role;     ///< system, developer, user, assistant or tool
  std::string content;  ///< text parts joined with "\n"; "" for an assistant turn with only tool_calls
};

/// The chat part of a request (chat completions and chat-form /tokenize).
struct openai_chat_input {
  std::vector<openai_chat_message> messages;
  /// The messages as a JSON array for chat_template::render: role, content
  /// (a string, or null for a tool-call-only assistant turn), and name,
  /// tool_calls, tool_call_id when present (key order kept).
  std::string messages_json;
  /// Extra template variables as a JSON object (tools, chat_template_kwargs);
  /// "" when none.
  std::string extra_json;
  bool add_generation_prompt = true;
  bool continue_final_message = false;
};

/// Which endpoint a request came from.
enum class openai_endpoint { endpoint_completions, endpoint_chat };

/// A validated completions or chat completions request.
struct openai_request {
  openai_endpoint endpoint = openai_endpoint::endpoint_completions;
  std::string model;                  ///< as sent; "" when absent (the default model)
  std::vector<openai_prompt> prompts;  ///< completions: one or more (each gets n choices)
  openai_chat_input chat;             ///< chat
  int32_t max_tokens = -1;            ///< >= 1; -1 (chat, unset): the rest of the context (see openai_resolve_max_tokens)
  sampling_params sampling;           ///< defaults overlaid with the request's fields; validated
  int32_t n = 1;
  std::vector<std::string> stop;      ///< non-empty strings
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t logprobs = -1;              ///< -1: none; else the number of top alternatives (completions: logprobs; chat: top_logprobs)
  bool echo = false;                  ///< completions: prepend the prompt (only when echo_supported)
  bool stream = false;
  bool include_usage = false;         ///< stream_options.include_usage
  bool add_special_tokens = true;     ///< completions default true, chat default false (vLLM)
  bool skip_special_tokens = true;
  bool include_stop_str_in_output = false;
};

/// POST /tokenize: the prompt form or the chat form (when "messages" is present).
struct openai_tokenize_request {
  std::string model;
  bool is_chat = false;
  std::string prompt;             ///< prompt form
  openai_chat_input chat;         ///< chat form
  bool add_special_tokens = true; ///< default true for prompt, false for chat (vLLM)
  bool return_token_strs = false;
};

/// POST /detokenize.
struct openai_detokenize_request {
  std::string model;
  std::vector<int32_t> tokens;
};

/// A parsed value or the error to answer with.
template <class T>
struct openai_result {
  std::optional<T> value;
  openai_error error;
  bool ok() const { return value.has_value(); }
};

/// Parses a POST /v1/completions body.
openai_result<openai_request> openai_parse_completion(std::string_view body, const openai_parse_options& opts);
/// Parses a POST /v1/chat/completions body.
openai_result<openai_request> openai_parse_chat(std::string_view body, const openai_parse_options& opts);
/// Parses a POST /tokenize body.
openai_result<openai_tokenize_request> openai_parse_tokenize(std::string_view body, const openai_parse_options& opts);
/// Parses a POST /detokenize body.
openai_result<openai_detokenize_request> openai_parse_detokenize(std::string_view body,
                                                                 const openai_parse_options& opts);

/// Checks a tokenized request against the context and settles max_tokens:
/// an unset one (-1) becomes max_model_len - prompt_tokens. Returns a 400
/// with vLLM's wording when the prompt fills the context (param "messages"
/// for chat, else "prompt") or prompt + max_tokens exceeds it (param
/// "max_tokens", or "max_completion_tokens" when `chat`); nullopt when it fits.
std::optional<openai_error> openai_resolve_max_tokens(int32_t& max_tokens, int64_t prompt_tokens,
                                                      int64_t max_model_len, bool chat);

}  // namespace troupe
