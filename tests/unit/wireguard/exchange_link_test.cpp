// The bounds of an accepted exchange connection (WgExchangeLink as
// responder) on a socketpair: the handshake time limit, the byte cap before
// authentication, and what is not TLS.
#include "agent/state/wg_exchange_link.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "tests/unit/tls/test_pki.h"

namespace tapsec::state {
namespace {

using namespace std::chrono_literals;
using Ending = WgExchangeLink::Ending;

struct Closed {
  Ending ending;
  std::string reason;
  std::chrono::steady_clock::duration after;
};

class ExchangeLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
    ours_.reset(fds[0]);
    peer_.reset(fds[1]);
    auto settings = std::make_shared<tls::Settings>();
    settings->role = tls::Role::Server;
    settings->min_version = settings->max_version = tls::Version::Tls13;
    settings->require_peer_certificate = true;
    settings->credentials = tls::testing::pki().server_ec;
    settings->trust_anchor_files = {tls::testing::pki().ca_pem};
    settings->use_system_trust = false;
    setup_.settings = settings;
    setup_.limits.handshake_timeout = 200ms;
  }

  // Accepts our end and runs the loop until the link is closed (at most 3 s).
  std::optional<Closed> run() {
    auto started = std::chrono::steady_clock::now();
    std::optional<Closed> closed;
    WgExchangeLink::Callbacks callbacks;
    callbacks.closed = [&](Ending ending, const std::string& reason) {
      closed = Closed{ending, reason, std::chrono::steady_clock::now() - started};
      reactor_.stop();
    };
    ikev2::Endpoint remote;
    remote.address = *ikev2::IpAddress::parse("192.0.2.9");
    auto link = WgExchangeLink::accept(reactor_, std::move(ours_), remote, setup_, std::move(callbacks));
    EXPECT_EQ(link->remote_address().to_string(), "192.0.2.9");
    auto guard = reactor_.add_timer(3s, [&] { reactor_.stop(); });
    EXPECT_EQ(reactor_.run(), 0);
    reactor_.cancel_timer(guard);
    return closed;
  }

  void send_to_link(const std::vector<std::uint8_t>& bytes) {
    ASSERT_EQ(::send(peer_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  // The same once the loop runs, after `delay`: the link has taken in what
  // came before.
  void send_to_link_after(std::chrono::milliseconds delay, std::vector<std::uint8_t> bytes) {
    reactor_.add_timer(delay, [this, bytes = std::move(bytes)] { send_to_link(bytes); });
  }

  // A handshake record of `body` bytes; the first one opens a ClientHello
  // that claims 65,535 bytes, so TLS keeps waiting for the rest.
  static std::vector<std::uint8_t> handshake_record(std::size_t body, bool first) {
    std::vector<std::uint8_t> record = {0x16, 0x03, 0x01, static_cast<std::uint8_t>(body >> 8),
                                        static_cast<std::uint8_t>(body)};
    if (first) record.insert(record.end(), {0x01, 0x00, 0xff, 0xff});
    record.resize(5 + body, 0);
    return record;
  }

  core::Reactor reactor_;
  core::UniqueFd ours_, peer_;
  WgExchangeLink::Setup setup_;
};

TEST_F(ExchangeLinkTest, ASilentPeerIsDroppedAtTheHandshakeLimit) {
  auto closed = run();
  ASSERT_TRUE(closed) << "a silent peer was still connected after 3 s";
  EXPECT_EQ(closed->ending, Ending::TimedOut);
  EXPECT_NE(closed->reason.find("not authenticated within 200 ms"), std::string::npos) << closed->reason;
  EXPECT_GE(closed->after, 190ms);
  EXPECT_LT(closed->after, 1500ms);
}

TEST_F(ExchangeLinkTest, AnUnfinishedHandshakeIsDroppedAtTheHandshakeLimitToo) {
  send_to_link(handshake_record(1000, true));  // TLS waits for the rest of the ClientHello
  auto closed = run();
  ASSERT_TRUE(closed);
  EXPECT_EQ(closed->ending, Ending::TimedOut) << closed->reason;
}

TEST_F(ExchangeLinkTest, MoreBytesThanTheCapBeforeAuthenticatingEndTheLink) {
  setup_.limits.handshake_timeout = 2s;
  setup_.limits.max_buffered = 8192;
  // Each record is whole and goes to TLS before the next comes; it is the
  // sum that passes the cap, not what is buffered at once.
  send_to_link(handshake_record(4000, true));
  send_to_link_after(50ms, handshake_record(4000, false));
  send_to_link_after(100ms, handshake_record(4000, false));
  auto closed = run();
  ASSERT_TRUE(closed);
  EXPECT_EQ(closed->ending, Ending::TooMuchData) << closed->reason;
  EXPECT_NE(closed->reason.find("more than 8192 bytes before authenticating"), std::string::npos) << closed->reason;
  EXPECT_LT(closed->after, 1s);
}

TEST_F(ExchangeLinkTest, BytesWithinTheCapAreNotRefused) {
  setup_.limits.max_buffered = 8192;
  send_to_link(handshake_record(4000, true));
  send_to_link(handshake_record(4000, false));  // 8,010 bytes in all
  auto closed = run();
  ASSERT_TRUE(closed);
  EXPECT_EQ(closed->ending, Ending::TimedOut) << closed->reason;
}

TEST_F(ExchangeLinkTest, WhatIsNotTlsFailsAtOnce) {
  std::string request = "GET / HTTP/1.1\r\n\r\n";
  send_to_link(std::vector<std::uint8_t>(request.begin(), request.end()));
  auto closed = run();
  ASSERT_TRUE(closed);
  EXPECT_EQ(closed->ending, Ending::Failed);
  EXPECT_NE(closed->reason.find("not TLS"), std::string::npos) << closed->reason;
  EXPECT_LT(closed->after, 190ms);
}

TEST_F(ExchangeLinkTest, APeerThatClosesEndsTheLink) {
  peer_.reset();
  auto closed = run();
  ASSERT_TRUE(closed);
  EXPECT_EQ(closed->ending, Ending::Failed);
  EXPECT_NE(closed->reason.find("closed the connection"), std::string::npos) << closed->reason;
}

}  // namespace
}  // namespace tapsec::state
