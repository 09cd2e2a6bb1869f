// Tests of the tokenizer.json tokenizer against Hugging Face `tokenizers` itself:
// the golden files in tests/fixtures/tokenizers were written by
// make_golden.py with tokenizers 0.23 from the real Llama-3 and Qwen3
// tokenizer.json (fetched by fetch.sh), a SentencePiece-style BPE it trained,
// and variants of that one overriding each component troupe implements. Every
// corpus string must give HF's ids with and without special tokens, and every
// id list HF's text with and without skipping specials. Each error class is
// checked for its code and a message naming the file and the component.
#include "model/tokenizer.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

using namespace troupe;
using json = nlohmann::json;

namespace {

const std::filesystem::path golden_dir = std::filesystem::path(TROUPE_FIXTURES) / "tokenizers";
const std::filesystem::path real_dir = TROUPE_TOKENIZERS;

json read_json(const std::filesystem::path& p, const std::string& hint) {
  std::ifstream f(p);
  if (!f) FAIL("missing " << p.string() << ": " << hint);
  return json::parse(f);
}

const std::string golden_hint =
    "make it on a machine with Python `tokenizers`: python3 tests/fixtures/tokenizers/make_golden.py "
    "build/tokenizers tests/fixtures/tokenizers";

/// The golden file of `name` (llama3, qwen3, spm, variants), read once.
const json& golden(const std::string& name) {
  static std::map<std::string, json> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, read_json(golden_dir / (name + ".golden.json"), golden_hint)).first;
  return it->second;
}

/// llama3 / qwen3 from TROUPE_TOKENIZERS, spm from the fixtures; loaded once.
const tokenizer& load_named(const std::string& name) {
  static std::map<std::string, tokenizer> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  const std::filesystem::path dir = name == "spm" ? golden_dir / "spm" : real_dir / name;
  if (!std::filesystem::exists(dir / "tokenizer.json")) {
    FAIL("missing " << (dir / "tokenizer.json").string() << ": run tests/fixtures/tokenizers/fetch.sh "
                    << real_dir.string() << " (the CTest fixture fetch_tokenizers does)");
  }
  return cache.emplace(name, tokenizer::load(dir)).first->second;
}

std::string show(const std::vector<int32_t>& v) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < v.size() && i < 40; ++i) s << (i ? ", " : "") << v[i];
  if (v.size() > 40) s << ", ... (" << v.size() << " ids)";
  s << "]";
  return s.str();
}

std::string qs(const std::string& s) { return json(s).dump().substr(0, 200); }

/// Collects mismatches; reports the first few in full and the count.
struct tally {
  size_t checked = 0, failed = 0;
  std::string details;
  void add(bool ok, const std::string& what) {
    ++checked;
    if (ok) return;
    if (++failed <= 8) details += what + "\n";
  }
  void report(const std::string& label) const {
    MESSAGE(label << ": " << (checked - failed) << "/" << checked << " equal to HF tokenizers");
    CHECK_MESSAGE(failed == 0, label << ": " << failed << " of " << checked << " differ from HF, e.g.\n" << details);
  }
};

/// Ids of every corpus entry, plain and with add_special_tokens.
void check_encode(const tokenizer& tok, const json& entries, tally& plain, tally& special) {
  for (const json& e : entries) {
    const std::string text = e["text"];
    const auto want = e["ids"].get<std::vector<int32_t>>();
    const auto got = tok.encode(text);
    plain.add(got == want, qs(text) + "\n  HF:     " + show(want) + "\n  troupe: " + show(got));
    const auto want_sp = e["ids_special"].get<std::vector<int32_t>>();
    const auto got_sp = tok.encode(text, true);
    special.add(got_sp == want_sp, qs(text) + "\n  HF:     " + show(want_sp) + "\n  troupe: " + show(got_sp));
  }
}

