// The module itself: an actor_system::module in the net::middleman slot whose
// init() (run before CAF spawns its first actor) assigns the node id.
#include "transport/node_identity.hpp"

#include <unistd.h>

#include <algorithm>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/node_id.hpp>
#include <random>

namespace caf::net {

// CAF 0.17 forward-declares this class and makes it a friend of actor_system
// for a networking module that never shipped with 0.17.6 (libcaf_net).
class middleman final : public actor_system::module {
 public:
  explicit middleman(actor_system& sys) : sys_(sys) {}

  static actor_system::module* make(actor_system& sys, detail::type_list<>) { return new middleman(sys); }

  void start() override {}
  void stop() override {}

  void init(actor_system_config&) override {
    node_id::default_data::host_id_type host{};
    std::random_device rd;
    while (!node_id::default_data::valid(host))
      for (auto& b : host) b = static_cast<uint8_t>(rd());
    node_id id = make_node_id(static_cast<uint32_t>(getpid()), host);
    sys_.node_.swap(id);
  }

  id_t id() const override { return network_manager; }
  void* subtype_ptr() override { return this; }

 private:
  actor_system& sys_;
};

}  // namespace caf::net

namespace troupe {

void node_identity_load(caf::actor_system_config& cfg) { cfg.load<caf::net::middleman>(); }

}  // namespace troupe
