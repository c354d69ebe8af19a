// WireGuard identities (IPK): Curve25519 key pairs the agent holds. A key
// file that does not exist yet is created, mode 0600, with a fresh key; the
// private key never leaves the agent, the public key is there for anyone.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <variant>

#include "agent/kernel/wireguard.h"
#include "tapsec/policy.h"

namespace tapsec::state {

class WireguardKey {
 public:
  ~WireguardKey();  // wipes the private key
  WireguardKey(const WireguardKey&) = delete;
  WireguardKey& operator=(const WireguardKey&) = delete;

  // Reads identity.key_file (base64, as `wg genkey` writes it), creating it
  // first if it is missing. Errors say which file and what is wrong and what
  // to run: a key file (or a directory above it) owned by someone other than
  // root or the agent, or one others may read or write, is refused, and so is
  // a symbolic link (see agent/core/trusted_file.h).
  static std::variant<std::shared_ptr<WireguardKey>, std::string> load_or_create(const policy::Identity& identity);

  const std::string& name() const { return name_; }
  const kernel::wireguard::Key& private_key() const { return private_key_; }
  const kernel::wireguard::Key& public_key() const { return public_key_; }

 private:
  WireguardKey() = default;
  std::string name_;
  kernel::wireguard::Key private_key_{}, public_key_{};
};

}  // namespace tapsec::state
