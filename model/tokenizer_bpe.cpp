// The BPE model and the added-token matcher. The merge loop is HF's
// (models/bpe/word.rs): a linked list of symbols and a min-heap of candidate
// merges ordered by (rank, position), where stale entries are skipped when the
// pair under them has changed; it gives the same result as applying the
// lowest-ranked merge leftmost-first until none applies, in O(n log n). Merge
// pairs live in an open-addressing table keyed by the two ids, the hottest lookup
// of encoding. Byte-level words arrive as raw bytes and start as one symbol per
// byte from a 256-entry table, so no word is rewritten into the GPT-2 alphabet.
// A bounded per-thread cache of word -> ids spares re-merging frequent words, as
// HF's BPE cache does, without sharing mutable state between threads.
#include <algorithm>
#include <cstring>

#include "config/errors.hpp"
#include "model/tokenizer_parts.hpp"

namespace troupe::tokenizer_parts {

// ---------------------------------------------------------------- merge_map

void merge_map::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  if (cap <= slots_.size()) return;
  std::vector<slot> old = std::move(slots_);
  slots_.assign(cap, slot{});
  mask_ = cap - 1;
  used_ = 0;
  for (const slot& s : old) {
    if (s.key != empty_key) set(int32_t(s.key >> 32), int32_t(uint32_t(s.key)), s.value.first, s.value.second);
  }
}

void merge_map::grow() { reserve(slots_.empty() ? 8 : slots_.size()); }

void merge_map::set(int32_t a, int32_t b, uint32_t rank, int32_t merged) {
  if (2 * (used_ + 1) > slots_.size()) grow();
  const uint64_t key = pack(a, b);
  for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
    slot& s = slots_[i];
    if (s.key == key) {
      s.value = {rank, merged};
      return;
    }
    if (s.key == empty_key) {
      s.key = key;
      s.value = {rank, merged};
      ++used_;
      return;
    }
  }
}

// ---------------------------------------------------------------- merging

namespace {

struct symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t len;
};

struct candidate {
  uint32_t rank;
  uint32_t pos;
  int32_t merged;
};

/// Heap order: the top is the lowest rank, then the leftmost position.
bool later(const candidate& a, const candidate& b) {
  return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
}

struct merge_scratch {
  std::vector<symbol> symbols;
  std::vector<candidate> heap;
};

merge_scratch& scratch() {
  thread_local merge_scratch s;
  return s;
}

void add_symbol(std::vector<symbol>& syms, int32_t id, uint32_t len) {
  const auto n = static_cast<int32_t>(syms.size());
  if (n > 0) syms.back().next = n;
  syms.push_back({id, n - 1, -1, len});
}

