// The envelopes the remote-actor layer exchanges between two nodes, on top of
// ucx_node's authenticated, ordered links. Four kinds, modelled on CAF's own
// BASP (direct_message, announce_proxy, down_message), so that actor handles
// inside messages, request/response and monitoring work across nodes as they
// do in one process:
//
//   hello     after link_up, once per link and first on it:
//             payload = (caf::node_id of the sender, its directory actor)
//   message   an actor message: target = receiving actor id, source = sending
//             actor id (for logs), request_id = CAF message id (request,
//             response or async bits included);
//             payload = (sender handle, forwarding stages, caf::message)
//   announce  "I now hold a proxy for your actor <target>": the owner reports
//             that actor's exit (or at once that it is not running)
//   down      "my actor <target> exited": payload = (caf::error reason)
//
// Payloads are written with wire_writer through the types' inspect()
// (caf::message writes its registered type names), read with wire_reader
// within the node's wire_limits; anything that does not decode is dropped,
// logged and counted.
#pragma once

#include <caf/atom.hpp>

namespace troupe::remote_protocol {

inline constexpr const char* hello_type = "troupe.node.hello";        ///< see the file comment
inline constexpr const char* message_type = "troupe.node.message";    ///< see the file comment
inline constexpr const char* announce_type = "troupe.node.announce";  ///< see the file comment
inline constexpr const char* down_type = "troupe.node.down";          ///< see the file comment

/// Asks a node's directory actor for a published actor by name; the reply is
/// (strong_actor_ptr, std::set<std::string> message types) or an error.
using lookup_atom = caf::atom_constant<caf::atom("nodelookup")>;

}  // namespace troupe::remote_protocol
