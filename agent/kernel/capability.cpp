#include "agent/kernel/capability.h"

#include <fcntl.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/xfrm.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "agent/core/unique_fd.h"
#include "agent/kernel/ktls.h"
#include "agent/kernel/loopback.h"
#include "agent/kernel/tls_stat.h"

namespace tapsec::kernel {
namespace {

using core::UniqueFd;

const char* cipher_label(RecordCipher cipher) {
  switch (cipher) {
    case RecordCipher::AesGcm128: return "AES-128-GCM";
    case RecordCipher::AesGcm256: return "AES-256-GCM";
    case RecordCipher::Chacha20Poly1305: return "ChaCha20-Poly1305";
  }
  return "?";
}

// Key material that protects nothing: the probe's connections carry no data
// anyone reads. A different fill per epoch tells re-keys apart.
TrafficKeys probe_keys(std::uint16_t version, RecordCipher cipher, std::uint8_t fill) {
  TrafficKeys keys;
  keys.version = version;
  keys.cipher = cipher;
  keys.key.assign(cipher == RecordCipher::AesGcm128 ? 16 : 32, fill);
  keys.iv.fill(static_cast<std::uint8_t>(fill + 1));
  keys.seq = 0;
  return keys;
}

bool path_exists(const std::string& path) {
  struct stat status {};
  return ::stat(path.c_str(), &status) == 0;
}

std::string read_first_line(const std::string& path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return line;
}

std::string modules_directory(const std::string& release) {
  for (const char* base : {"/lib/modules/", "/usr/lib/modules/"}) {
    if (path_exists(base + release)) return base + release;
  }
  return {};
}

bool module_listed_in(const std::string& file, const std::string& module_path_fragment) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(module_path_fragment) != std::string::npos) return true;
  }
  return false;
}

// Loaded (shows under /sys/module), built in (modules.builtin), or a module
// file that modprobe could load.
enum class ModuleState { Absent, Loaded, BuiltIn, Loadable };

ModuleState module_state(const std::string& name, const std::string& relative_dir,
                         const std::string& modules_dir, bool module_loading) {
  if (path_exists("/sys/module/" + name)) return ModuleState::Loaded;
  if (modules_dir.empty()) return ModuleState::Absent;
  const std::string fragment = relative_dir + "/" + name + ".ko";
  if (module_listed_in(modules_dir + "/modules.builtin", fragment)) return ModuleState::BuiltIn;
  if (module_loading && module_listed_in(modules_dir + "/modules.dep", fragment))
    return ModuleState::Loadable;
  return ModuleState::Absent;
}

void probe_module_loading(KernelCapabilities& caps, const std::string& modules_dir) {
  if (!path_exists("/proc/modules")) {
    caps.notes.push_back("kernel built without module support: only built-in features exist");
    return;
  }
  if (read_first_line("/proc/sys/kernel/modules_disabled") == "1") {
    caps.notes.push_back("module loading is disabled (kernel.modules_disabled=1)");
    return;
  }
  if (modules_dir.empty()) {
    struct stat info {};
    const bool hidden = ::stat(("/lib/modules/" + caps.kernel_release).c_str(), &info) != 0 && errno == EACCES;
    caps.notes.push_back(hidden ? "the kernel's module tree is hidden from the agent (ProtectKernelModules= in its "
                                  "unit): what is not loaded already is loaded by the kernel on first use or at boot "
                                  "(modules-load.d)"
                                : "no /lib/modules/" + caps.kernel_release +
                                      ": modules for this kernel are not installed");
    return;
  }
  caps.module_loading = true;
}

// Whether a TLS 1.3 socket pair can re-key its receive side: the sender
// announces a KeyUpdate, the receiver reads it, then installs the next key.
void probe_rx_rekey(KernelCapabilities& caps, RecordCipher cipher) {
  auto pair = make_loopback_tcp_pair();
  if (!pair) return;
  const int sender = pair->client.get(), receiver = pair->server.get();
  if (install_ulp(sender) || install_ulp(receiver)) return;
  if (install_tx(sender, probe_keys(tls13_version, cipher, 0x21)) ||
      install_rx(receiver, probe_keys(tls13_version, cipher, 0x21))) {
    return;
  }
  const auto key_update = key_update_message(false);
  if (!send_record(sender, content_type::handshake, key_update)) return;

  pollfd readable{receiver, POLLIN, 0};
  if (::poll(&readable, 1, 2000) != 1) {
    caps.notes.push_back("kTLS RX re-key probe: KeyUpdate record did not arrive");
    return;
  }
  std::uint8_t buffer[64];
  auto record = recv_record(receiver, buffer, MSG_DONTWAIT);
  if (!record || record->content_type != content_type::handshake) {
    caps.notes.push_back("kTLS RX re-key probe: could not read the KeyUpdate record: " +
                         (record ? "type " + std::to_string(record->content_type) : record.error()));
    return;
  }
  int error_number = 0;
  auto refused = install_rx(receiver, probe_keys(tls13_version, cipher, 0x22), &error_number);
  caps.ktls_rx_rekey = !refused;
  caps.ktls_rx_rekey_errno = error_number;
  if (refused) caps.notes.push_back("kTLS RX re-key refused: " + *refused);
}

