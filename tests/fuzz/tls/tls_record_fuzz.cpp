// libFuzzer target for the TLS engine's record intake: the input is split
// into records with complete_record_length() and fed one by one to a
// server Session (first byte even) or to a client Session that has sent
// its ClientHello (first byte odd). Every outcome but a crash is fine; the
// engine must never read past a record or accept a non-record.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>

#include "agent/engines/tls/tls_engine.h"

namespace {

using tapsec::tls::Credentials;
using tapsec::tls::Session;
using tapsec::tls::Settings;

// A throwaway self-signed identity for the fuzzed server.
std::shared_ptr<Credentials> make_identity() {
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

Settings server_settings() {
  static const std::shared_ptr<Credentials> identity = make_identity();
  Settings settings;
  settings.role = tapsec::tls::Role::Server;
  settings.credentials = identity;
  settings.alpn = {"h2"};
  return settings;
}

Settings client_settings() {
  Settings settings;
  settings.role = tapsec::tls::Role::Client;
  settings.server_name = "fuzz.test";
  settings.peer_validation = tapsec::tls::PeerValidation::None;
  return settings;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool client = data[0] & 1;
  std::span<const std::uint8_t> input(data + 1, size - 1);

  auto created = Session::create(client ? client_settings() : server_settings());
  if (!std::holds_alternative<std::unique_ptr<Session>>(created)) abort();
  auto& session = std::get<std::unique_ptr<Session>>(created);
  session->start();
  (void)session->take_output();

  while (!input.empty()) {
    std::string error;
    const auto length = Session::complete_record_length(input, &error);
    if (!length) {
      // Not a whole record: the engine must refuse it, not crash.
      if (session->feed_record(input) != Session::Status::Failed) abort();
      break;
    }
    if (*length < 5 || *length > input.size() || !error.empty()) abort();
    const auto status = session->feed_record(input.first(*length));
    (void)session->take_output();
    (void)session->info();
    if (status == Session::Status::Failed) {
      if (session->error().empty()) abort();
      break;
    }
    if (status == Session::Status::Established) (void)session->tx_keys();
    input = input.subspan(*length);
  }
  return 0;
}
