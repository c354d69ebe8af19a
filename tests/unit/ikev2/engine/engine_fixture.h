// Configs and credentials for the engine tests: PSK ends, and a test PKI
// (root, intermediate, leaves with dNSName SANs) made with OpenSSL in memory.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

#include "tests/unit/ikev2/engine/engine_harness.h"

namespace tapsec::ikev2::test {

struct X509Deleter {
  void operator()(X509* certificate) const { X509_free(certificate); }
};
using X509Handle = std::unique_ptr<X509, X509Deleter>;

enum class KeyKind { Rsa2048, Rsa4096, EcdsaP256, EcdsaP384 };

inline PrivateKey generate_key(KeyKind kind) {
  EVP_PKEY* key = nullptr;
  switch (kind) {
    case KeyKind::Rsa2048: key = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(2048)); break;
    case KeyKind::Rsa4096: key = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<std::size_t>(4096)); break;
    case KeyKind::EcdsaP256: key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"); break;
    case KeyKind::EcdsaP384: key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384"); break;
  }
  return PrivateKey(key, EvpPkeyFree{});
}

// Signs a certificate for `key` named CN=<common_name>; self-signed when
// issuer is null. `dns_name` non-empty: a leaf with that dNSName.
inline X509Handle issue(const std::string& common_name, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key,
                        bool ca, const std::string& dns_name = {}) {
  static long serial = 1000;
  X509Handle cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400L * 30);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("tapsec engine test"),
                             -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0);
  X509* signer = issuer ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  auto extend = [&](int nid, const std::string& value) {
    X509V3_CTX context;
    X509V3_set_ctx(&context, signer, cert.get(), nullptr, nullptr, 0);
    X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value.c_str());
    if (extension) {
      X509_add_ext(cert.get(), extension, -1);
      X509_EXTENSION_free(extension);
    }
  };
  extend(NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  extend(NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  extend(NID_subject_key_identifier, "hash");
  if (!dns_name.empty()) extend(NID_subject_alt_name, "DNS:" + dns_name);
  X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256());
  return cert;
}

inline Bytes der(X509* certificate) {
  unsigned char* out = nullptr;
  const int length = i2d_X509(certificate, &out);
  Bytes bytes(out, out + std::max(length, 0));
  OPENSSL_free(out);
  return bytes;
}

// One root and intermediate; leaves for any name under them.
struct TestPki {
  PrivateKey root_key, intermediate_key;
  X509Handle root, intermediate;
  KeyKind leaf_kind;

  explicit TestPki(KeyKind kind, KeyKind leaf = KeyKind::EcdsaP256) : leaf_kind(leaf) {
    root_key = generate_key(kind);
    intermediate_key = generate_key(kind);
    root = issue("tapsec test root", root_key.get(), nullptr, nullptr, true);
    intermediate = issue("tapsec test intermediate", intermediate_key.get(), root.get(), root_key.get(), true);
  }
  TrustAnchors anchors() const {
    TrustAnchors store(X509_STORE_new(), X509StoreFree{});
    X509_STORE_add_cert(store.get(), root.get());
    return store;
  }
  LocalCredentials leaf(const std::string& dns_name) const {
    LocalCredentials credentials;
    credentials.method = LocalCredentials::Method::Signature;
    credentials.private_key = generate_key(leaf_kind);
    X509Handle cert = issue(dns_name, credentials.private_key.get(), intermediate.get(), intermediate_key.get(),
                            false, dns_name);
    credentials.certificate_chain = {der(cert.get()), der(intermediate.get())};
    return credentials;
  }
};

// Signature authentication under `pki`; leaves are made unless given.
inline void use_certificates(Ends& ends, const TestPki& pki, const LocalCredentials* a = nullptr,
                             const LocalCredentials* b = nullptr) {
  for (auto [config, name, given] : {std::tuple{ends.a, "a.example", a}, std::tuple{ends.b, "b.example", b}}) {
    config->local_credentials = given ? *given : pki.leaf(name);
    config->peer.method = PeerRequirements::Method::Signature;
    config->peer.psk = SecretBytes();
    config->peer.anchors = pki.anchors();
  }
}

// The engines, connected: a initiates to b.
class EngineTest : public ::testing::Test {
 protected:
  Network net;
  Ends ends = psk_ends();
  IkeEngine::Options b_options;
  IkeSaId a_sa = 0;

  void start() {
    net.a.create();
    net.b.create(b_options);
    net.b.selector->config = ends.b;
  }
  IkeSaId connect() {
    if (!net.a.engine) start();
    a_sa = net.a.engine->initiate(ends.a, net.a.endpoint(), net.b.endpoint(), net.now);
    net.run();
    return a_sa;
  }
  IkeSaId b_sa() const {
    auto ups = net.b.all<IkeSaUp>();
    return ups.empty() ? 0 : ups.back().ike_sa;
  }
  ChildSaId a_child() const { return net.a.engine->sa(a_sa)->children.at(0).id; }
  ChildSaId b_child() const { return net.b.engine->sa(b_sa())->children.at(0).id; }
  void expect_established() {
    ASSERT_EQ(net.a.count<IkeSaUp>(), 1u) << ::testing::PrintToString(net.a.down_reasons());
    ASSERT_EQ(net.b.count<IkeSaUp>(), 1u) << ::testing::PrintToString(net.b.down_reasons());
    EXPECT_EQ(net.a.count<IkeSaDown>(), 0u);
    EXPECT_EQ(net.b.count<IkeSaDown>(), 0u);
  }
};

}  // namespace tapsec::ikev2::test
