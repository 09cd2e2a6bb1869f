// Strict TOML reading with toml++: every table is checked for unknown keys,
// every value for its type and range, and every error carries the source
// position toml++ recorded for the offending node.
#include "config/cluster_config.hpp"

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
  r.only(root, "", {"secret", "nodes", "gateway", "instances"});
  c.secret = r.str(root, "", "secret", "");

  std::set<std::string> node_names;
  if (const toml::array* nodes = r.tables(root, "", "nodes")) {
    for (const toml::node& n : *nodes) {
      const toml::table& t = *n.as_table();
      r.only(t, "nodes.", {"name", "address", "port", "devices"});
      node_config nc;
      nc.name = r.str(t, "nodes.", "name", "", true);
      if (!node_names.insert(nc.name).second) r.fail(t.source(), "nodes.name", "duplicate node '" + nc.name + "'");
      nc.address = r.str(t, "nodes.", "address", nc.address);
      if (nc.address.empty()) r.fail(t.source(), "nodes.address", "must not be empty");
      nc.port = static_cast<uint16_t>(r.integer(t, "nodes.", "port", 0, 0, 65535));
      nc.devices = r.strings(t, "nodes.", "devices");
      for (const std::string& d : nc.devices)
        if (!device_ok(d) || d == "auto") r.fail(t.get("devices")->source(), "nodes.devices", "unknown device '" + d + "'");
      c.nodes.push_back(std::move(nc));
    }
  }
  if (c.nodes.empty()) r.fail(root.source(), "nodes", "at least one [[nodes]] table is required");
  if (c.nodes.size() > 1 && c.secret.empty())
    r.fail(root.source(), "secret", "a cluster of " + std::to_string(c.nodes.size()) + " nodes needs a secret");
  // A reference to a node: required unless there is only one.
  auto node_ref = [&](const toml::table& t, const std::string& path) {
    std::string name = r.str(t, path, "node", c.nodes.size() == 1 ? c.nodes[0].name : "", c.nodes.size() > 1);
    if (node_names.count(name) == 0) r.fail(t.get("node")->source(), path + "node", "unknown node '" + name + "'");
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
