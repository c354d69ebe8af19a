// The TLS handshake engine: pure protocol logic on top of OpenSSL with memory
// BIOs. No sockets and no I/O: whole TLS records go in, records to send and
// events come out. The agent's driver owns the TCP socket.
//
// Typical life of a Session on the kernel (kTLS) path:
//   1. create(settings), start(); send take_output().
//   2. Read exactly one record from the socket (complete_record_length tells
//      how long it is), feed_record() it, send take_output(), repeat until
//      Established (or answer NeedPeerValidation with resolve_peer_validation).
//      Nothing past the handshake is read from the socket, so no application
//      data is ever buffered here.
//   3. Client: peek at further records with inner_content_type(); feed only
//      NewSessionTicket records (type 22) so that they reach the session cache.
//   4. Install tx_keys()/rx_keys() into the kernel. Their sequence numbers
//      count every record already protected under the application keys (a
//      server's NewSessionTickets, tickets the client consumed).
//   5. Key update: send key_update_message() as a handshake record with the
//      old TX keys, then install the new tx_keys(); after the peer's KeyUpdate
//      call advance_rx_keys() and install rx_keys().
// Without kTLS the Session stays the record layer: feed_ciphertext(),
// take_plaintext(), write_plaintext(), take_output(), update_keys(),
// close_notify(). The two paths are exclusive for one Session: once keys have
// been advanced by key_update_message()/advance_rx_keys() the userspace
// record layer no longer matches the wire.
//
// Sessions whose context-level settings are equal (role, versions, cipher
// lists, groups, signature algorithms, the same Credentials object, the
// trust store's sources, the same TicketKeys object) share one OpenSSL
// context, built once: certificate, key and trust anchors are read once,
// not per connection. Everything else (server name, ALPN, pins, PSK,
// resumption, validation decisions) stays per Session. Trust anchor files
// are read when a context is built; call flush_context_cache() after they
// change on disk (e.g. on a policy reload).
#pragma once

#include <openssl/ssl.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "agent/engines/tls/traffic_keys.h"

namespace tapsec::tls {

class Session;
struct SessionCallbacks;

// An identity (RFC 8922 IPK): certificate chain and private key held by the
// agent. The private key is never exposed; only Session uses it.
class Credentials {
 public:
  // cert_chain_pem_path: leaf first, then intermediates. The key must match
  // the leaf. Returns the loaded identity or a message saying what is wrong.
  static std::variant<std::shared_ptr<Credentials>, std::string> load(std::string name,
                                                                      const std::string& cert_chain_pem_path,
                                                                      const std::string& key_pem_path);
  ~Credentials();
  Credentials(const Credentials&) = delete;
  Credentials& operator=(const Credentials&) = delete;

  const std::string& name() const { return name_; }
  // RFC 2253 subject of the leaf certificate.
  std::string subject() const;
  // DER of the chain, leaf first.
  std::vector<std::vector<std::uint8_t>> chain_der() const;

 private:
  friend class Session;
  friend struct SessionCallbacks;
  Credentials() = default;
  std::string name_;
  X509* leaf_ = nullptr;
  STACK_OF(X509)* intermediates_ = nullptr;
  EVP_PKEY* private_key_ = nullptr;
};

// A TLS 1.3 external pre-shared key (RFC 8922 PSKI), used with SHA-256 and
// (EC)DHE. Its presence restricts the session to TLS 1.3.
struct ExternalPsk {
  std::string identity;
  std::vector<std::uint8_t> key;  // at least 16 bytes
  ~ExternalPsk();                 // clears the key
};

// Client-side resumption cache (RFC 8922 CM), shared by the agent's client
// sessions. Entries are keyed by a string the driver chooses (it should name
// peer, port, identity and validation policy). Least recently stored entries
// are evicted beyond capacity; expired or non-resumable sessions are dropped
// when looked up. A TLS 1.3 ticket is used once; a TLS 1.2 session stays.
// A key holds at most kSessionsPerKey entries, the newest: enough for 64
// connections at once to one server to resume, few enough that one server
// sending tickets without end cannot push the other peers' sessions out.
class SessionCache {
 public:
  static constexpr std::size_t kSessionsPerKey = 64;

  explicit SessionCache(std::size_t capacity = 1024);
  ~SessionCache();
  SessionCache(const SessionCache&) = delete;
  SessionCache& operator=(const SessionCache&) = delete;

  std::size_t size() const;
  std::size_t capacity() const;
  void set_capacity(std::size_t capacity);
  // Removes every entry; returns how many were removed.
  std::size_t flush();
  // Removes the entries of one key; returns how many were removed.
  std::size_t forget(const std::string& key);
  // Removes the entries whose key satisfies `pred`; returns how many.
  std::size_t forget_if(const std::function<bool(const std::string& key)>& pred);

 private:
  friend class Session;
  friend struct SessionCallbacks;
  struct Entry {
    std::string key;
    SSL_SESSION* session;  // one reference owned by the cache
  };
  void store(const std::string& key, SSL_SESSION* session);  // keeps a copy
  SSL_SESSION* take(const std::string& key);                 // caller owns the returned reference
  void evict_locked();

