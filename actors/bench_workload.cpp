// Workload generation for the serving benchmark (see bench_workload.hpp).
#include "actors/bench_workload.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

namespace troupe {

namespace {

// Common short English words: one token each (with the leading space) in the
// usual BPE vocabularies, so words ~ tokens before calibration.
constexpr const char* words_list[] = {
    "the",   "of",    "and",   "to",    "in",    "is",    "that",  "for",   "it",    "as",    "was",   "with",
    "be",    "by",    "on",    "not",   "he",    "this",  "are",   "or",    "his",   "from",  "at",    "which",
    "but",   "have",  "an",    "had",   "they",  "you",   "were",  "their", "one",   "all",   "we",    "can",
    "her",   "has",   "there", "been",  "if",    "more",  "when",  "will",  "would", "who",   "so",    "no",
    "time",  "day",   "man",   "world", "life",  "house", "water", "light", "night", "hand",  "word",  "work",
    "good",  "new",   "old",   "great", "small", "long",  "first", "last",  "right", "place", "year",  "way",
    "out",   "up",    "down",  "over",  "under", "after", "before", "again", "some",  "many",  "most",  "other"};
constexpr size_t n_words = sizeof(words_list) / sizeof(words_list[0]);

// Length uniform in [len*(1-r), len*(1+r)] (integer bounds as vLLM), at least 1.
int64_t sample_len(int64_t len, double r, std::mt19937_64& rng) {
  const int64_t lo = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(len) * (1 - r)));
  const int64_t hi = std::max<int64_t>(lo, static_cast<int64_t>(static_cast<double>(len) * (1 + r)));
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

void check_shape(const random_shape& s) {
  if (s.input_len < 1 || s.output_len < 1)
    throw error(errc::errc_invalid_argument, "--random-input-len and --random-output-len must be >= 1");
  if (!(s.range_ratio >= 0 && s.range_ratio < 1))
    throw error(errc::errc_invalid_argument, "--random-range-ratio must be in [0, 1)");
  if (s.vocab_size <= 100) throw error(errc::errc_invalid_argument, "--vocab-size must be > 100");
}

std::string text_of(size_t words, std::mt19937_64& rng) {
  std::uniform_int_distribution<size_t> pick(0, n_words - 1);
  std::string s;
  for (size_t i = 0; i < words; ++i) {
    if (i) s += ' ';
    s += words_list[pick(rng)];
  }
  return s;
}

}  // namespace

std::vector<workload_item> workload_random_ids(const random_shape& shape, size_t n, uint64_t seed) {
  check_shape(shape);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> id(100, shape.vocab_size - 1);
  std::vector<workload_item> out(n);
  for (workload_item& w : out) {
    w.prompt_len = sample_len(shape.input_len, shape.range_ratio, rng);
    w.output_len = sample_len(shape.output_len, shape.range_ratio, rng);
    std::string s = "[";
    for (int64_t i = 0; i < w.prompt_len; ++i) {
      if (i) s += ',';
      s += std::to_string(id(rng));
    }
    w.prompt_json = s + "]";
  }
  return out;
}

std::vector<workload_item> workload_random_text(const random_shape& shape, size_t n, uint64_t seed,
                                                double tokens_per_word) {
  check_shape(shape);
  if (!(tokens_per_word > 0)) tokens_per_word = 1;
  std::mt19937_64 rng(seed);
  std::vector<workload_item> out(n);
  for (workload_item& w : out) {
    w.prompt_len = sample_len(shape.input_len, shape.range_ratio, rng);
    w.output_len = sample_len(shape.output_len, shape.range_ratio, rng);
    const size_t words = std::max<size_t>(1, static_cast<size_t>(std::lround(static_cast<double>(w.prompt_len) / tokens_per_word)));
    w.prompt_json = nlohmann::json(text_of(words, rng)).dump();
  }
  return out;
}

