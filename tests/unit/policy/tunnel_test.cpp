// [Tunnel] sections and MatchTunnel=: every key, the defaults, each error
// with its line, and how rules match tunnel requests.

#include <grp.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "tests/unit/policy/test_support.h"

namespace tapsec::policy {
namespace {

using testing::describe;
using testing::expect_single_error;
using testing::kKeyHex;
using testing::parse_errors;
using testing::parse_ok;
using testing::TempDir;

const std::string kPsk = std::string("[PSK link]\nKey=hex:") + kKeyHex + "\n";  // lines 1-2

// A minimal valid tunnel after kPsk (header at line 3); `extra` lines follow
// its Name= (line 4), PSK= (line 5): the first extra line is line 6.
std::string tunnel_with(const std::string& extra) {
  return kPsk + "[Tunnel]\nName=t\nPSK=link\n" + extra;
}

TEST(TunnelParse, EveryKey) {
  const std::string text = kPsk + R"([Identity gw]
Certificate=/etc/tapsec/gw.pem
PrivateKey=/etc/tapsec/gw.key
[TrustStore ca]
File=/etc/tapsec/ca.pem
[Tunnel]
Description=to the branch
Name=branch
Protocol=ikev2
Peer=gw-b.example.com
LocalAddress=192.0.2.1
Port=4500
LocalId=CN=gw-a, O=Example
RemoteId=gw-b.example.com
Auth=certificate
PSK=link
Identity=gw
TrustStore=ca
LocalTS=10.1.0.0/24 2001:db8:a::/64
LocalTS=192.0.2.1[udp/500]
RemoteTS=10.2.0.0/24[tcp/443] 198.51.100.9 10.3.0.0/16[tcp/1000-2000]
Mode=tunnel
IKEProposals=aes256gcm16-prfsha384-x25519 aes128-sha256-modp2048
ESPProposals=aes256gcm16 aes128gcm16-esn
ESPProposals=chacha20poly1305-noesn aes256-sha512-ecp384
RekeyGroup=curve25519
Start=trap
RekeyTime=50m
LifeTime=1h
RekeyBytes=1000000
LifeBytes=2000000
RekeyPackets=5000
LifePackets=6000
IKERekeyTime=8h
DPD=0
ReplayWindow=1024
MOBIKE=no
Fragmentation=off
ForceEncapsulation=yes
Export=true
)";
  const Policy policy = parse_ok(text);
  EXPECT_EQ(policy.tunnel_names(), std::vector<std::string>{"branch"});
  const Tunnel* t = policy.tunnel("branch");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(policy.tunnel("nope"), nullptr);
  EXPECT_EQ(t->name, "branch");
  EXPECT_EQ(t->location, "test.policy:8");
  EXPECT_EQ(t->protocol, "ikev2");
  EXPECT_EQ(t->peer, "gw-b.example.com");
  EXPECT_EQ(t->local_address, "192.0.2.1");
  EXPECT_EQ(t->port, 4500);
  EXPECT_EQ(t->local_id, "CN=gw-a, O=Example");
  EXPECT_EQ(t->remote_id, "gw-b.example.com");
  EXPECT_EQ(t->auth, "certificate");
  EXPECT_EQ(t->psk, "link");
  EXPECT_EQ(t->identity, "gw");
  EXPECT_EQ(t->trust_store, "ca");
  EXPECT_EQ(t->local_ts, (std::vector<std::string>{"10.1.0.0/24", "2001:db8:a::/64", "192.0.2.1[udp/500]"}));
  EXPECT_EQ(t->remote_ts,
            (std::vector<std::string>{"10.2.0.0/24[tcp/443]", "198.51.100.9", "10.3.0.0/16[tcp/1000-2000]"}));
  EXPECT_EQ(t->mode, "tunnel");
  EXPECT_EQ(t->ike_proposals,
            (std::vector<std::string>{"aes256gcm16-prfsha384-x25519", "aes128-sha256-modp2048"}));
  EXPECT_EQ(t->esp_proposals, (std::vector<std::string>{"aes256gcm16", "aes128gcm16-esn", "chacha20poly1305-noesn",
                                                        "aes256-sha512-ecp384"}));
  EXPECT_EQ(t->rekey_group, "curve25519");
  EXPECT_EQ(t->start, "trap");
  EXPECT_EQ(t->rekey_seconds, 3000u);
  EXPECT_EQ(t->life_seconds, 3600u);
  EXPECT_EQ(t->rekey_bytes, 1000000u);
  EXPECT_EQ(t->life_bytes, 2000000u);
  EXPECT_EQ(t->rekey_packets, 5000u);
  EXPECT_EQ(t->life_packets, 6000u);
  EXPECT_EQ(t->ike_rekey_seconds, 8u * 3600);
  EXPECT_EQ(t->dpd_seconds, 0u);
  EXPECT_EQ(t->replay_window, 1024u);
  EXPECT_FALSE(t->mobike);
  EXPECT_FALSE(t->fragmentation);
  EXPECT_TRUE(t->force_encapsulation);
  EXPECT_TRUE(t->export_allowed);
}

TEST(TunnelParse, Defaults) {
  const Policy policy = parse_ok(kPsk + "[Tunnel]\nName=t\nPSK=link\n");
  const Tunnel* t = policy.tunnel("t");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->protocol, "ikev2");
  EXPECT_EQ(t->peer, "");
  EXPECT_EQ(t->local_address, "");
  EXPECT_EQ(t->port, 500);
  EXPECT_EQ(t->auth, "psk");
  EXPECT_EQ(t->identity, "");
  EXPECT_EQ(t->trust_store, "");
  EXPECT_TRUE(t->local_ts.empty());
  EXPECT_TRUE(t->remote_ts.empty());
  EXPECT_EQ(t->mode, "tunnel");
  EXPECT_TRUE(t->ike_proposals.empty());
  EXPECT_TRUE(t->esp_proposals.empty());
  EXPECT_EQ(t->rekey_group, "");
  EXPECT_EQ(t->start, "none");
  EXPECT_EQ(t->rekey_seconds, 3600u);
  EXPECT_EQ(t->life_seconds, 0u);  // rekey + 10%
  EXPECT_EQ(t->rekey_bytes, 0u);
  EXPECT_EQ(t->life_bytes, 0u);
  EXPECT_EQ(t->rekey_packets, 0u);
  EXPECT_EQ(t->life_packets, 0u);
  EXPECT_EQ(t->ike_rekey_seconds, 14400u);
  EXPECT_EQ(t->dpd_seconds, 30u);
  EXPECT_EQ(t->replay_window, 32u);
  EXPECT_TRUE(t->mobike);
  EXPECT_TRUE(t->fragmentation);
  EXPECT_FALSE(t->force_encapsulation);
  EXPECT_FALSE(t->export_allowed);
}

