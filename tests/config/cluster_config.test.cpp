// cluster.toml: the shipped examples load; every kind of mistake is an error
// that names the file, the line and column, and the key, including mistakes
// that span tables (node references, clashing ports, a missing secret).
#include "config/cluster_config.hpp"

#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

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
  const std::string two =
      "secret = \"s\"\n[[nodes]]\nname = \"a\"\nport = 1\n[[nodes]]\nname = \"b\"\nport = 2\n[gateway]\nnode = \"a\"\n";
  CHECK(error_of(two + "[[instances]]\nname = \"i\"\nmodel = \"m\"\n[[instances.stages]]\nnode = \"c\"\n") ==
        "c.toml:14:8: instances.stages.node: unknown node 'c' (declared: a, b)");
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

TEST_CASE("cluster config: the three-node examples load") {
  const cluster_config c = cluster_config_load(source_root / "config" / "examples" / "three-nodes.toml");
  REQUIRE(c.nodes.size() == 3);
  CHECK(c.nodes[0].name == "a");
  CHECK(c.nodes[1].address == "127.0.0.1");
  CHECK(c.nodes[2].listen_host() == "127.0.0.1");
  CHECK(c.nodes[2].port == 7103);
  CHECK(c.nodes[2].devices == std::vector<std::string>{"cpu"});
  CHECK(!c.secret.empty());
  CHECK(c.gateway.node == "a");
  CHECK(c.gateway.port == 8100);
  REQUIRE(c.instances.size() == 1);
  REQUIRE(c.instances[0].stages.size() == 1);
  CHECK(c.instances[0].stages[0].node == "c");
  CHECK(c.links.heartbeat_interval_ms.value == 500);
  CHECK(c.links.heartbeat_timeout_ms.value == 2000);
  CHECK(std::filesystem::equivalent(c.instances[0].model, source_root / "models" / "demo"));
  CHECK(cluster_config_node(c, "b").port == 7102);

  const cluster_config n = cluster_config_load(source_root / "config" / "examples" / "three-nodes-netns.toml");
  REQUIRE(n.nodes.size() == 3);
  CHECK(n.nodes[0].address == "10.77.0.1");
  CHECK(n.gateway.host == "10.77.0.1");
}

TEST_CASE("cluster config: link settings have declared defaults and are checked") {
  const cluster_config c = cluster_config_parse(minimal, "c.toml", "/base");
  const link_tunables defaults;
  CHECK(c.links.heartbeat_interval_ms.value == 500);
  CHECK(c.links.heartbeat_timeout_ms.value == 2000);
  CHECK(c.links.handshake_timeout_ms.value == 2000);
  CHECK(c.links.connect_retry_max_ms.value == 5000);
  CHECK(c.links.busy_poll_us.value == 100);
  CHECK(c.nodes[0].bind.empty());
  CHECK(c.nodes[0].listen_host() == "127.0.0.1");
  const cluster_config d = cluster_config_parse(
      std::string("[links]\nheartbeat-interval-ms = 100\nheartbeat-timeout-ms = 250\nconnect-retry-max-ms = 1000\n"
                  "busy-poll-us = 0\n") + minimal,
      "c.toml", "/base");
  CHECK(d.links.heartbeat_interval_ms.value == 100);
  CHECK(d.links.heartbeat_timeout_ms.value == 250);
  CHECK(d.links.connect_retry_max_ms.value == 1000);
  CHECK(d.links.busy_poll_us.value == 0);
  CHECK(d.links.handshake_timeout_ms.value == defaults.handshake_timeout_ms.value);
  CHECK(error_of(std::string("[links]\nheartbeat-interval-ms = 5\n") + minimal) ==
        "c.toml:2:25: links.heartbeat-interval-ms: must be in [10, 60000], got 5");
  CHECK(error_of(std::string("[links]\nheartbeat = 5\n") + minimal) == "c.toml:2:13: links.heartbeat: unknown key");
  CHECK(error_of(std::string("[links]\nheartbeat-interval-ms = 1000\nheartbeat-timeout-ms = 1500\n") + minimal) ==
        "c.toml:3:24: links.heartbeat-timeout-ms: must be at least twice heartbeat-interval-ms (1000), got 1500");
  CHECK(error_of(std::string("[links]\nheartbeat-interval-ms = 1500\n") + minimal)
            .find("links.heartbeat-timeout-ms: must be at least twice heartbeat-interval-ms (1500), got 2000") !=
        std::string::npos);
}

