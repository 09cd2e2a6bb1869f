// `troupe generate` and `troupe logits`: one sequence through the engine.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "actors/commands.hpp"
#include "config/errors.hpp"
#include "config/tunables.hpp"
#include "kernels/threads.hpp"
#include "model/engine.hpp"
#include "model/generate.hpp"
#include "model/generation_config.hpp"
#include "model/model.hpp"
#include "model/detokenizer.hpp"
#include "model/tokenizer.hpp"

namespace troupe {

namespace {

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
  for (tunable* v : t.all()) cmd->add_option(std::string("--") + v->name, v->value, v->doc)->capture_default_str();
}

void apply_tunables(engine_tunables& t) {
  if (std::string bad = tunables_validate(t); !bad.empty()) throw error(errc::errc_invalid_argument, bad);
  cpu_threads_set(static_cast<int>(t.threads.value));
}

// A KV cache for `tokens` tokens (at least) within the configured budget, on the engine's device.
std::unique_ptr<engine_kv> make_cache(engine& m, const engine_tunables& t, int64_t tokens) {
  kv_cache_config c = m.kv_config(t.kv_page_size.value, 0);
  const int64_t budget = kv_cache_pages_for_bytes(c, static_cast<size_t>(t.kv_cache_mib.value) << 20);
  c.n_pages = std::max<int64_t>(1, (tokens + c.page_size - 1) / c.page_size);
  if (c.n_pages > budget)
    throw error(errc::errc_kv_exhausted, std::to_string(tokens) + " tokens need " + std::to_string(c.n_pages) +
                                             " KV pages but --kv-cache-mib allows " + std::to_string(budget));
  return m.kv_make(c.page_size, c.n_pages);
}

}  // namespace

std::filesystem::path default_model_dir() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec)
    for (const char* rel : {"../models/demo", "../share/troupe/models/demo"})
      if (std::filesystem::exists(exe.parent_path() / rel / "config.json"))
        return std::filesystem::weakly_canonical(exe.parent_path() / rel);
  return std::filesystem::path(TROUPE_SOURCE_DIR) / "models" / "demo";
}

command command_logits(CLI::App& app) {
  struct opts {
    std::string model_dir = default_model_dir().string(), ids_file, out_file, device = "cpu";
    engine_tunables tun;
  };
  auto o = std::make_shared<opts>();
  CLI::App* cmd = app.add_subcommand("logits", "write float32 logits of every prompt position");
  cmd->add_option("--model", o->model_dir, "checkpoint directory")->capture_default_str();
  cmd->add_option("--prompt-ids-file", o->ids_file, "token ids separated by whitespace or commas")->required();
  cmd->add_option("--out", o->out_file, "output: little-endian float32 [n_tokens x vocab_size]")->required();
  cmd->add_option("--device", o->device, "cpu, cuda[:N] or auto")->capture_default_str();
  add_tunables(cmd, o->tun);
  return {cmd, [o] {
            apply_tunables(o->tun);
            const std::vector<int32_t> ids = parse_ids(read_file(o->ids_file), o->ids_file);
            const std::shared_ptr<engine> m = engine_load(o->model_dir, {}, o->device);
            const std::unique_ptr<engine_kv> kv = make_cache(*m, o->tun, static_cast<int64_t>(ids.size()));
            std::vector<float> logits;
            if (errc e = prefill(*m, *kv, 0, ids, o->tun.chunked_prefill_size.value, &logits, nullptr); e != errc::ok)
              throw error(e, std::string("forward failed: ") + errc_name(e));
            std::ofstream out(o->out_file, std::ios::binary);
            if (!out) throw error(errc::errc_io, o->out_file + ": cannot open for writing");
            static_assert(std::endian::native == std::endian::little, "logits files are little-endian");
            out.write(reinterpret_cast<const char*>(logits.data()),
                      static_cast<std::streamsize>(logits.size() * sizeof(float)));
            if (!out) throw error(errc::errc_io, o->out_file + ": write failed");
            return 0;
          }};
}

