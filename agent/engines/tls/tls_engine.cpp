#include "agent/engines/tls/tls_engine.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/tls1.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "agent/core/log.h"
#include "agent/core/trusted_pem.h"
#include "agent/engines/tls/context_cache.h"
#include "agent/engines/tls/openssl_ptr.h"
#include "agent/engines/tls/record_crypto.h"

namespace tapsec::tls {

using detail::SecretBytes;
using detail::SslCtxPtr;
using detail::SslPtr;
using detail::X509StorePtr;

namespace {

constexpr std::uint8_t kContentChangeCipherSpec = 20;
constexpr std::uint8_t kContentAlert = 21;
constexpr std::uint8_t kContentApplicationData = 23;
constexpr std::uint8_t kHandshakeFinished = 20;
constexpr std::uint8_t kHandshakeKeyUpdate = 24;
constexpr std::uint8_t kAlertFatal = 2;
constexpr std::uint8_t kAlertBadCertificate = 42;
constexpr std::size_t kRecordHeaderLength = 5;
constexpr std::size_t kMaxRecordBody = (1u << 14) + 256;

constexpr std::string_view kAllowedTls13Suites[] = {
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"};
constexpr std::string_view kAllowedTls12Ciphers[] = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",   "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",   "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"};
constexpr std::string_view kDefaultGroups = "X25519:P-256:P-384";

// Record protection parameters of a negotiated cipher suite, as kTLS sees them.
struct SuiteKeys {
  RecordCipher cipher;
  std::size_t key_length;
  const char* digest;  // HKDF hash (TLS 1.3) or PRF hash (TLS 1.2)
  std::size_t hash_length;
};

std::optional<SuiteKeys> suite_keys(std::uint16_t suite_id) {
  switch (suite_id) {
    case 0x1301: return SuiteKeys{RecordCipher::AesGcm128, 16, "SHA256", 32};
    case 0x1302: return SuiteKeys{RecordCipher::AesGcm256, 32, "SHA384", 48};
    case 0x1303: return SuiteKeys{RecordCipher::Chacha20Poly1305, 32, "SHA256", 32};
    case 0xC02B:  // ECDHE-ECDSA-AES128-GCM-SHA256
    case 0xC02F: return SuiteKeys{RecordCipher::AesGcm128, 16, "SHA256", 32};
    case 0xC02C:  // ECDHE-ECDSA-AES256-GCM-SHA384
    case 0xC030: return SuiteKeys{RecordCipher::AesGcm256, 32, "SHA384", 48};
    case 0xCCA9:  // ECDHE-ECDSA-CHACHA20-POLY1305
    case 0xCCA8: return SuiteKeys{RecordCipher::Chacha20Poly1305, 32, "SHA256", 32};
    default: return std::nullopt;
  }
}

std::string join(const std::vector<std::string>& items, char separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

template <std::size_t N>
std::optional<std::string> first_not_allowed(const std::vector<std::string>& names,
                                             const std::string_view (&allowed)[N]) {
  for (const auto& name : names) {
    if (std::find(std::begin(allowed), std::end(allowed), name) == std::end(allowed)) return name;
  }
  return std::nullopt;
}

std::string allowed_list(std::span<const std::string_view> allowed) {
  std::string out;
  for (auto name : allowed) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

bool is_ip_literal(const std::string& name) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, name.c_str(), buffer) == 1 || inet_pton(AF_INET6, name.c_str(), buffer) == 1;
}

std::string name_rfc2253(X509_NAME* name) {
  detail::BioPtr out(BIO_new(BIO_s_mem()));
  if (!out || X509_NAME_print_ex(out.get(), name, 0, XN_FLAG_RFC2253) < 0) return {};
  char* data = nullptr;
  const long length = BIO_get_mem_data(out.get(), &data);
  return std::string(data, static_cast<std::size_t>(length));
}

std::vector<std::uint8_t> certificate_der(X509* certificate) {
  unsigned char* der = nullptr;
  const int length = i2d_X509(certificate, &der);
  if (length <= 0) return {};
  std::vector<std::uint8_t> out(der, der + length);
  OPENSSL_free(der);
  return out;
}

std::optional<std::array<std::uint8_t, 32>> spki_sha256(X509* certificate) {
  unsigned char* der = nullptr;
  const int length = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(certificate), &der);
  if (length <= 0) return std::nullopt;
  std::array<std::uint8_t, 32> digest{};
  SHA256(der, static_cast<std::size_t>(length), digest.data());
  OPENSSL_free(der);
  return digest;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<SecretBytes> decode_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  SecretBytes out;
  out.resize(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int high = hex_value(hex[2 * i]);
    const int low = hex_value(hex[2 * i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    out.data()[i] = static_cast<std::uint8_t>(high << 4 | low);
  }
  return out;
}

// Counts the whole records in a byte stream that starts at a record boundary.
std::size_t count_records(std::span<const std::uint8_t> bytes) {
  std::size_t count = 0;
  while (bytes.size() >= kRecordHeaderLength) {
    const std::size_t length = kRecordHeaderLength + ((std::size_t{bytes[3]} << 8) | bytes[4]);
    if (bytes.size() < length) break;
    bytes = bytes.subspan(length);
    ++count;
  }
  return count;
}

std::string group_name(int nid) {
  if (nid == NID_undef || nid == 0) return {};
  if (const char* nist = EC_curve_nid2nist(nid)) return nist;
  if (const char* short_name = OBJ_nid2sn(nid)) return short_name;
  return {};
}

}  // namespace

struct Session::Impl {
  Settings settings;
  SslCtxPtr ctx;
  SslPtr ssl;
  BIO* network_in = nullptr;   // owned by ssl: records fed to the engine
  BIO* network_out = nullptr;  // owned by ssl: records for the peer
  std::vector<std::uint8_t> own_output;  // records the engine protected itself
  std::vector<std::uint8_t> plaintext;

  bool handshake_done = false;
  bool peer_closed = false;

  // Record accounting for the kernel hand-off. Every record OpenSSL writes
  // or reads is counted; *_epoch_start is the count at which the record with
  // sequence number 0 of the current keys was (or will be) written/read.
  std::uint64_t records_written = 0;
  std::uint64_t records_read = 0;
  std::uint64_t tx_epoch_start = 0;
  std::uint64_t rx_epoch_start = 0;
  std::uint64_t rx_epoch = 0;

  // TLS 1.3 application traffic secrets of the current epochs.
  SecretBytes tx_secret;
  SecretBytes rx_secret;
  // Read keys of OpenSSL's own record layer once the kernel reads
  // (hand_reads_to_kernel), with the sequence number it expects next.
  std::optional<TrafficKeys> openssl_read_keys;

  // Peer validation.
  enum class Decision { Undecided, Accepted, Rejected } decision = Decision::Undecided;
  std::string decision_reason;
  bool server_validation_pending = false;
  std::string verify_failure;

  std::string alert_sent;
  std::string alert_received;
  bool external_psk_selected = false;  // server side
  std::string application_protocol_failure;
};

// OpenSSL callbacks; a friend so that they can reach the Session they serve.
struct SessionCallbacks {
  static Session* from(const SSL* ssl) { return static_cast<Session*>(SSL_get_app_data(ssl)); }

  static int use_credentials(SSL_CTX* ctx, const Credentials& c) {
    return SSL_CTX_use_cert_and_key(ctx, c.leaf_, c.private_key_, c.intermediates_, 1);
  }

  static void on_message(int write_p, int, int content_type, const void* buffer, size_t length, SSL* ssl, void*) {
    Session* session = from(ssl);
    if (session == nullptr) return;
    Session::Impl& d = *session->impl_;
    const auto* bytes = static_cast<const std::uint8_t*>(buffer);
    if (content_type == SSL3_RT_HEADER) {
      // Called for every record, before the messages it carries.
      ++(write_p ? d.records_written : d.records_read);
      return;
    }
    if (content_type != SSL3_RT_HANDSHAKE || length < 1) return;
    const bool tls13 = SSL_version(ssl) >= TLS1_3_VERSION;
    if (bytes[0] == kHandshakeFinished) {
      // TLS 1.3: the next record is the first under the application keys.
      // TLS 1.2: the Finished record itself had sequence number 0.
      const std::uint64_t offset = tls13 ? 0 : 1;
      if (write_p)
        d.tx_epoch_start = d.records_written - offset;
      else
        d.rx_epoch_start = d.records_read - offset;
    } else if (bytes[0] == kHandshakeKeyUpdate && tls13 && d.handshake_done) {
      // A KeyUpdate that went through OpenSSL (userspace record layer).
      if (write_p)
        session->advance_tx_secret();
      else
        session->advance_rx_keys();
    }
  }

  static void on_keylog(const SSL* ssl, const char* line) {
    Session* session = from(ssl);
    if (session == nullptr) return;
    Session::Impl& d = *session->impl_;
    const std::string_view text(line);
    const auto first_space = text.find(' ');
    const auto last_space = text.rfind(' ');
    if (first_space == std::string_view::npos || last_space == first_space) return;
    const std::string_view label = text.substr(0, first_space);
    const bool client_secret = label == "CLIENT_TRAFFIC_SECRET_0";
    const bool server_secret = label == "SERVER_TRAFFIC_SECRET_0";
    if (!client_secret && !server_secret) return;
    auto secret = decode_hex(text.substr(last_space + 1));
    if (!secret) return;
    const bool ours = client_secret == (d.settings.role == Role::Client);
    (ours ? d.tx_secret : d.rx_secret) = std::move(*secret);
  }

  static void on_info(const SSL* ssl, int where, int value) {
    if (!(where & SSL_CB_ALERT)) return;
    Session* session = from(ssl);
    if (session == nullptr) return;
    Session::Impl& d = *session->impl_;
    std::string text = SSL_alert_desc_string_long(value);
    if (where & SSL_CB_READ) {
      d.alert_received = std::move(text);
      if ((value & 0xff) == SSL_AD_CLOSE_NOTIFY) d.peer_closed = true;
    } else {
      d.alert_sent = std::move(text);
    }
  }

  static int on_verify(X509_STORE_CTX* store_ctx, void*) {
    auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
    Session* session = ssl ? from(ssl) : nullptr;
    if (session == nullptr) return 0;
    Session::Impl& d = *session->impl_;
    X509* leaf = X509_STORE_CTX_get0_cert(store_ctx);
    if (leaf == nullptr) return 0;

    session->peer_chain_der_.clear();
    STACK_OF(X509)* received = X509_STORE_CTX_get0_untrusted(store_ctx);
    if (received != nullptr && sk_X509_num(received) > 0) {
      for (int i = 0; i < sk_X509_num(received); ++i)
        session->peer_chain_der_.push_back(certificate_der(sk_X509_value(received, i)));
    } else {
      session->peer_chain_der_.push_back(certificate_der(leaf));
    }

    auto reject = [&](std::string why) {
      d.verify_failure = std::move(why);
      X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
      return 0;
    };

    switch (d.settings.peer_validation) {
      case PeerValidation::System: {
        const int ok = X509_verify_cert(store_ctx);
        if (ok <= 0) {
          const int code = X509_STORE_CTX_get_error(store_ctx);
          X509* failing = X509_STORE_CTX_get_current_cert(store_ctx);
          d.verify_failure = std::string(X509_verify_cert_error_string(code));
          if (failing != nullptr) d.verify_failure += " (certificate " + name_rfc2253(X509_get_subject_name(failing)) + ")";
          return 0;
        }
        return 1;
      }
      case PeerValidation::Pinned: {
        const auto digest = spki_sha256(leaf);
        const auto& pins = d.settings.spki_sha256_pins;
        if (digest && std::find(pins.begin(), pins.end(), *digest) != pins.end()) return 1;
        return reject("peer public key matches none of the " + std::to_string(pins.size()) + " pinned keys");
      }
      case PeerValidation::Application:
        if (d.settings.role == Role::Client) {
          switch (d.decision) {
            case Session::Impl::Decision::Undecided:
              // OpenSSL 3.0 contract: success plus a retry request suspends the handshake.
              return SSL_set_retry_verify(ssl);
            case Session::Impl::Decision::Accepted: return 1;
            case Session::Impl::Decision::Rejected:
              return reject("rejected by the application: " + d.decision_reason);
          }
        }
        // A server cannot suspend its handshake here (OpenSSL 3.0 supports
        // retry only on the client): accept provisionally and hold the
        // handshake's progress until the application decides.
        d.server_validation_pending = true;
        return 1;
      case PeerValidation::None: return 1;
    }
    return 0;
  }

  static int on_alpn_select(SSL* ssl, const unsigned char** out, unsigned char* out_length, const unsigned char* in,
                            unsigned int in_length, void*) {
    Session* session = from(ssl);
    if (session == nullptr) return SSL_TLSEXT_ERR_ALERT_FATAL;
    Session::Impl& d = *session->impl_;
    if (d.settings.alpn.empty()) return SSL_TLSEXT_ERR_NOACK;  // as if no callback were set
    std::string offered;
    for (unsigned int i = 0; i < in_length;) {
      const unsigned int length = in[i];
      if (length == 0 || i + 1 + length > in_length) break;
      const std::string_view protocol(reinterpret_cast<const char*>(in + i + 1), length);
      const auto& accepted = d.settings.alpn;
      if (std::find(accepted.begin(), accepted.end(), protocol) != accepted.end()) {
        *out = in + i + 1;
        *out_length = static_cast<unsigned char>(length);
        return SSL_TLSEXT_ERR_OK;
      }
      if (!offered.empty()) offered += ",";
      offered += protocol;
      i += 1 + length;
    }
    d.application_protocol_failure =
        "no application protocol in common (peer offered " + offered + "; accepted " + join(d.settings.alpn, ',') + ")";
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }

  static int on_new_session(SSL* ssl, SSL_SESSION* new_session) {
    Session* session = from(ssl);
    if (session == nullptr) return 0;
    const Settings& settings = session->impl_->settings;
    if (settings.session_cache) settings.session_cache->store(settings.session_cache_key, new_session);
    return 0;  // the cache keeps its own copy
  }

  static int on_ticket_key(SSL* ssl, unsigned char key_name[16], unsigned char iv[16], EVP_CIPHER_CTX* cipher_ctx,
                           EVP_MAC_CTX* mac_ctx, int encrypt) {
    Session* session = from(ssl);
    if (session == nullptr || !session->impl_->settings.ticket_keys) return -1;
    const int result = session->impl_->settings.ticket_keys->handle_ticket(key_name, iv, cipher_ctx, mac_ctx, encrypt);
    // A TLS 1.3 ticket is used once (RFC 8446 §C.4), so a client that
    // resumed needs a new one: ask OpenSSL to issue it ("renew"), which it
    // otherwise does only for tickets under an old key.
    if (!encrypt && result == 1 && SSL_version(ssl) == TLS1_3_VERSION) return 2;
    return result;
  }

  // An SSL_SESSION standing for the external PSK (TLS 1.3, SHA-256 suite).
  static SSL_SESSION* psk_session(SSL* ssl, const ExternalPsk& psk) {
    static const unsigned char kAes128GcmSha256[] = {0x13, 0x01};
    const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kAes128GcmSha256);
    SSL_SESSION* psk_session = SSL_SESSION_new();
    if (cipher == nullptr || psk_session == nullptr ||
        SSL_SESSION_set1_master_key(psk_session, psk.key.data(), psk.key.size()) != 1 ||
        SSL_SESSION_set_cipher(psk_session, cipher) != 1 ||
        SSL_SESSION_set_protocol_version(psk_session, TLS1_3_VERSION) != 1) {
      SSL_SESSION_free(psk_session);
      return nullptr;
    }
    return psk_session;
  }

  static int on_psk_use(SSL* ssl, const EVP_MD* md, const unsigned char** identity, size_t* identity_length,
                        SSL_SESSION** out) {
    *out = nullptr;
    Session* session = from(ssl);
    if (session == nullptr || !session->impl_->settings.psk) return 1;
    // After a HelloRetryRequest the PSK must match the chosen suite's hash.
    if (md != nullptr && EVP_MD_get_type(md) != NID_sha256) return 1;
    const ExternalPsk& psk = *session->impl_->settings.psk;
    *out = psk_session(ssl, psk);
    if (*out == nullptr) return 0;
    *identity = reinterpret_cast<const unsigned char*>(psk.identity.data());
    *identity_length = psk.identity.size();
    return 1;
  }

  static int on_psk_find(SSL* ssl, const unsigned char* identity, size_t identity_length, SSL_SESSION** out) {
    *out = nullptr;
    Session* session = from(ssl);
    if (session == nullptr || !session->impl_->settings.psk) return 1;
    const ExternalPsk& psk = *session->impl_->settings.psk;
    if (std::string_view(reinterpret_cast<const char*>(identity), identity_length) != psk.identity) return 1;
    *out = psk_session(ssl, psk);
    if (*out == nullptr) return 0;
    session->impl_->external_psk_selected = true;
    return 1;
  }
};

std::optional<std::array<std::uint8_t, 32>> parse_spki_pin(std::string_view text) {
  constexpr std::string_view kPrefix = "sha256/";
  if (text.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  const std::string_view encoded = text.substr(kPrefix.size());
  if (encoded.size() != 44 || encoded.back() != '=' || encoded[42] == '=') return std::nullopt;  // 32 bytes
  unsigned char decoded[33];
  if (EVP_DecodeBlock(decoded, reinterpret_cast<const unsigned char*>(encoded.data()), 44) != 33) return std::nullopt;
  std::array<std::uint8_t, 32> pin{};
  std::copy(decoded, decoded + 32, pin.begin());
  return pin;
}

std::string_view to_string(Role role) { return role == Role::Client ? "client" : "server"; }
std::string_view to_string(Version version) { return version == Version::Tls12 ? "TLSv1.2" : "TLSv1.3"; }
std::string_view to_string(PeerValidation validation) {
  switch (validation) {
    case PeerValidation::System: return "system";
    case PeerValidation::Pinned: return "pinned";
    case PeerValidation::Application: return "application";
    case PeerValidation::None: return "none";
  }
  return "unknown";
}
std::string_view to_string(Session::Status status) {
  switch (status) {
    case Session::Status::WantRecord: return "want-record";
    case Session::Status::NeedPeerValidation: return "need-peer-validation";
    case Session::Status::Established: return "established";
    case Session::Status::Failed: return "failed";
  }
  return "unknown";
}

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Session::~Session() {
  if (impl_ && impl_->ssl) SSL_set_app_data(impl_->ssl.get(), nullptr);
}

namespace {

// Settings checks that need no OpenSSL object.
std::optional<std::string> check_settings(const Settings& s) {
  if (s.min_version > s.max_version) return "minimum TLS version is above the maximum";
  if (s.psk) {
    if (s.max_version != Version::Tls13) return "an external PSK needs TLS 1.3";
    if (s.psk->identity.empty() || s.psk->identity.size() > 0xffff) return "PSK identity must be 1..65535 bytes";
    if (s.psk->key.size() < 16 || s.psk->key.size() > 256) return "PSK key must be 16..256 bytes";
  }
  if (auto bad = first_not_allowed(s.ciphersuites, kAllowedTls13Suites))
    return "TLS 1.3 cipher suite '" + *bad + "' is not allowed (the kernel record layer carries only " +
           allowed_list(kAllowedTls13Suites) + ")";
  if (auto bad = first_not_allowed(s.ciphers12, kAllowedTls12Ciphers))
    return "TLS 1.2 cipher '" + *bad + "' is not allowed (the kernel record layer carries only " +
           allowed_list(kAllowedTls12Ciphers) + ")";
  for (const auto& protocol : s.alpn)
    if (protocol.empty() || protocol.size() > 255) return "ALPN protocol names must be 1..255 bytes";
  if (s.role == Role::Server && !s.credentials && !s.psk) return "a server needs an identity (credentials) or a PSK";
  const bool validates = s.role == Role::Client || s.require_peer_certificate;
  if (validates && s.peer_validation == PeerValidation::Pinned && s.spki_sha256_pins.empty())
    return "pinned peer validation needs at least one pin";
  if (validates && s.peer_validation == PeerValidation::System) {
    if (!s.use_system_trust && s.trust_anchor_files.empty())
      return "system peer validation needs the system trust store or trust anchor files";
    if (s.role == Role::Client && s.server_name.empty())
      return "system peer validation needs a server name to check the certificate against";
  }
  if (s.server_tickets > 16) return "at most 16 session tickets per handshake";
  return std::nullopt;
}

// Ties resumption to the settings that authenticated the original handshake.
std::string session_id_context(const Settings& s) {
  std::string description = "tapsec/tls/v1|";
  description += s.credentials ? s.credentials->name() : "-";
  description += "|" + std::string(to_string(s.peer_validation)) + "|" + (s.require_peer_certificate ? "1" : "0");
  for (const auto& pin : s.spki_sha256_pins) description.append(reinterpret_cast<const char*>(pin.data()), pin.size());
  for (const auto& file : s.trust_anchor_files) description += "|" + file;
  std::string digest(SHA256_DIGEST_LENGTH, '\0');
  SHA256(reinterpret_cast<const unsigned char*>(description.data()), description.size(),
         reinterpret_cast<unsigned char*>(digest.data()));
  return digest;
}

// Whether the context needs a trust store loaded from disk.
bool loads_trust_store(const Settings& s) {
  const bool validates = s.role == Role::Client || s.require_peer_certificate;
  return validates && s.peer_validation == PeerValidation::System;
}

// "invalid TLS settings: <what> (<OpenSSL's errors>)".
std::string settings_failure(std::string what) {
  const std::string details = detail::take_openssl_errors();
  return "invalid TLS settings: " + what + (details.empty() ? "" : " (" + details + ")");
}

// Adds every certificate and CRL of a PEM bundle to `store`, as
// X509_STORE_load_file would, but from the bytes already read and checked.
bool add_pem_to_store(X509_STORE* store, BIO* pem) {
  using InfoStack = core::OpenSslPtr<STACK_OF(X509_INFO), [](STACK_OF(X509_INFO)* s) {
    sk_X509_INFO_pop_free(s, X509_INFO_free);
  }>;
  InfoStack infos(PEM_X509_INFO_read_bio(pem, nullptr, nullptr, nullptr));
  if (!infos || sk_X509_INFO_num(infos.get()) == 0) return false;
  for (int i = 0; i < sk_X509_INFO_num(infos.get()); ++i) {
    const X509_INFO* info = sk_X509_INFO_value(infos.get(), i);
    if (info->x509 && X509_STORE_add_cert(store, info->x509) != 1) return false;
    if (info->crl && X509_STORE_add_crl(store, info->crl) != 1) return false;
  }
  return true;
}

// A server issuing tickets without shared keys protects them with its
// context's own random keys; such a context must not be shared, or tickets
// would resume in other Sessions (documented: they never do).
bool context_shareable(const Settings& s) {
  return !(s.role == Role::Server && s.server_tickets > 0 && !s.ticket_keys);
}

// Canonical, unambiguous description of exactly the settings that
// build_context() puts into the SSL_CTX: equal keys, equal contexts.
std::string context_key(const Settings& s) {
  std::string key;
  auto field = [&key](std::string_view value) {
    key += std::to_string(value.size());
    key += ':';
    key += value;
  };
  auto list = [&](const std::vector<std::string>& values) {
    field(std::to_string(values.size()));
    for (const auto& value : values) field(value);
  };
  auto address = [&](const void* object) {
    char text[2 + 2 * sizeof(void*) + 1];
    std::snprintf(text, sizeof text, "%p", object);
    field(text);
  };
  field(to_string(s.role));
  field(to_string(s.min_version));
  field(to_string(s.max_version));
  list(s.ciphersuites);
  list(s.ciphers12);
  list(s.groups);
  list(s.signature_algorithms);
  address(s.credentials.get());
  if (loads_trust_store(s)) {
    field(s.use_system_trust ? "trust:system" : "trust:files");
    list(s.trust_anchor_files);
  } else {
    field("trust:none");
  }
  if (s.role == Role::Server) address(s.ticket_keys.get());
  return key;
}

// The SSL_CTX for `s`: only what context_key() names goes in here. Every
// callback registered on it reaches its connection's data through
// SSL_get_app_data, never through the context, so the context can be shared.
std::variant<SslCtxPtr, std::string> build_context(const Settings& s) {
  ERR_clear_error();
  const bool client = s.role == Role::Client;

  SslCtxPtr owned(SSL_CTX_new(client ? TLS_client_method() : TLS_server_method()));
  if (!owned) return settings_failure("cannot create an OpenSSL context");
  SSL_CTX* ctx = owned.get();

  const int min_version = s.min_version == Version::Tls12 ? TLS1_2_VERSION : TLS1_3_VERSION;
  const int max_version = s.max_version == Version::Tls12 ? TLS1_2_VERSION : TLS1_3_VERSION;
  if (SSL_CTX_set_min_proto_version(ctx, min_version) != 1 || SSL_CTX_set_max_proto_version(ctx, max_version) != 1)
    return settings_failure("cannot set the TLS versions");

  std::vector<std::string> suites13 = s.ciphersuites;
  if (suites13.empty()) suites13.assign(std::begin(kAllowedTls13Suites), std::end(kAllowedTls13Suites));
  std::vector<std::string> ciphers12 = s.ciphers12;
  if (ciphers12.empty()) ciphers12.assign(std::begin(kAllowedTls12Ciphers), std::end(kAllowedTls12Ciphers));
  if (SSL_CTX_set_ciphersuites(ctx, join(suites13, ':').c_str()) != 1) return settings_failure("bad TLS 1.3 cipher suites");
  if (SSL_CTX_set_cipher_list(ctx, join(ciphers12, ':').c_str()) != 1) return settings_failure("bad TLS 1.2 ciphers");
  const std::string groups = s.groups.empty() ? std::string(kDefaultGroups) : join(s.groups, ':');
  if (SSL_CTX_set1_groups_list(ctx, groups.c_str()) != 1) return settings_failure("unknown key exchange group in '" + groups + "'");
  if (!s.signature_algorithms.empty() && SSL_CTX_set1_sigalgs_list(ctx, join(s.signature_algorithms, ':').c_str()) != 1)
    return settings_failure("unknown signature algorithm in '" + join(s.signature_algorithms, ':') + "'");

  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_msg_callback(ctx, &SessionCallbacks::on_message);
  SSL_CTX_set_keylog_callback(ctx, &SessionCallbacks::on_keylog);
  SSL_CTX_set_info_callback(ctx, &SessionCallbacks::on_info);
  SSL_CTX_set_cert_verify_callback(ctx, &SessionCallbacks::on_verify, nullptr);

  if (loads_trust_store(s)) {
    X509StorePtr store(X509_STORE_new());
    if (!store) return settings_failure("cannot create a trust store");
    if (s.use_system_trust && X509_STORE_set_default_paths(store.get()) != 1)
      return settings_failure("cannot load the system trust store");
    for (const auto& file : s.trust_anchor_files) {
      const std::string problem = core::parse_trusted_pem(file, core::kTrustStoreFile, [&](BIO* pem) {
        return add_pem_to_store(store.get(), pem) ? std::string() : "cannot load trust anchors from " + file;
      });
      if (!problem.empty()) return settings_failure(problem);
    }
    SSL_CTX_set_cert_store(ctx, store.release());
  }

  if (s.credentials) {
    const Credentials& c = *s.credentials;
    if (SessionCallbacks::use_credentials(ctx, c) != 1) return settings_failure("identity '" + c.name() + "' cannot be used");
  }

  if (client) {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, &SessionCallbacks::on_new_session);
  } else {
    // Resumption is stateless (tickets); the context keeps no session cache.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (s.ticket_keys) SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, &SessionCallbacks::on_ticket_key);
    // Per connection: a Session without an ALPN list declines (NOACK).
    SSL_CTX_set_alpn_select_cb(ctx, &SessionCallbacks::on_alpn_select, nullptr);
  }
  return owned;
}

}  // namespace

void flush_context_cache() { detail::shared_context_cache().flush(); }

std::variant<std::unique_ptr<Session>, std::string> Session::create(const Settings& settings) {
  if (auto problem = check_settings(settings)) return "invalid TLS settings: " + *problem;

  auto impl = std::make_unique<Impl>();
  impl->settings = settings;
  const Settings& s = impl->settings;
  const bool client = s.role == Role::Client;

  auto context = context_shareable(s)
                     ? detail::shared_context_cache().acquire(context_key(s), {s.credentials, s.ticket_keys},
                                                              [&s] { return build_context(s); })
                     : build_context(s);
  if (auto* error = std::get_if<std::string>(&context)) return std::move(*error);
  impl->ctx = std::move(std::get<SslCtxPtr>(context));
  SSL_CTX* ctx = impl->ctx.get();
  ERR_clear_error();

  impl->ssl.reset(SSL_new(ctx));
  if (!impl->ssl) return settings_failure("cannot create an OpenSSL connection");
  SSL* ssl = impl->ssl.get();

  // A PSK restricts this connection to TLS 1.3 (the context may allow 1.2).
  if (s.psk) {
    if (SSL_set_min_proto_version(ssl, TLS1_3_VERSION) != 1) return settings_failure("cannot set the TLS versions");
    if (client)
      SSL_set_psk_use_session_callback(ssl, &SessionCallbacks::on_psk_use);
    else
      SSL_set_psk_find_session_callback(ssl, &SessionCallbacks::on_psk_find);
  }

  if (client) {
    SSL_set_verify(ssl, s.peer_validation == PeerValidation::None ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, nullptr);
    if (!s.server_name.empty()) {
      const bool ip = is_ip_literal(s.server_name);
      if (!ip && SSL_set_tlsext_host_name(ssl, s.server_name.c_str()) != 1)
        return settings_failure("server name '" + s.server_name + "' cannot be sent as SNI");
      if (s.peer_validation == PeerValidation::System) {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        const int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), s.server_name.c_str())
                          : SSL_set1_host(ssl, s.server_name.c_str());
        if (ok != 1) return settings_failure("server name '" + s.server_name + "' cannot be checked");
      }
    }
    if (!s.alpn.empty()) {
      std::vector<unsigned char> wire;
      for (const auto& protocol : s.alpn) {
        wire.push_back(static_cast<unsigned char>(protocol.size()));
        wire.insert(wire.end(), protocol.begin(), protocol.end());
      }
      if (SSL_set_alpn_protos(ssl, wire.data(), static_cast<unsigned int>(wire.size())) != 0)
        return settings_failure("ALPN list rejected");
    }
    if (s.session_cache && !s.session_cache_key.empty() && !s.psk) {
      if (SSL_SESSION* cached = s.session_cache->take(s.session_cache_key)) {
        SSL_set_session(ssl, cached);  // takes its own reference
        SSL_SESSION_free(cached);
      }
    }
    SSL_set_connect_state(ssl);
  } else {
    SSL_set_verify(ssl, s.require_peer_certificate ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_NONE,
                   nullptr);
    const std::string sid_context = session_id_context(s);
    if (SSL_set_session_id_context(ssl, reinterpret_cast<const unsigned char*>(sid_context.data()),
                                   static_cast<unsigned int>(sid_context.size())) != 1)
      return settings_failure("cannot set the session id context");
    if (s.server_tickets == 0) SSL_set_options(ssl, SSL_OP_NO_TICKET);
    SSL_set_num_tickets(ssl, s.server_tickets);
    SSL_set_accept_state(ssl);
  }