TEST(TunnelParse, NameInTheHeaderAndInOrderOfFiles) {
  const Policy policy = parse_ok(kPsk + "[Tunnel zeta]\nPSK=link\n[Tunnel]\nName=alpha\nPSK=link\n"
                                        "[Tunnel beta]\nName=beta\nPSK=link\n");
  EXPECT_EQ(policy.tunnel_names(), (std::vector<std::string>{"zeta", "alpha", "beta"}));
}

TEST(TunnelParse, DurationsAcceptSuffixes) {
  for (const auto& [text, seconds] : std::vector<std::pair<std::string, std::uint32_t>>{
           {"90", 90}, {"90s", 90}, {"30m", 1800}, {"2h", 7200}}) {
    const Policy policy = parse_ok(tunnel_with("IKERekeyTime=" + text + "\n"));
    ASSERT_NE(policy.tunnel("t"), nullptr);
    EXPECT_EQ(policy.tunnel("t")->ike_rekey_seconds, seconds) << text;
  }
}

TEST(TunnelParse, ProposalsAndTokens) {
  const Policy policy = parse_ok(tunnel_with("IKEProposals=chacha20poly1305-prfsha512-ecp256\n"
                                             "ESPProposals=aes128-sha256 aes256gcm16-modp2048-esn\n"));
  ASSERT_NE(policy.tunnel("t"), nullptr);
  EXPECT_EQ(policy.tunnel("t")->esp_proposals,
            (std::vector<std::string>{"aes128-sha256", "aes256gcm16-modp2048-esn"}));
}

