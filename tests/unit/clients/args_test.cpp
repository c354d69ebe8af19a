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
