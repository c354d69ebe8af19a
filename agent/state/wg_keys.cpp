#include "agent/state/wg_keys.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/core/trusted_file.h"
#include "agent/core/unique_fd.h"

namespace tapsec::state {

namespace wg = kernel::wireguard;

namespace {

std::string system_error(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

// Writes a fresh key with O_EXCL, so two agents racing on one path cannot
// both win and neither overwrites a key someone else just wrote.
std::string create_key_file(const std::string& path) {
  wg::Key key{};
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) return "no randomness for a new WireGuard key";
  key[0] &= 248;
  key[31] = static_cast<std::uint8_t>((key[31] & 127) | 64);
  std::string text = wg::key_to_base64(key) + "\n";
  OPENSSL_cleanse(key.data(), key.size());
  core::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) {
    OPENSSL_cleanse(text.data(), text.size());
    return errno == EEXIST ? std::string() : system_error("cannot create the WireGuard key file", path);
  }
  bool written = ::write(fd.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size());
  OPENSSL_cleanse(text.data(), text.size());
  if (!written || ::fsync(fd.get()) != 0) {
    std::string error = system_error("cannot write the WireGuard key file", path);
    ::unlink(path.c_str());
    return error;
  }
  return "";
}

}  // namespace

WireguardKey::~WireguardKey() { OPENSSL_cleanse(private_key_.data(), private_key_.size()); }

std::variant<std::shared_ptr<WireguardKey>, std::string> WireguardKey::load_or_create(
    const policy::Identity& identity) {
  const std::string& path = identity.key_file;
  if (path.empty()) return "identity \"" + identity.name + "\" has no key file";
  // Not followed: the agent may create this file, and a link would let
  // someone else choose where.
  const core::TrustedFileRules rules{"WireGuard key file", "a private key", /*follow_symlinks=*/false};
  if (::access(path.c_str(), F_OK) != 0) {
    if (errno != ENOENT) return system_error("cannot reach the WireGuard key file", path);
    // A key made in a directory others may write could be swapped for theirs.
    if (auto problem = core::directory_chain_problem(path, rules.what); !problem.empty()) return problem;
    if (auto error = create_key_file(path); !error.empty()) return error;
  }
  std::string why;
  auto contents = core::read_trusted_file(path, 128, rules, why);
  if (!contents) return why;
  std::string_view text(contents->bytes);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.remove_suffix(1);
  auto key = wg::key_from_base64(text);
  if (!key) return "the WireGuard key file " + path + " does not hold a base64 key of 32 bytes";
  std::shared_ptr<WireguardKey> result(new WireguardKey());
  result->name_ = identity.name;
  result->private_key_ = *key;
  OPENSSL_cleanse(key->data(), key->size());
  result->public_key_ = wg::public_key_of(result->private_key_);
  return result;
}

}  // namespace tapsec::state