TEST_CASE("cluster config: nodes of a multi-node cluster are reachable, distinct and referenced correctly") {
  // Three nodes; `a`, `b`, `c` are the lines of each node's table body, `rest` of the gateway's.
  auto three = [](const std::string& a, const std::string& b, const std::string& c, const std::string& rest = "") {
    return "secret = \"s\"\n[[nodes]]\nname = \"a\"\n" + a + "\n[[nodes]]\nname = \"b\"\n" + b +
           "\n[[nodes]]\nname = \"c\"\n" + c + "\n[gateway]\nnode = \"a\"\n" + rest +
           "[[instances]]\nname = \"i\"\nmodel = \"m\"\n[[instances.stages]]\nnode = \"c\"\n";
  };
  const cluster_config ok = cluster_config_parse(three("port = 1", "port = 2", "port = 3"), "c.toml", "/base");
  CHECK(ok.nodes.size() == 3);
  // The same port on different addresses is fine; a wildcard bind is fine.
  CHECK_NOTHROW(cluster_config_parse(
      three("address = \"10.0.0.1\"\nport = 7", "address = \"10.0.0.2\"\nport = 7", "address = \"h\"\nbind = \"0.0.0.0\"\nport = 7"),
      "c.toml", "/base"));

  CHECK(error_of(three("port = 1", "address = \"127.0.0.2\"", "port = 3")) ==
        "c.toml:5:1: nodes.port: node 'b' needs a fixed port: the other nodes of a 3-node cluster connect to it "
        "(0, any free port, only works for a one-node cluster)");
  CHECK(error_of(three("port = 1", "port = 0", "port = 3")) ==
        "c.toml:7:8: nodes.port: node 'b' needs a fixed port: the other nodes of a 3-node cluster connect to it "
        "(0, any free port, only works for a one-node cluster)");
  CHECK(error_of(three("port = 1", "port = 2", "port = 1")) ==
        "c.toml:10:8: nodes.port: node 'c' has the address and port of node 'a' (127.0.0.1:1)");
  CHECK(error_of(three("port = 1", "address = \"0.0.0.0\"\nport = 2", "port = 3")) ==
        "c.toml:7:11: nodes.address: node 'b': '0.0.0.0' is where the other nodes connect, so it must name this "
        "node (bind = \"0.0.0.0\" listens on every interface)");
  CHECK(error_of(three("port = 1", "port = 2\nbind = \"\"", "port = 3")) == "c.toml:8:8: nodes.bind: must not be empty");
  CHECK(error_of(three("port = 1", "port = 2", "port = 3", "port = 1\n")) ==
        "c.toml:13:8: gateway.port: 1 is also the link port of node 'a' on 127.0.0.1");
  CHECK(error_of(three("port = 1", "port = 2", "port = 3", "port = 2\n")) ==
        "c.toml:13:8: gateway.port: 2 is also the link port of node 'b' on 127.0.0.1");
  CHECK(error_of(three("port = 1", "port = 2", "port = 3", "host = \"0.0.0.0\"\nport = 1\n")) ==
        "c.toml:14:8: gateway.port: 1 is also the link port of node 'a' on 127.0.0.1");
  CHECK_NOTHROW(cluster_config_parse(three("port = 1", "address = \"10.0.0.2\"\nport = 2", "port = 3", "port = 2\n"),
                                     "c.toml", "/base"));
  CHECK(error_of(three("port = 1", "port = 2", "port = 3\ndevices = [\"cpu\", \"cuda:0\"]") +
                 "device = \"cuda:1\"\n") ==
        "c.toml:19:10: instances.stages.device: 'cuda:1' is not one of node 'c''s devices (cpu, cuda:0)");
  CHECK_NOTHROW(cluster_config_parse(three("port = 1", "port = 2", "port = 3\ndevices = [\"cpu\", \"cuda:0\"]") +
                                         "device = \"cuda\"\n",
                                     "c.toml", "/base"));
  CHECK(error_of(std::string("secret = \"s\"\n[[nodes]]\nname = \"a\"\nport = 1\n[[nodes]]\nname = \"b\"\nport = 2\n") +
                 "[gateway]\nnode = \"x\"\n[[instances]]\nname = \"i\"\nmodel = \"m\"\n[[instances.stages]]\nnode = \"b\"\n") ==
        "c.toml:9:8: gateway.node: unknown node 'x' (declared: a, b)");
  CHECK(error_of("[[nodes]]\nname = \"n 1\"\n") ==
        "c.toml:2:8: nodes.name: 'n 1' must be 1 to 64 letters, digits, '-', '_' or '.'");
  CHECK(error_of("[[nodes]]\nname = \"n\"\n[[nodes]]\nname = \"n\"\n") == "c.toml:4:8: nodes.name: duplicate node 'n'");
  CHECK(error_of("secret = \"\"\n[[nodes]]\nname = \"a\"\nport = 1\n[[nodes]]\nname = \"b\"\nport = 2\n") ==
        "c.toml:1:10: secret: a cluster of 2 nodes needs a secret (or secret_file)");
}

TEST_CASE("cluster config: the secret may come from a file") {
  const auto dir = std::filesystem::temp_directory_path() / ("troupe_secret_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "secret") << "  s3cret value \n\n";
  const std::string two = "[[nodes]]\nname = \"a\"\nport = 1\n[[nodes]]\nname = \"b\"\nport = 2\n[gateway]\nnode = \"a\"\n"
                          "[[instances]]\nname = \"i\"\nmodel = \"m\"\n[[instances.stages]]\nnode = \"b\"\n";
  const cluster_config c = cluster_config_parse("secret_file = \"secret\"\n" + two, "c.toml", dir);
  CHECK(c.secret == "  s3cret value");
  auto error_in = [&](const std::string& text) {
    try {
      cluster_config_parse(text, "c.toml", dir);
    } catch (const error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_in("secret_file = \"missing\"\n" + two) ==
        "c.toml:1:15: secret_file: cannot read '" + (dir / "missing").string() + "'");
  std::ofstream(dir / "empty") << "\n";
  CHECK(error_in("secret_file = \"empty\"\n" + two) ==
        "c.toml:1:15: secret_file: '" + (dir / "empty").string() + "' is empty");
  CHECK(error_in("secret = \"x\"\nsecret_file = \"secret\"\n" + two) == "c.toml:2:15: secret_file: set either secret or secret_file");
  std::filesystem::remove_all(dir);
}

TEST_CASE("cluster config: a node is looked up by name and an unknown name lists the declared ones") {
  cluster_config c = cluster_config_load(source_root / "config" / "examples" / "three-nodes.toml");
  CHECK(cluster_config_node(c, "c").port == 7103);
  try {
    cluster_config_node(c, "d");
    FAIL("no error");
  } catch (const error& e) {
    CHECK(e.code() == errc::errc_invalid_config);
    CHECK(std::string(e.what()) == c.file.string() + ": no node 'd' among its [[nodes]]: a, b, c");
  }
}
