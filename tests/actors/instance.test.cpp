// An instance (supervisor + chunk_scheduler + pipeline_stage) serving the
// demo model for real. The test's scoped_actor is the requests' sink; every
// wait is a receive with a deadline or a condition variable signalled by the
// stage's test hook, never a sleep. Greedy outputs are compared with
// troupe::generate running each prompt alone: batching, chunking,
// preemption and restarts must not change them.
#include "actors/instance.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/chunk_scheduler.hpp"
#include "actors/system_config.hpp"
#include "actors/errors.hpp"
#include "kernels/threads.hpp"
#include "model/generate.hpp"
#include "model/model.hpp"
#include "model/sampler.hpp"
#include "model/tokenizer.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

const std::string demo_dir = std::string(TROUPE_FIXTURES) + "/../../models/demo";

// What the stage was told, as seen by its test hook (on the stage's thread).
struct plan_log {
  struct entry {
    uint64_t seq;
    size_t n;
    bool sample;
  };
  struct plan {
    uint64_t step;
    std::vector<entry> entries;
    std::vector<uint64_t> release, preempt;
    bool reset;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<plan> plans;
  bool held = false;  // while set, the stage waits before running a step

  void record(const step_plan& p) {
    plan x{p.step, {}, p.release, p.preempt, p.reset};
    for (const plan_entry& e : p.entries) x.entries.push_back({e.seq, e.tokens.size(), e.sample});
    std::unique_lock<std::mutex> lock(mu);
    plans.push_back(std::move(x));
    cv.notify_all();
    cv.wait_for(lock, 10s, [&] { return !held; });
  }
  void hold(bool on) {
    std::lock_guard<std::mutex> lock(mu);
    held = on;
    cv.notify_all();
  }
  std::vector<plan> snapshot() {
    std::lock_guard<std::mutex> lock(mu);
    return plans;
  }
  // Waits until a plan releases `id`; returns that plan's step (0 on timeout).
  uint64_t wait_release(uint64_t id, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu);
    uint64_t step = 0;
    cv.wait_for(lock, timeout, [&] {
      for (const plan& p : plans)
        if (std::find(p.release.begin(), p.release.end(), id) != p.release.end()) step = p.step;
      return step != 0;
    });
    return step;
  }
  // The last step that ran an entry of `id`.
  uint64_t last_entry_step(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu);
    uint64_t step = 0;
    for (const plan& p : plans)
      for (const entry& e : p.entries)
        if (e.seq == id) step = p.step;
    return step;
  }
};

struct outcome {
  std::vector<int32_t> tokens;
  std::vector<token_logprob> logprobs;
  std::vector<std::vector<token_logprob>> top;
  token_event final;
  bool done = false;
  int events = 0;
  int after_final = 0;  // must stay 0: exactly one final event
};

struct fixture {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<caf::scoped_actor> self;
  std::shared_ptr<plan_log> plans = std::make_shared<plan_log>();
  chunk_scheduler_actor inst;
  std::map<uint64_t, outcome> out;
  int64_t total_pages = 0;

  explicit fixture(instance_options o = {}) {
    cpu_threads_set(1);  // the references run on this thread; 2 shared cores
    actors_log()->set_level(spdlog::level::warn);
    configure_actor_system(cfg);  // as serve and node do
    sys = std::make_unique<caf::actor_system>(cfg);
    self = std::make_unique<caf::scoped_actor>(*sys);
    o.model_dir = demo_dir;
    o.tunables.threads.value = 1;
    if (o.tunables.kv_cache_mib.value == 1024) o.tunables.kv_cache_mib.value = 8;
    stage_fault_hook user = o.test_hooks.stage_step;
    o.test_hooks.stage_step = [log = plans, user](const step_plan& p) {
      log->record(p);
      return user ? user(p) : errc::ok;
    };
    inst = instance_spawn(*sys, o);
    total_pages = state().kv_pages_total;
  }
  ~fixture() {
    (*self)->send_exit(inst, caf::exit_reason::user_shutdown);
    inst = chunk_scheduler_actor{};
    self.reset();
    sys.reset();
  }

