// IKE_AUTH: signed octets, PSK and signature AUTH payloads (RFC 7296 §2.15,
// RFC 4754, RFC 7427) and validation of the peer's certificate and identity.
#include "agent/engines/ikev2/auth.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <strings.h>

#include "agent/core/openssl_ptr.h"
#include "agent/core/trusted_pem.h"

namespace tapsec::ikev2 {

void EvpPkeyFree::operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
void X509StoreFree::operator()(X509_STORE* store) const { X509_STORE_free(store); }

namespace {

using core::OpenSslPtr;

void free_x509_stack(STACK_OF(X509) * stack) { sk_X509_pop_free(stack, X509_free); }
void free_general_names(GENERAL_NAMES* names) { GENERAL_NAMES_free(names); }

using X509Ptr = OpenSslPtr<X509, X509_free>;
using X509StackPtr = OpenSslPtr<STACK_OF(X509), free_x509_stack>;
using X509StoreCtxPtr = OpenSslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;
using X509NamePtr = OpenSslPtr<X509_NAME, X509_NAME_free>;
using X509AlgorPtr = OpenSslPtr<X509_ALGOR, X509_ALGOR_free>;
using GeneralNamesPtr = OpenSslPtr<GENERAL_NAMES, free_general_names>;
using core::EvpMdCtxPtr;
using EcdsaSigPtr = OpenSslPtr<ECDSA_SIG, ECDSA_SIG_free>;
using BioPtr = OpenSslPtr<BIO, BIO_free_all>;
using BignumPtr = OpenSslPtr<BIGNUM, BN_free>;

// RFC 7427 §7 hash algorithm identifiers.
constexpr std::uint16_t kHashSha256 = 2;
constexpr std::uint16_t kHashSha384 = 3;
constexpr std::uint16_t kHashSha512 = 4;

constexpr std::string_view kKeyPad = "Key Pad for IKEv2";

std::string openssl_errors() {
  std::string text = core::take_openssl_errors();
  return text.empty() ? "unknown OpenSSL error" : text;
}

X509Ptr parse_certificate(std::span<const std::uint8_t> der) {
  const unsigned char* cursor = der.data();
  X509Ptr certificate(d2i_X509(nullptr, &cursor, static_cast<long>(der.size())));
  if (certificate && cursor != der.data() + der.size()) return nullptr;  // trailing bytes
  return certificate;
}

Bytes to_der(X509* certificate) {
  int length = i2d_X509(certificate, nullptr);
  if (length <= 0) return {};
  Bytes der(static_cast<std::size_t>(length));
  unsigned char* cursor = der.data();
  i2d_X509(certificate, &cursor);
  return der;
}

std::string name_to_string(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) return "?";
  char* data = nullptr;
  long length = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(length));
}

std::string describe_id(const Identification& id) {
  if (id.type == id_type::kFqdn) return "fqdn:" + std::string(id.data.begin(), id.data.end());
  return id.to_string();
}

enum class KeyKind { Rsa, EcP256, EcP384, EcP521, Other };

KeyKind key_kind(EVP_PKEY* key) {
  if (EVP_PKEY_is_a(key, "RSA")) return KeyKind::Rsa;
  if (!EVP_PKEY_is_a(key, "EC")) return KeyKind::Other;
  // By curve name: a 256-bit curve is not necessarily P-256 (RFC 4754 names the curves).
  char curve[64] = {};
  std::size_t length = 0;
  if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof curve, &length) != 1)
    return KeyKind::Other;
  switch (EC_curve_nist2nid(curve) != NID_undef ? EC_curve_nist2nid(curve) : OBJ_sn2nid(curve)) {
    case NID_X9_62_prime256v1: return KeyKind::EcP256;
    case NID_secp384r1: return KeyKind::EcP384;
    case NID_secp521r1: return KeyKind::EcP521;
    default: return KeyKind::Other;
  }
}

std::size_t ecdsa_scalar_size(KeyKind kind) { return kind == KeyKind::EcP256 ? 32 : kind == KeyKind::EcP384 ? 48 : 66; }

