// Evaluation: each Match key, first-match order, narrowing and denial reasons.

#include <gtest/gtest.h>

#include "tests/unit/policy/test_support.h"

namespace tapsec::policy {
namespace {

using testing::kKeyHex;
using testing::parse_ok;

Request request_to(std::string host, std::string address, std::uint16_t port) {
  Request request;
  request.protocols = {"tls"};
  request.role = "client";
  request.host = std::move(host);
  request.address = std::move(address);
  request.port = port;
  return request;
}

Request any_request() { return request_to("www.example.com", "192.0.2.10", 443); }

// One allow rule with the given Match lines; is the request allowed?
bool matches(const std::string& match_lines, const Caller& caller, const Request& request) {
  const Policy policy = parse_ok("[Rule r]\n" + match_lines + "\nAction=allow\n");
  return policy.evaluate(caller, request).allowed;
}

bool matches(const std::string& match_lines, const Request& request) {
  return matches(match_lines, Caller{}, request);
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(PolicyMatch, NoMatchKeysMatchesEverything) { EXPECT_TRUE(matches("", any_request())); }

TEST(PolicyMatch, User) {
  Caller caller;
  caller.uid = 1000;
  EXPECT_TRUE(matches("MatchUser=1000", caller, any_request()));
  EXPECT_TRUE(matches("MatchUser=root 1000", caller, any_request()));  // OR within a key
  EXPECT_FALSE(matches("MatchUser=root", caller, any_request()));
  caller.uid = 0;
  EXPECT_TRUE(matches("MatchUser=root", caller, any_request()));  // resolved with getpwnam
}

TEST(PolicyMatch, GroupPrimaryOrSupplementary) {
  Caller caller;
  caller.uid = 1000;
  caller.gid = 1000;
  EXPECT_FALSE(matches("MatchGroup=27", caller, any_request()));
  caller.supplementary_gids = {44, 27};
  EXPECT_TRUE(matches("MatchGroup=27", caller, any_request()));
  EXPECT_TRUE(matches("MatchGroup=1000", caller, any_request()));
  caller.gid = 0;
  caller.supplementary_gids.clear();
  EXPECT_TRUE(matches("MatchGroup=root", caller, any_request()));
}

TEST(PolicyMatch, UnitGlob) {
  Caller caller;
  caller.unit = "nginx.service";
  EXPECT_TRUE(matches("MatchUnit=nginx.service", caller, any_request()));
  EXPECT_TRUE(matches("MatchUnit=apache2.service nginx*.service", caller, any_request()));
  EXPECT_FALSE(matches("MatchUnit=nginx", caller, any_request()));
  caller.unit.clear();
  EXPECT_FALSE(matches("MatchUnit=*", caller, any_request()));  // unknown unit never matches
}

TEST(PolicyMatch, CgroupSubtree) {
  Caller caller;
  caller.cgroup = "/system.slice/nginx.service";
  EXPECT_TRUE(matches("MatchCgroup=/system.slice/nginx.service", caller, any_request()));
  EXPECT_TRUE(matches("MatchCgroup=/system.slice/", caller, any_request()));
  EXPECT_TRUE(matches("MatchCgroup=/", caller, any_request()));
  EXPECT_FALSE(matches("MatchCgroup=/system.slice/nginx", caller, any_request()));  // no partial component
  caller.cgroup = "/system.slice/nginx.service/worker";
  EXPECT_TRUE(matches("MatchCgroup=/system.slice/nginx.service", caller, any_request()));
  caller.cgroup.clear();
  EXPECT_FALSE(matches("MatchCgroup=/", caller, any_request()));
}

TEST(PolicyMatch, Role) {
  Request request = any_request();
  EXPECT_TRUE(matches("MatchRole=client", request));
  request.role = "server";
  request.peer_validation.clear();
  EXPECT_FALSE(matches("MatchRole=client", request));
  EXPECT_TRUE(matches("MatchRole=client server", request));
}

TEST(PolicyMatch, HostGlobIsCaseInsensitive) {
  EXPECT_TRUE(matches("MatchHost=*.example.com", request_to("WWW.Example.COM", "", 443)));
  EXPECT_TRUE(matches("MatchHost=*.example.com", request_to("a.b.example.com.", "", 443)));
  EXPECT_FALSE(matches("MatchHost=*.example.com", request_to("example.com", "", 443)));
  EXPECT_FALSE(matches("MatchHost=*.example.com", request_to("example.com.evil.org", "", 443)));
  EXPECT_TRUE(matches("MatchHost=EXAMPLE.com", request_to("example.com", "", 443)));
  EXPECT_FALSE(matches("MatchHost=*", request_to("", "192.0.2.1", 443)));  // no host name
}

TEST(PolicyMatch, AddressV4) {
  const std::string rule = "MatchAddress=10.0.0.0/8 192.168.1.0/24";
  EXPECT_TRUE(matches(rule, request_to("", "10.200.3.4", 443)));
  EXPECT_TRUE(matches(rule, request_to("", "192.168.1.255", 443)));
  EXPECT_FALSE(matches(rule, request_to("", "192.168.2.1", 443)));
  EXPECT_FALSE(matches(rule, request_to("", "11.0.0.1", 443)));
  EXPECT_TRUE(matches("MatchAddress=0.0.0.0/0", request_to("", "203.0.113.9", 443)));
  EXPECT_TRUE(matches("MatchAddress=172.16.0.0/12", request_to("", "172.31.255.255", 443)));
  EXPECT_FALSE(matches("MatchAddress=172.16.0.0/12", request_to("", "172.32.0.0", 443)));
  EXPECT_TRUE(matches("MatchAddress=192.0.2.7", request_to("", "192.0.2.7", 443)));  // bare address = /32
  EXPECT_FALSE(matches("MatchAddress=192.0.2.7", request_to("", "192.0.2.8", 443)));
}

TEST(PolicyMatch, AddressV6AndMapped) {
  const std::string rule = "MatchAddress=::1/128 2001:db8::/32";
  EXPECT_TRUE(matches(rule, request_to("", "::1", 443)));
  EXPECT_TRUE(matches(rule, request_to("", "2001:db8:ffff::1", 443)));
  EXPECT_FALSE(matches(rule, request_to("", "2001:db9::1", 443)));
  EXPECT_FALSE(matches(rule, request_to("", "::2", 443)));
  EXPECT_TRUE(matches("MatchAddress=fe80::/10", request_to("", "febf::1", 443)));
  EXPECT_FALSE(matches("MatchAddress=fe80::/10", request_to("", "fec0::1", 443)));
  // v4 rules do not match v6 addresses, except v4-mapped ones.
  EXPECT_FALSE(matches("MatchAddress=0.0.0.0/0", request_to("", "::1", 443)));
  EXPECT_TRUE(matches("MatchAddress=10.0.0.0/8", request_to("", "::ffff:10.1.1.1", 443)));
  EXPECT_FALSE(matches("MatchAddress=::/0", request_to("", "10.1.1.1", 443)));
}

TEST(PolicyMatch, AddressFromHostLiteralOrMissing) {
  EXPECT_TRUE(matches("MatchAddress=10.0.0.0/8", request_to("10.9.9.9", "", 443)));
  EXPECT_FALSE(matches("MatchAddress=0.0.0.0/0", request_to("www.example.com", "", 443)));
  EXPECT_FALSE(matches("MatchAddress=0.0.0.0/0", request_to("", "not-an-ip", 443)));
}

TEST(PolicyMatch, PortsAndRanges) {
  const std::string rule = "MatchPort=443 8000-8999";
  EXPECT_TRUE(matches(rule, request_to("h", "", 443)));
  EXPECT_TRUE(matches(rule, request_to("h", "", 8000)));
  EXPECT_TRUE(matches(rule, request_to("h", "", 8999)));
  EXPECT_FALSE(matches(rule, request_to("h", "", 7999)));
  EXPECT_FALSE(matches(rule, request_to("h", "", 9000)));
  EXPECT_FALSE(matches(rule, request_to("h", "", 0)));
  EXPECT_TRUE(matches("MatchPort=1-65535", request_to("h", "", 65535)));
}

TEST(PolicyMatch, DifferentKeysAreAnded) {
  Caller caller;
  caller.uid = 1000;
  const std::string rule = "MatchUser=1000\nMatchPort=443";
  EXPECT_TRUE(matches(rule, caller, request_to("h", "", 443)));
  EXPECT_FALSE(matches(rule, caller, request_to("h", "", 80)));
  caller.uid = 1001;
  EXPECT_FALSE(matches(rule, caller, request_to("h", "", 443)));
}

TEST(PolicyEvaluate, FirstMatchDecidesAndExplanationListsEachRule) {
  const Policy policy = parse_ok(
      "[Rule admins]\nMatchUser=0\nAction=allow\n"
      "[Rule no-80]\nMatchPort=80\nAction=deny\n"
      "[Rule everyone]\nAction=allow\n",
      "50-web.policy");
  Caller caller;
  caller.uid = 1000;
  Decision decision = policy.evaluate(caller, request_to("h", "", 80));
  EXPECT_FALSE(decision.allowed);
  EXPECT_EQ(decision.rule, "no-80");
  EXPECT_EQ(decision.rule_location, "50-web.policy:4");
  EXPECT_EQ(decision.denial_reason, "denied by rule no-80 (50-web.policy:4)");
  ASSERT_GE(decision.explanation.size(), 2u);
  EXPECT_EQ(decision.explanation[0], "rule admins (50-web.policy:1): MatchUser 0 does not match uid 1000");
  EXPECT_EQ(decision.explanation[1], "rule no-80 (50-web.policy:4): matches (MatchPort), Action=deny");

  caller.uid = 0;
  decision = policy.evaluate(caller, request_to("h", "", 80));
  EXPECT_TRUE(decision.allowed);
  EXPECT_EQ(decision.rule, "admins");

  caller.uid = 5;
  decision = policy.evaluate(caller, request_to("h", "", 443));
  EXPECT_TRUE(decision.allowed);
  EXPECT_EQ(decision.rule, "everyone");
  EXPECT_TRUE(contains(decision.explanation[1], "MatchPort 80 does not match port 443"));
}

TEST(PolicyEvaluate, NoMatchIsDenyWithReason) {
  const Policy policy = parse_ok("[Rule web]\nMatchPort=443\nAction=allow\n");
  const Decision decision = policy.evaluate(Caller{}, request_to("h.example", "", 80));
  EXPECT_FALSE(decision.allowed);
  EXPECT_EQ(decision.rule, "");
  EXPECT_TRUE(contains(decision.denial_reason, "no policy rule matches this request")) << decision.denial_reason;
  EXPECT_TRUE(contains(decision.denial_reason, "port 80")) << decision.denial_reason;
  EXPECT_TRUE(contains(decision.explanation.back(), "decision: deny")) << decision.explanation.back();
}

TEST(PolicyEvaluate, MismatchExplanationNamesEveryFailingKey) {
  const Policy policy = parse_ok("[Rule web-clients]\nMatchUser=root\nMatchHost=*.example.com\nAction=allow\n", "f");
  Caller caller;
  caller.uid = 1000;
  const Decision decision = policy.evaluate(caller, request_to("other.org", "", 443));
  EXPECT_EQ(decision.explanation[0],
            "rule web-clients (f:1): MatchUser root does not match uid 1000; MatchHost *.example.com does not "
            "match host other.org");
}

// ---- narrowing (RFC 8922 §1.2): never reorder, never add ----

TEST(PolicyNarrowing, KeepsApplicationOrderAndNeverAdds) {
  const Policy policy = parse_ok("[Rule r]\nProtocols=tcpcrypt tls ikev2\nAction=allow\n");
  Request request = any_request();
  request.protocols = {"ikev2", "wireguard", "tls"};
  Decision decision = policy.evaluate(Caller{}, request);
  ASSERT_TRUE(decision.allowed) << decision.denial_reason;
  EXPECT_EQ(decision.protocols, (std::vector<std::string>{"ikev2", "tls"}));

  request.protocols = {"tls"};
  decision = policy.evaluate(Caller{}, request);
  EXPECT_EQ(decision.protocols, std::vector<std::string>{"tls"});  // tcpcrypt, ikev2 not added
}

TEST(PolicyNarrowing, AbsentProtocolsKeyAllowsWhatWasAskedOnly) {
  const Policy policy = parse_ok("[Rule r]\nAction=allow\n");
  Request request = any_request();
  request.protocols = {"tcpcrypt", "tls", "tls", "quic"};
  const Decision decision = policy.evaluate(Caller{}, request);
  ASSERT_TRUE(decision.allowed);
  EXPECT_EQ(decision.protocols, (std::vector<std::string>{"tcpcrypt", "tls"}));
}

TEST(PolicyNarrowing, EmptyIntersectionIsDeniedNamingBothSides) {
  const Policy policy = parse_ok("[Rule r]\nProtocols=tls\nAction=allow\n", "f");
  Request request = any_request();
  request.protocols = {"ikev2", "wireguard"};
  const Decision decision = policy.evaluate(Caller{}, request);
  EXPECT_FALSE(decision.allowed);
  EXPECT_TRUE(decision.protocols.empty());
  EXPECT_EQ(decision.rule, "r");
  EXPECT_EQ(decision.denial_reason,
            "rule r (f:1) matches, but none of the requested protocols (ikev2 wireguard) is allowed; this rule "
            "allows: tls");

  request.protocols.clear();
  EXPECT_TRUE(contains(policy.evaluate(Caller{}, request).denial_reason, "names no protocol"));
}

// ---- identities, PSKs, export, peer validation, offload ----

const char* const kGrantPolicy = R"(
[Identity web]
Certificate=/c1
PrivateKey=/k1
[Identity api]
Certificate=/c2
PrivateKey=/k2
[Identity other]
Certificate=/c3
PrivateKey=/k3
[PSK p1]
Key=hex:000102030405060708090a0b0c0d0e0f
[PSK p2]
Key=hex:000102030405060708090a0b0c0d0e0f
[Rule grants]
MatchPort=443
Identities=web api
PSKs=p1 p2
Action=allow
[Rule bare]
MatchPort=1
Action=allow
)";

TEST(PolicyGrants, IdentityDefaultRequestedAndForbidden) {
  const Policy policy = parse_ok(kGrantPolicy);
  Request request = any_request();
  EXPECT_EQ(policy.evaluate(Caller{}, request).identity, "web");  // default: the first
  request.identity = "api";
  EXPECT_EQ(policy.evaluate(Caller{}, request).identity, "api");
  request.identity = "other";
  const Decision decision = policy.evaluate(Caller{}, request);
  EXPECT_FALSE(decision.allowed);
  EXPECT_TRUE(contains(decision.denial_reason, "identity 'other' is not allowed (this rule allows: web api)"))
      << decision.denial_reason;
  EXPECT_EQ(decision.identity, "");

  Request to_port_1 = request_to("h", "", 1);
  EXPECT_EQ(policy.evaluate(Caller{}, to_port_1).identity, "");  // the rule grants none
  to_port_1.identity = "web";
  EXPECT_TRUE(contains(policy.evaluate(Caller{}, to_port_1).denial_reason, "this rule allows none"));
}

TEST(PolicyGrants, PskDefaultRequestedAndForbidden) {
  const Policy policy = parse_ok(kGrantPolicy);
  Request request = any_request();
  EXPECT_EQ(policy.evaluate(Caller{}, request).psk, "p1");
  request.psk = "p2";
  EXPECT_EQ(policy.evaluate(Caller{}, request).psk, "p2");
  request.psk = "p3";
  EXPECT_TRUE(contains(policy.evaluate(Caller{}, request).denial_reason, "PSK 'p3' is not allowed"));
}

TEST(PolicyGrants, ExportIsDeniedAtRequestTimeUnlessPermitted) {
  Policy policy = parse_ok("[Rule r]\nAction=allow\n");
  Request request = any_request();
  Decision decision = policy.evaluate(Caller{}, request);
  EXPECT_TRUE(decision.allowed);
  EXPECT_FALSE(decision.export_allowed);
  request.wants_export = true;
  decision = policy.evaluate(Caller{}, request);
  EXPECT_FALSE(decision.allowed);
  EXPECT_TRUE(contains(decision.denial_reason, "policy forbids key export")) << decision.denial_reason;

  policy = parse_ok("[Rule r]\nExport=yes\nAction=allow\n");
  decision = policy.evaluate(Caller{}, request);
  EXPECT_TRUE(decision.allowed);
  EXPECT_TRUE(decision.export_allowed);
  request.wants_export = false;
  EXPECT_FALSE(policy.evaluate(Caller{}, request).export_allowed);  // only when asked for
}

TEST(PolicyGrants, PeerValidationDefaultsExcludeNone) {
  const Policy policy = parse_ok("[Rule r]\nAction=allow\n");
  Request request = any_request();
  for (const char* mode : {"", "system", "pinned", "application"}) {
    request.peer_validation = mode;
    EXPECT_TRUE(policy.evaluate(Caller{}, request).allowed) << mode;
  }
  request.peer_validation = "none";
  Decision decision = policy.evaluate(Caller{}, request);
  EXPECT_FALSE(decision.allowed);
  EXPECT_TRUE(contains(decision.denial_reason,
                       "peer validation 'none' is not permitted (this rule permits: system pinned application)"))
      << decision.denial_reason;
  request.peer_validation = "bogus";
  EXPECT_TRUE(contains(policy.evaluate(Caller{}, request).denial_reason, "unknown peer validation mode"));
}

TEST(PolicyGrants, PeerValidationExplicitList) {
  const Policy policy = parse_ok("[Rule r]\nPeerValidation=pinned none\nAction=allow\n");
  Request request = any_request();
  request.peer_validation = "none";
  Decision decision = policy.evaluate(Caller{}, request);
  EXPECT_TRUE(decision.allowed);
  EXPECT_EQ(decision.peer_validation, (std::vector<std::string>{"pinned", "none"}));
  request.peer_validation = "";  // a client validates with "system" by default
  EXPECT_FALSE(policy.evaluate(Caller{}, request).allowed);
  request.role = "server";  // a server naming no mode asks for no client certificate
  EXPECT_TRUE(policy.evaluate(Caller{}, request).allowed);
}

TEST(PolicyGrants, FallbackAndOffloadRequired) {
  Policy policy = parse_ok("[Rule r]\nFallback=yes\nAction=allow\n");
  Request request = any_request();
  EXPECT_TRUE(policy.evaluate(Caller{}, request).fallback_allowed);
  request.offload = Offload::Required;
  Decision decision = policy.evaluate(Caller{}, request);
  EXPECT_TRUE(decision.allowed);
  EXPECT_FALSE(decision.fallback_allowed);

  policy = parse_ok("[Rule r]\nAction=allow\n");  // Fallback defaults to no
  request.offload = Offload::Preferred;
  EXPECT_FALSE(policy.evaluate(Caller{}, request).fallback_allowed);
}

TEST(PolicyGrants, AlgorithmsAbsentMeansNoRestriction) {
  const Policy policy = parse_ok("[Rule r]\nGroups=X25519\nAction=allow\n");
  const Decision decision = policy.evaluate(Caller{}, any_request());
  EXPECT_EQ(decision.algorithms.size(), 1u);
  EXPECT_EQ(decision.algorithms.at("groups"), std::vector<std::string>{"X25519"});
  EXPECT_EQ(decision.trust_store, "");
}

TEST(PolicyGrants, DenialCollectsEveryProblemAndClearsGrants) {
  const Policy policy = parse_ok(kGrantPolicy);
  Request request = any_request();
  request.protocols = {"quic"};
  request.identity = "other";
  request.wants_export = true;
  const Decision decision = policy.evaluate(Caller{}, request);
  EXPECT_FALSE(decision.allowed);
  EXPECT_TRUE(contains(decision.denial_reason, "quic"));
  EXPECT_TRUE(contains(decision.denial_reason, "identity 'other'"));
  EXPECT_TRUE(contains(decision.denial_reason, "key export"));
  EXPECT_TRUE(decision.protocols.empty());
  EXPECT_EQ(decision.psk, "");
  EXPECT_FALSE(decision.export_allowed);
  EXPECT_FALSE(decision.fallback_allowed);
}

TEST(PolicyEvaluate, MovedFromPolicyDeniesEverything) {
  Policy policy = parse_ok("[Rule r]\nAction=allow\n");
  Policy moved = std::move(policy);
  EXPECT_TRUE(moved.evaluate(Caller{}, any_request()).allowed);
  EXPECT_FALSE(policy.evaluate(Caller{}, any_request()).allowed);  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(policy.identity_names().empty());
}

}  // namespace
}  // namespace tapsec::policy

