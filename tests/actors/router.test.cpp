// The router in front of real instances (demo model): it reports starting,
// ready and failed instances, refuses work (retryably) when none can take it,
// routes to the least-loaded ready one, and forgets an instance that dies.
#include "actors/router.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <set>
#include <string>
#include <thread>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/admin.hpp"
#include "actors/chunk_scheduler.hpp"
#include "actors/system_config.hpp"
#include "actors/errors.hpp"
#include "actors/instance.hpp"
#include "kernels/threads.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

const std::string demo_dir = std::string(TROUPE_FIXTURES) + "/../../models/demo";

struct harness {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<caf::scoped_actor> self;
  router_actor router;
  harness() {
    cpu_threads_set(1);
    actors_log()->set_level(spdlog::level::warn);
    configure_actor_system(cfg);  // as serve and node do
    sys = std::make_unique<caf::actor_system>(cfg);
    self = std::make_unique<caf::scoped_actor>(*sys);
    router = router_spawn(*sys);
  }
  ~harness() {
    (*self)->send_exit(router, caf::exit_reason::user_shutdown);
    self.reset();
    sys.reset();
  }
  supervisor_actor start(const std::string& name) {
    instance_options o;
    o.name = name;
    o.model_dir = demo_dir;
    o.tunables.threads.value = 1;
    o.tunables.kv_cache_mib.value = 4;
    return instance_spawn(*sys, o);
  }
  void join(const std::string& name, supervisor_actor h, const std::string& err = "") {
    (*self)->send(router, join_atom::value, instance_join{name, "mixed", std::move(h), err});
  }
  cluster_state state() {
    cluster_state cs;
    (*self)->request(router, 5s, state_atom::value)
        .receive([&](cluster_state& x) { cs = std::move(x); }, [](caf::error& e) { FAIL(caf::to_string(e)); });
    return cs;
  }
  // Sends one 3-token request; returns the instance the router chose and the final event.
  std::pair<supervisor_actor, token_event> generate(uint64_t id) {
    generate_request r;
    r.id = id;
    r.prompt = {1, 2, 3};
    r.max_tokens = 3;
    r.ignore_eos = true;
    r.sink = caf::actor_cast<caf::actor>(*self);
    supervisor_actor chosen;
    (*self)->request(router, 5s, generate_atom::value, r)
        .receive([&](supervisor_actor& h) { chosen = std::move(h); }, [](caf::error& e) { FAIL(caf::to_string(e)); });
    token_event last;
    bool done = false;
    while (!done)
      (*self)->receive([&](token_atom, token_event& ev) { done = !ev.finish_reason.empty(), last = std::move(ev); },
                       caf::after(10s) >> [&] { FAIL("no final event"); });
    return {chosen, last};
  }
};

}  // namespace

TEST_CASE("router: starting instances are reported and refuse work retryably; ready ones serve") {
  harness h;
  CHECK(h.state().instances.empty());
  auto [none, refused0] = h.generate(1);
  CHECK(!none);
  CHECK(refused0.retryable);
  CHECK(refused0.error == "no instance is configured");

  h.join("a", {});
  cluster_state cs = h.state();
  REQUIRE(cs.instances.size() == 1);
  CHECK(cs.instances[0].status == "starting");
  auto [none2, refused] = h.generate(2);
  CHECK(!none2);
  CHECK(refused.finish_reason == "error");
  CHECK(refused.retryable);
  CHECK(refused.error == "no instance is ready yet (starting)");

  const supervisor_actor a = h.start("a");
  h.join("a", a);
  cs = h.state();
  CHECK(cs.instances[0].status == "ready");
  CHECK(cs.instances[0].kv_pages_total > 0);
  auto [chosen, ev] = h.generate(3);
  CHECK(chosen == a);
  CHECK(ev.finish_reason == "length");
  CHECK(ev.completion_tokens == 3);
  (*h.self)->send_exit(a, caf::exit_reason::user_shutdown);
}

TEST_CASE("router: a failed start is reported; an instance that dies is marked failed and skipped") {
  harness h;
  h.join("broken", {}, "model did not load: config.json missing");
  const supervisor_actor b = h.start("b");
  const supervisor_actor c = h.start("c");
  h.join("b", b);
  h.join("c", c);
  cluster_state cs = h.state();
  REQUIRE(cs.instances.size() == 3);
  CHECK(cs.instances[0].status == "failed");
  // Alternating between b and c (equal load), never the broken one.
  std::set<caf::actor_addr> used;
  for (uint64_t id = 10; id < 14; ++id) {
    auto [chosen, ev] = h.generate(id);
    REQUIRE(chosen);
    CHECK(ev.finish_reason == "length");
    used.insert(chosen.address());
  }
  CHECK(used.size() == 2);
  (*h.self)->send_exit(b, caf::exit_reason::kill);
  for (int i = 0; i < 100 && h.state().instances[1].status != "failed"; ++i) std::this_thread::sleep_for(10ms);
  CHECK(h.state().instances[1].status == "failed");
  for (uint64_t id = 20; id < 23; ++id) {
    auto [chosen, ev] = h.generate(id);
    CHECK(chosen == c);
    CHECK(ev.finish_reason == "length");
  }
  (*h.self)->send_exit(c, caf::exit_reason::kill);
  for (int i = 0; i < 100 && h.state().instances[2].status != "failed"; ++i) std::this_thread::sleep_for(10ms);
  auto [none, refused] = h.generate(30);
  CHECK(!none);
  CHECK(refused.error == "no instance is available (all failed)");
}

TEST_CASE("admin: prefill size and drain by instance name; unknown names are errors") {
  harness h;
  const admin_actor adm = admin_spawn(*h.sys, h.router);
  const supervisor_actor a = h.start("a");
  h.join("a", a);
  h.join("later", {});
  int64_t size = 0;
  (*h.self)->request(adm, 5s, prefill_sz_atom::value, std::string("a"), int64_t{96})
      .receive([&](int64_t v) { size = v; }, [](caf::error& e) { FAIL(caf::to_string(e)); });
  CHECK(size == 96);
  CHECK(h.state().instances[0].chunked_prefill_size == 96);
  std::string err;
  (*h.self)->request(adm, 5s, prefill_sz_atom::value, std::string("zeta"), int64_t{96})
      .receive([](int64_t) { FAIL("accepted"); }, [&](caf::error& e) { err = h.sys->render(e); });
  CHECK(err.find("unknown instance 'zeta'") != std::string::npos);
  (*h.self)->request(adm, 5s, prefill_sz_atom::value, std::string("later"), int64_t{96})
      .receive([](int64_t) { FAIL("accepted"); }, [&](caf::error& e) { err = h.sys->render(e); });
  CHECK(err.find("instance 'later' is not running") != std::string::npos);
  (*h.self)->request(adm, 5s, prefill_sz_atom::value, std::string(""), int64_t{0})
      .receive([](int64_t) { FAIL("accepted"); }, [&](caf::error& e) { err = h.sys->render(e); });
  CHECK(err.find("chunked-prefill-size must be in") != std::string::npos);
  bool drained = false;
  (*h.self)->request(adm, 5s, drain_atom::value, std::string("a"), true)
      .receive([&](bool v) { drained = v; }, [](caf::error& e) { FAIL(caf::to_string(e)); });
  CHECK(drained);
  CHECK(h.state().instances[0].status == "draining");
  auto [none, refused] = h.generate(40);
  CHECK(!none);
  CHECK(refused.retryable);
  (*h.self)->send_exit(adm, caf::exit_reason::user_shutdown);
  (*h.self)->send_exit(a, caf::exit_reason::user_shutdown);
}
