// The troupe command. Subcommands share one set of engine tunables declared in
// config/tunables.hpp; errors from loading or running end as one line on
// stderr and exit code 1 (2 for usage errors), never as a crash.
#include <CLI/CLI.hpp>

#include <bit>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "config/errors.hpp"
#include "config/tunables.hpp"
#include "kernels/device.hpp"
#include "kernels/threads.hpp"
#include "model/generate.hpp"
#include "model/model.hpp"

namespace {

using namespace troupe;

// Parses ids separated by commas and/or whitespace; throws naming the bad token.
std::vector<int32_t> parse_ids(const std::string& text, const std::string& origin) {
  std::vector<int32_t> ids;
  std::string tok;
  auto flush = [&] {
    if (tok.empty()) return;
    int32_t v = 0;
    auto [p, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
    if (ec != std::errc() || p != tok.data() + tok.size() || v < 0)
      throw error(errc::errc_invalid_argument, origin + ": '" + tok + "' is not a token id");
    ids.push_back(v);
    tok.clear();
  };
  for (char c : text) {
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) flush();
    else tok += c;
  }
  flush();
  if (ids.empty()) throw error(errc::errc_invalid_argument, origin + ": no token ids");
  return ids;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw error(errc::errc_io, path + ": cannot open: " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void add_tunables(CLI::App* cmd, engine_tunables& t) {
  for (tunable* v : t.all())
    cmd->add_option(std::string("--") + v->name, v->value, v->doc)->capture_default_str();
}

// A KV cache sized for `tokens` tokens (at least) within the configured budget.
kv_cache make_cache(const model& m, engine_tunables& t, int64_t tokens) {
  kv_cache_config c = m.kv_config(t.kv_page_size.value, 0);
  const int64_t budget = kv_cache_pages_for_bytes(c, static_cast<size_t>(t.kv_cache_mib.value) << 20);
  c.n_pages = (tokens + c.page_size - 1) / c.page_size;
  if (c.n_pages > budget)
    throw error(errc::errc_kv_exhausted, std::to_string(tokens) + " tokens need " + std::to_string(c.n_pages) +
                                             " KV pages but --kv-cache-mib allows " + std::to_string(budget));
  return kv_cache(c);
}

int run_logits(const std::string& dir, const std::string& ids_file, const std::string& out_file, engine_tunables& t) {
  const std::vector<int32_t> ids = parse_ids(read_file(ids_file), ids_file);
  model m = model::load(dir);
  kv_cache kv = make_cache(m, t, static_cast<int64_t>(ids.size()));
  std::vector<float> logits;
  if (errc e = prefill(m, kv, 0, ids, t.chunked_prefill_size.value, &logits, nullptr); e != errc::ok)
    throw error(e, std::string("forward failed: ") + errc_name(e));
  std::ofstream out(out_file, std::ios::binary);
  if (!out) throw error(errc::errc_io, out_file + ": cannot open for writing");
  static_assert(std::endian::native == std::endian::little, "logits files are little-endian");
  out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) throw error(errc::errc_io, out_file + ": write failed");
  return 0;
}

int run_generate(const std::string& dir, const std::string& ids_text, generate_options opt, engine_tunables& t) {
  const std::vector<int32_t> ids = parse_ids(ids_text, "--prompt-ids");
  model m = model::load(dir);
  kv_cache kv = make_cache(m, t, static_cast<int64_t>(ids.size()) + opt.max_tokens);
  opt.chunk_size = t.chunked_prefill_size.value;
  const generate_result r = generate(m, kv, 0, ids, opt);
  std::string line;
  for (size_t i = 0; i < r.tokens.size(); ++i) line += (i ? "," : "") + std::to_string(r.tokens[i]);
  std::cout << line << "\n";
  std::fprintf(stderr, "prefill %zu tokens %.3fs (%.1f tok/s), decode %zu tokens %.3fs (%.1f tok/s), finish %s\n",
               ids.size(), r.prefill_seconds, static_cast<double>(ids.size()) / std::max(r.prefill_seconds, 1e-9),
               r.tokens.size(), r.decode_seconds,
               static_cast<double>(r.tokens.size() > 1 ? r.tokens.size() - 1 : 0) / std::max(r.decode_seconds, 1e-9),
               r.finish_reason.c_str());
  return 0;
}

int run_devices() {
  std::string note;
  const std::vector<device_info> devs = devices_list(&note);
  for (const device_info& d : devs) {
    std::printf("%s:%d  %s  %.1f GiB  %d %s", d.kind.c_str(), d.index, d.name.c_str(),
                static_cast<double>(d.memory_bytes) / (1u << 30), d.cores, d.kind == "cpu" ? "threads" : "SMs");
    if (d.compute_capability) std::printf("  sm_%d", d.compute_capability);
    std::printf("\n");
  }
  if (devs.size() == 1 && !note.empty()) std::printf("(%s)\n", note.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"troupe: an actor-model runtime for serving large language models"};
  app.require_subcommand(1);
  engine_tunables tun;

  std::string model_dir, ids_file, out_file, ids_text;
  auto* logits_cmd = app.add_subcommand("logits", "write float32 logits of every prompt position");
  logits_cmd->add_option("--model", model_dir, "checkpoint directory")->required();
  logits_cmd->add_option("--prompt-ids-file", ids_file, "token ids separated by whitespace or commas")->required();
  logits_cmd->add_option("--out", out_file, "output: little-endian float32 [n_tokens x vocab_size]")->required();
  add_tunables(logits_cmd, tun);

  generate_options gen;
  int64_t seed = -1;
  auto* gen_cmd = app.add_subcommand("generate", "continue a prompt and print the generated ids");
  gen_cmd->add_option("--model", model_dir, "checkpoint directory")->required();
  gen_cmd->add_option("--prompt-ids", ids_text, "prompt token ids, e.g. 1,2,3")->required();
  gen_cmd->add_option("--max-tokens", gen.max_tokens, "tokens to generate")->capture_default_str();
  gen_cmd->add_option("--temperature", gen.sampling.temperature, "0 = greedy")->capture_default_str();
  gen_cmd->add_option("--top-p", gen.sampling.top_p, "nucleus sampling mass")->capture_default_str();
  gen_cmd->add_option("--top-k", gen.sampling.top_k, "keep the k most likely tokens (0 = all)")->capture_default_str();
  gen_cmd->add_option("--min-p", gen.sampling.min_p, "drop tokens below min_p x the top probability")
      ->capture_default_str();
  gen_cmd->add_option("--repetition-penalty", gen.sampling.repetition_penalty)->capture_default_str();
  gen_cmd->add_option("--frequency-penalty", gen.sampling.frequency_penalty)->capture_default_str();
  gen_cmd->add_option("--presence-penalty", gen.sampling.presence_penalty)->capture_default_str();
  gen_cmd->add_option("--seed", seed, "RNG seed (same seed, same tokens)");
  gen_cmd->add_flag("--ignore-eos", gen.ignore_eos, "do not stop at the model's eos token");
  add_tunables(gen_cmd, tun);

  auto* devices_cmd = app.add_subcommand("devices", "list the CPU and the CUDA devices troupe can use");

  CLI11_PARSE(app, argc, argv);
  try {
    if (std::string bad = tunables_validate(tun); !bad.empty()) throw error(errc::errc_invalid_argument, bad);
    if (*devices_cmd) return run_devices();
    cpu_threads_set(static_cast<int>(tun.threads.value));
    if (*logits_cmd) return run_logits(model_dir, ids_file, out_file, tun);
    if (seed >= 0) gen.sampling.seed = static_cast<uint64_t>(seed);
    return run_generate(model_dir, ids_text, gen, tun);
  } catch (const error& e) {
    std::fprintf(stderr, "troupe: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe: error: %s\n", e.what());
    return 1;
  }
}
