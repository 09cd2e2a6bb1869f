// The troupe command. Each subcommand lives in actors/cmd_*.cpp; errors from
// loading or running end as one line on stderr and exit code 1 (CLI11 usage
// errors: its own codes), never as a crash.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <vector>

#include "actors/bench_serve.hpp"
#include "actors/commands.hpp"
#include "config/errors.hpp"

int main(int argc, char** argv) {
  CLI::App app{"troupe: an actor-model runtime for serving large language models"};
  app.require_subcommand(1);
  const std::vector<troupe::command> commands = {
      troupe::command_serve(app),
      troupe::command_generate(app),
      troupe::command_logits(app),
      troupe::command_tokenize(app),
      troupe::command_detokenize(app),
      troupe::command_bench(app),
      troupe::command_devices(app),
      troupe::command_node(app),
      troupe::command_launch(app),
  };
  CLI11_PARSE(app, argc, argv);
  try {
    for (const troupe::command& c : commands)
      if (*c.first) return c.second();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