  caf::actor sink() { return caf::actor_cast<caf::actor>(*self); }

  // Holds the stage at its next step while requests are queued, so that they
  // all meet in the following step whatever the machine's timing; a state
  // round trip (behind the generate messages) shows they have arrived.
  void hold() { plans->hold(true); }
  void release() {
    (void)state();
    plans->hold(false);
  }

  void submit(uint64_t id, const std::vector<int32_t>& prompt, int32_t max_tokens, bool ignore_eos = false,
              caf::actor to = {}) {
    generate_request r;
    r.id = id;
    r.prompt = prompt;
    r.sampling.temperature = 0.0f;
    r.max_tokens = max_tokens;
    r.ignore_eos = ignore_eos;
    r.sink = to ? to : sink();
    submit(std::move(r));
  }
  void submit(generate_request r) { (*self)->send(inst, generate_atom::value, std::move(r)); }

  void record(token_event& ev) {
    outcome& o = out[ev.id];
    if (o.done) {
      ++o.after_final;
      return;
    }
    ++o.events;
    o.tokens.insert(o.tokens.end(), ev.tokens.begin(), ev.tokens.end());
    o.logprobs.insert(o.logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
    o.top.insert(o.top.end(), ev.top_logprobs.begin(), ev.top_logprobs.end());
    if (!ev.finish_reason.empty()) {
      o.done = true;
      o.final = std::move(ev);
    }
  }
  // Receives events until `until` holds; false when the deadline passes first.
  bool pump(const std::function<bool()>& until, std::chrono::milliseconds timeout = 8000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!until()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left <= 0ms) return false;
      (*self)->receive([&](token_atom, token_event& ev) { record(ev); }, caf::after(left) >> [] {});
    }
    return true;
  }
  bool wait_done(const std::vector<uint64_t>& ids, std::chrono::milliseconds timeout = 8000ms) {
    return pump([&] { return std::all_of(ids.begin(), ids.end(), [&](uint64_t id) { return out[id].done; }); }, timeout);
  }
  bool wait_tokens(uint64_t id, size_t n) {
    return pump([&] { return out[id].tokens.size() >= n || out[id].done; });
  }

  instance_state state() {
    instance_state s;
    (*self)->request(inst, 5s, state_atom::value).receive([&](instance_state& x) { s = std::move(x); },
                                                        [&](caf::error& e) { FAIL("state: " << sys->render(e)); });
    return s;
  }
  // An admin request's reply: the value, or the error.
  template <class T>
  struct reply {
    std::optional<T> value;
    caf::error error;
  };
  template <class Atom, class T>
  reply<T> ask(Atom a, T x) {
    reply<T> r;
    (*self)->request(inst, 5s, a, x).receive([&](T v) { r.value = v; }, [&](caf::error& e) { r.error = std::move(e); });
    return r;
  }
};

std::vector<int32_t> encode(const std::string& text) {
  static const tokenizer tok = tokenizer::load(demo_dir);
  return tok.encode(text, true);
}

// The continuation of `prompt` alone, by the single-sequence driver (greedy
// unless sampling settings are given).
generate_result reference(model& m, const std::vector<int32_t>& prompt, int32_t max_tokens, bool ignore_eos = false,
                          const wire_sampling* sampled = nullptr) {
  kv_cache kv(m.kv_config(16, 128));
  generate_options o;
  o.max_tokens = max_tokens;
  o.ignore_eos = ignore_eos;
  o.sampling.temperature = 0.0f;
  if (sampled != nullptr) {
    o.sampling.temperature = sampled->temperature;
    o.sampling.top_p = sampled->top_p;
    o.sampling.frequency_penalty = sampled->frequency_penalty;
    o.sampling.seed = sampled->seed;
  }
  return generate(m, kv, 0, prompt, o);
}

// A seeded sampling request: its tokens depend only on its own RNG.
wire_sampling seeded(uint64_t seed) {
  wire_sampling w;
  w.temperature = 0.9f;
  w.top_p = 0.95f;
  w.frequency_penalty = 0.5f;
  w.has_seed = true;
  w.seed = seed;
  return w;
}