/// decode(ids) and decode(ids, skip_special_tokens) of the corpus ids and the decode cases.
void check_decode(const tokenizer& tok, const json& entries, const json& cases, tally& t) {
  for (const json* list : {&entries, &cases}) {
    for (const json& e : *list) {
      const auto ids = e["ids"].get<std::vector<int32_t>>();
      for (const bool skip : {false, true}) {
        const std::string want = e[skip ? "decoded_skip" : "decoded"];
        std::string got;
        try {
          got = tok.decode(ids, skip);
        } catch (const std::exception& ex) {
          got = std::string("<threw ") + ex.what() + ">";
        }
        t.add(got == want, show(ids) + (skip ? " (skip)" : "") + "\n  HF:     " + qs(want) +
                               "\n  troupe: " + qs(got));
      }
    }
  }
}

void check_real(const std::string& name) {
  const json& g = golden(name);
  const tokenizer& tok = load_named(name);
  CHECK(tok.vocab_size() == g["vocab_size"].get<int64_t>());
  tally plain, special;
  check_encode(tok, g["entries"], plain, special);
  plain.report(name + " encode (add_special_tokens=false) on the corpus");
}

std::string code_name(errc e) { return errc_name(e); }

/// Expects `fn` to throw troupe::error with `code` and a message holding every needle.
template <class F>
void expect_error(F&& fn, errc code, std::initializer_list<std::string> needles) {
  try {
    fn();
    FAIL_CHECK("no error thrown; expected " << code_name(code));
  } catch (const troupe::error& e) {
    const std::string msg = e.what();
    CHECK_MESSAGE(code_name(e.code()) == code_name(code), msg);
    for (const std::string& n : needles) {
      CHECK_MESSAGE(msg.find(n) != std::string::npos, "'" << msg << "' does not contain '" << n << "'");
    }
  }
}

/// spm/tokenizer.json as JSON, for tests that change one component of it.
json spm_json() { return read_json(golden_dir / "spm" / "tokenizer.json", golden_hint); }

tokenizer parse(const json& j) { return tokenizer::parse(j.dump(), "tests/x/tokenizer.json"); }

}  // namespace

TEST_CASE("tokenizer: golden files were made from this corpus") {
  const json corpus = read_json(golden_dir / "corpus.json", "corpus.json is committed");
  REQUIRE(corpus.size() >= 220);
  for (const std::string name : {"llama3", "qwen3", "spm"}) {
    const json& entries = golden(name)["entries"];
    REQUIRE_MESSAGE(entries.size() == corpus.size(), name << ": golden is stale; " << golden_hint);
    for (size_t i = 0; i < corpus.size(); ++i) {
      CHECK_MESSAGE(entries[i]["text"] == corpus[i], name << " entry " << i << " is stale; " << golden_hint);
    }
  }
}

TEST_CASE("tokenizer: Llama-3 ids equal HF tokenizers on the corpus") { check_real("llama3"); }

TEST_CASE("tokenizer: Qwen3 ids equal HF tokenizers on the corpus") { check_real("qwen3"); }

TEST_CASE("tokenizer: SentencePiece-style BPE ids equal HF tokenizers on the corpus") { check_real("spm"); }

TEST_CASE("tokenizer: add_special_tokens applies the post-processor as HF does") {
  for (const std::string name : {"llama3", "qwen3", "spm"}) {
    tally plain, special;
    check_encode(load_named(name), golden(name)["entries"], plain, special);
    special.report(name + " encode (add_special_tokens=true)");
  }
  // The spm template adds <s>; these Llama-3/Qwen3 files post-process with ByteLevel only.
  CHECK(load_named("spm").encode("Hello world", true) ==
        std::vector<int32_t>{1, load_named("spm").encode("Hello world")[0], load_named("spm").encode("Hello world")[1]});
  CHECK(load_named("llama3").encode("Hello world", true) == std::vector<int32_t>{9906, 1917});
}

TEST_CASE("tokenizer: decode and skip_special_tokens equal HF tokenizers") {
  for (const std::string name : {"llama3", "qwen3", "spm"}) {
    tally t;
    check_decode(load_named(name), golden(name)["entries"], golden(name)["decode_cases"], t);
    t.report(name + " decode");
  }
}

