// AUTH payloads and peer validation: PSK known answer, signatures of every
// method with RSA and ECDSA keys, chain and identity checks, PEM loading and
// certificates made by strongSwan's pki tool.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "agent/engines/ikev2/auth.h"
#include "tests/unit/ikev2/crypto/test_util.h"

namespace tapsec::ikev2 {
namespace {

using test::from_hex;
using test::to_hex;

struct X509Free {
  void operator()(X509* certificate) const { X509_free(certificate); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

Bytes text_bytes(std::string_view text) { return Bytes(text.begin(), text.end()); }

Identification id_of(std::uint8_t type, std::string_view text) { return Identification{type, text_bytes(text)}; }

PrivateKey generate_key(std::string_view kind) {
  EVP_PKEY* key = kind == "rsa" ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(2048))
                                : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", kind == "p384" ? "P-384" : "P-256");
  return PrivateKey(key, EvpPkeyFree{});
}

void add_extension(X509* certificate, X509* issuer, int nid, const char* value) {
  X509V3_CTX context;
  X509V3_set_ctx(&context, issuer, certificate, nullptr, nullptr, 0);
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value);
  ASSERT_NE(extension, nullptr) << value;
  X509_add_ext(certificate, extension, -1);
  X509_EXTENSION_free(extension);
}

struct CertificateSpec {
  std::string common_name;
  bool ca = false;
  std::string subject_alt_names;  // X509V3 config syntax, empty for none
  long valid_from_days = -1;
  long valid_until_days = 30;
};

X509Ptr make_certificate(const CertificateSpec& spec, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key) {
  static long serial = 1;
  X509Ptr certificate(X509_new());
  X509_set_version(certificate.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(certificate.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(certificate.get()), spec.valid_from_days * 86400);
  X509_gmtime_adj(X509_getm_notAfter(certificate.get()), spec.valid_until_days * 86400);
  X509_set_pubkey(certificate.get(), key);
  X509_NAME* name = X509_get_subject_name(certificate.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("tapsec test"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0);
  X509* signer = issuer != nullptr ? issuer : certificate.get();
  X509_set_issuer_name(certificate.get(), X509_get_subject_name(signer));
  add_extension(certificate.get(), signer, NID_basic_constraints, spec.ca ? "critical,CA:TRUE" : "CA:FALSE");
  add_extension(certificate.get(), signer, NID_key_usage,
                spec.ca ? "critical,keyCertSign,cRLSign" : "digitalSignature");
  add_extension(certificate.get(), signer, NID_subject_key_identifier, "hash");
  if (issuer != nullptr) add_extension(certificate.get(), signer, NID_authority_key_identifier, "keyid");
  if (!spec.subject_alt_names.empty())
    add_extension(certificate.get(), signer, NID_subject_alt_name, spec.subject_alt_names.c_str());
  EXPECT_GT(X509_sign(certificate.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()), 0);
  return certificate;
}

Bytes der_of(X509* certificate) {
  unsigned char* der = nullptr;
  int length = i2d_X509(certificate, &der);
  Bytes out(der, der + length);
  OPENSSL_free(der);
  return out;
}

TrustAnchors anchors_of(X509* root) {
  TrustAnchors store(X509_STORE_new(), X509StoreFree{});
  X509_STORE_add_cert(store.get(), root);
  return store;
}

// A root, an intermediate and a leaf with every kind of SAN.
struct Pki {
  PrivateKey root_key, intermediate_key, leaf_key;
  X509Ptr root, intermediate, leaf;
  std::vector<Bytes> chain;

  explicit Pki(std::string_view leaf_kind, long leaf_valid_until_days = 30) {
    root_key = generate_key("p384");
    intermediate_key = generate_key("rsa");
    leaf_key = generate_key(leaf_kind);
    root = make_certificate({"tapsec Test Root", true, ""}, root_key.get(), nullptr, nullptr);
    intermediate = make_certificate({"tapsec Test Intermediate", true, ""}, intermediate_key.get(), root.get(),
                                    root_key.get());
    CertificateSpec leaf_spec{"gw.example.org", false,
                              "DNS:gw.example.org,email:gw@example.org,IP:192.0.2.1,IP:2001:db8::1"};
    if (leaf_valid_until_days < 0) {
      leaf_spec.valid_from_days = -10;
      leaf_spec.valid_until_days = leaf_valid_until_days;
    }
    leaf = make_certificate(leaf_spec, leaf_key.get(), intermediate.get(), intermediate_key.get());
    chain = {der_of(leaf.get()), der_of(intermediate.get())};
  }

  LocalCredentials credentials() const {
    LocalCredentials local;
    local.method = LocalCredentials::Method::Signature;
    local.private_key = leaf_key;
    local.certificate_chain = chain;
    return local;
  }

  PeerRequirements requirements() const {
    PeerRequirements peer;
    peer.method = PeerRequirements::Method::Signature;
    peer.anchors = anchors_of(root.get());
    return peer;
  }
};

AuthenticationPayload must_auth(const LocalCredentials& credentials, const Prf& prf,
                                std::span<const std::uint8_t> octets, std::span<const std::uint8_t> hashes) {
  auto result = make_auth(credentials, prf, octets, hashes);
  if (auto* error = std::get_if<std::string>(&result)) ADD_FAILURE() << *error;
  return std::get<AuthenticationPayload>(result);
}

const Identification kFqdn = id_of(id_type::kFqdn, "gw.example.org");

TEST(SignedOctets, AreMessageNonceAndIdMac) {
  const Prf prf(prf::kHmacSha256);
  const SecretBytes sk_p(Bytes(32, 0x11));
  IdentificationPayload id{id_type::kFqdn, text_bytes("gw.example.org")};
  Bytes octets = signed_octets(text_bytes("MESSAGE"), text_bytes("NONCE"), prf, sk_p, id);
  Bytes rest{id_type::kFqdn, 0, 0, 0};
  rest.insert(rest.end(), id.data.begin(), id.data.end());
  SecretBytes mac = prf.compute(sk_p.span(), rest);
  Bytes expected = text_bytes("MESSAGENONCE");
  expected.insert(expected.end(), mac.data(), mac.data() + mac.size());
  EXPECT_EQ(octets, expected);
}

TEST(PskAuth, KnownAnswerAndMismatch) {
  // python3: hmac(hmac(psk, b"Key Pad for IKEv2", sha256).digest(), bytes(range(64)), sha256)
  const Prf prf(prf::kHmacSha256);
  Bytes octets(64);
  for (std::size_t i = 0; i < octets.size(); ++i) octets[i] = static_cast<std::uint8_t>(i);
  LocalCredentials local;
  local.psk = SecretBytes(text_bytes("tapsec-psk-secret"));
  AuthenticationPayload auth = must_auth(local, prf, octets, {});
  EXPECT_EQ(auth.method, auth_method::kSharedKey);
  EXPECT_EQ(to_hex(auth.data), "d277e39b11a94f3842da8f5875a4c7b5480f7697c84ee2b290475544c44c0eca");

  PeerRequirements peer;
  peer.psk = local.psk;
  PeerAuthResult ok = verify_auth(peer, kFqdn, auth, {}, prf, octets);
  EXPECT_TRUE(ok.ok) << ok.failure;
  EXPECT_EQ(ok.peer_description, "psk:gw.example.org");

  peer.psk = SecretBytes(text_bytes("another secret"));
  PeerAuthResult wrong = verify_auth(peer, kFqdn, auth, {}, prf, octets);
  EXPECT_FALSE(wrong.ok);
  EXPECT_EQ(wrong.failure, "AUTH mismatch for PSK");

  peer.psk = local.psk;
  peer.expected_id = id_of(id_type::kFqdn, "other.example.org");
  PeerAuthResult unexpected = verify_auth(peer, kFqdn, auth, {}, prf, octets);
  EXPECT_FALSE(unexpected.ok);
  EXPECT_NE(unexpected.failure.find("not the expected"), std::string::npos) << unexpected.failure;

  peer.expected_id.reset();
  AuthenticationPayload signature_auth{auth_method::kRsaSignature, auth.data};
  EXPECT_FALSE(verify_auth(peer, kFqdn, signature_auth, {}, prf, octets).ok);
  LocalCredentials no_psk;
  EXPECT_TRUE(std::holds_alternative<std::string>(make_auth(no_psk, prf, octets, {})));
}

TEST(SignatureAuth, RefusesKeysOfOtherCurves) {
  LocalCredentials local;
  local.method = LocalCredentials::Method::Signature;
  local.private_key = PrivateKey(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "secp256k1"), EvpPkeyFree{});
  ASSERT_TRUE(local.private_key);
  auto result = make_auth(local, Prf(prf::kHmacSha256), Bytes(10, 1), {});
  ASSERT_TRUE(std::holds_alternative<std::string>(result));
  EXPECT_NE(std::get<std::string>(result).find("neither RSA nor ECDSA"), std::string::npos);
}

TEST(SupportedHashes, AnnounceSha2) { EXPECT_EQ(to_hex(supported_signature_hashes()), "000200030004"); }

struct MethodCase {
  const char* key_kind;
  Bytes peer_hashes;
  std::uint8_t expected_method;
  const char* expected_identifier;  // RFC 7427 Appendix A, checked with `openssl asn1parse`
};

TEST(SignatureAuth, EveryMethodSignsAndVerifies) {
  const Bytes all = supported_signature_hashes();
  const Bytes only_sha512 = from_hex("0004");
  const Bytes only_sha384 = from_hex("0003");
  const std::vector<MethodCase> cases{
      {"rsa", {}, auth_method::kRsaSignature, ""},
      {"rsa", all, auth_method::kDigitalSignature, "300d06092a864886f70d01010b0500"},
      {"rsa", only_sha384, auth_method::kDigitalSignature, "300d06092a864886f70d01010c0500"},
      {"rsa", only_sha512, auth_method::kDigitalSignature, "300d06092a864886f70d01010d0500"},
      {"p256", {}, auth_method::kEcdsaSha256P256, ""},
      {"p256", all, auth_method::kDigitalSignature, "300a06082a8648ce3d040302"},
      {"p256", only_sha512, auth_method::kDigitalSignature, "300a06082a8648ce3d040304"},
      {"p384", {}, auth_method::kEcdsaSha384P384, ""},
      {"p384", all, auth_method::kDigitalSignature, "300a06082a8648ce3d040303"},
      {"rsa", from_hex("0001"), auth_method::kRsaSignature, ""},  // only SHA-1 offered: classic method
  };
  const Prf prf(prf::kHmacSha384);
  const Bytes octets = random_bytes(200);
  std::map<std::string, std::shared_ptr<Pki>> pkis;
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.key_kind) + " hashes=" + to_hex(c.peer_hashes));
    auto& pki = pkis[c.key_kind];
    if (!pki) pki = std::make_shared<Pki>(c.key_kind);
    AuthenticationPayload auth = must_auth(pki->credentials(), prf, octets, c.peer_hashes);
    EXPECT_EQ(auth.method, c.expected_method);
    if (c.expected_method == auth_method::kDigitalSignature) {
      ASSERT_FALSE(auth.data.empty());
      const std::size_t length = auth.data[0];
      EXPECT_EQ(to_hex(std::span(auth.data).subspan(1, length)), c.expected_identifier);
    }
    if (c.expected_method == auth_method::kEcdsaSha256P256) {
      EXPECT_EQ(auth.data.size(), 64u);
    }
    if (c.expected_method == auth_method::kEcdsaSha384P384) {
      EXPECT_EQ(auth.data.size(), 96u);
    }