const char* texts[] = {
    "A fool and his money",
    "Q: What is the difference between a duck?\nA:",
    "Never put off until tomorrow",
    "Knock knock.\nWho's there?",
    "If at first you don't succeed,",
    "Q: Why did the chicken cross the road?\nA:",
    "He who laughs last",
    "Life is",
};

void check_usage(const outcome& o, size_t prompt_len) {
  CHECK(o.final.prompt_tokens == static_cast<int32_t>(prompt_len));
  CHECK(o.final.completion_tokens == static_cast<int32_t>(o.tokens.size()));
  CHECK(o.final.queue_seconds >= 0.0);
  CHECK(o.after_final == 0);
}

}  // namespace

TEST_CASE("instance: a greedy request equals troupe::generate, with vLLM logprobs") {
  fixture f;
  model m = model::load(demo_dir);
  const std::vector<int32_t> prompt = encode(texts[1]);
  const generate_result ref = reference(m, prompt, 64);
  REQUIRE(ref.finish_reason == "stop");
  f.submit(1, prompt, 64);
  generate_request lp;
  lp.id = 2;
  lp.prompt = prompt;
  lp.sampling.temperature = 0.0f;
  lp.max_tokens = 4;
  lp.logprobs = 3;
  lp.sink = f.sink();
  f.submit(lp);
  REQUIRE(f.wait_done({1, 2}));
  const outcome& o = f.out[1];
  CHECK(o.tokens == ref.tokens);
  CHECK(o.final.finish_reason == "stop");
  CHECK(o.final.error.empty());
  CHECK(o.events == static_cast<int>(ref.tokens.size()));  // one event per token, the last one final
  CHECK(o.logprobs.empty());
  check_usage(o, prompt.size());

  // logprobs: log-softmax of the raw logits; the greedy token is the top one.
  const outcome& l = f.out[2];
  REQUIRE(l.tokens.size() == 4);
  CHECK(std::equal(l.tokens.begin(), l.tokens.end(), ref.tokens.begin()));
  CHECK(l.final.finish_reason == "length");
  REQUIRE(l.logprobs.size() == 4);
  REQUIRE(l.top.size() == 4);
  kv_cache kv(m.kv_config(16, 16));
  std::vector<float> last, lsm(static_cast<size_t>(m.config().vocab_size));
  REQUIRE(prefill(m, kv, 0, prompt, 64, nullptr, &last) == errc::ok);
  sampler::log_softmax(last, lsm);
  CHECK(l.logprobs[0].token == l.tokens[0]);
  CHECK(l.logprobs[0].logprob == doctest::Approx(lsm[static_cast<size_t>(l.tokens[0])]).epsilon(1e-4));
  for (size_t i = 0; i < 4; ++i) {
    REQUIRE(l.top[i].size() == 3);
    CHECK(l.top[i][0].token == l.tokens[i]);
    CHECK(l.top[i][0].logprob == l.logprobs[i].logprob);
    CHECK(l.top[i][0].logprob >= l.top[i][1].logprob);
    CHECK(l.top[i][1].logprob >= l.top[i][2].logprob);
    CHECK(l.logprobs[i].logprob <= 0.0f);
  }
  const instance_state s = f.state();
  CHECK(s.status == "ready");
  CHECK(s.role == "mixed");
  CHECK(s.running == 0);
  CHECK(s.waiting == 0);
  CHECK(s.kv_pages_free == s.kv_pages_total);
  CHECK(s.max_model_len == 1024);
  CHECK(s.prompt_tokens_total == static_cast<int64_t>(2 * prompt.size()));
  CHECK(s.generation_tokens_total == static_cast<int64_t>(ref.tokens.size() + 4));
}

