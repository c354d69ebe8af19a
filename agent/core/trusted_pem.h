// PEM files the agent trusts (certificates, trust anchors, private keys),
// read through the checks of agent/core/trusted_file.h and handed to
// OpenSSL from memory, so OpenSSL parses exactly the bytes that were checked.
#pragma once

#include <openssl/bio.h>

#include <climits>
#include <string>

#include "agent/core/openssl_ptr.h"
#include "agent/core/trusted_file.h"

namespace tapsec::core {

// A certificate bundle larger than this is not one anybody meant.
inline constexpr std::size_t kMaxPemFileBytes = 4 << 20;

// Reads `path` as `rules` say and calls `parse(BIO*)` on its bytes, which
// are wiped afterwards. Returns the check's message, or what `parse`
// returns (an empty string when all is well).
template <typename Parse>
std::string parse_trusted_pem(const std::string& path, const TrustedFileRules& rules, Parse&& parse) {
  std::string why;
  auto contents = read_trusted_file(path, kMaxPemFileBytes, rules, why);
  if (!contents) return why;
  OpenSslPtr<BIO, BIO_free_all> bio(BIO_new_mem_buf(contents->bytes.data(), static_cast<int>(contents->bytes.size())));
  if (!bio) return "out of memory reading " + path;
  return parse(bio.get());
}

// The rules for the three kinds.
inline constexpr TrustedFileRules kCertificateFile{"certificate file", ""};
inline constexpr TrustedFileRules kTrustStoreFile{"trust store file", ""};
inline constexpr TrustedFileRules kPrivateKeyFile{"private key file", "a private key"};

}  // namespace tapsec::core
