// See detokenizer.hpp: a thin owner of one decode_stream.
#include "model/detokenizer.hpp"

namespace troupe {

detokenizer::detokenizer(const tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), stream_(tok_.parts(), skip_special_tokens) {}

std::string detokenizer::push(int32_t id) {
  std::string out;
  stream_.push(id, out);
  return out;
}

std::string detokenizer::flush() {
  std::string out;
  stream_.finish(out);
  return out;
}

}  // namespace troupe