TEST_CASE("tokenizer: every implemented component equals HF tokenizers (spm variants)") {
  const json& g = golden("variants");
  const json base = spm_json();
  REQUIRE(g["variants"].size() >= 10);
  for (const json& v : g["variants"]) {
    const std::string name = v["name"];
    json cfg = base;
    for (auto it = v["override"].begin(); it != v["override"].end(); ++it) {
      if (it.key() == "model") {
        cfg["model"].update(it.value());
      } else {
        cfg[it.key()] = it.value();
      }
    }
    const tokenizer tok = tokenizer::parse(cfg.dump(), "variants/" + name + "/tokenizer.json");
    tally plain, special, dec;
    check_encode(tok, v["entries"], plain, special);
    check_decode(tok, v["entries"], v["decode_cases"], dec);
    plain.report("variant " + name + " encode");
    special.report("variant " + name + " encode with special tokens");
    dec.report("variant " + name + " decode");
  }
}

TEST_CASE("tokenizer: known ids, vocabulary queries and specials") {
  const tokenizer& llama = load_named("llama3");
  CHECK(llama.encode("Hello world") == std::vector<int32_t>{9906, 1917});
  CHECK(llama.encode(" world") == std::vector<int32_t>{1917});
  CHECK(llama.token_to_id("<|begin_of_text|>") == 128000);
  CHECK(llama.token_to_id("Ġworld") == 1917);
  CHECK(!llama.token_to_id("no such token"));
  CHECK(llama.id_to_token(1917) == "Ġworld");
  CHECK(llama.is_special(128000));
  CHECK(!llama.is_special(1917));
  CHECK(llama.bos_id() == 128000);
  CHECK(llama.eos_ids() == std::vector<int32_t>{128001});
  CHECK(llama.vocab_size() == 128256);
  CHECK(llama.encode("<|begin_of_text|>hello") == std::vector<int32_t>{128000, 15339});
  const std::vector<int32_t> with_special{128000, 9906, 1917, 128001};
  CHECK(llama.decode(with_special) == "<|begin_of_text|>Hello world<|end_of_text|>");
  CHECK(llama.decode(with_special, true) == "Hello world");
  // Byte-level BPE without a normalizer round-trips any text.
  const json corpus = read_json(golden_dir / "corpus.json", "corpus.json is committed");
  tally rt;
  for (const json& s : corpus) {
    const std::string text = s;
    const std::string back = llama.decode(llama.encode(text));
    rt.add(back == text, qs(text) + " -> " + qs(back));
  }
  rt.report("llama3 decode(encode(s)) == s");

  const tokenizer& qwen = load_named("qwen3");
  CHECK(qwen.token_to_id("<|im_start|>") == 151644);
  CHECK(qwen.is_special(151644));
  CHECK(!qwen.is_special(151667));  // <think> is an added token but not special
  CHECK(qwen.encode("a<|im_start|>b") == std::vector<int32_t>{64, 151644, 65});
  CHECK(qwen.decode(std::vector<int32_t>{151667, 87, 151668}, true) == "<think>x</think>");
  CHECK(qwen.decode(std::vector<int32_t>{151644, 87, 151645}, true) == "x");
  CHECK(!qwen.bos_id());
  CHECK(qwen.eos_ids() == std::vector<int32_t>{151645});
  CHECK(qwen.add_bos_token() == false);
  // NFC: a decomposed accent encodes as the composed one.
  CHECK(qwen.encode("caf\x65\xCC\x81") == qwen.encode("caf\xC3\xA9"));
}

