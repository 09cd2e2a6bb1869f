// `troupe node`, `troupe launch` and deploy/netns.sh as a user runs them: real
// processes, real UCX links, real signals. What must hold: every node of the
// three-node example comes up linked to the others, with its output prefixed;
// Ctrl-C stops every child (their pids are gone afterwards, no orphans); a
// child that dies is reported with its signal and launch exits nonzero; bad
// input is refused naming file, line and key.
//
// Ports of the examples are rewritten to free ones. The netns.sh case needs
// root and `ip netns`; it is skipped (exit 77 under CTest) elsewhere.
#include "cli_support.hpp"

#include <cstring>

namespace {

using namespace cli_support;

// The three-node example in `dir`, with free ports and an absolute model path.
fs::path three_node_config(const scratch& dir) {
  const fs::path file = dir / "three-nodes.toml";
  std::ofstream(file) << three_node_example_text().text;
  return file;
}

// Every "[x] ready: node x: links ... up to <both others>" line is there.
bool three_ready(const std::string& out, const std::string&) {
  return has_all(out, {"[a] ready: node a: links on", "up to b, c; gateway http://127.0.0.1:", "[b] ready: node b: links on",
                       "up to a, c; no gateway or instance here", "[c] ready: node c: links on",
                       "up to a, b; instance demo-0 on cpu"});
}

std::vector<std::string> launch_argv(const fs::path& config) {
  return {TROUPE_BINARY, "launch", "--config", config.string()};
}

}  // namespace

TEST_CASE("launch: the three-node example comes up linked with prefixed output and SIGINT stops every node") {
  const scratch dir("launch", "sigint");
  process p(dir, "launch", launch_argv(three_node_config(dir)));
  REQUIRE_MESSAGE(p.wait_for(three_ready), p.both());
  const std::string err = p.stderr_text();
  CHECK(has_all(err, {"[a] ", "[b] ", "[c] ", "node c: link to a up", "node c: link to b up", "node b: link to a up",
                      "node a: link to b up", "node a: link to c up", "node c: instance demo-0 loaded"}));
  const auto pids = child_pids(err);
  REQUIRE(pids.size() == 3);
  for (const auto& [name, pid] : pids) CHECK_MESSAGE(!gone(pid), name);

  REQUIRE(::kill(p.pid, SIGINT) == 0);
  CHECK(p.wait_exit() == 0);
  const std::string after = p.stderr_text();
  CAPTURE(after);
  CHECK(after.find("launch: Interrupt, stopping 3 node(s)") != std::string::npos);
  for (const auto& [name, pid] : pids) {
    CHECK_MESSAGE(gone(pid), "node " << name << " (pid " << pid << ") outlived launch");
    CHECK(after.find("launch: node " + name + " (pid " + std::to_string(pid) + ") stopped") != std::string::npos);
    CHECK(after.find("[" + name + "] ") != std::string::npos);
    CHECK(after.find("node " + name + ": stopped") != std::string::npos);
  }
}

TEST_CASE("launch: a node that dies is reported with its signal, the others are stopped, exit 1") {
  const scratch dir("launch", "kill");
  // Each node on a loopback address of its own (127.0.0.2 and 127.0.0.3 are
  // on lo without being any interface's address).
  std::string text = three_node_example_text().text;
  for (const char* node : {"b", "c"}) {
    const size_t at = text.find("address = \"127.0.0.1\"", text.find(std::string("name = \"") + node + "\""));
    REQUIRE(at != std::string::npos);
    text.replace(at, std::strlen("address = \"127.0.0.1\""), std::string("address = \"127.0.0.") + (*node == 'b' ? "2" : "3") + "\"");
  }
  std::ofstream(dir / "three-addresses.toml") << text;
  process p(dir, "launch", launch_argv(dir / "three-addresses.toml"));
  REQUIRE_MESSAGE(p.wait_for(three_ready), p.both());
  const auto pids = child_pids(p.stderr_text());
  REQUIRE(pids.size() == 3);
  REQUIRE(::kill(pids.at("b"), SIGKILL) == 0);
  CHECK(p.wait_exit() == 1);
  const std::string err = p.stderr_text();
  CAPTURE(err);
  CHECK(err.find("launch: node b (pid " + std::to_string(pids.at("b")) +
                 ") was killed by signal 9 (Killed) unexpectedly; stopping the others") != std::string::npos);
  for (const auto& [name, pid] : pids) CHECK_MESSAGE(gone(pid), "node " << name << " outlived launch");
  CHECK(err.find("launch: node a (pid " + std::to_string(pids.at("a")) + ") stopped") != std::string::npos);
}