TEST_CASE("instance: 8 concurrent requests batch continuously and each equals its run alone") {
  instance_options opt;
  opt.tunables.chunked_prefill_size.value = 16;
  fixture f(opt);
  model m = model::load(demo_dir);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<generate_result> refs;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 8; ++i) {
    std::string text = texts[i];
    for (int k = 0; k < i % 4; ++k) text += std::string(" ") + texts[(i + k + 1) % 8];  // 1 to 40 tokens
    prompts.push_back(encode(text));
    refs.push_back(reference(m, prompts.back(), 6 + 5 * i));
    ids.push_back(100 + static_cast<uint64_t>(i));
  }
  f.hold();
  for (int i = 0; i < 8; ++i) f.submit(ids[i], prompts[i], 6 + 5 * i);
  f.release();
  REQUIRE(f.wait_done(ids));
  int64_t prompt_total = 0, gen_total = 0;
  for (int i = 0; i < 8; ++i) {
    const outcome& o = f.out[ids[i]];
    CAPTURE(i);
    CHECK(o.tokens == refs[i].tokens);
    CHECK(o.final.finish_reason == refs[i].finish_reason);
    check_usage(o, prompts[i].size());
    prompt_total += static_cast<int64_t>(prompts[i].size());
    gen_total += static_cast<int64_t>(o.tokens.size());
  }
  // The batching was real: mixed steps of decode tokens and prefill chunks, within the budget.
  bool mixed = false;
  size_t widest = 0;
  for (const plan_log::plan& p : f.plans->snapshot()) {
    size_t tokens = 0, decodes = 0, prefills = 0;
    for (const plan_log::entry& e : p.entries) {
      tokens += e.n;
      if (e.n == 1 && e.sample) ++decodes;
      if (e.n > 1) ++prefills;
    }
    CHECK(tokens <= 16);
    mixed = mixed || (decodes > 0 && prefills > 0);
    widest = std::max(widest, p.entries.size());
  }
  CHECK(mixed);
  CHECK(widest >= 4);
  const instance_state s = f.state();
  CHECK(s.running == 0);
  CHECK(s.kv_pages_free == s.kv_pages_total);
  CHECK(s.prompt_tokens_total == prompt_total);
  CHECK(s.generation_tokens_total == gen_total);
  CHECK(s.preemptions_total == 0);
}

TEST_CASE("instance: finish reasons: length at max_tokens, stop at eos and at stop_token_ids, ignore_eos") {
  fixture f;
  model m = model::load(demo_dir);
  const std::vector<int32_t> prompt = encode(texts[0]);
  const generate_result ref = reference(m, prompt, 64);
  REQUIRE(ref.finish_reason == "stop");
  REQUIRE(ref.tokens.size() > 6);
  const generate_result long_ref = reference(m, prompt, 40, true);
  REQUIRE(long_ref.tokens.size() == 40);
  size_t k = 3;  // a token that does not occur before position k
  while (std::find(ref.tokens.begin(), ref.tokens.begin() + static_cast<long>(k), ref.tokens[k]) !=
         ref.tokens.begin() + static_cast<long>(k))
    ++k;
  f.submit(1, prompt, 5);
  f.submit(2, prompt, 64);
  generate_request stop;
  stop.id = 3;
  stop.prompt = prompt;
  stop.sampling.temperature = 0.0f;
  stop.max_tokens = 64;
  stop.stop_token_ids = {ref.tokens[k]};
  stop.sink = f.sink();
  f.submit(stop);
  f.submit(4, prompt, 40, true);
  REQUIRE(f.wait_done({1, 2, 3, 4}));
  CHECK(f.out[1].final.finish_reason == "length");
  CHECK(f.out[1].tokens == std::vector<int32_t>(ref.tokens.begin(), ref.tokens.begin() + 5));
  CHECK(f.out[2].final.finish_reason == "stop");
  CHECK(f.out[2].tokens == ref.tokens);
  CHECK(f.out[3].final.finish_reason == "stop");
  CHECK(f.out[3].tokens == std::vector<int32_t>(ref.tokens.begin(), ref.tokens.begin() + static_cast<long>(k) + 1));
  CHECK(f.out[4].final.finish_reason == "length");
  CHECK(f.out[4].tokens == long_ref.tokens);
  for (uint64_t id : {1, 2, 3, 4}) check_usage(f.out[id], prompt.size());
}

