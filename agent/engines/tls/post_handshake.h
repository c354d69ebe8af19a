// The peer's handshake messages after the handshake (TLS 1.3
// NewSessionTicket and KeyUpdate, TLS 1.2 HelloRequest), as they come out
// of records of type handshake that kTLS decrypted: a message may span
// records and a record may hold several. Pure: bytes in, messages out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace tapsec::tls {

class PostHandshakeMessages {
 public:
  static constexpr std::uint8_t kHelloRequest = 0;
  static constexpr std::uint8_t kNewSessionTicket = 4;
  static constexpr std::uint8_t kKeyUpdate = 24;
  // RFC 8446 allows tickets of up to 2^16-1 bytes; nothing legitimate after
  // the handshake is larger.
  static constexpr std::size_t kMaxMessage = 70000;

  struct Message {
    std::uint8_t type = 0;
    std::vector<std::uint8_t> bytes;  // the whole message, its 4-byte header included
  };
  struct KeyUpdate {
    bool update_requested = false;
  };

  // Adds one record's content.
  void add(std::span<const std::uint8_t> content);
  // The next complete message, nothing when more bytes are needed, or an
  // error text when the stream cannot be a message (then every later call
  // gives the same error).
  std::variant<std::monostate, Message, std::string> next();
  // Whether part of a message is still waiting for the rest of it. A
  // KeyUpdate must end its record: the records behind it are under the
  // next key.
  bool partial() const { return !pending_.empty(); }

  // A KeyUpdate message (header included): its request_update field, or
  // nothing when malformed.
  static std::optional<KeyUpdate> parse_key_update(std::span<const std::uint8_t> message);

 private:
  std::vector<std::uint8_t> pending_;
  std::string error_;
};

}  // namespace tapsec::tls
