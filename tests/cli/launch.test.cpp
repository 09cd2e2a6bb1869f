// `troupe node`, `troupe launch` and deploy/netns.sh as a user runs them: real
// processes, real UCX links, real signals. What must hold: every node of the
// three-node example comes up linked to the others, with its output prefixed;
// Ctrl-C stops every child (their pids are gone afterwards, no orphans); a
// child that dies is reported with its signal and launch exits nonzero; bad
// input is refused naming file, line and key.
//
// Ports of the examples are rewritten to free ones. The netns.sh case needs
// root and `ip netns`; it is skipped (exit 77 under CTest) elsewhere.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const fs::path source_root = fs::path(TROUPE_FIXTURES) / ".." / "..";

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
}

// A per-process scratch folder (CTest runs cases in parallel processes),
// removed at the end of the case.
struct scratch {
  fs::path path;
  explicit scratch(const std::string& tag)
      : path(fs::temp_directory_path() / ("troupe_launch_test_" + std::to_string(getpid()) + "_" + tag)) {
    fs::create_directories(path);
  }
  ~scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  operator const fs::path&() const { return path; }
  fs::path operator/(const std::string& name) const { return path / name; }
};

// A TCP port nothing listens on right now.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool sh_ok(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }

// Root is not enough (a container may lack CAP_NET_ADMIN): make and remove a
// namespace and a bridge, as netns.sh will.
const char* const netns_probe =
    "n=tprobe$$; ip netns add $n && ip link add ${n}b type bridge && ip link del ${n}b; r=$?; "
    "ip netns del $n; exit $r";

// The demo model's absolute path as a TOML string.
std::string demo_model_toml() {
  std::string s = "\"";
  s += fs::canonical(source_root / "models" / "demo").string();
  s += '"';
  return s;
}

// The three-node example in `dir`, with free ports and an absolute model path.
fs::path three_node_config(const fs::path& dir) {
  std::string text = slurp(source_root / "config" / "examples" / "three-nodes.toml");
  REQUIRE(text.find("port = 7101") != std::string::npos);
  for (const char* port : {"7101", "7102", "7103", "8100"}) {
    std::string from = "port = ", to = "port = ";
    from += port;
    to += std::to_string(free_port());
    replace_all(text, from, to);
  }
  replace_all(text, "\"../../models/demo\"", demo_model_toml());
  const fs::path file = dir / "three-nodes.toml";
  std::ofstream(file) << text;
  return file;
}

// A child process with stdout and stderr in files of `dir`.
struct process {
  pid_t pid = -1;
  int status = -1;
  fs::path out, err;