// ---- errors: one each, with its line ----

TEST(TunnelErrors, NameRequiredUniqueAndValid) {
  expect_single_error(kPsk + "[Tunnel]\nPSK=link\n", 3, "[Tunnel] has no name: give Name=");
  expect_single_error(kPsk + "[Tunnel]\nName=a\nPSK=link\n[Tunnel]\nName=a\nPSK=link\n", 7,
                      "Tunnel 'a' is already defined at t.policy:4");
  expect_single_error(kPsk + "[Tunnel a]\nPSK=link\n[Tunnel a]\nPSK=link\n", 5,
                      "Tunnel 'a' is already defined at t.policy:3");
  expect_single_error(kPsk + "[Tunnel]\nName=-bad\nPSK=link\n", 4, "'-bad' is not a valid name");
  expect_single_error(kPsk + "[Tunnel a]\nName=b\nPSK=link\n", 4, "differs from the name in the section header");
  expect_single_error(kPsk + "[Tunnel a b]\nPSK=link\n", 3, "needs exactly one name");
}

TEST(TunnelErrors, Protocol) {
  expect_single_error(tunnel_with("Protocol=ikev1\n"), 6, "unknown tunnel protocol 'ikev1' (ikev2 or wireguard)");
}

TEST(TunnelErrors, BadValues) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"Peer=bad_host!", "Peer=: 'bad_host!' is not an IP address, host name, or %any"},
      {"LocalAddress=gw.example.com", "LocalAddress=: 'gw.example.com' is not an IP address"},
      {"Port=0", "Port=: '0' is not a port number"},
      {"Port=500-600", "Port=: expected one port"},
      {"LocalId=caf\xc3\xa9", "LocalId=: must be printable ASCII"},
      {"Auth=eap", "Auth=: 'eap' is not valid (use psk or certificate)"},
      {"Identity=a b", "Identity=: expected one section name"},
      {"LocalTS=10.1.0.0/33", "LocalTS=: '10.1.0.0/33' is not a traffic selector"},
      {"RemoteTS=10.1.0.1/24", "has host bits set"},
      {"RemoteTS=10.1.0.0/24[tcp/0]", "'0' is not a port number"},
      {"RemoteTS=10.1.0.0/24[gre]", "unknown protocol 'gre'"},
      {"RemoteTS=10.1.0.0/24[icmp/8]", "protocol icmp has no ports"},
      {"RemoteTS=10.1.0.0/24[tcp/443", "malformed protocol/port suffix"},
      {"Mode=beet", "Mode=: 'beet' is not valid (use tunnel or transport)"},
      {"Start=always", "Start=: 'always' is not valid (use none or boot or trap)"},
      {"RekeyGroup=modp1024", "unknown key exchange group 'modp1024'"},
      {"RekeyTime=1d", "RekeyTime=: '1d' is not a duration"},
      {"RekeyTime=0", "RekeyTime=: must be more than 0 seconds"},
      {"IKERekeyTime=99999999999h", "too long a duration"},
      {"DPD=-1", "DPD=: '-1' is not a duration"},
      {"RekeyBytes=1M", "RekeyBytes=: '1M' is not a number"},
      {"LifePackets=x", "LifePackets=: 'x' is not a number"},
      {"ReplayWindow=5000", "ReplayWindow=: at most 4096"},
      {"MOBIKE=maybe", "MOBIKE=: 'maybe' is not a boolean"},
      {"Fragmentation=2", "Fragmentation=: '2' is not a boolean"},
      {"ForceEncapsulation=y", "ForceEncapsulation=: 'y' is not a boolean"},
      {"Export=sure", "Export=: 'sure' is not a boolean"},
  };
  for (const auto& [line, message] : cases) {
    SCOPED_TRACE(line);
    expect_single_error(tunnel_with(line + "\n"), 6, message);
  }
}