  BIO* network_in = BIO_new(BIO_s_mem());
  BIO* network_out = BIO_new(BIO_s_mem());
  if (network_in == nullptr || network_out == nullptr) {
    BIO_free(network_in);
    BIO_free(network_out);
    return settings_failure("out of memory");
  }
  SSL_set_bio(ssl, network_in, network_out);
  impl->network_in = network_in;
  impl->network_out = network_out;

  std::unique_ptr<Session> session(new Session(std::move(impl)));
  SSL_set_app_data(ssl, session.get());
  return session;
}

Session::Status Session::start() {
  if (status_ != Status::WantRecord || impl_->handshake_done) return status_;
  if (impl_->settings.role == Role::Server) return status_;
  return drive_handshake();
}

std::optional<std::size_t> Session::complete_record_length(std::span<const std::uint8_t> buffered, std::string* error) {
  auto bad = [&](std::string why) -> std::optional<std::size_t> {
    if (error) *error = std::move(why);
    return std::nullopt;
  };
  if (error) error->clear();
  if (buffered.empty()) return std::nullopt;
  const std::uint8_t type = buffered[0];
  if (type < kContentChangeCipherSpec || type > kContentApplicationData)
    return bad("not a TLS record: content type " + std::to_string(type));
  if (buffered.size() >= 2 && buffered[1] != 3)
    return bad("not a TLS record: version major " + std::to_string(buffered[1]));
  if (buffered.size() >= 3 && (buffered[2] < 1 || buffered[2] > 4))
    return bad("not a TLS record: version 3." + std::to_string(buffered[2]));
  if (buffered.size() < kRecordHeaderLength) return std::nullopt;
  const std::size_t body = (std::size_t{buffered[3]} << 8) | buffered[4];
  if (body > kMaxRecordBody) return bad("TLS record of " + std::to_string(body) + " bytes exceeds 2^14+256");
  if (body == 0 && type != kContentApplicationData)  // RFC 8446 §5.1, RFC 5246 §6.2.1
    return bad("empty TLS record of content type " + std::to_string(type));
  if (buffered.size() < kRecordHeaderLength + body) return std::nullopt;
  return kRecordHeaderLength + body;
}