std::string workload_sample_text(size_t words, uint64_t seed) {
  std::mt19937_64 rng(seed);
  return text_of(words, rng);
}

std::vector<workload_item> workload_load_jsonl(const std::string& path, size_t n, int64_t default_output_len) {
  std::ifstream f(path);
  if (!f) throw error(errc::errc_io, path + ": cannot open: " + std::strerror(errno));
  std::vector<workload_item> lines;
  std::string line;
  for (size_t no = 1; std::getline(f, line); ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string at = path + ":" + std::to_string(no) + ": ";
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw error(errc::errc_invalid_argument, at + "not a JSON object");
    workload_item w;
    const nlohmann::json* p = j.contains("messages") ? &j["messages"] : j.contains("prompt") ? &j["prompt"] : nullptr;
    if (!p) throw error(errc::errc_invalid_argument, at + "needs \"prompt\" or \"messages\"");
    if (p->is_string()) {
      if (p->get_ref<const std::string&>().empty()) throw error(errc::errc_invalid_argument, at + "empty prompt");
    } else if (p->is_array() && !p->empty() && (*p)[0].is_number_integer()) {
      for (const auto& v : *p)
        if (!v.is_number_integer() || v.get<int64_t>() < 0)
          throw error(errc::errc_invalid_argument, at + "token ids must be non-negative integers");
      w.prompt_len = static_cast<int64_t>(p->size());
    } else if (p->is_array() && !p->empty() && (*p)[0].is_object()) {
      w.messages = true;
    } else {
      throw error(errc::errc_invalid_argument, at + "prompt must be text, token ids or chat messages");
    }
    w.prompt_json = p->dump();
    w.output_len = default_output_len;
    if (auto o = j.find("output_len"); o != j.end()) {
      if (!o->is_number_integer() || o->get<int64_t>() < 1)
        throw error(errc::errc_invalid_argument, at + "output_len must be an integer >= 1");
      w.output_len = o->get<int64_t>();
    }
    lines.push_back(std::move(w));
  }
  if (lines.empty()) throw error(errc::errc_invalid_argument, path + ": no prompts");
  if (n == 0) return lines;
  std::vector<workload_item> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(lines[i % lines.size()]);
  return out;
}

std::vector<double> arrivals_plan(size_t n, double rate, double burstiness, uint64_t seed) {
  std::vector<double> out(n, 0.0);
  if (std::isinf(rate) && rate > 0) return out;
  if (!(rate > 0)) throw error(errc::errc_invalid_argument, "--request-rate must be > 0 (or inf)");
  if (!(burstiness > 0) || !std::isfinite(burstiness))
    throw error(errc::errc_invalid_argument, "--burstiness must be > 0");
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> gap(burstiness, 1.0 / (rate * burstiness));
  double t = 0;
  for (size_t i = 1; i < n; ++i) out[i] = t += gap(rng);
  return out;
}

std::string request_body(const workload_item& item, const body_options& o, int64_t max_tokens) {
  nlohmann::json prompt = nlohmann::json::parse(item.prompt_json);
  nlohmann::json b;
  b["model"] = o.model;
  if (o.api == api_kind::api_chat) {
    if (item.messages) b["messages"] = std::move(prompt);
    else if (prompt.is_string()) b["messages"] = nlohmann::json::array({{{"role", "user"}, {"content", std::move(prompt)}}});
    else throw error(errc::errc_invalid_argument, "token-id prompts need --endpoint /v1/completions");
    b["max_completion_tokens"] = max_tokens;
  } else {
    if (item.messages) throw error(errc::errc_invalid_argument, "chat messages need --endpoint /v1/chat/completions");
    b["prompt"] = std::move(prompt);
    b["max_tokens"] = max_tokens;
  }
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  if (o.ignore_eos) b["ignore_eos"] = true;
  if (o.temperature) b["temperature"] = *o.temperature;
  return b.dump();
}

}  // namespace troupe
