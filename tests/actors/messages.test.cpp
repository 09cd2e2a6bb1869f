// Every message type survives CAF's binary serialization, both on its own and
// inside a caf::message (which only works for registered types: an
// unregistered one serializes to nothing without reporting an error).
#include "actors/messages.hpp"
#include "actors/system_config.hpp"

#include <doctest/doctest.h>

#include <caf/all.hpp>

#include "actors/errors.hpp"
#include "transport/wire_codec.hpp"

using namespace troupe;

namespace {

struct test_system {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  test_system() {
    configure_actor_system(cfg);  // as serve and node do
    sys = std::make_unique<caf::actor_system>(cfg);
  }
};

template <class T>
T round_trip(caf::actor_system& sys, T x) {
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  REQUIRE(!sink(x));
  REQUIRE(!buf.empty());
  T y;
  caf::binary_deserializer source{sys, buf};
  REQUIRE(!source(y));
  return y;
}

// The same value inside a caf::message, as it would cross a process boundary.
template <class T>
T message_round_trip(caf::actor_system& sys, const T& x) {
  caf::message m = caf::make_message(x);
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  REQUIRE(!sink(m));
  REQUIRE(buf.size() > 8);  // more than a header: the payload was written
  caf::message back;
  caf::binary_deserializer source{sys, buf};
  REQUIRE(!source(back));
  REQUIRE(back.match_elements<T>());
  return back.get_as<T>(0);
}

wire_sampling sample_sampling() {
  wire_sampling w;
  w.temperature = 0.7f;
  w.top_k = 40;
  w.top_p = 0.9f;
  w.min_p = 0.05f;
  w.repetition_penalty = 1.1f;
  w.frequency_penalty = 0.5f;
  w.presence_penalty = -0.25f;
  w.has_seed = true;
  w.seed = 0xfedcba9876543210ULL;
  return w;
}

void check_eq(const wire_sampling& a, const wire_sampling& b) {
  CHECK(a.temperature == b.temperature);
  CHECK(a.top_k == b.top_k);
  CHECK(a.top_p == b.top_p);
  CHECK(a.min_p == b.min_p);
  CHECK(a.repetition_penalty == b.repetition_penalty);
  CHECK(a.frequency_penalty == b.frequency_penalty);
  CHECK(a.presence_penalty == b.presence_penalty);
  CHECK(a.has_seed == b.has_seed);
  CHECK(a.seed == b.seed);
}

void check_eq(const token_logprob& a, const token_logprob& b) {
  CHECK(a.token == b.token);
  CHECK(a.logprob == b.logprob);
}

void check_eq(const std::vector<token_logprob>& a, const std::vector<token_logprob>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) check_eq(a[i], b[i]);
}

void check_eq(const std::vector<std::vector<token_logprob>>& a, const std::vector<std::vector<token_logprob>>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) check_eq(a[i], b[i]);
}

void check_eq(const generate_request& a, const generate_request& b) {
  CHECK(a.id == b.id);
  CHECK(a.prompt == b.prompt);
  check_eq(a.sampling, b.sampling);
  CHECK(a.max_tokens == b.max_tokens);
  CHECK(a.stop_token_ids == b.stop_token_ids);
  CHECK(a.ignore_eos == b.ignore_eos);
  CHECK(a.logprobs == b.logprobs);
  CHECK(a.sink == b.sink);
}

void check_eq(const token_event& a, const token_event& b) {
  CHECK(a.id == b.id);
  CHECK(a.tokens == b.tokens);
  check_eq(a.logprobs, b.logprobs);
  check_eq(a.top_logprobs, b.top_logprobs);
  CHECK(a.finish_reason == b.finish_reason);
  CHECK(a.error == b.error);
  CHECK(a.prompt_tokens == b.prompt_tokens);
  CHECK(a.completion_tokens == b.completion_tokens);
  CHECK(a.queue_seconds == b.queue_seconds);
  CHECK(a.engine_seconds == b.engine_seconds);
  CHECK(a.retryable == b.retryable);
}

void check_eq(const instance_state& a, const instance_state& b);

void check_eq(const cluster_state& a, const cluster_state& b) {
  REQUIRE(a.instances.size() == b.instances.size());
  for (size_t i = 0; i < a.instances.size(); ++i) check_eq(a.instances[i], b.instances[i]);
}

void check_eq(const instance_state& a, const instance_state& b) {
  CHECK(a.name == b.name);
  CHECK(a.role == b.role);
  CHECK(a.status == b.status);
  CHECK(a.running == b.running);
  CHECK(a.waiting == b.waiting);
  CHECK(a.kv_pages_total == b.kv_pages_total);
  CHECK(a.kv_pages_free == b.kv_pages_free);
  CHECK(a.chunked_prefill_size == b.chunked_prefill_size);
  CHECK(a.prompt_tokens_total == b.prompt_tokens_total);
  CHECK(a.generation_tokens_total == b.generation_tokens_total);
  CHECK(a.preemptions_total == b.preemptions_total);
  CHECK(a.restarts_total == b.restarts_total);
  CHECK(a.max_model_len == b.max_model_len);
}

