// What a cluster config asks of the gateway, worked out once for both
// commands that run one: `troupe serve --config` (a one-node cluster) and
// `troupe node` (the node the gateway is placed on). Both must refuse the
// same configs with the same words and build the same gateway, so the rules
// live here and not twice.
#pragma once

#include <cstdint>
#include <string>

#include "actors/gateway.hpp"
#include "config/cluster_config.hpp"

namespace troupe {

/// The gateway's options from [gateway] and the instances' model and chat
/// template (max_model_len stays 0: see node_plan_max_model_len). Throws
/// troupe::error(errc_invalid_config) naming the config file and the instance
/// when the instances do not all serve the same model and template (one
/// gateway serves one model).
gateway_options node_plan_gateway(const cluster_config& cluster);

/// The longest sequence every instance of the cluster serves (the smallest
/// max_model_len), from config.json and the tunables; no weight is read.
/// Throws troupe::error as instance_plan_make does.
int64_t node_plan_max_model_len(const cluster_config& cluster);

/// "FILE: " (or "cluster config: ") to put before a message about `cluster`.
std::string node_plan_where(const cluster_config& cluster);

}  // namespace troupe
