#include "tests/fuzz/tls/throwaway_identity.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <variant>

namespace tapsec::tls::fuzz {

std::shared_ptr<Credentials> throwaway_identity() {
  char dir_template[] = "/tmp/tapsec-tls-fuzz-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) abort();
  const std::string dir = dir_template;
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* certificate = X509_new();
  X509_set_version(certificate, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(certificate), 1);
  X509_gmtime_adj(X509_getm_notBefore(certificate), 0);
  X509_gmtime_adj(X509_getm_notAfter(certificate), 86400);
  X509_set_pubkey(certificate, key);
  X509_NAME* name = X509_get_subject_name(certificate);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("fuzz.test"), -1, -1, 0);
  X509_set_issuer_name(certificate, name);
  if (X509_sign(certificate, key, EVP_sha256()) <= 0) abort();
  const std::string cert_path = dir + "/cert.pem", key_path = dir + "/key.pem";
  FILE* cert_file = std::fopen(cert_path.c_str(), "w");
  FILE* key_file = std::fopen(key_path.c_str(), "w");
  if (!cert_file || !key_file) abort();
  PEM_write_X509(cert_file, certificate);
  PEM_write_PrivateKey(key_file, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(cert_file);
  std::fclose(key_file);
  chmod(key_path.c_str(), 0600);  // the agent refuses a private key others may read
  X509_free(certificate);
  EVP_PKEY_free(key);
  auto loaded = Credentials::load("fuzz", cert_path, key_path);
  std::remove(cert_path.c_str());
  std::remove(key_path.c_str());
  std::remove(dir.c_str());
  if (!std::holds_alternative<std::shared_ptr<Credentials>>(loaded)) abort();
  return std::get<std::shared_ptr<Credentials>>(loaded);
}

}  // namespace tapsec::tls::fuzz
