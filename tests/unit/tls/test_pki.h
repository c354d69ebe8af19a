// Test certificates generated at test time with the openssl command line
// into a private temporary directory: a CA, server certificates for
// "server.test" (ECDSA P-256 and RSA 2048) and a client certificate.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agent/engines/tls/tls_engine.h"

namespace tapsec::tls::testing {

struct TestPki {
  std::string dir;
  std::string ca_pem;
  std::string server_ec_pem, server_ec_key;
  std::string server_rsa_pem, server_rsa_key;
  std::string client_pem, client_key;
  std::string other_ca_pem;  // a CA that signed nothing here

  std::shared_ptr<Credentials> server_ec;
  std::shared_ptr<Credentials> server_rsa;
  std::shared_ptr<Credentials> client;
};

// Created once per test binary; exits with 77 (skip) if the openssl command
// is missing.
const TestPki& pki();

std::vector<std::uint8_t> read_file(const std::string& path);
// DER of the first certificate in a PEM file.
std::vector<std::uint8_t> certificate_der(const std::string& pem_path);
// SHA-256 of the SubjectPublicKeyInfo of the first certificate in a PEM file.
std::array<std::uint8_t, 32> spki_sha256(const std::string& pem_path);

}  // namespace tapsec::tls::testing
