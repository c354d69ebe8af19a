#include <openssl/crypto.h>
#include <openssl/pem.h>

#include "agent/core/trusted_pem.h"
#include "agent/engines/tls/openssl_ptr.h"
#include "agent/engines/tls/tls_engine.h"

namespace tapsec::tls {

using detail::BioPtr;
using detail::EvpPkeyPtr;
using detail::X509Ptr;
using detail::X509StackPtr;

std::variant<std::shared_ptr<Credentials>, std::string> Credentials::load(std::string name,
                                                                         const std::string& cert_chain_pem_path,
                                                                         const std::string& key_pem_path) {
  ERR_clear_error();
  X509Ptr leaf;
  X509StackPtr intermediates(sk_X509_new_null());
  if (!intermediates) return "identity '" + name + "': out of memory";
  std::string problem = core::parse_trusted_pem(cert_chain_pem_path, core::kCertificateFile, [&](BIO* chain_file) {
    leaf.reset(PEM_read_bio_X509(chain_file, nullptr, nullptr, nullptr));
    if (!leaf) return "no PEM certificate in " + cert_chain_pem_path;
    while (X509* next = PEM_read_bio_X509(chain_file, nullptr, nullptr, nullptr)) {
      if (!sk_X509_push(intermediates.get(), next)) {
        X509_free(next);
        return std::string("out of memory");
      }
    }
    ERR_clear_error();  // the loop above ends on a "no start line" error
    return std::string();
  });
  if (!problem.empty()) return "identity '" + name + "': " + problem;

  EvpPkeyPtr key;
  problem = core::parse_trusted_pem(key_pem_path, core::kPrivateKeyFile, [&](BIO* key_file) {
    // A null password callback with an empty password: encrypted keys fail cleanly.
    key.reset(PEM_read_bio_PrivateKey(key_file, nullptr, nullptr, const_cast<char*>("")));
    return key ? std::string() : "no usable PEM private key in " + key_pem_path;
  });
  if (!problem.empty()) return "identity '" + name + "': " + problem;
  if (X509_check_private_key(leaf.get(), key.get()) != 1) {
    ERR_clear_error();
    return "identity '" + name + "': private key does not match the certificate";
  }

  std::shared_ptr<Credentials> credentials(new Credentials());
  credentials->name_ = std::move(name);
  credentials->leaf_ = leaf.release();
  credentials->intermediates_ = intermediates.release();
  credentials->private_key_ = key.release();
  return credentials;
}

Credentials::~Credentials() {
  X509_free(leaf_);
  sk_X509_pop_free(intermediates_, X509_free);
  EVP_PKEY_free(private_key_);  // EVP_PKEY_free clears key material
}

std::string Credentials::subject() const {
  BioPtr out(BIO_new(BIO_s_mem()));
  if (!out || X509_NAME_print_ex(out.get(), X509_get_subject_name(leaf_), 0, XN_FLAG_RFC2253) < 0) return {};
  char* data = nullptr;
  const long length = BIO_get_mem_data(out.get(), &data);
  return std::string(data, static_cast<std::size_t>(length));
}

namespace {
std::vector<std::uint8_t> to_der(X509* certificate) {
  unsigned char* der = nullptr;
  const int length = i2d_X509(certificate, &der);
  if (length <= 0) return {};
  std::vector<std::uint8_t> out(der, der + length);
  OPENSSL_free(der);
  return out;
}
}  // namespace

std::vector<std::vector<std::uint8_t>> Credentials::chain_der() const {
  std::vector<std::vector<std::uint8_t>> chain{to_der(leaf_)};
  for (int i = 0; i < sk_X509_num(intermediates_); ++i) chain.push_back(to_der(sk_X509_value(intermediates_, i)));
  return chain;
}

ExternalPsk::~ExternalPsk() {
  if (!key.empty()) OPENSSL_cleanse(key.data(), key.size());
}

}  // namespace tapsec::tls
