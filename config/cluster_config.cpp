// Strict TOML reading with toml++: every table is checked for unknown keys,
// every value for its type and range, and every error carries the source
// position toml++ recorded for the offending node. Checks that span tables
// (node references, clashing addresses and ports, the secret a multi-node
// cluster needs) run once all nodes are read and point at the key whose
// value is at fault.
#include "config/cluster_config.hpp"

#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "config/errors.hpp"

namespace troupe {

namespace {

class reader {
 public:
  explicit reader(std::string origin) : origin_(std::move(origin)) {}

  [[noreturn]] void fail(const toml::source_region& where, const std::string& key, const std::string& what) const {
    std::string pos = origin_;
    if (where.begin.line > 0) pos += ":" + std::to_string(where.begin.line) + ":" + std::to_string(where.begin.column);
    throw error(errc::errc_invalid_config, pos + ": " + key + ": " + what);
  }

  // Every key of `t` must be one of `allowed`.
  void only(const toml::table& t, const std::string& where, std::initializer_list<const char*> allowed) const {
    for (const auto& [k, v] : t) {
      bool ok = false;
      for (const char* a : allowed) ok |= k.str() == a;
      if (!ok) fail(v.source(), where + std::string(k.str()), "unknown key");
    }
  }

  std::string str(const toml::table& t, const std::string& path, const char* key, std::string def,
                  bool required = false) const {
    const toml::node* n = t.get(key);
    if (n == nullptr) {
      if (required) fail(t.source(), path + key, "missing (a string is required)");
      return def;
    }
    if (!n->is_string()) fail(n->source(), path + key, "must be a string");
    return n->as_string()->get();
  }

