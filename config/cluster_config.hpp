// cluster.toml: the one file that describes a troupe deployment — its nodes,
// the gateway, the serving instances with their pipeline stages, and the
// cluster secret. `troupe serve --config` runs the single-node subset; the
// node launcher runs the rest. Parsing is strict: an unknown key, a wrong
// type or an out-of-range value is an error naming file, line and key
// (a typo silently ignored is a misconfigured production cluster).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "config/tunables.hpp"

namespace troupe {

/// One node process of the cluster.
struct node_config {
  std::string name;
  std::string address = "127.0.0.1";  ///< where its control-plane listener binds
  uint16_t port = 0;                  ///< 0: any free port
  std::vector<std::string> devices;   ///< "cpu", "cuda:0", ... (empty: whatever the node has)
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
  std::vector<node_config> nodes;
  gateway_config gateway;
  std::vector<instance_config> instances;
};

/// Reads and validates a cluster.toml. Throws troupe::error: errc_io when the
/// file cannot be read, errc_invalid_config with "FILE:LINE:COL: key: what"
/// for everything else.
cluster_config cluster_config_load(const std::filesystem::path& file);

/// Same, from TOML text; `origin` names the source in messages and relative
/// paths are taken from `base_dir`.
cluster_config cluster_config_parse(const std::string& text, const std::string& origin,
                                    const std::filesystem::path& base_dir);

}  // namespace troupe
