// cluster.toml: the one file that describes a troupe deployment — its nodes,
// the gateway, the serving instances with their pipeline stages, and the
// cluster secret and the settings of the links between nodes. `troupe serve
// --config` runs a one-node cluster; `troupe node --name N` runs node N of
// any cluster and `troupe launch` every node on one host. Parsing is strict:
// an unknown key, a wrong type, an out-of-range value or a reference to a
// node that is not declared is an error naming file, line and key (a typo
// silently ignored is a misconfigured production cluster). Everything that
// can be checked without the network or the model files is checked here, so
// that a node refuses a bad file before it binds a port.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "config/tunables.hpp"

namespace troupe {

/// One node process of the cluster.
struct node_config {
  std::string name;                   ///< 1..64 of [A-Za-z0-9._-], unique
  std::string address = "127.0.0.1";  ///< where the other nodes reach its control-plane listener
  std::string bind;                   ///< where that listener binds ("" = address; e.g. "0.0.0.0" when
                                      ///< address is a DNS name)
  uint16_t port = 0;                  ///< listener port; 0 (any free port) only in a one-node cluster
  std::vector<std::string> devices;   ///< "cpu", "cuda:0", ... (empty: whatever the node has)

  /// The address the listener binds: bind, or address when bind is empty.
  const std::string& listen_host() const { return bind.empty() ? address : bind; }
};

/// One pipeline stage of an instance.
struct stage_config {
  std::string node;             ///< the node that runs it
  std::string device = "auto";  ///< "auto", "cpu", "cuda" or "cuda:N"
};

/// One serving instance: a chunk scheduler and its stages.
struct instance_config {
  std::string name;
  std::string role = "mixed";             ///< "mixed", "prefill" or "decode"
  std::filesystem::path model;            ///< checkpoint folder (relative paths: to the config file's folder)
  std::filesystem::path chat_template;    ///< optional Jinja file overriding the checkpoint's template
  engine_tunables tunables;               ///< [instances.tunables], keys spelled as the command-line options
  std::vector<stage_config> stages;       ///< at least one
};

/// The OpenAI-compatible gateway.
struct gateway_config {
  std::string node;                       ///< the node that runs it
  std::string host = "127.0.0.1";
  uint16_t port = 8000;
  std::vector<std::string> api_keys;      ///< any of them is accepted on /v1 (none: no authentication)
  std::string admin_key;                  ///< "" = /admin disabled
  std::string served_model_name;          ///< "" = the model folder's name
  int64_t max_queue = 4096;               ///< requests in flight before 503
  int64_t max_body_mib = 8;               ///< largest request body (413 above)
  int64_t http_threads = 2;
};

/// A whole cluster.
struct cluster_config {
  std::filesystem::path file;             ///< where it was read from ("" for text)
  std::string secret;                     ///< authenticates node links; required with more than one node
                                          ///< (from `secret`, or read from `secret_file`)
  std::vector<node_config> nodes;         ///< in file order: each node connects to the nodes before it
  link_tunables links;                    ///< [links]: heartbeats, handshake and reconnection
  gateway_config gateway;
  std::vector<instance_config> instances;
};

/// The node called `name`; throws troupe::error(errc_invalid_config) naming
/// the config file, the unknown name and the nodes it declares.
const node_config& cluster_config_node(const cluster_config& c, const std::string& name);

/// Reads and validates a cluster.toml. Throws troupe::error: errc_io when the
/// file cannot be read, errc_invalid_config with "FILE:LINE:COL: key: what"
/// for everything else.
cluster_config cluster_config_load(const std::filesystem::path& file);

/// Same, from TOML text; `origin` names the source in messages and relative
/// paths are taken from `base_dir`.
cluster_config cluster_config_parse(const std::string& text, const std::string& origin,
                                    const std::filesystem::path& base_dir);

}  // namespace troupe