    const PeerRequirements peer = pki->requirements();
    PeerAuthResult result = verify_auth(peer, kFqdn, auth, pki->chain, prf, octets);
    EXPECT_TRUE(result.ok) << result.failure;
    EXPECT_NE(result.peer_description.find("CN=gw.example.org"), std::string::npos) << result.peer_description;

    Bytes other_octets = octets;
    other_octets[17] ^= 1;
    PeerAuthResult forged = verify_auth(peer, kFqdn, auth, pki->chain, prf, other_octets);
    EXPECT_FALSE(forged.ok);
    EXPECT_NE(forged.failure.find("signature verification failed"), std::string::npos) << forged.failure;
  }
}

TEST(SignatureAuth, IdentityMatching) {
  Pki pki("p256");
  const Prf prf(prf::kHmacSha256);
  const Bytes octets = random_bytes(64);
  AuthenticationPayload auth = must_auth(pki.credentials(), prf, octets, supported_signature_hashes());
  const PeerRequirements peer = pki.requirements();

  const Bytes ipv4 = from_hex("c0000201");
  const Bytes ipv6 = from_hex("20010db8000000000000000000000001");
  const std::vector<Identification> proven{
      kFqdn,
      id_of(id_type::kFqdn, "GW.Example.ORG"),
      id_of(id_type::kRfc822, "gw@example.org"),
      Identification{id_type::kIpv4, ipv4},
      Identification{id_type::kIpv6, ipv6},
      *subject_identification(pki.chain.front()),
  };
  for (const auto& id : proven) {
    PeerAuthResult result = verify_auth(peer, id, auth, pki.chain, prf, octets);
    EXPECT_TRUE(result.ok) << id.to_string() << ": " << result.failure;
  }

  PeerAuthResult wrong = verify_auth(peer, id_of(id_type::kFqdn, "other.example.org"), auth, pki.chain, prf, octets);
  EXPECT_FALSE(wrong.ok);
  EXPECT_EQ(wrong.failure, "ID fqdn:other.example.org not in the certificate");
  const std::vector<Identification> unproven{
      id_of(id_type::kRfc822, "other@example.org"),
      Identification{id_type::kIpv4, from_hex("c0000202")},
      subject_identification(pki.chain[1]).value(),  // the intermediate's DN
      id_of(id_type::kKeyId, "abc"),
      id_of(id_type::kFqdn, "gw@example.org"),  // an e-mail SAN is no dNSName
  };
  for (const auto& id : unproven) {
    PeerAuthResult result = verify_auth(peer, id, auth, pki.chain, prf, octets);
    EXPECT_FALSE(result.ok) << id.to_string();
    EXPECT_NE(result.failure.find("not in the certificate"), std::string::npos) << result.failure;
  }

  PeerRequirements expecting = peer;
  expecting.expected_id = id_of(id_type::kRfc822, "gw@example.org");
  EXPECT_FALSE(verify_auth(expecting, kFqdn, auth, pki.chain, prf, octets).ok);
  EXPECT_TRUE(verify_auth(expecting, *expecting.expected_id, auth, pki.chain, prf, octets).ok);
}

