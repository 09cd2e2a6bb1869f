// batch_policy on its own: every scheduling rule driven by hand, no actors.
#include "actors/batch_policy.hpp"

#include <doctest/doctest.h>

#include <vector>

using namespace troupe;

namespace {

batch_policy_config config(int64_t page_size, int64_t pages, int64_t budget, int64_t max_running = 64,
                           int64_t reserve = 0) {
  batch_policy_config c;
  c.page_size = page_size;
  c.total_pages = pages;
  c.chunked_prefill_size = budget;
  c.max_running = max_running;
  c.reserve_pages = reserve;
  return c;
}

// Feeds back a sampled token for every chunk that sampled.
void complete(batch_policy& p, const step_decision& d) {
  for (const scheduled_chunk& c : d.chunks)
    if (c.sample) REQUIRE(p.append_token(c.id));
}

std::vector<uint64_t> ids(const step_decision& d) {
  std::vector<uint64_t> out;
  for (const scheduled_chunk& c : d.chunks) out.push_back(c.id);
  return out;
}

}  // namespace

TEST_CASE("batch_policy: chunked prefill respects the token budget and samples only at the end of the known tokens") {
  batch_policy p(config(4, 100, 8));
  REQUIRE(p.enqueue(1, 20));
  REQUIRE(p.enqueue(2, 3));
  step_decision d = p.schedule();
  CHECK(d.admitted == std::vector<uint64_t>{1});
  REQUIRE(d.chunks.size() == 1);
  CHECK(d.chunks[0].begin == 0);
  CHECK(d.chunks[0].n == 8);
  CHECK_FALSE(d.chunks[0].sample);
  CHECK(p.waiting() == 1);  // no budget left for request 2
  d = p.schedule();
  REQUIRE(d.chunks.size() == 1);
  CHECK(d.chunks[0].begin == 8);
  CHECK(d.chunks[0].n == 8);
  d = p.schedule();  // 4 prompt tokens left for 1, then 2 fits in the remaining budget of 4
  REQUIRE(d.chunks.size() == 2);
  CHECK(d.chunks[0].id == 1);
  CHECK(d.chunks[0].n == 4);
  CHECK(d.chunks[0].sample);
  CHECK(d.chunks[1].id == 2);
  CHECK(d.chunks[1].n == 3);
  CHECK(d.chunks[1].sample);
  CHECK(d.admitted == std::vector<uint64_t>{2});
  complete(p, d);
  for (int i = 0; i < 5; ++i) {
    d = p.schedule();
    CHECK(d.tokens() <= 8);
    REQUIRE(d.chunks.size() == 2);
    for (const scheduled_chunk& c : d.chunks) {
      CHECK(c.n == 1);
      CHECK(c.sample);
      CHECK(c.begin == p.length(c.id) - 1);
    }
    complete(p, d);
  }
  CHECK(p.length(1) == 26);
  CHECK(p.computed(1) == 25);
}

TEST_CASE("batch_policy: decode tokens come first, prefill chunks get what the budget leaves") {
  batch_policy p(config(4, 100, 4));
  REQUIRE(p.enqueue(1, 2));
  step_decision d = p.schedule();
  complete(p, d);  // 1 now decodes
  REQUIRE(p.enqueue(2, 4));
  REQUIRE(p.enqueue(3, 4));
  d = p.schedule();  // 1's decode token, then 3 of 2's prompt tokens
  REQUIRE(d.chunks.size() == 2);
  CHECK(d.chunks[0].id == 1);
  CHECK(d.chunks[0].n == 1);
  CHECK(d.chunks[1].id == 2);
  CHECK(d.chunks[1].n == 3);
  CHECK_FALSE(d.chunks[1].sample);
  complete(p, d);
  d = p.schedule();  // 1 decodes, 2 finishes its prompt (1 token), 3 gets the remaining 2
  CHECK(ids(d) == std::vector<uint64_t>{1, 2, 3});
  CHECK(d.tokens() == 4);
  complete(p, d);
  d = p.schedule();  // decodes first even for a request admitted after one still prefilling
  CHECK(ids(d) == std::vector<uint64_t>{1, 2, 3});
  CHECK(d.chunks[0].n == 1);
  CHECK(d.chunks[1].n == 1);
  CHECK(d.chunks[2].n == 2);
  CHECK(d.chunks[2].sample);
  // More decoding requests than budget: every one still gets its token, no prefill runs.
  complete(p, d);
  REQUIRE(p.enqueue(4, 4));
  batch_policy_config c = p.config();
  p.set_chunked_prefill_size(2);
  CHECK(p.config().chunked_prefill_size == 2);
  CHECK(c.chunked_prefill_size == 4);
  d = p.schedule();
  CHECK(ids(d) == std::vector<uint64_t>{1, 2, 3});
  CHECK(p.is_waiting(4));
}

