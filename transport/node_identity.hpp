// A unique CAF node id for every actor system that talks to other nodes.
//
// Why it is built this way: CAF 0.17 writes an actor handle as (actor id,
// node id) and, reading one back, treats it as local when the node id equals
// actor_system::node(). Only a networking module may set that id (it is a
// private member; CAF's io::middleman and the net::middleman slot are its
// friends) and without one every system has the same, invalid id, so two
// nodes would take each other's actors for their own. Loading caf::io's
// middleman would also start its socket multiplexer thread and pull in
// libcaf_io for nothing else; this module fills the otherwise unused
// net::middleman slot and does one thing: give the system a fresh id before
// any actor is spawned. The id is a random 160-bit host part plus the process
// id (CAF 0.17.6's own node_id::default_data::local ignores its random salt,
// so two containers with the same pid on one host could collide).
#pragma once

namespace caf {
class actor_system_config;
}  // namespace caf

namespace troupe {

/// Loads the module that gives the actor system a unique node id. Call it on
/// the config before the actor system is constructed (node_system::configure
/// does, with the rest of what remote actors need).
void node_identity_load(caf::actor_system_config& cfg);

}  // namespace troupe
