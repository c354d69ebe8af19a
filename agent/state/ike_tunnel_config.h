// Turns a tunnel of the policy (policy::Tunnel) into the IKE engine's
// configuration: proposals, credentials loaded from the named identity,
// PSK and trust store, traffic selectors, lifetimes.
#pragma once

#include <memory>
#include <string>
#include <variant>

#include "agent/engines/ikev2/ike_engine.h"
#include "tapsec/policy.h"

namespace tapsec::state {

// The group id for a name of the policy ("x25519", "ecp256", "modp2048", ...); 0 if unknown.
std::uint16_t ike_group_by_name(std::string_view name);

// `local` is the address the tunnel's packets leave from: it is the local ID
// when the tunnel names none and the traffic selector of transport mode.
std::variant<std::shared_ptr<ikev2::IkeConfig>, std::string> build_ike_config(const policy::Policy& policy,
                                                                             const policy::Tunnel& tunnel,
                                                                             const ikev2::IpAddress& local);

}  // namespace tapsec::state
