// config.json reader for Llama, Mistral, Qwen2 and Qwen3 checkpoints. It follows
// what transformers' config classes do with each key (defaults, derived values,
// which keys each architecture ignores) rather than what the keys' names
// suggest, because the goal is to run a checkpoint exactly as transformers does.
// Every key goes through one small typed accessor (key_reader) so that types are
// checked strictly (no string->number or float->int coercion) and every error
// names the file and the full key path; JSON null means "unset", as it does in
// transformers. Both RoPE spellings are accepted: transformers >= 5 writes
// rope_parameters, older versions rope_theta + rope_scaling.
#include "model/model_config.hpp"

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

namespace troupe {
namespace {

using json = nlohmann::json;

/// A JSON value for an error message, shortened so a huge value stays readable.
std::string show(const json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

/// Typed, strict access to the keys of one JSON object; `prefix` ("rope_parameters.")
/// makes nested keys appear by their full path in error messages.
class key_reader {
 public:
  key_reader(const json& obj, const std::string& origin, std::string prefix = "")
      : obj_(obj), origin_(origin), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(errc code, std::string_view key, const std::string& what) const {
    throw error(code, origin_ + ": key '" + prefix_ + std::string(key) + "': " + what);
  }
  [[noreturn]] void fail_type(std::string_view key, const char* expected, const json& got) const {
    fail(errc::errc_invalid_config, key, std::string("expected ") + expected + ", got " + show(got));
  }

  /// Whether `key` is written at all (null included).
  bool has(std::string_view key) const { return obj_.contains(key); }

  /// The value of `key`, or nullptr when it is absent or null.
  const json* find(std::string_view key) const {
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }

  /// An integer >= `min`, or nullopt when unset. Floats (even 4.0) are rejected.
  std::optional<int64_t> opt_int(std::string_view key, int64_t min) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    const char* expected = min > 0 ? "a positive integer" : "a non-negative integer";
    if (!v->is_number_integer()) fail_type(key, expected, *v);
    if (v->is_number_unsigned() &&
        v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail_type(key, expected, *v);
    }
    const int64_t x = v->get<int64_t>();
    if (x < min) fail_type(key, expected, *v);
    return x;
  }
  int64_t req_int(std::string_view key) const {
    if (auto x = opt_int(key, 1)) return *x;
    fail(errc::errc_invalid_config, key, "required, expected a positive integer, but it is missing");
  }

  /// A number (integer or float); `positive` demands > 0.
  std::optional<double> opt_number(std::string_view key, bool positive) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    const char* expected = positive ? "a positive number" : "a number";
    if (!v->is_number()) fail_type(key, expected, *v);
    const double x = v->get<double>();
    if (positive && !(x > 0.0)) fail_type(key, expected, *v);
    return x;
  }
  double req_number(std::string_view key, const std::string& why) const {
    if (auto x = opt_number(key, true)) return *x;
    fail(errc::errc_invalid_config, key, "required " + why + ", but it is missing");
  }

  std::optional<bool> opt_bool(std::string_view key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) fail_type(key, "true or false", *v);
    return v->get<bool>();
  }

  std::optional<std::string> opt_string(std::string_view key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail_type(key, "a string", *v);
    return v->get<std::string>();
  }

  /// bos_token_id / eos_token_id: one id, a list of ids, or unset.
  std::vector<int32_t> token_ids(std::string_view key) const {
    const json* v = find(key);
    if (!v) return {};
    const char* expected = "a token id or a list of token ids";
    auto one = [&](const json& x) {
      const bool in_range = x.is_number_unsigned()  ? x.get<uint64_t>() <= INT32_MAX
                            : x.is_number_integer() ? x.get<int64_t>() >= 0 && x.get<int64_t>() <= INT32_MAX
                                                    : false;
      if (!in_range) fail_type(key, expected, *v);
      return static_cast<int32_t>(x.get<int64_t>());
    };
    std::vector<int32_t> ids;
    if (v->is_array()) {
      for (const json& x : *v) ids.push_back(one(x));
    } else {
      ids.push_back(one(*v));
    }
    return ids;
  }

