#include "model/weight_arena.hpp"

#include <cstring>
#include <unordered_map>

#include "config/errors.hpp"
#include "model/checkpoint.hpp"

namespace troupe {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

std::vector<arena_want> weight_arena_plan(const model_config& c, layer_range r) {
  if (r.first < 0 || r.last > c.n_layers || r.first >= r.last)
    throw error(errc::errc_invalid_argument, "layer range [" + std::to_string(r.first) + ", " +
                                                 std::to_string(r.last) + ") is not inside [0, " +
                                                 std::to_string(c.n_layers) + ")");
  const int64_t h = c.hidden_size, q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;
  std::vector<arena_want> w;
  auto add = [&](std::string name, std::vector<int64_t> shape) { w.push_back({name, name, std::move(shape)}); };
  if (r.first == 0) add("model.embed_tokens.weight", {c.vocab_size, h});
  for (int64_t l = r.first; l < r.last; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {h});
    add(p + "self_attn.q_proj.weight", {q, h});
    add(p + "self_attn.k_proj.weight", {kv, h});
    add(p + "self_attn.v_proj.weight", {kv, h});
    add(p + "self_attn.o_proj.weight", {h, q});
    if (c.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {q});
      add(p + "self_attn.k_proj.bias", {kv});
      add(p + "self_attn.v_proj.bias", {kv});
    }
    if (c.o_bias) add(p + "self_attn.o_proj.bias", {h});
    if (c.qk_norm) {
      add(p + "self_attn.q_norm.weight", {c.head_dim});
      add(p + "self_attn.k_norm.weight", {c.head_dim});
    }
    add(p + "post_attention_layernorm.weight", {h});
    add(p + "mlp.gate_proj.weight", {inter, h});
    add(p + "mlp.up_proj.weight", {inter, h});
    add(p + "mlp.down_proj.weight", {h, inter});
    if (c.mlp_bias) {
      add(p + "mlp.gate_proj.bias", {inter});
      add(p + "mlp.up_proj.bias", {inter});
      add(p + "mlp.down_proj.bias", {h});
    }
  }
  if (r.last == c.n_layers) {
    add("model.norm.weight", {h});
    w.push_back({"lm_head.weight", c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight",
                 {c.vocab_size, h}});
  }
  return w;
}

weight_arena weight_arena::load(const checkpoint& ckpt, const model_config& cfg, layer_range range) {
  const std::vector<arena_want> plan = weight_arena_plan(cfg, range);
  weight_arena a;
  a.range_ = range;
  std::vector<const tensor_info*> src;
  std::unordered_map<std::string, size_t> placed;  // source tensor -> manifest index
  size_t offset = 0;
  for (const arena_want& w : plan) {
    const tensor_info* t = ckpt.find(w.source);
    if (t == nullptr)
      throw error(errc::errc_invalid_model_file,
                  ckpt.dir().string() + ": tensor '" + w.source + "' is missing (needed for " + w.name + ")");
    if (t->shape != w.shape)
      throw error(errc::errc_invalid_model_file, t->file + ": tensor '" + w.source + "' has shape " +
                                                     shape_str(t->shape) + " but the config implies " +
                                                     shape_str(w.shape));
    arena_entry e{w.name, t->type, w.shape, 0, t->bytes};
    if (auto it = placed.find(w.source); it != placed.end()) {
      e.offset = a.manifest_[it->second].offset;  // tied weights share bytes
    } else {
      offset = (offset + 63) & ~size_t{63};
      e.offset = offset;
      offset += t->bytes;
      placed.emplace(w.source, a.manifest_.size());
    }
    a.manifest_.push_back(std::move(e));
    src.push_back(t);
  }
  a.buffer_ = host_buffer(offset);
  for (size_t i = 0; i < plan.size(); ++i)
    if (placed.at(plan[i].source) == i) std::memcpy(a.buffer_.data() + a.manifest_[i].offset, src[i]->data, src[i]->bytes);
  return a;
}

const arena_entry* weight_arena::find(std::string_view name) const {
  for (const arena_entry& e : manifest_)
    if (e.name == name) return &e;
  return nullptr;
}

weight_ref weight_arena::ref_or_null(std::string_view name) const {
  const arena_entry* e = find(name);
  if (e == nullptr) return {};
  return {e->type, buffer_.data() + e->offset, e->shape.size() == 2 ? e->shape[0] : 1, e->shape.back()};
}

weight_ref weight_arena::ref(std::string_view name) const {
  weight_ref r = ref_or_null(name);
  if (r.data == nullptr)
    throw error(errc::errc_invalid_argument, "weight arena has no tensor '" + std::string(name) + "'");
  return r;
}

}  // namespace troupe