void probe_ktls(KernelCapabilities& caps) {
  auto pair = make_loopback_tcp_pair();
  if (!pair) {
    caps.notes.push_back("kTLS not probed: " + pair.error() + " (is the loopback interface up?)");
    return;
  }
  if (auto failure = install_ulp(pair->client.get())) {
    caps.notes.push_back(*failure);
    return;
  }

  for (RecordCipher cipher :
       {RecordCipher::AesGcm128, RecordCipher::AesGcm256, RecordCipher::Chacha20Poly1305}) {
    // A fresh socket per cipher: TLS_TX may be set once on older kernels.
    auto trial = make_loopback_tcp_pair();
    if (!trial || install_ulp(trial->client.get())) continue;
    if (auto refused = install_tx(trial->client.get(), probe_keys(tls13_version, cipher, 0x11))) {
      caps.notes.push_back(std::string("kTLS refuses ") + cipher_label(cipher) + ": " + *refused);
    } else {
      caps.ktls_ciphers.push_back(cipher);
    }
  }
  if (caps.ktls_ciphers.empty()) {
    caps.notes.push_back("the tls ULP attaches but accepts no TLS 1.3 cipher: kTLS unusable");
    return;
  }
  caps.ktls = true;
  caps.ktls_versions.push_back(tls13_version);
  const RecordCipher cipher = caps.ktls_ciphers.front();

  if (auto trial = make_loopback_tcp_pair(); trial && !install_ulp(trial->client.get()) &&
                                             !install_tx(trial->client.get(),
                                                         probe_keys(tls12_version, cipher, 0x11))) {
    caps.ktls_versions.insert(caps.ktls_versions.begin(), tls12_version);
  }

  // TX re-key: the first TLS_TX on the ULP socket above, then a second.
  const int fd = pair->client.get();
  if (!install_tx(fd, probe_keys(tls13_version, cipher, 0x11))) {
    int error_number = 0;
    auto refused = install_tx(fd, probe_keys(tls13_version, cipher, 0x12), &error_number);
    caps.ktls_tx_rekey = !refused;
    caps.ktls_tx_rekey_errno = error_number;
    if (refused) caps.notes.push_back("kTLS TX re-key refused: " + *refused);
  }
  probe_rx_rekey(caps, cipher);
  if (!caps.ktls_tx_rekey || !caps.ktls_rx_rekey) {
    caps.notes.push_back(
        "kTLS cannot re-key on this kernel: a peer's TLS 1.3 KeyUpdate ends a kTLS connection, "
        "and tapsec cannot update its own keys without ending it");
  }

  if (auto stats = read_tls_stat(); !stats) caps.notes.push_back(stats.error());
}

// Generic netlink: does a family of this name exist? No privileges needed.
// Asking may load the family's module (the kernel requests it on lookup).
Result<bool> genl_family_exists(const std::string& name) {
  UniqueFd sock(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC));
  if (!sock) return Result<bool>::failure("generic netlink socket: " + describe_errno(errno), errno);
  timeval timeout{2, 0};
  ::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));

  alignas(nlmsghdr) unsigned char request[NLMSG_SPACE(GENL_HDRLEN + NLA_HDRLEN + 32)] = {};
  if (name.size() + 1 > 32) return Result<bool>::failure("family name too long");
  auto* header = reinterpret_cast<nlmsghdr*>(request);
  auto* genl = reinterpret_cast<genlmsghdr*>(NLMSG_DATA(header));
  auto* attribute = reinterpret_cast<nlattr*>(reinterpret_cast<unsigned char*>(genl) + GENL_HDRLEN);
  attribute->nla_type = CTRL_ATTR_FAMILY_NAME;
  attribute->nla_len = static_cast<std::uint16_t>(NLA_HDRLEN + name.size() + 1);
  std::memcpy(reinterpret_cast<unsigned char*>(attribute) + NLA_HDRLEN, name.c_str(),
              name.size() + 1);
  genl->cmd = CTRL_CMD_GETFAMILY;
  genl->version = 1;
  header->nlmsg_type = GENL_ID_CTRL;
  header->nlmsg_flags = NLM_F_REQUEST;
  header->nlmsg_seq = 1;
  header->nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN + NLA_ALIGN(attribute->nla_len));

  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(sock.get(), request, header->nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof(kernel)) < 0) {
    return Result<bool>::failure("generic netlink send: " + describe_errno(errno), errno);
  }
  alignas(nlmsghdr) unsigned char reply[8192];
  const ssize_t received = ::recv(sock.get(), reply, sizeof(reply), 0);
  if (received < static_cast<ssize_t>(sizeof(nlmsghdr))) {
    return Result<bool>::failure("generic netlink reply: " + describe_errno(errno), errno);
  }
  const auto* answer = reinterpret_cast<const nlmsghdr*>(reply);
  if (answer->nlmsg_type == NLMSG_ERROR) {
    const auto* error = reinterpret_cast<const nlmsgerr*>(NLMSG_DATA(answer));
    if (error->error == -ENOENT) return Result<bool>::success(false);
    return Result<bool>::failure("generic netlink lookup of " + name + ": " +
                                     describe_errno(-error->error),
                                 -error->error);
  }
  return Result<bool>::success(answer->nlmsg_type == GENL_ID_CTRL);
}