TEST_CASE("instance: invalid requests end at once with an error event") {
  instance_options opt;
  opt.tunables.kv_page_size.value = 4;
  opt.kv_pages = 8;  // 32 tokens: max_model_len 32
  fixture f(opt);
  CHECK(f.state().max_model_len == 32);
  f.submit(1, {}, 4);
  f.submit(2, std::vector<int32_t>(32, 5), 4);  // no room for a completion
  f.submit(3, {1, 4096}, 4);                    // outside the vocabulary
  f.submit(4, {1, 2}, 0);
  generate_request bad;
  bad.id = 5;
  bad.prompt = {1, 2};
  bad.sampling.top_p = 1.5f;
  bad.sink = f.sink();
  f.submit(bad);
  f.submit(6, std::vector<int32_t>(20, 5), 100, true);  // runs into the context: "length"
  REQUIRE(f.wait_done({1, 2, 3, 4, 5, 6}));
  CHECK(f.out[1].final.error == "the prompt is empty");
  CHECK(f.out[2].final.error.find("at most 32 tokens") != std::string::npos);
  CHECK(f.out[3].final.error.find("vocabulary") != std::string::npos);
  CHECK(f.out[4].final.error.find("max_tokens") != std::string::npos);
  CHECK(f.out[5].final.error.find("top_p") != std::string::npos);
  for (uint64_t id : {1, 2, 3, 4, 5}) {
    CHECK(f.out[id].final.finish_reason == "error");
    CHECK(f.out[id].tokens.empty());
  }
  CHECK(f.out[6].final.finish_reason == "length");
  CHECK(f.out[6].tokens.size() == 12);
  CHECK(f.state().kv_pages_free == 8);
}

TEST_CASE("instance: a tiny KV cache forces preemption; recomputation keeps outputs identical") {
  instance_options opt;
  opt.tunables.kv_page_size.value = 4;
  opt.kv_pages = 12;  // 48 tokens for 8 requests that each grow to about 30
  fixture f(opt);
  model m = model::load(demo_dir);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<generate_result> refs;
  std::vector<uint64_t> ids;
  f.hold();
  for (int i = 0; i < 8; ++i) {
    prompts.push_back(encode(texts[i]));
    ids.push_back(200 + static_cast<uint64_t>(i));
    generate_request r;
    r.id = ids.back();
    r.prompt = prompts.back();
    r.max_tokens = 24;
    r.ignore_eos = true;
    r.sink = f.sink();
    r.sampling.temperature = 0.0f;
    if (i >= 6) r.sampling = seeded(1000 + static_cast<uint64_t>(i));  // the sampler (RNG, counts) survives preemption
    refs.push_back(reference(m, prompts.back(), 24, true, i >= 6 ? &r.sampling : nullptr));
    f.submit(std::move(r));
  }
  f.release();
  REQUIRE(f.wait_done(ids, 15000ms));
  for (int i = 0; i < 8; ++i) {
    CAPTURE(i);
    const outcome& o = f.out[ids[i]];
    CHECK(o.final.finish_reason == "length");
    CHECK(o.tokens == refs[i].tokens);
    check_usage(o, prompts[i].size());
  }
  const instance_state s = f.state();
  CHECK(s.preemptions_total > 0);
  CHECK(s.kv_pages_free == 12);
  size_t preempted = 0;
  for (const plan_log::plan& p : f.plans->snapshot()) preempted += p.preempt.size();
  CHECK(preempted == static_cast<size_t>(s.preemptions_total));
  for (uint64_t id : {206, 207}) CHECK(f.plans->last_entry_step(id) > 0);
  MESSAGE("preemptions: " << s.preemptions_total);
}

