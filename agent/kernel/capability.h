// What the running kernel offers tapsec, probed once at agent start. The
// probe works unprivileged where the kernel allows (kTLS on a throwaway
// loopback connection, generic netlink lookups); as root it learns more
// (XFRM queries, module autoloading on first use). It never throws.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "agent/engines/tls/traffic_keys.h"

namespace tapsec::kernel {

struct KernelCapabilities {
  bool ktls = false;           // TCP ULP "tls" attaches and accepts TLS_TX
  bool ktls_tx_rekey = false;  // a second TLS_TX is accepted (TLS 1.3)
  bool ktls_rx_rekey = false;  // a second TLS_RX is accepted after a KeyUpdate
  std::vector<tls::RecordCipher> ktls_ciphers;  // accepted for TLS 1.3 TX
  std::vector<std::uint16_t> ktls_versions;     // 0x0303, 0x0304
  // errno of a refused re-key (0 when accepted or not tried).
  int ktls_tx_rekey_errno = 0;
  int ktls_rx_rekey_errno = 0;
  bool xfrm = false;        // NETLINK_XFRM reachable
  bool esp = false;         // esp4 loaded, built in, or loadable
  bool wireguard = false;   // generic netlink family "wireguard" resolves
  bool module_loading = false;  // the kernel loads modules at all
  std::string kernel_release;
  std::vector<std::string> notes;  // one sentence per finding, for logs and `tapsecctl status`

  // "ktls", "ktls-rekey", "xfrm", "esp", "wireguard": the features present.
  std::vector<std::string> feature_names() const;
};

KernelCapabilities probe_kernel_capabilities() noexcept;

}  // namespace tapsec::kernel
