#include "agent/kernel/ktls.h"

#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

namespace tapsec::kernel {
namespace {

const char* direction_name(int direction) { return direction == TLS_TX ? "TLS_TX" : "TLS_RX"; }

std::size_t expected_key_length(RecordCipher cipher) {
  switch (cipher) {
    case RecordCipher::AesGcm128:
      return TLS_CIPHER_AES_GCM_128_KEY_SIZE;
    case RecordCipher::AesGcm256:
      return TLS_CIPHER_AES_GCM_256_KEY_SIZE;
    case RecordCipher::Chacha20Poly1305:
      return TLS_CIPHER_CHACHA20_POLY1305_KEY_SIZE;
  }
  return 0;
}

const char* cipher_label(RecordCipher cipher) {
  switch (cipher) {
    case RecordCipher::AesGcm128:
      return "AES-128-GCM";
    case RecordCipher::AesGcm256:
      return "AES-256-GCM";
    case RecordCipher::Chacha20Poly1305:
      return "ChaCha20-Poly1305";
  }
  return "unknown cipher";
}

void store_big_endian(std::uint64_t value, unsigned char (&out)[8]) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<unsigned char>(value & 0xff);
    value >>= 8;
  }
}

// AES-GCM (both versions): the kernel builds the nonce as salt || iv, so the
// 12-byte IV of TrafficKeys splits into 4 bytes of salt and 8 of iv. For
// TLS 1.2 those 8 bytes are the explicit nonce of the next record sent.
template <typename CryptoInfo>
void fill_aes_gcm(CryptoInfo& info, const TrafficKeys& keys) {
  static_assert(sizeof(info.salt) + sizeof(info.iv) == 12);
  std::memcpy(info.salt, keys.iv.data(), sizeof(info.salt));
  std::memcpy(info.iv, keys.iv.data() + sizeof(info.salt), sizeof(info.iv));
  std::memcpy(info.key, keys.key.data(), sizeof(info.key));
  store_big_endian(keys.seq, info.rec_seq);
}

template <typename CryptoInfo>
std::optional<std::string> set_crypto_info(int fd, int direction, CryptoInfo& info,
                                           int* error_number) {
  const int rc = ::setsockopt(fd, SOL_TLS, direction, &info, sizeof(info));
  const int saved_errno = rc == 0 ? 0 : errno;
  OPENSSL_cleanse(&info, sizeof(info));
  if (error_number) *error_number = saved_errno;
  if (rc == 0) return std::nullopt;
  std::string message = std::string("setsockopt ") + direction_name(direction) + " failed: " +
                        describe_errno(saved_errno);
  switch (saved_errno) {
    case EBUSY:
      message += "; keys are already installed in this direction and this kernel cannot replace "
                 "them (kTLS re-key needs TLS 1.3 and a kernel newer than 6.1, such as 7.x)";
      break;
    case ENOPROTOOPT:
      message += "; the TLS ULP is not installed on this socket (call install_ulp first)";
      break;
    case EINVAL:
      message += "; the kernel rejected the parameters (cipher not built in, a re-key that "
                 "changes version or cipher, or an RX re-key before the peer's KeyUpdate was read)";
      break;
    case ENOENT:
    case ENOPKG:
      message += "; the kernel lacks the crypto algorithm for this cipher";
      break;
    default:
      break;
  }
  return message;
}

std::optional<std::string> install_keys(int fd, int direction, const TrafficKeys& keys,
                                        int* error_number) {
  if (error_number) *error_number = 0;
  if (auto invalid = validate_keys(keys)) {
    if (error_number) *error_number = EINVAL;
    return invalid;
  }
  switch (keys.cipher) {
    case RecordCipher::AesGcm128: {
      tls12_crypto_info_aes_gcm_128 info{};
      info.info.version = keys.version;
      info.info.cipher_type = TLS_CIPHER_AES_GCM_128;
      fill_aes_gcm(info, keys);
      return set_crypto_info(fd, direction, info, error_number);
    }
    case RecordCipher::AesGcm256: {
      tls12_crypto_info_aes_gcm_256 info{};
      info.info.version = keys.version;
      info.info.cipher_type = TLS_CIPHER_AES_GCM_256;
      fill_aes_gcm(info, keys);
      return set_crypto_info(fd, direction, info, error_number);
    }
    case RecordCipher::Chacha20Poly1305: {
      // No salt: the whole 12-byte IV goes to the kernel (same in 1.2 and 1.3).
      tls12_crypto_info_chacha20_poly1305 info{};
      static_assert(sizeof(info.iv) == 12);
      info.info.version = keys.version;
      info.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
      std::memcpy(info.iv, keys.iv.data(), sizeof(info.iv));
      std::memcpy(info.key, keys.key.data(), sizeof(info.key));
      store_big_endian(keys.seq, info.rec_seq);
      return set_crypto_info(fd, direction, info, error_number);
    }
  }
  return "unknown record cipher";
}

