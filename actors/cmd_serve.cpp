// `troupe serve`: one node, its instances (chunk_scheduler + pipeline_stage
// under a supervisor each) behind a router, an admin and the OpenAI-compatible
// gateway. Without --config it serves one instance of --model (the demo model
// by default); with --config it serves every instance of a one-node
// cluster.toml. The gateway listens before the weights load (/health answers
// 503 "starting"); "listening on URL" is printed once every instance is ready.
// SIGINT/SIGTERM drain: /health turns 503, in-flight responses get a grace
// period, then the actor system shuts down.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <memory>
#include <thread>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/admin.hpp"
#include "actors/commands.hpp"
#include "actors/system_config.hpp"
#include "actors/errors.hpp"
#include "actors/gateway.hpp"
#include "actors/instance.hpp"
#include "actors/messages.hpp"
#include "actors/node_plan.hpp"
#include "actors/router.hpp"
#include "config/cluster_config.hpp"
#include "config/errors.hpp"
#include "config/tunables.hpp"
#include "model/engine.hpp"
#include "model/tokenizer.hpp"

namespace troupe {

namespace {

struct serve_opts {
  gateway_options gw;
  std::string api_key, model_dir = default_model_dir().string(), device = "auto", chat_template, config;
  engine_tunables tun;
  size_t max_body_mib = 8;
};

// The backend a device spec runs on ("cpu" or "cuda:N"; "auto" = cuda:0 where
// this build has CUDA and a GPU is visible). A CUDA device this build or
// machine cannot serve is refused before anything starts.
std::string resolve_device(const std::string& spec, const std::string& who) {
  try {
    return engine_resolve_device(spec);
  } catch (const error& e) {
    throw error(e.code(), who + ": " + e.what());
  }
}

// What to serve: instances and the gateway, from the flags or a cluster.toml.
struct serve_plan {
  std::vector<instance_options> instances;
  gateway_options gw;
};

serve_plan plan_from_flags(serve_opts& o) {
  serve_plan p;
  const std::string device = resolve_device(o.device, "--device");
  instance_options io;
  io.device = device;
  io.name = "instance-0";
  io.model_dir = o.model_dir;
  io.tunables = o.tun;
  p.instances.push_back(std::move(io));
  p.gw = o.gw;
  p.gw.model_dir = o.model_dir;
  p.gw.chat_template_file = o.chat_template;
  p.gw.max_body_bytes = o.max_body_mib << 20;
  if (!o.api_key.empty()) p.gw.api_keys = {o.api_key};
  return p;
}

serve_plan plan_from_config(const serve_opts& o, CLI::App* cmd) {
  for (const char* flag : {"--model", "--device", "--chat-template", "--served-model-name", "--max-body-mib",
                           "--http-threads", "--max-queue"})
    if (cmd->count(flag) != 0)
      throw error(errc::errc_invalid_argument, std::string(flag) + " conflicts with --config: set it in " + o.config);
  for (const tunable* t : engine_tunables{}.all())
    if (cmd->count(std::string("--") + t->name) != 0)
      throw error(errc::errc_invalid_argument, std::string("--") + t->name + " conflicts with --config: set it in " +
                                                   o.config + " under [instances.tunables]");
  const cluster_config c = cluster_config_load(o.config);
  const std::string where = o.config + ": ";
  if (c.nodes.size() != 1)
    throw error(errc::errc_invalid_config, where + "troupe serve runs a one-node cluster; this one has " +
                                               std::to_string(c.nodes.size()) + " nodes");
  serve_plan p;
  p.gw = node_plan_gateway(c);  // refuses instances of different models or templates
  for (const instance_config& ic : c.instances) {
    if (ic.role != "mixed")
      throw error(errc::errc_invalid_config, where + "instance '" + ic.name + "': role '" + ic.role +
                                                 "' needs the disaggregated runtime; troupe serve runs mixed instances");
    if (ic.stages.size() != 1)
      throw error(errc::errc_invalid_config, where + "instance '" + ic.name + "' has " +
                                                 std::to_string(ic.stages.size()) +
                                                 " stages; troupe serve runs one stage per instance");
    const std::string device = resolve_device(ic.stages[0].device, where + "instance '" + ic.name + "'");
    instance_options io;
    io.device = device;
    io.name = ic.name;
    io.model_dir = ic.model;
    io.tunables = ic.tunables;
    p.instances.push_back(std::move(io));
  }
  if (cmd->count("--host")) p.gw.host = o.gw.host;
  if (cmd->count("--port")) p.gw.port = o.gw.port;
  if (cmd->count("--api-key")) p.gw.api_keys = {o.api_key};
  if (cmd->count("--admin-key")) p.gw.admin_key = o.gw.admin_key;
  return p;
}

int run_serve(serve_plan plan) {
  // Block the stop signals in every thread; the main thread waits for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // Everything that can be checked without loading weights is checked first.
  const tokenizer tok = tokenizer::load(plan.gw.model_dir);
  int64_t max_model_len = 0;
  for (instance_options& io : plan.instances) {
    io.extra_eos_token_ids = tok.eos_ids();
    const instance_plan ip = instance_plan_make(io);
    max_model_len = max_model_len == 0 ? ip.max_model_len : std::min(max_model_len, ip.max_model_len);
  }
  plan.gw.max_model_len = max_model_len;

  caf::actor_system_config cfg;
  configure_actor_system(cfg);
  caf::actor_system sys{cfg};
  const router_actor router = router_spawn(sys);
  const admin_actor admin = admin_spawn(sys, router);
  for (const instance_options& io : plan.instances) caf::anon_send(router, join_atom::value, instance_join{io.name, "mixed", {}, ""});
  gateway gw(sys, router, admin, plan.gw);
  spdlog::info("troupe serve: gateway on http://{}:{}; loading {} instance(s) of {}", plan.gw.host, gw.port(),
               plan.instances.size(), plan.gw.model_dir.string());

  std::vector<supervisor_actor> running;
  auto stop_all = [&] {
    gw.set_accepting(false);
    gw.stop();
    for (const supervisor_actor& s : running) caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
    // The actor system's destructor waits for every actor: stop the long-lived ones.
    caf::anon_send_exit(admin, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(router, caf::exit_reason::user_shutdown);
  };
  for (const instance_options& io : plan.instances) {
    try {
      running.push_back(instance_spawn(sys, io));
    } catch (const std::exception& e) {
      caf::anon_send(router, join_atom::value, instance_join{io.name, "mixed", {}, e.what()});
      stop_all();
      throw;
    }
    caf::anon_send(router, join_atom::value, instance_join{io.name, "mixed", running.back(), ""});
  }
  // Ready once the router has seen every instance answer.
  for (int tries = 0;; ++tries) {
    caf::scoped_actor self{sys};
    std::string status;
    self->request(router, std::chrono::seconds(30), state_atom::value)
        .receive(
            [&](const cluster_state& cs) {
              status = "ready";
              for (const instance_state& s : cs.instances)
                if (s.status != "ready") status = s.name + " is " + s.status;
            },
            [&](const caf::error& e) { status = sys.render(e); });
    if (status == "ready") break;
    if (tries == 300) {
      stop_all();
      throw error(errc::errc_io, "the instances did not become ready: " + status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::string devices;
  for (const instance_options& io : plan.instances) devices += (devices.empty() ? "" : ", ") + io.name + " on " + io.device;
  spdlog::info("troupe serve: model {} ({}), max_model_len {}, {}, listening on http://{}:{}",
               plan.gw.model_name.empty() ? plan.gw.model_dir.filename().string() : plan.gw.model_name,
               plan.gw.model_dir.string(), max_model_len, devices, plan.gw.host, gw.port());
  std::fprintf(stdout, "listening on http://%s:%u\n", plan.gw.host.c_str(), static_cast<unsigned>(gw.port()));
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("troupe serve: signal {}, draining", sig);
  stop_all();
  return 0;
}

}  // namespace

command command_serve(CLI::App& app) {
  auto o = std::make_shared<serve_opts>();
  CLI::App* cmd = app.add_subcommand("serve", "serve a model through an OpenAI-compatible HTTP API");
  cmd->add_option("--config", o->config, "a one-node cluster.toml (instances, gateway); see config/examples/");
  cmd->add_option("--model", o->model_dir, "checkpoint directory")->capture_default_str();
  cmd->add_option("--host", o->gw.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o->gw.port, "port to listen on (0: any free port, printed at start)")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu, cuda[:N] or auto")->capture_default_str();
  cmd->add_option("--served-model-name", o->gw.model_name, "model id clients use (default: the folder name)");
  cmd->add_option("--chat-template", o->chat_template, "a Jinja file overriding the checkpoint's chat template");
  cmd->add_option("--api-key", o->api_key, "require 'Authorization: Bearer KEY' on /v1 and /tokenize");
  cmd->add_option("--admin-key", o->gw.admin_key, "enable /admin/* behind 'Authorization: Bearer KEY'");
  cmd->add_option("--max-body-mib", o->max_body_mib, "largest request body accepted (413 above)")->capture_default_str();
  cmd->add_option("--http-threads", o->gw.http_threads, "HTTP I/O threads")->capture_default_str();
  cmd->add_option("--max-queue", o->gw.max_queue, "requests in flight before 503")->capture_default_str();
  for (tunable* v : o->tun.all()) cmd->add_option(std::string("--") + v->name, v->value, v->doc)->capture_default_str();
  return {cmd, [o, cmd] {
            if (std::string bad = tunables_validate(o->tun); !bad.empty()) throw error(errc::errc_invalid_argument, bad);
            return run_serve(o->config.empty() ? plan_from_flags(*o) : plan_from_config(*o, cmd));
          }};
}

}  // namespace troupe
