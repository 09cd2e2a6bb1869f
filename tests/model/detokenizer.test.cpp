// Tests of the streaming detokenizer: for every id list of the golden files
// (the corpus encoded by HF, id lists that cut characters apart, random ids,
// special tokens) and every component variant, the concatenation of push() and
// flush() must equal HF's decode of those ids (and so tokenizer::decode) byte for
// byte, and no push may return a partial UTF-8 character. The cost of a push
// must not grow with the sequence.
#include "model/detokenizer.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

using namespace troupe;
using json = nlohmann::json;

namespace {

const std::filesystem::path fixture_dir = std::filesystem::path(TROUPE_FIXTURES) / "tokenizers";

json read_fixture(const std::filesystem::path& p) {
  std::ifstream f(p);
  if (!f) {
    FAIL("missing " << p.string() << ": run tests/fixtures/tokenizers/make_golden.py (goldens) or fetch.sh "
                    << "(real tokenizers)");
  }
  return json::parse(f);
}

const tokenizer& named(const std::string& name) {
  static std::map<std::string, tokenizer> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  const std::filesystem::path dir =
      name == "spm" ? fixture_dir / "spm" : std::filesystem::path(TROUPE_TOKENIZERS) / name;
  if (!std::filesystem::exists(dir / "tokenizer.json")) FAIL("missing " << (dir / "tokenizer.json").string());
  return cache.emplace(name, tokenizer::load(dir)).first->second;
}

/// Whether `s` is well-formed UTF-8 (no partial or overlong character).
bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      n = 0;
    } else if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      lo = c == 0xE0 ? 0xA0 : 0x80;
      hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      lo = c == 0xF0 ? 0x90 : 0x80;
      hi = c == 0xF4 ? 0x8F : 0xBF;
    } else {
      return false;
    }
    if (i + n >= s.size() && n > 0) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto x = static_cast<unsigned char>(s[i + k]);
      if (x < (k == 1 ? lo : 0x80) || x > (k == 1 ? hi : 0xBF)) return false;
    }
    i += n + 1;
  }
  return true;
}

struct stream_result {
  std::string text;
  bool all_valid = true;
};

stream_result stream(const tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  detokenizer d(tok, skip);
  stream_result r;
  for (const int32_t id : ids) {
    const std::string part = d.push(id);
    r.all_valid = r.all_valid && valid_utf8(part);
    r.text += part;
  }
  const std::string rest = d.flush();
  r.all_valid = r.all_valid && valid_utf8(rest);
  r.text += rest;
  return r;
}

/// Streams every id list of a golden block (corpus ids and decode cases) both ways
/// and compares the text with HF's decode of the same ids.
void check_block(const tokenizer& tok, const json& entries, const json& cases, const std::string& label) {
  size_t checked = 0, equal = 0, valid = 0;
  std::string first_failure;
  for (const json* list : {&entries, &cases}) {
    for (const json& e : *list) {
      const auto ids = e["ids"].get<std::vector<int32_t>>();
      for (const bool skip : {false, true}) {
        const stream_result r = stream(tok, ids, skip);
        const std::string want = e[skip ? "decoded_skip" : "decoded"];  // HF's decode
        ++checked;
        equal += r.text == want;
        valid += r.all_valid;
        if (r.text != want && first_failure.empty()) {
          first_failure = json(r.text).dump() + " != decode " + json(want).dump();
        }
      }
    }
  }
  MESSAGE(label << ": " << equal << "/" << checked << " streamed decodes equal HF's decode");
  CHECK_MESSAGE(equal == checked, label << ": " << first_failure);
  CHECK_MESSAGE(valid == checked, label << ": a push returned a partial UTF-8 character");
}

}  // namespace

TEST_CASE("detokenizer: streaming equals HF decode on the golden id lists") {
  for (const std::string name : {"llama3", "qwen3", "spm"}) {
    const json g = read_fixture(fixture_dir / (name + ".golden.json"));
    check_block(named(name), g["entries"], g["decode_cases"], name);
  }
}

TEST_CASE("detokenizer: streaming equals HF decode for every decoder variant") {
  const json g = read_fixture(fixture_dir / "variants.golden.json");
  const json base = read_fixture(fixture_dir / "spm" / "tokenizer.json");
  for (const json& v : g["variants"]) {
    json cfg = base;
    for (auto it = v["override"].begin(); it != v["override"].end(); ++it) {
      if (it.key() == "model") {
        cfg["model"].update(it.value());
      } else {
        cfg[it.key()] = it.value();
      }
    }
    const tokenizer tok = tokenizer::parse(cfg.dump(), "variant");
    check_block(tok, v["entries"], v["decode_cases"], "variant " + v["name"].get<std::string>());
  }
}

