// The relay's splitting of post-handshake records into messages.
#include "agent/engines/tls/post_handshake.h"

#include <gtest/gtest.h>

#include <vector>

namespace tapsec::tls {
namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes message(std::uint8_t type, std::size_t body) {
  Bytes m = {type, static_cast<std::uint8_t>(body >> 16), static_cast<std::uint8_t>(body >> 8),
             static_cast<std::uint8_t>(body)};
  for (std::size_t i = 0; i < body; ++i) m.push_back(static_cast<std::uint8_t>(i));
  return m;
}

PostHandshakeMessages::Message expect_message(PostHandshakeMessages& messages) {
  auto next = messages.next();
  auto* m = std::get_if<PostHandshakeMessages::Message>(&next);
  EXPECT_NE(m, nullptr);
  return m ? *m : PostHandshakeMessages::Message{};
}

TEST(PostHandshakeMessages, SeveralInOneRecordAndOneAcrossRecords) {
  PostHandshakeMessages messages;
  Bytes first = message(4, 200), second = message(4, 300), third = message(4, 1000);
  Bytes record = first;
  record.insert(record.end(), second.begin(), second.end());
  record.insert(record.end(), third.begin(), third.begin() + 10);
  messages.add(record);
  EXPECT_EQ(expect_message(messages).bytes, first);
  EXPECT_EQ(expect_message(messages).bytes, second);
  EXPECT_TRUE(std::holds_alternative<std::monostate>(messages.next()));
  EXPECT_TRUE(messages.partial());
  messages.add(Bytes(third.begin() + 10, third.end()));
  auto got = expect_message(messages);
  EXPECT_EQ(got.type, 4);
  EXPECT_EQ(got.bytes, third);
  EXPECT_FALSE(messages.partial());
}

TEST(PostHandshakeMessages, AnOversizedMessageIsRefusedForGood) {
  PostHandshakeMessages messages;
  messages.add(Bytes{4, 0x01, 0x20, 0x00});  // 73,728 bytes announced
  auto next = messages.next();
  ASSERT_TRUE(std::holds_alternative<std::string>(next));
  EXPECT_NE(std::get<std::string>(next).find("73728 bytes"), std::string::npos);
  messages.add(message(4, 10));
  EXPECT_TRUE(std::holds_alternative<std::string>(messages.next())) << "the stream stays refused";
}

TEST(PostHandshakeMessages, KeyUpdateFields) {
  EXPECT_TRUE(PostHandshakeMessages::parse_key_update(Bytes{24, 0, 0, 1, 1})->update_requested);
  EXPECT_FALSE(PostHandshakeMessages::parse_key_update(Bytes{24, 0, 0, 1, 0})->update_requested);
  EXPECT_FALSE(PostHandshakeMessages::parse_key_update(Bytes{24, 0, 0, 1, 2}));
  EXPECT_FALSE(PostHandshakeMessages::parse_key_update(Bytes{24, 0, 0, 2, 1, 0}));
  EXPECT_FALSE(PostHandshakeMessages::parse_key_update(Bytes{4, 0, 0, 1, 1}));
}

}  // namespace
}  // namespace tapsec::tls
