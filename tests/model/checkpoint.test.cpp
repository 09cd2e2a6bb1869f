// Tests of checkpoint directories: the real fixtures (single file), sharded
// checkpoints assembled here from small safetensors files plus an index, and
// every way an index can be wrong. The fixture bytes are cross-checked against
// an independent read of the file so a wrong data pointer cannot pass.
#include "model/checkpoint.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "config/errors.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using troupe::checkpoint;
using troupe::dtype;

namespace {

/// A fresh directory under the system temp dir, removed with its content.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    path = fs::temp_directory_path() / ("troupe_ck_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(counter++) + "_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// A safetensors file of F32 [4] tensors, tensor i filled with bytes value (seed + i).
void write_shard(const fs::path& p, const std::vector<std::string>& names, int seed) {
  json header = json::object();
  std::string data;
  for (size_t i = 0; i < names.size(); ++i) {
    header[names[i]] = {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {data.size(), data.size() + 16}}};
    data.append(16, static_cast<char>(seed + static_cast<int>(i)));
  }
  const std::string text = header.dump();
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((text.size() >> (8 * i)) & 0xff));
  write_file(p, out + text + data);
}

void write_index(const fs::path& dir, const json& weight_map) {
  write_file(dir / "model.safetensors.index.json",
             json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump());
}

/// Expects checkpoint::open(dir) to throw `code` with every needle in what().
void expect_open_fails(const fs::path& dir, const std::vector<std::string>& needles,
                       troupe::errc code = troupe::errc::errc_invalid_model_file) {
  try {
    (void)checkpoint::open(dir);
    FAIL("open succeeded");
  } catch (const troupe::error& e) {
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(e.code() == code);
    for (const auto& n : needles) {
      CAPTURE(n);
      CHECK(what.find(n) != std::string::npos);
    }
  }
}

}  // namespace