TEST_CASE("tokenizer: byte fallback, unknown characters and Metaspace") {
  const tokenizer& spm = load_named("spm");
  const auto byte_id = [&](const char* name) { return *spm.token_to_id(name); };
  // U+4F60 is not in the small vocabulary: its three UTF-8 bytes become <0xE4><0xBD><0xA0>.
  const auto ids = spm.encode("\xE4\xBD\xA0");
  REQUIRE(ids.size() == 4);
  CHECK(spm.id_to_token(ids[0]) == "\xE2\x96\x81");  // the prepended metaspace
  CHECK(ids[1] == byte_id("<0xE4>"));
  CHECK(ids[2] == byte_id("<0xBD>"));
  CHECK(ids[3] == byte_id("<0xA0>"));
  CHECK(spm.decode(ids) == "\xE4\xBD\xA0");
  // A run of byte tokens that is not UTF-8 decodes to one U+FFFD per byte, as HF's ByteFallback.
  const std::vector<int32_t> broken{byte_id("<0xE4>"), byte_id("<0xBD>"), *spm.token_to_id("\xE2\x96\x81the")};
  CHECK(spm.decode(broken) == "\xEF\xBF\xBD\xEF\xBF\xBD the");
  CHECK(spm.bos_id() == 1);
  CHECK(spm.eos_ids() == std::vector<int32_t>{2});
  CHECK(spm.add_bos_token() == true);

  // Without byte fallback, an unknown character becomes <unk>, fused across a run.
  json j = spm_json();
  j["model"]["byte_fallback"] = false;
  const tokenizer unk = parse(j);
  const auto u = unk.encode("\xE4\xBD\xA0\xE5\xA5\xBD");
  REQUIRE(u.size() == 2);
  CHECK(u[1] == 0);
  j["model"]["fuse_unk"] = false;
  CHECK(parse(j).encode("\xE4\xBD\xA0\xE5\xA5\xBD").size() == 3);

  // Metaspace prepend_scheme "first" prepends only at the very start of the text.
  json m = spm_json();
  m["normalizer"] = nullptr;
  m["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", true}};
  m["decoder"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", true}};
  const tokenizer meta = parse(m);
  CHECK(meta.encode("Hello world") == spm.encode("Hello world"));
  const auto after_bos = meta.encode("<s>Hello");
  REQUIRE(after_bos.size() >= 2);
  CHECK(after_bos[0] == 1);
  CHECK(meta.id_to_token(after_bos[1]).rfind("\xE2\x96\x81", 0) != 0);
  CHECK(meta.decode(meta.encode("Hello world")) == "Hello world");
}

TEST_CASE("tokenizer: Strip decoder with stop strips trailing characters once") {
  json j = spm_json();
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                {{"type", "ByteFallback"}},
                                {{"type", "Fuse"}},
                                {{"type", "Strip"}, {"content", "!"}, {"start", 0}, {"stop", 2}}}}};
  const tokenizer tok = parse(j);
  CHECK(tok.decode(tok.encode("wow!!!")) == " wow!");
  CHECK(tok.decode(tok.encode("a!b")) == " a!b");
}

