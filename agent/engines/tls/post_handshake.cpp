#include "agent/engines/tls/post_handshake.h"

namespace tapsec::tls {

void PostHandshakeMessages::add(std::span<const std::uint8_t> content) {
  if (!error_.empty()) return;
  pending_.insert(pending_.end(), content.begin(), content.end());
}

std::variant<std::monostate, PostHandshakeMessages::Message, std::string> PostHandshakeMessages::next() {
  if (!error_.empty()) return error_;
  if (pending_.size() < 4) return std::monostate{};
  const std::size_t length =
      (std::size_t{pending_[1]} << 16) | (std::size_t{pending_[2]} << 8) | std::size_t{pending_[3]};
  if (length + 4 > kMaxMessage) {
    error_ = "the peer sent a post-handshake message of " + std::to_string(length) + " bytes";
    pending_.clear();
    return error_;
  }
  if (pending_.size() < length + 4) return std::monostate{};
  Message message;
  message.type = pending_[0];
  message.bytes.assign(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(length + 4));
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(length + 4));
  return message;
}

std::optional<PostHandshakeMessages::KeyUpdate> PostHandshakeMessages::parse_key_update(
    std::span<const std::uint8_t> message) {
  // type 24, length 1, request_update 0 (update_not_requested) or 1.
  if (message.size() != 5 || message[0] != kKeyUpdate || message[1] != 0 || message[2] != 0 || message[3] != 1 ||
      message[4] > 1)
    return std::nullopt;
  return KeyUpdate{message[4] == 1};
}

}  // namespace tapsec::tls