std::optional<Bytes> sign(EVP_PKEY* key, const char* digest, std::span<const std::uint8_t> data) {
  EvpMdCtxPtr context(EVP_MD_CTX_new());
  if (!context || EVP_DigestSignInit_ex(context.get(), nullptr, digest, nullptr, nullptr, key, nullptr) != 1)
    return std::nullopt;
  std::size_t length = 0;
  if (EVP_DigestSign(context.get(), nullptr, &length, data.data(), data.size()) != 1) return std::nullopt;
  Bytes signature(length);
  if (EVP_DigestSign(context.get(), signature.data(), &length, data.data(), data.size()) != 1) return std::nullopt;
  signature.resize(length);
  return signature;
}

bool verify(EVP_PKEY* key, const char* digest, std::span<const std::uint8_t> data,
            std::span<const std::uint8_t> signature) {
  EvpMdCtxPtr context(EVP_MD_CTX_new());
  if (!context || EVP_DigestVerifyInit_ex(context.get(), nullptr, digest, nullptr, nullptr, key, nullptr) != 1)
    return false;
  const bool ok = EVP_DigestVerify(context.get(), signature.data(), signature.size(), data.data(), data.size()) == 1;
  ERR_clear_error();
  return ok;
}

// RFC 4754 §7: r || s, each padded to the curve's size; OpenSSL speaks DER.
std::optional<Bytes> ecdsa_der_to_raw(std::span<const std::uint8_t> der, std::size_t scalar_size) {
  const unsigned char* cursor = der.data();
  EcdsaSigPtr signature(d2i_ECDSA_SIG(nullptr, &cursor, static_cast<long>(der.size())));
  if (!signature) return std::nullopt;
  Bytes raw(2 * scalar_size);
  if (BN_bn2binpad(ECDSA_SIG_get0_r(signature.get()), raw.data(), static_cast<int>(scalar_size)) < 0 ||
      BN_bn2binpad(ECDSA_SIG_get0_s(signature.get()), raw.data() + scalar_size, static_cast<int>(scalar_size)) < 0)
    return std::nullopt;
  return raw;
}

std::optional<Bytes> ecdsa_raw_to_der(std::span<const std::uint8_t> raw) {
  if (raw.empty() || raw.size() % 2 != 0) return std::nullopt;
  const std::size_t half = raw.size() / 2;
  BignumPtr r(BN_bin2bn(raw.data(), static_cast<int>(half), nullptr));
  BignumPtr s(BN_bin2bn(raw.data() + half, static_cast<int>(half), nullptr));
  EcdsaSigPtr signature(ECDSA_SIG_new());
  if (!r || !s || !signature || ECDSA_SIG_set0(signature.get(), r.get(), s.get()) != 1) return std::nullopt;
  r.release();  // owned by the signature now
  s.release();
  int length = i2d_ECDSA_SIG(signature.get(), nullptr);
  if (length <= 0) return std::nullopt;
  Bytes der(static_cast<std::size_t>(length));
  unsigned char* cursor = der.data();
  i2d_ECDSA_SIG(signature.get(), &cursor);
  return der;
}

// The signature algorithms of RFC 7427 tapsec signs and verifies with.
struct SignatureScheme {
  int nid;
  bool rsa;
  const char* digest;
  std::uint16_t hash_id;
};

constexpr SignatureScheme kSchemes[] = {
    {NID_sha256WithRSAEncryption, true, "SHA256", kHashSha256},
    {NID_sha384WithRSAEncryption, true, "SHA384", kHashSha384},
    {NID_sha512WithRSAEncryption, true, "SHA512", kHashSha512},
    {NID_ecdsa_with_SHA256, false, "SHA256", kHashSha256},
    {NID_ecdsa_with_SHA384, false, "SHA384", kHashSha384},
    {NID_ecdsa_with_SHA512, false, "SHA512", kHashSha512},
};

// AlgorithmIdentifier DER: RSA PKCS#1 v1.5 carries NULL parameters
// (RFC 4055 §5), ECDSA none (RFC 5758 §3.2).
Bytes algorithm_identifier(const SignatureScheme& scheme) {
  X509AlgorPtr algorithm(X509_ALGOR_new());
  if (!algorithm ||
      X509_ALGOR_set0(algorithm.get(), OBJ_nid2obj(scheme.nid), scheme.rsa ? V_ASN1_NULL : V_ASN1_UNDEF, nullptr) != 1)
    return {};
  int length = i2d_X509_ALGOR(algorithm.get(), nullptr);
  if (length <= 0) return {};
  Bytes der(static_cast<std::size_t>(length));
  unsigned char* cursor = der.data();
  i2d_X509_ALGOR(algorithm.get(), &cursor);
  return der;
}