/// HF Word::merge_all without dropout; appends the resulting ids.
void merge_all(std::vector<symbol>& syms, const merge_map& merges, std::vector<int32_t>& out) {
  std::vector<candidate>& heap = scratch().heap;
  heap.clear();
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    if (const auto* m = merges.find(syms[i].id, syms[i + 1].id)) {
      heap.push_back({m->first, static_cast<uint32_t>(i), m->second});
    }
  }
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const candidate top = heap.back();
    heap.pop_back();
    symbol& cur = syms[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const int32_t next_pos = cur.next;
    const symbol right = syms[static_cast<size_t>(next_pos)];
    const auto* m = merges.find(cur.id, right.id);
    if (!m || m->second != top.merged) continue;  // the pair under this entry changed
    cur.id = top.merged;
    cur.len += right.len;
    cur.next = right.next;
    syms[static_cast<size_t>(next_pos)].len = 0;
    if (right.next >= 0) syms[static_cast<size_t>(right.next)].prev = static_cast<int32_t>(top.pos);
    if (cur.prev >= 0) {
      if (const auto* p = merges.find(syms[static_cast<size_t>(cur.prev)].id, cur.id)) {
        heap.push_back({p->first, static_cast<uint32_t>(cur.prev), p->second});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
    if (cur.next >= 0) {
      if (const auto* n = merges.find(cur.id, syms[static_cast<size_t>(cur.next)].id)) {
        heap.push_back({n->first, top.pos, n->second});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
  }
  for (const symbol& s : syms) {
    if (s.len != 0) out.push_back(s.id);
  }
}

/// Per-thread word cache of one tokenizer instance, cleared when full.
struct word_cache {
  uint64_t serial = 0;
  std::unordered_map<std::string, std::vector<int32_t>, string_hash, std::equal_to<>> map;
};

constexpr size_t cache_capacity = 16384;
constexpr size_t cache_max_word = 256;  // bytes; HF's MAX_LENGTH
constexpr size_t caches_per_thread = 4;  // tokenizers one thread may alternate between

/// This thread's cache for the model with `serial`; a fifth model takes over a slot.
word_cache& cache_for(uint64_t serial) {
  thread_local std::array<word_cache, caches_per_thread> caches;
  for (word_cache& c : caches) {
    if (c.serial == serial) return c;
  }
  word_cache& c = caches[serial % caches_per_thread];
  c.map.clear();
  c.serial = serial;
  return c;
}

}  // namespace

void bpe_model::encode_chars(std::string_view w, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    if (auto it = vocab.find(w); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<symbol>& syms = scratch().symbols;
  syms.clear();
  bool unk = false;  // a pending unknown: id, byte length
  int32_t unk_tok = 0;
  uint32_t unk_len = 0;
  std::string buf;
  for (size_t i = 0; i < w.size();) {
    const size_t b = i;
    i += utf8_seq_len(static_cast<unsigned char>(w[i]));
    const std::string_view ch = w.substr(b, i - b);
    std::string_view s = ch;
    if (b > 0 && !continuing_subword_prefix.empty()) {
      buf = continuing_subword_prefix;
      buf += ch;
      s = buf;
    }
    if (i >= w.size() && !end_of_word_suffix.empty()) {
      if (s.data() != buf.data()) buf.assign(ch);
      buf += end_of_word_suffix;
      s = buf;
    }
    if (auto it = vocab.find(s); it != vocab.end()) {
      if (unk) add_symbol(syms, unk_tok, unk_len), unk = false;
      add_symbol(syms, it->second, static_cast<uint32_t>(ch.size()));
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (const char c : s) all = all && fallback_ids[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // HF adds the byte tokens without flushing a pending unknown first.
        for (const char c : s) add_symbol(syms, fallback_ids[static_cast<unsigned char>(c)], 1);
        continue;
      }
    }
    if (unk_token_set) {
      if (!unk_id) {
        throw error(errc::errc_invalid_config, "tokenizer.json: model.unk_token '" + unk_token +
                                                   "' is needed but is not in the vocabulary");
      }
      if (unk && fuse_unk) {
        unk_len += static_cast<uint32_t>(ch.size());
      } else {
        if (unk) add_symbol(syms, unk_tok, unk_len);
        unk = true;
        unk_tok = *unk_id;
        unk_len = static_cast<uint32_t>(ch.size());
      }
    }
  }
  if (unk) add_symbol(syms, unk_tok, unk_len);
  merge_all(syms, merges, out);
}

void bpe_model::encode_word(std::string_view word, bool raw_bytes, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (raw_bytes && ignore_merges) {
    if (auto it = raw_vocab.find(word); it != raw_vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() == 1 && raw_bytes && byte_ids[static_cast<unsigned char>(word[0])] >= 0) {
    out.push_back(byte_ids[static_cast<unsigned char>(word[0])]);
    return;
  }
  const bool cacheable = word.size() < cache_max_word;
  word_cache* cache = cacheable ? &cache_for(serial) : nullptr;
  if (cache) {
    if (auto it = cache->map.find(word); it != cache->map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  bool done = false;
  if (raw_bytes) {
    std::vector<symbol>& syms = scratch().symbols;
    syms.clear();
    bool known = true;
    for (const char c : word) {
      const int32_t id = byte_ids[static_cast<unsigned char>(c)];
      if (id < 0) {
        known = false;
        break;
      }
      add_symbol(syms, id, 1);
    }
    if (known) {
      merge_all(syms, merges, out);
      done = true;
    } else {
      // A byte whose character the vocabulary lacks: take HF's general path on the mapped word.
      std::string mapped;
      byte_level_map(word, mapped);
      encode_chars(mapped, out);
      done = true;
    }
  }
  if (!done) encode_chars(word, out);
  if (cache) {
    if (cache->map.size() >= cache_capacity) cache->map.clear();
    cache->map.emplace(std::string(word), std::vector<int32_t>(out.begin() + static_cast<std::ptrdiff_t>(first), out.end()));
  }
}

// ---------------------------------------------------------------- added tokens

void token_trie::add(std::string_view pattern, int32_t value) {
  if (pattern.empty()) return;
  int32_t n = 0;
  for (const char ch : pattern) {
    const auto c = static_cast<unsigned char>(ch);
    auto& next = nodes_[static_cast<size_t>(n)].next;
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}));
    if (it != next.end() && it->first == c) {
      n = it->second;
      continue;
    }
    const auto child = static_cast<int32_t>(nodes_.size());
    next.insert(it, {c, child});
    nodes_.emplace_back();
    n = child;
  }
  first_.set(static_cast<unsigned char>(pattern[0]));
  if (nodes_[static_cast<size_t>(n)].value < 0) nodes_[static_cast<size_t>(n)].value = value;
}

int32_t token_trie::longest_at(std::string_view s, size_t pos, size_t& len) const {
  int32_t best = -1;
  int32_t n = 0;
  for (size_t i = pos; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    const auto& next = nodes_[static_cast<size_t>(n)].next;
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(c, int32_t{-1}));
    if (it == next.end() || it->first != c) break;
    n = it->second;
    if (nodes_[static_cast<size_t>(n)].value >= 0) {
      best = nodes_[static_cast<size_t>(n)].value;
      len = i + 1 - pos;
    }
  }
  return best;
}

namespace {

/// The character that ends s[0, end), or 0 when there is none.
char32_t char_before(std::string_view s, size_t end) {
  if (end == 0) return 0;
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return utf8_next(s, b);
}

}  // namespace

void find_added(const std::vector<added_token>& added, const token_trie& trie, std::string_view s,
                std::vector<added_split>& out) {
  const size_t n = s.size();
  if (n == 0 || trie.empty()) {
    out.push_back({-1, {0, n}});
    return;
  }
  size_t start_offset = 0;
  for (size_t i = 0; i < n;) {
    if (!trie.may_start(static_cast<unsigned char>(s[i]))) {
      ++i;
      continue;
    }
    size_t len = 0;
    const int32_t idx = trie.longest_at(s, i, len);
    if (idx < 0) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + len;
    i = stop;  // the automaton goes on after the match, whatever becomes of it
    const added_token& t = added[static_cast<size_t>(idx)];
    if (t.single_word) {
      const bool start_space = start == 0 || !is_word_char(char_before(s, start));
      size_t j = stop;
      const bool stop_space = stop == n || !is_word_char(utf8_next(s, j));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t b = start;
      while (b > 0) {
        size_t p = b - 1;
        while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!is_white_space(utf8_next(s, q))) break;
        b = p;
      }
      start = std::max(b, start_offset);
    }
    if (t.rstrip) {
      while (stop < n) {
        size_t q = stop;
        if (!is_white_space(utf8_next(s, q))) break;
        stop = q;
      }
    }
    if (start_offset < start) out.push_back({-1, {start_offset, start}});
    out.push_back({idx, {start, stop}});
    start_offset = stop;
  }
  if (start_offset != n) out.push_back({-1, {start_offset, n}});
}

}  // namespace troupe::tokenizer_parts