  process(const fs::path& dir, std::vector<std::string> argv) : out(dir / "stdout.txt"), err(dir / "stderr.txt") {
    pid = fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a test killed by CTest's timeout leaves no launcher behind
      const int o = ::open(out.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
      const int e = ::open(err.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
      dup2(o, 1);
      dup2(e, 2);
      std::vector<char*> args;
      for (std::string& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
  }
  ~process() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  std::string stdout_text() const { return slurp(out); }
  std::string stderr_text() const { return slurp(err); }
  std::string both() const { return "--- stdout\n" + stdout_text() + "--- stderr\n" + stderr_text(); }

  // Polls until pred(stdout, stderr) holds, the process ends or the time is up.
  bool wait_for(const std::function<bool(const std::string&, const std::string&)>& pred,
                std::chrono::seconds limit = 90s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (pred(stdout_text(), stderr_text())) return true;
      if (pid > 0 && waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return pred(stdout_text(), stderr_text());
      }
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  // The exit code (128 + signal when killed); -1 when it did not end in time.
  int wait_exit(std::chrono::seconds limit = 30s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (pid > 0 && std::chrono::steady_clock::now() < end) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    if (pid > 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

bool has_all(const std::string& text, const std::vector<std::string>& parts) {
  for (const std::string& p : parts)
    if (text.find(p) == std::string::npos) return false;
  return true;
}

// Every "[x] ready: node x: links ... up to <both others>" line is there.
bool three_ready(const std::string& out, const std::string&) {
  return has_all(out, {"[a] ready: node a: links on", "up to b, c; gateway http://127.0.0.1:", "[b] ready: node b: links on",
                       "up to a, c; no gateway or instance here", "[c] ready: node c: links on",
                       "up to a, b; instance demo-0 on cpu"});
}

// node -> pid, from launch's "node N started (pid P)" lines.
std::map<std::string, pid_t> child_pids(const std::string& err) {
  std::map<std::string, pid_t> out;
  const std::regex re("launch: node (\\w+) started \\(pid (\\d+)\\)");
  for (auto it = std::sregex_iterator(err.begin(), err.end(), re); it != std::sregex_iterator(); ++it)
    out[(*it)[1]] = static_cast<pid_t>(std::stol((*it)[2]));
  return out;
}

bool gone(pid_t pid) { return ::kill(pid, 0) == -1 && errno == ESRCH; }

std::vector<std::string> launch_argv(const fs::path& config) {
  return {TROUPE_BINARY, "launch", "--config", config.string()};
}

// Under CTest (one case per process, selected by --test-case) a skip is exit
// 77; in a plain run of the whole binary it is a message and a return.
bool selected_alone() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  const std::string cmdline{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  return cmdline.find("--test-case=") != std::string::npos || cmdline.find("-tc=") != std::string::npos;
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

TEST_CASE("launch: the three-node example comes up linked with prefixed output and SIGINT stops every node") {
  const scratch dir("sigint");
  process p(dir, launch_argv(three_node_config(dir)));
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
  const scratch dir("kill");
  process p(dir, launch_argv(three_node_config(dir)));
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
  const scratch dir("one");
  std::string text = slurp(source_root / "config" / "examples" / "one-node.toml");
  replace_all(text, "port = 8000", "port = 0");
  replace_all(text, "\"../../models/demo\"", demo_model_toml());
  std::ofstream(dir / "one.toml") << text;
  process p(dir, {TROUPE_BINARY, "node", "--config", (dir / "one.toml").string(), "--name", "local"});
  REQUIRE_MESSAGE(p.wait_for([](const std::string& out, const std::string&) {
    return out.find("ready: node local: one-node cluster (no links); gateway http://127.0.0.1:") != std::string::npos &&
           out.find("instance mixed-0 on cpu; instance mixed-1 on cpu\n") != std::string::npos;
  }), p.both());
  // The gateway answers /health 200 (both instances ready).
  const std::string out = p.stdout_text();
  const size_t at = out.find("gateway http://127.0.0.1:") + std::strlen("gateway http://127.0.0.1:");
  const int port = std::stoi(out.substr(at));
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  const std::string req = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  REQUIRE(::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size()));
  std::string reply;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) reply.append(buf, static_cast<size_t>(n));
  ::close(fd);
  CHECK_MESSAGE(reply.rfind("HTTP/1.1 200", 0) == 0, reply);
  REQUIRE(::kill(p.pid, SIGTERM) == 0);
  CHECK(p.wait_exit() == 0);
  CHECK(p.stderr_text().find("node local: stopped") != std::string::npos);
}

TEST_CASE("node and launch: an unknown node or a bad config is refused naming file, line and key") {
  const scratch dir("bad");
  const fs::path good = three_node_config(dir);
  {
    process p(dir, {TROUPE_BINARY, "node", "--config", good.string(), "--name", "d"});
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
    process p(dir, {TROUPE_BINARY, "node", "--config", bad.string(), "--name", "a"});
    CHECK(p.wait_exit() == 1);
    CHECK(first_line(p.stderr_text()) == expected);
  }
  {
    process p(dir, {TROUPE_BINARY, "launch", "--config", bad.string()});
    CHECK(p.wait_exit() == 1);
    CHECK(first_line(p.stderr_text()) == expected);  // refused before any node starts
    CHECK(p.stderr_text().find("started") == std::string::npos);
  }
  {
    process p(dir, {TROUPE_BINARY, "launch", "--config", good.string(), "--list"});
    CHECK(p.wait_exit() == 0);
    CHECK(std::regex_match(p.stdout_text(), std::regex("a 127\\.0\\.0\\.1 \\d+\nb 127\\.0\\.0\\.1 \\d+\nc 127\\.0\\.0\\.1 \\d+\n")));
  }
  {  // UCX would refuse every link to a listener on an address no interface has: refused at start
    std::string other = slurp(good);
    const size_t second = other.find("address = \"127.0.0.1\"", other.find("name = \"b\""));
    other.replace(second, std::strlen("address = \"127.0.0.1\""), "address = \"127.0.0.2\"");
    const fs::path file = dir / "secondary.toml";
    std::ofstream(file) << other;
    if (sh_ok("ip -4 -o addr | grep -q ' 127\\.0\\.0\\.2/'")) {
      MESSAGE("skipped the 127.0.0.2 case: an interface here has that address");
    } else {
      process p(dir, {TROUPE_BINARY, "node", "--config", file.string(), "--name", "b"});
      CHECK(p.wait_exit() == 1);
      CHECK(first_line(p.stderr_text()) ==
            "troupe: error: " + file.string() +
                ": node 'b' cannot accept links on 127.0.0.2: 127.0.0.2 is the address of no network interface here; "
                "UCX 1.13 accepts links only on an interface's primary address (on one host: every node on 127.0.0.1 "
                "with its own port, or one network namespace per node with deploy/netns.sh)");
    }
  }
}

TEST_CASE("netns.sh: the nodes run in network namespaces over a bridge and are cleaned up on SIGTERM") {
  if (::geteuid() != 0 || !sh_ok(netns_probe)) {
    MESSAGE("skipped: deploy/netns.sh needs root and `ip netns`");
    if (selected_alone()) std::exit(77);
    return;
  }
  const scratch dir("netns");
  std::string text = slurp(source_root / "config" / "examples" / "three-nodes-netns.toml");
  replace_all(text, "\"../../models/demo\"", demo_model_toml());
  const fs::path config = dir / "netns.toml";
  std::ofstream(config) << text;
  process p(dir, {"bash", (source_root / "deploy" / "netns.sh").string(), "--config", config.string(), "--troupe",
                  TROUPE_BINARY});
  const std::string tag = std::to_string(p.pid);
  REQUIRE_MESSAGE(p.wait_for([](const std::string& out, const std::string&) {
    return has_all(out, {"[a] ready: node a: links on 10.77.0.1:7101 up to b, c", "[b] ready: node b: links on 10.77.0.2:7101 up to a, c",
                         "[c] ready: node c: links on 10.77.0.3:7101 up to a, b; instance demo-0 on cpu"});
  }), p.both());
  std::map<std::string, pid_t> pids;
  const std::string err = p.stderr_text();
  const std::regex re("netns.sh: node (\\w+) \\(pid (\\d+)\\) in netns troupe-" + tag + "-\\w+");
  for (auto it = std::sregex_iterator(err.begin(), err.end(), re); it != std::sregex_iterator(); ++it)
    pids[(*it)[1]] = static_cast<pid_t>(std::stol((*it)[2]));
  REQUIRE(pids.size() == 3);
  REQUIRE(::kill(p.pid, SIGTERM) == 0);
  CHECK(p.wait_exit() == 0);
  for (const auto& [name, pid] : pids) CHECK_MESSAGE(gone(pid), "node " << name << " outlived netns.sh");
  CHECK_FALSE(sh_ok("ip netns list | grep -q troupe-" + tag + "-"));
  CHECK_FALSE(sh_ok("ip link show trbr" + tag));
  CHECK(p.stderr_text().find("[c] ") != std::string::npos);
}

TEST_CASE("deploy: the Slurm script writes a valid config from the allocation and starts one node per Slurm node") {
  const scratch dir("slurm");
  fs::create_directories(dir / "bin");
  fs::create_directories(dir / "submit");
  std::ofstream(dir / "bin" / "scontrol") << "#!/bin/sh\n[ \"$1 $2 $3\" = 'show hostnames gpu[1-3]' ] && printf 'gpu1\\ngpu2\\ngpu3\\n'\n";
  std::ofstream(dir / "bin" / "srun") << "#!/bin/sh\necho \"srun $*\"\n";
  fs::permissions(dir / "bin" / "scontrol", fs::perms::owner_all);
  fs::permissions(dir / "bin" / "srun", fs::perms::owner_all);
  const std::string path = "PATH=" + (dir / "bin").string() + ":" + std::getenv("PATH");
  process p(dir, {"env", path, "SLURM_JOB_ID=42", "SLURM_JOB_NODELIST=gpu[1-3]", "SLURM_SUBMIT_DIR=" + (dir / "submit").string(),
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
  process list(dir, {TROUPE_BINARY, "launch", "--config", config.string(), "--list"});
  CHECK(list.wait_exit() == 0);
  CHECK(list.stdout_text() == "gpu1 gpu1 7100\ngpu2 gpu2 7100\ngpu3 gpu3 7100\n");
  const std::string text = slurp(config);
  CHECK(has_all(text, {"[gateway]\nnode = \"gpu1\"\nhost = \"0.0.0.0\"\nport = 8000\n", "name = \"gpu3-0\"",
                       "node = \"gpu3\"\ndevice = \"cpu\"\n", "bind = \"0.0.0.0\""}));
}

TEST_CASE("deploy: the Kubernetes ConfigMap holds a valid cluster.toml whose nodes are the StatefulSets' pods") {
  const scratch dir("k8s");
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
  process list(dir, {TROUPE_BINARY, "launch", "--config", (dir / "cluster.toml").string(), "--list"});
  REQUIRE_MESSAGE(list.wait_exit() == 0, list.both());
  CHECK(list.stdout_text() == "troupe-gateway-0 troupe-gateway-0.troupe 7100\ntroupe-worker-0 troupe-worker-0.troupe 7100\n"
                              "troupe-worker-1 troupe-worker-1.troupe 7100\n");
  const std::string sets = slurp(source_root / "deploy" / "k8s" / "statefulset.yaml");
  CHECK(std::regex_search(sets, std::regex("name: troupe-gateway\\n[^]*?replicas: 1\\n")));
  CHECK(std::regex_search(sets, std::regex("name: troupe-worker\\n[^]*?replicas: 2\\n")));
  CHECK(sets.find("\"--name\", \"$(POD_NAME)\"") != std::string::npos);
}
