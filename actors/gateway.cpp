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
#include "actors/errors.hpp"
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
  j["max_model_len"] = st.max_model_len;
  j["prompt_tokens_total"] = st.prompt_tokens_total;
  j["generation_tokens_total"] = st.generation_tokens_total;
  j["preemptions_total"] = st.preemptions_total;
  j["restarts_total"] = st.restarts_total;
  return j;
}

// The cluster's status for /health: ready when any instance is; else the most
// hopeful state of any instance.
std::string cluster_status(const cluster_state& cs) {
  for (const char* s : {"ready", "starting", "restarting", "draining"})
    for (const instance_state& i : cs.instances)
      if (i.status == s) return s;
  return cs.instances.empty() ? "no instances" : "failed";
}

// Asks the router for every instance's state and hands it (or nullopt on
// error/timeout) to `then`, from a one-shot actor.
template <class F>
void with_state(const std::shared_ptr<gateway_core>& core, F then) {
  core->sys->spawn([core, then](caf::event_based_actor* self) {
    self->request(core->router, ask_timeout, state_atom::value)
        .then([then](const cluster_state& st) { then(std::optional<cluster_state>(st)); },
              [then](const caf::error&) { then(std::optional<cluster_state>()); });
  });
}

void handle_metrics(const std::shared_ptr<gateway_core>& core, const writer_ptr& w) {
  with_state(core, [core, w](std::optional<cluster_state> cs) {
    if (cs) {
      int64_t running = 0, waiting = 0, total = 0, free = 0;
      for (const instance_state& i : cs->instances) {
        running += i.running;
        waiting += i.waiting;
        total += i.kv_pages_total;
        free += i.kv_pages_free;
      }
      core->metrics->running.set(static_cast<double>(running));
      core->metrics->waiting.set(static_cast<double>(waiting));
      core->metrics->kv_usage.set(total ? 1.0 - static_cast<double>(free) / static_cast<double>(total) : 0.0);
    }
    w->respond(200, "text/plain; version=0.0.4", core->registry.render());
  });
}

// The admin error of a failed admin message: 400 naming `param` for a bad
// value or an unknown instance, 503 when the actors did not answer.
openai_error admin_error(caf::actor_system& sys, const caf::error& e, const std::string& param) {
  const bool invalid = errc_from_caf(e) == errc::errc_invalid_argument;
  std::string what = e.context().match_elements<std::string>() ? e.context().get_as<std::string>(0) : sys.render(e);
  return {invalid ? 400 : 503, std::move(what), invalid ? param : "", ""};
}

// Parses an admin body: a JSON object (or nothing) with an optional string
// "instance" ("" = every instance) and, when `size` is given, a required
// positive integer "size".
std::optional<openai_error> admin_body(const http_request& r, std::string& instance, int64_t* size) {
  nlohmann::json j = nlohmann::json::object();
  if (!r.body.empty()) {
    j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return openai_error{400, "the body must be a JSON object", "", ""};
  }
  if (j.contains("instance")) {
    if (!j["instance"].is_string()) return openai_error{400, "instance must be a string", "instance", ""};
    instance = j["instance"].get<std::string>();
  }
  if (size != nullptr) {
    if (!j.contains("size") || !j["size"].is_number_integer())
      return openai_error{400, "expected {\"size\": positive integer}", "size", ""};
    *size = j["size"].get<int64_t>();
  }
  return std::nullopt;
}

