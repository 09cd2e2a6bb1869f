#include "model/generate.hpp"

#include <algorithm>
#include <chrono>

namespace troupe {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void check(errc e, const char* what) {
  if (e != errc::ok) throw error(e, std::string(what) + " failed: " + errc_name(e));
}

// One body for both signatures: the CPU model with its kv_cache, and any
// engine with its engine_kv.
template <class M, class KV>
errc prefill_impl(M& m, KV& kv, int64_t seq, std::span<const int32_t> prompt, int64_t chunk_size,
             std::vector<float>* all_logits, std::vector<float>* last_logits) {
  if (chunk_size <= 0 || prompt.empty()) return errc::errc_invalid_argument;
  const size_t vocab = static_cast<size_t>(m.config().vocab_size);
  if (all_logits != nullptr) all_logits->clear();
  std::vector<float> out;
  for (size_t begin = 0; begin < prompt.size(); begin += static_cast<size_t>(chunk_size)) {
    const size_t n = std::min(prompt.size() - begin, static_cast<size_t>(chunk_size));
    const bool final_chunk = begin + n == prompt.size();
    seq_chunk c{seq, prompt.subspan(begin, n),
                all_logits != nullptr ? logits_mode::logits_all
                                      : (final_chunk ? logits_mode::logits_last : logits_mode::logits_none)};
    if (errc e = m.forward({&c, 1}, kv, out); e != errc::ok) return e;
    if (all_logits != nullptr) all_logits->insert(all_logits->end(), out.begin(), out.end());
    if (final_chunk && last_logits != nullptr) last_logits->assign(out.end() - static_cast<long>(vocab), out.end());
  }
  return errc::ok;
}

template <class M, class KV>
generate_result generate_impl(M& m, KV& kv, int64_t seq, std::span<const int32_t> prompt,
                              const generate_options& opt) {
  if (std::string bad = sampling_params_validate(opt.sampling); !bad.empty())
    throw error(errc::errc_invalid_argument, bad);
  if (opt.max_tokens < 0) throw error(errc::errc_invalid_argument, "max_tokens must be >= 0");
  if (prompt.empty()) throw error(errc::errc_invalid_argument, "the prompt is empty");
  generate_result r;
  r.finish_reason = "length";
  sampler s(opt.sampling, m.config().vocab_size, prompt);
  std::vector<int32_t> eos = m.config().eos_token_ids;
  eos.insert(eos.end(), opt.eos_token_ids.begin(), opt.eos_token_ids.end());
  std::vector<float> logits;
  auto t0 = std::chrono::steady_clock::now();
  errc e = prefill_impl(m, kv, seq, prompt, opt.chunk_size, nullptr, &logits);
  r.prefill_seconds = seconds_since(t0);
  if (e != errc::ok) {
    kv.free(seq);
    check(e, "prefill");
  }
  t0 = std::chrono::steady_clock::now();
  while (static_cast<int64_t>(r.tokens.size()) < opt.max_tokens) {
    const int32_t tok = s.sample(logits);
    r.tokens.push_back(tok);
    if (opt.on_token) opt.on_token(tok);
    if (!opt.ignore_eos && std::find(eos.begin(), eos.end(), tok) != eos.end()) {
      r.finish_reason = "stop";
      break;
    }
    if (static_cast<int64_t>(r.tokens.size()) == opt.max_tokens) break;
    seq_chunk c{seq, {&r.tokens.back(), 1}, logits_mode::logits_last};
    if (errc fe = m.forward({&c, 1}, kv, logits); fe != errc::ok) {
      kv.free(seq);
      check(fe, "decode step");
    }
  }
  r.decode_seconds = seconds_since(t0);
  kv.free(seq);
  return r;
}

}  // namespace

errc prefill(model& m, kv_cache& kv, int64_t seq, std::span<const int32_t> prompt, int64_t chunk_size,
             std::vector<float>* all_logits, std::vector<float>* last_logits) {
  return prefill_impl(m, kv, seq, prompt, chunk_size, all_logits, last_logits);
}

errc prefill(engine& m, engine_kv& kv, int64_t seq, std::span<const int32_t> prompt, int64_t chunk_size,
             std::vector<float>* all_logits, std::vector<float>* last_logits) {
  return prefill_impl(m, kv, seq, prompt, chunk_size, all_logits, last_logits);
}

generate_result generate(model& m, kv_cache& kv, int64_t seq, std::span<const int32_t> prompt,
                         const generate_options& opt) {
  return generate_impl(m, kv, seq, prompt, opt);
}

generate_result generate(engine& m, engine_kv& kv, int64_t seq, std::span<const int32_t> prompt,
                         const generate_options& opt) {
  return generate_impl(m, kv, seq, prompt, opt);
}

}  // namespace troupe
