#include "transport/net_device.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cstring>

namespace troupe {

std::string net_device_for(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_INET;  // UCX 1.13's tcp transport uses IPv4 interface addresses
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (host.empty() || getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) return {};
  const in_addr want = reinterpret_cast<const sockaddr_in*>(res->ai_addr)->sin_addr;
  freeaddrinfo(res);
  if (want.s_addr == htonl(INADDR_ANY)) return {};
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) != 0) return {};
  std::string exact, covering;
  for (const ifaddrs* i = ifs; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_UP) == 0) continue;
    const in_addr a = reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr;
    const uint32_t mask =
        i->ifa_netmask != nullptr ? reinterpret_cast<const sockaddr_in*>(i->ifa_netmask)->sin_addr.s_addr : ~0u;
    if (a.s_addr == want.s_addr && exact.empty()) exact = i->ifa_name;
    if ((a.s_addr & mask) == (want.s_addr & mask) && covering.empty()) covering = i->ifa_name;
  }
  freeifaddrs(ifs);
  return exact.empty() ? covering : exact;
}

}  // namespace troupe