Session::Status Session::feed_record(std::span<const std::uint8_t> record) {
  if (status_ == Status::Failed) return status_;
  if (status_ == Status::NeedPeerValidation) return fail("a record was fed while peer validation is pending");
  std::string problem;
  const auto length = complete_record_length(record, &problem);
  if (!length) return fail(problem.empty() ? "incomplete TLS record fed" : problem);
  if (*length != record.size()) return fail("more than one TLS record fed at once");
  if (BIO_write(impl_->network_in, record.data(), static_cast<int>(record.size())) != static_cast<int>(record.size()))
    return fail("out of memory");
  return impl_->handshake_done ? pump_reads() : drive_handshake();
}

void Session::hand_reads_to_kernel() {
  if (impl_->handshake_done && version() == Version::Tls13) impl_->openssl_read_keys = keys_for(false);
}

Session::Status Session::absorb_post_handshake(std::span<const std::uint8_t> messages) {
  Impl& d = *impl_;
  if (status_ == Status::Failed) return status_;
  if (!d.openssl_read_keys) return fail("post-handshake message given before the kernel took over reading");
  if (messages.empty() || messages.size() > 16384) return fail("post-handshake record of a size TLS does not allow");
  auto record = detail::tls13_seal_record(*d.openssl_read_keys, SSL3_RT_HANDSHAKE, messages);
  if (!record) return fail("cannot seal a post-handshake message for OpenSSL");
  ++d.openssl_read_keys->seq;
  // OpenSSL counts the record as read; the kernel's keys must not move.
  const std::uint64_t records_read = d.records_read;
  const Status status = feed_ciphertext(*record);
  d.records_read = records_read;
  if (!take_plaintext().empty()) return fail("a post-handshake record gave application data");
  return status;
}