std::vector<std::uint16_t> hash_list(std::span<const std::uint8_t> data) {
  std::vector<std::uint16_t> hashes;
  for (std::size_t i = 0; i + 1 < data.size(); i += 2) hashes.push_back(static_cast<std::uint16_t>(data[i] << 8 | data[i + 1]));
  return hashes;
}

// The RFC 7427 hash to sign with, or 0 to use the classic methods.
std::uint16_t choose_hash(KeyKind kind, std::span<const std::uint8_t> peer_hashes) {
  const auto hashes = hash_list(peer_hashes);
  auto offered = [&](std::uint16_t id) { return std::find(hashes.begin(), hashes.end(), id) != hashes.end(); };
  // ECDSA: the hash that matches the curve's strength first.
  std::vector<std::uint16_t> preference{kHashSha256, kHashSha384, kHashSha512};
  if (kind == KeyKind::EcP384) preference = {kHashSha384, kHashSha512, kHashSha256};
  if (kind == KeyKind::EcP521) preference = {kHashSha512, kHashSha384, kHashSha256};
  for (auto id : preference)
    if (offered(id)) return id;
  return 0;
}

std::optional<AuthenticationPayload> sign_auth(EVP_PKEY* key, std::span<const std::uint8_t> octets,
                                               std::span<const std::uint8_t> peer_hashes, std::string& error) {
  const KeyKind kind = key_kind(key);
  if (kind == KeyKind::Other) {
    error = "private key is neither RSA nor ECDSA P-256/P-384/P-521";
    return std::nullopt;
  }
  const std::uint16_t hash = choose_hash(kind, peer_hashes);
  AuthenticationPayload auth;
  if (hash != 0) {
    const SignatureScheme* scheme = nullptr;
    for (const auto& candidate : kSchemes)
      if (candidate.rsa == (kind == KeyKind::Rsa) && candidate.hash_id == hash) scheme = &candidate;
    Bytes identifier = algorithm_identifier(*scheme);
    auto signature = sign(key, scheme->digest, octets);  // ECDSA stays DER here (RFC 7427 §3)
    if (identifier.empty() || !signature) {
      error = "signing failed: " + openssl_errors();
      return std::nullopt;
    }
    auth.method = auth_method::kDigitalSignature;
    auth.data.push_back(static_cast<std::uint8_t>(identifier.size()));
    auth.data.insert(auth.data.end(), identifier.begin(), identifier.end());
    auth.data.insert(auth.data.end(), signature->begin(), signature->end());
    return auth;
  }
  switch (kind) {
    case KeyKind::Rsa: {
      auto signature = sign(key, "SHA1", octets);  // RFC 7296 §3.8: RSASSA-PKCS1-v1_5 with SHA-1
      if (!signature) break;
      auth.method = auth_method::kRsaSignature;
      auth.data = std::move(*signature);
      return auth;
    }
    case KeyKind::EcP256:
    case KeyKind::EcP384: {
      const bool p256 = kind == KeyKind::EcP256;
      auto der = sign(key, p256 ? "SHA256" : "SHA384", octets);
      if (!der) break;
      auto raw = ecdsa_der_to_raw(*der, ecdsa_scalar_size(kind));
      if (!raw) break;
      auth.method = p256 ? auth_method::kEcdsaSha256P256 : auth_method::kEcdsaSha384P384;
      auth.data = std::move(*raw);
      return auth;
    }
    default:
      error = "the peer announced no signature hashes and P-521 has no classic method here";
      return std::nullopt;
  }
  error = "signing failed: " + openssl_errors();
  return std::nullopt;
}

