// Bulk XFRM installation: N Child SAs (N inbound + N outbound ESP SAs with
// AES-GCM-128 keys) through XfrmSocket::add_sas, against the same SAs through
// `ip -batch` (iproute2) in the same run; then their 2N policies through
// add_policy against `ip -batch`. Runs in a private network namespace of its
// own, so the host's XFRM state is never touched.
//
//   xfrm-install-bench [child SAs, default 10000]
//
// On a kernel without ESP it says so loudly, measures the policies only
// (labelled as such) and exits 77.
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "agent/kernel/xfrm.h"

namespace {

using namespace tapsec::kernel::xfrm;
using tapsec::ikev2::IpAddress;
using tapsec::ikev2::TrafficSelector;
using Clock = std::chrono::steady_clock;

constexpr const char* kBatchFile = "/tmp/xfrm-install-bench.batch";

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string hex32(std::uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", value);
  return text;
}

std::string hex_key(std::uint32_t seed) {
  std::string text = "0x";
  char byte[3];
  for (int index = 0; index < 20; ++index) {
    std::snprintf(byte, sizeof byte, "%02x", static_cast<unsigned>((seed * 131 + index * 7) & 0xff));
    text += byte;
  }
  return text;
}

std::vector<std::uint8_t> key_bytes(std::uint32_t seed) {
  std::vector<std::uint8_t> key(20);
  for (int index = 0; index < 20; ++index) key[index] = static_cast<std::uint8_t>((seed * 131 + index * 7) & 0xff);
  return key;
}

// Child SA i: outbound 192.0.2.1→192.0.2.2 spi 0xc0000000+2i, inbound the
// reverse with the next SPI; its traffic is 10.1.x.y ↔ 10.2.x.y.
std::uint32_t spi_of(std::uint32_t child, bool inbound) { return 0xc0000000u + 2 * child + (inbound ? 1 : 0); }

std::string inner(int network, std::uint32_t child) {
  return "10." + std::to_string(network) + "." + std::to_string((child >> 8) & 0xff) + "." +
         std::to_string(child & 0xff);
}

std::vector<SaSpec> sa_specs(std::uint32_t children) {
  const IpAddress local = IpAddress::parse("192.0.2.1").value(), remote = IpAddress::parse("192.0.2.2").value();
  std::vector<SaSpec> specs;
  specs.reserve(2 * children);
  for (std::uint32_t child = 0; child < children; ++child) {
    for (bool inbound : {false, true}) {
      SaSpec spec;
      spec.source = inbound ? remote : local;
      spec.destination = inbound ? local : remote;
      spec.spi = spi_of(child, inbound);
      spec.reqid = child + 1;
      spec.aead_algorithm = "rfc4106(gcm(aes))";
      spec.encryption_key = key_bytes(spec.spi);
      specs.push_back(std::move(spec));
    }
  }
  return specs;
}

std::vector<PolicySpec> policy_specs(std::uint32_t children) {
  std::vector<PolicySpec> specs;
  specs.reserve(2 * children);
  for (std::uint32_t child = 0; child < children; ++child) {
    PolicySpec out;
    out.source = TrafficSelector::parse(inner(1, child)).value();
    out.destination = TrafficSelector::parse(inner(2, child)).value();
    out.direction = Direction::Out;
    out.template_source = IpAddress::parse("192.0.2.1").value();
    out.template_destination = IpAddress::parse("192.0.2.2").value();
    out.reqid = child + 1;
    PolicySpec in = out;
    std::swap(in.source, in.destination);
    std::swap(in.template_source, in.template_destination);
    in.direction = Direction::In;
    specs.push_back(out);
    specs.push_back(in);
  }
  return specs;
}

// Runs `ip -batch` on the lines; returns the seconds it took, or a negative
// number when it failed.
double time_ip_batch(const std::vector<std::string>& lines) {
  {
    std::ofstream batch(kBatchFile, std::ios::trunc);
    for (const std::string& line : lines) batch << line << '\n';
  }
  const auto start = Clock::now();
  const int status = std::system((std::string("ip -batch ") + kBatchFile).c_str());
  const double elapsed = seconds_since(start);
  std::remove(kBatchFile);
  return status == 0 ? elapsed : -1;
}

std::size_t count_lines(const char* command) {
  std::size_t lines = 0;
  if (FILE* pipe = ::popen(command, "r")) {
    char buffer[512];
    while (std::fgets(buffer, sizeof buffer, pipe)) ++lines;
    ::pclose(pipe);
  }
  return lines;
}

void report(const char* what, std::size_t items, double ours, double anchor) {
  std::printf("%s (%zu):\n", what, items);
  std::printf("  tapsec XfrmSocket     %8.3f s  (%.0f per second)\n", ours, items / ours);
  std::printf("  iproute2 ip -batch    %8.3f s  (%.0f per second)\n", anchor, items / anchor);
  std::printf("  ratio ip / tapsec     %8.2fx\n", anchor / ours);
}

}  // namespace

