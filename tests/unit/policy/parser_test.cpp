// Parser: accepted syntax, and every class of error with its exact file:line.

#include <gtest/gtest.h>

#include "tests/unit/policy/test_support.h"

namespace tapsec::policy {
namespace {

using testing::describe;
using testing::kKeyHex;
using testing::parse_errors;
using testing::parse_ok;

// Expects exactly one error in "f.policy", at `line`, whose message contains `fragment`.
void expect_single_error(std::string_view text, unsigned line, std::string_view fragment) {
  testing::expect_single_error(text, line, fragment, "f.policy");
}

Request tls_client_request() {
  Request request;
  request.protocols = {"tls"};
  request.role = "client";
  request.host = "www.example.com";
  request.port = 443;
  return request;
}

TEST(PolicyParse, FullExampleParses) {
  const std::string text = std::string(R"(# a comment
; another comment
[Identity web]
Description=web server # trailing comment
Certificate=/etc/tapsec/certs/web.pem
PrivateKey=/etc/tapsec/private/web.key

[PSK backup-link]
Identity=backup wire id
Key=hex:)") + kKeyHex + R"(

[TrustStore corp]
File=/etc/tapsec/ca/corp.pem /etc/tapsec/ca/corp2.pem
File=/etc/tapsec/ca/corp3.pem
IncludeSystem=yes

[Rule web-clients]
MatchUser=root 1000
MatchGroup=0
MatchUnit=nginx.service
MatchCgroup=/system.slice/nginx.service
MatchRole=client
MatchHost=*.example.com
MatchAddress=10.0.0.0/8 ::1/128
MatchPort=443 8000-8999
Protocols=tls
Ciphersuites=TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256
Groups=X25519 secp256r1
SignatureAlgorithms=ed25519 rsa_pss_rsae_sha256
Identities=web
PSKs=backup-link
TrustStore=corp
PeerValidation=system pinned application
Export=no
Fallback=yes
Action=allow
)";
  const Policy policy = parse_ok(text);

  ASSERT_NE(policy.identity("web"), nullptr);
  EXPECT_EQ(policy.identity("web")->certificate_file, "/etc/tapsec/certs/web.pem");
  EXPECT_EQ(policy.identity("web")->key_file, "/etc/tapsec/private/web.key");
  EXPECT_EQ(policy.identity("web")->location, "test.policy:3");
  EXPECT_EQ(policy.identity("nope"), nullptr);
  EXPECT_EQ(policy.identity_names(), std::vector<std::string>{"web"});

  const Psk* psk = policy.psk("backup-link");
  ASSERT_NE(psk, nullptr);
  EXPECT_EQ(psk->identity, "backup wire id");
  ASSERT_EQ(psk->key.size(), 32u);
  EXPECT_EQ(psk->key[0], 0x00);
  EXPECT_EQ(psk->key[31], 0x1f);

  const TrustStore* store = policy.trust_store("corp");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->files, (std::vector<std::string>{"/etc/tapsec/ca/corp.pem", "/etc/tapsec/ca/corp2.pem",
                                                    "/etc/tapsec/ca/corp3.pem"}));
  EXPECT_TRUE(store->include_system);
  EXPECT_EQ(policy.rule_names(), std::vector<std::string>{"web-clients"});

