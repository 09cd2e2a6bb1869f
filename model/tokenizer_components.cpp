// Readers of the tokenizer.json components (normalizer, pre-tokenizer, model,
// post-processor, decoder). Each reads a component by its "type" with the
// defaults HF's serde gives missing fields; a type troupe does not implement is
// refused with errc_unsupported, a malformed one with errc_invalid_config, and
// both name the component's JSON path ("pre_tokenizer.pretokenizers[1]").
#include "model/tokenizer_json.hpp"

namespace troupe::tokenizer_parts {
namespace {

/// GPT-2's pre-tokenization regex (ByteLevel use_regex).
constexpr const char* gpt2_regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
/// HF's Whitespace pre-tokenizer regex.
constexpr const char* whitespace_regex = R"(\w+|[^\w\s]+)";

}  // namespace

std::string show(const json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

std::string json_index(const std::string& where, const char* key, size_t i) {
  return where + "." + key + "[" + std::to_string(i) + "]";
}

// ---------------------------------------------------------------- normalizer

void read_normalizer(const reader& r, const json& j, const std::string& where, std::vector<normalizer_step>& out) {
  if (j.is_null()) return;
  const std::string type = r.type(j, where);
  normalizer_step st;
  if (type == "Sequence") {
    const json& items = r.array(j, where, "normalizers");
    for (size_t i = 0; i < items.size(); ++i) read_normalizer(r, items[i], json_index(where, "normalizers", i), out);
    return;
  } else if (type == "NFC") {
    st.kind = normalizer_step::norm_nfc;
  } else if (type == "NFD") {
    st.kind = normalizer_step::norm_nfd;
  } else if (type == "NFKC") {
    st.kind = normalizer_step::norm_nfkc;
  } else if (type == "NFKD") {
    st.kind = normalizer_step::norm_nfkd;
  } else if (type == "Lowercase") {
    st.kind = normalizer_step::norm_lowercase;
  } else if (type == "Strip") {
    st.kind = normalizer_step::norm_strip;
    st.strip_left = r.boolean(j, where, "strip_left", true);
    st.strip_right = r.boolean(j, where, "strip_right", true);
  } else if (type == "Prepend") {
    st.kind = normalizer_step::norm_prepend;
    st.text = r.string(j, where, "prepend");
  } else if (type == "Replace") {
    st.kind = normalizer_step::norm_replace;
    st.pattern = r.pattern(j, where);
    st.text = r.string(j, where, "content");
  } else {
    r.unsupported(where, "type '" + type + "'");
  }
  out.push_back(std::move(st));
}

// ---------------------------------------------------------------- pre-tokenizer

namespace {

split_behavior read_behavior(const reader& r, const json& j, const std::string& where) {
  const std::string b = r.string(j, where, "behavior");
  if (b == "Removed") return split_behavior::split_removed;
  if (b == "Isolated") return split_behavior::split_isolated;
  if (b == "MergedWithPrevious") return split_behavior::split_merged_with_previous;
  if (b == "MergedWithNext") return split_behavior::split_merged_with_next;
  if (b == "Contiguous") return split_behavior::split_contiguous;
  r.fail(errc::errc_invalid_config, where + ".behavior", "unknown split behavior '" + b + "'");
}

/// Metaspace's prepend scheme: prepend_scheme, or the legacy add_prefix_space.
pretokenizer_step::prepend_t read_prepend(const reader& r, const json& j, const std::string& where) {
  pretokenizer_step::prepend_t p = pretokenizer_step::prepend_always;
  if (auto s = r.opt_string(j, where, "prepend_scheme")) {
    if (*s == "always") {
      p = pretokenizer_step::prepend_always;
    } else if (*s == "first") {
      p = pretokenizer_step::prepend_first;
    } else if (*s == "never") {
      p = pretokenizer_step::prepend_never;
    } else {
      r.fail(errc::errc_invalid_config, where + ".prepend_scheme", "unknown prepend scheme '" + *s + "'");
    }
  }
  if (reader::find(j, "add_prefix_space") && !r.boolean(j, where, "add_prefix_space", true)) {
    if (p != pretokenizer_step::prepend_never && reader::find(j, "prepend_scheme")) {
      r.fail(errc::errc_invalid_config, where, "add_prefix_space false does not match prepend_scheme");
    }
    p = pretokenizer_step::prepend_never;
  }
  return p;
}

}  // namespace

void read_pretokenizer(const reader& r, const json& j, const std::string& where,
                       std::vector<pretokenizer_step>& out) {
  if (j.is_null()) return;
  const std::string type = r.type(j, where);
  pretokenizer_step st;
  if (type == "Sequence") {
    const json& items = r.array(j, where, "pretokenizers");
    for (size_t i = 0; i < items.size(); ++i) read_pretokenizer(r, items[i], json_index(where, "pretokenizers", i), out);
    return;
  } else if (type == "Split") {
    st.kind = pretokenizer_step::pre_split;
    st.pattern = r.pattern(j, where);
    st.behavior = read_behavior(r, j, where);
    st.invert = r.boolean(j, where, "invert", false);
  } else if (type == "ByteLevel") {
    st.kind = pretokenizer_step::pre_byte_level;
    st.add_prefix_space = r.boolean(j, where, "add_prefix_space", true);
    st.use_regex = r.boolean(j, where, "use_regex", true);
    if (st.use_regex) st.pattern = matcher::pattern(gpt2_regex);
  } else if (type == "Metaspace") {
    st.kind = pretokenizer_step::pre_metaspace;
    st.replacement = r.character(j, where, "replacement");
    st.prepend = read_prepend(r, j, where);
    st.split_pieces = r.boolean(j, where, "split", true);
    std::string rep;
    utf8_put(rep, st.replacement);
    st.pattern = matcher::literal(rep);
  } else if (type == "Digits") {
    st.kind = pretokenizer_step::pre_digits;
    st.individual_digits = r.boolean(j, where, "individual_digits", false);
  } else if (type == "Whitespace") {
    st.kind = pretokenizer_step::pre_whitespace;
    st.pattern = matcher::pattern(whitespace_regex);
  } else if (type == "WhitespaceSplit") {
    st.kind = pretokenizer_step::pre_whitespace_split;
  } else {
    r.unsupported(where, "type '" + type + "'");
  }
  out.push_back(std::move(st));
}

// ---------------------------------------------------------------- model

void read_model(const reader& r, const json& j, const std::string& where, bpe_model& m) {
  if (!j.is_object()) r.fail(errc::errc_invalid_config, where, "expected an object, got " + show(j));
  // Old files leave out the type; HF then recognises BPE by its merges.
  const std::string type = reader::find(j, "type") ? r.type(j, where) : (j.contains("merges") ? "BPE" : "?");
  if (type != "BPE") r.unsupported(where, "model type '" + type + "'");
  if (const json* d = reader::find(j, "dropout")) {
    if (!d->is_number() || d->get<double>() != 0.0) r.unsupported(where + ".dropout", "BPE dropout " + show(*d));
  }
  const json& vocab = r.need(j, where, "vocab");
  if (!vocab.is_object()) r.fail(errc::errc_invalid_config, where + ".vocab", "expected an object of token: id");
  m.vocab.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const json& v = it.value();
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      r.fail(errc::errc_invalid_config, where + ".vocab", "token " + show(json(it.key())) + " has id " + show(v));
    }
    m.vocab[it.key()] = static_cast<int32_t>(v.get<int64_t>());
  }
  m.continuing_subword_prefix = r.opt_string(j, where, "continuing_subword_prefix").value_or("");
  m.end_of_word_suffix = r.opt_string(j, where, "end_of_word_suffix").value_or("");
  m.fuse_unk = r.boolean(j, where, "fuse_unk", false);
  m.byte_fallback = r.boolean(j, where, "byte_fallback", false);
  m.ignore_merges = r.boolean(j, where, "ignore_merges", false);
  if (auto unk = r.opt_string(j, where, "unk_token")) {
    m.unk_token_set = true;
    m.unk_token = *unk;
    if (auto it = m.vocab.find(*unk); it != m.vocab.end()) m.unk_id = it->second;
  }
  const auto id_of = [&](const std::string& tok, const std::string& at) {
    auto it = m.vocab.find(tok);
    if (it == m.vocab.end()) {
      r.fail(errc::errc_invalid_config, at, "token " + show(json(tok)) + " is not in the vocabulary");
    }
    return it->second;
  };
  const json* merges = reader::find(j, "merges");
  const size_t n_merges = merges ? merges->size() : 0;
  if (merges && !merges->is_array()) r.fail(errc::errc_invalid_config, where + ".merges", "expected an array");
  m.merges.reserve(n_merges);
  const size_t prefix = m.continuing_subword_prefix.size();
  for (size_t i = 0; i < n_merges; ++i) {
    const json& e = (*merges)[i];
    const std::string at = json_index(where, "merges", i);
    std::string a, b;
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        r.fail(errc::errc_invalid_config, at, "expected \"left right\", got " + show(e));
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      r.fail(errc::errc_invalid_config, at, "expected \"left right\" or [left, right], got " + show(e));
    }
    if (b.size() < prefix) r.fail(errc::errc_invalid_config, at, "right token is shorter than the subword prefix");
    const int32_t merged = id_of(a + b.substr(prefix), at);
    m.merges.set(id_of(a, at), id_of(b, at), static_cast<uint32_t>(i), merged);
  }
  m.fallback_ids.fill(-1);
  static const char* hex = "0123456789ABCDEF";
  for (int byte = 0; byte < 256; ++byte) {
    const std::string name = std::string("<0x") + hex[byte >> 4] + hex[byte & 15] + ">";
    if (auto it = m.vocab.find(name); it != m.vocab.end()) m.fallback_ids[static_cast<size_t>(byte)] = it->second;
  }
}