std::optional<std::string> set_int_option(int fd, int option, const char* option_name) {
  const int enabled = 1;
  if (::setsockopt(fd, SOL_TLS, option, &enabled, sizeof(enabled)) == 0) return std::nullopt;
  return std::string("setsockopt ") + option_name + " failed: " + describe_errno(errno);
}

// Whether TLS_TX/TLS_RX keys are installed. Reads only the version/cipher
// header: the full structure would carry the key back out of the kernel.
bool direction_installed(int fd, int direction) {
  tls_crypto_info header{};
  socklen_t length = sizeof(header);
  return ::getsockopt(fd, SOL_TLS, direction, &header, &length) == 0 && header.cipher_type != 0;
}

}  // namespace

bool tx_installed(int fd) { return direction_installed(fd, TLS_TX); }
bool rx_installed(int fd) { return direction_installed(fd, TLS_RX); }

std::optional<std::string> validate_keys(const TrafficKeys& keys) {
  if (keys.version != tls12_version && keys.version != tls13_version) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "0x%04x", keys.version);
    return std::string("unsupported TLS version ") + hex + " (kTLS carries TLS 1.2 and 1.3)";
  }
  const std::size_t expected = expected_key_length(keys.cipher);
  if (expected == 0) return std::string("unknown record cipher");
  if (keys.key.size() != expected) {
    return std::string(cipher_label(keys.cipher)) + " needs a " + std::to_string(expected) +
           "-byte key, got " + std::to_string(keys.key.size()) + " bytes";
  }
  return std::nullopt;
}

std::optional<std::string> install_ulp(int fd) {
  static constexpr char ulp[] = "tls";
  if (::setsockopt(fd, SOL_TCP, TCP_ULP, ulp, sizeof(ulp) - 1) == 0) return std::nullopt;
  const int saved_errno = errno;
  std::string message = "setsockopt TCP_ULP \"tls\" failed: " + describe_errno(saved_errno);
  switch (saved_errno) {
    case ENOENT:
      return std::string(ktls_missing_message) + " (" +
             describe_errno(saved_errno) + " from TCP_ULP \"tls\")";
    case EEXIST:
      return message + "; the socket already carries a TCP ULP";
    case ENOTCONN:
      return message + "; the socket is not connected";
    case ENOPROTOOPT:
    case EOPNOTSUPP:
      return message + "; not a TCP socket";
    default:
      return message;
  }
}

std::optional<std::string> install_tx(int fd, const TrafficKeys& keys, int* error_number) {
  return install_keys(fd, TLS_TX, keys, error_number);
}

std::optional<std::string> install_rx(int fd, const TrafficKeys& keys, int* error_number) {
  return install_keys(fd, TLS_RX, keys, error_number);
}

Result<std::string> ulp_name(int fd) {
  char name[64] = {};
  socklen_t length = sizeof(name);
  if (::getsockopt(fd, SOL_TCP, TCP_ULP, name, &length) != 0) {
    return Result<std::string>::failure("getsockopt TCP_ULP failed: " + describe_errno(errno),
                                        errno);
  }
  return Result<std::string>::success(std::string(name, ::strnlen(name, length)));
}

std::optional<std::string> enable_tx_zerocopy_readonly(int fd) {
#ifdef TLS_TX_ZEROCOPY_RO
  return set_int_option(fd, TLS_TX_ZEROCOPY_RO, "TLS_TX_ZEROCOPY_RO");
#else
  return std::string("built without TLS_TX_ZEROCOPY_RO");
#endif
}