TEST_CASE("detokenizer: emoji and CJK split across tokens are held until complete") {
  const tokenizer& llama = named("llama3");
  for (const std::string text : {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",  // ZWJ family
                                 "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD ok",                                      // thumbs up, skin tone
                                 "\xE9\xAC\xB1\xEA\x99\xAE"}) {  // a rare CJK ideograph and Cyrillic letter
    const auto ids = llama.encode(text);
    REQUIRE(ids.size() > 1);
    detokenizer d(llama, false);
    std::string got;
    size_t empty_pushes = 0;
    for (const int32_t id : ids) {
      const std::string part = d.push(id);
      CHECK(valid_utf8(part));
      CHECK(part.find("\xEF\xBF\xBD") == std::string::npos);  // no U+FFFD for a character still arriving
      empty_pushes += part.empty();
      got += part;
    }
    got += d.flush();
    CHECK(got == text);
    CHECK(empty_pushes > 0);  // some token ended mid-character and was held back
  }
  // A dangling partial character becomes U+FFFD at flush, as in decode.
  const auto ids = llama.encode("\xF0\x9F\x98\x80");
  REQUIRE(ids.size() >= 2);
  const std::vector<int32_t> cut(ids.begin(), ids.end() - 1);
  detokenizer d(llama, false);
  std::string got;
  for (const int32_t id : cut) got += d.push(id);
  CHECK(got.empty());
  got += d.flush();
  CHECK(got == llama.decode(cut));
  CHECK(got == "\xEF\xBF\xBD");
}

TEST_CASE("detokenizer: skip_special_tokens, restart after flush, unknown ids") {
  const tokenizer& qwen = named("qwen3");
  std::vector<int32_t> ids{151644};
  for (const int32_t id : qwen.encode("user\nHi there")) ids.push_back(id);
  ids.push_back(151645);
  CHECK(stream(qwen, ids, true).text == "user\nHi there");
  CHECK(stream(qwen, ids, false).text == "<|im_start|>user\nHi there<|im_end|>");

  // After flush the next sequence starts fresh (the spm decoder strips its first space again).
  const tokenizer& spm = named("spm");
  const auto hello = spm.encode("Hello world");
  detokenizer d(spm, false);
  for (int round = 0; round < 2; ++round) {
    std::string got;
    for (const int32_t id : hello) got += d.push(id);
    got += d.flush();
    CHECK(got == "Hello world");
  }
  CHECK_THROWS_AS(d.push(static_cast<int32_t>(spm.vocab_size())), troupe::error);
}

TEST_CASE("detokenizer: the cost of a push does not grow with the sequence") {
  const tokenizer& llama = named("llama3");
  const json corpus = read_fixture(fixture_dir / "corpus.json");
  std::vector<int32_t> ids;
  while (ids.size() < 120000) {
    for (const json& s : corpus) {
      const auto more = llama.encode(s.get<std::string>());
      ids.insert(ids.end(), more.begin(), more.end());
    }
  }
  detokenizer d(llama, false);
  const size_t block = 20000;
  std::vector<double> seconds;
  size_t bytes = 0;
  for (size_t b = 0; b + block <= ids.size(); b += block) {
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = b; i < b + block; ++i) bytes += d.push(ids[i]).size();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  bytes += d.flush().size();
  REQUIRE(seconds.size() >= 6);
  // The fastest of the first two blocks against the fastest of the last two (the
  // minimum drops scheduling noise): re-decoding a growing prefix would make the
  // late blocks about 5x the early ones.
  const double early = std::min(seconds[0], seconds[1]);
  const double late = std::min(seconds[seconds.size() - 2], seconds[seconds.size() - 1]);
  MESSAGE("detokenizer push: " << (early / double(block) * 1e9) << " ns/id early, " << (late / double(block) * 1e9)
                               << " ns/id late (" << ids.size() << " ids)");
  CHECK(late < 2.5 * early + 0.002);
  CHECK(bytes > 0);
}

TEST_CASE("detokenizer: a Replace after Fuse holds back a possible partial match") {
  json j = read_fixture(fixture_dir / "spm" / "tokenizer.json");
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", {{{"type", "Fuse"}}, {{"type", "Replace"}, {"pattern", {{"String", "aba"}}}, {"content", "X"}}}}};
  const tokenizer tok = tokenizer::parse(j.dump(), "replace-variant");
  const int32_t a = *tok.token_to_id("a"), b = *tok.token_to_id("b");
  detokenizer d(tok, false);
  CHECK(d.push(a) == "");   // "a" may start "aba"
  CHECK(d.push(b) == "");   // "ab" still may
  CHECK(d.push(a) == "X");
  CHECK(d.push(b) == "b");  // "b" cannot start "aba"
  CHECK(d.push(a) == "");
  CHECK(d.flush() == "a");  // the sequence ends: the held "a" is plain text
  const std::vector<int32_t> ids{a, b, a, b, a};
  CHECK(tok.decode(ids) == "Xba");
  CHECK(stream(tok, ids, false).text == "Xba");
}