TEST(TunnelErrors, UnknownProposalTokenIsNamedWithItsLine) {
  expect_single_error(tunnel_with("ESPProposals=aes256gcm16\nIKEProposals=aes192-sha256-modp2048\n"), 7,
                      "IKEProposals=: unknown algorithm 'aes192' in proposal 'aes192-sha256-modp2048' (known: aes128");
  expect_single_error(tunnel_with("ESPProposals=aes256gcm16 aes256gcm12\n"), 6, "unknown algorithm 'aes256gcm12'");
  expect_single_error(tunnel_with("IKEProposals=aes256gcm16-x25519-ESN\n"), 6, "unknown algorithm 'ESN'");
}

TEST(TunnelErrors, ProposalStructure) {
  expect_single_error(tunnel_with("IKEProposals=aes256gcm16-prfsha384\n"), 6, "has no key exchange group");
  expect_single_error(tunnel_with("IKEProposals=sha256-x25519\n"), 6, "has no encryption algorithm");
  expect_single_error(tunnel_with("ESPProposals=aes256\n"), 6, "need an integrity algorithm");
  expect_single_error(tunnel_with("ESPProposals=aes256gcm16-sha256\n"), 6, "takes no integrity algorithm in ESP");
  expect_single_error(tunnel_with("IKEProposals=aes256gcm16-x25519-esn\n"), 6, "applies to ESP proposals only");
  expect_single_error(tunnel_with("ESPProposals=aes256gcm16-prfsha256\n"), 6, "only IKE proposals have");
  expect_single_error(tunnel_with("ESPProposals=aes256gcm16--esn\n"), 6, "has an empty algorithm");
}

TEST(TunnelErrors, AuthNeedsItsCredential) {
  expect_single_error(kPsk + "[Tunnel]\nName=t\n", 3, "[Tunnel t]: Auth=psk needs PSK= naming a [PSK] section");
  expect_single_error(kPsk + "[Tunnel]\nName=t\nAuth=certificate\n", 5,
                      "Auth=certificate needs Identity= naming an [Identity] section");
  expect_single_error(kPsk + "[Tunnel]\nName=t\nPSK=other\n", 5,
                      "Tunnel 't' refers to PSK 'other', which is not defined (defined: link)");
  expect_single_error(kPsk + "[Tunnel]\nName=t\nAuth=certificate\nIdentity=gw\n", 6,
                      "Tunnel 't' refers to Identity 'gw', which is not defined (defined: none)");
  expect_single_error(
      "[Identity gw]\nCertificate=/c.pem\nPrivateKey=/k.pem\n[Tunnel]\nName=t\nAuth=certificate\nIdentity=gw\n"
      "TrustStore=nowhere\n",
      8, "Tunnel 't' refers to TrustStore 'nowhere', which is not defined");
  // The credential Auth= does not use is not looked up.
  parse_ok("[Identity gw]\nCertificate=/c.pem\nPrivateKey=/k.pem\n[Tunnel]\nName=t\nAuth=certificate\nIdentity=gw\n"
           "PSK=unused\n");
}

TEST(TunnelErrors, ReferencesMayComeFromAnotherFile) {
  TempDir dir;
  dir.write("10-tunnels.policy", "[Tunnel]\nName=t\nPSK=late\n[Rule r]\nMatchTunnel=t\nAction=allow\n");
  dir.write("20-keys.policy", std::string("[PSK late]\nKey=hex:") + kKeyHex + "\n");
  auto loaded = Policy::load_directory(dir.path());
  ASSERT_TRUE(std::holds_alternative<Policy>(loaded)) << describe(std::get<std::vector<Error>>(loaded));
  EXPECT_NE(std::get<Policy>(loaded).tunnel("t"), nullptr);
}