 private:
  const json& obj_;
  const std::string& origin_;
  std::string prefix_;
};

struct arch_name {
  model_arch arch;
  const char* architecture;
  const char* model_type;
};
constexpr arch_name arch_names[] = {
    {model_arch::arch_llama, "LlamaForCausalLM", "llama"},
    {model_arch::arch_mistral, "MistralForCausalLM", "mistral"},
    {model_arch::arch_qwen2, "Qwen2ForCausalLM", "qwen2"},
    {model_arch::arch_qwen3, "Qwen3ForCausalLM", "qwen3"},
};

void read_arch(const key_reader& r, model_config& c) {
  const json* archs = r.find("architectures");
  if (archs && !archs->is_array()) r.fail_type("architectures", "a list of strings", *archs);
  if (archs && !archs->empty()) {
    const json& first = (*archs)[0];
    if (!first.is_string()) r.fail_type("architectures", "a list of strings", *archs);
    for (const arch_name& a : arch_names) {
      if (first.get<std::string>() == a.architecture) {
        c.arch = a.arch;
        c.architecture = a.architecture;
        return;
      }
    }
    r.fail(errc::errc_invalid_config, "architectures",
           "unknown architecture " + show(first) +
               " (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");
  }
  const auto model_type = r.opt_string("model_type");
  for (const arch_name& a : arch_names) {
    if (model_type && *model_type == a.model_type) {
      c.arch = a.arch;
      c.architecture = a.architecture;
      return;
    }
  }
  r.fail(errc::errc_invalid_config, "architectures",
         "missing, and model_type " + (model_type ? show(json(*model_type)) : std::string("is missing")) +
             (model_type ? " is not one of llama, mistral, qwen2, qwen3" : ""));
}

void read_shape(const key_reader& r, model_config& c) {
  c.vocab_size = r.req_int("vocab_size");
  c.hidden_size = r.req_int("hidden_size");
  c.intermediate_size = r.req_int("intermediate_size");
  c.n_layers = r.req_int("num_hidden_layers");
  c.n_heads = r.req_int("num_attention_heads");
  c.n_kv_heads = r.opt_int("num_key_value_heads", 1).value_or(c.n_heads);
  if (c.n_heads % c.n_kv_heads != 0) {
    r.fail(errc::errc_invalid_config, "num_key_value_heads",
           std::to_string(c.n_kv_heads) + " does not divide num_attention_heads " + std::to_string(c.n_heads));
  }
  if (auto hd = r.opt_int("head_dim", 1)) {
    c.head_dim = *hd;
  } else if (c.hidden_size % c.n_heads != 0) {
    r.fail(errc::errc_invalid_config, "hidden_size",
           std::to_string(c.hidden_size) + " is not divisible by num_attention_heads " +
               std::to_string(c.n_heads) + " and no head_dim is given");
  } else {
    c.head_dim = c.hidden_size / c.n_heads;
  }
  c.rms_norm_eps = static_cast<float>(r.opt_number("rms_norm_eps", true).value_or(1e-6));
  // transformers' class defaults: Llama 2048, Mistral 4096 * 32, Qwen2/Qwen3 32768.
  const int64_t max_pos_default = c.arch == model_arch::arch_llama     ? 2048
                                  : c.arch == model_arch::arch_mistral ? 131072
                                                                       : 32768;
  c.max_position_embeddings = r.opt_int("max_position_embeddings", 1).value_or(max_pos_default);
  c.tie_word_embeddings = r.opt_bool("tie_word_embeddings").value_or(false);
  if (auto act = r.opt_string("hidden_act"); act && *act != "silu") {
    r.fail(errc::errc_unsupported, "hidden_act", "only \"silu\" is supported, got " + show(json(*act)));
  }
  if (auto p = r.opt_number("partial_rotary_factor", false); p && *p != 1.0) {
    r.fail(errc::errc_unsupported, "partial_rotary_factor",
           "partial rotary embeddings are not supported, got " + show(json(*p)));
  }
}

