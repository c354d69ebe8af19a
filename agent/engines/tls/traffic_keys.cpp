#include "agent/engines/tls/traffic_keys.h"

#include <openssl/crypto.h>

namespace tapsec::tls {

std::string_view to_string(RecordCipher cipher) {
  switch (cipher) {
    case RecordCipher::AesGcm128: return "AES-128-GCM";
    case RecordCipher::AesGcm256: return "AES-256-GCM";
    case RecordCipher::Chacha20Poly1305: return "CHACHA20-POLY1305";
  }
  return "unknown";
}

TrafficKeys::~TrafficKeys() {
  if (!key.empty()) OPENSSL_cleanse(key.data(), key.size());
  OPENSSL_cleanse(iv.data(), iv.size());
}

}  // namespace tapsec::tls
