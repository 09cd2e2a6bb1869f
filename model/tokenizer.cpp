// The tokenizer's encode and decode: HF's order of stages (added tokens on the
// raw text, normalizer per piece between them, added tokens again on the
// normalized text, pre-tokenizer, BPE per pre-token, post-processor), with no
// state outside the call except the per-thread BPE word cache and PCRE2 match
// data, so one tokenizer serves any number of threads. Loading lives in
// tokenizer_load.cpp, the stages in tokenizer_*.cpp.
#include "model/tokenizer.hpp"

#include "config/errors.hpp"
#include "model/tokenizer_parts.hpp"

namespace troupe {

using namespace tokenizer_parts;

void tokenizer_parts::tokenizer_impl::encode_into(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<added_split> raw_splits, norm_splits;
  std::vector<piece> pieces;
  find_added(added, trie_raw, text, raw_splits);
  for (const added_split& a : raw_splits) {
    if (a.token >= 0) {
      out.push_back(added[static_cast<size_t>(a.token)].id);
      continue;
    }
    if (a.range.end == a.range.begin) continue;
    std::string norm(text.substr(a.range.begin, a.range.end - a.range.begin));
    bool at_start = a.range.begin == 0;
    normalize(normalizers, norm, at_start);
    norm_splits.clear();
    find_added(added, trie_normalized, norm, norm_splits);
    for (const added_split& b : norm_splits) {
      if (b.token >= 0) {
        out.push_back(added[static_cast<size_t>(b.token)].id);
        continue;
      }
      if (b.range.end == b.range.begin) continue;
      pieces.clear();
      pieces.push_back({norm.substr(b.range.begin, b.range.end - b.range.begin), at_start && b.range.begin == 0});
      pretokenize(pretokenizers, pieces);
      for (const piece& p : pieces) model.encode_word(p.text, raw_bytes, out);
    }
  }
}

std::vector<int32_t> tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  if (add_special_tokens) ids = impl_->post_prefix;
  if (utf8_valid(text)) {
    impl_->encode_into(text, ids);
  } else {
    std::string clean;
    utf8_lossy lossy;
    lossy.feed(text, clean);
    lossy.finish(clean);
    impl_->encode_into(clean, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), impl_->post_suffix.begin(), impl_->post_suffix.end());
  return ids;
}

std::string tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string out;
  out.reserve(ids.size() * 4);
  decode_stream stream(*impl_, skip_special_tokens);
  for (const int32_t id : ids) stream.push(id, out);
  stream.finish(out);
  return out;
}

int64_t tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->tokens.size()); }

std::optional<int32_t> tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) return it->second;
  if (auto it = impl_->model.vocab.find(token); it != impl_->model.vocab.end()) return it->second;
  return std::nullopt;
}

std::string tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !(impl_->flags[static_cast<size_t>(id)] & tokenizer_impl::flag_present)) {
    throw error(errc::errc_invalid_argument, impl_->origin + ": token id " + std::to_string(id) +
                                                 " is not in the vocabulary (vocab_size " +
                                                 std::to_string(vocab_size()) + ")");
  }
  return impl_->tokens[static_cast<size_t>(id)];
}

bool tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && (impl_->flags[static_cast<size_t>(id)] & tokenizer_impl::flag_special);
}

std::optional<int32_t> tokenizer::bos_id() const { return impl_->bos; }

std::vector<int32_t> tokenizer::eos_ids() const { return impl_->eos; }

std::optional<bool> tokenizer::add_bos_token() const { return impl_->add_bos; }

}  // namespace troupe
