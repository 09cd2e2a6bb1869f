// The subcommands of the troupe command. Each registers its options on the
// CLI11 app and returns the function that runs it once the command line is
// parsed; main() picks the one the user chose. Errors are thrown as
// troupe::error and reported by main().
#pragma once

#include <filesystem>
#include <functional>
#include <utility>

namespace CLI {
class App;
}

namespace troupe {

/// A registered subcommand and what runs it (returning the exit code).
using command = std::pair<CLI::App*, std::function<int()>>;

/// `troupe generate`: continue a prompt (ids or text).
command command_generate(CLI::App& app);
/// `troupe logits`: float32 logits of every prompt position.
command command_logits(CLI::App& app);
/// `troupe tokenize`: text (or chat conversations) to ids (or prompts), line by line.
command command_tokenize(CLI::App& app);
/// `troupe detokenize`: ids to text, line by line.
command command_detokenize(CLI::App& app);
/// `troupe serve`: the OpenAI-compatible server over one instance.
command command_serve(CLI::App& app);
/// `troupe devices`: the CPU and CUDA devices.
command command_devices(CLI::App& app);
/// `troupe node`: one node of a cluster config (its links, gateway and instances).
command command_node(CLI::App& app);
/// `troupe launch`: every node of a cluster config on this host, as child processes.
command command_launch(CLI::App& app);

/// The embedded demo model: models/demo next to the executable's source
/// tree (build/troupe -> models/demo) or of the source checkout it was built from.
std::filesystem::path default_model_dir();

}  // namespace troupe