TEST(SignatureAuth, ChainFailures) {
  Pki pki("rsa");
  Pki stranger("rsa");
  const Prf prf(prf::kHmacSha256);
  const Bytes octets = random_bytes(64);
  AuthenticationPayload auth = must_auth(pki.credentials(), prf, octets, supported_signature_hashes());

  PeerAuthResult wrong_anchor = verify_auth(stranger.requirements(), kFqdn, auth, pki.chain, prf, octets);
  EXPECT_FALSE(wrong_anchor.ok);
  EXPECT_EQ(wrong_anchor.failure, "certificate chain: unable to get local issuer certificate");

  PeerAuthResult missing_intermediate =
      verify_auth(pki.requirements(), kFqdn, auth, {pki.chain.front()}, prf, octets);
  EXPECT_FALSE(missing_intermediate.ok);
  EXPECT_EQ(missing_intermediate.failure, "certificate chain: unable to get local issuer certificate");

  Pki expired("p256", -1);
  AuthenticationPayload expired_auth = must_auth(expired.credentials(), prf, octets, supported_signature_hashes());
  PeerAuthResult too_old = verify_auth(expired.requirements(), kFqdn, expired_auth, expired.chain, prf, octets);
  EXPECT_FALSE(too_old.ok);
  EXPECT_EQ(too_old.failure, "certificate chain: certificate has expired");

  EXPECT_FALSE(verify_auth(pki.requirements(), kFqdn, auth, {}, prf, octets).ok);
  EXPECT_FALSE(verify_auth(pki.requirements(), kFqdn, auth, {Bytes{0x30, 0x03, 0x02}}, prf, octets).ok);
  AuthenticationPayload psk_auth{auth_method::kSharedKey, Bytes(32, 1)};
  EXPECT_FALSE(verify_auth(pki.requirements(), kFqdn, psk_auth, pki.chain, prf, octets).ok);
  // A signature made by another key of the right type.
  AuthenticationPayload stranger_auth =
      must_auth(stranger.credentials(), prf, octets, supported_signature_hashes());
  PeerAuthResult forged = verify_auth(pki.requirements(), kFqdn, stranger_auth, pki.chain, prf, octets);
  EXPECT_FALSE(forged.ok);
  // ECDSA method against an RSA certificate.
  AuthenticationPayload wrong_method{auth_method::kEcdsaSha256P256, Bytes(64, 1)};
  EXPECT_FALSE(verify_auth(pki.requirements(), kFqdn, wrong_method, pki.chain, prf, octets).ok);
  AuthenticationPayload truncated{auth_method::kDigitalSignature, Bytes{15, 0x30, 0x0d}};
  EXPECT_FALSE(verify_auth(pki.requirements(), kFqdn, truncated, pki.chain, prf, octets).ok);
}

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/tapsec-ikev2-auth-XXXXXX";
    path_ = mkdtemp(pattern);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