  Caller caller;
  caller.uid = 1000;
  caller.unit = "nginx.service";
  caller.cgroup = "/system.slice/nginx.service";
  Request request = tls_client_request();
  request.address = "10.1.2.3";
  const Decision decision = policy.evaluate(caller, request);
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_EQ(decision.rule, "web-clients");
  EXPECT_EQ(decision.rule_location, "test.policy:17");
  EXPECT_EQ(decision.identity, "web");
  EXPECT_EQ(decision.psk, "backup-link");
  EXPECT_EQ(decision.trust_store, "corp");
  EXPECT_TRUE(decision.fallback_allowed);
  EXPECT_FALSE(decision.export_allowed);
  EXPECT_EQ(decision.algorithms.at("ciphersuites"),
            (std::vector<std::string>{"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}));
  // secp256r1 is OpenSSL's other name for P-256.
  EXPECT_EQ(decision.algorithms.at("groups"), (std::vector<std::string>{"X25519", "P-256"}));
  EXPECT_EQ(decision.algorithms.at("signature-algorithms"),
            (std::vector<std::string>{"ed25519", "rsa_pss_rsae_sha256"}));
}

TEST(PolicyParse, PskIdentityDefaultsToName) {
  const Policy policy = parse_ok(std::string("[PSK link]\nKey=hex:") + kKeyHex + "\n");
  ASSERT_NE(policy.psk("link"), nullptr);
  EXPECT_EQ(policy.psk("link")->identity, "link");
  EXPECT_EQ(policy.psk_names(), std::vector<std::string>{"link"});
}

TEST(PolicyParse, CrlfCommentsAndHashInsideValues) {
  const Policy policy = parse_ok(
      "[Rule a]\r\nDescription=C#-written tool ; not a comment\r\n  # indented comment\r\nAction=deny   # why\r\n");
  const Decision decision = policy.evaluate(Caller{}, tls_client_request());
  EXPECT_FALSE(decision.allowed);
  EXPECT_NE(decision.denial_reason.find("C#-written tool ; not a comment"), std::string::npos)
      << decision.denial_reason;
}

TEST(PolicyParse, EmptyTextIsAnEmptyPolicy) {
  const Policy policy = parse_ok("\n# nothing\n");
  const Decision decision = policy.evaluate(Caller{}, tls_client_request());
  EXPECT_FALSE(decision.allowed);
  EXPECT_NE(decision.denial_reason.find("no rules"), std::string::npos);
}

TEST(PolicyParse, ListKeysAccumulateAcrossLines) {
  const Policy policy = parse_ok("[Rule a]\nMatchPort=80\nMatchPort=443\nProtocols=tls\nAction=allow\n");
  Request request = tls_client_request();
  request.port = 80;
  EXPECT_TRUE(policy.evaluate(Caller{}, request).allowed);
  request.port = 443;
  EXPECT_TRUE(policy.evaluate(Caller{}, request).allowed);
  request.port = 8080;
  EXPECT_FALSE(policy.evaluate(Caller{}, request).allowed);
}

TEST(PolicyParse, ErrorToString) {
  EXPECT_EQ((Error{"a.policy", 3, "bad"}).to_string(), "a.policy:3: bad");
  EXPECT_EQ((Error{"a.policy", 0, "bad"}).to_string(), "a.policy: bad");
}

// ---- errors, one class per test, each at an exact line ----

TEST(PolicyParseErrors, UnknownSectionType) {
  expect_single_error("# c\n[Rules a]\nAction=allow\n", 2, "unknown section type 'Rules'");
  expect_single_error("[rule a]\nAction=allow\n", 1, "did you mean 'Rule'");
}

TEST(PolicyParseErrors, SectionNameMissingOrInvalid) {
  expect_single_error("[Rule]\nAction=allow\n", 1, "needs exactly one name");
  expect_single_error("\n[Rule a b]\nAction=allow\n", 2, "needs exactly one name");
  expect_single_error("[Rule -bad]\nAction=allow\n", 1, "not a valid name");
  expect_single_error("[Rule a\nAction=allow\n", 1, "must end with ']'");
  expect_single_error("[]\n", 1, "empty section header");
}

TEST(PolicyParseErrors, UnknownKey) {
  expect_single_error("[Rule a]\nAction=allow\nMatchColour=blue\n", 3, "unknown key 'MatchColour' in [Rule]");
  expect_single_error("[Rule a]\nmatchuser=root\nAction=allow\n", 2, "did you mean 'MatchUser'");
}

TEST(PolicyParseErrors, KeyInWrongSection) {
  expect_single_error("[Rule a]\nAction=allow\nCertificate=/x.pem\n", 3,
                      "Certificate= belongs in [Identity] sections, not in [Rule]");
  expect_single_error(std::string("[PSK p]\nKey=hex:") + kKeyHex + "\nMatchPort=443\n", 3,
                      "MatchPort= belongs in [Rule] sections, not in [PSK]");
}

TEST(PolicyParseErrors, KeyOutsideSectionAndMissingEquals) {
  expect_single_error("Action=allow\n", 1, "outside any section");
  expect_single_error("[Rule a]\nAction=allow\nMatchPort 443\n", 3, "expected Key=value");
  expect_single_error("[Rule a]\nAction=allow\n=443\n", 3, "missing key name");
}

TEST(PolicyParseErrors, EmptyValueAndControlCharacter) {
  expect_single_error("[Rule a]\nAction=allow\nMatchPort=\n", 3, "empty value");
  expect_single_error(std::string("[Rule a]\nAction=allow\nDescription=a\0b\n", 36), 3, "control character");
}

TEST(PolicyParseErrors, ScalarKeyTwice) {
  expect_single_error("[Rule a]\nAction=allow\nExport=no\nExport=yes\n", 4, "given twice in this section (first at line 3)");
}

TEST(PolicyParseErrors, Ports) {
  expect_single_error("[Rule a]\nMatchPort=0\nAction=allow\n", 2, "'0' is not a port number");
  expect_single_error("[Rule a]\nMatchPort=65536\nAction=allow\n", 2, "'65536' is not a port number");
  expect_single_error("[Rule a]\nMatchPort=9000-8000\nAction=allow\n", 2, "is empty");
  expect_single_error("[Rule a]\nMatchPort=https\nAction=allow\n", 2, "not a port number");
  expect_single_error("[Rule a]\nMatchPort=+443\nAction=allow\n", 2, "not a port number");
}

TEST(PolicyParseErrors, Cidrs) {
  expect_single_error("[Rule a]\nMatchAddress=10.0.0.0/33\nAction=allow\n", 2, "bad prefix length");
  expect_single_error("[Rule a]\nMatchAddress=fd00::/129\nAction=allow\n", 2, "bad prefix length");
  expect_single_error("[Rule a]\nMatchAddress=10.0.0.1/8\nAction=allow\n", 2, "host bits");
  expect_single_error("[Rule a]\nMatchAddress=example.com\nAction=allow\n", 2, "not an address or CIDR");
  expect_single_error("[Rule a]\nMatchAddress=10.0.0.0/\nAction=allow\n", 2, "bad prefix length");
}

TEST(PolicyParseErrors, NamesFromKnownSets) {
  expect_single_error("[Rule a]\nProtocols=tls quic\nAction=allow\n", 2, "unknown protocol 'quic'");
  expect_single_error("[Rule a]\nCiphersuites=TLS_RSA_WITH_RC4_128_SHA\nAction=allow\n", 2, "unknown TLS 1.3 cipher suite");
  expect_single_error("[Rule a]\nGroups=secp112r1\nAction=allow\n", 2, "unknown group 'secp112r1'");
  expect_single_error("[Rule a]\nSignatureAlgorithms=rsa_pkcs1_md5\nAction=allow\n", 2, "unknown signature algorithm");
  expect_single_error("[Rule a]\nPeerValidation=trust-me\nAction=allow\n", 2, "unknown peer validation mode");
  expect_single_error("[Rule a]\nMatchRole=peer\nAction=allow\n", 2, "not a role");
  expect_single_error("[Rule a]\nAction=permit\n", 2, "not an action");
  expect_single_error("[Rule a]\nExport=maybe\nAction=allow\n", 2, "not a boolean");
}

TEST(PolicyParseErrors, UsersAndGroups) {
  expect_single_error("[Rule a]\nMatchUser=no-such-user-tapsec-test\nAction=allow\n", 2,
                      "unknown user 'no-such-user-tapsec-test'");
  expect_single_error("[Rule a]\nMatchGroup=no-such-group-tapsec-test\nAction=allow\n", 2,
                      "unknown group 'no-such-group-tapsec-test'");
  expect_single_error("[Rule a]\nMatchUser=4294967295\nAction=allow\n", 2, "out of range");
}

TEST(PolicyParseErrors, PathsAndOtherValues) {
  expect_single_error("[Identity w]\nCertificate=certs/web.pem\nPrivateKey=/k\n", 2, "must be an absolute path");
  expect_single_error("[Rule a]\nMatchCgroup=system.slice\nAction=allow\n", 2, "not an absolute cgroup path");
  expect_single_error("[Rule a]\nMatchHost=bad/host\nAction=allow\n", 2, "not a host name glob");
  expect_single_error("[Rule a]\nMatchUnit=a/b.service\nAction=allow\n", 2, "not a unit name");
  expect_single_error("[Rule a]\nTrustStore=a b\nAction=allow\n", 2, "one [TrustStore]");
}

TEST(PolicyParseErrors, InlineKeys) {
  expect_single_error("[PSK p]\nKey=hex:00112233\n", 2, "too short: 4 bytes, at least 16");
  expect_single_error("[PSK p]\nKey=hex:0011223\n", 2, "odd number of hex digits");
  expect_single_error(std::string("[PSK p]\nKey=") + kKeyHex + "\n", 2, "hex:<hex digits>");
  expect_single_error("[PSK p]\nKey=hex:zz0102030405060708090a0b0c0d0e0f\n", 2, "not a hex digit");
  expect_single_error(std::string("[PSK p]\nKey=hex:") + kKeyHex + "\nKeyFile=/k\n", 3, "either Key= or KeyFile=");
}

TEST(PolicyParseErrors, MissingRequiredKeys) {
  expect_single_error("[Rule a]\nMatchPort=443\n", 1, "has no Action=");
  expect_single_error("\n[Identity w]\nCertificate=/c.pem\n", 2, "has no PrivateKey=");
  expect_single_error("[PSK p]\nIdentity=x\n", 1, "needs Key= or KeyFile=");
  expect_single_error("[TrustStore t]\nIncludeSystem=no\n", 1, "trusts nothing");
}

TEST(PolicyParseErrors, GrantKeysInDenyRule) {
  expect_single_error("[Rule a]\nMatchPort=443\nExport=yes\nAction=deny\n", 3,
                      "Export= has no effect in a rule with Action=deny");
}

TEST(PolicyParseErrors, DuplicateNames) {
  expect_single_error("[Rule a]\nAction=allow\n\n[Rule a]\nAction=deny\n", 4, "Rule 'a' is already defined at f.policy:1");
  expect_single_error("[Identity w]\nCertificate=/c\nPrivateKey=/k\n[Identity w]\nCertificate=/c\nPrivateKey=/k\n", 4,
                      "already defined at f.policy:1");
  // Different kinds have different name spaces.
  parse_ok(std::string("[PSK web]\nKey=hex:") + kKeyHex + "\n[Rule web]\nPSKs=web\nAction=allow\n");
}

TEST(PolicyParseErrors, UnknownReferences) {
  expect_single_error("[Rule a]\nIdentities=ghost\nAction=allow\n", 2,
                      "Rule 'a' refers to Identity 'ghost', which is not defined (defined: none)");
  expect_single_error("[Identity web]\nCertificate=/c\nPrivateKey=/k\n[Rule a]\nAction=allow\nIdentities=web ghost\n", 6,
                      "refers to Identity 'ghost', which is not defined (defined: web)");
  expect_single_error("[Rule a]\nAction=allow\nPSKs=p\n", 3, "refers to PSK 'p'");
  expect_single_error("[Rule a]\nAction=allow\nTrustStore=corp\n", 3, "refers to TrustStore 'corp'");
}

TEST(PolicyParseErrors, ReferenceToDefinitionLaterInFileIsFine) {
  parse_ok("[Rule a]\nIdentities=web\nAction=allow\n[Identity web]\nCertificate=/c\nPrivateKey=/k\n");
}

TEST(PolicyParseErrors, AllErrorsOfAFileAreCollectedInLineOrder) {
  const auto errors = parse_errors(
      "[Rule a]\n"                 // 1: no Action
      "MatchPort=0\n"              // 2
      "Protocols=quic\n"           // 3
      "Identities=ghost\n"         // 4 (reference, found after the file)
      "[Bogus b]\n"                // 5
      "Whatever=1\n"               // 6: inside a rejected section: no extra error
      "[Rule c]\n"                 // 7
      "MatchAddress=1.2.3.4/40\n"  // 8
      "Action=allow\n",
      "f.policy");
  ASSERT_EQ(errors.size(), 6u) << describe(errors);
  const std::vector<unsigned> lines = {1, 2, 3, 4, 5, 8};
  for (std::size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(errors[i].line, lines[i]) << describe(errors);
    EXPECT_EQ(errors[i].file, "f.policy");
  }
  EXPECT_NE(errors[0].message.find("has no Action="), std::string::npos) << describe(errors);
  EXPECT_NE(errors[3].message.find("ghost"), std::string::npos) << describe(errors);
}

}  // namespace
}  // namespace tapsec::policy