  mutable std::mutex mutex_;
  std::size_t capacity_;
  std::list<Entry> entries_;  // most recent first
};

// Agent-wide keys protecting server session tickets, so that a ticket issued
// by one Session resumes in another. Keeps the current and the previous key:
// tickets under the previous key still resume and are re-issued.
class TicketKeys {
 public:
  static std::shared_ptr<TicketKeys> generate();
  ~TicketKeys();
  TicketKeys(const TicketKeys&) = delete;
  TicketKeys& operator=(const TicketKeys&) = delete;

  // New current key; the current one becomes the previous; the older one is
  // forgotten (its tickets no longer resume).
  void rotate();
  std::uint64_t generation() const;

  // OpenSSL ticket callback contract (SSL_CTX_set_tlsext_ticket_key_evp_cb).
  int handle_ticket(unsigned char key_name[16], unsigned char iv[16], EVP_CIPHER_CTX* cipher_ctx,
                    EVP_MAC_CTX* mac_ctx, int encrypt);

 private:
  struct Key {
    std::array<std::uint8_t, 16> name{};
    std::array<std::uint8_t, 32> aes_key{};
    std::array<std::uint8_t, 32> hmac_key{};
  };
  TicketKeys() = default;
  static bool fill(Key& key);
  mutable std::mutex mutex_;
  Key current_;
  std::optional<Key> previous_;
  std::uint64_t generation_ = 0;
};

enum class Role { Client, Server };
enum class Version { Tls12, Tls13 };
enum class PeerValidation {
  System,       // trust store (system and/or trust_anchor_files); client also checks server_name
  Pinned,       // accept iff the leaf's SPKI SHA-256 is one of spki_sha256_pins
  Application,  // Session returns NeedPeerValidation; the caller decides
  None,         // accept any peer (policy decides whether this is allowed)
};

// Parses a pin in the D-Bus form "sha256/<base64 of the SPKI SHA-256>".
std::optional<std::array<std::uint8_t, 32>> parse_spki_pin(std::string_view text);

std::string_view to_string(Role role);
std::string_view to_string(Version version);
std::string_view to_string(PeerValidation validation);

struct Settings {
  Role role = Role::Client;
  Version min_version = Version::Tls12;
  Version max_version = Version::Tls13;
  // Empty lists mean the defaults. Only what kTLS can carry is allowed:
  // TLS 1.3 names (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
  // TLS_CHACHA20_POLY1305_SHA256) and TLS 1.2 OpenSSL names
  // (ECDHE-{ECDSA,RSA}-AES{128-GCM-SHA256,256-GCM-SHA384},
  // ECDHE-{ECDSA,RSA}-CHACHA20-POLY1305).
  std::vector<std::string> ciphersuites;
  std::vector<std::string> ciphers12;
  std::vector<std::string> groups;                // default X25519, P-256, P-384
  std::vector<std::string> signature_algorithms;  // default: OpenSSL's list
  // Client: offered in order. Server: the accepted set; the first protocol
  // of the client's list that is accepted wins, none fails the handshake
  // with a no_application_protocol alert.
  std::vector<std::string> alpn;
  // Client: SNI (omitted for IP literals) and the name the server
  // certificate must match in System mode. Server: unused.
  std::string server_name;
  std::shared_ptr<const Credentials> credentials;  // required for a server without psk
  std::optional<ExternalPsk> psk;
  PeerValidation peer_validation = PeerValidation::System;
  std::vector<std::string> trust_anchor_files;  // PEM files of trusted CA certificates
  bool use_system_trust = true;
  std::vector<std::array<std::uint8_t, 32>> spki_sha256_pins;
  // Server: request a client certificate and fail without one; it is then
  // validated by peer_validation.
  bool require_peer_certificate = false;
  // Client: resumption. Empty key or no cache: no resumption.
  std::shared_ptr<SessionCache> session_cache;
  std::string session_cache_key;
  // Server: TLS 1.3 NewSessionTickets sent after the handshake (0: none,
  // and no TLS 1.2 tickets either).
  unsigned server_tickets = 2;
  // Server: shared ticket keys; without them tickets resume only within
  // this Session's own context, i.e. never.
  std::shared_ptr<TicketKeys> ticket_keys;
};

struct Info {
  std::string version;        // "TLSv1.3"
  std::string cipher;         // IANA name: "TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
  std::string group;          // "X25519", "P-256"; empty if none
  std::string alpn;           // negotiated protocol, empty if none
  std::string server_name;    // client: the requested name; server: the SNI received
  bool resumed = false;       // resumed from a ticket/session (not an external PSK)
  std::string peer_identity;  // RFC 2253 subject of the peer leaf, "psk:<identity>", or empty
  std::string local_identity; // the Credentials name, "psk:<identity>", or empty
};

class Session {
 public:
  enum class Status { WantRecord, NeedPeerValidation, Established, Failed };

