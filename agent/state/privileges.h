// What the agent may do with the privileges it was started with: logs its
// uid and capabilities at start, and turns off (or warns about) a feature
// whose capability it lacks, so that the feature says why at once instead
// of failing later with EPERM.
//
//   CAP_NET_ADMIN         XFRM states and policies (IKEv2/ESP), WireGuard
//                         devices (kernel, or wireguard-go's TUN device)
//   CAP_NET_BIND_SERVICE  IKE's UDP ports 500 and 4500
//   CAP_SYS_PTRACE        pidfd_getfd on a socket an application holds, for
//                         key update, termination and key expiry of
//                         kernel-offloaded TLS; not needed for tunnels
//
// kTLS itself (setsockopt TLS_TX/TLS_RX on a socket the agent holds) needs
// no capability.
#pragma once

#include "agent/state/agent.h"

namespace tapsec::state {

// Logs the privileges; may set options.ike.ike_port to 0 (IKE off).
void check_privileges(AgentOptions& options);

}  // namespace tapsec::state
