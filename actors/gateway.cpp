// Routing of the gateway's HTTP requests. Every handler runs on an HTTP I/O
// thread and must not block: cheap work (parsing, validation, /tokenize) is
// done in place; anything that needs an actor's answer spawns a one-shot
// actor that answers through the response writer when the reply arrives.
#include "actors/gateway.hpp"

#include <chrono>
#include <ctime>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/constant_time.hpp"
#include "actors/gateway_core.hpp"
#include "actors/openai_response.hpp"
#include "config/errors.hpp"
#include "model/generation_config.hpp"

namespace troupe {

namespace {

using writer_ptr = std::shared_ptr<http_response_writer>;
constexpr auto ask_timeout = std::chrono::seconds(5);

void respond_json(const writer_ptr& w, int status, const std::string& body) {
  w->respond(status, "application/json", body);
}

void respond_error(const writer_ptr& w, const openai_error& e) { respond_json(w, e.status, openai_error_body(e)); }

std::string bearer(const http_request& r) {
  const std::string h = r.header("authorization");
  return h.rfind("Bearer ", 0) == 0 ? h.substr(7) : std::string();
}

nlohmann::ordered_json state_json(const instance_state& st) {
  nlohmann::ordered_json j;
  j["name"] = st.name;
  j["role"] = st.role;
  j["status"] = st.status;
  j["running"] = st.running;
  j["waiting"] = st.waiting;
  j["kv_pages_total"] = st.kv_pages_total;
  j["kv_pages_free"] = st.kv_pages_free;
  j["kv_usage"] = st.kv_pages_total ? 1.0 - static_cast<double>(st.kv_pages_free) / static_cast<double>(st.kv_pages_total) : 0.0;
  j["chunked_prefill_size"] = st.chunked_prefill_size;
  j["prompt_tokens_total"] = st.prompt_tokens_total;
  j["generation_tokens_total"] = st.generation_tokens_total;
  j["preemptions_total"] = st.preemptions_total;
  j["restarts_total"] = st.restarts_total;
  return j;
}

// Asks the instance for its state and hands it (or nullopt on error/timeout) to `then`.
template <class F>
void with_state(const std::shared_ptr<gateway_core>& core, F then) {
  core->sys->spawn([core, then](caf::event_based_actor* self) {
    self->request(core->instance, ask_timeout, state_atom::value)
        .then([then](const instance_state& st) { then(std::optional<instance_state>(st)); },
              [then](const caf::error&) { then(std::optional<instance_state>()); });
  });
}

void handle_metrics(const std::shared_ptr<gateway_core>& core, const writer_ptr& w) {
  with_state(core, [core, w](std::optional<instance_state> st) {
    if (st) {
      core->metrics->running.set(st->running);
      core->metrics->waiting.set(st->waiting);
      core->metrics->kv_usage.set(st->kv_pages_total ? 1.0 - static_cast<double>(st->kv_pages_free) /
                                                               static_cast<double>(st->kv_pages_total)
                                                     : 0.0);
    }
    w->respond(200, "text/plain; version=0.0.4", core->registry.render());
  });
}

void handle_admin(const std::shared_ptr<gateway_core>& core, const http_request& r, const writer_ptr& w) {
  if (core->opt.admin_key.empty()) return respond_error(w, {404, "the admin API is disabled (no --admin-key)", "", ""});
  if (!constant_time_equal(bearer(r), core->opt.admin_key))
    return respond_error(w, {401, "missing or wrong admin key", "", "invalid_api_key"});
  const std::string_view path = r.path();
  if (path == "/admin/state" && r.method == "GET") {
    return with_state(core, [w](std::optional<instance_state> st) {
      if (!st) return respond_error(w, {503, "the instance did not answer", "", ""});
      nlohmann::ordered_json j;
      j["instances"] = nlohmann::ordered_json::array({state_json(*st)});
      respond_json(w, 200, j.dump());
    });
  }
  if (r.method != "POST") return respond_error(w, {405, "use POST", "", ""});
  if (path == "/admin/chunked-prefill") {
    int64_t size = 0;
    try {
      const auto j = nlohmann::json::parse(r.body);
      if (!j.is_object() || !j.contains("size") || !j["size"].is_number_integer()) throw std::runtime_error("");
      size = j["size"].get<int64_t>();
    } catch (const std::exception&) {
      return respond_error(w, {400, "expected {\"size\": positive integer}", "size", ""});
    }
    if (size < 1) return respond_error(w, {400, "size must be >= 1", "size", ""});
    core->sys->spawn([core, w, size](caf::event_based_actor* self) {
      self->request(core->instance, ask_timeout, prefill_sz_atom::value, size)
          .then([w](int64_t v) { respond_json(w, 200, nlohmann::json{{"chunked_prefill_size", v}}.dump()); },
                [w](const caf::error& e) { respond_error(w, {400, caf::to_string(e), "size", ""}); });
    });
    return;
  }
  if (path == "/admin/drain" || path == "/admin/undrain") {
    const bool drain = path == "/admin/drain";
    core->sys->spawn([core, w, drain](caf::event_based_actor* self) {
      self->request(core->instance, ask_timeout, drain_atom::value, drain)
          .then([w](bool v) { respond_json(w, 200, nlohmann::json{{"draining", v}}.dump()); },
                [w](const caf::error& e) { respond_error(w, {503, caf::to_string(e), "", ""}); });
    });
    return;
  }
  respond_error(w, {404, "unknown admin endpoint " + std::string(path), "", ""});
}

void handle_completion(const std::shared_ptr<gateway_core>& core, const http_request& r, const writer_ptr& w,
                       bool chat) {
  openai_result<openai_request> parsed =
      chat ? openai_parse_chat(r.body, core->parse) : openai_parse_completion(r.body, core->parse);
  if (!parsed.ok()) return respond_error(w, parsed.error);
  openai_request& req = *parsed.value;
  if (!req.model.empty() && req.model != core->opt.model_name) return respond_error(w, openai_error_model_not_found(req.model));
  if (!core->ready.load()) return respond_error(w, {503, "the server is starting", "", ""});
  if (core->in_flight.fetch_add(1) >= core->opt.max_queue) {
    core->in_flight.fetch_sub(1);
    return respond_error(w, {503, "too many requests in flight; retry later", "", ""});
  }
  gateway_spawn_request(core, std::move(req), w);
}

void handle_tokenize(const std::shared_ptr<gateway_core>& core, const http_request& r, const writer_ptr& w) {
  auto parsed = openai_parse_tokenize(r.body, core->parse);
  if (!parsed.ok()) return respond_error(w, parsed.error);
  const openai_tokenize_request& t = *parsed.value;
  if (!t.model.empty() && t.model != core->opt.model_name) return respond_error(w, openai_error_model_not_found(t.model));
  std::string text = t.prompt;
  if (t.is_chat) {
    if (!core->tpl) return respond_error(w, {400, "this model has no usable chat template: " + core->tpl_error, "messages", ""});
    try {
      text = core->tpl->render(t.chat.messages_json, t.chat.add_generation_prompt, t.chat.extra_json);
    } catch (const std::exception& e) {
      return respond_error(w, {400, e.what(), "messages", ""});
    }
  }
  const std::vector<int32_t> ids = core->tok->encode(text, t.add_special_tokens);
  std::vector<std::string> strs;
  if (t.return_token_strs)
    for (int32_t id : ids) strs.push_back(core->tok->id_to_token(id));
  respond_json(w, 200, openai_tokenize_response(ids, core->opt.max_model_len, strs));
}

void handle_detokenize(const std::shared_ptr<gateway_core>& core, const http_request& r, const writer_ptr& w) {
  auto parsed = openai_parse_detokenize(r.body, core->parse);
  if (!parsed.ok()) return respond_error(w, parsed.error);
  if (!parsed.value->model.empty() && parsed.value->model != core->opt.model_name)
    return respond_error(w, openai_error_model_not_found(parsed.value->model));
  try {
    respond_json(w, 200, openai_detokenize_response(core->tok->decode(parsed.value->tokens, false)));
  } catch (const std::exception& e) {
    respond_error(w, {400, e.what(), "tokens", ""});
  }
}

void handle(const std::shared_ptr<gateway_core>& core, http_request r, writer_ptr w) {
  const std::string path(r.path());
  if (path == "/health") {
    if (!core->ready.load()) return respond_json(w, 503, "{\"status\":\"starting\"}");
    return with_state(core, [w](std::optional<instance_state> st) {
      const bool ok = st && st->status == "ready";
      respond_json(w, ok ? 200 : 503, nlohmann::json{{"status", st ? st->status : "unreachable"}}.dump());
    });
  }
  if (path == "/metrics") return handle_metrics(core, w);
  if (path.rfind("/admin/", 0) == 0) return handle_admin(core, r, w);
  const bool api = path.rfind("/v1/", 0) == 0 || path == "/tokenize" || path == "/detokenize";
  if (!api) return respond_error(w, {404, "not found: " + path, "", ""});
  if (!core->opt.api_key.empty() && !constant_time_equal(bearer(r), core->opt.api_key))
    return respond_error(w, openai_error_invalid_api_key());
  if (path == "/v1/models" && r.method == "GET")
    return respond_json(w, 200, openai_models({{core->opt.model_name, core->created, core->opt.max_model_len}}));
  const bool known = path == "/v1/completions" || path == "/v1/chat/completions" || path == "/tokenize" ||
                     path == "/detokenize" || path == "/v1/models";
  if (!known) return respond_error(w, {404, "not found: " + path, "", ""});
  if (r.method != "POST") return respond_error(w, {405, "method " + r.method + " not allowed on " + path, "", ""});
  if (path == "/v1/completions") return handle_completion(core, r, w, false);
  if (path == "/v1/chat/completions") return handle_completion(core, r, w, true);
  if (path == "/tokenize") return handle_tokenize(core, r, w);
  if (path == "/detokenize") return handle_detokenize(core, r, w);
  respond_error(w, {404, "not found: " + path, "", ""});
}

}  // namespace

gateway_metrics::gateway_metrics(prometheus_registry& r)
    : prompt_tokens(r.counter("troupe:prompt_tokens_total", "Prompt tokens processed")),
      generation_tokens(r.counter("troupe:generation_tokens_total", "Tokens generated")),
      requests_ok(r.counter("troupe:request_success_total", "Requests that finished normally")),
      requests_failed(r.counter("troupe:request_failure_total", "Requests that ended in an error")),
      ttft(r.histogram("troupe:time_to_first_token_seconds", "Time to first token",
                       {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10})),
      itl(r.histogram("troupe:inter_token_latency_seconds", "Time between tokens of a request",
                      {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1})),
      e2e(r.histogram("troupe:e2e_request_latency_seconds", "End-to-end request latency",
                      {0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60})),
      running(r.gauge("troupe:num_requests_running", "Requests in the running batch")),
      waiting(r.gauge("troupe:num_requests_waiting", "Requests waiting to be scheduled")),
      kv_usage(r.gauge("troupe:kv_cache_usage_perc", "Fraction of KV-cache pages in use")) {}

gateway::gateway(caf::actor_system& sys, chunk_scheduler_actor instance, gateway_options opt)
    : core_(std::make_shared<gateway_core>()) {
  gateway_core& c = *core_;
  c.sys = &sys;
  c.instance = std::move(instance);
  c.opt = std::move(opt);
  if (c.opt.model_name.empty()) c.opt.model_name = std::filesystem::absolute(c.opt.model_dir).filename().string();
  c.tok = tokenizer::load(c.opt.model_dir);
  try {
    c.tpl = chat_template::load(c.opt.model_dir, c.opt.chat_template_file);
  } catch (const error& e) {
    if (e.code() != errc::errc_io || !c.opt.chat_template_file.empty()) throw;  // present but unrenderable: fail at load
    c.tpl_error = e.what();
  }
  const generation_config gc = generation_config_load(c.opt.model_dir);
  c.parse.max_model_len = c.opt.max_model_len;
  c.parse.vocab_size = c.tok->vocab_size();
  c.parse.defaults = gc.defaults();
  c.created = static_cast<int64_t>(std::time(nullptr));
  c.metrics = std::make_unique<gateway_metrics>(c.registry);
  http_server_options h;
  h.host = c.opt.host;
  h.port = c.opt.port;
  h.threads = c.opt.http_threads;
  h.max_body_bytes = c.opt.max_body_bytes;
  std::weak_ptr<gateway_core> weak = core_;
  c.server = std::make_unique<http_server>(h, [weak](http_request r, writer_ptr w) {
    if (auto core = weak.lock()) handle(core, std::move(r), std::move(w));
    else w->respond(503, "application/json", openai_error_body(503, "the server is stopping"));
  });
}

gateway::~gateway() { stop(); }

uint16_t gateway::port() const { return core_->server->port(); }

void gateway::set_ready(bool ready) { core_->ready.store(ready); }

void gateway::stop() {
  if (core_ && core_->server) core_->server->stop();
}

}  // namespace troupe