// Checks the AUTH data with the leaf's public key; empty string = valid.
std::string check_signature(EVP_PKEY* key, const AuthenticationPayload& auth, std::span<const std::uint8_t> octets) {
  const KeyKind kind = key_kind(key);
  const std::string method = "AUTH method " + std::to_string(auth.method);
  switch (auth.method) {
    case auth_method::kRsaSignature:
      if (kind != KeyKind::Rsa) return method + " needs an RSA certificate";
      return verify(key, "SHA1", octets, auth.data) ? "" : "signature verification failed (" + method + ")";
    case auth_method::kEcdsaSha256P256:
    case auth_method::kEcdsaSha384P384: {
      const bool p256 = auth.method == auth_method::kEcdsaSha256P256;
      if (kind != (p256 ? KeyKind::EcP256 : KeyKind::EcP384))
        return method + " needs an ECDSA " + (p256 ? "P-256" : "P-384") + " certificate";
      if (auth.data.size() != 2 * ecdsa_scalar_size(kind)) return "malformed ECDSA signature (" + method + ")";
      auto der = ecdsa_raw_to_der(auth.data);
      if (!der || !verify(key, p256 ? "SHA256" : "SHA384", octets, *der))
        return "signature verification failed (" + method + ")";
      return "";
    }
    case auth_method::kDigitalSignature: {
      if (auth.data.empty() || auth.data[0] == 0 || auth.data.size() < 1u + auth.data[0])
        return "malformed RFC 7427 signature";
      const std::size_t identifier_size = auth.data[0];
      const unsigned char* cursor = auth.data.data() + 1;
      X509AlgorPtr algorithm(d2i_X509_ALGOR(nullptr, &cursor, static_cast<long>(identifier_size)));
      if (!algorithm || cursor != auth.data.data() + 1 + identifier_size)
        return "malformed AlgorithmIdentifier in the RFC 7427 signature";
      const ASN1_OBJECT* object = nullptr;
      X509_ALGOR_get0(&object, nullptr, nullptr, algorithm.get());
      const int nid = OBJ_obj2nid(object);
      const SignatureScheme* scheme = nullptr;
      for (const auto& candidate : kSchemes)
        if (candidate.nid == nid) scheme = &candidate;
      if (scheme == nullptr) {
        char name[80];
        OBJ_obj2txt(name, sizeof name, object, 0);
        return std::string("unsupported signature algorithm ") + name;
      }
      const bool rsa_key = kind == KeyKind::Rsa;
      if (scheme->rsa != rsa_key || kind == KeyKind::Other)
        return std::string("signature algorithm ") + OBJ_nid2sn(nid) + " does not fit the certificate's key";
      const std::span<const std::uint8_t> signature(auth.data.data() + 1 + identifier_size,
                                                    auth.data.size() - 1 - identifier_size);
      return verify(key, scheme->digest, octets, signature) ? "" : "signature verification failed (" + method + ")";
    }
    default:
      return method + " is not accepted for certificates";
  }
}

bool same_text(const ASN1_STRING* value, std::span<const std::uint8_t> expected) {
  const int length = ASN1_STRING_length(value);
  if (length < 0 || static_cast<std::size_t>(length) != expected.size()) return false;
  return expected.empty() ||
         strncasecmp(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                     reinterpret_cast<const char*>(expected.data()), expected.size()) == 0;
}

bool same_octets(const ASN1_STRING* value, std::span<const std::uint8_t> expected) {
  const int length = ASN1_STRING_length(value);
  if (length < 0 || static_cast<std::size_t>(length) != expected.size()) return false;
  return std::equal(expected.begin(), expected.end(), ASN1_STRING_get0_data(value));
}

// Does the certificate prove `id`? SAN entries for names and addresses, the
// subject for a DN.
bool certificate_proves(X509* certificate, const Identification& id) {
  if (id.type == id_type::kDerAsn1Dn) {
    const unsigned char* cursor = id.data.data();
    X509NamePtr name(d2i_X509_NAME(nullptr, &cursor, static_cast<long>(id.data.size())));
    return name && X509_NAME_cmp(name.get(), X509_get_subject_name(certificate)) == 0;
  }
  int wanted_kind;
  switch (id.type) {
    case id_type::kFqdn: wanted_kind = GEN_DNS; break;
    case id_type::kRfc822: wanted_kind = GEN_EMAIL; break;
    case id_type::kIpv4:
    case id_type::kIpv6: wanted_kind = GEN_IPADD; break;
    default: return false;
  }
  GeneralNamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(certificate, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return false;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != wanted_kind) continue;
    switch (wanted_kind) {
      case GEN_DNS:
        if (same_text(name->d.dNSName, id.data)) return true;
        break;
      case GEN_EMAIL:
        if (same_text(name->d.rfc822Name, id.data)) return true;
        break;
      case GEN_IPADD:
        if (same_octets(name->d.iPAddress, id.data)) return true;
        break;
    }
  }
  return false;
}

PeerAuthResult failed(std::string why) {
  PeerAuthResult result;
  result.failure = std::move(why);
  return result;
}