void check_eq(const plan_entry& a, const plan_entry& b) {
  CHECK(a.seq == b.seq);
  CHECK(a.tokens == b.tokens);
  CHECK(a.sample == b.sample);
  check_eq(a.sampling, b.sampling);
  CHECK(a.prompt == b.prompt);
  CHECK(a.logprobs == b.logprobs);
  CHECK(a.generated == b.generated);
}

void check_eq(const step_plan& a, const step_plan& b) {
  CHECK(a.step == b.step);
  REQUIRE(a.entries.size() == b.entries.size());
  for (size_t i = 0; i < a.entries.size(); ++i) check_eq(a.entries[i], b.entries[i]);
  CHECK(a.release == b.release);
  CHECK(a.preempt == b.preempt);
  CHECK(a.reset == b.reset);
}

void check_eq(const step_result& a, const step_result& b) {
  CHECK(a.step == b.step);
  CHECK(a.tokens == b.tokens);
  check_eq(a.logprobs, b.logprobs);
  check_eq(a.top_logprobs, b.top_logprobs);
  CHECK(a.kv_pages_free == b.kv_pages_free);
}

template <class T>
void check_both(caf::actor_system& sys, const T& x) {
  check_eq(round_trip(sys, x), x);
  check_eq(message_round_trip(sys, x), x);
}

// Through the msgpack wire codec, driven by the same inspect() (no actor
// handles: those become remote references in the transport).
template <class T>
void check_wire(const T& x) {
  T copy = x;
  const std::vector<char> packed = wire_pack(copy);
  T back;
  std::string why;
  REQUIRE_MESSAGE(wire_unpack(packed, back, &why) == errc::ok, why);
  check_eq(back, x);
  // Every truncation is refused, never thrown or crashed.
  for (size_t n = 0; n < packed.size(); n += 1 + packed.size() / 64) {
    T part;
    CHECK(wire_unpack(std::vector<char>(packed.begin(), packed.begin() + static_cast<std::ptrdiff_t>(n)), part,
                      &why) == errc::errc_invalid_argument);
  }
}

}  // namespace

TEST_CASE("messages: every message type round-trips through CAF's binary serialization") {
  test_system ts;
  caf::actor_system& sys = *ts.sys;
  caf::scoped_actor self{sys};

  check_both(sys, sample_sampling());
  check_both(sys, token_logprob{1234, -0.75f});

  generate_request req;
  req.id = 0x1234567890ULL;
  req.prompt = {1, 2, 3, 4095};
  req.sampling = sample_sampling();
  req.max_tokens = 77;
  req.stop_token_ids = {2, 9};
  req.ignore_eos = true;
  req.logprobs = 5;
  req.sink = caf::actor_cast<caf::actor>(self);
  check_both(sys, req);

  token_event ev;
  ev.id = 42;
  ev.tokens = {7, 8};
  ev.logprobs = {{7, -0.5f}, {8, -1.5f}};
  ev.top_logprobs = {{{7, -0.5f}, {3, -2.0f}}, {{8, -1.5f}}};
  ev.finish_reason = "length";
  ev.error = "none";
  ev.prompt_tokens = 11;
  ev.completion_tokens = 2;
  ev.queue_seconds = 0.125;
  ev.engine_seconds = 0.5;
  ev.retryable = true;
  check_both(sys, ev);

  instance_state is;
  is.name = "instance-0";
  is.role = "mixed";
  is.status = "draining";
  is.running = 3;
  is.waiting = 4;
  is.kv_pages_total = 1000;
  is.kv_pages_free = 900;
  is.chunked_prefill_size = 256;
  is.prompt_tokens_total = 12345;
  is.generation_tokens_total = 678;
  is.preemptions_total = 9;
  is.restarts_total = 1;
  is.max_model_len = 1024;
  check_both(sys, is);

  plan_entry pe;
  pe.seq = 99;
  pe.tokens = {5, 6, 7};
  pe.sample = true;
  pe.sampling = sample_sampling();
  pe.prompt = {1, 2};
  pe.logprobs = 3;
  pe.generated = {10, 11};
  check_both(sys, pe);

  step_plan sp;
  sp.step = 17;
  sp.entries = {pe, pe};
  sp.entries[1].seq = 100;
  sp.release = {1, 2};
  sp.preempt = {3};
  sp.reset = true;
  check_both(sys, sp);

  step_result sr;
  sr.step = 17;
  sr.tokens = {4, 5};
  sr.logprobs = {{4, -0.1f}, {5, 0.0f}};
  sr.top_logprobs = {{{4, -0.1f}}, {}};
  sr.kv_pages_free = 55;
  check_both(sys, sr);

  const std::vector<uint64_t> ids{1, 2, 0xffffffffffffffffULL};
  CHECK(message_round_trip(sys, ids) == ids);

  cluster_state cs;
  cs.instances = {is, is};
  cs.instances[1].name = "instance-1";
  check_both(sys, cs);

  check_wire(sample_sampling());
  check_wire(ev);
  check_wire(is);
  check_wire(pe);
  check_wire(sp);
  check_wire(sr);
  check_wire(cs);
}
