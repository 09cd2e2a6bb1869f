// `troupe serve`: one node, one instance (chunk_scheduler + pipeline_stage
// under a supervisor) behind the OpenAI-compatible gateway. SIGINT/SIGTERM
// drain: /health turns 503, the HTTP server lets in-flight responses finish
// for a grace period, then the actor system shuts down.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <memory>

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include "actors/chunk_scheduler.hpp"
#include "actors/commands.hpp"
#include "actors/errors.hpp"
#include "actors/gateway.hpp"
#include "actors/instance.hpp"
#include "actors/messages.hpp"
#include "config/errors.hpp"
#include "config/tunables.hpp"
#include "kernels/device.hpp"
#include "model/generation_config.hpp"
#include "model/tokenizer.hpp"

namespace troupe {

command command_serve(CLI::App& app) {
  struct opts {
    gateway_options gw;
    std::string model_dir = default_model_dir().string(), device = "auto", chat_template;
    engine_tunables tun;
    size_t max_body_mib = 8;
  };
  auto o = std::make_shared<opts>();
  CLI::App* cmd = app.add_subcommand("serve", "serve a model through an OpenAI-compatible HTTP API");
  cmd->add_option("--model", o->model_dir, "checkpoint directory")->capture_default_str();
  cmd->add_option("--host", o->gw.host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o->gw.port, "port to listen on (0: any free port, printed at start)")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu, cuda or auto")->capture_default_str()->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--served-model-name", o->gw.model_name, "model id clients use (default: the folder name)");
  cmd->add_option("--chat-template", o->chat_template, "a Jinja file overriding the checkpoint's chat template");
  cmd->add_option("--api-key", o->gw.api_key, "require 'Authorization: Bearer KEY' on /v1 and /tokenize");
  cmd->add_option("--admin-key", o->gw.admin_key, "enable /admin/* behind 'Authorization: Bearer KEY'");
  cmd->add_option("--max-body-mib", o->max_body_mib, "largest request body accepted (413 above)")->capture_default_str();
  cmd->add_option("--http-threads", o->gw.http_threads, "HTTP I/O threads")->capture_default_str();
  cmd->add_option("--max-queue", o->gw.max_queue, "requests in flight before 503")->capture_default_str();
  for (tunable* v : o->tun.all()) cmd->add_option(std::string("--") + v->name, v->value, v->doc)->capture_default_str();
  return {cmd, [o] {
            if (std::string bad = tunables_validate(o->tun); !bad.empty()) throw error(errc::errc_invalid_argument, bad);
            if (o->device == "cuda")
              throw error(errc::errc_unsupported, "--device cuda: the CUDA model backend is not built yet; use --device cpu");
            // Block the stop signals in every thread; the main thread waits for them below.
            sigset_t stop_signals;
            sigemptyset(&stop_signals);
            sigaddset(&stop_signals, SIGINT);
            sigaddset(&stop_signals, SIGTERM);
            pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

            caf::actor_system_config cfg;
            messages_register(cfg);
            register_troupe_errors(cfg);
            caf::actor_system sys{cfg};
            instance_options io;
            io.name = "instance-0";
            io.model_dir = o->model_dir;
            io.tunables = o->tun;
            const tokenizer tok = tokenizer::load(o->model_dir);
            io.extra_eos_token_ids = tok.eos_ids();
            chunk_scheduler_actor inst = instance_spawn(sys, io);
            instance_state st;
            {
              caf::scoped_actor self{sys};
              self->request(inst, std::chrono::seconds(30), state_atom::value)
                  .receive([&](const instance_state& s) { st = s; },
                           [&](const caf::error& e) {
                             throw error(errc::errc_io, "the instance did not start: " + sys.render(e));
                           });
            }
            o->gw.model_dir = o->model_dir;
            o->gw.chat_template_file = o->chat_template;
            o->gw.max_model_len = st.max_model_len;
            o->gw.max_body_bytes = o->max_body_mib << 20;
            gateway gw(sys, inst, o->gw);
            gw.set_ready(true);
            spdlog::info("troupe serve: model {} ({}), max_model_len {}, cpu backend, listening on http://{}:{}",
                         o->gw.model_name.empty() ? o->model_dir : o->gw.model_name, o->model_dir, st.max_model_len,
                         o->gw.host, gw.port());
            std::fprintf(stdout, "listening on http://%s:%u\n", o->gw.host.c_str(), static_cast<unsigned>(gw.port()));
            std::fflush(stdout);
            int sig = 0;
            sigwait(&stop_signals, &sig);
            spdlog::info("troupe serve: signal {}, draining", sig);
            gw.set_ready(false);
            gw.stop();
            caf::anon_send_exit(inst, caf::exit_reason::user_shutdown);
            return 0;
          }};
}

}  // namespace troupe
