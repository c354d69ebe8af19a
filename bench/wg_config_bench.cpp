// Time to configure many WireGuard peers on a fresh kernel link: tapsec's
// KernelDevice::configure against `wg setconf` with the same configuration
// (written as a wg conf file), in the same run, alternating which goes first.
// Each peer has a public key, a PSK, an endpoint and one /32 allowed IP; the
// device gets a private key. The links are made outside the timed part, and
// each result is checked (every peer read back) outside it too. Every
// repetition uses new links, deleted after it (untimed). --keep-links keeps
// them instead: deleting a link with many peers takes minutes under TCG on
// kernels that wait for an RCU grace period per peer (6.1 does), while newer
// kernels start a NAPI thread per peer, so links kept there soon exhaust a
// small VM's threads.
//
//   wg-config-bench [--peers N] [--repetitions R] [--keep-links]
//
// Prints one "BENCH rep=..." line per repetition and a summary:
//   BENCH summary peers=N reps=R tapsec_median_ms=T wg_median_ms=W ratio_tapsec_over_wg=X
// Needs root and kernel WireGuard (exit 77 otherwise).
#include <fcntl.h>
#include <openssl/rand.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "agent/kernel/wireguard.h"

namespace wg = tapsec::kernel::wireguard;
extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

wg::Key random_key() {
  wg::Key key{};
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) std::abort();
  return key;
}

std::string dotted(std::uint32_t value) {
  return std::to_string(value >> 24) + "." + std::to_string((value >> 16) & 255) + "." +
         std::to_string((value >> 8) & 255) + "." + std::to_string(value & 255);
}

wg::DeviceConfig make_config(std::size_t peers) {
  wg::DeviceConfig config;
  config.private_key = random_key();
  config.peers.resize(peers);
  for (std::size_t i = 0; i < peers; ++i) {
    auto& peer = config.peers[i];
    peer.public_key = wg::public_key_of(random_key());
    peer.preshared_key = random_key();
    peer.endpoint = wg::Endpoint{*tapsec::ikev2::IpAddress::parse(dotted(0xc6120000u + static_cast<std::uint32_t>(i))),
                                 51820};
    peer.allowed_ips = {*wg::AllowedIp::parse(dotted(0x0a000000u + static_cast<std::uint32_t>(i)) + "/32")};
  }
  return config;
}

bool write_conf(const std::string& path, const wg::DeviceConfig& config) {
  std::ofstream out(path, std::ios::trunc);
  out << "[Interface]\nPrivateKey = " << wg::key_to_base64(*config.private_key) << "\n";
  for (const auto& peer : config.peers) {
    out << "\n[Peer]\nPublicKey = " << wg::key_to_base64(peer.public_key)
        << "\nPresharedKey = " << wg::key_to_base64(*peer.preshared_key) << "\nEndpoint = " << peer.endpoint->to_string()
        << "\nAllowedIPs = " << peer.allowed_ips.front().to_string() << "\n";
  }
  return static_cast<bool>(out.flush());
}