TEST_CASE("node: one node of a one-node config serves like serve --config and stops on SIGTERM") {
  const scratch dir("launch", "one");
  std::string text = slurp(source_root / "config" / "examples" / "one-node.toml");
  replace_all(text, "port = 8000", "port = 0");
  replace_all(text, "\"../../models/demo\"", demo_model_toml());
  std::ofstream(dir / "one.toml") << text;
  process p(dir, "p", {TROUPE_BINARY, "node", "--config", (dir / "one.toml").string(), "--name", "local"});
  REQUIRE_MESSAGE(p.wait_for([](const std::string& out, const std::string&) {
    return out.find("ready: node local: one-node cluster (no links); gateway http://127.0.0.1:") != std::string::npos &&
           out.find("instance mixed-0 on cpu; instance mixed-1 on cpu\n") != std::string::npos;
  }), p.both());
  // The gateway answers /health 200 (both instances ready).
  const std::string out = p.stdout_text();
  const size_t at = out.find("gateway http://127.0.0.1:") + std::strlen("gateway http://127.0.0.1:");
  const int port = std::stoi(out.substr(at));
  const http_reply health = http("127.0.0.1", port, "GET", "/health");
  CHECK_MESSAGE(health.status == 200, health.body);
  REQUIRE(::kill(p.pid, SIGTERM) == 0);
  CHECK(p.wait_exit() == 0);
  CHECK(p.stderr_text().find("node local: stopped") != std::string::npos);
}

TEST_CASE("node and launch: an unknown node or a bad config is refused naming file, line and key") {
  const scratch dir("launch", "bad");
  const fs::path good = three_node_config(dir);
  {
    process p(dir, "p", {TROUPE_BINARY, "node", "--config", good.string(), "--name", "d"});
    CHECK(p.wait_exit() == 1);
    CHECK(first_line(p.stderr_text()) ==
          "troupe: error: " + good.string() + ": no node 'd' among its [[nodes]]: a, b, c");
  }
  std::string text = slurp(good);
  const size_t b = text.find("name = \"b\"");
  REQUIRE(b != std::string::npos);
  const size_t port_at = text.find("port = ", b);
  const int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(port_at), '\n'));
  text.replace(port_at, text.find('\n', port_at) - port_at, "port = 0");
  const fs::path bad = dir / "bad.toml";
  std::ofstream(bad) << text;
  const std::string expected = "troupe: error: " + bad.string() + ":" + std::to_string(line) +
                               ":8: nodes.port: node 'b' needs a fixed port: the other nodes of a 3-node cluster "
                               "connect to it (0, any free port, only works for a one-node cluster)";
  {
    process p(dir, "p", {TROUPE_BINARY, "node", "--config", bad.string(), "--name", "a"});
    CHECK(p.wait_exit() == 1);
    CHECK(first_line(p.stderr_text()) == expected);
  }
  {
    process p(dir, "p", {TROUPE_BINARY, "launch", "--config", bad.string()});
    CHECK(p.wait_exit() == 1);
    CHECK(first_line(p.stderr_text()) == expected);  // refused before any node starts
    CHECK(p.stderr_text().find("started") == std::string::npos);
  }
  {
    process p(dir, "p", {TROUPE_BINARY, "launch", "--config", good.string(), "--list"});
    CHECK(p.wait_exit() == 0);
    CHECK(std::regex_match(p.stdout_text(), std::regex("a 127\\.0\\.0\\.1 \\d+\nb 127\\.0\\.0\\.1 \\d+\nc 127\\.0\\.0\\.1 \\d+\n")));
  }
  {  // an address no interface of this host has: refused at start, naming it
    std::string other = slurp(good);
    const size_t second = other.find("address = \"127.0.0.1\"", other.find("name = \"b\""));
    other.replace(second, std::strlen("address = \"127.0.0.1\""), "address = \"198.51.100.77\"");
    const fs::path file = dir / "foreign.toml";
    std::ofstream(file) << other;
    process p(dir, "p", {TROUPE_BINARY, "node", "--config", file.string(), "--name", "b"});
    CHECK(p.wait_exit() == 1);
    const std::string line = first_line(p.stderr_text());
    CHECK(line.rfind("troupe: error: " + file.string() + ": node 'b' cannot listen on 198.51.100.77:", 0) == 0);
    CHECK(line.find("Cannot assign requested address") != std::string::npos);
  }
}

