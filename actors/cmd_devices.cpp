#include <CLI/CLI.hpp>

#include <cstdio>

#include "actors/commands.hpp"
#include "kernels/device.hpp"

namespace troupe {

command command_devices(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("devices", "list the CPU and the CUDA devices troupe can use");
  return {cmd, [] {
            std::string note;
            const std::vector<device_info> devs = devices_list(&note);
            for (const device_info& d : devs) {
              std::printf("%s:%d  %s  %.1f GiB  %d %s", d.kind.c_str(), d.index, d.name.c_str(),
                          static_cast<double>(d.memory_bytes) / (1u << 30), d.cores,
                          d.kind == "cpu" ? "threads" : "SMs");
              if (d.compute_capability) std::printf("  sm_%d", d.compute_capability);
              std::printf("\n");
            }
            if (devs.size() == 1 && !note.empty()) std::printf("(%s)\n", note.c_str());
            return 0;
          }};
}

}  // namespace troupe