int run_quietly(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return -1;
  int status = 0;
  if (::waitpid(pid, &status, 0) < 0) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

double milliseconds(Clock::duration elapsed) {
  return std::chrono::duration<double, std::milli>(elapsed).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// Empty when the link holds all `peers` peers.
std::string check_peers(const std::string& ifname, std::size_t peers) {
  auto device = wg::KernelDevice::create(ifname);  // adopts the existing link
  if (!device) return device.error();
  auto state = device.value()->read();
  if (!state) return state.error();
  if (state->peers.size() != peers) {
    return ifname + " holds " + std::to_string(state->peers.size()) + " peers, expected " + std::to_string(peers);
  }
  return {};
}

bool make_link(const std::string& ifname) {
  if (run_quietly({"ip", "link", "add", ifname, "type", "wireguard"}) == 0) return true;
  std::fprintf(stderr, "wg-config-bench: ip link add %s type wireguard failed\n", ifname.c_str());
  return false;
}

// One fresh link configured by KernelDevice; the time of configure() alone.
std::optional<double> time_tapsec(const wg::DeviceConfig& config, const std::string& ifname) {
  if (!make_link(ifname)) return std::nullopt;
  auto device = wg::KernelDevice::create(ifname);  // adopts it: the link outlives the device
  if (!device) {
    std::fprintf(stderr, "wg-config-bench: %s\n", device.error().c_str());
    return std::nullopt;
  }
  const auto start = Clock::now();
  auto status = device.value()->configure(config);
  const auto elapsed = Clock::now() - start;
  if (!status) {
    std::fprintf(stderr, "wg-config-bench: %s\n", status.error().c_str());
    return std::nullopt;
  }
  if (auto why = check_peers(ifname, config.peers.size()); !why.empty()) {
    std::fprintf(stderr, "wg-config-bench: tapsec: %s\n", why.c_str());
    return std::nullopt;
  }
  return milliseconds(elapsed);
}

// One fresh link made by `ip link` and configured by `wg setconf`.
std::optional<double> time_wg(const std::string& conf, std::size_t peers, const std::string& ifname) {
  if (!make_link(ifname)) return std::nullopt;
  const auto start = Clock::now();
  const int status = run_quietly({"wg", "setconf", ifname, conf});
  const auto elapsed = Clock::now() - start;
  const std::string why = status == 0 ? check_peers(ifname, peers) : "wg setconf exit " + std::to_string(status);
  if (!why.empty()) {
    std::fprintf(stderr, "wg-config-bench: wg: %s\n", why.c_str());
    return std::nullopt;
  }
  return milliseconds(elapsed);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t peers = 10000;
  int repetitions = 5;
  bool keep_links = false;
  for (int i = 1; i < argc; ++i) {
    const std::string option = argv[i];
    if (option == "--peers" && i + 1 < argc) peers = std::strtoul(argv[++i], nullptr, 10);
    else if (option == "--repetitions" && i + 1 < argc) repetitions = std::atoi(argv[++i]);
    else if (option == "--keep-links") keep_links = true;
    else {
      std::fprintf(stderr, "usage: wg-config-bench [--peers N] [--repetitions R] [--keep-links]\n");
      return 2;
    }
  }
  if (peers == 0 || peers > 65000 || repetitions < 1) {
    std::fprintf(stderr, "wg-config-bench: peers must be 1..65000 and repetitions at least 1\n");
    return 2;
  }
  if (::geteuid() != 0 || !wg::KernelDevice::kernel_supports_wireguard()) {
    std::fprintf(stderr, "\n*** wg-config-bench: SKIPPED: needs root and kernel WireGuard (run it in the VM) ***\n\n");
    return 77;
  }
  const wg::DeviceConfig config = make_config(peers);
  char conf_path[] = "/tmp/wg-config-bench-XXXXXX";
  const int conf_fd = ::mkstemp(conf_path);
  if (conf_fd < 0 || !write_conf(conf_path, config)) {
    std::fprintf(stderr, "wg-config-bench: cannot write the wg configuration\n");
    return 1;
  }
  ::close(conf_fd);

  std::vector<double> tapsec_ms, wg_ms;
  int exit_status = 0;
  for (int rep = 0; rep < repetitions && exit_status == 0; ++rep) {
    std::optional<double> ours, theirs;
    const std::string tapsec_link = "wgbench-t" + std::to_string(rep), wg_link = "wgbench-w" + std::to_string(rep);
    // Alternate the order so neither always runs on a warmer machine.
    if (rep % 2 == 0) {
      ours = time_tapsec(config, tapsec_link);
      if (ours) theirs = time_wg(conf_path, peers, wg_link);
    } else {
      theirs = time_wg(conf_path, peers, wg_link);
      if (theirs) ours = time_tapsec(config, tapsec_link);
    }
    if (!keep_links) {
      (void)wg::delete_link(tapsec_link);
      (void)wg::delete_link(wg_link);
    }
    if (!ours || !theirs) {
      exit_status = 1;
      break;
    }
    tapsec_ms.push_back(*ours);
    wg_ms.push_back(*theirs);
    std::printf("BENCH rep=%d peers=%zu tapsec_ms=%.1f wg_ms=%.1f ratio=%.3f\n", rep + 1, peers, *ours, *theirs,
                *ours / *theirs);
    std::fflush(stdout);
  }
  ::unlink(conf_path);
  if (exit_status != 0) return exit_status;
  const double ours = median(tapsec_ms), theirs = median(wg_ms);
  std::printf(
      "BENCH summary peers=%zu reps=%d tapsec_median_ms=%.1f wg_median_ms=%.1f tapsec_min_ms=%.1f wg_min_ms=%.1f "
      "ratio_tapsec_over_wg=%.3f\n",
      peers, repetitions, ours, theirs, *std::min_element(tapsec_ms.begin(), tapsec_ms.end()),
      *std::min_element(wg_ms.begin(), wg_ms.end()), ours / theirs);
  return 0;
}