Session::Status Session::feed_ciphertext(std::span<const std::uint8_t> bytes) {
  if (status_ == Status::Failed) return status_;
  if (!impl_->handshake_done) return fail("ciphertext fed before the handshake finished");
  if (!bytes.empty() &&
      BIO_write(impl_->network_in, bytes.data(), static_cast<int>(bytes.size())) != static_cast<int>(bytes.size()))
    return fail("out of memory");
  return pump_reads();
}

Session::Status Session::drive_handshake() {
  Impl& d = *impl_;
  ERR_clear_error();
  const int result = SSL_do_handshake(d.ssl.get());
  if (result == 1) {
    d.handshake_done = true;
    status_ = d.server_validation_pending ? Status::NeedPeerValidation : Status::Established;
    if (status_ == Status::Established) {
      const Info summary = info();
      core::log::debug("TLS handshake complete", {{"role", std::string(to_string(d.settings.role))},
                                                  {"version", summary.version},
                                                  {"cipher", summary.cipher},
                                                  {"resumed", summary.resumed ? "yes" : "no"}});
    }
    return status_;
  }
  switch (SSL_get_error(d.ssl.get(), result)) {
    case SSL_ERROR_WANT_READ:
      status_ = d.server_validation_pending ? Status::NeedPeerValidation : Status::WantRecord;
      return status_;
    case SSL_ERROR_WANT_RETRY_VERIFY: status_ = Status::NeedPeerValidation; return status_;
    default: return fail("TLS handshake failed");
  }
}