void read_biases(const key_reader& r, model_config& c) {
  switch (c.arch) {
    case model_arch::arch_qwen2: c.qkv_bias = true; break;
    case model_arch::arch_llama:
      c.mlp_bias = r.opt_bool("mlp_bias").value_or(false);
      [[fallthrough]];
    case model_arch::arch_qwen3:
      c.qkv_bias = c.o_bias = r.opt_bool("attention_bias").value_or(false);
      break;
    case model_arch::arch_mistral: break;
  }
  c.qk_norm = c.arch == model_arch::arch_qwen3;
}

/// Sliding window per layer. Llama has none; Mistral applies sliding_window to
/// every layer (and, like transformers, ignores layer_types); Qwen2/Qwen3 use a
/// window only when use_sliding_window is true, on the layers layer_types marks
/// (or, without layer_types, on layers >= max_window_layers).
void read_sliding_window(const key_reader& r, model_config& c) {
  c.sliding_window.assign(static_cast<size_t>(c.n_layers), 0);
  if (c.arch == model_arch::arch_llama) return;
  if (c.arch == model_arch::arch_mistral) {
    // MistralConfig's default is 4096 when the key is absent; null means full attention.
    const int64_t w = !r.has("sliding_window") ? 4096 : r.opt_int("sliding_window", 1).value_or(0);
    c.sliding_window.assign(static_cast<size_t>(c.n_layers), w);
    return;
  }
  const bool use = r.opt_bool("use_sliding_window").value_or(false);
  const json* types = r.find("layer_types");
  std::vector<bool> sliding(static_cast<size_t>(c.n_layers), false);
  if (types) {
    const char* expected = "a list of num_hidden_layers strings \"full_attention\" or \"sliding_attention\"";
    if (!types->is_array() || static_cast<int64_t>(types->size()) != c.n_layers) {
      r.fail_type("layer_types", expected, *types);
    }
    for (size_t i = 0; i < types->size(); ++i) {
      const json& t = (*types)[i];
      if (t == "sliding_attention") {
        sliding[i] = true;
      } else if (t != "full_attention") {
        r.fail(errc::errc_invalid_config, "layer_types",
               "layer " + std::to_string(i) + ": unknown layer type " + show(t) + ", expected " + expected);
      }
    }
  }
  if (!use) return;  // transformers sets sliding_window to None: every layer is full
  // Qwen2Config's default window is 4096 when the key is absent.
  const std::optional<int64_t> w = !r.has("sliding_window") ? std::optional<int64_t>(4096) : r.opt_int("sliding_window", 1);
  if (!types) {
    if (!w) return;  // no window: transformers derives all-full layer_types
    const int64_t first = r.opt_int("max_window_layers", 0).value_or(28);
    for (int64_t i = first; i < c.n_layers; ++i) sliding[static_cast<size_t>(i)] = true;
  }
  for (size_t i = 0; i < sliding.size(); ++i) {
    if (!sliding[i]) continue;
    if (!w) r.fail(errc::errc_invalid_config, "sliding_window", "layer_types has sliding layers, but it is null");
    c.sliding_window[i] = *w;
  }
}

struct rope_type_name {
  rope_type type;
  const char* name;
};
constexpr rope_type_name rope_type_names[] = {
    {rope_type::rope_default, "default"},
    {rope_type::rope_linear, "linear"},
    {rope_type::rope_llama3, "llama3"},
    {rope_type::rope_yarn, "yarn"},
};