TEST_CASE("batch_policy: admission is FCFS with head-of-line blocking and counts reserve and promised pages") {
  batch_policy p(config(4, 6, 64, 64, 1));
  REQUIRE(p.enqueue(1, 8));   // 2 pages; nothing runs yet, so no reserve is needed
  REQUIRE(p.enqueue(2, 12));  // 3 pages
  REQUIRE(p.enqueue(3, 2));   // 1 page: would fit, but must not overtake 2
  // 1's next token starts a third page (promised): 3 + reserve 1 + promised 1 > 4 free.
  step_decision d = p.schedule();
  CHECK(d.admitted == std::vector<uint64_t>{1});
  CHECK(p.free_pages() == 4);
  complete(p, d);
  d = p.schedule();  // 1 takes its third page: 3 + reserve 1 > 3 free
  CHECK(d.admitted.empty());
  CHECK(ids(d) == std::vector<uint64_t>{1});
  CHECK(p.waiting() == 2);
  complete(p, d);
  REQUIRE(p.finish(1));
  d = p.schedule();  // 6 free: 2 takes 3; 3 needs 1 + reserve 1 + 1 promised to 2 (12 tokens, page full)
  CHECK(d.released == std::vector<uint64_t>{1});
  CHECK(d.admitted == std::vector<uint64_t>{2, 3});
  CHECK(p.free_pages() == 2);
}

TEST_CASE("batch_policy: max_running caps the batch; a finished request's pages serve the very next step") {
  batch_policy p(config(4, 5, 64, 2));
  REQUIRE(p.enqueue(1, 4));
  REQUIRE(p.enqueue(2, 4));
  REQUIRE(p.enqueue(3, 4));
  step_decision d = p.schedule();
  CHECK(d.admitted == std::vector<uint64_t>{1, 2});
  CHECK(p.running() == 2);
  complete(p, d);
  d = p.schedule();
  CHECK(d.admitted.empty());
  complete(p, d);
  CHECK(p.free_pages() == 1);  // two requests of 5 computed tokens: 2 pages each, of 5
  REQUIRE(p.finish(1));
  CHECK(p.free_pages() == 1 + 2);
  CHECK(p.cache_free_pages() == 1);  // the stage frees them only with the next step
  d = p.schedule();
  CHECK(d.released == std::vector<uint64_t>{1});
  CHECK(d.admitted == std::vector<uint64_t>{3});
  CHECK(p.cache_free_pages() == p.free_pages());
  CHECK_FALSE(p.finish(1));
  CHECK(p.finish(3));  // running: released next step
  CHECK(p.enqueue(4, 4));
  CHECK(p.finish(4));  // waiting: just forgotten
  d = p.schedule();
  CHECK(d.released == std::vector<uint64_t>{3});
}

TEST_CASE("batch_policy: admission needs pages; a prompt larger than the cache is refused") {
  batch_policy p(config(4, 3, 64));
  CHECK_FALSE(p.enqueue(9, 13));  // 4 pages > 3
  CHECK_FALSE(p.enqueue(9, 0));
  REQUIRE(p.enqueue(1, 8));
  REQUIRE(p.enqueue(2, 8));
  CHECK_FALSE(p.enqueue(2, 8));  // duplicate id
  step_decision d = p.schedule();
  CHECK(d.admitted == std::vector<uint64_t>{1});  // 2 needs 2 pages, 1 is free
  CHECK(p.is_waiting(2));
}

