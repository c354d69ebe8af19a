// tapsecd: the tapsec agent. Runs handshakes for applications that ask over
// D-Bus and installs the keys into the kernel's record layers.
#include <getopt.h>
#include <signal.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "agent/bus/bus_service.h"
#include "agent/core/bus_source.h"
#include "agent/core/hardening.h"
#include "agent/core/log.h"
#include "agent/core/reactor.h"
#include "agent/core/sd_bus_ptr.h"
#include "agent/kernel/capability.h"
#include "agent/state/agent.h"
#include "agent/state/privileges.h"

namespace {

void usage(FILE* out) {
  std::fputs(
      "usage: tapsecd [options]\n"
      "  --bus system|session|ADDRESS   bus to serve org.tapsec1 on (default: system)\n"
      "  --policy-dir DIR               policy drop-in directory (default: /etc/tapsec/policy.d)\n"
      "  --ike-port PORT                UDP port for IKE (default 500; 0 turns IKE off)\n"
      "  --nat-t-port PORT              UDP port for IKE and ESP behind NAT (default 4500)\n"
      "  --wg-exchange-port PORT        TCP port for peer agents' WireGuard PSK exchange\n"
      "                                 (default 51821; 0: initiate only). Open only while a\n"
      "                                 WireGuard tunnel of the policy exchanges its PSK\n"
      "  --wg-exchange-max-pending N    unauthenticated exchange connections held at once; more\n"
      "                                 are closed when accepted (default 64, 1-65536)\n"
      "  --wg-exchange-max-per-source N the same from one IPv4 address or IPv6 /64 (default 8, 1-65536)\n"
      "  --wg-exchange-handshake-timeout SECONDS\n"
      "                                 time from accept (or connect) until the peer's agent is\n"
      "                                 authenticated (default 3, 1-300)\n"
      "  --wg-exchange-max-buffered BYTES\n"
      "                                 what a peer may send before it is authenticated, and\n"
      "                                 hold buffered after (default 32768, 4096-1048576)\n"
      "  --ike-retransmit-timeout-ms MS  first resend of an unanswered IKE request (default 1000,\n"
      "                                 100-60000); each later one comes 1.8 times as late\n"
      "  --ike-retransmits N            resends before the peer counts as dead (default 5, 0-20)\n"
      "  --wireguard-go PROGRAM         userspace WireGuard for Fallback=yes tunnels (default wireguard-go)\n"
      "  --wg-stale-after SECONDS       look a peer's host name up again once its last handshake is\n"
      "                                 this old (default 135)\n"
      "  --max-handshakes N             TLS handshakes in progress at once (default 256)\n"
      "  --max-handshakes-per-caller N  ... for one caller uid (default 32)\n"
      "  --max-connects N               Connects still resolving or connecting (default 128)\n"
      "  --max-connects-per-caller N    ... for one caller uid (default 16)\n"
      "  --resolver-threads N           host-name lookups running at once (default 2)\n"
      "  --resolver-queue N             host-name lookups waiting (default 256)\n"
      "                                 Beyond a limit, calls fail with org.tapsec1.Error.LimitExceeded\n"
      "  --log-level debug|info|notice|warning|error\n"
      "  --version\n"
      "\n"
      "tapsecd needs CAP_NET_ADMIN (XFRM, WireGuard devices), CAP_NET_BIND_SERVICE (UDP 500) and,\n"
      "for TLS with direct-socket only, CAP_SYS_PTRACE (pidfd_getfd); run\n"
      "it as its own user with those as ambient capabilities (packaging/systemd/tapsecd.service).\n"
      "It logs the capabilities it holds; a feature missing one says so. It makes itself\n"
      "non-dumpable (no core file, no ptrace). Policy, key and certificate files must be owned by\n"
      "root or its own user and not writable by others; secrets not readable by others either.\n",
      out);
}

// Options that take a count: their name and where the count goes.
struct CountOption {
  const char* name;
  std::size_t* target;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace tapsec;
  // First of all, before any key is read: no core file, no ptrace or
  // /proc/<pid>/mem for other processes of this uid.
  const std::string dump_problem = core::forbid_core_dumps();
  std::string bus_spec = "system";
  state::AgentOptions options;