std::optional<SecretBytes> psk_auth(const SecretBytes& psk, const Prf& prf, std::span<const std::uint8_t> octets) {
  if (psk.empty()) return std::nullopt;
  const std::span<const std::uint8_t> pad(reinterpret_cast<const std::uint8_t*>(kKeyPad.data()), kKeyPad.size());
  SecretBytes key = prf.compute(psk.span(), pad);  // AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), octets)
  return prf.compute(key.span(), octets);
}

std::optional<std::string> read_certificates(const std::string& pem_file, const core::TrustedFileRules& rules,
                                             std::vector<X509Ptr>& out) {
  std::string problem = core::parse_trusted_pem(pem_file, rules, [&](BIO* bio) {
    while (X509* certificate = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) out.emplace_back(certificate);
    // The loop ends with "no start line" at the end of the file; anything else is a real error.
    const unsigned long last = ERR_peek_last_error();
    if (ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE) {
      ERR_clear_error();
    } else if (last != 0) {
      return "cannot read certificates from " + pem_file + ": " + openssl_errors();
    }
    return out.empty() ? "no certificate in " + pem_file : std::string();
  });
  if (!problem.empty()) return problem;
  return std::nullopt;
}

}  // namespace

Bytes signed_octets(std::span<const std::uint8_t> real_message, std::span<const std::uint8_t> other_nonce,
                    const Prf& prf, const SecretBytes& sk_p, const IdentificationPayload& id) {
  // RestOfIDPayload: ID type, three reserved bytes, identification data.
  Bytes rest{id.id_type, 0, 0, 0};
  rest.insert(rest.end(), id.data.begin(), id.data.end());
  SecretBytes mac = prf.compute(sk_p.span(), rest);
  Bytes octets(real_message.begin(), real_message.end());
  octets.insert(octets.end(), other_nonce.begin(), other_nonce.end());
  octets.insert(octets.end(), mac.data(), mac.data() + mac.size());
  return octets;
}

Bytes supported_signature_hashes() { return {0, kHashSha256, 0, kHashSha384, 0, kHashSha512}; }

std::variant<AuthenticationPayload, std::string> make_auth(const LocalCredentials& credentials, const Prf& prf,
                                                           std::span<const std::uint8_t> octets,
                                                           std::span<const std::uint8_t> peer_hashes) {
  if (credentials.method == LocalCredentials::Method::SharedKey) {
    auto mac = psk_auth(credentials.psk, prf, octets);
    if (!mac) return std::string("no pre-shared key configured");
    return AuthenticationPayload{auth_method::kSharedKey, Bytes(mac->data(), mac->data() + mac->size())};
  }
  if (!credentials.private_key) return std::string("no private key configured");
  std::string error;
  auto auth = sign_auth(credentials.private_key.get(), octets, peer_hashes, error);
  if (!auth) return error;
  return *auth;
}

