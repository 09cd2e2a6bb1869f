// `troupe node --config FILE --name NODE`: one node of a cluster, as one
// process (node_runtime.hpp says what runs). The config is read and checked
// in full before anything binds a port. The stop signals are blocked in every
// thread before the runtime starts any, and the main thread waits for them:
// first with a short timeout while it polls readiness, so it can print the
// one "ready" line, then without. SIGINT or SIGTERM stop the node cleanly
// (exit 0); an error at start-up is one line on stderr and exit 1.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include "actors/chunk_scheduler.hpp"
#include "actors/commands.hpp"
#include "actors/node_runtime.hpp"
#include "config/cluster_config.hpp"

namespace troupe {

namespace {

struct node_opts {
  std::string config;
  std::string name;
};

int run_node(const node_opts& o) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  node_runtime rt(cluster_config_load(o.config), o.name);
  rt.start();
  int sig = 0;
  for (;;) {
    const timespec poll_every{0, 50'000'000};
    sig = sigtimedwait(&stop_signals, nullptr, &poll_every);
    if (sig > 0) break;
    if (rt.ready()) {
      std::fprintf(stdout, "ready: %s\n", rt.describe().c_str());
      std::fflush(stdout);
      sigwait(&stop_signals, &sig);
      break;
    }
  }
  actors_log()->info("node {}: signal {}, stopping", o.name, sig);
  rt.stop();
  actors_log()->info("node {}: stopped", o.name);
  return 0;
}

}  // namespace

command command_node(CLI::App& app) {
  auto o = std::make_shared<node_opts>();
  CLI::App* cmd = app.add_subcommand("node", "run one node of a cluster config (gateway, instances, node links)");
  cmd->add_option("--config", o->config, "the cluster.toml; see config/examples/")->required();
  cmd->add_option("--name", o->name, "which of its [[nodes]] this process is")->required();
  return {cmd, [o] { return run_node(*o); }};
}

}  // namespace troupe
