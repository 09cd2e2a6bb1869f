// The troupe command as a user runs it: a real process, real files, exit codes
// and messages.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

struct run_result {
  int code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string slurp(const std::string& path);

run_result run(const std::string& args, const std::string& stdin_text = {}) {
  // Per-process names: CTest runs test cases of this file in parallel processes.
  const auto tmp = std::filesystem::temp_directory_path();
  const std::string tag = std::to_string(getpid());
  const std::string err_file = (tmp / ("troupe_cli_stderr_" + tag + ".txt")).string();
  std::string cmd = std::string(TROUPE_BINARY) + " " + args + " 2>" + err_file;
  if (!stdin_text.empty()) {
    const std::string in_file = (tmp / ("troupe_cli_stdin_" + tag + ".txt")).string();
    std::ofstream(in_file, std::ios::binary) << stdin_text;
    cmd += " <" + in_file;
  }
  run_result r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = slurp(err_file);
  return r;
}

std::string fixture(const std::string& name) { return std::string(TROUPE_FIXTURES) + "/" + name; }

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::string greedy_golden(const std::string& name) {
  const std::string g = slurp(fixture(name) + "/golden.json");
  const size_t a = g.find('[', g.find("\"greedy\"")), b = g.find(']', a);
  std::string ids;
  for (char c : g.substr(a + 1, b - a - 1))
    if (!std::isspace(static_cast<unsigned char>(c))) ids += c;
  return ids;
}

}  // namespace

TEST_CASE("cli: troupe logits writes float32 [n_tokens x vocab] matching transformers") {
  const std::string out = (std::filesystem::temp_directory_path() / ("troupe_cli_logits_" + std::to_string(getpid()) + ".f32")).string();
  const run_result r = run("logits --model " + fixture("llama") + " --prompt-ids-file " + fixture("llama") +
                           "/prompt.txt --out " + out + " --chunked-prefill-size 48");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const std::string got = slurp(out), want = slurp(fixture("llama") + "/logits.f32");
  REQUIRE(got.size() == want.size());
  REQUIRE(got.size() == 144u * 384u * 4u);
  std::vector<float> a(got.size() / 4), b(want.size() / 4);
  std::memcpy(a.data(), got.data(), got.size());
  std::memcpy(b.data(), want.data(), want.size());
  float err = 0, mx = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(a[i] - b[i]));
    mx = std::max(mx, std::abs(b[i]));
  }
  CHECK(err <= 1e-3f * mx);
  std::filesystem::remove(out);
}

TEST_CASE("cli: troupe generate prints transformers' greedy ids; seeds reproduce") {
  for (const char* name : {"llama", "qwen3"}) {
    CAPTURE(name);
    const std::string ids = first_line(slurp(fixture(name) + "/prompt.txt"));
    const run_result r = run("generate --model " + fixture(name) + " --prompt-ids " + ids +
                             " --max-tokens 32 --temperature 0 --ignore-eos");
    REQUIRE_MESSAGE(r.code == 0, r.err);
    CHECK(first_line(r.out) == greedy_golden(name));
  }
  const std::string base = "generate --model " + fixture("mistral") + " --prompt-ids 5,6,7,8 --max-tokens 24 --temperature 1.0 --top-p 0.95 --top-k 50 --ignore-eos";
  const run_result a = run(base + " --seed 7"), b = run(base + " --seed 7"), c = run(base + " --seed 8");
  REQUIRE(a.code == 0);
  CHECK(first_line(a.out) == first_line(b.out));
  CHECK(first_line(a.out) != first_line(c.out));
  CHECK(std::count(a.out.begin(), a.out.begin() + static_cast<long>(first_line(a.out).size()), ',') == 23);
}

