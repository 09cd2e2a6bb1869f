// node_system is the public face; remote_core holds the state (shared with the
// proxies, which hold it weakly) and does the work.
#include "transport/node_system.hpp"

#include <caf/actor_system_config.hpp>

#include "transport/node_identity.hpp"
#include "transport/remote_core.hpp"

namespace troupe {

void node_system::configure(caf::actor_system_config& cfg) { node_identity_load(cfg); }

node_system::node_system(caf::actor_system& sys, ucx_node_options options)
    : sys_(sys), core_(std::make_shared<remote_core>(sys, std::move(options))) {
  if (!sys.node())
    throw error(errc::errc_invalid_argument,
                "node_system: the actor system has no node id; call node_system::configure(cfg) before creating it");
  core_->start();
}

node_system::~node_system() { shutdown(); }

const std::string& node_system::name() const { return core_->name(); }

uint16_t node_system::port() const { return core_->port(); }

caf::error node_system::connect(const std::string& host, uint16_t port, const std::string& expected_name,
                                std::chrono::milliseconds timeout) {
  return core_->connect(host, port, expected_name, timeout);
}

bool node_system::wait_for_peer(const std::string& node, std::chrono::milliseconds timeout) {
  return core_->wait_ready(node, timeout);
}

void node_system::publish(const std::string& name, const caf::strong_actor_ptr& actor) { core_->publish(name, actor); }

bool node_system::unpublish(const std::string& name) { return core_->unpublish(name); }

std::vector<std::string> node_system::peers() const { return core_->peers(); }

node_system_counters node_system::counters() const { return core_->counters(); }

void node_system::shutdown() { core_->shutdown(); }

caf::expected<caf::strong_actor_ptr> node_system::lookup(const std::string& node, const std::string& name,
                                                         const std::set<std::string>& expected, bool typed,
                                                         std::chrono::milliseconds timeout) {
  return core_->lookup(node, name, expected, typed, timeout);
}

}  // namespace troupe