TEST_CASE("instance: cancel ends a request with abort and frees its pages in the next step") {
  fixture f;
  const std::vector<int32_t> prompt = encode(texts[2]);
  f.submit(1, prompt, 500, true);
  REQUIRE(f.wait_tokens(1, 3));
  (*f.self)->send(f.inst, cancel_atom::value, uint64_t{1});
  REQUIRE(f.wait_done({1}));
  const outcome& o = f.out[1];
  CHECK(o.final.finish_reason == "abort");
  CHECK(o.final.error.empty());
  CHECK(o.tokens.size() < 500);
  check_usage(o, prompt.size());
  const uint64_t released = f.plans->wait_release(1, 5000ms);
  REQUIRE(released != 0);
  CHECK(released == f.plans->last_entry_step(1) + 1);  // the very next step
  const instance_state s = f.state();
  CHECK(s.running == 0);
  CHECK(s.kv_pages_free == f.total_pages);
  // Cancelling a waiting request, an unknown one, or one already finished is harmless.
  (*f.self)->send(f.inst, cancel_atom::value, uint64_t{1});
  (*f.self)->send(f.inst, cancel_atom::value, uint64_t{999});
  f.submit(2, prompt, 8);
  REQUIRE(f.wait_done({2}));
  CHECK(f.out[2].final.finish_reason != "error");
  CHECK(f.out[1].after_final == 0);
}

TEST_CASE("instance: a sink that dies cancels its request") {
  fixture f;
  // A sink that forwards to the test, so that it can be killed while the request runs.
  caf::actor test = f.sink();
  caf::actor sink = f.sys->spawn([test](caf::event_based_actor*) -> caf::behavior {
    return {[test](token_atom, const token_event& ev) { caf::anon_send(test, token_atom::value, ev); }};
  });
  const std::vector<int32_t> prompt = encode(texts[3]);
  f.submit(7, prompt, 500, true, sink);
  REQUIRE(f.wait_tokens(7, 2));
  caf::anon_send_exit(sink, caf::exit_reason::kill);
  REQUIRE(f.plans->wait_release(7, 5000ms) != 0);
  const instance_state s = f.state();
  CHECK(s.running == 0);
  CHECK(s.kv_pages_free == f.total_pages);
  CHECK(s.generation_tokens_total < 500);
}

TEST_CASE("instance: drain rejects new requests and lets running ones finish; undrain resumes") {
  fixture f;
  model m = model::load(demo_dir);
  const std::vector<int32_t> prompt = encode(texts[4]);
  const generate_result ref = reference(m, prompt, 60, true);
  f.submit(1, prompt, 60, true);
  REQUIRE(f.wait_tokens(1, 1));
  REQUIRE(f.ask(drain_atom::value, true).value == true);
  CHECK(f.state().status == "draining");
  f.submit(2, prompt, 8);
  REQUIRE(f.wait_done({2}));
  CHECK(f.out[2].final.finish_reason == "error");
  CHECK(f.out[2].final.error == "instance is draining");
  CHECK_FALSE(f.out[1].done);  // answered while 1 still runs
  REQUIRE(f.wait_done({1}));
  CHECK(f.out[1].final.finish_reason == "length");
  CHECK(f.out[1].tokens == ref.tokens);
  REQUIRE(f.ask(drain_atom::value, false).value == false);
  CHECK(f.state().status == "ready");
  f.submit(3, prompt, 8);
  REQUIRE(f.wait_done({3}));
  CHECK(f.out[3].final.finish_reason == "length");
}