PeerAuthResult verify_auth(const PeerRequirements& requirements, const Identification& peer_id,
                           const AuthenticationPayload& auth, const std::vector<Bytes>& chain, const Prf& prf,
                           std::span<const std::uint8_t> octets) {
  if (requirements.expected_id && *requirements.expected_id != peer_id)
    return failed("peer ID " + describe_id(peer_id) + " is not the expected " +
                  describe_id(*requirements.expected_id));

  if (requirements.method == PeerRequirements::Method::SharedKey) {
    if (auth.method != auth_method::kSharedKey)
      return failed("peer used AUTH method " + std::to_string(auth.method) + ", a pre-shared key is required");
    auto expected = psk_auth(requirements.psk, prf, octets);
    if (!expected) return failed("no pre-shared key configured for the peer");
    if (auth.data.size() != expected->size() ||
        CRYPTO_memcmp(auth.data.data(), expected->data(), expected->size()) != 0)
      return failed("AUTH mismatch for PSK");
    PeerAuthResult result;
    result.ok = true;
    result.peer_description = "psk:" + peer_id.to_string();
    return result;
  }

  if (auth.method == auth_method::kSharedKey) return failed("peer used a pre-shared key, a certificate is required");
  if (!requirements.anchors) return failed("no trust anchors configured");
  if (chain.empty()) return failed("the peer sent no certificate");
  X509Ptr leaf = parse_certificate(chain.front());
  if (!leaf) return failed("the peer's certificate is malformed");
  X509StackPtr untrusted(sk_X509_new_null());
  if (!untrusted) return failed("out of memory");
  for (std::size_t i = 1; i < chain.size(); ++i) {
    X509Ptr intermediate = parse_certificate(chain[i]);
    if (!intermediate) return failed("intermediate certificate " + std::to_string(i) + " is malformed");
    if (sk_X509_push(untrusted.get(), intermediate.get()) <= 0) return failed("out of memory");
    intermediate.release();  // owned by the stack now
  }

  X509StoreCtxPtr context(X509_STORE_CTX_new());
  if (!context || X509_STORE_CTX_init(context.get(), requirements.anchors.get(), leaf.get(), untrusted.get()) != 1)
    return failed("certificate chain: cannot set up validation: " + openssl_errors());
  X509_STORE_CTX_set_purpose(context.get(), X509_PURPOSE_ANY);
  if (X509_verify_cert(context.get()) != 1) {
    const int error = X509_STORE_CTX_get_error(context.get());
    ERR_clear_error();
    return failed(std::string("certificate chain: ") + X509_verify_cert_error_string(error));
  }

  if (!certificate_proves(leaf.get(), peer_id)) return failed("ID " + describe_id(peer_id) + " not in the certificate");

  EVP_PKEY* public_key = X509_get0_pubkey(leaf.get());
  if (public_key == nullptr) return failed("the peer's certificate has an unusable public key");
  if (std::string problem = check_signature(public_key, auth, octets); !problem.empty()) return failed(problem);

  PeerAuthResult result;
  result.ok = true;
  result.peer_description = name_to_string(X509_get_subject_name(leaf.get()));
  return result;
}

std::variant<PrivateKey, std::string> load_private_key(const std::string& pem_file) {
  PrivateKey owned;
  std::string problem = core::parse_trusted_pem(pem_file, core::kPrivateKeyFile, [&](BIO* bio) {
    EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    if (key == nullptr) return "cannot read a private key from " + pem_file + ": " + openssl_errors();
    owned = PrivateKey(key, EvpPkeyFree{});
    return std::string();
  });
  if (!problem.empty()) return problem;
  if (key_kind(owned.get()) == KeyKind::Other) return pem_file + ": only RSA and ECDSA P-256/P-384/P-521 keys are supported";
  return owned;
}

std::variant<std::vector<Bytes>, std::string> load_certificate_chain(const std::string& pem_file) {
  std::vector<X509Ptr> certificates;
  if (auto error = read_certificates(pem_file, core::kCertificateFile, certificates)) return *error;
  std::vector<Bytes> chain;
  for (const auto& certificate : certificates) {
    Bytes der = to_der(certificate.get());
    if (der.empty()) return "cannot encode a certificate of " + pem_file;
    chain.push_back(std::move(der));
  }
  return chain;
}

std::variant<TrustAnchors, std::string> load_trust_anchors(const std::vector<std::string>& pem_files,
                                                           bool include_system) {
  TrustAnchors store(X509_STORE_new(), X509StoreFree{});
  if (!store) return std::string("out of memory");
  for (const auto& file : pem_files) {
    std::vector<X509Ptr> certificates;
    if (auto error = read_certificates(file, core::kTrustStoreFile, certificates)) return *error;
    for (const auto& certificate : certificates) {
      if (X509_STORE_add_cert(store.get(), certificate.get()) != 1) {
        const unsigned long last = ERR_peek_last_error();
        // The same anchor listed twice is harmless.
        if (ERR_GET_REASON(last) != X509_R_CERT_ALREADY_IN_HASH_TABLE)
          return "cannot add a trust anchor from " + file + ": " + openssl_errors();
        ERR_clear_error();
      }
    }
  }
  if (include_system && X509_STORE_set_default_paths(store.get()) != 1)
    return "cannot load the system trust store: " + openssl_errors();
  return store;
}

std::optional<Identification> subject_identification(std::span<const std::uint8_t> certificate_der) {
  X509Ptr certificate = parse_certificate(certificate_der);
  if (!certificate) return std::nullopt;
  unsigned char* der = nullptr;
  const int length = i2d_X509_NAME(X509_get_subject_name(certificate.get()), &der);
  if (length <= 0) return std::nullopt;
  Identification id;
  id.type = id_type::kDerAsn1Dn;
  id.data.assign(der, der + length);
  OPENSSL_free(der);
  return id;
}

}  // namespace tapsec::ikev2