TEST(TunnelErrors, StartNeedsAPeerAndTrapNeedsSelectors) {
  expect_single_error(tunnel_with("Start=boot\n"), 6, "Start=boot needs Peer=");
  expect_single_error(tunnel_with("Peer=%any\nStart=trap\nRemoteTS=10.2.0.0/24\n"), 7, "Start=trap needs Peer=");
  expect_single_error(tunnel_with("Peer=192.0.2.9\nStart=trap\n"), 7,
                      "Start=trap needs LocalTS= or RemoteTS= (the traffic that starts the tunnel), or Mode=transport");
  parse_ok(tunnel_with("Peer=192.0.2.9\nStart=trap\nMode=transport\n"));
  parse_ok(tunnel_with("Peer=192.0.2.9\nStart=trap\nRemoteTS=10.2.0.0/24\n"));
  parse_ok(tunnel_with("Peer=2001:db8::9\nStart=boot\n"));
}

TEST(TunnelErrors, LifetimesMustExceedRekeyLimits) {
  expect_single_error(tunnel_with("RekeyTime=1h\nLifeTime=30m\n"), 7,
                      "LifeTime= (1800s) must be longer than RekeyTime= (3600s)");
  expect_single_error(tunnel_with("LifeTime=1h\nRekeyTime=3600\n"), 6, "must be longer than RekeyTime=");
  expect_single_error(tunnel_with("RekeyBytes=100\nLifeBytes=100\n"), 7, "LifeBytes= must be more than RekeyBytes=");
  expect_single_error(tunnel_with("LifePackets=1\nRekeyPackets=2\n"), 6,
                      "LifePackets= must be more than RekeyPackets=");
  // Only LifeTime given: compared with nothing (the default rekey applies at run time).
  parse_ok(tunnel_with("LifeTime=10m\n"));
}

TEST(TunnelErrors, TransportModeWantsHostSelectors) {
  expect_single_error(tunnel_with("Mode=transport\nLocalTS=192.0.2.1\nRemoteTS=192.0.2.2 10.0.0.0/8\n"), 8,
                      "Mode=transport protects traffic between the two hosts only; traffic selector '10.0.0.0/8' is "
                      "a network");
  // The order of the keys does not matter.
  expect_single_error(tunnel_with("LocalTS=2001:db8::/64\nMode=transport\n"), 6, "'2001:db8::/64' is a network");
  parse_ok(tunnel_with("Mode=transport\nLocalTS=192.0.2.1/32\nRemoteTS=2001:db8::2[tcp/22]\n"));
}

TEST(TunnelErrors, UnknownAndMisplacedKeys) {
  expect_single_error(tunnel_with("Cipher=aes\n"), 6, "unknown key 'Cipher' in [Tunnel]");
  expect_single_error(tunnel_with("peer=192.0.2.1\n"), 6, "(did you mean 'Peer'?)");
  expect_single_error(tunnel_with("MatchUser=root\n"), 6, "MatchUser= belongs in [Rule] sections");
  expect_single_error(tunnel_with("Peer=192.0.2.1\nPeer=192.0.2.2\n"), 7, "Peer= is given twice");
  expect_single_error("[Rule r]\nAction=allow\nPeer=192.0.2.1\n", 3, "Peer= belongs in [Tunnel] sections");
}

TEST(TunnelErrors, AllErrorsOfATunnelAreReported) {
  const auto errors = parse_errors(kPsk + "[Tunnel]\nName=t\nPort=x\nMode=x\nStart=trap\n", "t.policy");
  ASSERT_EQ(errors.size(), 5u) << describe(errors);
  EXPECT_EQ(errors[0].line, 3u);  // Auth=psk (the default) needs PSK=
  EXPECT_EQ(errors[1].line, 5u);
  EXPECT_EQ(errors[2].line, 6u);
  EXPECT_EQ(errors[3].line, 7u);  // Start=trap needs Peer=
  EXPECT_EQ(errors[4].line, 7u);  // ... and traffic selectors
}