/// Lets the model take raw bytes from a trailing ByteLevel pre-tokenizer.
void defer_byte_level(tokenizer_impl& t) {
  if (t.pretokenizers.empty() || t.pretokenizers.back().kind != pretokenizer_step::pre_byte_level) return;
  bpe_model& m = t.model;
  if (!m.continuing_subword_prefix.empty() || !m.end_of_word_suffix.empty()) return;
  t.pretokenizers.back().map_bytes = false;
  t.raw_bytes = true;
  m.byte_ids.fill(-1);
  const auto& chars = byte_level_chars();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    utf8_put(s, chars[static_cast<size_t>(b)]);
    if (auto it = m.vocab.find(s); it != m.vocab.end()) m.byte_ids[static_cast<size_t>(b)] = it->second;
  }
  m.raw_vocab.reserve(m.vocab.size());
  for (const auto& [tok, id] : m.vocab) {
    std::string raw;
    bool ok = true;
    for (size_t i = 0; i < tok.size() && ok;) {
      const int b = byte_level_byte(utf8_next(tok, i));
      ok = b >= 0;
      raw += static_cast<char>(b);
    }
    if (ok) m.raw_vocab.emplace(std::move(raw), id);
  }
}

// ---------------------------------------------------------------- post-processor

void read_post_processor(const reader& r, const tokenizer_impl& t, const json& j, const std::string& where,
                         std::vector<int32_t>& prefix, std::vector<int32_t>& suffix) {
  if (j.is_null()) return;
  const std::string type = r.type(j, where);
  if (type == "Sequence") {
    const json& items = r.array(j, where, "processors");
    for (size_t i = 0; i < items.size(); ++i) {
      read_post_processor(r, t, items[i], json_index(where, "processors", i), prefix, suffix);
    }
    return;
  }
  if (type == "ByteLevel") return;  // trims offsets only
  if (type != "TemplateProcessing") r.unsupported(where, "type '" + type + "'");
  const json& single = r.array(j, where, "single");
  const json& specials = r.need(j, where, "special_tokens");
  std::vector<int32_t> pre, post;
  bool seen_a = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const json& item = single[i];
    const std::string at = json_index(where, "single", i);
    if (item.is_object() && item.contains("Sequence")) {
      if (seen_a || r.string(item["Sequence"], at + ".Sequence", "id") != "A") {
        r.fail(errc::errc_invalid_config, at, "a single template holds sequence A exactly once");
      }
      seen_a = true;
      continue;
    }
    if (!item.is_object() || !item.contains("SpecialToken")) {
      r.fail(errc::errc_invalid_config, at, "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}, got " + show(item));
    }
    const std::string name = r.string(item["SpecialToken"], at + ".SpecialToken", "id");
    const json* sp = specials.is_object() ? reader::find(specials, name.c_str()) : nullptr;
    if (!sp) r.fail(errc::errc_invalid_config, where + ".special_tokens", "special token '" + name + "' is missing");
    const json& ids = r.array(*sp, where + ".special_tokens." + name, "ids");
    for (const json& id : ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= int64_t(t.tokens.size())) {
        r.fail(errc::errc_invalid_config, where + ".special_tokens." + name, "id " + show(id) + " is out of range");
      }
      (seen_a ? post : pre).push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  }
  if (!seen_a) r.fail(errc::errc_invalid_config, where + ".single", "the template has no sequence A");
  prefix.insert(prefix.begin(), pre.begin(), pre.end());
  suffix.insert(suffix.end(), post.begin(), post.end());
}