std::optional<std::string> enable_rx_expect_no_pad(int fd) {
#ifdef TLS_RX_EXPECT_NO_PAD
  return set_int_option(fd, TLS_RX_EXPECT_NO_PAD, "TLS_RX_EXPECT_NO_PAD");
#else
  return std::string("built without TLS_RX_EXPECT_NO_PAD");
#endif
}

Result<std::size_t> send_record(int fd, std::uint8_t record_type,
                                std::span<const std::uint8_t> data, int flags) {
  // Without kTLS TX the kernel ignores the record-type message and sends
  // the bytes as plain TCP payload: never let an alert leave unprotected.
  if (!tx_installed(fd)) {
    return Result<std::size_t>::failure(
        "kTLS TX is not installed on this socket: refusing to send a record in plaintext",
        ENOPROTOOPT);
  }
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(record_type))] = {};
  iovec iov{const_cast<std::uint8_t*>(data.data()), data.size()};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof(control);
  cmsghdr* header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_TLS;
  header->cmsg_type = TLS_SET_RECORD_TYPE;
  header->cmsg_len = CMSG_LEN(sizeof(record_type));
  std::memcpy(CMSG_DATA(header), &record_type, sizeof(record_type));

  for (;;) {
    const ssize_t sent = ::sendmsg(fd, &message, flags | MSG_NOSIGNAL);
    if (sent >= 0) return Result<std::size_t>::success(static_cast<std::size_t>(sent));
    if (errno == EINTR) continue;
    const int saved_errno = errno;
    std::string text = "sendmsg of a record of type " + std::to_string(record_type) +
                       " failed: " + describe_errno(saved_errno);
    return Result<std::size_t>::failure(std::move(text), saved_errno);
  }
}

Result<ReceivedRecord> recv_record(int fd, std::span<std::uint8_t> buffer, int flags) {
  // Checked first: on a plain socket recvmsg would consume bytes that are
  // not a decrypted record.
  if (!rx_installed(fd)) {
    return Result<ReceivedRecord>::failure("kTLS RX is not installed on this socket", ENOPROTOOPT);
  }
  return recv_installed(fd, buffer, flags);
}

Result<ReceivedRecord> recv_installed(int fd, std::span<std::uint8_t> buffer, int flags) {
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(std::uint8_t))] = {};
  iovec iov{buffer.data(), buffer.size()};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof(control);

  ssize_t received;
  do {
    received = ::recvmsg(fd, &message, flags);
  } while (received < 0 && errno == EINTR);
  if (received < 0) {
    const int saved_errno = errno;
    std::string text = "recvmsg failed: " + describe_errno(saved_errno);
    if (saved_errno == EKEYEXPIRED)
      text += "; the peer updated its keys (KeyUpdate): install the next RX key";
    else if (saved_errno == EBADMSG)
      text += "; a record failed authentication (wrong key or sequence number)";
    return Result<ReceivedRecord>::failure(std::move(text), saved_errno);
  }

  ReceivedRecord record;
  record.length = static_cast<std::size_t>(received);
  bool have_type = false;
  for (cmsghdr* header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level == SOL_TLS && header->cmsg_type == TLS_GET_RECORD_TYPE) {
      std::memcpy(&record.content_type, CMSG_DATA(header), sizeof(record.content_type));
      have_type = true;
    }
  }
  if (!have_type) {
    if (received == 0) return Result<ReceivedRecord>::success(record);  // end of stream
    return Result<ReceivedRecord>::failure(
        "recvmsg returned no TLS_GET_RECORD_TYPE: kTLS RX is not installed on this socket");
  }
  return Result<ReceivedRecord>::success(record);
}

std::array<std::uint8_t, 5> key_update_message(bool request_peer_update) {
  // msg_type key_update(24), 24-bit length 1, KeyUpdateRequest.
  return {24, 0, 0, 1, static_cast<std::uint8_t>(request_peer_update ? 1 : 0)};
}

}  // namespace tapsec::kernel
