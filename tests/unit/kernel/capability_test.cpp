#include "agent/kernel/capability.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "agent/kernel/ktls.h"
#include "agent/kernel/loopback.h"

namespace tapsec::kernel {
namespace {

bool kernel_attaches_tls_ulp() {
  auto pair = make_loopback_tcp_pair();
  return pair && !install_ulp(pair->client.get());
}

bool has_note_starting_with(const KernelCapabilities& caps, const std::string& prefix) {
  return std::any_of(caps.notes.begin(), caps.notes.end(),
                     [&](const std::string& note) { return note.rfind(prefix, 0) == 0; });
}

TEST(CapabilityProbe, ReportsKernelRelease) {
  const auto caps = probe_kernel_capabilities();
  EXPECT_FALSE(caps.kernel_release.empty());
}

TEST(CapabilityProbe, ReportsMissingKtlsWithTheExplanation) {
  if (kernel_attaches_tls_ulp()) GTEST_SKIP() << "this kernel has kTLS";
  const auto caps = probe_kernel_capabilities();
  EXPECT_FALSE(caps.ktls);
  EXPECT_FALSE(caps.ktls_tx_rekey);
  EXPECT_FALSE(caps.ktls_rx_rekey);
  EXPECT_TRUE(caps.ktls_ciphers.empty());
  EXPECT_TRUE(has_note_starting_with(
      caps,
      "kernel lacks kTLS: load module tls or allow fallback (ENOENT (No such file or directory) "
      "from TCP_ULP \"tls\")"));
  const auto features = caps.feature_names();
  EXPECT_EQ(std::count(features.begin(), features.end(), "ktls"), 0);
}

TEST(CapabilityProbe, ReportsKtlsCiphersWhenPresent) {
  if (!kernel_attaches_tls_ulp()) GTEST_SKIP() << "this kernel has no kTLS";
  const auto caps = probe_kernel_capabilities();
  EXPECT_TRUE(caps.ktls);
  EXPECT_FALSE(caps.ktls_ciphers.empty());
}

TEST(CapabilityProbe, FeatureNamesFollowTheFlags) {
  KernelCapabilities caps;
  caps.ktls = true;
  caps.ktls_tx_rekey = true;  // RX re-key missing: no "ktls-rekey"
  caps.xfrm = true;
  caps.wireguard = true;
  EXPECT_EQ(caps.feature_names(), (std::vector<std::string>{"ktls", "xfrm", "wireguard"}));
  caps.ktls_rx_rekey = true;
  caps.esp = true;
  EXPECT_EQ(caps.feature_names(),
            (std::vector<std::string>{"ktls", "ktls-rekey", "xfrm", "esp", "wireguard"}));
}

TEST(CapabilityProbe, WireguardAnswerIsConsistentWithItsNote) {
  const auto caps = probe_kernel_capabilities();
  const bool noted_missing = has_note_starting_with(caps, "kernel lacks WireGuard");
  EXPECT_NE(caps.wireguard, noted_missing);
}

}  // namespace
}  // namespace tapsec::kernel