Session::Status Session::pump_reads() {
  Impl& d = *impl_;
  std::uint8_t buffer[16384];
  for (;;) {
    ERR_clear_error();
    const int result = SSL_read(d.ssl.get(), buffer, sizeof buffer);
    if (result > 0) {
      d.plaintext.insert(d.plaintext.end(), buffer, buffer + result);
      continue;
    }
    switch (SSL_get_error(d.ssl.get(), result)) {
      case SSL_ERROR_WANT_READ: return status_;
      case SSL_ERROR_ZERO_RETURN: d.peer_closed = true; return status_;
      default: return fail("TLS record processing failed");
    }
  }
}

Session::Status Session::fail(std::string why) {
  Impl& d = *impl_;
  std::string text = std::move(why);
  if (!d.verify_failure.empty()) text += ": peer validation failed: " + d.verify_failure;
  if (!d.application_protocol_failure.empty()) text += ": " + d.application_protocol_failure;
  if (!d.alert_received.empty()) text += "; peer sent alert '" + d.alert_received + "'";
  if (!d.alert_sent.empty()) text += "; sent alert '" + d.alert_sent + "'";
  const std::string details = detail::take_openssl_errors();
  if (!details.empty()) text += " [" + details + "]";
  error_ = std::move(text);
  status_ = Status::Failed;
  core::log::debug("TLS session failed", {{"role", std::string(to_string(d.settings.role))}, {"error", error_}});
  return status_;
}