// ---- MatchTunnel ----

Request tunnel_request(const std::string& tunnel) {
  Request request;
  request.protocols = {"ikev2"};
  request.role = "client";
  request.host = "198.51.100.7";
  request.port = 500;
  request.tunnel = tunnel;
  return request;
}

Request tls_request() {
  Request request;
  request.protocols = {"tls"};
  request.role = "client";
  request.host = "www.example.com";
  request.port = 443;
  return request;
}

const std::string kTunnels = kPsk + "[Tunnel a]\nPSK=link\n[Tunnel b]\nPSK=link\n[Tunnel c]\nPSK=link\n";

TEST(MatchTunnel, NamedTunnelsOnly) {
  const Policy policy = parse_ok(kTunnels + "[Rule ab]\nMatchTunnel=a\nMatchTunnel=b\nAction=allow\n");
  EXPECT_TRUE(policy.evaluate(Caller{}, tunnel_request("a")).allowed);
  EXPECT_TRUE(policy.evaluate(Caller{}, tunnel_request("b")).allowed);
  const Decision other = policy.evaluate(Caller{}, tunnel_request("c"));
  EXPECT_FALSE(other.allowed);
  ASSERT_FALSE(other.explanation.empty());
  EXPECT_NE(other.explanation[0].find("MatchTunnel a b does not match tunnel c"), std::string::npos)
      << other.explanation[0];
  EXPECT_NE(other.denial_reason.find("tunnel c"), std::string::npos) << other.denial_reason;
  // A request that is not about a tunnel never matches a MatchTunnel rule.
  const Decision tls = policy.evaluate(Caller{}, tls_request());
  EXPECT_FALSE(tls.allowed);
  EXPECT_NE(tls.explanation[0].find("does not match (the request is not for a tunnel)"), std::string::npos);
  Request untitled = tunnel_request("");
  EXPECT_FALSE(policy.evaluate(Caller{}, untitled).allowed);
}

TEST(MatchTunnel, StarMatchesAnyTunnel) {
  const Policy policy = parse_ok(kTunnels + "[Rule any]\nMatchTunnel=*\nAction=allow\n");
  EXPECT_TRUE(policy.evaluate(Caller{}, tunnel_request("c")).allowed);
  EXPECT_FALSE(policy.evaluate(Caller{}, tls_request()).allowed);
}

TEST(MatchTunnel, RulesWithoutItMatchTunnelRequestsByTheirOtherKeys) {
  const Policy policy = parse_ok(kTunnels +
                                 "[Rule tls-only]\nMatchPort=443\nAction=allow\n"
                                 "[Rule ikev2]\nMatchUser=0\nProtocols=ikev2\nPSKs=link\nAction=allow\n");
  // Port 500 is not 443: the TLS rule is passed over, the second decides.
  Request request = tunnel_request("a");
  request.psk = "link";
  Decision decision = policy.evaluate(Caller{}, request);
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_EQ(decision.rule, "ikev2");
  EXPECT_EQ(decision.protocols, std::vector<std::string>{"ikev2"});
  EXPECT_EQ(decision.psk, "link");
  // A tunnel request on port 443 is matched by the first rule.
  request.port = 443;
  EXPECT_EQ(policy.evaluate(Caller{}, request).rule, "tls-only");
  // And TLS is decided as before.
  EXPECT_EQ(policy.evaluate(Caller{}, tls_request()).rule, "tls-only");
}