TEST_CASE("netns.sh: the nodes run in network namespaces over a bridge and are cleaned up on SIGTERM") {
  if (!netns_possible()) {
    MESSAGE("skipped: deploy/netns.sh needs root and `ip netns`");
    if (selected_alone()) std::exit(77);
    return;
  }
  const scratch dir("launch", "netns");
  std::string text = slurp(source_root / "config" / "examples" / "three-nodes-netns.toml");
  replace_all(text, "\"../../models/demo\"", demo_model_toml());
  const fs::path config = dir / "netns.toml";
  std::ofstream(config) << text;
  process p(dir, "p", {"bash", (source_root / "deploy" / "netns.sh").string(), "--config", config.string(), "--troupe",
                  TROUPE_BINARY});
  const std::string tag = std::to_string(p.pid);
  REQUIRE_MESSAGE(p.wait_for([](const std::string& out, const std::string&) {
    return has_all(out, {"[a] ready: node a: links on 10.77.0.1:7101 up to b, c", "[b] ready: node b: links on 10.77.0.2:7101 up to a, c",
                         "[c] ready: node c: links on 10.77.0.3:7101 up to a, b; instance demo-0 on cpu"});
  }), p.both());
  const std::map<std::string, pid_t> pids = netns_pids(p.stderr_text(), tag);
  REQUIRE(pids.size() == 3);
  REQUIRE(::kill(p.pid, SIGTERM) == 0);
  CHECK(p.wait_exit() == 0);
  for (const auto& [name, pid] : pids) CHECK_MESSAGE(gone(pid), "node " << name << " outlived netns.sh");
  CHECK_FALSE(sh_ok("ip netns list | grep -q troupe-" + tag + "-"));
  CHECK_FALSE(sh_ok("ip link show trbr" + tag));
  CHECK(p.stderr_text().find("[c] ") != std::string::npos);
}