  int64_t integer(const toml::table& t, const std::string& path, const char* key, int64_t def, int64_t lo,
                  int64_t hi) const {
    const toml::node* n = t.get(key);
    if (n == nullptr) return def;
    if (!n->is_integer()) fail(n->source(), path + key, "must be an integer");
    const int64_t v = n->as_integer()->get();
    if (v < lo || v > hi)
      fail(n->source(), path + key,
           "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(v));
    return v;
  }

  std::vector<std::string> strings(const toml::table& t, const std::string& path, const char* key) const {
    std::vector<std::string> out;
    const toml::node* n = t.get(key);
    if (n == nullptr) return out;
    if (!n->is_array()) fail(n->source(), path + key, "must be an array of strings");
    for (const toml::node& e : *n->as_array()) {
      if (!e.is_string()) fail(e.source(), path + key, "must be an array of strings");
      out.push_back(e.as_string()->get());
    }
    return out;
  }

  // The array of tables `key` ([[key]]), possibly absent.
  const toml::array* tables(const toml::table& t, const std::string& path, const char* key) const {
    const toml::node* n = t.get(key);
    if (n == nullptr) return nullptr;
    if (!n->is_array_of_tables()) fail(n->source(), path + key, "must be an array of tables ([[" + path + key + "]])");
    return n->as_array();
  }

  const toml::table* table(const toml::table& t, const std::string& path, const char* key) const {
    const toml::node* n = t.get(key);
    if (n == nullptr) return nullptr;
    if (!n->is_table()) fail(n->source(), path + key, "must be a table");
    return n->as_table();
  }

 private:
  std::string origin_;
};

bool device_ok(const std::string& d) {
  if (d == "auto" || d == "cpu" || d == "cuda") return true;
  if (d.rfind("cuda:", 0) != 0 || d.size() == 5) return false;
  for (size_t i = 5; i < d.size(); ++i)
    if (d[i] < '0' || d[i] > '9') return false;
  return d.size() <= 8;
}

// Node names appear on command lines, in log prefixes, systemd instance
// names, namespace and pod names: keep them to a portable alphabet.
bool node_name_ok(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  for (const char ch : n)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_' && ch != '.') return false;
  return true;
}

bool wildcard_host(const std::string& h) { return h == "0.0.0.0" || h == "::" || h == "*" || h == "[::]"; }

// Whether a stage on `device` fits a node that declares `devices` (none: anything).
bool device_declared(const std::vector<std::string>& devices, const std::string& device) {
  if (devices.empty() || device == "auto") return true;
  for (const std::string& d : devices) {
    if (d == device) return true;
    if (device == "cuda" && d.rfind("cuda", 0) == 0) return true;
    if (d == "cuda" && device.rfind("cuda:", 0) == 0) return true;
  }
  return false;
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& x : v) out += (out.empty() ? "" : ", ") + x;
  return out;
}

std::filesystem::path resolve(const std::filesystem::path& base, const std::string& p) {
  if (p.empty()) return {};
  const std::filesystem::path x(p);
  return x.is_absolute() ? x : base / x;
}

void read_tunables(const reader& r, const toml::table& t, const std::string& path, engine_tunables& out) {
  for (const auto& [k, v] : t) {
    tunable* hit = nullptr;
    for (tunable* x : out.all())
      if (k.str() == x->name) hit = x;
    if (hit == nullptr) r.fail(v.source(), path + std::string(k.str()), "unknown tunable");
    hit->value = r.integer(t, path, hit->name, hit->value, hit->min, hit->max);
  }
}

// The secret: inline, or the trimmed contents of a file (a Kubernetes
// Secret or a root-only file next to a config that may be world-readable).
std::string read_secret(const reader& r, const toml::table& root, const std::filesystem::path& base_dir) {
  const toml::node* file_node = root.get("secret_file");
  if (file_node == nullptr) return r.str(root, "", "secret", "");
  if (root.get("secret") != nullptr) r.fail(file_node->source(), "secret_file", "set either secret or secret_file");
  const std::filesystem::path file = resolve(base_dir, r.str(root, "", "secret_file", ""));
  std::ifstream in(file, std::ios::binary);
  if (file.empty() || !in) r.fail(file_node->source(), "secret_file", "cannot read '" + file.string() + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string secret = ss.str();
  while (!secret.empty() && std::isspace(static_cast<unsigned char>(secret.back()))) secret.pop_back();
  if (secret.empty()) r.fail(file_node->source(), "secret_file", "'" + file.string() + "' is empty");
  return secret;
}

void read_links(const reader& r, const toml::table& root, link_tunables& out) {
  const toml::table* t = r.table(root, "", "links");
  if (t == nullptr) return;
  for (const auto& [k, v] : *t) {
    tunable* hit = nullptr;
    for (tunable* x : out.all())
      if (k.str() == x->name) hit = x;
    if (hit == nullptr) r.fail(v.source(), "links." + std::string(k.str()), "unknown key");
    hit->value = r.integer(*t, "links.", hit->name, hit->value, hit->min, hit->max);
  }
  if (out.heartbeat_timeout_ms.value < 2 * out.heartbeat_interval_ms.value) {
    const toml::node* at = t->get(out.heartbeat_timeout_ms.name);
    r.fail(at ? at->source() : t->source(), "links.heartbeat-timeout-ms",
           "must be at least twice heartbeat-interval-ms (" + std::to_string(out.heartbeat_interval_ms.value) +
               "), got " + std::to_string(out.heartbeat_timeout_ms.value));
  }
}

// Checks that only make sense once every node is known: a node others
// connect to needs an address they can reach and a port fixed in advance,
// and no two nodes may claim the same one.
void check_nodes(const reader& r, const std::vector<node_config>& nodes, const std::vector<const toml::table*>& where) {
  const size_t n = nodes.size();
  for (size_t i = 0; i < n; ++i) {
    const node_config& nc = nodes[i];
    const toml::table& t = *where[i];
    auto at = [&](const char* key) { return t.get(key) ? t.get(key)->source() : t.source(); };
    if (n > 1 && nc.port == 0)
      r.fail(at("port"), "nodes.port",
             "node '" + nc.name + "' needs a fixed port: the other nodes of a " + std::to_string(n) +
                 "-node cluster connect to it (0, any free port, only works for a one-node cluster)");
    if (n > 1 && wildcard_host(nc.address))
      r.fail(at("address"), "nodes.address",
             "node '" + nc.name + "': '" + nc.address +
                 "' is where the other nodes connect, so it must name this node (bind = \"" + nc.address +
                 "\" listens on every interface)");
    for (size_t j = 0; j < i; ++j)
      if (nc.port != 0 && nodes[j].port == nc.port && nodes[j].address == nc.address)
        r.fail(at("port"), "nodes.port",
               "node '" + nc.name + "' has the address and port of node '" + nodes[j].name + "' (" + nc.address +
                   ":" + std::to_string(nc.port) + ")");
  }
}

}  // namespace

cluster_config cluster_config_parse(const std::string& text, const std::string& origin,
                                    const std::filesystem::path& base_dir) {
  const reader r(origin);
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    r.fail(e.source(), "(syntax)", std::string(e.description()));
  }
  cluster_config c;
  r.only(root, "", {"secret", "secret_file", "nodes", "gateway", "instances", "links"});
  c.secret = read_secret(r, root, base_dir);
  read_links(r, root, c.links);