void handle_admin(const std::shared_ptr<gateway_core>& core, const http_request& r, const writer_ptr& w) {
  if (core->opt.admin_key.empty()) return respond_error(w, {404, "the admin API is disabled (no --admin-key)", "", ""});
  if (!constant_time_equal(bearer(r), core->opt.admin_key))
    return respond_error(w, {401, "missing or wrong admin key", "", "invalid_api_key"});
  const std::string_view path = r.path();
  if (path == "/admin/state" && r.method == "GET") {
    core->sys->spawn([core, w](caf::event_based_actor* self) {
      self->request(core->admin, ask_timeout, state_atom::value)
          .then(
              [w](const cluster_state& cs) {
                nlohmann::ordered_json j;
                j["status"] = cluster_status(cs);
                j["instances"] = nlohmann::ordered_json::array();
                for (const instance_state& i : cs.instances) j["instances"].push_back(state_json(i));
                respond_json(w, 200, j.dump());
              },
              [core, w](const caf::error& e) { respond_error(w, admin_error(*core->sys, e, "")); });
    });
    return;
  }
  if (r.method != "POST") return respond_error(w, {405, "use POST", "", ""});
  std::string instance;
  if (path == "/admin/chunked-prefill") {
    int64_t size = 0;
    if (auto e = admin_body(r, instance, &size)) return respond_error(w, *e);
    core->sys->spawn([core, w, instance, size](caf::event_based_actor* self) {
      self->request(core->admin, ask_timeout, prefill_sz_atom::value, instance, size)
          .then([w](int64_t v) { respond_json(w, 200, nlohmann::json{{"chunked_prefill_size", v}}.dump()); },
                [core, w](const caf::error& e) { respond_error(w, admin_error(*core->sys, e, "size")); });
    });
    return;
  }
  if (path == "/admin/drain" || path == "/admin/undrain") {
    const bool drain = path == "/admin/drain";
    if (auto e = admin_body(r, instance, nullptr)) return respond_error(w, *e);
    core->sys->spawn([core, w, drain, instance](caf::event_based_actor* self) {
      self->request(core->admin, ask_timeout, drain_atom::value, instance, drain)
          .then([w](bool v) { respond_json(w, 200, nlohmann::json{{"draining", v}}.dump()); },
                [core, w](const caf::error& e) { respond_error(w, admin_error(*core->sys, e, "instance")); });
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
  if (!core->accepting.load()) return respond_error(w, {503, "the server is stopping", "", ""});
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
    if (!core->accepting.load()) return respond_json(w, 503, "{\"status\":\"stopping\"}");
    return with_state(core, [w](std::optional<cluster_state> cs) {
      const std::string status = cs ? cluster_status(*cs) : "unreachable";
      respond_json(w, status == "ready" ? 200 : 503, nlohmann::json{{"status", status}}.dump());
    });
  }
  if (path == "/metrics") return handle_metrics(core, w);
  if (path.rfind("/admin/", 0) == 0) return handle_admin(core, r, w);
  const bool api = path.rfind("/v1/", 0) == 0 || path == "/tokenize" || path == "/detokenize";
  if (!api) return respond_error(w, {404, "not found: " + path, "", ""});
  if (!core->opt.api_keys.empty()) {
    // Compare with every key (no early exit) so timing tells nothing about which one is near.
    const std::string given = bearer(r);
    bool ok = false;
    for (const std::string& k : core->opt.api_keys) ok |= constant_time_equal(given, k);
    if (!ok) return respond_error(w, openai_error_invalid_api_key());
  }
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
      overhead(r.histogram("troupe:gateway_overhead_seconds",
                           "Time of a request outside the engine: end-to-end in the gateway minus the scheduler's time "
                           "(tokenizing, templates, detokenizing, actor hops, response writing)",
                           {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1})),
      running(r.gauge("troupe:num_requests_running", "Requests in the running batch")),
      waiting(r.gauge("troupe:num_requests_waiting", "Requests waiting to be scheduled")),
      kv_usage(r.gauge("troupe:kv_cache_usage_perc", "Fraction of KV-cache pages in use")) {}

gateway::gateway(caf::actor_system& sys, router_actor router, admin_actor admin, gateway_options opt)
    : core_(std::make_shared<gateway_core>()) {
  gateway_core& c = *core_;
  c.sys = &sys;
  c.router = std::move(router);
  c.admin = std::move(admin);
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

void gateway::set_accepting(bool accepting) { core_->accepting.store(accepting); }

void gateway::stop() {
  if (core_ && core_->server) core_->server->stop();
}

}  // namespace troupe