// XFRM: the netlink protocol exists when xfrm_user is present. Reading the
// SA counters needs CAP_NET_ADMIN; without it, reachability is all we learn.
void probe_xfrm(KernelCapabilities& caps, const std::string& modules_dir) {
  UniqueFd sock(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_XFRM));
  if (!sock) {
    caps.notes.push_back("XFRM netlink unavailable (" + describe_errno(errno) +
                         "): kernel lacks xfrm_user, no ESP");
    return;
  }
  caps.xfrm = true;

  struct {
    nlmsghdr header;
    std::uint32_t flags;
  } request{};
  request.header.nlmsg_len = sizeof(request);
  request.header.nlmsg_type = XFRM_MSG_GETSADINFO;
  request.header.nlmsg_flags = NLM_F_REQUEST;
  request.header.nlmsg_seq = 1;
  timeval timeout{2, 0};
  ::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(sock.get(), &request, sizeof(request), 0, reinterpret_cast<sockaddr*>(&kernel),
               sizeof(kernel)) >= 0) {
    alignas(nlmsghdr) unsigned char reply[4096];
    const ssize_t received = ::recv(sock.get(), reply, sizeof(reply), 0);
    const auto* answer = reinterpret_cast<const nlmsghdr*>(reply);
    if (received >= static_cast<ssize_t>(sizeof(nlmsghdr)) && answer->nlmsg_type == NLMSG_ERROR) {
      const int error = -reinterpret_cast<const nlmsgerr*>(NLMSG_DATA(answer))->error;
      if (error == EPERM) caps.notes.push_back("XFRM netlink reachable; managing SAs needs CAP_NET_ADMIN");
    }
  }

  const ModuleState esp4 = module_state("esp4", "net/ipv4", modules_dir, caps.module_loading);
  caps.esp = esp4 != ModuleState::Absent;
  switch (esp4) {
    case ModuleState::Absent:
      caps.notes.push_back("ESP unavailable: esp4 is neither loaded, built in, nor loadable");
      break;
    case ModuleState::Loadable:
      caps.notes.push_back("ESP available as module esp4 (loaded on first SA as root)");
      break;
    default:
      break;
  }
}

void probe_wireguard(KernelCapabilities& caps) {
  auto exists = genl_family_exists("wireguard");
  if (!exists) {
    caps.notes.push_back("WireGuard not probed: " + exists.error());
    return;
  }
  caps.wireguard = exists.value();
  if (!caps.wireguard) {
    caps.notes.push_back(
        "kernel lacks WireGuard (no \"wireguard\" generic netlink family): load module "
        "wireguard or use wireguard-go");
  }
}

}  // namespace

std::vector<std::string> KernelCapabilities::feature_names() const {
  std::vector<std::string> names;
  if (ktls) names.emplace_back("ktls");
  if (ktls_tx_rekey && ktls_rx_rekey) names.emplace_back("ktls-rekey");
  if (xfrm) names.emplace_back("xfrm");
  if (esp) names.emplace_back("esp");
  if (wireguard) names.emplace_back("wireguard");
  return names;
}

KernelCapabilities probe_kernel_capabilities() noexcept {
  KernelCapabilities caps;
  try {
    utsname names{};
    if (::uname(&names) == 0) caps.kernel_release = names.release;
    const std::string modules_dir = modules_directory(caps.kernel_release);
    probe_module_loading(caps, modules_dir);
    probe_ktls(caps);
    if (!caps.ktls && caps.module_loading &&
        module_state("tls", "net/tls", modules_dir, true) == ModuleState::Loadable) {
      caps.notes.push_back("module tls is installed but not loaded: modprobe tls");
    }
    probe_xfrm(caps, modules_dir);
    probe_wireguard(caps);
  } catch (const std::exception& failure) {
    caps.notes.push_back(std::string("capability probe stopped: ") + failure.what());
  } catch (...) {
    caps.notes.push_back("capability probe stopped by an unknown error");
  }
  return caps;
}

}  // namespace tapsec::kernel
