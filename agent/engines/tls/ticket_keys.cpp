#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>

#include "agent/engines/tls/tls_engine.h"

namespace tapsec::tls {

namespace {
// Ticket callback return values (SSL_CTX_set_tlsext_ticket_key_evp_cb).
constexpr int kTicketUnknown = 0;
constexpr int kTicketOk = 1;
constexpr int kTicketOkRenew = 2;
constexpr int kTicketError = -1;
}  // namespace

bool TicketKeys::fill(Key& key) {
  return RAND_bytes(key.name.data(), key.name.size()) == 1 &&
         RAND_priv_bytes(key.aes_key.data(), key.aes_key.size()) == 1 &&
         RAND_priv_bytes(key.hmac_key.data(), key.hmac_key.size()) == 1;
}

std::shared_ptr<TicketKeys> TicketKeys::generate() {
  std::shared_ptr<TicketKeys> keys(new TicketKeys());
  if (!fill(keys->current_)) return nullptr;
  return keys;
}

TicketKeys::~TicketKeys() {
  OPENSSL_cleanse(&current_, sizeof current_);
  if (previous_) OPENSSL_cleanse(&*previous_, sizeof *previous_);
}

void TicketKeys::rotate() {
  Key next;
  if (!fill(next)) return;  // keep the current key rather than run without one
  std::lock_guard lock(mutex_);
  if (previous_) OPENSSL_cleanse(&*previous_, sizeof *previous_);
  previous_ = current_;
  current_ = next;
  OPENSSL_cleanse(&next, sizeof next);
  ++generation_;
}

std::uint64_t TicketKeys::generation() const {
  std::lock_guard lock(mutex_);
  return generation_;
}

int TicketKeys::handle_ticket(unsigned char key_name[16], unsigned char iv[16], EVP_CIPHER_CTX* cipher_ctx,
                              EVP_MAC_CTX* mac_ctx, int encrypt) {
  std::lock_guard lock(mutex_);
  const Key* key = nullptr;
  int result = kTicketOk;
  if (encrypt) {
    key = &current_;
    std::memcpy(key_name, key->name.data(), key->name.size());
    if (RAND_bytes(iv, 16) != 1) return kTicketError;
  } else if (std::equal(current_.name.begin(), current_.name.end(), key_name)) {
    key = &current_;
  } else if (previous_ && std::equal(previous_->name.begin(), previous_->name.end(), key_name)) {
    key = &*previous_;
    result = kTicketOkRenew;
  } else {
    return kTicketUnknown;
  }

  char digest[] = "SHA256";
  OSSL_PARAM mac_params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, const_cast<std::uint8_t*>(key->hmac_key.data()),
                                        key->hmac_key.size()),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  if (EVP_MAC_CTX_set_params(mac_ctx, mac_params) != 1) return kTicketError;
  const int ok = encrypt ? EVP_EncryptInit_ex(cipher_ctx, EVP_aes_256_cbc(), nullptr, key->aes_key.data(), iv)
                         : EVP_DecryptInit_ex(cipher_ctx, EVP_aes_256_cbc(), nullptr, key->aes_key.data(), iv);
  return ok == 1 ? result : kTicketError;
}

}  // namespace tapsec::tls