TEST_CASE("instance: the chunked-prefill budget changes live") {
  fixture f;
  model m = model::load(demo_dir);
  const std::vector<int32_t> prompt = encode(std::string(texts[1]) + " " + texts[5]);
  REQUIRE(prompt.size() > 20);
  const generate_result ref = reference(m, prompt, 6, true);
  const auto bad = f.ask(prefill_sz_atom::value, int64_t{0});
  REQUIRE_FALSE(bad.value);
  CHECK(errc_from_caf(bad.error) == errc::errc_invalid_argument);
  REQUIRE(f.ask(prefill_sz_atom::value, int64_t{5}).value == int64_t{5});
  CHECK(f.state().chunked_prefill_size == 5);
  f.submit(1, prompt, 6, true);
  REQUIRE(f.wait_done({1}));
  CHECK(f.out[1].tokens == ref.tokens);
  size_t widest = 0, entries = 0;
  for (const plan_log::plan& p : f.plans->snapshot())
    for (const plan_log::entry& e : p.entries) {
      widest = std::max(widest, e.n);
      ++entries;
    }
  CHECK(widest == 5);
  CHECK(entries == (prompt.size() + 4) / 5 + 5);  // prefill chunks of 5 (the last samples), then 5 decodes
  REQUIRE(f.ask(prefill_sz_atom::value, int64_t{512}).value == int64_t{512});
  f.submit(2, prompt, 6, true);
  REQUIRE(f.wait_done({2}));
  CHECK(f.out[2].tokens == ref.tokens);
  bool whole = false;
  for (const plan_log::plan& p : f.plans->snapshot())
    for (const plan_log::entry& e : p.entries) whole = whole || (e.seq == 2 && e.n == prompt.size());
  CHECK(whole);
}

TEST_CASE("instance: a stage that throws is restarted; exactly its step's requests fail, serving goes on") {
  instance_options opt;
  opt.test_hooks.stage_step = [](const step_plan& p) {
    for (const plan_entry& e : p.entries)
      if (e.seq == 666) throw std::runtime_error("injected fault on request 666");
    return errc::ok;
  };
  fixture f(opt);
  model m = model::load(demo_dir);
  const std::vector<int32_t> prompt = encode(texts[6]);
  const generate_result ref = reference(m, prompt, 12, true);
  f.submit(1, prompt, 200, true);
  REQUIRE(f.wait_tokens(1, 1));
  f.submit(666, prompt, 8);  // joins 1's decode step, which then throws
  REQUIRE(f.wait_done({1, 666}));
  for (uint64_t id : {1, 666}) {
    CAPTURE(id);
    CHECK(f.out[id].final.finish_reason == "error");
    CHECK(f.out[id].final.error.find("stage failed") != std::string::npos);
    CHECK(f.out[id].final.error.find("injected fault on request 666") != std::string::npos);
    CHECK(f.out[id].final.error.find("restarted") != std::string::npos);
  }
  f.submit(2, prompt, 12, true);
  REQUIRE(f.wait_done({2}));
  CHECK(f.out[2].final.finish_reason == "length");
  CHECK(f.out[2].tokens == ref.tokens);
  const instance_state s = f.state();
  CHECK(s.restarts_total == 1);
  CHECK(s.status == "ready");
  CHECK(s.kv_pages_free == s.kv_pages_total);
  CHECK(f.out[1].after_final == 0);
}

TEST_CASE("instance: a step that fails with an error fails its requests; the stage lives on") {
  instance_options opt;
  opt.test_hooks.stage_step = [](const step_plan& p) {
    for (const plan_entry& e : p.entries)
      if (e.seq == 777) return errc::errc_kv_exhausted;
    return errc::ok;
  };
  fixture f(opt);
  const std::vector<int32_t> prompt = encode(texts[7]);
  f.submit(1, prompt, 200, true);
  REQUIRE(f.wait_tokens(1, 1));
  f.submit(777, prompt, 8);
  REQUIRE(f.wait_done({1, 777}));
  for (uint64_t id : {1, 777}) {
    CHECK(f.out[id].final.finish_reason == "error");
    CHECK(f.out[id].final.error.find("step failed: troupe.kv_exhausted") != std::string::npos);
  }
  f.submit(2, prompt, 6, true);
  REQUIRE(f.wait_done({2}));
  CHECK(f.out[2].final.finish_reason == "length");
  const instance_state s = f.state();
  CHECK(s.restarts_total == 0);
  CHECK(s.kv_pages_free == s.kv_pages_total);
}