/// RoPE from rope_parameters (transformers >= 5) or, when that is unset, from the
/// legacy rope_theta + rope_scaling (null there means plain RoPE).
void read_rope(const key_reader& top, const std::string& origin, model_config& c) {
  rope_scaling& s = c.rope;
  s = rope_scaling{};
  s.theta = top.opt_number("rope_theta", true).value_or(10000.0);
  const json* params = top.find("rope_parameters");
  const std::string section = params ? "rope_parameters" : "rope_scaling";
  const json* src = params ? params : top.find("rope_scaling");
  if (!src) return;
  if (!src->is_object()) top.fail_type(section, "an object", *src);
  const key_reader r(*src, origin, section + ".");

  if (auto theta = r.opt_number("rope_theta", true)) s.theta = *theta;
  if (auto p = r.opt_number("partial_rotary_factor", false); p && *p != 1.0) {
    r.fail(errc::errc_unsupported, "partial_rotary_factor",
           "partial rotary embeddings are not supported, got " + show(json(*p)));
  }
  // "type" is the pre-4.45 spelling of "rope_type".
  const char* type_key = r.find("rope_type") || !r.find("type") ? "rope_type" : "type";
  const auto type = r.opt_string(type_key);
  if (!type && !params) {
    r.fail(errc::errc_invalid_config, "rope_type", "required (or the legacy \"type\"), but it is missing");
  }
  const std::string name = type.value_or("default");
  bool known = false;
  for (const rope_type_name& t : rope_type_names) {
    if (name == t.name) {
      s.type = t.type;
      known = true;
    }
  }
  if (!known) {
    r.fail(errc::errc_unsupported, type_key,
           "RoPE type " + show(json(name)) + " is not supported (supported: default, linear, llama3, yarn)");
  }

  const std::string why = "for rope_type \"" + name + "\"";
  const bool llama3 = s.type == rope_type::rope_llama3;
  if (s.type == rope_type::rope_default) {
    s.factor = r.opt_number("factor", true).value_or(1.0);
  } else {
    s.factor = r.req_number("factor", why);
  }
  // transformers reads all four llama3 keys unconditionally (KeyError without them).
  s.low_freq_factor = llama3 ? r.req_number("low_freq_factor", why)
                             : r.opt_number("low_freq_factor", true).value_or(s.low_freq_factor);
  s.high_freq_factor = llama3 ? r.req_number("high_freq_factor", why)
                              : r.opt_number("high_freq_factor", true).value_or(s.high_freq_factor);
  if (llama3 && !(s.high_freq_factor > s.low_freq_factor)) {
    r.fail(errc::errc_invalid_config, "high_freq_factor",
           "must be greater than low_freq_factor " + show(json(s.low_freq_factor)) + ", got " +
               show(json(s.high_freq_factor)));
  }
  const auto original = r.opt_int("original_max_position_embeddings", 1);
  if (llama3 && !original) {
    r.fail(errc::errc_invalid_config, "original_max_position_embeddings", "required " + why + ", but it is missing");
  }
  s.original_max_position =
      original.value_or(s.type == rope_type::rope_yarn ? c.max_position_embeddings : 0);
  s.attention_factor = r.opt_number("attention_factor", true).value_or(s.attention_factor);
  s.beta_fast = r.opt_number("beta_fast", true).value_or(s.beta_fast);
  s.beta_slow = r.opt_number("beta_slow", true).value_or(s.beta_slow);
  s.mscale = r.opt_number("mscale", false).value_or(s.mscale);
  s.mscale_all_dim = r.opt_number("mscale_all_dim", false).value_or(s.mscale_all_dim);
  s.truncate = r.opt_bool("truncate").value_or(s.truncate);
}

}  // namespace

model_config model_config_parse(const std::string& json_text, const std::string& origin) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw error(errc::errc_invalid_config, origin + ": malformed JSON at byte " + std::to_string(e.byte) + ": " + e.what());
  }
  if (!root.is_object()) {
    throw error(errc::errc_invalid_config, origin + ": expected a JSON object at the top level, got " + show(root));
  }
  const key_reader r(root, origin);
  model_config c;
  read_arch(r, c);
  read_shape(r, c);
  read_biases(r, c);
  read_sliding_window(r, c);
  read_rope(r, origin, c);
  c.bos_token_ids = r.token_ids("bos_token_id");
  c.eos_token_ids = r.token_ids("eos_token_id");
  return c;
}

model_config model_config_load(const std::filesystem::path& path) {
  std::error_code ec;
  const std::filesystem::path file =
      std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    const std::string why = std::error_code(errno, std::generic_category()).message();
    throw error(errc::errc_io, "cannot open model config " + file.string() + ": " + why);
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw error(errc::errc_io, "cannot read model config " + file.string());
  return model_config_parse(text.str(), file.string());
}

}  // namespace troupe
