// Installing TLS record protection into the kernel (kTLS) on a connected TCP
// socket, and sending/receiving records of a chosen content type on it.
//
// Order on a socket: install_ulp() once, then install_tx() / install_rx()
// (each direction alone is fine). A second install_tx()/install_rx() on the
// same socket is a re-key: newer kernels (7.x) accept it for TLS 1.3 (RX only
// after the peer's KeyUpdate record was read); older kernels such as 6.1
// refuse it with EBUSY, and there a peer's KeyUpdate ends the connection.
//
// With kTLS RX installed, read() of a non-data record (alert, handshake such
// as NewSessionTicket or KeyUpdate) fails with EIO; recv_record() reads any
// record and reports its type.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "agent/engines/tls/traffic_keys.h"
#include "agent/kernel/result.h"

namespace tapsec::kernel {

using tls::RecordCipher;
using tls::TrafficKeys;

// TLS record content types (RFC 8446 §5.1).
namespace content_type {
inline constexpr std::uint8_t change_cipher_spec = 20;
inline constexpr std::uint8_t alert = 21;
inline constexpr std::uint8_t handshake = 22;
inline constexpr std::uint8_t application_data = 23;
}  // namespace content_type

inline constexpr std::uint16_t tls12_version = 0x0303;
inline constexpr std::uint16_t tls13_version = 0x0304;

// How install_ulp()'s error (and the capability probe's note) begins when
// the kernel has no kTLS.
inline constexpr const char* ktls_missing_message =
    "kernel lacks kTLS: load module tls or allow fallback";

// Attaches the "tls" TCP upper-layer protocol. ENOENT means the kernel has
// no kTLS (module not loaded and not loadable by this caller).
std::optional<std::string> install_ulp(int fd);

// Install the keys protecting what this socket sends / receives. The keys
// are copied into a kernel request structure that is wiped before return.
// error_number, when given, receives the errno of a failed setsockopt (0
// otherwise): EBUSY on a re-key that the kernel cannot do.
std::optional<std::string> install_tx(int fd, const TrafficKeys& keys, int* error_number = nullptr);
std::optional<std::string> install_rx(int fd, const TrafficKeys& keys, int* error_number = nullptr);

// Checks version, cipher and key length; nullopt when the kernel could take
// them. install_tx/install_rx call this first.
std::optional<std::string> validate_keys(const TrafficKeys& keys);

// Name of the TCP ULP on the socket: "" when none, "tls" after install_ulp().
Result<std::string> ulp_name(int fd);

// Whether keys are installed in that direction (the ULP alone is not enough).
bool tx_installed(int fd);
bool rx_installed(int fd);

// Opt-ins of newer kernels (both exist since 6.0). Zero-copy TX applies only
// to sendfile and requires that the file is not modified while in flight.
// "Expect no padding" lets TLS 1.3 RX decrypt in place; a record that does
// carry padding is decrypted again, counted in TlsRxNoPadViolation.
std::optional<std::string> enable_tx_zerocopy_readonly(int fd);
std::optional<std::string> enable_rx_expect_no_pad(int fd);

// Sends one record of the given content type, e.g. an alert
// ({1, 0} = close_notify) or a handshake message (KeyUpdate). Returns the
// number of bytes taken; interrupted calls are retried. Refuses (ENOPROTOOPT)
// when kTLS TX is not installed, since the kernel would send plaintext.
Result<std::size_t> send_record(int fd, std::uint8_t record_type,
                                std::span<const std::uint8_t> data, int flags = 0);

struct ReceivedRecord {
  std::uint8_t content_type = 0;
  std::size_t length = 0;  // bytes written into the buffer; 0 at end of stream
};

// Reads from a kTLS RX socket, reporting the record type. The kernel stops
// at a change of record type, so a non-data record is returned alone.
// Errors keep their errno: EKEYEXPIRED (peer updated keys, install the next
// RX key), EBADMSG (authentication failure), EAGAIN (non-blocking).
Result<ReceivedRecord> recv_record(int fd, std::span<std::uint8_t> buffer, int flags = 0);
// The same on a socket the caller knows has kTLS RX installed (one system
// call instead of two, for the relay's data path).
Result<ReceivedRecord> recv_installed(int fd, std::span<std::uint8_t> buffer, int flags = 0);

// KeyUpdate handshake message body (RFC 8446 §4.6.3), to send with
// send_record(fd, content_type::handshake, ...).
std::array<std::uint8_t, 5> key_update_message(bool request_peer_update);

// close_notify alert body.
inline constexpr std::array<std::uint8_t, 2> close_notify_alert{1, 0};

}  // namespace tapsec::kernel
