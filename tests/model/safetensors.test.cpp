// Tests of the safetensors reader. Files are assembled byte by byte here
// (length prefix, header text, data) rather than produced by a writer under
// test, so each corrupt variant is exactly the defect it names and the valid
// case checks the reader against bytes the test itself placed.
#include "model/safetensors.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "config/errors.hpp"

namespace fs = std::filesystem;
using troupe::dtype;
using troupe::safetensors_file;

namespace {

/// A fresh directory under the system temp dir, removed with its content.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    path = fs::temp_directory_path() / ("troupe_st_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(counter++) + "_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

/// Length prefix (little endian) + header + data.
std::string st_bytes(const std::string& header, const std::string& data, uint64_t len) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  return out + header + data;
}

std::string st_bytes(const std::string& header, const std::string& data) {
  return st_bytes(header, data, header.size());
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// `n` bytes of a recognisable pattern.
std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + 3) % 251);
  return s;
}

/// Writes `bytes` to a file and expects open() to fail with invalid_model_file,
/// the message naming the file and containing `needle`.
void expect_invalid(const std::string& bytes, const std::string& needle) {
  temp_dir dir;
  const fs::path p = dir.path / "bad.safetensors";
  write_file(p, bytes);
  CAPTURE(needle);
  try {
    (void)safetensors_file::open(p);
    FAIL("open succeeded");
  } catch (const troupe::error& e) {
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(e.code() == troupe::errc::errc_invalid_model_file);
    CHECK(what.find(p.string()) != std::string::npos);
    CHECK(what.find(needle) != std::string::npos);
  }
}

/// One tensor entry of a header.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
}

}  // namespace

TEST_CASE("safetensors: a hand-built file reads back names, types, shapes and bytes") {
  temp_dir dir;
  const fs::path p = dir.path / "ok.safetensors";
  // a: F32 [2,3] = 24 bytes, b: F16 [4] = 8, c: BF16 [2,2] = 8, s: F32 scalar = 4, e: empty.
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}," + entry("b", "F16", "[4]", "[24,32]") + "," +
                       entry("a", "F32", "[2,3]", "[0,24]") + "," + entry("c", "BF16", "[2, 2]", "[32,40]") +
                       "," + entry("s", "F32", "[]", "[40,44]") + "," + entry("e", "BF16", "[0,5]", "[44,44]") +
                       "}";
  while ((8 + header.size()) % 8 != 0) header += ' ';  // writers pad the header with spaces
  const std::string data = pattern(44);
  write_file(p, st_bytes(header, data));

  safetensors_file f = safetensors_file::open(p);
  CHECK(f.path() == p);
  REQUIRE(f.tensors().size() == 5);
  std::vector<std::string> names;
  for (const auto& t : f.tensors()) names.push_back(t.name);
  CHECK(names == std::vector<std::string>{"a", "b", "c", "e", "s"});
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.find("__metadata__") == nullptr);
  CHECK(f.find("missing") == nullptr);

  struct want { const char* name; dtype type; std::vector<int64_t> shape; size_t begin, bytes; };
  for (const want& w : {want{"a", dtype::dtype_f32, {2, 3}, 0, 24}, want{"b", dtype::dtype_f16, {4}, 24, 8},
                        want{"c", dtype::dtype_bf16, {2, 2}, 32, 8}, want{"s", dtype::dtype_f32, {}, 40, 4},
                        want{"e", dtype::dtype_bf16, {0, 5}, 44, 0}}) {
    CAPTURE(w.name);
    const troupe::tensor_info* t = f.find(w.name);
    REQUIRE(t != nullptr);
    CHECK(t->name == w.name);
    CHECK(t->type == w.type);
    CHECK(t->shape == w.shape);
    CHECK(t->bytes == w.bytes);
    CHECK(t->file == p.string());
    CHECK(t->numel() * static_cast<int64_t>(troupe::dtype_size(t->type)) == static_cast<int64_t>(w.bytes));
    REQUIRE(t->data != nullptr);
    CHECK(std::memcmp(t->data, data.data() + w.begin, w.bytes) == 0);
  }

  // Moving keeps the mapping alive and the tensor pointers valid.
  const std::byte* a_data = f.find("a")->data;
  safetensors_file g = std::move(f);
  CHECK(g.find("a")->data == a_data);
  CHECK(std::memcmp(g.find("a")->data, data.data(), 24) == 0);
}

TEST_CASE("safetensors: an empty header object is a file without tensors") {
  temp_dir dir;
  write_file(dir.path / "empty.safetensors", st_bytes("{}", ""));
  CHECK(safetensors_file::open(dir.path / "empty.safetensors").tensors().empty());
}

TEST_CASE("safetensors: file-level defects name the file") {
  SUBCASE("shorter than 8 bytes") { expect_invalid("abc", "shorter"); }
  SUBCASE("header length past the end") { expect_invalid(st_bytes("{}", "", 1000), "truncated"); }
  SUBCASE("absurd header length") { expect_invalid(st_bytes("{}", "", 1ull << 62), "exceeds"); }
  SUBCASE("header not JSON") { expect_invalid(st_bytes("{\"a\":", ""), "not valid JSON"); }
  SUBCASE("header not an object") { expect_invalid(st_bytes("[1,2]", ""), "not a JSON object"); }
  SUBCASE("__metadata__ not a map of strings") {
    expect_invalid(st_bytes("{\"__metadata__\":[1]}", ""), "__metadata__");
    expect_invalid(st_bytes("{\"__metadata__\":{\"k\":1}}", ""), "__metadata__");
  }
}