std::vector<std::uint8_t> Session::take_output() {
  std::vector<std::uint8_t> out;
  if (status_ == Status::NeedPeerValidation) return out;
  char* data = nullptr;
  const long pending = BIO_get_mem_data(impl_->network_out, &data);
  if (pending > 0) {
    out.assign(data, data + pending);
    (void)BIO_reset(impl_->network_out);
  }
  out.insert(out.end(), impl_->own_output.begin(), impl_->own_output.end());
  impl_->own_output.clear();
  return out;
}

Session::Status Session::resolve_peer_validation(bool accept, std::string reason) {
  Impl& d = *impl_;
  if (status_ != Status::NeedPeerValidation) return status_;
  d.decision = accept ? Impl::Decision::Accepted : Impl::Decision::Rejected;
  d.decision_reason = reason;
  if (d.settings.role == Role::Client) {
    status_ = Status::WantRecord;
    return drive_handshake();  // the verify callback runs again and applies the decision
  }

  d.server_validation_pending = false;
  if (accept) {
    status_ = d.handshake_done ? Status::Established : Status::WantRecord;
    return status_;
  }
  // Drop anything withheld (tickets) and refuse the client with a fatal
  // bad_certificate alert, protected as OpenSSL would at this point.
  char* data = nullptr;
  const long pending = BIO_get_mem_data(d.network_out, &data);
  if (pending > 0) {
    d.records_written -= count_records(std::span(reinterpret_cast<const std::uint8_t*>(data), pending));
    (void)BIO_reset(d.network_out);
  }
  const std::vector<std::uint8_t> alert = {kAlertFatal, kAlertBadCertificate};
  if (SSL_version(d.ssl.get()) >= TLS1_3_VERSION) {
    if (auto keys = keys_for(true)) {
      if (auto record = detail::tls13_seal_record(*keys, kContentAlert, alert)) d.own_output = std::move(*record);
    }
  } else {
    d.own_output = {kContentAlert, 3, 3, 0, 2, kAlertFatal, kAlertBadCertificate};
  }
  d.alert_sent = "bad certificate";
  d.verify_failure = "rejected by the application: " + reason;
  return fail("TLS handshake failed");
}

