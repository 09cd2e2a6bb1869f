// Device resolution and the backend factory. The CUDA model is linked only in
// CUDA builds (model/cuda/); elsewhere a CUDA device is refused here, with the
// reason, before anything is loaded. Also the host sampling path every engine
// inherits (forward_sample) and the per-request sampling state.
#include "model/engine.hpp"

#include <algorithm>
#include <numeric>
#include <random>
#include <string>

#include "kernels/device.hpp"
#include "model/model.hpp"
#ifdef TROUPE_HAVE_CUDA
#include "model/cuda_model.hpp"
#endif

namespace troupe {

namespace {

sampling_params with_seed(sampling_params p) {
  if (!p.seed) {
    std::random_device rd;
    p.seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  return p;
}

bool penalties_on(const sampling_params& p) {
  return p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
}

}  // namespace

request_sampler::request_sampler(const sampling_params& p, int64_t vocab_size, std::span<const int32_t> prompt_tokens)
    : host_(with_seed(p), vocab_size, prompt_tokens), vocab_(std::max<int64_t>(vocab_size, 0)) {
  if (p.repetition_penalty == 1.0f) return;  // the prompt feeds only the repetition penalty
  for (int32_t t : prompt_tokens)
    if (t >= 0 && t < vocab_) history_.push_back({t, 0, 1});
  std::sort(history_.begin(), history_.end(),
            [](const sample_token_stat& a, const sample_token_stat& b) { return a.token < b.token; });
  history_.erase(std::unique(history_.begin(), history_.end(),
                             [](const sample_token_stat& a, const sample_token_stat& b) { return a.token == b.token; }),
                 history_.end());
}

void request_sampler::record_(int32_t token) {
  if (token < 0 || token >= vocab_ || !penalties_on(params())) return;
  auto it = std::lower_bound(history_.begin(), history_.end(), token,
                             [](const sample_token_stat& e, int32_t t) { return e.token < t; });
  if (it == history_.end() || it->token != token) it = history_.insert(it, {token, 0, 0});
  ++it->generated;
}

int32_t request_sampler::sample(std::span<const float> logits) {
  const int32_t token = host_.sample(logits);
  record_(token);
  return token;
}

void request_sampler::accept(int32_t token) {
  host_.accept(token);
  record_(token);
}

sample_row_params request_sampler::device_params(int32_t logprobs) const {
  const sampling_params& p = params();
  sample_row_params d;
  d.temperature = p.temperature;
  d.top_k = p.top_k;
  d.top_p = p.top_p;
  d.min_p = p.min_p;
  d.repetition_penalty = p.repetition_penalty;
  d.frequency_penalty = p.frequency_penalty;
  d.presence_penalty = p.presence_penalty;
  d.logprobs = logprobs;
  d.seed = p.seed.value_or(0);
  d.step = static_cast<uint64_t>(generated_count());
  return d;
}

errc engine::sample_rows_check(std::span<const seq_chunk> batch, std::span<const sample_request> rows) const {
  size_t wanted = 0;
  for (const seq_chunk& c : batch) {
    if (c.logits == logits_mode::logits_all) return errc::errc_invalid_argument;
    if (c.logits == logits_mode::logits_last && !c.tokens.empty()) ++wanted;
  }
  if (rows.size() != wanted) return errc::errc_invalid_argument;
  for (const sample_request& r : rows)
    if (r.sampler == nullptr || r.logprobs > sample_top_max) return errc::errc_invalid_argument;
  if (!rows.empty() && range().last != config().n_layers) return errc::errc_unsupported;
  return errc::ok;
}

errc engine::forward_sample(std::span<const seq_chunk> batch, engine_kv& kv, std::span<const sample_request> rows,
                            std::vector<sample_outcome>& out) {
  if (errc e = sample_rows_check(batch, rows); e != errc::ok) return e;
  thread_local std::vector<float> logits, lsm;  // vocab-sized; reused across steps
  thread_local std::vector<int32_t> ids;
  if (errc e = forward(batch, kv, logits); e != errc::ok) return e;
  const auto vocab = static_cast<size_t>(config().vocab_size);
  out.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::span<const float> row(logits.data() + i * vocab, vocab);
    sample_outcome& o = out[i];
    o.top.clear();
    o.logprob = 0.0f;
    const int32_t n = rows[i].logprobs;
    if (n >= 0) {
      lsm.resize(vocab);
      sampler::log_softmax(row, lsm);
    }
    o.token = rows[i].sampler->sample(row);
    if (n < 0) continue;
    // vLLM: log-softmax of the raw logits; the top n, ties by the lower id.
    o.logprob = lsm[static_cast<size_t>(o.token)];
    const size_t k = std::min(static_cast<size_t>(n), vocab);
    ids.resize(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(), [](int32_t a, int32_t b) {
      const float la = lsm[static_cast<size_t>(a)], lb = lsm[static_cast<size_t>(b)];
      return la > lb || (la == lb && a < b);
    });
    for (size_t j = 0; j < k; ++j) o.top.emplace_back(ids[j], lsm[static_cast<size_t>(ids[j])]);
  }
  return errc::ok;
}

std::unique_ptr<engine_kv> model::kv_make(int64_t page_size, int64_t n_pages) {
  return std::make_unique<engine_kv>(kv_config(page_size, n_pages));
}

std::string engine_resolve_device(const std::string& spec) {
  if (spec == "cpu") return "cpu";
  int index = -1;
  if (spec == "cuda") {
    index = 0;
  } else if (spec.rfind("cuda:", 0) == 0) {
    const std::string n = spec.substr(5);
    if (n.empty() || n.size() > 4 || n.find_first_not_of("0123456789") != std::string::npos)
      throw error(errc::errc_invalid_argument, "device '" + spec + "': expected cpu, cuda, cuda:N or auto");
    index = std::stoi(n);
  } else if (spec != "auto") {
    throw error(errc::errc_invalid_argument, "device '" + spec + "': expected cpu, cuda, cuda:N or auto");
  }
  if (!cuda_built()) {
    if (spec == "auto") return "cpu";
    throw error(errc::errc_unsupported, "device '" + spec + "': this build of troupe has no CUDA backend; use cpu");
  }
  std::string note;
  int gpus = 0;
  for (const device_info& d : devices_list(&note))
    if (d.kind == "cuda") ++gpus;
  if (spec == "auto") return gpus > 0 ? "cuda:0" : "cpu";
  if (index >= gpus)
    throw error(errc::errc_unsupported, "device '" + spec + "': " +
                                            (gpus == 0 ? "no CUDA GPU is visible" + (note.empty() ? "" : " (" + note + ")")
                                                       : "only " + std::to_string(gpus) + " CUDA GPU(s) are visible"));
  return "cuda:" + std::to_string(index);
}

dtype engine_kv_dtype(const std::string& device) {
  return device.rfind("cuda", 0) == 0 ? dtype::dtype_bf16 : dtype::dtype_f32;
}

std::shared_ptr<engine> engine_load(const std::filesystem::path& dir, layer_range range, const std::string& device) {
  const std::string d = engine_resolve_device(device);
  if (d == "cpu") return std::make_shared<model>(model::load(dir, range));
#ifdef TROUPE_HAVE_CUDA
  return cuda_model::load(dir, range, std::stoi(d.substr(5)));
#else
  throw error(errc::errc_unsupported, "device '" + device + "': this build of troupe has no CUDA backend");
#endif
}

}  // namespace troupe
