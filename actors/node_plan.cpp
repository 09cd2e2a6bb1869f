// The gateway part of a cluster config (the why is in node_plan.hpp).
#include "actors/node_plan.hpp"

#include <algorithm>

#include "actors/instance.hpp"
#include "config/errors.hpp"

namespace troupe {

std::string node_plan_where(const cluster_config& cluster) {
  return (cluster.file.empty() ? std::string("cluster config") : cluster.file.string()) + ": ";
}

gateway_options node_plan_gateway(const cluster_config& c) {
  const instance_config& first = c.instances.front();
  for (const instance_config& ic : c.instances)
    if (ic.model != first.model || ic.chat_template != first.chat_template)
      throw error(errc::errc_invalid_config, node_plan_where(c) + "instance '" + ic.name +
                                                 "' serves another model or template than '" + first.name +
                                                 "'; one gateway serves one model");
  const gateway_config& g = c.gateway;
  gateway_options go;
  go.host = g.host;
  go.port = g.port;
  go.api_keys = g.api_keys;
  go.admin_key = g.admin_key;
  go.model_name = g.served_model_name;
  go.http_threads = static_cast<int>(g.http_threads);
  go.max_queue = static_cast<int32_t>(g.max_queue);
  go.max_body_bytes = static_cast<size_t>(g.max_body_mib) << 20;
  go.model_dir = first.model;
  go.chat_template_file = first.chat_template;
  return go;
}

int64_t node_plan_max_model_len(const cluster_config& c) {
  int64_t out = 0;
  for (const instance_config& ic : c.instances) {
    instance_options io;
    io.model_dir = ic.model;
    io.tunables = ic.tunables;
    const int64_t len = instance_plan_make(io).max_model_len;
    out = out == 0 ? len : std::min(out, len);
  }
  return out;
}

}  // namespace troupe