  std::set<std::string> node_names;
  std::vector<const toml::table*> node_tables;
  if (const toml::array* nodes = r.tables(root, "", "nodes")) {
    for (const toml::node& n : *nodes) {
      const toml::table& t = *n.as_table();
      r.only(t, "nodes.", {"name", "address", "bind", "port", "devices"});
      node_config nc;
      nc.name = r.str(t, "nodes.", "name", "", true);
      if (!node_name_ok(nc.name))
        r.fail(t.get("name")->source(), "nodes.name",
               "'" + nc.name + "' must be 1 to 64 letters, digits, '-', '_' or '.'");
      if (!node_names.insert(nc.name).second)
        r.fail(t.get("name")->source(), "nodes.name", "duplicate node '" + nc.name + "'");
      nc.address = r.str(t, "nodes.", "address", nc.address);
      if (nc.address.empty()) r.fail(t.get("address")->source(), "nodes.address", "must not be empty");
      nc.bind = r.str(t, "nodes.", "bind", "");
      if (t.get("bind") != nullptr && nc.bind.empty()) r.fail(t.get("bind")->source(), "nodes.bind", "must not be empty");
      nc.port = static_cast<uint16_t>(r.integer(t, "nodes.", "port", 0, 0, 65535));
      nc.devices = r.strings(t, "nodes.", "devices");
      for (const std::string& d : nc.devices)
        if (!device_ok(d) || d == "auto") r.fail(t.get("devices")->source(), "nodes.devices", "unknown device '" + d + "'");
      c.nodes.push_back(std::move(nc));
      node_tables.push_back(&t);
    }
  }
  if (c.nodes.empty()) r.fail(root.source(), "nodes", "at least one [[nodes]] table is required");
  if (c.nodes.size() > 1 && c.secret.empty()) {
    const toml::node* at = root.get("secret");
    r.fail(at ? at->source() : root.source(), "secret",
           "a cluster of " + std::to_string(c.nodes.size()) + " nodes needs a secret (or secret_file)");
  }
  check_nodes(r, c.nodes, node_tables);
  // A reference to a node: required unless there is only one.
  auto node_ref = [&](const toml::table& t, const std::string& path) {
    std::string name = r.str(t, path, "node", c.nodes.size() == 1 ? c.nodes[0].name : "", c.nodes.size() > 1);
    if (node_names.count(name) == 0) {
      std::vector<std::string> declared;
      for (const node_config& nc : c.nodes) declared.push_back(nc.name);
      r.fail(t.get("node")->source(), path + "node", "unknown node '" + name + "' (declared: " + joined(declared) + ")");
    }
    return name;
  };

  toml::table empty;
  const toml::table* g = r.table(root, "", "gateway");
  const toml::table& gt = g ? *g : empty;
  r.only(gt, "gateway.", {"node", "host", "port", "api_keys", "admin_key", "served_model_name", "max_queue",
                          "max_body_mib", "http_threads"});
  gateway_config& gw = c.gateway;
  gw.node = g ? node_ref(gt, "gateway.") : c.nodes[0].name;
  if (!g && c.nodes.size() > 1) r.fail(root.source(), "gateway", "a [gateway] table naming its node is required");
  gw.host = r.str(gt, "gateway.", "host", gw.host);
  gw.port = static_cast<uint16_t>(r.integer(gt, "gateway.", "port", gw.port, 0, 65535));
  gw.api_keys = r.strings(gt, "gateway.", "api_keys");
  for (const std::string& k : gw.api_keys)
    if (k.empty()) r.fail(gt.get("api_keys")->source(), "gateway.api_keys", "an API key must not be empty");
  gw.admin_key = r.str(gt, "gateway.", "admin_key", "");
  gw.served_model_name = r.str(gt, "gateway.", "served_model_name", "");
  gw.max_queue = r.integer(gt, "gateway.", "max_queue", gw.max_queue, 1, 1 << 24);
  gw.max_body_mib = r.integer(gt, "gateway.", "max_body_mib", gw.max_body_mib, 1, 4096);
  gw.http_threads = r.integer(gt, "gateway.", "http_threads", gw.http_threads, 1, 256);
  // The gateway's port must not be a link port on the same address: its own
  // node's (whatever the addresses, when either listens on all of them), or
  // any node's that listens on the gateway's host (one machine, e.g. 127.0.0.1).
  for (const node_config& nc : c.nodes) {
    const bool same_host = gw.host == nc.listen_host() ||
                           (nc.name == gw.node && (wildcard_host(gw.host) || wildcard_host(nc.listen_host())));
    if (gw.port != 0 && gw.port == nc.port && same_host)
      r.fail(gt.get("port") ? gt.get("port")->source() : gt.source(), "gateway.port",
             std::to_string(gw.port) + " is also the link port of node '" + nc.name + "' on " + nc.listen_host());
  }