  static std::variant<std::unique_ptr<Session>, std::string> create(const Settings& settings);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Client: produces the ClientHello (take_output). Server: nothing to do.
  Status start();
  // Feeds exactly one whole record (header included). Before Established it
  // drives the handshake; afterwards it processes post-handshake messages
  // (NewSessionTicket, KeyUpdate) and any application data (take_plaintext).
  // Anything but one whole record, or a record while NeedPeerValidation is
  // pending, fails the session.
  Status feed_record(std::span<const std::uint8_t> one_whole_record);
  Status status() const { return status_; }

  // Size of the first whole record in `buffered`; nullopt if more bytes are
  // needed, or (with *error set) if the bytes are not a TLS record.
  static std::optional<std::size_t> complete_record_length(std::span<const std::uint8_t> buffered,
                                                          std::string* error);

  // Records to send to the peer, in order. Withheld while NeedPeerValidation.
  std::vector<std::uint8_t> take_output();
  // What went wrong, for a person: the alert, the verification failure, ...
  std::string error() const { return error_; }
  // True when the session failed because the peer's identity was not
  // accepted (trust store, host name, pin, or the application's verdict).
  bool peer_validation_failed() const;

  // Application validation (RFC 8922 IV): the peer chain, leaf first, DER.
  std::vector<std::vector<std::uint8_t>> peer_chain_der() const { return peer_chain_der_; }
  // Decision for NeedPeerValidation. Rejecting fails the handshake with an
  // alert to the peer (take_output) and `reason` in error().
  Status resolve_peer_validation(bool accept, std::string reason);

  Info info() const;
  Version version() const;

  // Kernel handoff (valid once Established). Keys of the current epoch and
  // the sequence number of the next record in that direction.
  TrafficKeys tx_keys() const;
  TrafficKeys rx_keys() const;

  // The inner content type (21 alert, 22 handshake, 23 application data)
  // of a whole TLS 1.3 record protected with the current RX keys, without
  // consuming it; nullopt if it does not decrypt. For TLS 1.2 the record's
  // outer type.
  std::optional<std::uint8_t> inner_content_type(std::span<const std::uint8_t> record) const;

  // Key update on the kernel path (RFC 8922 KU, TLS 1.3 only). Returns the
  // plaintext KeyUpdate handshake message to send under the current TX keys,
  // then moves TX to the next traffic secret (seq 0). Empty if not possible.
  std::vector<std::uint8_t> key_update_message(bool request_peer);
  // The peer's KeyUpdate was received: move RX to the next secret (seq 0).
  void advance_rx_keys();
  // Number of TX key updates so far (ours, on either path).
  std::uint64_t key_epoch() const { return tx_epoch_; }

  // Post-handshake messages the kernel decrypted (kernel path, TLS 1.3).
  // hand_reads_to_kernel() is called when kTLS RX takes over; from then on
  // absorb_post_handshake() takes the plaintext of handshake records the
  // kernel read (NewSessionTickets), seals it again under the read keys
  // OpenSSL still holds and lets OpenSSL process it as if it had read it,
  // so the tickets reach the session cache. KeyUpdates are not given to it
  // (advance_rx_keys() follows them for the kernel); OpenSSL's own read
  // state stays at the keys of the hand-off.
  void hand_reads_to_kernel();
  Status absorb_post_handshake(std::span<const std::uint8_t> messages);

  // Userspace record layer, used only when the kernel lacks kTLS.
  Status feed_ciphertext(std::span<const std::uint8_t> bytes);  // any chunking
  std::vector<std::uint8_t> take_plaintext();
  void write_plaintext(std::span<const std::uint8_t> plaintext);
  void close_notify();
  bool peer_closed() const;
  void update_keys(bool request_peer);

  // RFC 8446 §7.5 exporter (RFC 8922 SSKE).
  std::variant<std::vector<std::uint8_t>, std::string> export_keying_material(std::string_view label,
                                                                             std::span<const std::uint8_t> context,
                                                                             std::size_t length) const;

  // Plaintext of a close_notify alert (RFC 8922 CT) for the kernel path,
  // which sends it as an alert record (type 21).
  static std::vector<std::uint8_t> close_notify_alert_plaintext() { return {1, 0}; }

 private:
  struct Impl;
  explicit Session(std::unique_ptr<Impl> impl);

  Status drive_handshake();
  Status pump_reads();
  Status fail(std::string why);
  void drain_output();
  std::optional<TrafficKeys> keys_for(bool transmit) const;
  bool advance_tx_secret();

  friend struct SessionCallbacks;
  std::unique_ptr<Impl> impl_;
  Status status_ = Status::WantRecord;
  std::string error_;
  std::vector<std::vector<std::uint8_t>> peer_chain_der_;
  std::uint64_t tx_epoch_ = 0;
};

std::string_view to_string(Session::Status status);

// Forgets every shared context, so that Sessions created from now on read
// certificates and trust anchor files again. Existing Sessions keep theirs.
void flush_context_cache();

}  // namespace tapsec::tls