TEST_CASE("instance: a scheduler that dies is restarted; its requests fail, serving goes on") {
  instance_options opt;
  opt.test_hooks.scheduler_generate = [](const generate_request& r) {
    if (r.id == 888) throw std::runtime_error("injected scheduler fault");
  };
  fixture f(opt);
  model m = model::load(demo_dir);
  const std::vector<int32_t> prompt = encode(texts[5]);
  const generate_result ref = reference(m, prompt, 10, true);
  f.submit(1, prompt, 300, true);
  REQUIRE(f.wait_tokens(1, 1));
  REQUIRE(f.ask(prefill_sz_atom::value, int64_t{7}).value == int64_t{7});
  f.submit(888, prompt, 8);
  REQUIRE(f.wait_done({1, 888}));
  for (uint64_t id : {1, 888}) {
    CHECK(f.out[id].final.finish_reason == "error");
    CHECK(f.out[id].final.error.find("scheduler failed: chunk scheduler: injected scheduler fault; restarted") !=
          std::string::npos);
  }
  f.submit(2, prompt, 10, true);
  REQUIRE(f.wait_done({2}));
  CHECK(f.out[2].tokens == ref.tokens);
  const instance_state s = f.state();
  CHECK(s.restarts_total == 1);
  CHECK(s.chunked_prefill_size == 7);  // the new scheduler kept the live setting
  CHECK(s.kv_pages_free == s.kv_pages_total);
  bool reset = false;
  for (const plan_log::plan& p : f.plans->snapshot()) reset = reset || (p.reset && p.entries.empty());
  CHECK(reset);  // the new scheduler cleared the stage before its first request
  CHECK(f.out[1].after_final == 0);
}

TEST_CASE("instance: a stage that keeps crashing hits the restart limit; the instance fails and refuses work") {
  instance_options opt;
  opt.tunables.max_restarts.value = 2;
  opt.test_hooks.stage_step = [](const step_plan& p) {
    for (const plan_entry& e : p.entries)
      if (e.seq >= 900) throw std::runtime_error("crash loop");
    return errc::ok;
  };
  fixture f(opt);
  const std::vector<int32_t> prompt = encode(texts[1]);
  for (uint64_t id : {900, 901}) {
    f.submit(id, prompt, 4);
    REQUIRE(f.wait_done({id}));
    CHECK(f.out[id].final.error.find("restarted") != std::string::npos);
    CHECK(f.state().status == "ready");
  }
  f.submit(902, prompt, 4);
  REQUIRE(f.wait_done({902}));
  CHECK_MESSAGE(f.out[902].final.error.find("restart limit reached (2 restarts within 60 s)") != std::string::npos,
                f.out[902].final.error);
  const instance_state s = f.state();
  CHECK(s.status == "failed");
  CHECK(s.restarts_total == 2);
  f.submit(3, prompt, 4);  // harmless, but the instance is gone: refused, retryable (the router tries elsewhere)
  REQUIRE(f.wait_done({3}));
  CHECK(f.out[3].final.finish_reason == "error");
  CHECK(f.out[3].final.retryable);
}

TEST_CASE("instance: a scheduler that keeps crashing hits the restart limit; the instance fails and refuses work") {
  instance_options opt;
  opt.tunables.max_restarts.value = 1;
  opt.test_hooks.scheduler_generate = [](const generate_request& r) {
    if (r.id >= 900) throw std::runtime_error("scheduler bug");
  };
  fixture f(opt);
  const std::vector<int32_t> prompt = encode(texts[1]);
  f.submit(900, prompt, 4);
  REQUIRE(f.wait_done({900}));
  CHECK(f.out[900].final.error.find("restarted") != std::string::npos);
  f.submit(1, prompt, 4);
  REQUIRE(f.wait_done({1}));
  CHECK(f.out[1].final.finish_reason == "length");  // the restarted scheduler serves
  f.submit(901, prompt, 4);
  REQUIRE(f.wait_done({901}));
  CHECK(f.out[901].final.error.find("restart limit reached (1 restarts within 60 s)") != std::string::npos);
  CHECK(f.state().status == "failed");
  f.submit(2, prompt, 4);
  REQUIRE(f.wait_done({2}));
  CHECK(f.out[2].final.retryable);
  CHECK(f.out[2].final.error.find("instance failed") != std::string::npos);
}