TEST_CASE("checkpoint: the llama fixture opens as a single file") {
  const fs::path dir = TROUPE_FIXTURES "/llama";
  checkpoint ck = checkpoint::open(dir);
  CHECK(ck.dir() == dir);
  CHECK(ck.files().size() == 1);
  const auto names = ck.names();
  CHECK(names.size() == 21);
  CHECK(std::is_sorted(names.begin(), names.end()));

  const troupe::tensor_info& emb = ck.get("model.embed_tokens.weight");
  CHECK(emb.type == dtype::dtype_bf16);
  CHECK(emb.shape == std::vector<int64_t>{384, 64});
  CHECK(emb.bytes == 384 * 64 * 2);
  CHECK(emb.file == (dir / "model.safetensors").string());
  CHECK(ck.find("lm_head.weight") != nullptr);
  CHECK(ck.find("model.layers.1.self_attn.k_proj.weight")->shape == std::vector<int64_t>{32, 64});

  // Every tensor's bytes equal those at the header's offsets in an independent read.
  const std::string raw = read_file(dir / "model.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  const json header = json::parse(raw.substr(8, n));
  for (const auto& name : names) {
    CAPTURE(name);
    const uint64_t begin = header.at(name).at("data_offsets")[0].get<uint64_t>();
    const troupe::tensor_info& t = ck.get(name);
    CHECK(std::memcmp(t.data, raw.data() + 8 + n + begin, t.bytes) == 0);
  }
}

TEST_CASE("checkpoint: get of an absent tensor names the tensor and the directory") {
  const fs::path dir = TROUPE_FIXTURES "/qwen2";
  checkpoint ck = checkpoint::open(dir);
  CHECK(ck.find("lm_head.weight") == nullptr);  // tied embeddings
  CHECK(ck.find("model.layers.0.self_attn.q_proj.bias") != nullptr);
  CHECK_THROWS_WITH_AS(ck.get("lm_head.weight"), doctest::Contains("'lm_head.weight'"), troupe::error);
  CHECK_THROWS_WITH_AS(ck.get("lm_head.weight"), doctest::Contains(dir.string().c_str()), troupe::error);
}

TEST_CASE("checkpoint: a sharded checkpoint spans its shards, each opened once") {
  temp_dir tmp;
  write_shard(tmp.path / "model-00001-of-00002.safetensors", {"a.weight", "b.weight", "unlisted"}, 10);
  write_shard(tmp.path / "model-00002-of-00002.safetensors", {"c.weight"}, 20);
  write_shard(tmp.path / "model.safetensors", {"single.weight"}, 30);  // the index wins over it
  write_index(tmp.path, {{"a.weight", "model-00001-of-00002.safetensors"},
                         {"b.weight", "./model-00001-of-00002.safetensors"},
                         {"c.weight", "model-00002-of-00002.safetensors"}});
  checkpoint ck = checkpoint::open(tmp.path);
  CHECK(ck.files().size() == 2);
  CHECK(ck.names() == std::vector<std::string>{"a.weight", "b.weight", "c.weight"});
  CHECK(ck.find("single.weight") == nullptr);
  CHECK(ck.find("unlisted") == nullptr);
  const troupe::tensor_info& b = ck.get("b.weight");
  const troupe::tensor_info& c = ck.get("c.weight");
  CHECK(b.file == (tmp.path / "model-00001-of-00002.safetensors").string());
  CHECK(c.file == (tmp.path / "model-00002-of-00002.safetensors").string());
  CHECK(static_cast<int>(b.data[0]) == 11);
  CHECK(static_cast<int>(c.data[15]) == 20);

  checkpoint moved = std::move(ck);  // pointers into the mappings survive a move
  CHECK(moved.get("c.weight").data == c.data);
}

TEST_CASE("checkpoint: index defects name what is wrong") {
  temp_dir tmp;
  write_shard(tmp.path / "s1.safetensors", {"a.weight"}, 1);
  const std::string index = (tmp.path / "model.safetensors.index.json").string();

  SUBCASE("missing shard") {
    write_index(tmp.path, {{"a.weight", "s1.safetensors"}, {"b.weight", "s2.safetensors"}});
    expect_open_fails(tmp.path, {"s2.safetensors", "b.weight"});
  }
  SUBCASE("tensor absent from its shard") {
    write_index(tmp.path, {{"a.weight", "s1.safetensors"}, {"ghost.weight", "s1.safetensors"}});
    expect_open_fails(tmp.path, {"'ghost.weight'", "s1.safetensors"});
  }
  SUBCASE("shard escaping the directory") {
    temp_dir outside;
    write_shard(outside.path / "evil.safetensors", {"a.weight"}, 2);
    const std::string rel = "../" + outside.path.filename().string() + "/evil.safetensors";
    write_index(tmp.path, {{"a.weight", rel}});
    expect_open_fails(tmp.path, {rel, "'a.weight'"});
    const std::string abs = (outside.path / "evil.safetensors").string();
    write_index(tmp.path, {{"a.weight", abs}});
    expect_open_fails(tmp.path, {abs});
  }
  SUBCASE("shard name not a string") {
    write_index(tmp.path, {{"a.weight", 3}});
    expect_open_fails(tmp.path, {"'a.weight'", index});
  }
  SUBCASE("index not JSON") {
    write_file(index, "{\"weight_map\": {");
    expect_open_fails(tmp.path, {index, "not valid JSON"});
  }
  SUBCASE("index without weight_map") {
    write_file(index, "{\"metadata\": {}}");
    expect_open_fails(tmp.path, {index, "weight_map"});
  }
  SUBCASE("weight_map not an object") {
    write_file(index, "{\"weight_map\": [\"s1.safetensors\"]}");
    expect_open_fails(tmp.path, {index, "weight_map"});
  }
  SUBCASE("a corrupt shard fails with the shard's own error") {
    write_file(tmp.path / "s1.safetensors", "short");
    write_index(tmp.path, {{"a.weight", "s1.safetensors"}});
    expect_open_fails(tmp.path, {(tmp.path / "s1.safetensors").string()});
  }
}

TEST_CASE("checkpoint: a directory without weights names the directory") {
  temp_dir tmp;
  expect_open_fails(tmp.path, {tmp.path.string(), "model.safetensors"});
  expect_open_fails(tmp.path / "nope", {(tmp.path / "nope").string()}, troupe::errc::errc_io);
}

TEST_CASE("checkpoint: a truncated copy of the llama fixture fails naming a tensor") {
  temp_dir tmp;
  std::string raw = read_file(TROUPE_FIXTURES "/llama/model.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  // Cut inside model.layers.0.mlp.down_proj.weight (data bytes 98432..118912);
  // the tensors sorting before it still fit.
  raw.resize(8 + n + 100000);
  write_file(tmp.path / "model.safetensors", raw);
  expect_open_fails(tmp.path, {(tmp.path / "model.safetensors").string(),
                               "'model.layers.0.mlp.down_proj.weight'", "truncated"});
}
