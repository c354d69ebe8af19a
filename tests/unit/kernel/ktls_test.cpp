#include "agent/kernel/ktls.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cerrno>

#include "agent/kernel/loopback.h"

namespace tapsec::kernel {
namespace {

TrafficKeys keys_of(std::uint16_t version, RecordCipher cipher, std::size_t key_length) {
  TrafficKeys keys;
  keys.version = version;
  keys.cipher = cipher;
  keys.key.assign(key_length, 0x42);
  return keys;
}

TEST(ValidateKeys, AcceptsEachCipherWithItsKeyLength) {
  EXPECT_FALSE(validate_keys(keys_of(tls13_version, RecordCipher::AesGcm128, 16)));
  EXPECT_FALSE(validate_keys(keys_of(tls13_version, RecordCipher::AesGcm256, 32)));
  EXPECT_FALSE(validate_keys(keys_of(tls12_version, RecordCipher::Chacha20Poly1305, 32)));
}

TEST(ValidateKeys, NamesAWrongKeyLength) {
  auto error = validate_keys(keys_of(tls13_version, RecordCipher::AesGcm256, 16));
  ASSERT_TRUE(error);
  EXPECT_EQ(*error, "AES-256-GCM needs a 32-byte key, got 16 bytes");
}

TEST(ValidateKeys, RejectsVersionsKtlsDoesNotCarry) {
  auto error = validate_keys(keys_of(0x0302, RecordCipher::AesGcm128, 16));
  ASSERT_TRUE(error);
  EXPECT_EQ(*error, "unsupported TLS version 0x0302 (kTLS carries TLS 1.2 and 1.3)");
}

TEST(InstallTx, RejectsBadKeysBeforeAskingTheKernel) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  int error_number = 0;
  auto error = install_tx(pair->client.get(), keys_of(tls13_version, RecordCipher::AesGcm128, 5),
                          &error_number);
  ASSERT_TRUE(error);
  EXPECT_EQ(error_number, EINVAL);
}

TEST(InstallTx, WithoutUlpExplainsTheMissingStep) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  int error_number = 0;
  auto error = install_tx(pair->client.get(), keys_of(tls13_version, RecordCipher::AesGcm128, 16),
                          &error_number);
  ASSERT_TRUE(error);
  EXPECT_EQ(error_number, ENOPROTOOPT);
  EXPECT_NE(error->find("call install_ulp first"), std::string::npos) << *error;
}

TEST(InstallUlp, ExplainsAMissingKtlsOrSucceeds) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  auto error = install_ulp(pair->client.get());
  if (!error) {
    auto name = ulp_name(pair->client.get());
    ASSERT_TRUE(name) << name.error();
    EXPECT_EQ(name.value(), "tls");
    return;
  }
  EXPECT_EQ(error->rfind(ktls_missing_message, 0), 0u) << *error;
}

TEST(InstallUlp, RefusesAUdpSocket) {
  core::UniqueFd udp(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(udp);
  auto error = install_ulp(udp.get());
  ASSERT_TRUE(error);
  EXPECT_NE(error->find("TCP_ULP"), std::string::npos) << *error;
}

TEST(UlpName, EmptyOnAPlainTcpSocket) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  auto name = ulp_name(pair->server.get());
  ASSERT_TRUE(name) << name.error();
  EXPECT_EQ(name.value(), "");
  EXPECT_FALSE(tx_installed(pair->server.get()));
  EXPECT_FALSE(rx_installed(pair->server.get()));
}

TEST(SendRecord, RefusesToSendAnAlertInPlaintext) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  auto sent = send_record(pair->client.get(), content_type::alert, close_notify_alert);
  ASSERT_FALSE(sent);
  EXPECT_EQ(sent.error_number(), ENOPROTOOPT);
  EXPECT_NE(sent.error().find("plaintext"), std::string::npos) << sent.error();
  // Nothing left the socket.
  std::uint8_t byte;
  EXPECT_EQ(::recv(pair->server.get(), &byte, 1, MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST(RecvRecord, LeavesPlainBytesUnreadWithoutKtlsRx) {
  auto pair = make_loopback_tcp_pair();
  ASSERT_TRUE(pair) << pair.error();
  ASSERT_EQ(::send(pair->client.get(), "x", 1, 0), 1);
  std::uint8_t buffer[8];
  auto record = recv_record(pair->server.get(), buffer);
  ASSERT_FALSE(record);
  EXPECT_EQ(record.error(), "kTLS RX is not installed on this socket");
  EXPECT_EQ(::recv(pair->server.get(), buffer, sizeof(buffer), 0), 1);
}

TEST(KeyUpdateMessage, MatchesRfc8446Encoding) {
  EXPECT_EQ(key_update_message(false), (std::array<std::uint8_t, 5>{24, 0, 0, 1, 0}));
  EXPECT_EQ(key_update_message(true), (std::array<std::uint8_t, 5>{24, 0, 0, 1, 1}));
}

TEST(DescribeErrno, GivesNameAndText) {
  EXPECT_EQ(describe_errno(EBUSY), "EBUSY (Device or resource busy)");
}

}  // namespace
}  // namespace tapsec::kernel
