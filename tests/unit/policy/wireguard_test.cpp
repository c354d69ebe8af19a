// Protocol=wireguard tunnels and Type=wireguard identities: every key, the
// defaults, each error with its line, the checks across sections, and how
// rules decide WireGuard tunnel requests.

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

constexpr const char* kPeerKey = "zP8JjmCn7M1N4sCpPjVRgMq9+4AxVByfGxpBjyEvUkk=";

// Lines 1-3: the WireGuard identity every tunnel below uses.
const std::string kWgIdentity = "[Identity wg]\nType=wireguard\nPrivateKey=/etc/tapsec/wg.key\n";

// A minimal valid wireguard tunnel: header at line 4, then Name= (5),
// Protocol= (6), WireGuardKey= (7), AllowedIPs= (8), PeerPublicKey= (9);
// the first extra line is line 10.
std::string wg_tunnel_with(const std::string& extra) {
  return kWgIdentity + "[Tunnel]\nName=t\nProtocol=wireguard\nWireGuardKey=wg\nAllowedIPs=10.9.0.2/32\n" +
         "PeerPublicKey=" + kPeerKey + "\n" + extra;
}

// ---- [Identity] Type= ----

TEST(WireGuardIdentity, TypeWireGuardNeedsOnlyAKeyPath) {
  const Policy policy = parse_ok(kWgIdentity + "[Identity cert]\nType=x509\nCertificate=/c.pem\nPrivateKey=/k.pem\n"
                                               "[Identity plain]\nCertificate=/c.pem\nPrivateKey=/k.pem\n");
  const Identity* wg = policy.identity("wg");
  ASSERT_NE(wg, nullptr);
  EXPECT_EQ(wg->type, "wireguard");
  EXPECT_EQ(wg->key_file, "/etc/tapsec/wg.key");  // need not exist: the agent creates it
  EXPECT_EQ(wg->certificate_file, "");
  EXPECT_EQ(policy.identity("cert")->type, "x509");
  EXPECT_EQ(policy.identity("plain")->type, "x509");  // the default
}

TEST(WireGuardIdentity, Errors) {
  expect_single_error("[Identity wg]\nType=wireguard\nCertificate=/c.pem\nPrivateKey=/k.pem\n", 3,
                      "Certificate=: a Type=wireguard identity has no certificate, only its key file (PrivateKey=)");
  expect_single_error("[Identity wg]\nType=wireguard\n", 1,
                      "[Identity wg] has no PrivateKey= (the file of its WireGuard private key; the agent creates "
                      "it when it does not exist)");
  expect_single_error("[Identity wg]\nType=wireguard\nPrivateKey=relative.key\n", 3,
                      "PrivateKey= must be an absolute path");
  // An unknown type is the only error: no guessing which keys it would need.
  expect_single_error("[Identity wg]\nType=ed25519\nPrivateKey=/k\n", 2,
                      "Type=: 'ed25519' is not an identity type (x509 or wireguard)");
  expect_single_error("[Identity x]\nType=x509\nPrivateKey=/k.pem\n", 1, "[Identity x] has no Certificate=");
  expect_single_error("[Identity wg]\nType=wireguard\nType=x509\nPrivateKey=/k\n", 3, "Type= is given twice");
}

// ---- [Tunnel] Protocol=wireguard ----