namespace tapsec::policy {
namespace {

// Before a host name is resolved: could any address be allowed?
TEST(PolicyBeforeResolution, AnAllowRuleWithMatchAddressMayAllow) {
  const Policy policy = parse_ok("[Rule lan]\nMatchAddress=10.0.0.0/8\nAction=allow\n");
  Request request = request_to("db.example.com", "", 5432);
  EXPECT_FALSE(policy.evaluate(Caller{}, request).allowed);
  request.address_pending = true;
  EXPECT_TRUE(policy.evaluate(Caller{}, request).allowed);
}

TEST(PolicyBeforeResolution, ADenyRuleWithMatchAddressIsLeftForLater) {
  const Policy policy =
      parse_ok("[Rule no-lan]\nMatchAddress=10.0.0.0/8\nAction=deny\n\n[Rule rest]\nMatchPort=443\nAction=allow\n");
  Request request = request_to("www.example.com", "", 443);
  request.address_pending = true;
  EXPECT_TRUE(policy.evaluate(Caller{}, request).allowed);
  request.port = 80;  // nothing could allow this, whatever the address
  EXPECT_FALSE(policy.evaluate(Caller{}, request).allowed);
}

TEST(PolicyMatch, AnUnknownPrimaryGroupMatchesOnlyTheRecordedGroups) {
  Caller caller;
  caller.gid = kNoPrimaryGroup;
  caller.supplementary_gids = {100};
  EXPECT_TRUE(matches("MatchGroup=100", caller, any_request()));
}

}  // namespace
}  // namespace tapsec::policy

