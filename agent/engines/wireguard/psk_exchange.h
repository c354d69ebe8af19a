// The agents' own exchange for WireGuard peers, carried inside a mutually
// authenticated TLS 1.3 session between two tapsec agents. Pure: plaintext
// of that session goes in, plaintext to send and events come out; the
// caller owns the TLS session and gives access to its exporter.
//
// Messages (all integers big-endian), each framed as type(1) length(2) body:
//   HELLO   (1): version(1)=1, WireGuard public key(32), listen port(2)
//   ROTATE  (2): epoch(8), ephemeral X25519 public key(32)   initiator only
//   ACK     (3): epoch(8), ephemeral X25519 public key(32)   responder only
//   ERROR   (4): UTF-8 reason (at most 512 bytes)
// Both sides send HELLO first. The initiator (the TLS client) then sends
// ROTATE for epoch 0 and, on rotate(), for each later epoch; the responder
// answers each with ACK. Every epoch gets fresh ephemeral keys, so a PSK is
// forward secret on its own, and the TLS exporter binds it to the
// authenticated session:
//   salt = TLS-Exporter("EXPORTER-tapsec-wireguard-psk", be64(epoch), 32)
//   ikm  = X25519(ephemeral_i, ephemeral_r)
//   psk  = HKDF-SHA256(salt, ikm,
//            info = "tapsec wireguard psk" || wg_public_initiator || wg_public_responder, 32)
// The responder has the PSK when it sends ACK and installs it then; the
// initiator when ACK arrives. WireGuard uses a PSK only in its next
// handshake and keeps the current session keys meanwhile, so the short
// window where the two ends differ costs no traffic.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace tapsec::wireguard {

using Key = std::array<std::uint8_t, 32>;

enum class Role { Initiator, Responder };

struct PeerHello {
  Key public_key{};
  std::uint16_t listen_port = 0;
};
struct PskReady {
  std::uint64_t epoch = 0;
  Key psk{};  // the caller installs it and wipes its copy
};
struct ExchangeFailed {
  std::string reason;  // what went wrong, or what the peer said in ERROR
};
using ExchangeEvent = std::variant<PeerHello, PskReady, ExchangeFailed>;

// TLS exporter of the carrying session: label, context, length 32.
using Exporter = std::function<std::optional<Key>(std::string_view label, std::span<const std::uint8_t> context)>;

inline constexpr std::string_view kExporterLabel = "EXPORTER-tapsec-wireguard-psk";

class PskExchange {
 public:
  PskExchange(Role role, Key local_public_key, std::uint16_t local_listen_port, Exporter exporter);
  ~PskExchange();  // wipes ephemeral keys
  PskExchange(const PskExchange&) = delete;
  PskExchange& operator=(const PskExchange&) = delete;

  // Queues HELLO (and, for the initiator, ROTATE for epoch 0 once the
  // peer's HELLO has arrived).
  void start();
  // Plaintext from the peer, in any chunking. After a failure nothing more
  // is read.
  void feed(std::span<const std::uint8_t> bytes);
  // Initiator: start the next epoch. False (nothing sent) when the previous
  // one has not been acknowledged yet, before HELLO, or for a responder.
  bool rotate();
  // Queues ERROR with `reason` and fails the exchange.
  void abort(std::string_view reason);

  std::vector<std::uint8_t> take_output();
  std::vector<ExchangeEvent> take_events();

  bool failed() const;
  std::optional<PeerHello> peer() const;
  // The last epoch whose PSK is ready here; nullopt before the first.
  std::optional<std::uint64_t> epoch() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The derivation alone, for tests and for a peer written elsewhere.
std::optional<Key> derive_psk(std::span<const std::uint8_t> exporter_salt, const Key& shared_secret,
                              const Key& initiator_public, const Key& responder_public);

}  // namespace tapsec::wireguard