TEST(WireGuardTunnel, EveryKey) {
  const std::string text = kWgIdentity + std::string("[PSK static]\nKey=hex:") + kKeyHex + "\n" + R"([Tunnel]
Description=to beta
Name=to-beta
Protocol=wireguard
Interface=wg.beta_1
WireGuardKey=wg
ListenPort=51900
Peer=beta.example.com
Port=51999
ExchangePort=4433
Address=10.9.0.1/24 fd00:9::1/64
Address=192.0.2.1
AllowedIPs=10.9.0.2/32 10.20.0.0/16
AllowedIPs=fd00:9::/64 198.51.100.7 0.0.0.0/0
PeerPublicKey=zP8JjmCn7M1N4sCpPjVRgMq9+4AxVByfGxpBjyEvUkk=
PSK=static
PSKRotation=10m
Keepalive=25
FwMark=0x1f
Fallback=yes
Start=boot
)";
  const Policy policy = parse_ok(text);
  const Tunnel* t = policy.tunnel("to-beta");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->location, "test.policy:6");
  EXPECT_EQ(t->protocol, "wireguard");
  EXPECT_EQ(t->interface_name, "wg.beta_1");
  EXPECT_EQ(t->wireguard_key, "wg");
  EXPECT_EQ(t->listen_port, 51900);
  EXPECT_EQ(t->peer, "beta.example.com");
  EXPECT_EQ(t->port, 51999);
  EXPECT_EQ(t->exchange_port, 4433);
  EXPECT_EQ(t->addresses, (std::vector<std::string>{"10.9.0.1/24", "fd00:9::1/64", "192.0.2.1/32"}));
  EXPECT_EQ(t->allowed_ips, (std::vector<std::string>{"10.9.0.2/32", "10.20.0.0/16", "fd00:9::/64",
                                                      "198.51.100.7/32", "0.0.0.0/0"}));
  EXPECT_EQ(t->peer_public_key, kPeerKey);
  EXPECT_EQ(t->psk, "static");
  EXPECT_EQ(t->auth, "psk");
  EXPECT_EQ(t->psk_rotation_seconds, 600u);
  EXPECT_EQ(t->keepalive_seconds, 25u);
  EXPECT_EQ(t->fwmark, 0x1fu);
  EXPECT_TRUE(t->fallback);
  EXPECT_EQ(t->start, "boot");
}

TEST(WireGuardTunnel, Defaults) {
  const Policy policy = parse_ok(wg_tunnel_with(""));
  const Tunnel* t = policy.tunnel("t");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->protocol, "wireguard");
  EXPECT_EQ(t->interface_name, "wg-t");
  EXPECT_EQ(t->listen_port, 51820);
  EXPECT_EQ(t->port, 51820);  // the peer's WireGuard port, not IKE's 500
  EXPECT_EQ(t->exchange_port, 51821);
  EXPECT_TRUE(t->addresses.empty());
  EXPECT_EQ(t->peer, "");
  EXPECT_EQ(t->psk, "");
  EXPECT_EQ(t->identity, "");
  EXPECT_EQ(t->auth, "psk");
  EXPECT_EQ(t->psk_rotation_seconds, 120u);
  EXPECT_EQ(t->keepalive_seconds, 0u);
  EXPECT_EQ(t->fwmark, 0u);
  EXPECT_FALSE(t->fallback);
  EXPECT_EQ(t->start, "none");
}

TEST(WireGuardTunnel, DefaultInterfaceNameIsCutTo15Characters) {
  const Policy policy = parse_ok(kWgIdentity + "[Tunnel to-the-branch-office]\nProtocol=wireguard\nWireGuardKey=wg\n"
                                               "AllowedIPs=10.9.0.0/24\nPeerPublicKey=" + kPeerKey + "\n");
  ASSERT_NE(policy.tunnel("to-the-branch-office"), nullptr);
  EXPECT_EQ(policy.tunnel("to-the-branch-office")->interface_name, "wg-to-the-branc");
}

TEST(WireGuardTunnel, PortDefaultDoesNotDependOnKeyOrder) {
  const Policy policy =
      parse_ok(kWgIdentity + "[Tunnel]\nName=t\nPort=4000\nProtocol=wireguard\nWireGuardKey=wg\nAllowedIPs=10.9.0.0/24\n"
                             "PeerPublicKey=" + kPeerKey + "\n");
  EXPECT_EQ(policy.tunnel("t")->port, 4000);
  // And an ikev2 tunnel keeps 500.
  const Policy ike = parse_ok(std::string("[PSK link]\nKey=hex:") + kKeyHex + "\n[Tunnel]\nName=i\nPSK=link\n");
  EXPECT_EQ(ike.tunnel("i")->port, 500);
}