TEST_CASE("safetensors: tensor-level defects name the tensor") {
  const std::string data = pattern(64);
  auto one = [&](const std::string& body) { return st_bytes("{" + body + "}", data); };
  SUBCASE("entry not an object") { expect_invalid(one("\"w.bad\":5"), "'w.bad'"); }
  SUBCASE("missing dtype") { expect_invalid(one("\"w.bad\":{\"shape\":[1],\"data_offsets\":[0,4]}"), "'w.bad'"); }
  SUBCASE("missing shape") { expect_invalid(one("\"w.bad\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}"), "'w.bad'"); }
  SUBCASE("missing data_offsets") { expect_invalid(one("\"w.bad\":{\"dtype\":\"F32\",\"shape\":[1]}"), "'w.bad'"); }
  SUBCASE("dtype not a string") {
    expect_invalid(one("\"w.bad\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}"), "'w.bad'");
  }
  SUBCASE("shape not an array") { expect_invalid(one(entry("w.bad", "F32", "\"1\"", "[0,4]")), "'w.bad'"); }
  SUBCASE("shape entry a float") { expect_invalid(one(entry("w.bad", "F32", "[1.0]", "[0,4]")), "'w.bad'"); }
  SUBCASE("shape entry a string") { expect_invalid(one(entry("w.bad", "F32", "[\"1\"]", "[0,4]")), "'w.bad'"); }
  SUBCASE("negative dim") { expect_invalid(one(entry("w.bad", "F32", "[-1,4]", "[0,4]")), "'w.bad'"); }
  SUBCASE("dim above int64") {
    expect_invalid(one(entry("w.bad", "F32", "[18446744073709551615]", "[0,4]")), "'w.bad'");
  }
  SUBCASE("shape product overflows") {
    expect_invalid(one(entry("w.bad", "F32", "[4611686018427387904,4611686018427387904]", "[0,4]")), "overflow");
  }
  SUBCASE("byte size overflows") {
    expect_invalid(one(entry("w.bad", "F32", "[4611686018427387904,2]", "[0,4]")), "overflow");
  }
  SUBCASE("data_offsets wrong length") { expect_invalid(one(entry("w.bad", "F32", "[1]", "[0]")), "'w.bad'"); }
  SUBCASE("data_offsets three values") { expect_invalid(one(entry("w.bad", "F32", "[1]", "[0,4,8]")), "'w.bad'"); }
  SUBCASE("data_offsets negative") { expect_invalid(one(entry("w.bad", "F32", "[1]", "[-4,0]")), "'w.bad'"); }
  SUBCASE("data_offsets not integers") { expect_invalid(one(entry("w.bad", "F32", "[1]", "[0.0,4]")), "'w.bad'"); }
  SUBCASE("data_offsets an object") { expect_invalid(one(entry("w.bad", "F32", "[1]", "{}")), "'w.bad'"); }
  SUBCASE("begin after end") { expect_invalid(one(entry("w.bad", "F32", "[1]", "[8,4]")), "begin > end"); }
  SUBCASE("end beyond the data") { expect_invalid(one(entry("w.bad", "F32", "[32]", "[0,128]")), "beyond"); }
  SUBCASE("huge end") {
    expect_invalid(one(entry("w.bad", "F32", "[1]", "[18446744073709551611,18446744073709551615]")), "'w.bad'");
  }
  SUBCASE("byte count does not match shape") { expect_invalid(one(entry("w.bad", "F32", "[3]", "[0,16]")), "'w.bad'"); }
  SUBCASE("unsupported dtype names it") { expect_invalid(one(entry("w.bad", "I64", "[1]", "[0,8]")), "'I64'"); }
  SUBCASE("unsupported dtype names the tensor") {
    expect_invalid(one(entry("w.bad", "F64", "[1]", "[0,8]")), "'w.bad'");
  }
  SUBCASE("overlapping ranges") {
    expect_invalid(one(entry("w.first", "F32", "[4]", "[0,16]") + "," + entry("w.bad", "F32", "[4]", "[8,24]")),
                   "'w.bad'");
  }
  SUBCASE("duplicate names") {
    expect_invalid(one(entry("w.bad", "F32", "[4]", "[0,16]") + "," + entry("w.bad", "F32", "[4]", "[16,32]")),
                   "'w.bad'");
  }
}

TEST_CASE("safetensors: an unreadable path is an io error naming it") {
  temp_dir dir;
  const fs::path missing = dir.path / "absent.safetensors";
  for (const fs::path& p : {missing, dir.path}) {
    try {
      (void)safetensors_file::open(p);
      FAIL("open succeeded");
    } catch (const troupe::error& e) {
      CHECK(e.code() == troupe::errc::errc_io);
      CHECK(std::string(e.what()).find(p.string()) != std::string::npos);
    }
  }
}