  std::set<std::string> instance_names;
  if (const toml::array* insts = r.tables(root, "", "instances")) {
    for (const toml::node& n : *insts) {
      const toml::table& t = *n.as_table();
      r.only(t, "instances.", {"name", "role", "model", "chat_template", "tunables", "stages"});
      instance_config ic;
      ic.name = r.str(t, "instances.", "name", "", true);
      if (!instance_names.insert(ic.name).second)
        r.fail(t.source(), "instances.name", "duplicate instance '" + ic.name + "'");
      ic.role = r.str(t, "instances.", "role", ic.role);
      if (ic.role != "mixed" && ic.role != "prefill" && ic.role != "decode")
        r.fail(t.get("role")->source(), "instances.role", "must be mixed, prefill or decode, got '" + ic.role + "'");
      ic.model = resolve(base_dir, r.str(t, "instances.", "model", "", true));
      ic.chat_template = resolve(base_dir, r.str(t, "instances.", "chat_template", ""));
      if (const toml::table* tun = r.table(t, "instances.", "tunables"))
        read_tunables(r, *tun, "instances.tunables.", ic.tunables);
      if (const toml::array* stages = r.tables(t, "instances.", "stages")) {
        for (const toml::node& sn : *stages) {
          const toml::table& st = *sn.as_table();
          r.only(st, "instances.stages.", {"node", "device"});
          stage_config sc;
          sc.node = node_ref(st, "instances.stages.");
          sc.device = r.str(st, "instances.stages.", "device", sc.device);
          if (!device_ok(sc.device))
            r.fail(st.get("device")->source(), "instances.stages.device",
                   "must be auto, cpu, cuda or cuda:N, got '" + sc.device + "'");
          for (const node_config& nc : c.nodes)
            if (nc.name == sc.node && !device_declared(nc.devices, sc.device))
              r.fail(st.get("device")->source(), "instances.stages.device",
                     "'" + sc.device + "' is not one of node '" + nc.name + "''s devices (" + joined(nc.devices) + ")");
          ic.stages.push_back(std::move(sc));
        }
      }
      if (ic.stages.empty()) {
        if (c.nodes.size() > 1) r.fail(t.source(), "instances.stages", "instance '" + ic.name + "' needs [[instances.stages]] naming their nodes");
        ic.stages.push_back({c.nodes[0].name, "auto"});
      }
      c.instances.push_back(std::move(ic));
    }
  }
  if (c.instances.empty()) r.fail(root.source(), "instances", "at least one [[instances]] table is required");
  return c;
}

const node_config& cluster_config_node(const cluster_config& c, const std::string& name) {
  std::vector<std::string> names;
  for (const node_config& n : c.nodes) {
    if (n.name == name) return n;
    names.push_back(n.name);
  }
  const std::string origin = c.file.empty() ? std::string("the cluster config") : c.file.string();
  throw error(errc::errc_invalid_config,
              origin + ": no node '" + name + "' among its [[nodes]]: " + joined(names));
}

cluster_config cluster_config_load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw error(errc::errc_io, "cannot read cluster config " + file.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  cluster_config c = cluster_config_parse(ss.str(), file.string(), file.parent_path());
  c.file = file;
  return c;
}

}  // namespace troupe