bool Session::peer_validation_failed() const {
  return status_ == Status::Failed && !impl_->verify_failure.empty();
}

Version Session::version() const {
  return SSL_version(impl_->ssl.get()) >= TLS1_3_VERSION ? Version::Tls13 : Version::Tls12;
}

Info Session::info() const {
  const Impl& d = *impl_;
  SSL* ssl = d.ssl.get();
  Info info;
  if (d.settings.role == Role::Client) info.server_name = d.settings.server_name;
  // Mid-handshake (or after a failed one) OpenSSL's view is partial, and
  // some of its getters dereference state that may not exist yet.
  if (!d.handshake_done || SSL_get_session(ssl) == nullptr) return info;
  info.version = SSL_get_version(ssl);
  if (const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl)) {
    const char* standard = SSL_CIPHER_standard_name(cipher);
    info.cipher = standard ? standard : SSL_CIPHER_get_name(cipher);
  }
  info.group = group_name(SSL_get_negotiated_group(ssl) & ~TLSEXT_nid_unknown);
  const unsigned char* protocol = nullptr;
  unsigned int protocol_length = 0;
  SSL_get0_alpn_selected(ssl, &protocol, &protocol_length);
  if (protocol != nullptr) info.alpn.assign(reinterpret_cast<const char*>(protocol), protocol_length);
  if (d.settings.role == Role::Server) {
    if (const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)) info.server_name = sni;
  }
  const bool reused = SSL_session_reused(ssl) == 1;
  const bool external_psk =
      d.settings.psk && reused && (d.settings.role == Role::Client || d.external_psk_selected);
  info.resumed = reused && !external_psk;
  if (external_psk) {
    info.peer_identity = info.local_identity = "psk:" + d.settings.psk->identity;
  } else {
    if (X509* peer = SSL_get0_peer_certificate(ssl)) info.peer_identity = name_rfc2253(X509_get_subject_name(peer));
    if (d.settings.credentials) info.local_identity = d.settings.credentials->name();
  }
  return info;
}

std::optional<TrafficKeys> Session::keys_for(bool transmit) const {
  const Impl& d = *impl_;
  SSL* ssl = d.ssl.get();
  // A TLS 1.3 server knows its application keys before the client's last
  // flight (needed to refuse a client certificate); TLS 1.2 keys only once done.
  const bool tls13 = SSL_version(ssl) >= TLS1_3_VERSION;
  if (!d.handshake_done && !(tls13 && !(transmit ? d.tx_secret : d.rx_secret).empty())) return std::nullopt;
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl);
  if (cipher == nullptr) return std::nullopt;
  const auto suite = suite_keys(SSL_CIPHER_get_protocol_id(cipher));
  if (!suite) return std::nullopt;

  TrafficKeys keys;
  keys.cipher = suite->cipher;
  keys.seq = transmit ? d.records_written - d.tx_epoch_start : d.records_read - d.rx_epoch_start;

  if (tls13) {
    keys.version = 0x0304;
    const SecretBytes& secret = transmit ? d.tx_secret : d.rx_secret;
    if (secret.empty()) return std::nullopt;
    auto key = detail::hkdf_expand_label(suite->digest, secret.span(), "key", {}, suite->key_length);
    auto iv = detail::hkdf_expand_label(suite->digest, secret.span(), "iv", {}, keys.iv.size());
    if (!key || !iv) return std::nullopt;
    keys.key.assign(key->span().begin(), key->span().end());
    std::copy(iv->span().begin(), iv->span().end(), keys.iv.begin());
    return keys;
  }

  // TLS 1.2 (RFC 5246 §6.3): key_block = PRF(master_secret, "key expansion",
  // server_random + client_random) = client key, server key, client IV, server IV.
  keys.version = 0x0303;
  SSL_SESSION* session = SSL_get_session(ssl);
  if (session == nullptr) return std::nullopt;
  SecretBytes master;
  master.resize(SSL_MAX_MASTER_KEY_LENGTH);
  master.resize(SSL_SESSION_get_master_key(session, master.data(), master.size()));
  std::vector<std::uint8_t> seed(2 * SSL3_RANDOM_SIZE);
  SSL_get_server_random(ssl, seed.data(), SSL3_RANDOM_SIZE);
  SSL_get_client_random(ssl, seed.data() + SSL3_RANDOM_SIZE, SSL3_RANDOM_SIZE);
  const bool chacha = suite->cipher == RecordCipher::Chacha20Poly1305;
  const std::size_t iv_length = chacha ? 12 : 4;  // RFC 7905 / RFC 5288 fixed IV lengths
  const std::size_t key_block_length = 2 * suite->key_length + 2 * iv_length;
  auto key_block = detail::tls12_prf(suite->digest, master.span(), "key expansion", seed, key_block_length);
  if (!key_block) return std::nullopt;
  const bool client_writes = transmit == (d.settings.role == Role::Client);
  const auto block = key_block->span();
  const auto key = block.subspan(client_writes ? 0 : suite->key_length, suite->key_length);
  const auto iv = block.subspan(2 * suite->key_length + (client_writes ? 0 : iv_length), iv_length);
  keys.key.assign(key.begin(), key.end());
  std::copy(iv.begin(), iv.end(), keys.iv.begin());
  if (!chacha) {
    // The explicit nonce tapsec sends is the record sequence number.
    for (int i = 0; i < 8; ++i) keys.iv[4 + i] = static_cast<std::uint8_t>(keys.seq >> (8 * (7 - i)));
  }
  return keys;
}