TEST_CASE("tokenizer: errors name the file and the component") {
  expect_error([] { tokenizer::load("/nonexistent/dir"); }, errc::errc_io, {"/nonexistent/dir", "cannot open"});
  expect_error([] { tokenizer::parse("{\"model\": ", "tests/x/tokenizer.json"); }, errc::errc_invalid_config,
               {"tests/x/tokenizer.json", "not valid JSON"});
  json j = spm_json();
  j["model"] = {{"type", "WordPiece"}, {"vocab", {{"a", 0}}}, {"unk_token", "[UNK]"}};
  expect_error([&] { parse(j); }, errc::errc_unsupported, {"tests/x/tokenizer.json", "model", "'WordPiece'", "not supported"});
  j["model"] = {{"type", "Unigram"}, {"vocab", json::array()}};
  expect_error([&] { parse(j); }, errc::errc_unsupported, {"tokenizer.json", "model", "'Unigram'"});

  j = spm_json();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "Punctuation"}, {"behavior", "Isolated"}}}}};
  expect_error([&] { parse(j); }, errc::errc_unsupported,
               {"tokenizer.json", "pre_tokenizer.pretokenizers[0]", "type 'Punctuation' is not supported"});
  j = spm_json();
  j["normalizer"] = {{"type", "BertNormalizer"}};
  expect_error([&] { parse(j); }, errc::errc_unsupported, {"normalizer", "'BertNormalizer'"});
  j = spm_json();
  j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
  expect_error([&] { parse(j); }, errc::errc_unsupported, {"decoder", "'WordPiece'"});
  j = spm_json();
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  expect_error([&] { parse(j); }, errc::errc_unsupported, {"post_processor", "'RobertaProcessing'"});
  j = spm_json();
  j["model"]["dropout"] = 0.1;
  expect_error([&] { parse(j); }, errc::errc_unsupported, {"model.dropout"});
  j = spm_json();
  j["model"]["merges"].push_back("\xE2\x96\x81the nosuchtoken");
  expect_error([&] { parse(j); }, errc::errc_invalid_config, {"model.merges[", "nosuchtoken", "not in the vocabulary"});
  j = spm_json();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_error([&] { parse(j); }, errc::errc_invalid_config, {"pre_tokenizer.pattern", "(unclosed"});
  j = spm_json();
  j.erase("model");
  expect_error([&] { parse(j); }, errc::errc_invalid_config, {"key 'model' is missing"});

  const tokenizer& spm = load_named("spm");
  const int32_t bad = static_cast<int32_t>(spm.vocab_size());
  expect_error([&] { spm.decode(std::vector<int32_t>{5, bad}); }, errc::errc_invalid_argument,
               {"token id " + std::to_string(bad), "not in the vocabulary"});
  expect_error([&] { spm.decode(std::vector<int32_t>{-1}); }, errc::errc_invalid_argument, {"token id -1"});
  expect_error([&] { spm.id_to_token(bad); }, errc::errc_invalid_argument, {"token id " + std::to_string(bad)});
}

TEST_CASE("tokenizer: invalid UTF-8 input is read as U+FFFD") {
  const tokenizer& llama = load_named("llama3");
  CHECK(llama.encode("a\xFF" "b") == llama.encode("a\xEF\xBF\xBD" "b"));
  CHECK(llama.encode("x\xE4\xBD") == llama.encode("x\xEF\xBF\xBD"));
}

TEST_CASE("tokenizer: concurrent encodes agree with a single thread") {
  const tokenizer& qwen = load_named("qwen3");
  const json corpus = read_json(golden_dir / "corpus.json", "corpus.json is committed");
  std::vector<std::string> texts;
  for (const json& s : corpus) texts.push_back(s);
  std::vector<std::vector<int32_t>> want;
  for (const std::string& t : texts) want.push_back(qwen.encode(t));
  std::vector<int> ok(8, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 8; ++k) {
    threads.emplace_back([&, k] {
      int good = 1;
      for (int round = 0; round < 3; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          const size_t j = (i * 7 + static_cast<size_t>(k) * 13 + static_cast<size_t>(round)) % texts.size();
          good &= qwen.encode(texts[j]) == want[j];
        }
      }
      ok[static_cast<size_t>(k)] = good;
    });
  }
  for (std::thread& t : threads) t.join();
  for (int k = 0; k < 8; ++k) CHECK(ok[static_cast<size_t>(k)] == 1);
}

TEST_CASE("tokenizer: throughput (measured, not asserted)") {
  const json corpus = read_json(golden_dir / "corpus.json", "corpus.json is committed");
  std::vector<std::string> texts;
  size_t bytes = 0;
  for (const json& s : corpus) {
    texts.push_back(s);
    bytes += texts.back().size();
  }
  for (const std::string name : {"llama3", "qwen3"}) {
    const tokenizer& tok = load_named(name);
    size_t tokens = 0;
    const int rounds = 20;
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < rounds; ++r) {
      for (const std::string& t : texts) tokens += tok.encode(t).size();
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE(name << " encode, one thread: " << static_cast<int64_t>(double(tokens) / s) << " tokens/s, "
                 << (double(bytes) * rounds / s / 1e6) << " MB/s (corpus x" << rounds << ")");
    CHECK(tokens > 0);
  }
}