TEST(MatchTunnel, CombinesWithOtherMatchKeys) {
  const Policy policy = parse_ok(kTunnels + "[Rule r]\nMatchUser=1000\nMatchTunnel=a\nAction=allow\n");
  Caller alice;
  alice.uid = 1000;
  EXPECT_TRUE(policy.evaluate(alice, tunnel_request("a")).allowed);
  EXPECT_FALSE(policy.evaluate(Caller{}, tunnel_request("a")).allowed);
}

TEST(MatchTunnel, IkeV2IsAnAllowedProtocol) {
  const Policy policy = parse_ok(kTunnels + "[Rule r]\nMatchTunnel=a\nProtocols=ikev2 wireguard\nAction=allow\n");
  EXPECT_EQ(policy.evaluate(Caller{}, tunnel_request("a")).protocols, std::vector<std::string>{"ikev2"});
  const Policy tls_only = parse_ok(kTunnels + "[Rule r]\nMatchTunnel=a\nProtocols=tls\nAction=allow\n");
  const Decision denied = tls_only.evaluate(Caller{}, tunnel_request("a"));
  EXPECT_FALSE(denied.allowed);
  EXPECT_NE(denied.denial_reason.find("none of the requested protocols (ikev2) is allowed"), std::string::npos);
}

TEST(MatchTunnel, Errors) {
  expect_single_error("[Rule r]\nMatchTunnel=nope\nAction=allow\n", 2,
                      "Rule 'r' refers to Tunnel 'nope', which is not defined (defined: none)");
  expect_single_error("[Rule r]\nMatchTunnel=a/b\nAction=allow\n", 2, "'a/b' is not a tunnel name (or * for any");
}

// ---- the shipped example, with the key files it names made here ----

TEST(TunnelExamples, SiteToSiteLoadsAndDecides) {
  TempDir dir;
  const std::string branch_key = dir.write("branch.key", std::string(kKeyHex) + "\n", 0600);
  const std::string backup_key = dir.write("backup-ipsec.key", std::string(kKeyHex) + "\n", 0600);
  std::ifstream in(std::string(TAPSEC_POLICY_EXAMPLES_DIR) + "/50-site-to-site.policy");
  ASSERT_TRUE(in);
  std::stringstream text;
  text << in.rdbuf();
  std::string contents = text.str();
  const auto replace = [&](const std::string& from, const std::string& to) {
    const std::size_t at = contents.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    contents.replace(at, from.size(), to);
  };
  replace("KeyFile=/etc/tapsec/psk/branch.key", "KeyFile=" + branch_key);
  replace("KeyFile=/etc/tapsec/psk/backup-ipsec.key", "KeyFile=" + backup_key);
  dir.write("50-site-to-site.policy", contents, 0644);
  auto loaded = Policy::load_directory(dir.path());
  ASSERT_TRUE(std::holds_alternative<Policy>(loaded)) << describe(std::get<std::vector<Error>>(loaded));
  const Policy& policy = std::get<Policy>(loaded);
  EXPECT_EQ(policy.tunnel_names(), (std::vector<std::string>{"branch", "partner", "backup-transport"}));
  const Tunnel* branch = policy.tunnel("branch");
  ASSERT_NE(branch, nullptr);
  EXPECT_EQ(branch->start, "trap");
  EXPECT_EQ(branch->life_seconds, 66u * 60);
  EXPECT_EQ(policy.tunnel("backup-transport")->mode, "transport");

  Request request = tunnel_request("branch");
  request.psk = "branch-link";
  Decision decision = policy.evaluate(Caller{}, request);
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_EQ(decision.rule, "tunnels-root");
  Request partner = tunnel_request("partner");
  partner.identity = "gw-a";
  partner.wants_export = true;
  decision = policy.evaluate(Caller{}, partner);
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_TRUE(decision.export_allowed);
  Caller alice;
  alice.uid = 1000;
  decision = policy.evaluate(alice, request);
  EXPECT_FALSE(decision.allowed);
  EXPECT_EQ(decision.rule, "tunnels-nothing-else");
}

}  // namespace
}  // namespace tapsec::policy