void write_pem(const std::string& path, X509* certificate) {
  BIO* bio = BIO_new_file(path.c_str(), "a");
  PEM_write_bio_X509(bio, certificate);
  BIO_free(bio);
}

// Key, certificate and trust anchor files go through the agent's file
// checks (agent/core/trusted_file.h): a secret only its owner may read,
// nothing writable by others, owned by root or the agent.
TEST(PemLoading, FilesOthersControlAreRefused) {
  TempDir dir;
  Pki pki("p256");
  write_pem(dir.file("chain.pem"), pki.leaf.get());
  write_pem(dir.file("root.pem"), pki.root.get());
  {
    BIO* bio = BIO_new_file(dir.file("key.pem").c_str(), "w");
    PEM_write_bio_PrivateKey(bio, pki.leaf_key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    BIO_free(bio);
  }
  ::chmod(dir.file("key.pem").c_str(), 0640);
  auto key = load_private_key(dir.file("key.pem"));
  ASSERT_TRUE(std::holds_alternative<std::string>(key));
  EXPECT_EQ(std::get<std::string>(key), "private key file " + dir.file("key.pem") +
                                            " has mode 0640 and holds a private key: run \"chmod 0600 " +
                                            dir.file("key.pem") + "\"");
  ::chmod(dir.file("root.pem").c_str(), 0666);
  auto anchors = load_trust_anchors({dir.file("root.pem")}, false);
  ASSERT_TRUE(std::holds_alternative<std::string>(anchors));
  EXPECT_NE(std::get<std::string>(anchors).find("trust store file " + dir.file("root.pem") +
                                                " has mode 0666 and is writable by its group and every user"),
            std::string::npos)
      << std::get<std::string>(anchors);
  if (::geteuid() != 0) GTEST_SKIP() << "SKIPPED LOUDLY: changing a file's owner needs root";
  ASSERT_EQ(::chown(dir.file("chain.pem").c_str(), 4242, 4242), 0);
  auto chain = load_certificate_chain(dir.file("chain.pem"));
  ASSERT_TRUE(std::holds_alternative<std::string>(chain));
  EXPECT_EQ(std::get<std::string>(chain), "certificate file " + dir.file("chain.pem") +
                                              " is owned by uid 4242: run \"chown root:root " +
                                              dir.file("chain.pem") + "\"");
}

TEST(PemLoading, KeysChainsAndAnchors) {
  TempDir dir;
  Pki pki("p384");
  write_pem(dir.file("chain.pem"), pki.leaf.get());
  write_pem(dir.file("chain.pem"), pki.intermediate.get());
  write_pem(dir.file("root.pem"), pki.root.get());
  {
    BIO* bio = BIO_new_file(dir.file("key.pem").c_str(), "w");
    PEM_write_bio_PrivateKey(bio, pki.leaf_key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    BIO_free(bio);
  }
  ::chmod(dir.file("key.pem").c_str(), 0600);  // a private key readable by others is refused

  auto key = load_private_key(dir.file("key.pem"));
  ASSERT_TRUE(std::holds_alternative<PrivateKey>(key)) << std::get<std::string>(key);
  auto chain = load_certificate_chain(dir.file("chain.pem"));
  ASSERT_TRUE(std::holds_alternative<std::vector<Bytes>>(chain)) << std::get<std::string>(chain);
  EXPECT_EQ(std::get<std::vector<Bytes>>(chain), pki.chain);
  auto anchors = load_trust_anchors({dir.file("root.pem"), dir.file("root.pem")}, false);
  ASSERT_TRUE(std::holds_alternative<TrustAnchors>(anchors)) << std::get<std::string>(anchors);

  LocalCredentials local;
  local.method = LocalCredentials::Method::Signature;
  local.private_key = std::get<PrivateKey>(key);
  local.certificate_chain = std::get<std::vector<Bytes>>(chain);
  const Prf prf(prf::kHmacSha512);
  const Bytes octets = random_bytes(80);
  AuthenticationPayload auth = must_auth(local, prf, octets, {});
  EXPECT_EQ(auth.method, auth_method::kEcdsaSha384P384);
  PeerRequirements peer;
  peer.method = PeerRequirements::Method::Signature;
  peer.anchors = std::get<TrustAnchors>(anchors);
  PeerAuthResult result = verify_auth(peer, kFqdn, auth, local.certificate_chain, prf, octets);
  EXPECT_TRUE(result.ok) << result.failure;

  auto with_system = load_trust_anchors({dir.file("root.pem")}, true);
  EXPECT_TRUE(std::holds_alternative<TrustAnchors>(with_system));

  EXPECT_TRUE(std::holds_alternative<std::string>(load_private_key(dir.file("missing.pem"))));
  EXPECT_TRUE(std::holds_alternative<std::string>(load_private_key(dir.file("root.pem"))));
  EXPECT_TRUE(std::holds_alternative<std::string>(load_certificate_chain(dir.file("key.pem"))));
  auto no_anchor = load_trust_anchors({dir.file("missing.pem")}, false);
  ASSERT_TRUE(std::holds_alternative<std::string>(no_anchor));
  EXPECT_NE(std::get<std::string>(no_anchor).find("missing.pem"), std::string::npos);
}

TEST(SubjectIdentification, IsTheDerSubject) {
  Pki pki("p256");
  auto id = subject_identification(pki.chain.front());
  ASSERT_TRUE(id);
  EXPECT_EQ(id->type, id_type::kDerAsn1Dn);
  unsigned char* der = nullptr;
  int length = i2d_X509_NAME(X509_get_subject_name(pki.leaf.get()), &der);
  EXPECT_EQ(id->data, Bytes(der, der + length));
  OPENSSL_free(der);
  EXPECT_FALSE(subject_identification(Bytes{1, 2, 3}));
}

// Certificates issued by strongSwan's own `pki` tool: what a strongSwan peer
// would present and trust.
TEST(StrongSwanInterop, PkiCertificatesLoadAndVerify) {
  if (system("command -v pki >/dev/null 2>&1") != 0) {
    std::cerr << "*** SKIPPED: strongSwan's pki tool is not installed ***\n";
    GTEST_SKIP() << "strongSwan pki tool not installed";
  }
  TempDir dir;
  const std::string script =
      "set -e; umask 077; cd '" + dir.file("") +
      "'; "
      "pki --gen --type ecdsa --size 384 --outform pem > ca.key; "
      "pki --self --ca --lifetime 30 --in ca.key --type ecdsa --dn 'C=CH, O=tapsec, CN=tapsec pki CA' "
      "--outform pem > ca.crt; "
      "pki --gen --type rsa --size 2048 --outform pem > gw.key; "
      "pki --pub --in gw.key --type rsa | pki --issue --lifetime 30 --cacert ca.crt --cakey ca.key "
      "--dn 'C=CH, O=tapsec, CN=gw.example.org' --san gw.example.org --san 192.0.2.1 --san gw@example.org "
      "--outform pem > gw.crt; "
      "pki --gen --type ecdsa --size 256 --outform pem > ec.key; "
      "pki --pub --in ec.key --type ecdsa | pki --issue --lifetime 30 --cacert ca.crt --cakey ca.key "
      "--dn 'C=CH, O=tapsec, CN=ec.example.org' --san ec.example.org --outform pem > ec.crt";
  ASSERT_EQ(system(("sh -c \"" + script + "\" 2>" + dir.file("pki.log")).c_str()), 0)
      << std::ifstream(dir.file("pki.log")).rdbuf();

  auto anchors = load_trust_anchors({dir.file("ca.crt")}, false);
  ASSERT_TRUE(std::holds_alternative<TrustAnchors>(anchors)) << std::get<std::string>(anchors);
  PeerRequirements peer;
  peer.method = PeerRequirements::Method::Signature;
  peer.anchors = std::get<TrustAnchors>(anchors);
  const Prf prf(prf::kHmacSha256);
  const Bytes octets = random_bytes(120);

  struct Identity {
    const char* stem;
    std::vector<Identification> ids;
  };
  auto dn = Identification::parse("C=CH, O=tapsec, CN=gw.example.org");
  ASSERT_TRUE(dn);
  EXPECT_EQ(dn->type, id_type::kDerAsn1Dn);
  const std::vector<Identity> identities{
      {"gw", {kFqdn, Identification{id_type::kIpv4, from_hex("c0000201")}, id_of(id_type::kRfc822, "gw@example.org"),
              *dn}},
      {"ec", {id_of(id_type::kFqdn, "ec.example.org")}},
  };
  for (const auto& identity : identities) {
    auto key = load_private_key(dir.file(std::string(identity.stem) + ".key"));
    ASSERT_TRUE(std::holds_alternative<PrivateKey>(key)) << std::get<std::string>(key);
    auto chain = load_certificate_chain(dir.file(std::string(identity.stem) + ".crt"));
    ASSERT_TRUE(std::holds_alternative<std::vector<Bytes>>(chain)) << std::get<std::string>(chain);
    LocalCredentials local;
    local.method = LocalCredentials::Method::Signature;
    local.private_key = std::get<PrivateKey>(key);
    local.certificate_chain = std::get<std::vector<Bytes>>(chain);
    for (const Bytes& hashes : {Bytes{}, supported_signature_hashes()}) {
      AuthenticationPayload auth = must_auth(local, prf, octets, hashes);
      for (const auto& id : identity.ids) {
        PeerAuthResult result = verify_auth(peer, id, auth, local.certificate_chain, prf, octets);
        EXPECT_TRUE(result.ok) << identity.stem << " " << id.to_string() << ": " << result.failure;
      }
      PeerAuthResult wrong =
          verify_auth(peer, id_of(id_type::kFqdn, "x.example.org"), auth, local.certificate_chain, prf, octets);
      EXPECT_EQ(wrong.failure, "ID fqdn:x.example.org not in the certificate");
    }
  }
}

}  // namespace
}  // namespace tapsec::ikev2