int main(int argc, char** argv) {
  const std::uint32_t children = argc > 1 ? static_cast<std::uint32_t>(std::strtoul(argv[1], nullptr, 10)) : 10000;
  if (children == 0 || children > 60000) {
    std::fprintf(stderr, "usage: xfrm-install-bench [child SAs, 1..60000]\n");
    return 2;
  }
  if (::geteuid() != 0 || ::unshare(CLONE_NEWNET) != 0) {
    std::fprintf(stderr, "\n*** xfrm-install-bench SKIPPED: needs root for a private network namespace ***\n\n");
    return 77;
  }
  std::system("ip link set lo up");
  auto opened = XfrmSocket::open();
  if (!opened) {
    std::fprintf(stderr, "*** %s ***\n", opened.error().c_str());
    return 77;
  }
  XfrmSocket& xfrm = opened.value();

  std::printf("XFRM bulk install on %s, private network namespace\n",
              [] {
                static char release[128] = "?";
                if (FILE* file = std::fopen("/proc/sys/kernel/osrelease", "r")) {
                  if (std::fgets(release, sizeof release, file)) release[std::strcspn(release, "\n")] = 0;
                  std::fclose(file);
                }
                return release;
              }());

  // Does this kernel take ESP SAs at all?
  auto probe = xfrm.add_sa(sa_specs(1).front());
  const bool esp = probe.ok();
  if (esp) {
    xfrm.delete_sa(IpAddress::parse("192.0.2.2").value(), spi_of(0, false));
  } else {
    std::fprintf(stderr,
                 "\n*** THIS KERNEL LACKS ESP: the SA figures cannot be measured here. ***\n"
                 "*** %s ***\n*** Measuring POLICIES ONLY; run it in the VM for the SA figures. ***\n\n",
                 probe.error().c_str());
  }

  if (esp) {
    auto specs = sa_specs(children);
    const auto start = Clock::now();
    auto installed = xfrm.add_sas(std::move(specs));
    const double ours = seconds_since(start);
    if (!installed) {
      std::fprintf(stderr, "add_sas failed: %s\n", installed.error().c_str());
      return 1;
    }
    const std::size_t present = count_lines("ip xfrm state list | grep '^src'");
    std::system("ip xfrm state flush");

    std::vector<std::string> lines;
    lines.reserve(2 * children);
    for (std::uint32_t child = 0; child < children; ++child) {
      for (bool inbound : {false, true}) {
        const std::uint32_t spi = spi_of(child, inbound);
        lines.push_back(std::string("xfrm state add src ") + (inbound ? "192.0.2.2 dst 192.0.2.1" : "192.0.2.1 dst 192.0.2.2") +
                        " proto esp spi " + hex32(spi) + " reqid " + std::to_string(child + 1) +
                        " mode tunnel flag af-unspec replay-window 32 aead rfc4106(gcm(aes)) " + hex_key(spi) + " 128");
      }
    }
    const double anchor = time_ip_batch(lines);
    std::system("ip xfrm state flush");
    if (anchor < 0) {
      std::fprintf(stderr, "ip -batch failed for the SAs\n");
      return 1;
    }
    if (present != 2 * children) {
      std::fprintf(stderr, "add_sas reported success but the kernel holds %zu SAs, not %u\n", present, 2 * children);
      return 1;
    }
    report("ESP SAs, AES-GCM-128, add_sas (pipelined)", 2 * children, ours, anchor);
  }

  {
    const auto specs = policy_specs(children);
    const auto start = Clock::now();
    for (const PolicySpec& spec : specs) {
      auto added = xfrm.add_policy(spec);
      if (!added) {
        std::fprintf(stderr, "add_policy failed: %s\n", added.error().c_str());
        return 1;
      }
    }
    const double ours = seconds_since(start);
    std::system("ip xfrm policy flush");
    std::vector<std::string> lines;
    lines.reserve(specs.size());
    for (std::uint32_t child = 0; child < children; ++child) {
      const std::string reqid = std::to_string(child + 1);
      lines.push_back("xfrm policy add src " + inner(1, child) + "/32 dst " + inner(2, child) +
                      "/32 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid " + reqid + " mode tunnel");
      lines.push_back("xfrm policy add src " + inner(2, child) + "/32 dst " + inner(1, child) +
                      "/32 dir in tmpl src 192.0.2.2 dst 192.0.2.1 proto esp reqid " + reqid + " mode tunnel");
    }
    const double anchor = time_ip_batch(lines);
    std::system("ip xfrm policy flush");
    if (anchor < 0) {
      std::fprintf(stderr, "ip -batch failed for the policies\n");
      return 1;
    }
    report(esp ? "Policies, add_policy (one request each)" : "POLICIES ONLY (kernel lacks ESP), add_policy",
           specs.size(), ours, anchor);
  }
  return esp ? 0 : 77;
}