TEST(WireGuardTunnel, AgentExchangeWithCertificates) {
  const Policy policy = parse_ok(kWgIdentity +
                                 "[Identity cert]\nCertificate=/c.pem\nPrivateKey=/k.pem\n"
                                 "[TrustStore ca]\nFile=/ca.pem\n"
                                 "[Tunnel]\nName=x\nProtocol=wireguard\nWireGuardKey=wg\nAllowedIPs=10.9.0.0/24\n"
                                 "Peer=192.0.2.2\nIdentity=cert\nTrustStore=ca\nRemoteId=CN=beta.example\n"
                                 "PSKRotation=0\n");
  const Tunnel* t = policy.tunnel("x");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->identity, "cert");
  EXPECT_EQ(t->trust_store, "ca");
  EXPECT_EQ(t->remote_id, "CN=beta.example");
  EXPECT_EQ(t->auth, "certificate");  // Identity= given: the agents' exchange
  EXPECT_EQ(t->psk_rotation_seconds, 0u);
  EXPECT_EQ(t->peer_public_key, "");
}

TEST(WireGuardTunnel, FwMarkAndKeepaliveForms) {
  for (const auto& [text, mark] : std::vector<std::pair<std::string, std::uint32_t>>{
           {"0", 0}, {"51820", 51820}, {"0xCA6C", 0xca6c}, {"0xffffffff", 0xffffffffu}}) {
    const Policy policy = parse_ok(wg_tunnel_with("FwMark=" + text + "\n"));
    EXPECT_EQ(policy.tunnel("t")->fwmark, mark) << text;
  }
  EXPECT_EQ(parse_ok(wg_tunnel_with("Keepalive=65535\n")).tunnel("t")->keepalive_seconds, 65535);
  EXPECT_EQ(parse_ok(wg_tunnel_with("Keepalive=1m\n")).tunnel("t")->keepalive_seconds, 60);
}

TEST(WireGuardTunnel, BadValues) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"Interface=wg-this-is-too-long", "Interface=: 'wg-this-is-too-long' is not an interface name (1-15"},
      {"Interface=wg/0", "'wg/0' is not an interface name"},
      {"Interface=..", "'..' is not an interface name"},
      {"Interface=.", "'.' is not an interface name"},
      {"ListenPort=0", "ListenPort=: '0' is not a port number"},
      {"ListenPort=70000", "ListenPort=: '70000' is not a port number"},
      {"ExchangePort=1-2", "ExchangePort=: expected one port, not a range"},
      {"Port=x", "Port=: 'x' is not a port number"},
      {"Address=10.9.0.1/33", "Address=: '10.9.0.1/33' has a bad prefix length (0-32)"},
      {"Address=fd00::1/129", "has a bad prefix length (0-128)"},
      {"Address=wg.example/24", "Address=: 'wg.example/24' is not an interface address"},
      {"Address=/24", "'/24' is not an interface address"},
      {"Address=10.9.0.1/", "'10.9.0.1/' has a bad prefix length"},
      {"AllowedIPs=10.9.0.1/24", "AllowedIPs=: '10.9.0.1/24' has host bits set after the prefix length"},
      {"AllowedIPs=10.9.0.0/40", "has a bad prefix length"},
      {"AllowedIPs=any", "'any' is not an address or CIDR prefix"},
      {"PSKRotation=2d", "PSKRotation=: '2d' is not a duration"},
      {"Keepalive=65536", "Keepalive=: at most 65535 seconds"},
      {"Keepalive=-1", "Keepalive=: '-1' is not a duration"},
      {"FwMark=0x", "FwMark=: '0x' is not a firewall mark"},
      {"FwMark=0x100000000", "is not a firewall mark"},
      {"FwMark=4294967296", "is not a firewall mark"},
      {"FwMark=12ab", "is not a firewall mark"},
      {"Fallback=perhaps", "Fallback=: 'perhaps' is not a boolean"},
      {"Peer=-bad-", "Peer=: '-bad-' is not an IP address, host name, or %any"},
      {"Start=always", "Start=: 'always' is not valid (use none or boot or trap)"},
  };
  for (const auto& [line, message] : cases) {
    SCOPED_TRACE(line);
    expect_single_error(wg_tunnel_with(line + "\n"), 10, message);
  }
}

