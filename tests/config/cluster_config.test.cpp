// cluster.toml: the shipped examples load; every kind of mistake is an error
// that names the file, the line and column, and the key.
#include "config/cluster_config.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <string>

#include "config/errors.hpp"

using namespace troupe;

namespace {

const std::filesystem::path source_root = std::filesystem::path(TROUPE_FIXTURES) / ".." / "..";

const char* minimal = R"(
[[nodes]]
name = "n0"

[[instances]]
name = "a"
model = "m"
)";

// The message of the error parsing `text` throws (must throw errc_invalid_config).
std::string error_of(const std::string& text) {
  try {
    cluster_config_parse(text, "c.toml", "/base");
  } catch (const error& e) {
    CHECK(e.code() == errc::errc_invalid_config);
    return e.what();
  }
  FAIL("no error for:\n" << text);
  return {};
}

}  // namespace

TEST_CASE("cluster config: the example loads with paths relative to its file") {
  const auto file = source_root / "config" / "examples" / "one-node.toml";
  const cluster_config c = cluster_config_load(file);
  REQUIRE(c.nodes.size() == 1);
  CHECK(c.nodes[0].name == "local");
  CHECK(c.gateway.node == "local");
  CHECK(c.gateway.port == 8000);
  CHECK(c.gateway.admin_key == "change-me-admin");
  REQUIRE(c.instances.size() == 2);
  CHECK(c.instances[0].name == "mixed-0");
  CHECK(std::filesystem::equivalent(c.instances[0].model, source_root / "models" / "demo"));
  CHECK(c.instances[0].tunables.kv_cache_mib.value == 256);
  CHECK(c.instances[0].tunables.max_running_requests.value == 128);
  CHECK(c.instances[1].tunables.max_running_requests.value == engine_tunables{}.max_running_requests.value);
  REQUIRE(c.instances[1].stages.size() == 1);  // one stage on the only node by default
  CHECK(c.instances[1].stages[0].node == "local");
  CHECK(c.instances[1].stages[0].device == "auto");
}

TEST_CASE("cluster config: defaults of a minimal file") {
  const cluster_config c = cluster_config_parse(minimal, "c.toml", "/base");
  CHECK(c.gateway.host == "127.0.0.1");
  CHECK(c.gateway.port == 8000);
  CHECK(c.gateway.api_keys.empty());
  CHECK(c.instances[0].role == "mixed");
  CHECK(c.instances[0].model == std::filesystem::path("/base/m"));
  CHECK(c.secret.empty());
}

TEST_CASE("cluster config: mistakes name file, line, column and key") {
  CHECK(error_of("[[nodes]]\nname = \"n\"\nport = 70000\n[[instances]]\nname=\"a\"\nmodel=\"m\"\n") ==
        "c.toml:3:8: nodes.port: must be in [0, 65535], got 70000");
  CHECK(error_of(std::string(minimal) + "[instances.tunables]\nthreads = \"4\"\n") ==
        "c.toml:9:11: instances.tunables.threads: must be an integer");
  CHECK(error_of(std::string(minimal) + "[instances.tunables]\nkv-page-size = 0\n") ==
        "c.toml:9:16: instances.tunables.kv-page-size: must be in [1, 4096], got 0");
  CHECK(error_of(std::string(minimal) + "colour = \"red\"\n") == "c.toml:8:10: instances.colour: unknown key");
  CHECK(error_of("[[nodes]]\nname = \"n\"\n[gateway]\nprot = 1\n[[instances]]\nname=\"a\"\nmodel=\"m\"\n") ==
        "c.toml:4:8: gateway.prot: unknown key");
  CHECK(error_of("[[nodes]]\nname = \"n\"\n[[nodes]]\nname = \"n\"\n") .find("duplicate node 'n'") != std::string::npos);
  const std::string two = "secret = \"s\"\n[[nodes]]\nname = \"a\"\n[[nodes]]\nname = \"b\"\n[gateway]\nnode = \"a\"\n";
  CHECK(error_of(two + "[[instances]]\nname = \"i\"\nmodel = \"m\"\n[[instances.stages]]\nnode = \"c\"\n") ==
        "c.toml:12:8: instances.stages.node: unknown node 'c'");
  CHECK(error_of(two + "[[instances]]\nname = \"i\"\nmodel = \"m\"\n").find("needs [[instances.stages]]") !=
        std::string::npos);
  CHECK(error_of("[[nodes]]\nname = \"a\"\n[[nodes]]\nname = \"b\"\n").find("secret: a cluster of 2 nodes needs a secret") !=
        std::string::npos);
  CHECK(error_of(std::string(minimal) + "role = \"both\"\n").find("instances.role: must be mixed, prefill or decode") !=
        std::string::npos);
  CHECK(error_of(std::string(minimal) + "[[instances.stages]]\ndevice = \"gpu\"\n")
            .find("instances.stages.device: must be auto, cpu, cuda or cuda:N, got 'gpu'") != std::string::npos);
  CHECK(error_of("[[nodes]]\nname = \"n\"\n").find("instances: at least one [[instances]]") != std::string::npos);
  CHECK(error_of("[[instances]]\nname = \"a\"\nmodel = \"m\"\n").find("nodes: at least one [[nodes]]") !=
        std::string::npos);
  CHECK(error_of("[[nodes]]\nname = \"n\"\n[[instances]]\nname = \"a\"\n").find("instances.model: missing") !=
        std::string::npos);
  CHECK(error_of("nodes = 3\n").find("nodes: must be an array of tables") != std::string::npos);
  CHECK(error_of("[[nodes]\nname = 1\n").rfind("c.toml:1:", 0) == 0);  // syntax errors keep their position
  CHECK(error_of("[[nodes]]\nname = \"n\"\n[gateway]\napi_keys = [\"\"]\n[[instances]]\nname=\"a\"\nmodel=\"m\"\n")
            .find("gateway.api_keys: an API key must not be empty") != std::string::npos);
}

TEST_CASE("cluster config: an unreadable file is an io error naming it") {
  try {
    cluster_config_load("/nonexistent/cluster.toml");
    FAIL("no error");
  } catch (const error& e) {
    CHECK(e.code() == errc::errc_io);
    CHECK(std::string(e.what()).find("/nonexistent/cluster.toml") != std::string::npos);
  }
}
