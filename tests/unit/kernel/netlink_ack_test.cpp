// Reading netlink acknowledgements (no socket needed).
#include <gtest/gtest.h>
#include <linux/netlink.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "agent/kernel/netlink_ack.h"

namespace {

using tapsec::kernel::read_acknowledgement;

struct Ack {
  nlmsghdr header{};
  nlmsgerr error{};
  explicit Ack(int code) {
    header.nlmsg_len = NLMSG_LENGTH(sizeof error);
    header.nlmsg_type = NLMSG_ERROR;
    error.error = code;
  }
};

int error_number_of(int code) {
  const Ack ack(code);
  return read_acknowledgement(&ack.header).error_number;
}

TEST(NetlinkAck, ReadsTheErrno) {
  EXPECT_EQ(error_number_of(0), 0);
  EXPECT_EQ(error_number_of(-ENOENT), ENOENT);
}

TEST(NetlinkAck, ACodeThatIsNoNegatedErrnoIsAProtocolError) {
  EXPECT_EQ(error_number_of(INT_MIN), EPROTO);
  EXPECT_EQ(error_number_of(5), EPROTO);
  Ack short_ack(-ENOENT);
  short_ack.header.nlmsg_len = NLMSG_LENGTH(2);
  EXPECT_EQ(read_acknowledgement(&short_ack.header).error_number, EPROTO);
}

}  // namespace