// ---------------------------------------------------------------- decoder

void read_decoder(const reader& r, const json& j, const std::string& where, std::vector<decoder_step>& out) {
  const std::string type = r.type(j, where);
  decoder_step st;
  if (type == "Sequence") {
    const json& items = r.array(j, where, "decoders");
    for (size_t i = 0; i < items.size(); ++i) read_decoder(r, items[i], json_index(where, "decoders", i), out);
    return;
  } else if (type == "ByteLevel") {
    st.kind = decoder_step::dec_byte_level;
  } else if (type == "Metaspace") {
    st.kind = decoder_step::dec_metaspace;
    st.replacement = r.character(j, where, "replacement");
    st.prepend_never = read_prepend(r, j, where) == pretokenizer_step::prepend_never;
  } else if (type == "Replace") {
    st.kind = decoder_step::dec_replace;
    st.pattern = r.pattern(j, where);
    st.content = r.string(j, where, "content");
  } else if (type == "ByteFallback") {
    st.kind = decoder_step::dec_byte_fallback;
  } else if (type == "Fuse") {
    st.kind = decoder_step::dec_fuse;
  } else if (type == "Strip") {
    st.kind = decoder_step::dec_strip;
    st.strip_content = r.character(j, where, "content");
    st.strip_start = static_cast<size_t>(r.integer(j, where, "start"));
    st.strip_stop = static_cast<size_t>(r.integer(j, where, "stop"));
  } else {
    r.unsupported(where, "type '" + type + "'");
  }
  // Which decoders see one joined string instead of tokens, and whether they can stream there.
  const bool joined = !out.empty() && (out.back().text_mode || out.back().kind == decoder_step::dec_byte_level ||
                                       out.back().kind == decoder_step::dec_fuse);
  st.text_mode = joined;
  if (joined && (st.kind == decoder_step::dec_byte_level || st.kind == decoder_step::dec_byte_fallback ||
                 (st.kind == decoder_step::dec_replace && (st.pattern->is_regex() || st.pattern->literal_text().empty())))) {
    r.unsupported(where, "decoder '" + type + "' after a decoder that joins the tokens (ByteLevel, Fuse)");
  }
  out.push_back(std::move(st));
}

}  // namespace troupe::tokenizer_parts
