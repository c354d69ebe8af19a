// tapsecctl's command line.
#include <gtest/gtest.h>

#include "dbus/tapsecctl/args.h"

namespace {

using namespace tapsec::ctl;

ParseResult parse(std::vector<std::string> args) { return parse_arguments(args); }

TEST(Args, GlobalOptionsAnywhere) {
  auto r = parse({"status", "--json", "--bus", "session"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->command, Command::Status);
  EXPECT_TRUE(r.invocation->json);
  EXPECT_EQ(r.invocation->bus, "session");

  r = parse({"--bus=unix:path=/run/x", "associations"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->bus, "unix:path=/run/x");
  EXPECT_FALSE(r.invocation->json);
  EXPECT_EQ(parse({"monitor"}).invocation->bus, "system");
}

TEST(Args, Help) {
  EXPECT_EQ(parse({"--help"}).invocation->command, Command::Help);
  EXPECT_EQ(parse({"-h"}).invocation->command, Command::Help);
  EXPECT_EQ(parse({"show", "--help"}).invocation->command, Command::Help);
  EXPECT_EQ(parse({"help"}).invocation->command, Command::Help);
}

TEST(Args, AssociationIds) {
  auto r = parse({"show", "12"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->association_path, "/org/tapsec1/association/12");
  r = parse({"terminate", "/org/tapsec1/association/7"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->association_path, "/org/tapsec1/association/7");
  EXPECT_FALSE(parse({"show"}).invocation);
  EXPECT_FALSE(parse({"show", "x1"}).invocation);
  EXPECT_FALSE(parse({"show", "/org/tapsec1/association/"}).invocation);
  EXPECT_FALSE(parse({"show", "1", "2"}).invocation);
  EXPECT_EQ(association_id_from_path("/org/tapsec1/association/12"), "12");
}

TEST(Args, UpdateKeys) {
  auto r = parse({"update-keys", "3", "--request-peer"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->command, Command::UpdateKeys);
  EXPECT_TRUE(r.invocation->request_peer);
  EXPECT_FALSE(parse({"update-keys", "3"}).invocation->request_peer);
  EXPECT_FALSE(parse({"update-keys", "3", "--request-peer=yes"}).invocation);
}

TEST(Args, Export) {
  auto r = parse({"export", "3", "--label", "EXPORTER-test", "--context", "00ff10", "--length=32"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->label, "EXPORTER-test");
  EXPECT_EQ(r.invocation->context, (std::vector<std::uint8_t>{0x00, 0xff, 0x10}));
  EXPECT_EQ(r.invocation->length, 32u);
  EXPECT_FALSE(parse({"export", "3", "--length", "32"}).invocation);                       // no label
  EXPECT_FALSE(parse({"export", "3", "--label", "L"}).invocation);                         // no length
  EXPECT_FALSE(parse({"export", "3", "--label", "L", "--length", "0"}).invocation);        // zero
  EXPECT_FALSE(parse({"export", "3", "--label", "L", "--length", "12x"}).invocation);      // not a number
  EXPECT_FALSE(parse({"export", "3", "--label", "L", "--length", "4", "--context", "abc"}).invocation);
  EXPECT_FALSE(parse({"export", "3", "--label", "L", "--length", "4", "--context", "zz"}).invocation);
  EXPECT_FALSE(parse({"export", "3", "--label"}).invocation);  // value missing
}

TEST(Args, OptionsBelongToTheirCommands) {
  auto r = parse({"status", "--label", "x"});
  ASSERT_FALSE(r.invocation);
  EXPECT_NE(r.error.find("does not apply"), std::string::npos);
  EXPECT_FALSE(parse({"status", "--frobnicate"}).invocation);
  EXPECT_FALSE(parse({"status", "-x"}).invocation);
  EXPECT_FALSE(parse({"frobnicate"}).invocation);
  EXPECT_FALSE(parse({}).invocation);
  EXPECT_FALSE(parse({"status", "extra"}).invocation);
  EXPECT_FALSE(parse({"policy"}).invocation);
  EXPECT_FALSE(parse({"policy", "show"}).invocation);
}

TEST(Args, PolicyCheck) {
  auto r = parse({"policy", "check", "--dir", "/tmp/p", "--uid", "0", "--gid", "10", "--unit", "nginx.service",
                  "--role", "server", "--host", "www.example.com", "--address", "10.1.2.3", "--port", "443",
                  "--protocols", "tls,ikev2", "--identity", "web", "--export", "--peer-validation", "pinned",
                  "--json"});
  ASSERT_TRUE(r.invocation) << r.error;
  const auto& p = r.invocation->policy;
  EXPECT_EQ(r.invocation->command, Command::PolicyCheck);
  EXPECT_EQ(p.dir, "/tmp/p");
  EXPECT_EQ(p.uid, 0u);
  EXPECT_EQ(p.gid, 10u);
  EXPECT_EQ(p.unit, "nginx.service");
  EXPECT_EQ(p.role, "server");
  EXPECT_EQ(p.host, "www.example.com");
  EXPECT_EQ(p.address, "10.1.2.3");
  EXPECT_EQ(p.port, 443);
  EXPECT_EQ(p.protocols, (std::vector<std::string>{"tls", "ikev2"}));
  EXPECT_EQ(p.identity, "web");
  EXPECT_TRUE(p.wants_export);
  EXPECT_EQ(p.peer_validation, "pinned");
  EXPECT_TRUE(r.invocation->json);
}

TEST(Args, PolicyCheckDefaultsAndErrors) {
  auto r = parse({"policy", "check", "--uid", "root", "--role", "client", "--host", "h", "--port", "1",
                  "--protocols", "tls"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->policy.uid, 0u);  // user names resolve
  EXPECT_EQ(r.invocation->policy.gid, 0u);  // from the user database
  EXPECT_EQ(r.invocation->policy.dir, "/etc/tapsec/policy.d");
  EXPECT_EQ(r.invocation->policy.peer_validation, "system");
  EXPECT_FALSE(r.invocation->policy.wants_export);

  const std::vector<std::string> good = {"policy", "check", "--uid", "0", "--role", "client",
                                         "--host", "h", "--port", "443", "--protocols", "tls"};
  for (const char* dropped : {"--uid", "--role", "--host", "--port", "--protocols"}) {
    std::vector<std::string> args;
    for (size_t i = 0; i < good.size(); i++) {
      if (good[i] == dropped) {
        i++;
        continue;
      }
      args.push_back(good[i]);
    }
    EXPECT_FALSE(parse(args).invocation) << "without " << dropped;
  }
  auto with = [&](std::vector<std::string> extra) {
    auto args = good;
    args.insert(args.end(), extra.begin(), extra.end());
    return parse(args);
  };
  EXPECT_TRUE(with({}).invocation);
  EXPECT_FALSE(with({"--role", "peer"}).invocation);
  EXPECT_FALSE(with({"--port", "0"}).invocation);
  EXPECT_FALSE(with({"--port", "65536"}).invocation);
  EXPECT_FALSE(with({"--protocols", ","}).invocation);
  EXPECT_FALSE(with({"--peer-validation", "maybe"}).invocation);
  EXPECT_FALSE(with({"--uid", "no-such-user-here"}).invocation);
  EXPECT_FALSE(with({"--gid", "no-such-group-here"}).invocation);
}

TEST(Args, TunnelUp) {
  auto r = parse({"tunnel", "up", "branch"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->command, Command::TunnelUp);
  const TunnelUpOptions& plain = r.invocation->tunnel;
  EXPECT_EQ(plain.peer, "branch");
  EXPECT_TRUE(plain.psk.empty() && plain.identity.empty() && plain.mode.empty());
  EXPECT_TRUE(plain.local_ts.empty() && plain.remote_ts.empty() && plain.ike_proposals.empty());
  EXPECT_FALSE(plain.timeout_ms);

  r = parse({"tunnel", "up", "2001:db8::7", "--identity", "gw", "--local-id=CN=a", "--remote-id", "b",
             "--local-ts", "10.1.0.0/24", "--local-ts", "10.4.0.0/24,2001:db8:a::/64", "--remote-ts",
             "10.2.0.0/24[tcp/443]", "--mode", "tunnel", "--ike-proposal", "aes256gcm16-prfsha384-x25519",
             "--ike-proposal", "aes128-sha256-modp2048", "--esp-proposal", "aes256gcm16", "--timeout-ms", "9000",
             "--json"});
  ASSERT_TRUE(r.invocation) << r.error;
  const TunnelUpOptions& t = r.invocation->tunnel;
  EXPECT_EQ(t.peer, "2001:db8::7");
  EXPECT_EQ(t.identity, "gw");
  EXPECT_EQ(t.local_id, "CN=a");
  EXPECT_EQ(t.remote_id, "b");
  EXPECT_EQ(t.local_ts, (std::vector<std::string>{"10.1.0.0/24", "10.4.0.0/24", "2001:db8:a::/64"}));
  EXPECT_EQ(t.remote_ts, std::vector<std::string>{"10.2.0.0/24[tcp/443]"});
  EXPECT_EQ(t.mode, "tunnel");
  EXPECT_EQ(t.ike_proposals,
            (std::vector<std::string>{"aes256gcm16-prfsha384-x25519", "aes128-sha256-modp2048"}));
  EXPECT_EQ(t.esp_proposals, std::vector<std::string>{"aes256gcm16"});
  ASSERT_TRUE(t.timeout_ms);
  EXPECT_EQ(*t.timeout_ms, 9000u);
  EXPECT_TRUE(r.invocation->json);
}

TEST(Args, TunnelUpErrors) {
  const auto error_of = [](std::vector<std::string> args) {
    auto r = parse(std::move(args));
    EXPECT_FALSE(r.invocation);
    return r.error;
  };
  EXPECT_EQ(error_of({"tunnel"}), "'tunnel' needs a subcommand: tunnel up");
  EXPECT_EQ(error_of({"tunnel", "down", "x"}), "'tunnel' needs a subcommand: tunnel up");
  EXPECT_EQ(error_of({"tunnel", "up"}), "'tunnel up' needs a tunnel name or a peer address");
  EXPECT_EQ(error_of({"tunnel", "up", "a", "b"}), "unexpected argument 'b'");
  EXPECT_EQ(error_of({"tunnel", "up", "a", "--mode", "beet"}), "--mode must be tunnel or transport");
  EXPECT_EQ(error_of({"tunnel", "up", "a", "--timeout-ms", "0"}), "--timeout-ms must be a number of milliseconds above 0");
  EXPECT_EQ(error_of({"tunnel", "up", "a", "--timeout-ms", "1s"}), "--timeout-ms must be a number of milliseconds above 0");
  EXPECT_EQ(error_of({"tunnel", "up", "a", "--local-ts", ","}), "--local-ts must not be empty");
  EXPECT_EQ(error_of({"tunnel", "up", "a", "--local-ts"}), "option '--local-ts' needs a value");
  // Tunnel options belong to tunnel up only; policy check options are not tunnel up's.
  EXPECT_EQ(error_of({"status", "--remote-ts", "10.0.0.0/8"}), "option '--remote-ts' does not apply to 'status'");
  EXPECT_EQ(error_of({"tunnel", "up", "a", "--uid", "0"}), "option '--uid' does not apply to 'tunnel'");
}

TEST(Args, TunnelsAndSas) {
  EXPECT_EQ(parse({"tunnels"}).invocation->command, Command::Tunnels);
  EXPECT_EQ(parse({"sas", "--json"}).invocation->command, Command::Sas);
  EXPECT_TRUE(parse({"sas", "--json"}).invocation->json);
  EXPECT_FALSE(parse({"tunnels", "x"}).invocation);
  EXPECT_FALSE(parse({"sas", "--psk", "x"}).invocation);
}

TEST(Args, WireGuard) {
  auto r = parse({"wg"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->command, Command::Wg);
  r = parse({"wg", "show", "--json"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->command, Command::Wg);
  EXPECT_TRUE(r.invocation->json);
  r = parse({"--json", "wg", "pubkey", "wg-host"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->command, Command::WgPubkey);
  EXPECT_EQ(r.invocation->wireguard_identity, "wg-host");
  EXPECT_EQ(parse({"wg", "pubkey"}).error, "'wg pubkey' needs the name of a Type=wireguard identity");
  EXPECT_EQ(parse({"wg", "pubkey", ""}).error, "'wg pubkey' needs the name of a Type=wireguard identity");
  EXPECT_EQ(parse({"wg", "pubkey", "a", "b"}).error, "unexpected argument 'b'");
  EXPECT_EQ(parse({"wg", "show", "x"}).error, "unexpected argument 'x'");
  EXPECT_EQ(parse({"wg", "genkey"}).error, "unknown 'wg' subcommand 'genkey' (wg show, wg pubkey IDENTITY)");
  EXPECT_EQ(parse({"wg", "--psk", "x"}).error, "option '--psk' does not apply to 'wg'");
  EXPECT_EQ(parse({"wg", "--help"}).invocation->command, Command::Help);
}

TEST(Args, TunnelUpProtocol) {
  auto r = parse({"tunnel", "up", "to-beta", "--protocol", "wireguard"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->tunnel.protocol, "wireguard");
  r = parse({"tunnel", "up", "branch", "--protocol=ikev2"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->tunnel.protocol, "ikev2");
  EXPECT_EQ(parse({"tunnel", "up", "branch"}).invocation->tunnel.protocol, "");
  EXPECT_EQ(parse({"tunnel", "up", "x", "--protocol", "tls"}).error, "--protocol must be ikev2 or wireguard");
  EXPECT_EQ(parse({"status", "--protocol", "wireguard"}).error, "option '--protocol' does not apply to 'status'");
}

TEST(Args, PolicyCheckTunnel) {
  // A tunnel supplies role, host, port and protocols; the caller is still needed.
  auto r = parse({"policy", "check", "--uid", "0", "--tunnel", "branch"});
  ASSERT_TRUE(r.invocation) << r.error;
  const PolicyCheckOptions& p = r.invocation->policy;
  EXPECT_EQ(p.tunnel, "branch");
  EXPECT_EQ(p.role, "");
  EXPECT_EQ(p.host, "");
  EXPECT_EQ(p.port, 0);
  EXPECT_TRUE(p.protocols.empty());
  r = parse({"policy", "check", "--uid", "0", "--tunnel", "branch", "--port", "4500", "--role", "server"});
  ASSERT_TRUE(r.invocation) << r.error;
  EXPECT_EQ(r.invocation->policy.port, 4500);
  EXPECT_EQ(r.invocation->policy.role, "server");
  EXPECT_FALSE(parse({"policy", "check", "--tunnel", "branch"}).invocation);
  EXPECT_FALSE(parse({"policy", "check", "--uid", "0", "--tunnel="}).invocation);
  EXPECT_FALSE(parse({"policy", "check", "--uid", "0", "--tunnel", "b", "--role", "peer"}).invocation);
  EXPECT_EQ(parse({"policy", "check", "--uid", "0", "--port", "1"}).error,
            "policy check needs --role (or --tunnel)");
}

TEST(Hex, RoundTrip) {
  const std::vector<std::uint8_t> bytes = {0x00, 0x01, 0xab, 0xff};
  EXPECT_EQ(to_hex(bytes.data(), bytes.size()), "0001abff");
  EXPECT_EQ(parse_hex("0001ABff"), bytes);
  EXPECT_EQ(parse_hex(""), std::vector<std::uint8_t>{});
  EXPECT_FALSE(parse_hex("0"));
  EXPECT_FALSE(parse_hex("-1"));
  EXPECT_FALSE(parse_hex("g0"));
}

}  // namespace
