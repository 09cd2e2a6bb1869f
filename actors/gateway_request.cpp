// The request actor: one per completion request, the sink of its choices'
// token events. It owns everything per request (detokenizers, stop-string
// matching, logprob text, usage) so the scheduler stays token-only and the
// HTTP threads never wait. It ends (quit) once the answer is written; if the
// client goes away first, the HTTP server's on_close kills it and the
// scheduler, which monitors sinks, cancels its generate requests.
#include <algorithm>
#include <chrono>
#include <optional>
#include <unordered_map>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "actors/chunk_scheduler.hpp"
#include "actors/gateway_core.hpp"
#include "actors/openai_response.hpp"
#include "model/detokenizer.hpp"

namespace troupe {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct choice_state {
  uint64_t id = 0;
  int32_t index = 0;
  std::optional<detokenizer> detok;
  std::string text;          // generated text so far (stop strings cut off)
  size_t streamed = 0;       // bytes of text already sent (streaming)
  bool role_sent = false;    // chat streaming: the role delta went out
  bool stopped = false;      // a stop string matched: later tokens are ignored
  bool done = false;         // the final event arrived
  std::string finish;        // finish_reason
  std::string error;
  int32_t completion_tokens = 0;
  bool retryable = false;    // refused before it started (HTTP 503)
  double engine_seconds = 0.0;
  supervisor_actor instance;  // the instance the router chose (cancels go there)
  bool cancel_pending = false;  // stopped before the router's answer arrived
  std::vector<openai_token_logprob> logprobs;
  clock_type::time_point last_token{};
};

struct request_state {
  std::shared_ptr<gateway_core> core;
  openai_request req;
  std::shared_ptr<http_response_writer> writer;
  std::vector<choice_state> choices;
  std::unordered_map<uint64_t, size_t> by_id;
  int64_t prompt_tokens = 0;
  std::string oid;
  clock_type::time_point t0 = clock_type::now();
  bool first_token_seen = false;
  size_t remaining = 0;
  size_t max_stop = 0;  // longest stop string, bytes
  static inline const char* name = "troupe.request";
};

using request_actor = caf::stateful_actor<request_state>;

bool is_chat(const request_state& s) { return s.req.endpoint == openai_endpoint::endpoint_chat; }

std::string object_name(const request_state& s) { return is_chat(s) ? "chat.completion.chunk" : "text_completion"; }

// Text of the choice that may be sent now: all of it once finished, else all
// but the tail that could still be the start of a stop string.
size_t sendable(const request_state& s, const choice_state& c) {
  if (c.done || c.stopped || s.max_stop == 0) return c.text.size();
  const size_t hold = s.max_stop - 1;
  size_t n = c.text.size() > hold ? c.text.size() - hold : 0;
  while (n > c.streamed && n < c.text.size() && (static_cast<unsigned char>(c.text[n]) & 0xC0) == 0x80) --n;
  return std::max(n, c.streamed);
}

// Appends text and cuts it at the first stop string; true when one matched.
bool append_checking_stop(request_state& s, choice_state& c, const std::string& piece) {
  const size_t from = c.text.size() > s.max_stop ? c.text.size() - s.max_stop : 0;
  c.text += piece;
  size_t best = std::string::npos, best_len = 0;
  for (const std::string& stop : s.req.stop) {
    const size_t p = c.text.find(stop, from);
    if (p != std::string::npos && p < best) best = p, best_len = stop.size();
  }
  if (best == std::string::npos) return false;
  c.text.resize(s.req.include_stop_str_in_output ? best + best_len : best);
  c.streamed = std::min(c.streamed, c.text.size());
  return true;
}

void stream_choice_delta(request_actor* self, choice_state& c, bool final_chunk) {
  request_state& s = self->state;
  const size_t n = sendable(s, c);
  const std::string core_model = s.req.model;
  openai_choice ch;
  ch.index = c.index;
  if (is_chat(s) && !c.role_sent) {
    c.role_sent = true;
    s.writer->write(sse_event(openai_chat_chunk(s.oid, s.core->created, core_model, {ch}, openai_delta::delta_role,
                                                s.req.include_usage)));
  }
  if (n > c.streamed) {
    ch.text = c.text.substr(c.streamed, n - c.streamed);
    c.streamed = n;
    if (s.req.logprobs >= 0) {
      ch.has_logprobs = true;
      ch.logprobs = std::move(c.logprobs);
      c.logprobs.clear();
    }
    s.writer->write(sse_event(is_chat(s) ? openai_chat_chunk(s.oid, s.core->created, core_model, {ch},
                                                             openai_delta::delta_content, s.req.include_usage)
                                         : openai_completion_chunk(s.oid, s.core->created, core_model, {ch},
                                                                   s.req.include_usage)));
  }
  if (final_chunk) {
    openai_choice fin;
    fin.index = c.index;
    fin.finish_reason = c.finish;
    s.writer->write(sse_event(is_chat(s) ? openai_chat_chunk(s.oid, s.core->created, core_model, {fin},
                                                             openai_delta::delta_empty, s.req.include_usage)
                                         : openai_completion_chunk(s.oid, s.core->created, core_model, {fin},
                                                                   s.req.include_usage)));
  }
}

void finish_request(request_actor* self) {
  request_state& s = self->state;
  gateway_metrics& m = *s.core->metrics;
  openai_usage usage{s.prompt_tokens, 0};
  std::string error;
  int status = 500;
  double engine = 0.0;
  for (const choice_state& c : s.choices) {
    usage.completion_tokens += c.completion_tokens;
    engine = std::max(engine, c.engine_seconds);
    if (!c.error.empty() && error.empty()) {
      error = c.error;
      status = c.retryable ? 503 : 500;
    }
  }
  (error.empty() ? m.requests_ok : m.requests_failed).inc();
  if (s.req.stream) {
    if (!error.empty()) s.writer->write(sse_event(openai_error_body(status, error)));
    if (s.req.include_usage)
      s.writer->write(sse_event(openai_usage_chunk(object_name(s), s.oid, s.core->created, s.req.model, usage)));
    s.writer->write(std::string(sse_done));
    s.writer->finish();
  } else if (!error.empty()) {
    s.writer->respond(status, "application/json", openai_error_body(status, error));
  } else {
    std::vector<openai_choice> out;
    for (choice_state& c : s.choices) {
      openai_choice ch;
      ch.index = c.index;
      ch.text = c.text;
      ch.finish_reason = c.finish;
      ch.has_logprobs = s.req.logprobs >= 0;
      ch.logprobs = std::move(c.logprobs);
      out.push_back(std::move(ch));
    }
    s.writer->respond(200, "application/json",
                      is_chat(s) ? openai_chat_completion(s.oid, s.core->created, s.req.model, out, usage)
                                 : openai_completion(s.oid, s.core->created, s.req.model, out, usage));
  }
  // The gateway's own share: everything but the scheduler's time (from its
  // receipt of the request to the final event), measured after the last write.
  const double e2e = seconds(s.t0, clock_type::now());
  m.e2e.observe(e2e);
  if (engine > 0.0) m.overhead.observe(std::max(0.0, e2e - engine));
  self->quit();
}

void on_tokens(request_actor* self, const token_event& ev) {
  request_state& s = self->state;
  auto it = s.by_id.find(ev.id);
  if (it == s.by_id.end()) return;
  choice_state& c = s.choices[it->second];
  if (c.done) return;
  gateway_metrics& m = *s.core->metrics;
  const auto now = clock_type::now();
  if (!ev.tokens.empty()) {
    if (!s.first_token_seen) {
      s.first_token_seen = true;
      m.ttft.observe(seconds(s.t0, now));
    } else if (c.last_token.time_since_epoch().count() != 0) {
      m.itl.observe(seconds(c.last_token, now));
    }
    c.last_token = now;
  }
  for (size_t i = 0; i < ev.tokens.size() && !c.stopped; ++i) {
    const int32_t t = ev.tokens[i];
    ++c.completion_tokens;
    m.generation_tokens.inc();
    if (s.req.logprobs >= 0 && i < ev.logprobs.size()) {
      openai_token_logprob lp;
      lp.token = s.core->tok->decode(std::span<const int32_t>(&t, 1), false);
      lp.logprob = ev.logprobs[i].logprob;
      if (i < ev.top_logprobs.size())
        for (const token_logprob& alt : ev.top_logprobs[i])
          lp.top.emplace_back(s.core->tok->decode(std::span<const int32_t>(&alt.token, 1), false), alt.logprob);
      c.logprobs.push_back(std::move(lp));
    }
    if (append_checking_stop(s, c, c.detok->push(t))) {
      c.stopped = true;
      c.finish = "stop";
      if (c.instance) self->send(c.instance, cancel_atom::value, c.id);
      else c.cancel_pending = true;
    }
  }
  if (!ev.finish_reason.empty()) {
    if (!c.stopped) {
      append_checking_stop(s, c, c.detok->flush());
      c.finish = ev.finish_reason == "abort" ? "stop" : ev.finish_reason;
      if (ev.finish_reason == "error") c.error = ev.error.empty() ? "generation failed" : ev.error;
      c.retryable = ev.retryable;
    }
    c.engine_seconds = ev.engine_seconds;
    c.done = true;
    --s.remaining;
  }
  if (s.req.stream && s.writer->closed() == false) stream_choice_delta(self, c, c.done && c.error.empty());
  if (s.remaining == 0) finish_request(self);
}

// Sends one choice's request through the router and remembers the instance
// that took it; a router that does not answer fails the choice.
void route(request_actor* self, generate_request g) {
  const uint64_t id = g.id;
  self->request(self->state.core->router, caf::infinite, generate_atom::value, std::move(g))
      .then(
          [self, id](const supervisor_actor& inst) {
            auto it = self->state.by_id.find(id);
            if (it == self->state.by_id.end()) return;
            choice_state& c = self->state.choices[it->second];
            c.instance = inst;
            // An instance on another node can vanish with its node: the
            // monitor turns that into an error instead of a request that hangs.
            if (inst) self->monitor(inst);
            if (c.cancel_pending && inst) self->send(inst, cancel_atom::value, id);
          },
          [self, id](const caf::error& e) {
            token_event ev;
            ev.id = id;
            ev.finish_reason = "error";
            ev.error = "the router failed: " + caf::to_string(e);
            on_tokens(self, ev);
          });
}

// Tokenizes the prompts (rendering the chat template), settles max_tokens and
// sends one generate request per choice. Returns an error to answer with.
std::optional<openai_error> start(request_actor* self) {
  request_state& s = self->state;
  const gateway_core& core = *s.core;
  std::vector<std::vector<int32_t>> prompts;
  if (is_chat(s)) {
    if (!core.tpl) return openai_error{400, "this model has no usable chat template: " + core.tpl_error, "messages", ""};
    std::string text;
    try {
      text = core.tpl->render(s.req.chat.messages_json, s.req.chat.add_generation_prompt, s.req.chat.extra_json);
    } catch (const std::exception& e) {
      return openai_error{400, e.what(), "messages", ""};
    }
    prompts.push_back(core.tok->encode(text, s.req.add_special_tokens));
  } else {
    for (const openai_prompt& p : s.req.prompts)
      prompts.push_back(p.is_tokens ? p.tokens : core.tok->encode(p.text, s.req.add_special_tokens));
  }
  for (const std::string& stop : s.req.stop) s.max_stop = std::max(s.max_stop, stop.size());
  std::vector<int32_t> max_tokens(prompts.size(), s.req.max_tokens);
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) return openai_error{400, "the prompt is empty", is_chat(s) ? "messages" : "prompt", ""};
    if (auto e = openai_resolve_max_tokens(max_tokens[i], static_cast<int64_t>(prompts[i].size()),
                                           core.opt.max_model_len, is_chat(s)))
      return e;
  }
  int32_t index = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    s.prompt_tokens += static_cast<int64_t>(prompts[i].size());
    s.core->metrics->prompt_tokens.inc(static_cast<double>(prompts[i].size()));
    for (int32_t j = 0; j < s.req.n; ++j, ++index) {
      choice_state c;
      c.id = s.core->next_id.fetch_add(1);
      c.index = index;
      c.detok.emplace(*core.tok, s.req.skip_special_tokens);
      s.by_id[c.id] = s.choices.size();
      generate_request g;
      g.id = c.id;
      g.prompt = prompts[i];
      g.sampling = sampling_to_wire(s.req.sampling, static_cast<uint64_t>(index));
      g.max_tokens = max_tokens[i];
      g.stop_token_ids = s.req.stop_token_ids;
      g.ignore_eos = s.req.ignore_eos;
      g.logprobs = s.req.logprobs;
      g.sink = caf::actor_cast<caf::actor>(self);
      s.choices.push_back(std::move(c));
      route(self, std::move(g));
    }
  }
  s.prompt_tokens *= s.req.n;
  s.remaining = s.choices.size();
  return std::nullopt;
}