  static const option long_options[] = {
      {"bus", required_argument, nullptr, 'b'},     {"policy-dir", required_argument, nullptr, 'p'},
      {"log-level", required_argument, nullptr, 'l'}, {"version", no_argument, nullptr, 'V'},
      {"ike-port", required_argument, nullptr, 'i'}, {"nat-t-port", required_argument, nullptr, 'n'},
      {"wg-exchange-port", required_argument, nullptr, 'w'}, {"wireguard-go", required_argument, nullptr, 'g'},
      {"wg-stale-after", required_argument, nullptr, 's'},
      {"max-handshakes", required_argument, nullptr, 1000}, {"max-handshakes-per-caller", required_argument, nullptr, 1001},
      {"max-connects", required_argument, nullptr, 1002}, {"max-connects-per-caller", required_argument, nullptr, 1003},
      {"resolver-threads", required_argument, nullptr, 1004}, {"resolver-queue", required_argument, nullptr, 1005},
      {"wg-exchange-max-pending", required_argument, nullptr, 'P'},
      {"wg-exchange-max-per-source", required_argument, nullptr, 'S'},
      {"wg-exchange-handshake-timeout", required_argument, nullptr, 'T'},
      {"wg-exchange-max-buffered", required_argument, nullptr, 'B'},
      {"ike-retransmit-timeout-ms", required_argument, nullptr, 'R'},
      {"ike-retransmits", required_argument, nullptr, 'r'},
      {"help", no_argument, nullptr, 'h'},          {nullptr, 0, nullptr, 0}};
  const CountOption counts[] = {
      {"--max-handshakes", &options.handshakes.total},   {"--max-handshakes-per-caller", &options.handshakes.per_key},
      {"--max-connects", &options.connects.total},       {"--max-connects-per-caller", &options.connects.per_key},
      {"--resolver-threads", &options.resolver.workers}, {"--resolver-queue", &options.resolver.queued}};
  int c;
  while ((c = getopt_long(argc, argv, "h", long_options, nullptr)) != -1) {
    switch (c) {
      case 'b': bus_spec = optarg; break;
      case 'p': options.policy_dir = optarg; break;
      case 'g': options.wireguard.userspace_program = optarg; break;
      case 's': {
        char* end = nullptr;
        unsigned long seconds = std::strtoul(optarg, &end, 10);
        if (!*optarg || *end || seconds == 0 || seconds > 86400) {
          std::fprintf(stderr, "tapsecd: --wg-stale-after wants 1 to 86400 seconds, not \"%s\"\n", optarg);
          return 2;
        }
        options.wireguard.stale_after = std::chrono::seconds(seconds);
        break;
      }
      case 'P':
      case 'S':
      case 'T':
      case 'B': {
        auto& limits = options.wireguard.exchange_limits;
        const char* name = c == 'P'   ? "wg-exchange-max-pending"
                           : c == 'S' ? "wg-exchange-max-per-source"
                           : c == 'T' ? "wg-exchange-handshake-timeout"
                                      : "wg-exchange-max-buffered";
        const unsigned long least = c == 'B' ? 4096 : 1, most = c == 'T' ? 300 : c == 'B' ? 1048576 : 65536;
        char* end = nullptr;
        unsigned long value = std::strtoul(optarg, &end, 10);
        if (!*optarg || *end || value < least || value > most) {
          std::fprintf(stderr, "tapsecd: --%s wants %lu to %lu, not \"%s\"\n", name, least, most, optarg);
          return 2;
        }
        if (c == 'P') limits.max_pending = value;
        else if (c == 'S') limits.max_per_source = value;
        else if (c == 'T') limits.handshake_timeout = std::chrono::seconds(value);
        else limits.max_buffered = value;
        break;
      }
      case 'R':
      case 'r': {
        // As strongSwan's retransmit_timeout and retransmit_tries: the first
        // resend after the timeout, each later one 1.8 times as late.
        const bool timeout = c == 'R';
        const unsigned long least = timeout ? 100 : 0, most = timeout ? 60000 : 20;
        char* end = nullptr;
        unsigned long value = std::strtoul(optarg, &end, 10);
        if (!*optarg || *end || value < least || value > most) {
          std::fprintf(stderr, "tapsecd: --%s wants %lu to %lu, not \"%s\"\n",
                       timeout ? "ike-retransmit-timeout-ms" : "ike-retransmits", least, most, optarg);
          return 2;
        }
        if (timeout) options.ike.retransmit.initial_timeout = std::chrono::milliseconds(value);
        else options.ike.retransmit.tries = static_cast<unsigned>(value);
        break;
      }
      case 'i':
      case 'n':
      case 'w': {
        char* end = nullptr;
        unsigned long port = std::strtoul(optarg, &end, 10);
        if (!*optarg || *end || port > 65535) {
          std::fprintf(stderr, "tapsecd: \"%s\" is not a port\n", optarg);
          return 2;
        }
        auto& target = c == 'i' ? options.ike.ike_port : c == 'n' ? options.ike.nat_t_port : options.wireguard.exchange_port;
        target = static_cast<std::uint16_t>(port);
        break;
      }
      case 'l': {
        std::string level = optarg;
        using L = core::log::Level;
        if (level == "debug") core::log::set_min_level(L::Debug);
        else if (level == "info") core::log::set_min_level(L::Info);
        else if (level == "notice") core::log::set_min_level(L::Notice);
        else if (level == "warning") core::log::set_min_level(L::Warning);
        else if (level == "error") core::log::set_min_level(L::Error);
        else { std::fprintf(stderr, "tapsecd: unknown log level \"%s\"\n", optarg); return 2; }
        break;
      }
      case 1000: case 1001: case 1002: case 1003: case 1004: case 1005: {
        const CountOption& option = counts[c - 1000];
        char* end = nullptr;
        unsigned long count = std::strtoul(optarg, &end, 10);
        if (!*optarg || *end || count == 0 || count > 1000000) {
          std::fprintf(stderr, "tapsecd: %s wants a count from 1 to 1000000, not \"%s\"\n", option.name, optarg);
          return 2;
        }
        *option.target = count;
        break;
      }
      case 'V': std::puts("tapsecd " TAPSEC_VERSION); return 0;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }

  // A peer closing mid-write must not kill the agent.
  ::signal(SIGPIPE, SIG_IGN);

  if (!dump_problem.empty()) core::log::warning("core dumps may still be possible", {{"error", dump_problem}});
  state::check_privileges(options);

  auto capabilities = kernel::probe_kernel_capabilities();
  core::log::info("kernel probed", {{"release", capabilities.kernel_release},
                                    {"features", [&] {
                                       std::string s;
                                       for (const auto& f : capabilities.feature_names()) s += (s.empty() ? "" : ",") + f;
                                       return s.empty() ? std::string("none") : s;
                                     }()}});
  for (const auto& note : capabilities.notes) core::log::notice(note);

  core::Reactor reactor;
  state::Agent agent(reactor, options, capabilities);
  std::string error;
  if (!agent.load_policy(&error)) {
    core::log::error("policy is invalid; refusing to start", {{"errors", error}});
    std::fprintf(stderr, "%s\n", error.c_str());
    return 1;
  }

  sd_bus* raw_bus = nullptr;
  int r = core::open_bus(bus_spec, &raw_bus);
  if (r < 0) {
    core::log::error("cannot connect to the bus", {{"bus", bus_spec}, {"error", std::strerror(-r)}});
    return 1;
  }
  core::SdBusPtr bus(raw_bus);
  bool bus_lost = false;
  core::BusSource bus_source(reactor, bus.get(), [&](int error) {
    bus_lost = true;
    core::log::error("lost the bus connection; exiting", {{"error", std::strerror(error > 0 ? error : -error)}});
    reactor.stop();
  });
  bus::BusService service(bus.get(), agent);
  agent.set_publisher(&service);
  r = service.start();
  if (r < 0) {
    core::log::error("cannot serve org.tapsec1", {{"error", std::strerror(-r)}});
    return 1;
  }

  reactor.on_signal(SIGTERM, [&] { core::log::info("SIGTERM: shutting down"); reactor.stop(); });
  reactor.on_signal(SIGINT, [&] { core::log::info("SIGINT: shutting down"); reactor.stop(); });
  reactor.on_signal(SIGHUP, [&] {
    sd_notify(0, "RELOADING=1\nSTATUS=reloading the policy");
    std::string reload_error;
    if (agent.load_policy(&reload_error)) {
      core::log::info("policy reloaded");
      sd_notify(0, "READY=1\nSTATUS=serving org.tapsec1");
    } else {
      core::log::error("policy reload failed; keeping the previous policy", {{"errors", reload_error}});
      sd_notify(0, "READY=1\nSTATUS=serving org.tapsec1; the last policy reload failed, see the log");
    }
  });

  // The unit's watchdog is answered from the event loop itself, so a loop
  // that stops turning gets the agent restarted.
  std::uint64_t watchdog_usec = 0;
  std::function<void()> pet_watchdog;
  if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
    // Half the deadline, but never a busy loop for a tiny WATCHDOG_USEC.
    const auto interval = std::max<std::chrono::microseconds>(std::chrono::microseconds(watchdog_usec / 2),
                                                              std::chrono::milliseconds(1));
    pet_watchdog = [&reactor, &pet_watchdog, interval] {
      sd_notify(0, "WATCHDOG=1");
      reactor.add_timer(interval, pet_watchdog);
    };
    reactor.add_timer(interval, pet_watchdog);
    core::log::info("watchdog", {{"interval-ms", std::to_string(interval.count() / 1000)}});
  }

  sd_notify(0, "READY=1\nSTATUS=serving org.tapsec1");
  core::log::info("tapsecd ready", {{"bus", bus_spec}, {"policy", options.policy_dir}});
  r = reactor.run();
  sd_notify(0, "STOPPING=1");
  agent.set_publisher(nullptr);
  return r < 0 || bus_lost ? 1 : 0;
}
