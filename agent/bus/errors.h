// The D-Bus error names of org.tapsec1 (dbus/API.md lists when each occurs).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "agent/bus/backend.h"

namespace tapsec::bus::error {

inline constexpr const char* kPolicyDenied = "org.tapsec1.Error.PolicyDenied";
inline constexpr const char* kHandshakeFailed = "org.tapsec1.Error.HandshakeFailed";
inline constexpr const char* kPeerNotValidated = "org.tapsec1.Error.PeerNotValidated";
inline constexpr const char* kKernelUnsupported = "org.tapsec1.Error.KernelUnsupported";
inline constexpr const char* kInvalidArgument = "org.tapsec1.Error.InvalidArgument";
inline constexpr const char* kUnknownProperty = "org.tapsec1.Error.UnknownProperty";
inline constexpr const char* kBadSocket = "org.tapsec1.Error.BadSocket";
inline constexpr const char* kNotSupported = "org.tapsec1.Error.NotSupported";
inline constexpr const char* kExportDenied = "org.tapsec1.Error.ExportDenied";
inline constexpr const char* kNoSuchIdentity = "org.tapsec1.Error.NoSuchIdentity";
inline constexpr const char* kNoSuchAssociation = "org.tapsec1.Error.NoSuchAssociation";
inline constexpr const char* kTimeout = "org.tapsec1.Error.Timeout";
inline constexpr const char* kLimitExceeded = "org.tapsec1.Error.LimitExceeded";
inline constexpr const char* kInternal = "org.tapsec1.Error.Internal";

inline BusError make(const char* name, std::string message) { return BusError{name, std::move(message)}; }
// By the short name: named("InvalidArgument", ...).
inline BusError named(const char* short_name, std::string message) {
  return BusError{std::string(kErrorPrefix) + short_name, std::move(message)};
}
// Only root, the owner of an association and whom policy lets manage
// others' associations may change it.
inline std::optional<BusError> check_owner(const CallerCredentials& caller, uid_t owner, std::uint64_t id,
                                           const char* action) {
  if (caller.uid == 0 || caller.uid == owner || caller.manages_others) return std::nullopt;
  return named("PolicyDenied", std::string("only the owner (uid ") + std::to_string(owner) + ") or root may " +
                                   action + " association " + std::to_string(id));
}

// True if `name` is a syntactically valid D-Bus error name (at least two
// dot-separated elements of [A-Za-z0-9_], none starting with a digit).
bool is_valid_error_name(std::string_view name);

}  // namespace tapsec::bus::error