TEST_CASE("batch_policy: out of pages, the most recently admitted request is preempted and recomputed") {
  batch_policy p(config(2, 4, 64));
  REQUIRE(p.enqueue(1, 3));
  REQUIRE(p.enqueue(2, 3));
  step_decision d = p.schedule();
  CHECK(d.admitted == std::vector<uint64_t>{1, 2});
  complete(p, d);  // both: 4 known, 3 computed, 2 pages each; the cache is full
  CHECK(p.free_pages() == 0);
  d = p.schedule();  // token 4 fits in page 2 for both
  CHECK(ids(d) == std::vector<uint64_t>{1, 2});
  CHECK(d.preempted.empty());
  complete(p, d);  // 5 known, 4 computed: the next token needs a third page each
  d = p.schedule();
  CHECK(d.preempted == std::vector<uint64_t>{2});
  CHECK(ids(d) == std::vector<uint64_t>{1});
  CHECK(p.preemptions() == 1);
  CHECK(p.is_waiting(2));
  CHECK(p.computed(2) == 0);
  CHECK(p.length(2) == 5);  // prompt + generated: recomputation continues where it was
  complete(p, d);
  d = p.schedule();  // 2 needs 3 pages, 1 free: it waits (and nothing is admitted in a preempting step anyway)
  CHECK(ids(d) == std::vector<uint64_t>{1});
  REQUIRE(p.finish(1));
  d = p.schedule();
  CHECK(d.released == std::vector<uint64_t>{1});
  CHECK(d.admitted == std::vector<uint64_t>{2});
  REQUIRE(d.chunks.size() == 1);
  CHECK(d.chunks[0].begin == 0);
  CHECK(d.chunks[0].n == 5);
  CHECK(d.chunks[0].sample);  // the recomputation's last chunk samples token 6
}

TEST_CASE("batch_policy: preemption takes back a decode slot already planned and puts requests back in order") {
  batch_policy p(config(2, 6, 64));
  for (uint64_t id : {1, 2, 3}) REQUIRE(p.enqueue(id, 3));
  step_decision d = p.schedule();
  CHECK(d.admitted == std::vector<uint64_t>{1, 2, 3});
  complete(p, d);
  d = p.schedule();
  complete(p, d);  // all: 5 known, 4 computed, 2 pages each, none free
  REQUIRE(p.enqueue(4, 2));
  d = p.schedule();  // 1 needs a page: 3 goes; 2 needs a page: 2 goes (3 frees 2 pages, 1 takes one)
  CHECK(d.preempted == std::vector<uint64_t>{3});
  CHECK(ids(d) == std::vector<uint64_t>{1, 2});
  complete(p, d);
  d = p.schedule();  // 1 fits in its page, 2 needs one: 1 is free
  CHECK(d.preempted.empty());
  complete(p, d);
  d = p.schedule();  // 1 needs a page, none free: 2 (newest) goes
  CHECK(d.preempted == std::vector<uint64_t>{2});
  // The waiting queue now reads 2, 3, 4: the earlier admitted comes back first.
  REQUIRE(p.finish(1));
  d = p.schedule();
  CHECK(d.admitted.front() == 2);
}

TEST_CASE("batch_policy: a lost stage fails the step's requests and recomputes the others first") {
  batch_policy p(config(4, 10, 64));
  for (uint64_t id : {1, 2, 3}) REQUIRE(p.enqueue(id, 4));
  p.set_chunked_prefill_size(8);
  step_decision d = p.schedule();
  CHECK(d.admitted == std::vector<uint64_t>{1, 2});
  complete(p, d);
  p.stage_lost({1});
  CHECK(p.running() == 0);
  CHECK(p.waiting() == 2);
  CHECK(p.length(1) == 0);
  CHECK(p.length(2) == 5);
  CHECK(p.free_pages() == 10);
  d = p.schedule();
  CHECK(d.admitted == std::vector<uint64_t>{2, 3});  // 2 before 3, as admitted before
  CHECK(d.released.empty());
}
