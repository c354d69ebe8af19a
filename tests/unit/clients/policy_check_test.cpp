// `tapsecctl policy check` on temporary policy directories.
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "dbus/tapsecctl/args.h"
#include "dbus/tapsecctl/commands.h"

namespace {

using namespace tapsec::ctl;

class PolicyDir {
 public:
  PolicyDir() {
    char templ[] = "/tmp/tapsec-policy-check-XXXXXX";
    dir_ = mkdtemp(templ);
  }
  ~PolicyDir() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  void write(const std::string& name, const std::string& text) { std::ofstream(dir_ + "/" + name) << text; }
  const std::string& path() const { return dir_; }

 private:
  std::string dir_;
};

constexpr const char* kPolicy =
    "[Rule root-https]\n"
    "MatchUser=root\n"
    "MatchRole=client\n"
    "MatchPort=443\n"
    "Protocols=tls\n"
    "PeerValidation=system pinned\n"
    "Fallback=yes\n"
    "Action=allow\n";

struct Outcome {
  int exit_code;
  std::string out;
  std::string err;
};

Outcome check(const std::string& dir, std::vector<std::string> extra) {
  std::vector<std::string> args = {"policy", "check", "--dir", dir, "--role", "client", "--host", "example.com",
                                   "--protocols", "tls"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto parsed = parse_arguments(args);
  EXPECT_TRUE(parsed.invocation) << parsed.error;
  if (!parsed.invocation) return {-1, "", ""};
  std::ostringstream out, err;
  int code = run(*parsed.invocation, out, err);
  return {code, out.str(), err.str()};
}

#ifdef TAPSECCTL_HAVE_POLICY

TEST(PolicyCheck, AllowedRequestExitsZeroAndNamesTheRule) {
  PolicyDir dir;
  dir.write("50-test.policy", kPolicy);
  auto o = check(dir.path(), {"--uid", "0", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitSuccess) << o.out << o.err;
  EXPECT_NE(o.out.find("Decision: allowed"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("root-https"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("Explanation:"), std::string::npos) << o.out;
}

TEST(PolicyCheck, DeniedRequestExitsOne) {
  PolicyDir dir;
  dir.write("50-test.policy", kPolicy);
  auto o = check(dir.path(), {"--uid", "65534", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
  EXPECT_NE(o.out.find("Decision: denied"), std::string::npos) << o.out;
  o = check(dir.path(), {"--uid", "0", "--port", "80"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
}

TEST(PolicyCheck, JsonOutput) {
  PolicyDir dir;
  dir.write("50-test.policy", kPolicy);
  auto o = check(dir.path(), {"--uid", "0", "--port", "443", "--json"});
  EXPECT_EQ(o.exit_code, kExitSuccess) << o.out << o.err;
  EXPECT_EQ(o.out.rfind("{\"allowed\":true,\"rule\":\"root-https\",", 0), 0u) << o.out;
  EXPECT_NE(o.out.find("\"explanation\":["), std::string::npos) << o.out;
  EXPECT_EQ(std::count(o.out.begin(), o.out.end(), '\n'), 1) << "one JSON document per line";
}

TEST(PolicyCheck, BrokenPolicyExitsTwoWithTheLocation) {
  PolicyDir dir;
  dir.write("10-broken.policy", "[Rule broken\nAction=allow\n");
  auto o = check(dir.path(), {"--uid", "0", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitUsage) << o.out << o.err;
  EXPECT_NE(o.err.find("10-broken.policy"), std::string::npos) << o.err;
}

TEST(PolicyCheck, MissingDirectoryIsAnEmptyPolicyThatDenies) {
  auto o = check("/nonexistent/tapsec/policy.d", {"--uid", "0", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
}

constexpr const char* kTunnelPolicy =
    "[PSK link]\n"
    "Key=hex:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
    "[Tunnel]\n"
    "Name=branch\n"
    "Peer=198.51.100.7\n"
    "PSK=link\n"
    "Port=4500\n"
    "[Rule branch-for-root]\n"
    "MatchUser=root\n"
    "MatchTunnel=branch\n"
    "MatchAddress=198.51.100.0/24\n"
    "MatchPort=4500\n"
    "Protocols=ikev2\n"
    "PSKs=link\n"
    "Action=allow\n";

Outcome check_tunnel(const std::string& dir, std::vector<std::string> extra) {
  std::vector<std::string> args = {"policy", "check", "--dir", dir};
  args.insert(args.end(), extra.begin(), extra.end());
  auto parsed = parse_arguments(args);
  EXPECT_TRUE(parsed.invocation) << parsed.error;
  if (!parsed.invocation) return {-1, "", ""};
  std::ostringstream out, err;
  int code = run(*parsed.invocation, out, err);
  return {code, out.str(), err.str()};
}

TEST(PolicyCheck, TunnelRequestTakesItsPeerPortProtocolAndPsk) {
  PolicyDir dir;
  dir.write("50-tunnel.policy", kTunnelPolicy);
  ::chmod((dir.path() + "/50-tunnel.policy").c_str(), 0600);  // it holds Key=
  auto o = check_tunnel(dir.path(), {"--uid", "0", "--tunnel", "branch"});
  EXPECT_EQ(o.exit_code, kExitSuccess) << o.out << o.err;
  EXPECT_EQ(o.out.rfind("Tunnel: branch (" + dir.path() + "/50-tunnel.policy:3): ikev2 to 198.51.100.7 port 4500\n", 0),
            0u)
      << o.out;
  EXPECT_NE(o.out.find("Decision: allowed"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("PSK: link"), std::string::npos) << o.out;

  o = check_tunnel(dir.path(), {"--uid", "0", "--tunnel", "branch", "--json"});
  EXPECT_EQ(o.exit_code, kExitSuccess) << o.out << o.err;
  EXPECT_EQ(o.out.rfind("{\"allowed\":true,\"rule\":\"branch-for-root\",\"rule_location\":", 0), 0u) << o.out;
  EXPECT_NE(o.out.find("\"protocols\":[\"ikev2\"]"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find(",\"tunnel\":\"branch\"}\n"), std::string::npos) << o.out;

  // Another user, or the same request without the tunnel, is denied.
  o = check_tunnel(dir.path(), {"--uid", "65534", "--tunnel", "branch"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
  EXPECT_NE(o.out.find("tunnel branch"), std::string::npos) << o.out;
  o = check_tunnel(dir.path(), {"--uid", "0", "--role", "client", "--host", "198.51.100.7", "--port", "4500",
                                "--protocols", "ikev2", "--psk", "link"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
  EXPECT_NE(o.out.find("MatchTunnel branch does not match (the request is not for a tunnel)"), std::string::npos)
      << o.out;
  // Options override what the tunnel supplies.
  o = check_tunnel(dir.path(), {"--uid", "0", "--tunnel", "branch", "--port", "500"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
}

TEST(PolicyCheck, UnknownTunnelExitsTwo) {
  PolicyDir dir;
  dir.write("50-tunnel.policy", kTunnelPolicy);
  ::chmod((dir.path() + "/50-tunnel.policy").c_str(), 0600);
  auto o = check_tunnel(dir.path(), {"--uid", "0", "--tunnel", "nope"});
  EXPECT_EQ(o.exit_code, kExitUsage) << o.out << o.err;
  EXPECT_NE(o.err.find("defines no tunnel 'nope' (defined: branch)"), std::string::npos) << o.err;
  o = check_tunnel(dir.path(), {"--uid", "0", "--tunnel", "nope", "--json"});
  EXPECT_EQ(o.out.rfind("{\"error\":{\"name\":\"no-such-tunnel\",", 0), 0u) << o.out;
}

constexpr const char* kWireGuardPolicy =
    "[Identity wg-host]\n"
    "Type=wireguard\n"
    "PrivateKey=/etc/tapsec/wireguard/wg-host.key\n"
    "[Identity host-cert]\n"
    "Certificate=/etc/tapsec/certs/host.pem\n"
    "PrivateKey=/etc/tapsec/private/host.key\n"
    "[Tunnel]\n"
    "Name=to-beta\n"
    "Protocol=wireguard\n"
    "WireGuardKey=wg-host\n"
    "Peer=192.0.2.2\n"
    "Identity=host-cert\n"
    "AllowedIPs=10.9.0.2/32\n"
    "[Rule wireguard-for-root]\n"
    "MatchUser=root\n"
    "MatchTunnel=to-beta\n"
    "MatchPort=51820\n"
    "Protocols=wireguard\n"
    "Identities=host-cert\n"
    "Action=allow\n";

TEST(PolicyCheck, WireGuardTunnelRequest) {
  PolicyDir dir;
  dir.write("50-wg.policy", kWireGuardPolicy);
  auto o = check_tunnel(dir.path(), {"--uid", "0", "--tunnel", "to-beta"});
  EXPECT_EQ(o.exit_code, kExitSuccess) << o.out << o.err;
  EXPECT_EQ(o.out.rfind("Tunnel: to-beta (" + dir.path() + "/50-wg.policy:7): wireguard to 192.0.2.2 port 51820\n", 0),
            0u)
      << o.out;
  EXPECT_NE(o.out.find("Identity: host-cert"), std::string::npos) << o.out;
  o = check_tunnel(dir.path(), {"--uid", "0", "--tunnel", "to-beta", "--json"});
  EXPECT_NE(o.out.find("\"protocols\":[\"wireguard\"]"), std::string::npos) << o.out;
  // Asking for the tunnel as IKEv2 is not what the rule allows.
  o = check_tunnel(dir.path(), {"--uid", "0", "--tunnel", "to-beta", "--protocols", "ikev2"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
  EXPECT_NE(o.out.find("none of the requested protocols (ikev2) is allowed; this rule allows: wireguard"),
            std::string::npos)
      << o.out;
  o = check_tunnel(dir.path(), {"--uid", "65534", "--tunnel", "to-beta"});
  EXPECT_EQ(o.exit_code, kExitFailure) << o.out << o.err;
}

#else

TEST(PolicyCheck, UnavailableWithoutThePolicyLibrary) {
  PolicyDir dir;
  auto o = check(dir.path(), {"--uid", "0", "--port", "443"});
  EXPECT_EQ(o.exit_code, kExitUsage);
  std::fprintf(stderr, "tapsec_policy is not built: only the fallback path of policy check is tested\n");
}

#endif

}  // namespace
