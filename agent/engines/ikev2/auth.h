// IKE_AUTH authentication (RFC 7296 §2.15, RFC 7427): the signed octets,
// PSK and signature AUTH payloads, and validation of a peer's certificate
// chain against trust anchors and the identity it claims.
#pragma once

#include <openssl/types.h>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agent/engines/ikev2/crypto.h"
#include "agent/engines/ikev2/message.h"
#include "agent/engines/ikev2/types.h"

namespace tapsec::ikev2 {

struct EvpPkeyFree { void operator()(EVP_PKEY* key) const; };
struct X509StoreFree { void operator()(X509_STORE* store) const; };
using PrivateKey = std::shared_ptr<EVP_PKEY>;     // shared: one identity, many SAs
using TrustAnchors = std::shared_ptr<X509_STORE>;

// Our side's credentials for one IKE SA.
struct LocalCredentials {
  enum class Method { SharedKey, Signature } method = Method::SharedKey;
  SecretBytes psk;                          // SharedKey
  PrivateKey private_key;                   // Signature (RSA or ECDSA)
  std::vector<Bytes> certificate_chain;     // Signature: DER, leaf first
};

// What we accept from the peer.
struct PeerRequirements {
  enum class Method { SharedKey, Signature } method = Method::SharedKey;
  SecretBytes psk;        // SharedKey (usually the same key as ours)
  TrustAnchors anchors;   // Signature
  std::optional<Identification> expected_id;  // nullopt: any ID the credential proves
};

// <SignedOctets> = RealMessage | Nonce of the other side | prf(SK_p, RestOfIDPayload).
// `id` is the sender's own ID payload (type + data).
Bytes signed_octets(std::span<const std::uint8_t> real_message, std::span<const std::uint8_t> other_nonce,
                    const Prf& prf, const SecretBytes& sk_p, const IdentificationPayload& id);

// The hash algorithms (RFC 7427 §4) we announce in SIGNATURE_HASH_ALGORITHMS.
Bytes supported_signature_hashes();  // SHA2-256, SHA2-384, SHA2-512 as 2-byte ids

// Builds our AUTH payload. `peer_hashes` is the peer's
// SIGNATURE_HASH_ALGORITHMS data (empty if it sent none: then the classic
// RSA/ECDSA methods 1/9/10 are used). Fails only if signing fails.
std::variant<AuthenticationPayload, std::string> make_auth(const LocalCredentials& credentials, const Prf& prf,
                                                           std::span<const std::uint8_t> octets,
                                                           std::span<const std::uint8_t> peer_hashes);

struct PeerAuthResult {
  bool ok = false;
  std::string failure;           // why not, for logs and the AUTHENTICATION_FAILED reason
  std::string peer_description;  // "psk:<id>" or the leaf's subject, for Association.PeerIdentity
};
// Checks the peer's AUTH: PSK MAC, or the signature with the leaf of
// `chain` (DER, leaf first, from CERT payloads) after validating the chain
// against the anchors and the claimed ID (SAN dNSName/rfc822Name/iPAddress
// or subject DN must match `peer_id`).
PeerAuthResult verify_auth(const PeerRequirements& requirements, const Identification& peer_id,
                           const AuthenticationPayload& auth, const std::vector<Bytes>& chain, const Prf& prf,
                           std::span<const std::uint8_t> octets);

// PEM loading for the agent (identities and trust stores of the policy).
std::variant<PrivateKey, std::string> load_private_key(const std::string& pem_file);
std::variant<std::vector<Bytes>, std::string> load_certificate_chain(const std::string& pem_file);
std::variant<TrustAnchors, std::string> load_trust_anchors(const std::vector<std::string>& pem_files,
                                                           bool include_system);
// The ID a certificate naturally proves: its subject DN.
std::optional<Identification> subject_identification(std::span<const std::uint8_t> certificate_der);

}  // namespace tapsec::ikev2
