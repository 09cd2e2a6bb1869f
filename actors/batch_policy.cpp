// Continuous batching with chunked prefill, page-based admission and
// recompute preemption; see batch_policy.hpp for the rules.
#include "actors/batch_policy.hpp"

#include <algorithm>

namespace troupe {

int64_t step_decision::tokens() const {
  int64_t n = 0;
  for (const scheduled_chunk& c : chunks) n += c.n;
  return n;
}

batch_policy::batch_policy(const batch_policy_config& c) : cfg_(c) {
  cfg_.page_size = std::max<int64_t>(1, cfg_.page_size);
  cfg_.total_pages = std::max<int64_t>(0, cfg_.total_pages);
  cfg_.chunked_prefill_size = std::max<int64_t>(1, cfg_.chunked_prefill_size);
  cfg_.max_running = std::max<int64_t>(1, cfg_.max_running);
  cfg_.reserve_pages = std::max<int64_t>(0, cfg_.reserve_pages);
}

void batch_policy::set_chunked_prefill_size(int64_t n) { cfg_.chunked_prefill_size = std::max<int64_t>(1, n); }

bool batch_policy::enqueue(uint64_t id, int64_t tokens) {
  if (tokens < 1 || seqs_.count(id) != 0 || pages_for(tokens) > cfg_.total_pages) return false;
  seqs_[id] = seq{tokens, 0, 0};
  waiting_.push_back(id);
  return true;
}

bool batch_policy::append_token(uint64_t id) {
  if (!is_running(id)) return false;
  ++seqs_[id].length;
  return true;
}

bool batch_policy::finish(uint64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  if (auto w = std::find(waiting_.begin(), waiting_.end(), id); w != waiting_.end()) {
    waiting_.erase(w);
  } else {
    running_.erase(std::find(running_.begin(), running_.end(), id));
    releasing_.push_back(id);
    releasing_pages_ += pages_for(it->second.computed);
  }
  seqs_.erase(it);
  return true;
}

void batch_policy::stage_lost(const std::vector<uint64_t>& failed) {
  for (uint64_t id : failed) {
    if (auto r = std::find(running_.begin(), running_.end(), id); r != running_.end()) running_.erase(r);
    if (auto w = std::find(waiting_.begin(), waiting_.end(), id); w != waiting_.end()) waiting_.erase(w);
    seqs_.erase(id);
  }
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    seqs_[*it].computed = 0;
    waiting_.push_front(*it);
  }
  running_.clear();
  releasing_.clear();
  releasing_pages_ = 0;
}

bool batch_policy::is_running(uint64_t id) const {
  return std::find(running_.begin(), running_.end(), id) != running_.end();
}

bool batch_policy::is_waiting(uint64_t id) const {
  return std::find(waiting_.begin(), waiting_.end(), id) != waiting_.end();
}

int64_t batch_policy::length(uint64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? 0 : it->second.length;
}

int64_t batch_policy::computed(uint64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? 0 : it->second.computed;
}

int64_t batch_policy::free_pages() const {
  int64_t used = 0;
  for (uint64_t id : running_) used += pages_for(seqs_.at(id).computed);
  return cfg_.total_pages - used;
}

step_decision batch_policy::schedule() {
  step_decision d;
  d.released = std::move(releasing_);
  releasing_.clear();
  releasing_pages_ = 0;
  int64_t free = free_pages();
  int64_t budget = cfg_.chunked_prefill_size;
  const int64_t ps = cfg_.page_size;

  auto plan = [&](uint64_t id, seq& s, int64_t n) {
    free -= pages_for(s.computed + n) - pages_for(s.computed);
    budget -= n;
    d.chunks.push_back({id, s.computed, n, s.computed + n == s.length});
    s.computed += n;
    s.planned = n;
  };
  // Preempts the most recently admitted running request; returns its id.
  auto preempt_newest = [&]() {
    const uint64_t v = running_.back();
    running_.pop_back();
    seq& s = seqs_.at(v);
    free += pages_for(s.computed);
    if (s.planned > 0) {
      budget += s.planned;
      std::erase_if(d.chunks, [v](const scheduled_chunk& c) { return c.id == v; });
      s.planned = 0;
    }
    s.computed = 0;
    waiting_.push_front(v);
    d.preempted.push_back(v);
    ++preemptions_;
    return v;
  };

  // 1. One decode token for every running request that has all but its last token computed.
  for (size_t i = 0; i < running_.size(); ++i) {
    const uint64_t id = running_[i];
    seq& s = seqs_.at(id);
    if (s.length - s.computed != 1) continue;
    const int64_t need = pages_for(s.computed + 1) - pages_for(s.computed);
    bool lost = false;
    while (need > free && !lost) lost = preempt_newest() == id;
    if (lost) break;  // it was the newest: nothing after it runs
    plan(id, s, 1);
  }
  // 2. Prefill chunks for running requests that are still prefilling, oldest first.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    const uint64_t id = running_[i];
    seq& s = seqs_.at(id);
    if (s.planned > 0 || s.length - s.computed < 1) continue;
    auto fit = [&] { return (pages_for(s.computed) + free) * ps - s.computed; };
    bool lost = false;
    while (fit() <= 0 && !lost) lost = preempt_newest() == id;
    if (lost) break;
    plan(id, s, std::min({s.length - s.computed, budget, fit()}));
  }
  // 3. Admission, FCFS, unless this step had to preempt. Besides the chunk's
  // own pages it leaves the reserve plus one page for every running request
  // whose next decode token starts a new page.
  if (d.preempted.empty()) {
    int64_t promised = 0;
    for (uint64_t id : running_) {
      const seq& s = seqs_.at(id);
      if (s.computed == s.length && s.computed % ps == 0) ++promised;
    }
    while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < cfg_.max_running && budget > 0) {
      const uint64_t id = waiting_.front();
      seq& s = seqs_.at(id);
      const int64_t n = std::min(s.length, budget);
      const int64_t reserve = running_.empty() ? 0 : cfg_.reserve_pages + promised;
      if (pages_for(n) + reserve > free) break;
      waiting_.pop_front();
      running_.push_back(id);
      d.admitted.push_back(id);
      plan(id, s, n);
      if (s.computed == s.length && s.computed % ps == 0) ++promised;
    }
  }
  for (const scheduled_chunk& c : d.chunks) seqs_.at(c.id).planned = 0;
  return d;
}

}  // namespace troupe
