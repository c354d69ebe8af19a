#include "agent/kernel/tls_stat.h"

#include <gtest/gtest.h>
#include <unistd.h>

namespace tapsec::kernel {
namespace {

// As a 7.x kernel prints it (a subset of lines; order kept).
constexpr const char* sample =
    "TlsCurrTxSw                     \t2\n"
    "TlsCurrRxSw                     \t2\n"
    "TlsCurrTxDevice                 \t0\n"
    "TlsCurrRxDevice                 \t0\n"
    "TlsTxSw                         \t14\n"
    "TlsRxSw                         \t12\n"
    "TlsTxDevice                     \t0\n"
    "TlsRxDevice                     \t0\n"
    "TlsDecryptError                 \t1\n"
    "TlsRxDeviceResync               \t0\n"
    "TlsDecryptRetry                 \t0\n"
    "TlsRxNoPadViolation             \t3\n"
    "TlsRxRekeyOk                    \t5\n"
    "TlsRxRekeyError                 \t0\n"
    "TlsTxRekeyOk                    \t5\n"
    "TlsTxRekeyError                 \t0\n"
    "TlsRxRekeyReceived              \t5\n";

TEST(TlsStat, ParsesEveryCounter) {
  auto stats = parse_tls_stat(sample);
  ASSERT_TRUE(stats) << stats.error();
  EXPECT_EQ(stats->counters.size(), 17u);
  EXPECT_EQ(stats->get("TlsCurrTxSw"), 2u);
  EXPECT_EQ(stats->get("TlsTxSw"), 14u);
  EXPECT_EQ(stats->get("TlsRxSw"), 12u);
  EXPECT_EQ(stats->get("TlsDecryptError"), 1u);
  EXPECT_EQ(stats->get("TlsRxNoPadViolation"), 3u);
  EXPECT_EQ(stats->get("TlsTxRekeyOk"), 5u);
  EXPECT_EQ(stats->get("TlsRxRekeyReceived"), 5u);
}

TEST(TlsStat, MissingCounterReadsZero) {
  auto stats = parse_tls_stat("TlsTxSw 1\n");
  ASSERT_TRUE(stats) << stats.error();
  EXPECT_FALSE(stats->has("TlsTxRekeyOk"));
  EXPECT_EQ(stats->get("TlsTxRekeyOk"), 0u);
}

TEST(TlsStat, AcceptsEmptyTextAndBlankLines) {
  auto stats = parse_tls_stat("\n\nTlsRxSw 9\n\n");
  ASSERT_TRUE(stats) << stats.error();
  EXPECT_EQ(stats->get("TlsRxSw"), 9u);
  EXPECT_TRUE(parse_tls_stat(""));
}

TEST(TlsStat, LargestCounterValue) {
  auto stats = parse_tls_stat("TlsTxSw 18446744073709551615");
  ASSERT_TRUE(stats) << stats.error();
  EXPECT_EQ(stats->get("TlsTxSw"), 18446744073709551615u);
}

TEST(TlsStat, RejectsMalformedLines) {
  auto no_value = parse_tls_stat("TlsTxSw 1\nTlsRxSw\n");
  ASSERT_FALSE(no_value);
  EXPECT_EQ(no_value.error(), "tls_stat line 2: counter \"TlsRxSw\" has no value");

  auto not_number = parse_tls_stat("TlsTxSw -1");
  ASSERT_FALSE(not_number);
  EXPECT_EQ(not_number.error(), "tls_stat line 1: value \"-1\" of \"TlsTxSw\" is not an unsigned number");

  EXPECT_FALSE(parse_tls_stat("TlsTxSw 1 2"));
  EXPECT_FALSE(parse_tls_stat("TlsTxSw 99999999999999999999"));
  auto twice = parse_tls_stat("TlsTxSw 1\nTlsTxSw 2\n");
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error(), "tls_stat line 2: counter \"TlsTxSw\" appears twice");
}

TEST(TlsStat, ReadsAFile) {
  char path[] = "/tmp/tapsec-tls-stat-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, sample, std::char_traits<char>::length(sample)),
            static_cast<ssize_t>(std::char_traits<char>::length(sample)));
  ::close(fd);
  auto stats = read_tls_stat(path);
  ::unlink(path);
  ASSERT_TRUE(stats) << stats.error();
  EXPECT_EQ(stats->get("TlsTxRekeyOk"), 5u);
}

TEST(TlsStat, ExplainsAMissingFile) {
  auto stats = read_tls_stat("/nonexistent/tls_stat");
  ASSERT_FALSE(stats);
  EXPECT_EQ(stats.error(),
            "/nonexistent/tls_stat does not exist: the tls module is not loaded (or the kernel lacks kTLS)");
}

TEST(TlsStat, OwnNetnsAgreesWithDefaultPath) {
  // Both name the same namespace; on a kernel without kTLS both fail alike.
  auto direct = read_tls_stat();
  auto via_netns = read_tls_stat_in_netns("/proc/self/ns/net");
  EXPECT_EQ(direct.ok(), via_netns.ok()) << direct.error() << " / " << via_netns.error();
  auto via_pid = read_tls_stat_of_pid(::getpid());
  EXPECT_EQ(direct.ok(), via_pid.ok());
}

TEST(TlsStat, ExplainsAMissingNamespace) {
  auto stats = read_tls_stat_in_netns("/run/netns/tapsec-does-not-exist");
  ASSERT_FALSE(stats);
  EXPECT_EQ(stats.error_number(), ENOENT);
  EXPECT_EQ(stats.error().rfind("cannot open network namespace /run/netns/tapsec-does-not-exist", 0), 0u);
}

}  // namespace
}  // namespace tapsec::kernel
