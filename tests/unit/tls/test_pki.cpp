#include "tests/unit/tls/test_pki.h"

#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace tapsec::tls::testing {
namespace {

void run(const std::string& command) {
  const std::string quiet = command + " >/dev/null 2>&1";
  if (std::system(quiet.c_str()) != 0) throw std::runtime_error("test PKI command failed: " + command);
}

std::shared_ptr<Credentials> load(const std::string& name, const std::string& pem, const std::string& key) {
  auto loaded = Credentials::load(name, pem, key);
  if (auto* error = std::get_if<std::string>(&loaded)) throw std::runtime_error(*error);
  return std::get<std::shared_ptr<Credentials>>(loaded);
}

TestPki make_pki() {
  if (std::system("command -v openssl >/dev/null 2>&1") != 0) {
    std::fprintf(stderr, "SKIPPED: the openssl command is needed to generate test certificates\n");
    std::exit(77);
  }
  char dir_template[] = "/tmp/tapsec-tls-test-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) throw std::runtime_error("mkdtemp failed");
  TestPki p;
  p.dir = dir_template;
  const std::string d = p.dir + "/";
  {
    std::ofstream ext(d + "ext.cnf");
    ext << "[server]\nsubjectAltName=DNS:server.test\nbasicConstraints=CA:FALSE\n"
           "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
           "[client]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";
  }
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
  run("openssl req -x509 " + ec + " -keyout " + d + "ca.key -out " + d + "ca.pem -subj '/CN=tapsec test CA' -days 2");
  run("openssl req -x509 " + ec + " -keyout " + d + "other-ca.key -out " + d +
      "other-ca.pem -subj '/CN=tapsec other CA' -days 2");
  auto issue = [&](const std::string& name, const std::string& key_options, const std::string& subject,
                   const std::string& section) {
    run("openssl req -new " + key_options + " -keyout " + d + name + ".key -out " + d + name + ".csr -subj '" +
        subject + "'");
    run("openssl x509 -req -in " + d + name + ".csr -CA " + d + "ca.pem -CAkey " + d + "ca.key -CAcreateserial -out " +
        d + name + ".pem -days 2 -extfile " + d + "ext.cnf -extensions " + section);
  };
  issue("server-ec", ec, "/CN=server.test/O=tapsec tests", "server");
  issue("server-rsa", "-newkey rsa:2048 -nodes", "/CN=server.test/O=tapsec tests", "server");
  issue("client", ec, "/CN=client.test/O=tapsec tests", "client");

  p.ca_pem = d + "ca.pem";
  p.other_ca_pem = d + "other-ca.pem";
  p.server_ec_pem = d + "server-ec.pem";
  p.server_ec_key = d + "server-ec.key";
  p.server_rsa_pem = d + "server-rsa.pem";
  p.server_rsa_key = d + "server-rsa.key";
  p.client_pem = d + "client.pem";
  p.client_key = d + "client.key";
  p.server_ec = load("server-ec", p.server_ec_pem, p.server_ec_key);
  p.server_rsa = load("server-rsa", p.server_rsa_pem, p.server_rsa_key);
  p.client = load("client", p.client_pem, p.client_key);
  return p;
}

struct PkiHolder {
  TestPki pki = make_pki();
  ~PkiHolder() {
    std::error_code ignored;
    std::filesystem::remove_all(pki.dir, ignored);
  }
};

X509* read_certificate(const std::string& pem_path) {
  FILE* file = std::fopen(pem_path.c_str(), "r");
  if (file == nullptr) throw std::runtime_error("cannot open " + pem_path);
  X509* certificate = PEM_read_X509(file, nullptr, nullptr, nullptr);
  std::fclose(file);
  if (certificate == nullptr) throw std::runtime_error("no certificate in " + pem_path);
  return certificate;
}

}  // namespace

const TestPki& pki() {
  static PkiHolder holder;
  return holder.pki;
}

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::uint8_t> certificate_der(const std::string& pem_path) {
  X509* certificate = read_certificate(pem_path);
  unsigned char* der = nullptr;
  const int length = i2d_X509(certificate, &der);
  std::vector<std::uint8_t> out(der, der + length);
  OPENSSL_free(der);
  X509_free(certificate);
  return out;
}

std::array<std::uint8_t, 32> spki_sha256(const std::string& pem_path) {
  X509* certificate = read_certificate(pem_path);
  unsigned char* der = nullptr;
  const int length = i2d_PUBKEY(X509_get0_pubkey(certificate), &der);
  std::array<std::uint8_t, 32> digest{};
  SHA256(der, static_cast<std::size_t>(length), digest.data());
  OPENSSL_free(der);
  X509_free(certificate);
  return digest;
}

}  // namespace tapsec::tls::testing