command command_generate(CLI::App& app) {
  struct opts {
    std::string model_dir = default_model_dir().string(), ids_text, prompt, device = "cpu";
    generate_options gen;
    int64_t seed = -1;
    engine_tunables tun;
  };
  auto o = std::make_shared<opts>();
  CLI::App* cmd = app.add_subcommand("generate", "continue a prompt");
  cmd->add_option("--model", o->model_dir, "checkpoint directory")->capture_default_str();
  auto* text_opt = cmd->add_option("--prompt", o->prompt, "prompt text (prints the continuation as text)");
  auto* ids_opt = cmd->add_option("--prompt-ids", o->ids_text, "prompt token ids, e.g. 1,2,3 (prints the generated ids)");
  text_opt->excludes(ids_opt);
  cmd->add_option("--max-tokens", o->gen.max_tokens, "tokens to generate")->capture_default_str();
  // Sampling flags: unset ones take the checkpoint's generation_config.json defaults.
  auto* temperature = cmd->add_option("--temperature", o->gen.sampling.temperature, "0 = greedy");
  auto* top_p = cmd->add_option("--top-p", o->gen.sampling.top_p, "nucleus sampling mass");
  auto* top_k = cmd->add_option("--top-k", o->gen.sampling.top_k, "keep the k most likely tokens (0 = all)");
  auto* min_p = cmd->add_option("--min-p", o->gen.sampling.min_p, "drop tokens below min_p x the top probability");
  auto* rep = cmd->add_option("--repetition-penalty", o->gen.sampling.repetition_penalty, "> 1 discourages repeats");
  cmd->add_option("--frequency-penalty", o->gen.sampling.frequency_penalty, "[-2, 2]");
  cmd->add_option("--presence-penalty", o->gen.sampling.presence_penalty, "[-2, 2]");
  cmd->add_option("--seed", o->seed, "RNG seed (same seed, same tokens)");
  cmd->add_flag("--ignore-eos", o->gen.ignore_eos, "do not stop at the model's eos tokens");
  cmd->add_option("--device", o->device, "cpu, cuda[:N] or auto")->capture_default_str();
  add_tunables(cmd, o->tun);
  return {cmd, [=] {
            apply_tunables(o->tun);
            if (!*text_opt && !*ids_opt) throw error(errc::errc_invalid_argument, "give --prompt TEXT or --prompt-ids IDS");
            const bool text = !*ids_opt;
            std::optional<tokenizer> tok;
            std::vector<int32_t> ids;
            if (text) {
              tok = tokenizer::load(o->model_dir);
              ids = tok->encode(o->prompt, true);
              if (ids.empty()) throw error(errc::errc_invalid_argument, "--prompt: the prompt has no tokens");
              for (int32_t e : tok->eos_ids()) o->gen.eos_token_ids.push_back(e);
            } else {
              ids = parse_ids(o->ids_text, "--prompt-ids");
            }
            const std::shared_ptr<engine> m = engine_load(o->model_dir, {}, o->device);
            const generation_config gc = generation_config_load(o->model_dir);
            const sampling_params d = gc.defaults();
            sampling_params& s = o->gen.sampling;
            if (!temperature->count()) s.temperature = d.temperature;
            if (!top_p->count()) s.top_p = d.top_p;
            if (!top_k->count()) s.top_k = d.top_k;
            if (!min_p->count()) s.min_p = d.min_p;
            if (!rep->count()) s.repetition_penalty = d.repetition_penalty;
            if (o->seed >= 0) s.seed = static_cast<uint64_t>(o->seed);
            o->gen.eos_token_ids.insert(o->gen.eos_token_ids.end(), gc.eos_token_ids.begin(), gc.eos_token_ids.end());
            std::optional<detokenizer> detok;
            if (text) {
              detok.emplace(*tok, true);
              o->gen.on_token = [&](int32_t t) { std::cout << detok->push(t) << std::flush; };
            }
            const std::unique_ptr<engine_kv> kv =
                make_cache(*m, o->tun, static_cast<int64_t>(ids.size()) + o->gen.max_tokens);
            o->gen.chunk_size = o->tun.chunked_prefill_size.value;
            const generate_result r = generate(*m, *kv, 0, ids, o->gen);
            if (text) {
              std::cout << detok->flush() << std::endl;
            } else {
              std::string line;
              for (size_t i = 0; i < r.tokens.size(); ++i) line += (i ? "," : "") + std::to_string(r.tokens[i]);
              std::cout << line << std::endl;
            }
            std::fprintf(stderr, "prefill %zu tokens %.3fs, decode %zu tokens %.3fs, finish %s\n", ids.size(),
                         r.prefill_seconds, r.tokens.size(), r.decode_seconds, r.finish_reason.c_str());
            return 0;
          }};
}

}  // namespace troupe