TEST_CASE("cli: bad input ends with a clear error, not a crash") {
  run_result r = run("generate --model /nonexistent/model --prompt-ids 1,2");
  CHECK(r.code == 1);
  CHECK(r.err.find("/nonexistent/model") != std::string::npos);
  r = run("generate --model " + fixture("llama") + " --prompt-ids 1,x,3");
  CHECK(r.code == 1);
  CHECK(r.err.find("'x' is not a token id") != std::string::npos);
  r = run("generate --model " + fixture("llama") + " --prompt-ids 1,99999");
  CHECK(r.code == 1);
  CHECK(r.err.find("invalid_argument") != std::string::npos);
  r = run("generate --model " + fixture("llama") + " --prompt-ids 1,2 --top-p 1.5");
  CHECK(r.code == 1);
  CHECK(r.err.find("top_p") != std::string::npos);
  r = run("generate --model " + fixture("llama") + " --prompt-ids 1,2 --kv-page-size 0");
  CHECK(r.code == 1);
  CHECK(r.err.find("--kv-page-size") != std::string::npos);
  r = run("logits --model " + fixture("llama") + " --prompt-ids-file /nonexistent/ids --out /tmp/x");
  CHECK(r.code == 1);
  CHECK(r.err.find("/nonexistent/ids") != std::string::npos);
  r = run("frobnicate");
  CHECK(r.code != 0);
}

TEST_CASE("cli: troupe devices lists the CPU first, and GPUs only when present") {
  const run_result r = run("devices");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out.rfind("cpu:0", 0) == 0);
}

TEST_CASE("cli: troupe tokenize / detokenize need only the tokenizer files and match HF") {
  // TROUPE_TOKENIZERS/llama3 holds tokenizer.json and tokenizer_config.json and no weights.
  const std::string llama3 = std::string(TROUPE_TOKENIZERS) + "/llama3";
  REQUIRE_FALSE(std::filesystem::exists(llama3 + "/config.json"));
  run_result r = run("tokenize --model " + llama3, "\"Hello world\"\n\"<|begin_of_text|>hi\"\n");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out == "[9906,1917]\n[128000,6151]\n");
  r = run("detokenize --model " + llama3, "[9906,1917]\n[128000,6151]\n");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out == "\"Hello world\"\n\"<|begin_of_text|>hi\"\n");
  // A bad line is answered with null, named on stderr, and fails the run; the others still answer.
  r = run("tokenize --model " + llama3, "\"a\"\n{oops\n\"b\"\n");
  CHECK(r.code == 1);
  CHECK(r.out == "[64]\nnull\n[65]\n");
  CHECK(r.err.find("line 2") != std::string::npos);
  r = run("detokenize --model " + llama3, "[1, -5]\n[999999999]\n");
  CHECK(r.code == 1);
  CHECK(r.out == "null\nnull\n");
  CHECK(r.err.find("999999999") != std::string::npos);
}

TEST_CASE("cli: troupe tokenize --chat renders the checkpoint's template; --chat-template overrides it") {
  const std::string llama3 = std::string(TROUPE_TOKENIZERS) + "/llama3";
  run_result r = run("tokenize --chat --model " + llama3, "[{\"role\":\"user\",\"content\":\" Hi! \"}]\n");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out == "\"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi!<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\\n\\n\"\n");
  const std::string tpl = (std::filesystem::temp_directory_path() / ("troupe_cli_template_" + std::to_string(getpid()) + ".jinja")).string();
  std::ofstream(tpl) << "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
  r = run("tokenize --chat --model " + llama3 + " --chat-template " + tpl, "[{\"role\":\"user\",\"content\":\"x\"}]\n");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out == "\"[user]x[assistant]\"\n");
  std::ofstream(tpl) << "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}";
  r = run("tokenize --chat --model " + llama3 + " --chat-template " + tpl, "[]\n");
  CHECK(r.code == 1);
  CHECK(r.err.find("no_such_filter") != std::string::npos);
}

TEST_CASE("cli: troupe generate --prompt writes text with the embedded demo model by default") {
  const run_result r = run("generate --prompt \"A day for\" --max-tokens 40 --temperature 0 --ignore-eos");
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out.size() > 40);
  int letters = 0;
  for (char c : r.out) letters += std::isalpha(static_cast<unsigned char>(c)) ? 1 : 0;
  CHECK(letters > 20);  // English words, not ids
  CHECK(r.out.find("<|") == std::string::npos);  // special tokens are not printed
  const run_result again = run("generate --prompt \"A day for\" --max-tokens 40 --temperature 0 --ignore-eos");
  CHECK(again.out == r.out);
  CHECK(run("generate --max-tokens 4").code == 1);
}