TrafficKeys Session::tx_keys() const { return keys_for(true).value_or(TrafficKeys{}); }
TrafficKeys Session::rx_keys() const { return keys_for(false).value_or(TrafficKeys{}); }

std::optional<std::uint8_t> Session::inner_content_type(std::span<const std::uint8_t> record) const {
  if (!impl_->handshake_done) return std::nullopt;
  std::string ignored;
  const auto length = complete_record_length(record, &ignored);
  if (!length || *length != record.size()) return std::nullopt;
  if (SSL_version(impl_->ssl.get()) < TLS1_3_VERSION) return record[0];
  const auto keys = keys_for(false);
  if (!keys) return std::nullopt;
  auto inner = detail::tls13_open_record(*keys, record);
  if (!inner) return std::nullopt;
  OPENSSL_cleanse(inner->content.data(), inner->content.size());
  return inner->type;
}

bool Session::advance_tx_secret() {
  Impl& d = *impl_;
  const SSL_CIPHER* cipher = SSL_get_current_cipher(d.ssl.get());
  const auto suite = cipher ? suite_keys(SSL_CIPHER_get_protocol_id(cipher)) : std::nullopt;
  if (!suite || d.tx_secret.empty()) return false;
  auto next = detail::hkdf_expand_label(suite->digest, d.tx_secret.span(), "traffic upd", {}, suite->hash_length);
  if (!next) return false;
  d.tx_secret = std::move(*next);
  d.tx_epoch_start = d.records_written;
  ++tx_epoch_;
  return true;
}

std::vector<std::uint8_t> Session::key_update_message(bool request_peer) {
  if (status_ != Status::Established || version() != Version::Tls13) return {};
  if (!advance_tx_secret()) return {};
  return {kHandshakeKeyUpdate, 0, 0, 1, static_cast<std::uint8_t>(request_peer ? 1 : 0)};
}

void Session::advance_rx_keys() {
  Impl& d = *impl_;
  if (!d.handshake_done || version() != Version::Tls13) return;
  const SSL_CIPHER* cipher = SSL_get_current_cipher(d.ssl.get());
  const auto suite = cipher ? suite_keys(SSL_CIPHER_get_protocol_id(cipher)) : std::nullopt;
  if (!suite || d.rx_secret.empty()) return;
  auto next = detail::hkdf_expand_label(suite->digest, d.rx_secret.span(), "traffic upd", {}, suite->hash_length);
  if (!next) return;
  d.rx_secret = std::move(*next);
  d.rx_epoch_start = d.records_read;
  ++d.rx_epoch;
}

std::vector<std::uint8_t> Session::take_plaintext() {
  std::vector<std::uint8_t> out;
  out.swap(impl_->plaintext);
  return out;
}

void Session::write_plaintext(std::span<const std::uint8_t> plaintext) {
  if (status_ != Status::Established) return;
  while (!plaintext.empty()) {
    const std::size_t chunk = std::min<std::size_t>(plaintext.size(), 16384);
    ERR_clear_error();
    const int written = SSL_write(impl_->ssl.get(), plaintext.data(), static_cast<int>(chunk));
    if (written <= 0) {
      fail("TLS write failed");
      return;
    }
    plaintext = plaintext.subspan(static_cast<std::size_t>(written));
  }
}

void Session::close_notify() {
  if (!impl_->handshake_done || status_ == Status::Failed) return;
  ERR_clear_error();
  (void)SSL_shutdown(impl_->ssl.get());
  ERR_clear_error();
}

bool Session::peer_closed() const {
  return impl_->peer_closed || (SSL_get_shutdown(impl_->ssl.get()) & SSL_RECEIVED_SHUTDOWN) != 0;
}

void Session::update_keys(bool request_peer) {
  if (status_ != Status::Established || version() != Version::Tls13) return;
  ERR_clear_error();
  if (SSL_key_update(impl_->ssl.get(), request_peer ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED) != 1 ||
      SSL_do_handshake(impl_->ssl.get()) != 1)
    fail("TLS key update failed");
}

std::variant<std::vector<std::uint8_t>, std::string> Session::export_keying_material(
    std::string_view label, std::span<const std::uint8_t> context, std::size_t length) const {
  if (status_ != Status::Established) return std::string("keying material can be exported only once established");
  if (length == 0 || length > 16384) return std::string("exported length must be 1..16384 bytes");
  if (label.empty()) return std::string("an exporter label is required");
  std::vector<std::uint8_t> out(length);
  ERR_clear_error();
  const std::string label_text(label);
  if (SSL_export_keying_material(impl_->ssl.get(), out.data(), out.size(), label_text.c_str(), label_text.size(),
                                 context.data(), context.size(), 1) != 1)
    return "keying material export failed: " + detail::take_openssl_errors();
  return out;
}

}  // namespace tapsec::tls