caf::behavior request_behavior(request_actor* self, std::shared_ptr<gateway_core> core, openai_request req,
                               std::shared_ptr<http_response_writer> writer) {
  self->state.core = std::move(core);
  self->state.req = std::move(req);
  self->state.writer = std::move(writer);
  self->state.oid = openai_make_id(is_chat(self->state) ? "chatcmpl-" : "cmpl-");
  if (self->state.req.model.empty()) self->state.req.model = self->state.core->opt.model_name;
  // The handler counted this request in; however it ends, count it out.
  self->attach_functor([core = self->state.core] { core->in_flight.fetch_sub(1); });
  self->set_exception_handler([self](std::exception_ptr& ep) -> caf::error {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    self->state.writer->respond(500, "application/json", openai_error_body(500, what));
    return caf::make_error(caf::sec::runtime_error, what);
  });
  if (auto err = start(self)) {
    self->state.writer->respond(err->status, "application/json", openai_error_body(*err));
    self->quit();
    return {};
  }
  if (self->state.req.stream) self->state.writer->start_stream(200, "text/event-stream");
  self->set_down_handler([self](caf::down_msg& dm) {
    const std::string why = dm.reason ? error_text(self->system(), dm.reason) : "it exited";
    std::vector<uint64_t> lost;
    for (const choice_state& c : self->state.choices)
      if (!c.done && c.instance && c.instance.address() == dm.source) lost.push_back(c.id);
    for (const uint64_t id : lost) {
      token_event ev;
      ev.id = id;
      ev.finish_reason = "error";
      ev.error = "the instance serving this request failed: " + why;
      on_tokens(self, ev);
    }
  });
  return {
      [self](token_atom, const token_event& ev) { on_tokens(self, ev); },
  };
}

}  // namespace

void gateway_spawn_request(const std::shared_ptr<gateway_core>& core, openai_request req,
                           std::shared_ptr<http_response_writer> writer) {
  auto w = writer;
  caf::actor a = core->sys->spawn(request_behavior, core, std::move(req), std::move(writer));
  // A client that goes away ends its request actor; the scheduler sees the
  // sink go down and cancels the generation.
  w->on_close([a] { caf::anon_send_exit(a, caf::exit_reason::user_shutdown); });
}

}  // namespace troupe
