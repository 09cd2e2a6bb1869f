// The OpenAI-compatible gateway: an HTTP server (actors/http_server.hpp)
// whose handler turns each request into actor work without blocking its I/O
// threads. A completion request becomes one short-lived request actor (the
// sink of its token events), which tokenizes, renders the chat template,
// sends one generate_request per choice to the router (which answers with
// the instance that took it, where cancels then go), detokenizes and
// matches stop strings as tokens arrive, and writes the JSON or SSE answer.
// A client that disconnects kills its request actor; the scheduler monitors
// sinks and cancels their requests, freeing the KV pages within one step.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "actors/messages.hpp"

namespace caf {
class actor_system;
}

namespace troupe {

/// How the gateway serves.
struct gateway_options {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;                 ///< 0: ephemeral
  int http_threads = 2;
  std::filesystem::path model_dir;      ///< tokenizer, chat template, generation_config
  std::string model_name;               ///< the id clients use ("" = the folder name)
  std::filesystem::path chat_template_file;  ///< overrides the checkpoint's template
  std::vector<std::string> api_keys;    ///< any of them is accepted on /v1 (none: no authentication)
  std::string admin_key;                ///< "" = /admin disabled
  size_t max_body_bytes = 8u << 20;
  int64_t max_model_len = 0;            ///< the instances' context length (the smallest)
  int32_t max_queue = 4096;             ///< requests in flight above this get 503
};

struct gateway_core;

/// A running gateway; stops in its destructor.
class gateway {
 public:
  /// Loads the tokenizer and chat template (errors name the file) and starts
  /// listening (errc_io naming the address when binding fails). Requests go
  /// to `router`, /admin/* calls to `admin`; /health reflects the instances
  /// the router knows (503 until one is ready).
  gateway(caf::actor_system& sys, router_actor router, admin_actor admin, gateway_options opt);
  ~gateway();
  /// The bound port.
  uint16_t port() const;
  /// Accepts completions (true) or answers 503 "stopping" (false, at shutdown).
  void set_accepting(bool accepting);
  /// Stops the HTTP server (in-flight responses get a short grace period).
  void stop();

 private:
  std::shared_ptr<gateway_core> core_;
};

}  // namespace troupe