namespace tapsec::policy {
namespace {

Request operation(const char* name) {
  Request request;
  request.operation = name;
  return request;
}

TEST(PolicyOperations, OnlyRulesThatNameAnOperationGrantIt) {
  const Policy policy = parse_ok(
      "[Rule everyone]\nAction=allow\n\n"
      "[Rule operators]\nMatchGroup=100\nMatchOperation=observe flush-session-cache\nAction=allow\n");
  Caller operator_;
  operator_.uid = 1000;
  operator_.supplementary_gids = {100};
  Caller other;
  other.uid = 1001;
  EXPECT_TRUE(policy.evaluate(operator_, operation("observe")).allowed);
  EXPECT_TRUE(policy.evaluate(operator_, operation("flush-session-cache")).allowed);
  EXPECT_FALSE(policy.evaluate(operator_, operation("manage")).allowed);
  // The broad allow rule grants no operation to anyone.
  EXPECT_FALSE(policy.evaluate(other, operation("observe")).allowed);
  // A rule with MatchOperation grants nothing else.
  Request tls;
  tls.protocols = {"tls"};
  tls.role = "client";
  tls.host = "www.example.com";
  tls.port = 443;
  const Policy only_operations = parse_ok("[Rule operators]\nMatchOperation=observe\nAction=allow\n");
  EXPECT_FALSE(only_operations.evaluate(operator_, tls).allowed);
}

TEST(PolicyOperations, UnknownOperationIsAnError) {
  auto parsed = Policy::parse("[Rule r]\nMatchOperation=spy\nAction=allow\n", "t.policy");
  ASSERT_TRUE(std::holds_alternative<std::vector<Error>>(parsed));
  EXPECT_NE(std::get<std::vector<Error>>(parsed).front().message.find("'spy' is not an operation"), std::string::npos);
}

}  // namespace
}  // namespace tapsec::policy
