// Directory loading: file order, cross-file names, key files and permissions,
// and the shipped example policies.

#include <grp.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tests/unit/policy/test_support.h"

namespace tapsec::policy {
namespace {

using testing::describe;
using testing::kKeyHex;
using testing::TempDir;

std::variant<Policy, std::vector<Error>> load(const TempDir& dir) { return Policy::load_directory(dir.path()); }

Policy load_ok(const TempDir& dir) {
  auto result = load(dir);
  if (auto* errors = std::get_if<std::vector<Error>>(&result)) {
    ADD_FAILURE() << "unexpected errors:\n" << describe(*errors);
    return Policy();
  }
  return std::move(std::get<Policy>(result));
}

std::vector<Error> load_errors(const TempDir& dir) {
  auto result = load(dir);
  if (auto* errors = std::get_if<std::vector<Error>>(&result)) return *errors;
  ADD_FAILURE() << "expected errors, but the directory loaded";
  return {};
}

Request tls_client(std::uint16_t port = 443) {
  Request request;
  request.protocols = {"tls"};
  request.role = "client";
  request.host = "www.example.com";
  request.port = port;
  return request;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(PolicyLoad, MissingDirectoryIsAnEmptyPolicyThatDenies) {
  auto result = Policy::load_directory("/nonexistent/tapsec/policy.d");
  ASSERT_TRUE(std::holds_alternative<Policy>(result));
  const Decision decision = std::get<Policy>(result).evaluate(Caller{}, tls_client());
  EXPECT_FALSE(decision.allowed);
  EXPECT_FALSE(decision.denial_reason.empty());
}

TEST(PolicyLoad, PathThatIsNotADirectoryIsAnError) {
  TempDir dir;
  const std::string file = dir.write("plain", "x");
  auto result = Policy::load_directory(file);
  ASSERT_TRUE(std::holds_alternative<std::vector<Error>>(result));
  EXPECT_EQ(std::get<std::vector<Error>>(result)[0].file, file);
}

TEST(PolicyLoad, FilesAreReadInLexicalOrderAndOthersIgnored) {
  TempDir dir;
  // Lexical, not numeric: "10-" sorts before "2-".
  dir.write("2-second.policy", "[Rule second]\nAction=allow\n");
  dir.write("10-first.policy", "[Rule first]\nMatchPort=80\nAction=deny\n");
  dir.write("README", "[Not a policy\n");
  dir.write(".hidden.policy", "garbage\n");
  dir.write("50-old.policy~", "garbage\n");
  dir.write("60-x.policy.disabled", "garbage\n");
  const Policy policy = load_ok(dir);
  EXPECT_EQ(policy.rule_names(), (std::vector<std::string>{"first", "second"}));
  Decision decision = policy.evaluate(Caller{}, tls_client(80));
  EXPECT_FALSE(decision.allowed);
  EXPECT_EQ(decision.rule_location, dir.path() + "/10-first.policy:1");
  decision = policy.evaluate(Caller{}, tls_client(443));
  EXPECT_TRUE(decision.allowed);
  EXPECT_EQ(decision.rule_location, dir.path() + "/2-second.policy:1");
}

TEST(PolicyLoad, NamesAreSharedAcrossFiles) {
  TempDir dir;
  dir.write("10-ids.policy", "[Identity web]\nCertificate=/c\nPrivateKey=/k\n");
  dir.write("50-rules.policy", "[Rule web]\nIdentities=web\nAction=allow\n");
  const Policy policy = load_ok(dir);
  EXPECT_EQ(policy.evaluate(Caller{}, tls_client()).identity, "web");
  EXPECT_EQ(policy.identity("web")->location, dir.path() + "/10-ids.policy:1");
}

TEST(PolicyLoad, DuplicateNameInAnotherFile) {
  TempDir dir;
  dir.write("10-a.policy", "[Rule r]\nAction=allow\n");
  dir.write("20-b.policy", "\n\n[Rule r]\nAction=deny\n");
  const auto errors = load_errors(dir);
  ASSERT_EQ(errors.size(), 1u) << describe(errors);
  EXPECT_EQ(errors[0].to_string(),
            dir.path() + "/20-b.policy:3: Rule 'r' is already defined at " + dir.path() + "/10-a.policy:1");
}

TEST(PolicyLoad, BrokenFilesReportEveryErrorWithPathAndLine) {
  TempDir dir;
  dir.write("10-good.policy", "[Rule fine]\nAction=allow\n");
  dir.write("20-broken.policy", "[Rule a]\nMatchPort=70000\nAction=allow\nIdentities=ghost\n");
  dir.write("30-broken.policy", "# header\n[Rulez b]\n");
  const auto errors = load_errors(dir);
  ASSERT_EQ(errors.size(), 3u) << describe(errors);
  EXPECT_EQ(errors[0].file, dir.path() + "/20-broken.policy");
  EXPECT_EQ(errors[0].line, 2u);
  EXPECT_EQ(errors[1].file, dir.path() + "/20-broken.policy");
  EXPECT_EQ(errors[1].line, 4u);
  EXPECT_TRUE(contains(errors[1].message, "Identity 'ghost'"));
  EXPECT_EQ(errors[2].file, dir.path() + "/30-broken.policy");
  EXPECT_EQ(errors[2].line, 2u);
}

TEST(PolicyLoad, KeyFileIsReadAtLoad) {
  TempDir dir;
  const std::string key = dir.write("backup.key", std::string("hex:") + kKeyHex + "\n", 0600);
  const std::string key2 = dir.write("other.key", std::string(kKeyHex) + "\n", 0400);
  dir.write("50.policy", "[PSK backup]\nKeyFile=" + key + "\n[PSK other]\nKeyFile=" + key2 + "\n");
  const Policy policy = load_ok(dir);
  ASSERT_NE(policy.psk("backup"), nullptr);
  ASSERT_EQ(policy.psk("backup")->key.size(), 32u);
  EXPECT_EQ(policy.psk("backup")->key[1], 0x01);
  EXPECT_EQ(policy.psk("other")->key, policy.psk("backup")->key);
  EXPECT_EQ(policy.psk_names(), (std::vector<std::string>{"backup", "other"}));
}

TEST(PolicyLoad, WorldReadableKeyFileIsAnError) {
  TempDir dir;
  const std::string key = dir.write("backup.key", kKeyHex, 0644);
  dir.write("50.policy", "# psk\n[PSK backup]\nKeyFile=" + key + "\n");
  const auto errors = load_errors(dir);
  ASSERT_EQ(errors.size(), 1u) << describe(errors);
  EXPECT_EQ(errors[0].line, 3u);
  EXPECT_TRUE(contains(errors[0].message, "has mode 0644 and holds a PSK")) << errors[0].message;
  EXPECT_TRUE(contains(errors[0].message, "run \"chmod 0600 " + key + "\"")) << errors[0].message;
}

TEST(PolicyLoad, BadKeyFiles) {
  TempDir dir;
  const std::string short_key = dir.write("short.key", "00112233445566778899", 0600);
  const std::string not_hex = dir.write("raw.key", std::string(32, 'x'), 0600);
  ::mkdir((dir.path() + "/dir.key").c_str(), 0700);
  dir.write("50.policy", "[PSK a]\nKeyFile=" + dir.path() + "/missing.key\n" +  // 2
                             "[PSK b]\nKeyFile=" + short_key + "\n" +            // 4
                             "[PSK c]\nKeyFile=" + not_hex + "\n" +              // 6
                             "[PSK d]\nKeyFile=" + dir.path() + "/dir.key\n" +   // 8
                             "[PSK e]\nKeyFile=/dev/zero\n");                    // 10
  const auto errors = load_errors(dir);
  ASSERT_EQ(errors.size(), 5u) << describe(errors);
  EXPECT_EQ(errors[0].line, 2u);
  EXPECT_TRUE(contains(errors[0].message, "cannot open")) << errors[0].message;
  EXPECT_EQ(errors[1].line, 4u);
  EXPECT_TRUE(contains(errors[1].message, "too short: 10 bytes")) << errors[1].message;
  EXPECT_EQ(errors[2].line, 6u);
  EXPECT_TRUE(contains(errors[2].message, "not a hex digit")) << errors[2].message;
  EXPECT_EQ(errors[3].line, 8u);
  EXPECT_TRUE(contains(errors[3].message, "not a regular file")) << errors[3].message;
  EXPECT_EQ(errors[4].line, 10u);
  EXPECT_TRUE(contains(errors[4].message, "not a regular file")) << errors[4].message;
}

TEST(PolicyLoad, InlineKeyNeedsAPrivatePolicyFile) {
  TempDir dir;
  const std::string text = std::string("[PSK p]\nKey=hex:") + kKeyHex + "\n";
  dir.write("50.policy", text, 0600);
  load_ok(dir);
  dir.write("50.policy", text, 0644);
  const auto errors = load_errors(dir);
  ASSERT_EQ(errors.size(), 1u) << describe(errors);
  EXPECT_EQ(errors[0].line, 2u);
  EXPECT_TRUE(contains(errors[0].message, "has mode 0644 and holds a PSK")) << errors[0].message;
  // Readable by its group is as bad as readable by everyone.
  dir.write("50.policy", text, 0640);
  const auto group_errors = load_errors(dir);
  ASSERT_EQ(group_errors.size(), 1u) << describe(group_errors);
  EXPECT_TRUE(contains(group_errors[0].message, "run \"chmod 0600 " + dir.path() + "/50.policy\""))
      << group_errors[0].message;
}

TEST(PolicyLoad, WorldWritablePolicyFileIsAnError) {
  TempDir dir;
  dir.write("50.policy", "[Rule r]\nAction=allow\n", 0666);
  const auto errors = load_errors(dir);
  ASSERT_EQ(errors.size(), 1u) << describe(errors);
  EXPECT_EQ(errors[0].line, 0u);
  EXPECT_TRUE(contains(errors[0].message, "writable by its group and every user")) << errors[0].message;
}

// The shipped examples, with the paths and group they assume replaced by
// ones that exist here.
TEST(PolicyExamples, LoadAndDecideAsDocumented) {
  TempDir dir;
  const std::string key = dir.write("backup.key", std::string(kKeyHex) + "\n", 0600);
  const bool have_tapsec_group = ::getgrnam("tapsec") != nullptr;
  for (const char* name : {"50-web-server.policy", "60-client.policy", "99-default.policy"}) {
    std::ifstream in(std::string(TAPSEC_POLICY_EXAMPLES_DIR) + "/" + name);
    ASSERT_TRUE(in) << name;
    std::stringstream text;
    text << in.rdbuf();
    std::string contents = text.str();
    const auto replace = [&](const std::string& from, const std::string& to) {
      for (std::size_t at = contents.find(from); at != std::string::npos; at = contents.find(from, at + to.size()))
        contents.replace(at, from.size(), to);
    };
    replace("/etc/tapsec/psk/backup.key", key);
    if (!have_tapsec_group) replace("MatchGroup=tapsec", "MatchGroup=4242");
    dir.write(name, contents, 0644);
  }
  const Policy policy = load_ok(dir);

  // nginx serving the public internet.
  Caller nginx;
  nginx.uid = 33;
  nginx.unit = "nginx.service";
  Request serve;
  serve.protocols = {"tls"};
  serve.role = "server";
  serve.address = "203.0.113.5";
  serve.port = 443;
  Decision decision = policy.evaluate(nginx, serve);
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_EQ(decision.rule, "web-public");
  EXPECT_EQ(decision.identity, "web");
  // ... from the intranet: client certificates against the corporate CA.
  serve.address = "10.2.3.4";
  decision = policy.evaluate(nginx, serve);
  EXPECT_EQ(decision.rule, "web-intranet");
  EXPECT_EQ(decision.trust_store, "corp");
  // ... and nothing else.
  decision = policy.evaluate(nginx, tls_client());
  EXPECT_FALSE(decision.allowed);
  EXPECT_EQ(decision.rule, "web-nothing-else");

  // The backup job: only its PSK, only to its server, no fallback.
  Caller backup;
  backup.uid = 34;
  backup.unit = "backup.service";
  Request to_backup = tls_client(7001);
  to_backup.host = "backup.example.com";
  to_backup.address = "192.0.2.20";
  to_backup.peer_validation = "pinned";
  decision = policy.evaluate(backup, to_backup);
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_EQ(decision.psk, "backup-link");
  EXPECT_FALSE(decision.fallback_allowed);
  to_backup.address = "198.51.100.1";
  EXPECT_FALSE(policy.evaluate(backup, to_backup).allowed);

  // A login user (group "users", gid 100 on Debian) browsing.
  Caller user;
  user.uid = 1000;
  user.gid = 1000;
  user.supplementary_gids = {100};
  EXPECT_TRUE(policy.evaluate(user, tls_client()).allowed);
  EXPECT_FALSE(policy.evaluate(user, tls_client(25)).allowed);

  // root: anything it asks for, in its order.
  Request root_request = tls_client(25);
  root_request.protocols = {"tcpcrypt", "tls"};
  decision = policy.evaluate(Caller{}, root_request);
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_EQ(decision.rule, "root");
  EXPECT_EQ(decision.protocols, (std::vector<std::string>{"tcpcrypt", "tls"}));
}

}  // namespace
}  // namespace tapsec::policy
