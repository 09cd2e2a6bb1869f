// Internal to the gateway: the state every handler and request actor shares
// (read-only after start, except the atomics and the metrics, which are
// thread-safe), and the request actor's entry point.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "actors/gateway.hpp"
#include "actors/http_server.hpp"
#include "actors/openai_request.hpp"
#include "actors/prometheus.hpp"
#include "model/chat_template.hpp"
#include "model/tokenizer.hpp"

namespace troupe {

/// The gateway's metrics (vLLM names with a troupe: prefix).
struct gateway_metrics {
  explicit gateway_metrics(prometheus_registry& r);
  prometheus_counter& prompt_tokens;
  prometheus_counter& generation_tokens;
  prometheus_counter& requests_ok;
  prometheus_counter& requests_failed;
  prometheus_histogram& ttft;
  prometheus_histogram& itl;
  prometheus_histogram& e2e;
  prometheus_histogram& overhead;
  prometheus_gauge& running;
  prometheus_gauge& waiting;
  prometheus_gauge& kv_usage;
};

struct gateway_core {
  caf::actor_system* sys = nullptr;
  router_actor router;
  admin_actor admin;
  gateway_options opt;
  std::optional<tokenizer> tok;
  std::optional<chat_template> tpl;
  std::string tpl_error;            ///< why the chat template is unavailable ("" when it is)
  openai_parse_options parse;
  std::vector<int32_t> eos_ids;
  int64_t created = 0;
  std::atomic<uint64_t> next_id{1};
  std::atomic<int32_t> in_flight{0};
  std::atomic<bool> accepting{true};
  prometheus_registry registry;
  std::unique_ptr<gateway_metrics> metrics;
  std::unique_ptr<http_server> server;
};

/// Spawns the actor that serves one validated completion request.
void gateway_spawn_request(const std::shared_ptr<gateway_core>& core, openai_request req,
                           std::shared_ptr<http_response_writer> writer);

}  // namespace troupe
