// Strict parsing of the a{sv} `props` argument of SecureSocket and Connect.
// Every key has exactly one D-Bus type; a wrong type, an unknown key, a key
// given twice or a value outside its vocabulary is an error that names the
// key, so the caller can fix the request.
#pragma once

#include <systemd/sd-bus.h>

#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "agent/bus/backend.h"

namespace tapsec::bus {

struct PropertyKey {
  std::string_view name;
  std::string_view signature;  // D-Bus signature of the variant's contents
};

// All keys SecureSocket/Connect accept, in documentation order.
const std::vector<PropertyKey>& known_property_keys();

// Reads an a{sv} array at the current read position of `message` (which must
// be positioned at it) and returns the checked properties or the error to
// send back (org.tapsec1.Error.InvalidArgument / UnknownProperty). `role` is
// "client", "server" or "" (unknown) and enables role-specific checks.
std::variant<SecurityProperties, BusError> parse_security_properties(sd_bus_message* message,
                                                                     std::string_view role);

// The keys EstablishTunnel accepts, in documentation order.
const std::vector<PropertyKey>& known_tunnel_property_keys();
// Reads EstablishTunnel's a{sv} the same strict way.
std::variant<TunnelProperties, BusError> parse_tunnel_properties(sd_bus_message* message);

}  // namespace tapsec::bus
