// The continuous-batching policy of a chunk_scheduler, as a plain class with
// no actors in it so that every decision can be unit-tested directly.
//
// Why it is built this way:
// - It decides, it does not execute: it knows requests only as (id, tokens
//   known, tokens already in the KV cache) and pages only by arithmetic
//   (page_size, total pages), mirroring the stage's kv_cache. The stage
//   reports its free pages after every step so a drift is detectable.
// - One step = one forward pass with a token budget (chunked_prefill_size):
//   every running decoding request first gets its one token, then running
//   requests that are still prefilling get chunks, then waiting requests are
//   admitted FCFS (head-of-line blocking keeps the order fair) while the
//   budget, max_running and free KV pages allow.
// - Preemption is by recomputation (vLLM): when a running request's next
//   tokens need a page and none is free, the most recently admitted request
//   loses its pages and goes back to the front of the waiting queue with its
//   generated tokens counted as prompt, so recomputing it continues exactly
//   where it was. No step that preempts also admits.
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

namespace troupe {

/// The limits a batch_policy works within.
struct batch_policy_config {
  int64_t page_size = 16;              ///< tokens per KV page (the stage's kv_cache page size)
  int64_t total_pages = 0;             ///< pages of the stage's KV cache
  int64_t chunked_prefill_size = 512;  ///< tokens one step runs (a decode token counts 1); >= 1
  int64_t max_running = 256;           ///< most requests in the running batch; >= 1
  int64_t reserve_pages = 0;           ///< pages admission leaves free for decoding growth (not when nothing runs)
};

/// One request's part of a step: tokens [begin, begin + n) of its sequence.
struct scheduled_chunk {
  uint64_t id = 0;
  int64_t begin = 0;    ///< tokens of the request already in the KV cache
  int64_t n = 0;        ///< tokens to run now (>= 1)
  bool sample = false;  ///< the chunk reaches the last known token: sample the next one
};

/// What the next step does.
struct step_decision {
  std::vector<uint64_t> released;       ///< finished requests: drop their KV before the step
  std::vector<uint64_t> preempted;      ///< requests moved back to waiting: drop their KV before the step
  std::vector<uint64_t> admitted;       ///< requests moved from waiting to running by this step, in order
  std::vector<scheduled_chunk> chunks;  ///< decode tokens first, then prefill chunks; one per request at most

  /// True when the step would do nothing at all.
  bool empty() const { return released.empty() && preempted.empty() && chunks.empty(); }
  /// Tokens the step runs.
  int64_t tokens() const;
};

/// The scheduling state of one instance: waiting queue, running batch, KV pages.
class batch_policy {
 public:
  /// Starts empty with every page free.
  explicit batch_policy(const batch_policy_config& c);

  /// The limits in force.
  const batch_policy_config& config() const { return cfg_; }
  /// Changes the token budget of later steps (values < 1 count as 1).
  void set_chunked_prefill_size(int64_t n);

  /// Queues a new request of `tokens` prompt tokens at the back of the
  /// waiting queue. False (and nothing queued) when the id is already known,
  /// tokens < 1, or the prompt alone needs more pages than the cache has.
  bool enqueue(uint64_t id, int64_t tokens);
  /// Records the token a step sampled for running request `id`: its sequence
  /// grows by one (the next step feeds it back). False when not running.
  bool append_token(uint64_t id);
  /// Ends request `id`: a waiting one is forgotten at once; a running one's
  /// pages are handed to the next step's `released`. False when unknown.
  bool finish(uint64_t id);
  /// The stage lost every sequence (it was replaced): `failed` requests are
  /// forgotten, every other running request goes back to the front of the
  /// waiting queue in admission order, pending releases are dropped.
  void stage_lost(const std::vector<uint64_t>& failed);

  /// Plans the next step and updates the state as if it ran: chunks count as
  /// computed, released and preempted pages as free. Call append_token for
  /// each sampled chunk once the step's tokens are known.
  step_decision schedule();

  /// True when schedule() has something to do.
  bool has_work() const { return !running_.empty() || !releasing_.empty() || !waiting_.empty(); }
  /// True when `id` is in the running batch.
  bool is_running(uint64_t id) const;
  /// True when `id` is queued.
  bool is_waiting(uint64_t id) const;
  /// Requests in the running batch.
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  /// Requests queued.
  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  /// Tokens known for `id` (prompt + generated; 0 when unknown).
  int64_t length(uint64_t id) const;
  /// Tokens of `id` in the KV cache (0 when unknown or waiting).
  int64_t computed(uint64_t id) const;
  /// Pages no running request holds: what the next step may use.
  int64_t free_pages() const;
  /// Pages the stage's cache has free after the last planned step ran:
  /// free_pages() minus the pages of finished requests not yet released.
  int64_t cache_free_pages() const { return free_pages() - releasing_pages_; }
  /// Requests preempted so far.
  int64_t preemptions() const { return preemptions_; }
  /// Pages a sequence of `tokens` tokens holds.
  int64_t pages_for(int64_t tokens) const { return (tokens + cfg_.page_size - 1) / cfg_.page_size; }

 private:
  struct seq {
    int64_t length = 0;    // tokens known (prompt + generated)
    int64_t computed = 0;  // tokens in the KV cache (including the step being planned)
    int64_t planned = 0;   // tokens given to this request in the step being planned
  };

  batch_policy_config cfg_;
  std::unordered_map<uint64_t, seq> seqs_;
  std::deque<uint64_t> waiting_;
  std::vector<uint64_t> running_;  // admission order: the back is preempted first
  std::vector<uint64_t> releasing_;
  int64_t releasing_pages_ = 0;
  int64_t preemptions_ = 0;
};

}  // namespace troupe