TEST_CASE("deploy: the Slurm script writes a valid config from the allocation and starts one node per Slurm node") {
  const scratch dir("launch", "slurm");
  fs::create_directories(dir / "bin");
  fs::create_directories(dir / "submit");
  std::ofstream(dir / "bin" / "scontrol") << "#!/bin/sh\n[ \"$1 $2 $3\" = 'show hostnames gpu[1-3]' ] && printf 'gpu1\\ngpu2\\ngpu3\\n'\n";
  std::ofstream(dir / "bin" / "srun") << "#!/bin/sh\necho \"srun $*\"\n";
  fs::permissions(dir / "bin" / "scontrol", fs::perms::owner_all);
  fs::permissions(dir / "bin" / "srun", fs::perms::owner_all);
  const std::string path = "PATH=" + (dir / "bin").string() + ":" + std::getenv("PATH");
  process p(dir, "p", {"env", path, "SLURM_JOB_ID=42", "SLURM_JOB_NODELIST=gpu[1-3]", "SLURM_SUBMIT_DIR=" + (dir / "submit").string(),
                  "bash", (source_root / "deploy" / "slurm" / "troupe.sbatch").string(), "--model",
                  fs::canonical(source_root / "models" / "demo").string(), "--troupe", TROUPE_BINARY, "--device", "cpu"});
  REQUIRE_MESSAGE(p.wait_exit() == 0, p.both());
  const fs::path config = dir / "submit" / "troupe-42" / "cluster.toml";
  CHECK(p.stdout_text() == "srun --ntasks=3 --ntasks-per-node=1 --kill-on-bad-exit=1 --label bash -c exec \"$0\" node "
                           "--config \"$1\" --name \"$SLURMD_NODENAME\" " + std::string(TROUPE_BINARY) + " " +
                           config.string() + "\n");
  const std::string secret = slurp(dir / "submit" / "troupe-42" / "secret");
  CHECK(std::regex_match(secret, std::regex("[0-9a-f]{64}")));
  CHECK((fs::status(dir / "submit" / "troupe-42" / "secret").permissions() & fs::perms::others_read) == fs::perms::none);
  process list(dir, "list", {TROUPE_BINARY, "launch", "--config", config.string(), "--list"});
  CHECK(list.wait_exit() == 0);
  CHECK(list.stdout_text() == "gpu1 gpu1 7100\ngpu2 gpu2 7100\ngpu3 gpu3 7100\n");
  const std::string text = slurp(config);
  CHECK(has_all(text, {"[gateway]\nnode = \"gpu1\"\nhost = \"0.0.0.0\"\nport = 8000\n", "name = \"gpu3-0\"",
                       "node = \"gpu3\"\ndevice = \"cpu\"\n", "bind = \"0.0.0.0\""}));
}

TEST_CASE("deploy: the Kubernetes ConfigMap holds a valid cluster.toml whose nodes are the StatefulSets' pods") {
  const scratch dir("launch", "k8s");
  const std::string map = slurp(source_root / "deploy" / "k8s" / "configmap.yaml");
  const size_t begin = map.find("  cluster.toml: |\n");
  REQUIRE(begin != std::string::npos);
  std::string toml;
  for (size_t p = map.find('\n', begin) + 1; p < map.size();) {  // the block: lines indented by 4
    const size_t eol = map.find('\n', p);
    const std::string line = map.substr(p, eol - p);
    if (!line.empty() && line.rfind("    ", 0) != 0) break;
    toml += (line.empty() ? "" : line.substr(4)) + "\n";
    p = eol + 1;
  }
  REQUIRE(toml.find("secret_file = \"/etc/troupe/secret/secret\"") != std::string::npos);
  replace_all(toml, "/etc/troupe/secret/secret", (dir / "secret").string());
  std::ofstream(dir / "secret") << "test-secret\n";
  std::ofstream(dir / "cluster.toml") << toml;
  process list(dir, "list", {TROUPE_BINARY, "launch", "--config", (dir / "cluster.toml").string(), "--list"});
  REQUIRE_MESSAGE(list.wait_exit() == 0, list.both());
  CHECK(list.stdout_text() == "troupe-gateway-0 troupe-gateway-0.troupe 7100\ntroupe-worker-0 troupe-worker-0.troupe 7100\n"
                              "troupe-worker-1 troupe-worker-1.troupe 7100\n");
  const std::string sets = slurp(source_root / "deploy" / "k8s" / "statefulset.yaml");
  CHECK(std::regex_search(sets, std::regex("name: troupe-gateway\\n[^]*?replicas: 1\\n")));
  CHECK(std::regex_search(sets, std::regex("name: troupe-worker\\n[^]*?replicas: 2\\n")));
  CHECK(sets.find("\"--name\", \"$(POD_NAME)\"") != std::string::npos);
}
