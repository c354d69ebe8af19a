#include "agent/state/privileges.h"

#include <linux/capability.h>

#include "agent/core/hardening.h"
#include "agent/core/log.h"

namespace tapsec::state {

void check_privileges(AgentOptions& options) {
  const core::Privileges privileges = core::current_privileges();
  core::log::info("privileges", {{"uid", std::to_string(privileges.euid)},
                                 {"gid", std::to_string(privileges.egid)},
                                 {"capabilities", privileges.effective_names()}});

  IkeOptions& ike = options.ike;
  if (ike.ike_port != 0) {
    const unsigned first_free = core::unprivileged_port_start();
    std::string privileged_ports;
    for (std::uint16_t port : {ike.ike_port, ike.nat_t_port})
      if (port != 0 && port < first_free)
        privileged_ports += (privileged_ports.empty() ? "" : " and ") + std::to_string(port);
    std::string reason;
    if (!privileges.has(CAP_NET_ADMIN))
      reason = "installing XFRM states and policies needs CAP_NET_ADMIN";
    else if (!privileged_ports.empty() && !privileges.has(CAP_NET_BIND_SERVICE))
      reason = "binding UDP " + privileged_ports + " needs CAP_NET_BIND_SERVICE";
    if (!reason.empty()) {
      core::log::warning("IKE is off: " + reason);
      ike.ike_port = 0;
      ike.off_reason = reason;
    }
  }
  if (!privileges.has(CAP_NET_ADMIN))
    core::log::warning(
        "WireGuard tunnels cannot start: creating a WireGuard device (kernel, or wireguard-go's TUN) needs "
        "CAP_NET_ADMIN");
  if (!privileges.has(CAP_SYS_PTRACE)) {
    options.may_take_back_sockets = false;
    core::log::notice(
        "TLS with direct-socket is off: taking a socket back from the application that holds it (pidfd_getfd, for "
        "its key update, termination and key expiry) needs CAP_SYS_PTRACE; relayed sockets need nothing more");
  }
}

}  // namespace tapsec::state