TEST(WireGuardTunnel, PeerPublicKeyIsStrictBase64Of32Bytes) {
  const std::string key(kPeerKey);
  const std::vector<std::string> bad = {
      key.substr(0, 43),                          // no '='
      key.substr(0, 42) + "==",                   // 31 bytes
      key + "=",                                  // too long
      "zP8JjmCn7M1N4sCpPjVRgMq9+4AxVByfGxpBjyEvUkl=",  // leftover bits not zero: not canonical
      "zP8JjmCn7M1N4sCpPjVRgMq9-4AxVByfGxpBjyEvUkk=",  // base64url, not base64
      "zP8JjmCn7M1N4sCpPjVRgMq9+4AxVByfGxpBjyEvU k=",  // a space
  };
  for (const std::string& value : bad) {
    SCOPED_TRACE(value);
    const auto errors = parse_errors(kWgIdentity + "[Tunnel]\nName=t\nProtocol=wireguard\nWireGuardKey=wg\n"
                                                   "AllowedIPs=10.9.0.2/32\nPeerPublicKey=" + value + "\n",
                                     "t.policy");
    ASSERT_FALSE(errors.empty());
    EXPECT_EQ(errors[0].line, 9u);
    EXPECT_NE(errors[0].message.find("is not a WireGuard key (the base64 of 32 bytes: 44 characters ending in one "
                                     "'='"),
              std::string::npos)
        << describe(errors);
  }
  // Every key `wg` prints is accepted, including ones with '+' and '/'.
  for (const char* good : {"InuaCBxqTGbed/OPQrtBhmqQsvqN6Pnux2+166C752Q=",
                           "MiWQAZfPsc0aR3I2Tx/wTXjEVRdeY9JicV6USEnXMk8=",
                           "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                           "//////////////////////////////////////////8="}) {
    SCOPED_TRACE(good);
    parse_ok(kWgIdentity + "[Tunnel]\nName=t\nProtocol=wireguard\nWireGuardKey=wg\nAllowedIPs=10.9.0.2/32\n"
                           "PeerPublicKey=" + good + "\n");
  }
}

TEST(WireGuardTunnel, RequiredKeys) {
  expect_single_error(kWgIdentity + "[Tunnel]\nName=t\nProtocol=wireguard\nAllowedIPs=10.9.0.2/32\n"
                                    "PeerPublicKey=" + kPeerKey + "\n",
                      6, "[Tunnel t]: Protocol=wireguard needs WireGuardKey= naming an [Identity] with Type=wireguard");
  expect_single_error(kWgIdentity + "[Tunnel]\nName=t\nProtocol=wireguard\nWireGuardKey=wg\n"
                                    "PeerPublicKey=" + kPeerKey + "\n",
                      6, "[Tunnel t]: Protocol=wireguard needs AllowedIPs= (the addresses routed to the peer)");
  expect_single_error(kWgIdentity + "[Tunnel]\nName=t\nProtocol=wireguard\nWireGuardKey=wg\nAllowedIPs=10.9.0.2/32\n",
                      6, "[Tunnel t]: a wireguard tunnel needs PeerPublicKey= (a peer without an agent) or "
                         "Identity= (the agents exchange keys, authenticated by certificates)");
}

TEST(WireGuardTunnel, CrossKeyChecks) {
  expect_single_error(wg_tunnel_with("Start=trap\nPeer=192.0.2.2\n"), 10,
                      "[Tunnel t]: Start=trap is for ikev2 tunnels; a wireguard tunnel starts with none or boot");
  // Start=boot without a peer: the link waits for the peer to come.
  parse_ok(wg_tunnel_with("Start=boot\n"));
  const std::string cert = "[Identity cert]\nCertificate=/c.pem\nPrivateKey=/k.pem\n";
  const std::string psk = std::string("[PSK s]\nKey=hex:") + kKeyHex + "\n";
  expect_single_error(cert + psk + wg_tunnel_with("Identity=cert\nPSK=s\n").substr(0) , 16,
                      "[Tunnel t]: PSK= (a static preshared key) and Identity= (an agent exchange, which makes and "
                      "rotates the preshared key) exclude each other");
  // Both PeerPublicKey= and Identity=: the exchanged key must be that one.
  parse_ok(cert + wg_tunnel_with("Identity=cert\n"));
}

TEST(WireGuardTunnel, IkeKeysAreRefused) {
  const std::vector<std::string> keys = {
      "LocalAddress=192.0.2.1", "LocalId=a", "Auth=psk", "LocalTS=10.0.0.0/8", "RemoteTS=10.0.0.0/8",
      "Mode=transport", "IKEProposals=aes256gcm16-prfsha384-x25519", "ESPProposals=aes256gcm16",
      "RekeyGroup=x25519", "RekeyTime=1h", "LifeTime=2h", "RekeyBytes=1", "LifeBytes=2", "RekeyPackets=1",
      "LifePackets=2", "IKERekeyTime=4h", "DPD=10", "ReplayWindow=64", "MOBIKE=no", "Fragmentation=no",
      "ForceEncapsulation=yes", "Export=yes"};
  for (const std::string& line : keys) {
    SCOPED_TRACE(line);
    const std::string key = line.substr(0, line.find('='));
    expect_single_error(wg_tunnel_with(line + "\n"), 10,
                        key + "= applies to ikev2 tunnels only; [Tunnel t] has Protocol=wireguard");
  }
  // Protocol= after the IKE key: reported just the same.
  expect_single_error(kWgIdentity + "[Tunnel]\nName=t\nDPD=10\nProtocol=wireguard\nWireGuardKey=wg\n"
                                    "AllowedIPs=10.9.0.2/32\nPeerPublicKey=" + kPeerKey + "\n",
                      6, "DPD= applies to ikev2 tunnels only");
}

TEST(WireGuardTunnel, WireGuardKeysAreRefusedOnIkeTunnels) {
  const std::string ike = std::string("[PSK link]\nKey=hex:") + kKeyHex + "\n[Tunnel]\nName=i\nPSK=link\n";
  const std::vector<std::string> keys = {
      "Interface=wg0", "WireGuardKey=wg", "ListenPort=1", "ExchangePort=2", "Address=10.0.0.1/24",
      "AllowedIPs=10.0.0.0/24", std::string("PeerPublicKey=") + kPeerKey, "PSKRotation=1m", "Keepalive=25",
      "FwMark=1", "Fallback=yes"};
  for (const std::string& line : keys) {
    SCOPED_TRACE(line);
    const std::string key = line.substr(0, line.find('='));
    expect_single_error(ike + line + "\n", 6,
                        key + "= applies to wireguard tunnels only; [Tunnel i] has Protocol=ikev2");
  }
}

TEST(WireGuardTunnel, ProtocolNamesAndKeyNames) {
  // An unknown protocol is the only error: the keys are not judged by a guess.
  expect_single_error(wg_tunnel_with("").replace(wg_tunnel_with("").find("Protocol=wireguard"), 18,
                                                 "Protocol=WireGuard"),
                      6, "Protocol=: unknown tunnel protocol 'WireGuard' (ikev2 or wireguard)");
  expect_single_error(kWgIdentity + "[Tunnel]\nName=t\nProtocol=wireguard\nWireGuardKey=a b\nAllowedIPs=10.9.0.2/32\n"
                                    "PeerPublicKey=" + kPeerKey + "\n",
                      7, "WireGuardKey=: expected the name of one [Identity] with Type=wireguard, got 'a b'");
  expect_single_error(wg_tunnel_with("allowedips=10.0.0.0/8\n"), 10, "(did you mean 'AllowedIPs'?)");
  expect_single_error(wg_tunnel_with("Interface=wg0\nInterface=wg1\n"), 11, "Interface= is given twice");
}

// ---- references, checked once every file is read ----

TEST(WireGuardReferences, WireGuardKeyMustNameAWireGuardIdentity) {
  expect_single_error(wg_tunnel_with("").replace(wg_tunnel_with("").find("WireGuardKey=wg"), 15, "WireGuardKey=nope"),
                      7, "Tunnel 't' refers to Identity 'nope', which is not defined (defined: wg)");
  const std::string cert = "[Identity cert]\nCertificate=/c.pem\nPrivateKey=/k.pem\n";
  expect_single_error(cert + "[Tunnel]\nName=t\nProtocol=wireguard\nWireGuardKey=cert\nAllowedIPs=10.9.0.2/32\n"
                             "PeerPublicKey=" + kPeerKey + "\n",
                      7, "Tunnel 't': WireGuardKey= names Identity 'cert' of Type=x509; it needs an [Identity] with "
                         "Type=wireguard");
}

TEST(WireGuardReferences, ExchangeIdentityMustBeACertificate) {
  expect_single_error(wg_tunnel_with("Identity=wg\n"), 10,
                      "Tunnel 't': Identity= names Identity 'wg' of Type=wireguard; it needs an [Identity] with "
                      "Type=x509");
  expect_single_error(wg_tunnel_with("Identity=missing\n"), 10,
                      "Tunnel 't' refers to Identity 'missing', which is not defined");
  expect_single_error(wg_tunnel_with("TrustStore=missing\n"), 10,
                      "Tunnel 't' refers to TrustStore 'missing', which is not defined");
  // An IKE tunnel with certificates cannot use a WireGuard key either.
  expect_single_error(kWgIdentity + "[Tunnel]\nName=i\nAuth=certificate\nIdentity=wg\n", 7,
                      "Tunnel 'i': Identity= names Identity 'wg' of Type=wireguard; it needs an [Identity] with "
                      "Type=x509");
}

TEST(WireGuardReferences, StaticPskMustBe32Bytes) {
  expect_single_error("[PSK short]\nKey=hex:000102030405060708090a0b0c0d0e0f\n" + wg_tunnel_with("PSK=short\n"), 12,
                      "Tunnel 't': PSK 'short' is 16 bytes; a WireGuard preshared key must be exactly 32 bytes");
  expect_single_error(wg_tunnel_with("PSK=none\n"), 10, "Tunnel 't' refers to PSK 'none', which is not defined");
  parse_ok(std::string("[PSK ok]\nKey=hex:") + kKeyHex + "\n" + wg_tunnel_with("PSK=ok\n"));
  // IKE PSKs keep their own limits (16 bytes is fine there).
  parse_ok("[PSK short]\nKey=hex:000102030405060708090a0b0c0d0e0f\n[Tunnel]\nName=i\nPSK=short\n");
}

TEST(WireGuardReferences, ResolvedAcrossFiles) {
  TempDir dir;
  const std::string key = dir.write("static.key", std::string(kKeyHex) + "\n", 0600);
  dir.write("10-tunnel.policy", std::string("[Tunnel]\nName=t\nProtocol=wireguard\nWireGuardKey=late\n"
                                            "AllowedIPs=10.9.0.2/32\nPeerPublicKey=") + kPeerKey + "\nPSK=s\n");
  dir.write("20-keys.policy", "[Identity late]\nType=wireguard\nPrivateKey=/k\n[PSK s]\nKeyFile=" + key + "\n");
  auto loaded = Policy::load_directory(dir.path());
  ASSERT_TRUE(std::holds_alternative<Policy>(loaded)) << describe(std::get<std::vector<Error>>(loaded));
  EXPECT_EQ(std::get<Policy>(loaded).tunnel("t")->wireguard_key, "late");

  // The same with a certificate identity in the later file: refused there too.
  dir.write("20-keys.policy", "[Identity late]\nCertificate=/c\nPrivateKey=/k\n[PSK s]\nKeyFile=" + key + "\n");
  auto refused = Policy::load_directory(dir.path());
  ASSERT_TRUE(std::holds_alternative<std::vector<Error>>(refused));
  const auto& errors = std::get<std::vector<Error>>(refused);
  ASSERT_EQ(errors.size(), 1u) << describe(errors);
  EXPECT_EQ(errors[0].line, 4u);
  EXPECT_NE(errors[0].message.find("of Type=x509"), std::string::npos) << describe(errors);
}

// ---- several tunnels, one interface ----

std::string wg_peer(const std::string& name, const std::string& extra) {
  return "[Tunnel " + name + "]\nProtocol=wireguard\nWireGuardKey=wg\nAllowedIPs=10.9.0.0/24\nPeerPublicKey=" +
         kPeerKey + "\n" + extra;
}

TEST(WireGuardInterfaces, EachTunnelHasItsOwnInterface) {
  const Policy policy = parse_ok(kWgIdentity + wg_peer("a", "Interface=wg0\nAddress=10.9.0.1/24\n") +
                                 wg_peer("c", "ListenPort=51821\n"));
  EXPECT_EQ(policy.tunnel("a")->interface_name, "wg0");
  EXPECT_EQ(policy.tunnel("c")->interface_name, "wg-c");

  // b's header at line 10, its Interface= at line 15.
  expect_single_error(kWgIdentity + wg_peer("a", "Interface=wg0\n") +
                          wg_peer("b", "Interface=wg0\nListenPort=51821\nFwMark=1\n"),
                      15, "[Tunnel b]: interface 'wg0' is already tunnel 'a''s (t.policy:4); each WireGuard tunnel "
                          "has its own interface (one peer per link)");
}

TEST(WireGuardInterfaces, DifferentInterfacesNeedDifferentPorts) {
  expect_single_error(kWgIdentity + wg_peer("a", "") + wg_peer("b", "ListenPort=51820\n"), 14,
                      "[Tunnel b]: ListenPort=51820 is already used by interface 'wg-a' (tunnel 'a', t.policy:4); "
                      "each interface needs its own port");
  // Without ListenPort=, the error points at the section.
  expect_single_error(kWgIdentity + wg_peer("a", "") + wg_peer("b", ""), 9, "ListenPort=51820 is already used");
}

// ---- rules decide WireGuard tunnel requests like IKE ones ----

Request wg_request(const std::string& tunnel) {
  Request request;
  request.protocols = {"wireguard"};
  request.role = "client";
  request.host = "192.0.2.2";
  request.port = 51820;
  request.tunnel = tunnel;
  return request;
}

const std::string kTwoTunnels = kWgIdentity + wg_peer("a", "") + wg_peer("b", "ListenPort=51821\n");

TEST(WireGuardRules, MatchTunnelAndProtocols) {
  const Policy policy = parse_ok(kTwoTunnels + "[Rule a]\nMatchTunnel=a\nProtocols=wireguard\nAction=allow\n"
                                               "[Rule rest]\nMatchTunnel=*\nAction=deny\n");
  Decision decision = policy.evaluate(Caller{}, wg_request("a"));
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_EQ(decision.rule, "a");
  EXPECT_EQ(decision.protocols, std::vector<std::string>{"wireguard"});
  decision = policy.evaluate(Caller{}, wg_request("b"));
  EXPECT_FALSE(decision.allowed);
  EXPECT_EQ(decision.rule, "rest");
  EXPECT_NE(decision.explanation[0].find("MatchTunnel a does not match tunnel b"), std::string::npos);
}

TEST(WireGuardRules, IkeOnlyRuleDeniesWireGuard) {
  const Policy policy = parse_ok(kTwoTunnels + "[Rule ike]\nMatchTunnel=*\nProtocols=ikev2\nAction=allow\n");
  const Decision decision = policy.evaluate(Caller{}, wg_request("a"));
  EXPECT_FALSE(decision.allowed);
  EXPECT_NE(decision.denial_reason.find("none of the requested protocols (wireguard) is allowed; this rule allows: "
                                        "ikev2"),
            std::string::npos)
      << decision.denial_reason;
  // A rule naming no protocols allows wireguard among all of them.
  const Policy any = parse_ok(kTwoTunnels + "[Rule any]\nMatchTunnel=a\nAction=allow\n");
  EXPECT_TRUE(any.evaluate(Caller{}, wg_request("a")).allowed);
}

TEST(WireGuardRules, CredentialsAreCheckedLikeIkeTunnels) {
  const Policy policy = parse_ok(std::string("[PSK s]\nKey=hex:") + kKeyHex + "\n" + kTwoTunnels +
                                 "[Rule r]\nMatchUser=0\nMatchTunnel=a b\nProtocols=wireguard\nPSKs=s\nAction=allow\n");
  Request request = wg_request("b");
  request.psk = "s";
  EXPECT_TRUE(policy.evaluate(Caller{}, request).allowed);
  request.psk = "other";
  EXPECT_FALSE(policy.evaluate(Caller{}, request).allowed);
  Caller alice;
  alice.uid = 1000;
  EXPECT_FALSE(policy.evaluate(alice, wg_request("a")).allowed);
}

// ---- the shipped example ----

TEST(WireGuardExamples, ExampleLoadsAndDecides) {
  TempDir dir;
  const std::string phone_key = dir.write("phone.key", std::string(kKeyHex) + "\n", 0600);
  std::ifstream in(std::string(TAPSEC_POLICY_EXAMPLES_DIR) + "/60-wireguard.policy");
  ASSERT_TRUE(in);
  std::stringstream text;
  text << in.rdbuf();
  std::string contents = text.str();
  const std::string from = "KeyFile=/etc/tapsec/psk/phone.key";
  const std::size_t at = contents.find(from);
  ASSERT_NE(at, std::string::npos);
  contents.replace(at, from.size(), "KeyFile=" + phone_key);
  dir.write("60-wireguard.policy", contents, 0644);
  auto loaded = Policy::load_directory(dir.path());
  ASSERT_TRUE(std::holds_alternative<Policy>(loaded)) << describe(std::get<std::vector<Error>>(loaded));
  const Policy& policy = std::get<Policy>(loaded);
  EXPECT_EQ(policy.tunnel_names(), (std::vector<std::string>{"office", "phone"}));
  EXPECT_EQ(policy.identity("wg-host")->type, "wireguard");
  const Tunnel* office = policy.tunnel("office");
  ASSERT_NE(office, nullptr);
  EXPECT_EQ(office->interface_name, "wg-office");
  EXPECT_EQ(office->auth, "certificate");
  EXPECT_EQ(office->psk_rotation_seconds, 120u);
  EXPECT_EQ(office->start, "boot");
  const Tunnel* phone = policy.tunnel("phone");
  ASSERT_NE(phone, nullptr);
  EXPECT_EQ(phone->interface_name, "wg-phone");
  EXPECT_EQ(phone->psk, "phone-link");

  Request request = wg_request("office");
  request.host = office->peer;
  request.identity = office->identity;
  Decision decision = policy.evaluate(Caller{}, request);
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_EQ(decision.rule, "wireguard-root");
  EXPECT_EQ(decision.trust_store, "office-ca");
  Request phone_request = wg_request("phone");
  phone_request.host = "";
  phone_request.psk = "phone-link";
  EXPECT_TRUE(policy.evaluate(Caller{}, phone_request).allowed);
  Caller alice;
  alice.uid = 1000;
  decision = policy.evaluate(alice, request);
  EXPECT_FALSE(decision.allowed);
  EXPECT_EQ(decision.rule, "wireguard-nothing-else");
}

}  // namespace
}  // namespace tapsec::policy
