// Which network interface holds an address, for UCX_NET_DEVICES. Why: UCX
// opens worker-address endpoints on whichever of the host's interfaces it
// rates best, including ones the peer cannot reach (a docker0 bridge with
// the same private subnet on every host, a bridge that a test creates and
// removes). A node's links are pinned to the interface its peers reach it on.
#pragma once

#include <string>

namespace troupe {

/// The name of the local interface whose address is `host` or whose subnet
/// contains it ("lo" for 127.0.0.2); "" for a wildcard address, a name that
/// does not resolve, or an address no interface covers.
std::string net_device_for(const std::string& host);

}  // namespace troupe
