// The XFRM installer: message layout (no kernel needed), then what this
// kernel can do with XFRM netlink in a private network namespace (policies,
// SPI allocation, socket bypass, ACQUIRE events, pipelined acknowledgements).
// ESP SAs themselves are proven in the VM (tests/vm/scenarios/kernel-xfrm.sh);
// here, on a kernel without ESP, the refusal must be the clear one.
#include "agent/kernel/xfrm.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/udp.h>
#include <netinet/in.h>
#include <netlink/attr.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "agent/core/unique_fd.h"
#include "agent/kernel/address_monitor.h"
#include "agent/kernel/xfrm_codec.h"

namespace tapsec::kernel::xfrm {
namespace {

using detail::NlMsgPtr;

IpAddress address(const char* text) {
  auto parsed = IpAddress::parse(text);
  EXPECT_TRUE(parsed) << text;
  return parsed.value_or(IpAddress{});
}

TrafficSelector selector(const char* text) {
  auto parsed = TrafficSelector::parse(text);
  EXPECT_TRUE(parsed) << text;
  return parsed.value_or(TrafficSelector{});
}

SaSpec gcm_spec(std::uint32_t spi = 0xc0a80101) {
  SaSpec spec;
  spec.source = address("192.0.2.1");
  spec.destination = address("192.0.2.2");
  spec.spi = spi;
  spec.reqid = 9;
  spec.aead_algorithm = "rfc4106(gcm(aes))";
  spec.encryption_key.assign(20, 0x5a);  // 16-byte key + 4-byte salt
  return spec;
}

SaSpec cbc_spec(std::uint32_t spi = 0xc0a80102) {
  SaSpec spec;
  spec.source = address("192.0.2.1");
  spec.destination = address("192.0.2.2");
  spec.spi = spi;
  spec.encryption_algorithm = "cbc(aes)";
  spec.encryption_key.assign(32, 0x11);
  spec.integrity_algorithm = "hmac(sha256)";
  spec.integrity_key.assign(32, 0x22);
  return spec;
}

const xfrm_usersa_info& sa_info(const NlMsgPtr& message) {
  return *static_cast<const xfrm_usersa_info*>(nlmsg_data(nlmsg_hdr(message.get())));
}

const nlattr* sa_attribute(const NlMsgPtr& message, int type) {
  return nlmsg_find_attr(nlmsg_hdr(message.get()), sizeof(xfrm_usersa_info), type);
}

// ---- Messages -----------------------------------------------------------------

TEST(XfrmCodec, AeadSaCarriesKeyIcvLifetimesAndWipesTheCallersKey) {
  SaSpec spec = gcm_spec();
  spec.lifetime.soft_packets = 5;
  spec.lifetime.hard_add_seconds = 3600;
  auto message = detail::build_add_sa(spec, false);
  ASSERT_TRUE(message) << message.error();
  EXPECT_TRUE(spec.encryption_key.empty());

  EXPECT_EQ(nlmsg_hdr(message->get())->nlmsg_type, XFRM_MSG_NEWSA);
  const xfrm_usersa_info& info = sa_info(message.value());
  EXPECT_EQ(ntohl(info.id.spi), 0xc0a80101u);
  EXPECT_EQ(info.id.proto, IPPROTO_ESP);
  EXPECT_EQ(info.family, AF_INET);
  EXPECT_EQ(info.mode, XFRM_MODE_TUNNEL);
  EXPECT_EQ(info.reqid, 9u);
  EXPECT_EQ(info.replay_window, 32);
  EXPECT_TRUE(info.flags & XFRM_STATE_AF_UNSPEC);
  EXPECT_EQ(info.lft.soft_packet_limit, 5u);
  EXPECT_EQ(info.lft.hard_packet_limit, XFRM_INF);
  EXPECT_EQ(info.lft.soft_byte_limit, XFRM_INF);
  EXPECT_EQ(info.lft.hard_add_expires_seconds, 3600u);

  const nlattr* attribute = sa_attribute(message.value(), XFRMA_ALG_AEAD);
  ASSERT_NE(attribute, nullptr);
  const auto* aead = static_cast<const xfrm_algo_aead*>(nla_data(attribute));
  EXPECT_STREQ(aead->alg_name, "rfc4106(gcm(aes))");
  EXPECT_EQ(aead->alg_key_len, 160u);
  EXPECT_EQ(aead->alg_icv_len, 128u);
  EXPECT_EQ(static_cast<unsigned char>(aead->alg_key[19]), 0x5a);
  EXPECT_EQ(sa_attribute(message.value(), XFRMA_REPLAY_ESN_VAL), nullptr);
  EXPECT_EQ(sa_attribute(message.value(), XFRMA_ENCAP), nullptr);
}

TEST(XfrmCodec, CipherAndHmacGetTheStandardTruncation) {
  SaSpec spec = cbc_spec();
  auto message = detail::build_add_sa(spec, true);
  ASSERT_TRUE(message) << message.error();
  EXPECT_TRUE(spec.integrity_key.empty());
  EXPECT_EQ(nlmsg_hdr(message->get())->nlmsg_type, XFRM_MSG_UPDSA);
  const auto* crypt = static_cast<const xfrm_algo*>(nla_data(sa_attribute(message.value(), XFRMA_ALG_CRYPT)));
  EXPECT_STREQ(crypt->alg_name, "cbc(aes)");
  EXPECT_EQ(crypt->alg_key_len, 256u);
  const auto* auth = static_cast<const xfrm_algo_auth*>(nla_data(sa_attribute(message.value(), XFRMA_ALG_AUTH_TRUNC)));
  EXPECT_STREQ(auth->alg_name, "hmac(sha256)");
  EXPECT_EQ(auth->alg_trunc_len, 128u);
  EXPECT_EQ(auth->alg_key_len, 256u);
}

TEST(XfrmCodec, EsnUsesTheEsnReplayStateSizedFromTheWindow) {
  SaSpec spec = gcm_spec();
  spec.extended_sequence_numbers = true;
  spec.replay_window = 128;
  auto message = detail::build_add_sa(spec, false);
  ASSERT_TRUE(message) << message.error();
  const xfrm_usersa_info& info = sa_info(message.value());
  EXPECT_TRUE(info.flags & XFRM_STATE_ESN);
  EXPECT_EQ(info.replay_window, 0);  // the kernel refuses both
  const nlattr* attribute = sa_attribute(message.value(), XFRMA_REPLAY_ESN_VAL);
  ASSERT_NE(attribute, nullptr);
  const auto* replay = static_cast<const xfrm_replay_state_esn*>(nla_data(attribute));
  EXPECT_EQ(replay->bmp_len, 4u);
  EXPECT_EQ(replay->replay_window, 128u);
  EXPECT_EQ(nla_len(attribute), static_cast<int>(sizeof(xfrm_replay_state_esn) + 4 * sizeof(std::uint32_t)));
}

TEST(XfrmCodec, LargeWindowWithoutEsnStillNeedsTheEsnReplayState) {
  SaSpec spec = gcm_spec();
  spec.replay_window = 1024;
  auto message = detail::build_add_sa(spec, false);
  ASSERT_TRUE(message) << message.error();
  EXPECT_FALSE(sa_info(message.value()).flags & XFRM_STATE_ESN);
  EXPECT_EQ(sa_info(message.value()).replay_window, 0);
  const auto* replay =
      static_cast<const xfrm_replay_state_esn*>(nla_data(sa_attribute(message.value(), XFRMA_REPLAY_ESN_VAL)));
  EXPECT_EQ(replay->bmp_len, 32u);
  EXPECT_EQ(replay->replay_window, 1024u);
}

TEST(XfrmCodec, TransportSaGetsItsSelectorAndEncapsulation) {
  SaSpec spec = gcm_spec();
  spec.mode = Mode::Transport;
  spec.selector_source = selector("10.0.0.1[udp/53]");
  spec.selector_destination = selector("10.0.0.2");
  spec.encapsulation = Encapsulation{4500, 4501};
  auto message = detail::build_add_sa(spec, false);
  ASSERT_TRUE(message) << message.error();
  const xfrm_usersa_info& info = sa_info(message.value());
  EXPECT_EQ(info.mode, XFRM_MODE_TRANSPORT);
  EXPECT_FALSE(info.flags & XFRM_STATE_AF_UNSPEC);
  EXPECT_EQ(info.sel.family, AF_INET);
  EXPECT_EQ(info.sel.prefixlen_s, 32);
  EXPECT_EQ(info.sel.prefixlen_d, 32);
  EXPECT_EQ(info.sel.proto, IPPROTO_UDP);
  EXPECT_EQ(ntohs(info.sel.sport), 53);
  EXPECT_EQ(ntohs(info.sel.sport_mask), 0xffff);
  EXPECT_EQ(info.sel.dport_mask, 0);
  const auto* encapsulation =
      static_cast<const xfrm_encap_tmpl*>(nla_data(sa_attribute(message.value(), XFRMA_ENCAP)));
  EXPECT_EQ(encapsulation->encap_type, UDP_ENCAP_ESPINUDP);
  EXPECT_EQ(ntohs(encapsulation->encap_sport), 4500);
  EXPECT_EQ(ntohs(encapsulation->encap_dport), 4501);
}

TEST(XfrmCodec, RejectsBadSpecsWithTheSaNamed) {
  SaSpec mixed = gcm_spec();
  mixed.destination = address("2001:db8::1");
  auto result = detail::build_add_sa(mixed, false);
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().find("add SA esp spi 0xc0a80101 192.0.2.1→2001:db8::1"), std::string::npos)
      << result.error();
  EXPECT_TRUE(mixed.encryption_key.empty());  // wiped even on failure

  SaSpec window = gcm_spec();
  window.replay_window = 5000;
  result = detail::build_add_sa(window, false);
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().find("replay window 5000"), std::string::npos) << result.error();

  SaSpec nothing = gcm_spec();
  nothing.aead_algorithm.clear();
  EXPECT_FALSE(detail::build_add_sa(nothing, false));

  SaSpec unknown = cbc_spec();
  unknown.integrity_algorithm = "hmac(md5)";
  result = detail::build_add_sa(unknown, false);
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().find("truncation"), std::string::npos) << result.error();

  SaSpec half = gcm_spec();
  half.mode = Mode::Transport;
  half.selector_source = selector("10.0.0.1");
  EXPECT_FALSE(detail::build_add_sa(half, false));
}

TEST(XfrmCodec, SelectorsNeedPrefixesAndExpressiblePorts) {
  auto sel = detail::make_selector(selector("10.1.0.0/16[tcp/8080-8087]"), selector("0.0.0.0/0[tcp/443]"));
  ASSERT_TRUE(sel) << sel.error();
  EXPECT_EQ(sel->prefixlen_s, 16);
  EXPECT_EQ(sel->prefixlen_d, 0);
  EXPECT_EQ(sel->proto, IPPROTO_TCP);
  EXPECT_EQ(ntohs(sel->sport), 8080);
  EXPECT_EQ(ntohs(sel->sport_mask), 0xfff8);
  EXPECT_EQ(ntohs(sel->dport), 443);

  const auto [source, destination] = detail::selector_traffic(sel.value());
  EXPECT_EQ(source.to_string(), "10.1.0.0/16[tcp/8080-8087]");
  EXPECT_EQ(destination.to_string(), "0.0.0.0/0[tcp/443]");

  EXPECT_FALSE(detail::make_selector(selector("10.0.0.1-10.0.0.5"), selector("10.0.1.0/24")));
  EXPECT_FALSE(detail::make_selector(selector("10.0.0.0/24[tcp/1000-1002]"), selector("10.0.1.0/24")));
  EXPECT_FALSE(detail::make_selector(selector("10.0.0.0/24[tcp]"), selector("10.0.1.0/24[udp]")));
  EXPECT_FALSE(detail::make_selector(selector("10.0.0.0/24"), selector("2001:db8::/32")));

  // ICMP type 8 code 0 travels in the source selector's port field.
  TrafficSelector echo = selector("10.0.0.0/24[icmp]");
  echo.start_port = echo.end_port = 8 << 8;
  auto icmp = detail::make_selector(echo, selector("10.0.1.0/24[icmp]"));
  ASSERT_TRUE(icmp) << icmp.error();
  EXPECT_EQ(ntohs(icmp->sport), 8);
  EXPECT_EQ(ntohs(icmp->dport), 0);
  EXPECT_EQ(ntohs(icmp->dport_mask), 0xffff);
}

TEST(XfrmCodec, MoreSpecificSelectorsGetHigherPriority) {
  auto priority = [](const char* source, const char* destination) {
    auto sel = detail::make_selector(selector(source), selector(destination));
    EXPECT_TRUE(sel) << sel.error();
    return sel ? detail::derived_priority(sel.value()) : 0u;
  };
  const auto hosts = priority("10.0.0.1", "10.0.0.2");
  const auto hosts_udp = priority("10.0.0.1[udp]", "10.0.0.2[udp]");
  const auto hosts_port = priority("10.0.0.1[udp]", "10.0.0.2[udp/53]");
  const auto subnets = priority("10.0.0.0/24", "10.0.1.0/24");
  const auto everything = priority("0.0.0.0/0", "0.0.0.0/0");
  EXPECT_LT(hosts_port, hosts_udp);
  EXPECT_LT(hosts_udp, hosts);
  EXPECT_LT(hosts, subnets);
  EXPECT_LT(subnets, everything);
  EXPECT_GT(priority("::1", "::2"), 0u);
}

TEST(XfrmCodec, ReadsAcquireWithReqidFromTheTemplate) {
  NlMsgPtr message(nlmsg_alloc_simple(XFRM_MSG_ACQUIRE, 0));
  xfrm_user_acquire acquire{};
  acquire.id.daddr = detail::to_xfrm_address(address("192.0.2.2"));
  acquire.saddr = detail::to_xfrm_address(address("192.0.2.1"));
  acquire.sel = detail::make_selector(selector("10.0.0.1[udp/40000]"), selector("10.0.0.2[udp/5000]")).value();
  ASSERT_EQ(nlmsg_append(message.get(), &acquire, sizeof acquire, NLMSG_ALIGNTO), 0);
  xfrm_user_tmpl entry{};
  entry.family = AF_INET;
  entry.reqid = 77;
  ASSERT_EQ(nla_put(message.get(), XFRMA_TMPL, sizeof entry, &entry), 0);

  auto event = detail::read_event(nlmsg_hdr(message.get()));
  ASSERT_TRUE(event && event.value()) << event.error();
  const auto* parsed = std::get_if<AcquireEvent>(&*event.value());
  ASSERT_NE(parsed, nullptr);
  EXPECT_EQ(parsed->source.to_string(), "10.0.0.1/32[udp/40000]");
  EXPECT_EQ(parsed->destination.to_string(), "10.0.0.2/32[udp/5000]");
  EXPECT_EQ(parsed->outer_source.to_string(), "192.0.2.1");
  EXPECT_EQ(parsed->outer_destination.to_string(), "192.0.2.2");
  EXPECT_EQ(parsed->reqid, 77u);
}

TEST(XfrmCodec, ReadsExpireAndMappingAndSkipsOthers) {
  NlMsgPtr expire_message(nlmsg_alloc_simple(XFRM_MSG_EXPIRE, 0));
  xfrm_user_expire expire{};
  expire.state.id.daddr = detail::to_xfrm_address(address("2001:db8::2"));
  expire.state.id.spi = htonl(0xc1234567);
  expire.state.family = AF_INET6;
  expire.hard = 1;
  expire.state.curlft.packets = 990;
  expire.state.lft.hard_packet_limit = 1000;
  ASSERT_EQ(nlmsg_append(expire_message.get(), &expire, sizeof expire, NLMSG_ALIGNTO), 0);
  auto event = detail::read_event(nlmsg_hdr(expire_message.get()));
  ASSERT_TRUE(event && event.value());
  const auto& parsed = std::get<ExpireEvent>(*event.value());
  EXPECT_EQ(parsed.destination.to_string(), "2001:db8::2");
  EXPECT_EQ(parsed.spi, 0xc1234567u);
  EXPECT_TRUE(parsed.hard);
  EXPECT_EQ(parsed.packets, 990u);
  EXPECT_EQ(parsed.hard_packet_limit, 1000u);

  NlMsgPtr mapping_message(nlmsg_alloc_simple(XFRM_MSG_MAPPING, 0));
  xfrm_user_mapping mapping{};
  mapping.id.spi = htonl(0xc0000042);
  mapping.id.family = AF_INET;
  mapping.old_saddr = detail::to_xfrm_address(address("198.51.100.1"));
  mapping.new_saddr = detail::to_xfrm_address(address("198.51.100.9"));
  mapping.old_sport = htons(4500);
  mapping.new_sport = htons(61000);
  ASSERT_EQ(nlmsg_append(mapping_message.get(), &mapping, sizeof mapping, NLMSG_ALIGNTO), 0);
  event = detail::read_event(nlmsg_hdr(mapping_message.get()));
  ASSERT_TRUE(event && event.value());
  const auto& moved = std::get<MappingEvent>(*event.value());
  EXPECT_EQ(moved.spi, 0xc0000042u);
  EXPECT_EQ(moved.old_address.to_string(), "198.51.100.1");
  EXPECT_EQ(moved.new_address.to_string(), "198.51.100.9");
  EXPECT_EQ(moved.old_port, 4500);
  EXPECT_EQ(moved.new_port, 61000);

  NlMsgPtr other(nlmsg_alloc_simple(XFRM_MSG_NEWPOLICY, 0));
  event = detail::read_event(nlmsg_hdr(other.get()));
  ASSERT_TRUE(event);
  EXPECT_FALSE(event.value());

  NlMsgPtr truncated(nlmsg_alloc_simple(XFRM_MSG_EXPIRE, 0));
  EXPECT_FALSE(detail::read_event(nlmsg_hdr(truncated.get())));
}

TEST(XfrmCodec, ReadsDumpedSasAndPoliciesWithTheirReqids) {
  NlMsgPtr sa_message(nlmsg_alloc_simple(XFRM_MSG_NEWSA, 0));
  xfrm_usersa_info info{};
  info.id.daddr = detail::to_xfrm_address(address("2001:db8::2"));
  info.id.spi = htonl(0xc0000007);
  info.id.proto = IPPROTO_ESP;
  info.family = AF_INET6;
  info.reqid = kAgentReqidFirst;
  ASSERT_EQ(nlmsg_append(sa_message.get(), &info, sizeof info, NLMSG_ALIGNTO), 0);
  auto sa = detail::read_dumped_sa(nlmsg_hdr(sa_message.get()));
  ASSERT_TRUE(sa && sa.value()) << sa.error();
  EXPECT_EQ(sa.value()->destination.to_string(), "2001:db8::2");
  EXPECT_EQ(sa.value()->spi, 0xc0000007u);
  EXPECT_EQ(sa.value()->reqid, kAgentReqidFirst);

  NlMsgPtr ah_message(nlmsg_alloc_simple(XFRM_MSG_NEWSA, 0));
  info.id.proto = IPPROTO_AH;
  ASSERT_EQ(nlmsg_append(ah_message.get(), &info, sizeof info, NLMSG_ALIGNTO), 0);
  sa = detail::read_dumped_sa(nlmsg_hdr(ah_message.get()));
  ASSERT_TRUE(sa) << sa.error();
  EXPECT_FALSE(sa.value()) << "only ESP SAs are the agent's";

  NlMsgPtr policy_message(nlmsg_alloc_simple(XFRM_MSG_NEWPOLICY, 0));
  xfrm_userpolicy_info policy{};
  policy.index = 0x1234;
  policy.dir = XFRM_POLICY_FWD;
  ASSERT_EQ(nlmsg_append(policy_message.get(), &policy, sizeof policy, NLMSG_ALIGNTO), 0);
  std::array<xfrm_user_tmpl, 2> templates{};
  templates[0].reqid = 3;
  templates[1].reqid = kAgentReqidLast;
  ASSERT_EQ(nla_put(policy_message.get(), XFRMA_TMPL, sizeof templates, templates.data()), 0);
  auto dumped = detail::read_dumped_policy(nlmsg_hdr(policy_message.get()));
  ASSERT_TRUE(dumped) << dumped.error();
  EXPECT_EQ(dumped->index, 0x1234u);
  EXPECT_EQ(dumped->direction, XFRM_POLICY_FWD);
  EXPECT_EQ(dumped->reqids, (std::vector<std::uint32_t>{3, kAgentReqidLast}));

  NlMsgPtr truncated(nlmsg_alloc_simple(XFRM_MSG_NEWPOLICY, 0));
  EXPECT_FALSE(detail::read_dumped_policy(nlmsg_hdr(truncated.get())));
  EXPECT_FALSE(detail::read_dumped_sa(nlmsg_hdr(policy_message.get()))) << "a policy is not an SA";
  EXPECT_FALSE(is_agent_reqid(0));
  EXPECT_FALSE(is_agent_reqid(kAgentReqidFirst - 1));
  EXPECT_FALSE(is_agent_reqid(kAgentReqidLast + 1));
}

TEST(XfrmCodec, MovedSaKeepsKeysAndReplayStateAndTakesNewAddresses) {
  SaSpec spec = gcm_spec();
  spec.mode = Mode::Transport;
  spec.selector_source = selector("192.0.2.1");
  spec.selector_destination = selector("192.0.2.2");
  spec.extended_sequence_numbers = true;
  spec.replay_window = 64;
  spec.encapsulation = Encapsulation{};
  auto original = detail::build_add_sa(spec, false);
  ASSERT_TRUE(original) << original.error();

  auto moved = detail::build_moved_sa(nlmsg_hdr(original->get()), address("198.51.100.7"), address("192.0.2.2"),
                                      std::nullopt);
  ASSERT_TRUE(moved) << moved.error();
  const xfrm_usersa_info& info = sa_info(moved.value());
  EXPECT_EQ(detail::from_xfrm_address(info.saddr, AF_INET).to_string(), "198.51.100.7");
  EXPECT_EQ(detail::from_xfrm_address(info.sel.saddr, AF_INET).to_string(), "198.51.100.7");
  EXPECT_EQ(ntohl(info.id.spi), 0xc0a80101u);
  const nlattr* aead = sa_attribute(moved.value(), XFRMA_ALG_AEAD);
  ASSERT_NE(aead, nullptr);
  EXPECT_EQ(static_cast<const xfrm_algo_aead*>(nla_data(aead))->alg_key_len, 160u);
  EXPECT_NE(sa_attribute(moved.value(), XFRMA_REPLAY_ESN_VAL), nullptr);
  EXPECT_EQ(sa_attribute(moved.value(), XFRMA_ENCAP), nullptr);  // encapsulation dropped
}

TEST(XfrmCodec, FailureTextsNameTheCause) {
  const std::string what = "add SA esp spi 0xc0a80101 192.0.2.1→192.0.2.2";
  EXPECT_EQ(detail::explain_failure(what, detail::Subject::Sa, EPROTONOSUPPORT, "Requested type not found", AF_INET),
            what + ": kernel lacks ESP: load module esp4: EPROTONOSUPPORT (Protocol not supported) "
                   "(kernel: Requested type not found)");
  EXPECT_NE(detail::explain_failure(what, detail::Subject::Sa, ENOPROTOOPT, {}, AF_INET6).find("load module esp6"),
            std::string::npos);
  EXPECT_NE(detail::explain_failure(what, detail::Subject::Sa, ENOSYS, {}, AF_INET, "rfc4106(gcm(aes))")
                .find("kernel lacks the algorithm rfc4106(gcm(aes))"),
            std::string::npos);
  EXPECT_NE(detail::explain_failure(what, detail::Subject::Sa, EEXIST, {}).find("already exists: EEXIST"),
            std::string::npos);
  EXPECT_NE(detail::explain_failure("delete policy", detail::Subject::Policy, ENOENT, {}).find("no such policy"),
            std::string::npos);
}

// ---- The kernel, in a private network namespace ---------------------------------

// Every test below runs in a network namespace of its own, made before the
// first test, so the host's XFRM state is never touched. Two veth ends carry
// 10.0.0.1/24 (packets to 10.0.0.2 leave through it; loopback traffic skips
// XFRM).
class PrivateNamespace : public ::testing::Environment {
 public:
  static inline bool ready = false;
  static inline std::string why_not;

  void SetUp() override {
    if (::geteuid() != 0) {
      why_not = "needs root (CAP_NET_ADMIN) for a private network namespace";
    } else if (::unshare(CLONE_NEWNET) != 0) {
      why_not = "unshare(CLONE_NEWNET) failed: " + describe_errno(errno);
    } else if (std::system("ip link set lo up && ip link add xfrmt0 type veth peer name xfrmt1 && "
                           "ip addr add 10.0.0.1/24 dev xfrmt0 && ip link set xfrmt0 up && "
                           "ip link set xfrmt1 up") != 0) {
      why_not = "cannot set up veth in the private namespace (iproute2 and veth needed)";
    } else {
      ready = true;
    }
    if (!ready) std::fprintf(stderr, "\n*** XFRM kernel tests SKIPPED: %s ***\n\n", why_not.c_str());
  }
};
const auto* const kNamespace = ::testing::AddGlobalTestEnvironment(new PrivateNamespace);

std::string run(const std::string& command) {
  std::string output;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    std::array<char, 512> chunk;
    while (std::fgets(chunk.data(), chunk.size(), pipe)) output += chunk.data();
    ::pclose(pipe);
  }
  return output;
}

class XfrmKernel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!PrivateNamespace::ready) GTEST_SKIP() << "XFRM kernel tests skipped: " << PrivateNamespace::why_not;
    auto opened = XfrmSocket::open();
    ASSERT_TRUE(opened) << opened.error();
    socket_.emplace(std::move(opened.value()));
  }
  void TearDown() override {
    if (PrivateNamespace::ready) std::system("ip xfrm state flush; ip xfrm policy flush");
  }

  // ESP SAs: true when this kernel installs them; otherwise checks that the
  // refusal is the clear one.
  bool kernel_has_esp() {
    auto result = socket_->add_sa(cbc_spec(0x1000));
    if (result) {
      EXPECT_TRUE(socket_->delete_sa(address("192.0.2.2"), 0x1000));
      return true;
    }
    EXPECT_EQ(result.error_number(), EPROTONOSUPPORT) << result.error();
    EXPECT_NE(result.error().find("add SA esp spi 0x00001000 192.0.2.1→192.0.2.2: kernel lacks ESP: load module esp4"),
              std::string::npos)
        << result.error();
    return false;
  }

  std::optional<XfrmSocket> socket_;
};

PolicySpec tunnel_policy() {
  PolicySpec spec;
  spec.source = selector("10.0.0.0/24");
  spec.destination = selector("10.1.0.0/16");
  spec.direction = Direction::Out;
  spec.mode = Mode::Tunnel;
  spec.template_source = address("192.0.2.1");
  spec.template_destination = address("192.0.2.2");
  spec.reqid = 42;
  return spec;
}

TEST_F(XfrmKernel, PolicyAddUpdateDelete) {
  PolicySpec spec = tunnel_policy();
  ASSERT_TRUE(socket_->add_policy(spec)) << "first add";
  std::string listing = run("ip xfrm policy list dir out");
  EXPECT_NE(listing.find("src 10.0.0.0/24 dst 10.1.0.0/16"), std::string::npos) << listing;
  EXPECT_NE(listing.find("tmpl src 192.0.2.1 dst 192.0.2.2"), std::string::npos) << listing;
  EXPECT_NE(listing.find("reqid 42 mode tunnel"), std::string::npos) << listing;
  auto derived = detail::make_selector(spec.source, spec.destination);
  EXPECT_NE(listing.find("priority " + std::to_string(detail::derived_priority(derived.value()))), std::string::npos)
      << listing;

  auto again = socket_->add_policy(spec);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error_number(), EEXIST);
  EXPECT_NE(again.error().find("add policy out 10.0.0.0/24→10.1.0.0/16: a policy with these selectors and direction "
                               "already exists: EEXIST"),
            std::string::npos)
      << again.error();

  spec.priority = 1234;
  spec.reqid = 43;
  ASSERT_TRUE(socket_->add_policy(spec, true));
  listing = run("ip xfrm policy list dir out");
  EXPECT_NE(listing.find("priority 1234"), std::string::npos) << listing;
  EXPECT_NE(listing.find("reqid 43"), std::string::npos) << listing;

  ASSERT_TRUE(socket_->delete_policy(spec.source, spec.destination, Direction::Out));
  EXPECT_EQ(run("ip xfrm policy list dir out"), "");
  auto missing = socket_->delete_policy(spec.source, spec.destination, Direction::Out);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error_number(), ENOENT);
  EXPECT_NE(missing.error().find("delete policy out 10.0.0.0/24→10.1.0.0/16: no such policy"), std::string::npos)
      << missing.error();
}

TEST_F(XfrmKernel, TransportOptionalAndBlockPolicies) {
  PolicySpec inbound;
  inbound.source = selector("10.0.0.2[tcp]");
  inbound.destination = selector("10.0.0.1[tcp/22]");
  inbound.direction = Direction::In;
  inbound.mode = Mode::Transport;
  inbound.reqid = 5;
  inbound.optional_template = true;
  ASSERT_TRUE(socket_->add_policy(inbound));
  std::string listing = run("ip xfrm policy list dir in");
  EXPECT_NE(listing.find("proto tcp dport 22"), std::string::npos) << listing;
  EXPECT_NE(listing.find("mode transport"), std::string::npos) << listing;
  EXPECT_NE(listing.find("level use"), std::string::npos) << listing;

  PolicySpec block;
  block.source = selector("0.0.0.0/0");
  block.destination = selector("203.0.113.0/24");
  block.direction = Direction::Forward;
  block.block = true;
  ASSERT_TRUE(socket_->add_policy(block));
  listing = run("ip xfrm policy list dir fwd");
  EXPECT_NE(listing.find("action block"), std::string::npos) << listing;
  EXPECT_EQ(listing.find("tmpl"), std::string::npos) << listing;

  PolicySpec ranged = inbound;
  ranged.source = selector("10.0.0.1-10.0.0.3");
  auto refused = socket_->add_policy(ranged);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().find("is not an address prefix"), std::string::npos) << refused.error();
}

TEST_F(XfrmKernel, AllocatesDistinctSpisAndFillsThemWhenEspExists) {
  const IpAddress peer = address("192.0.2.2"), local = address("192.0.2.1");
  auto first = socket_->allocate_spi(peer, local, 100);
  ASSERT_TRUE(first) << first.error();
  auto second = socket_->allocate_spi(peer, local, 101);
  ASSERT_TRUE(second) << second.error();
  EXPECT_NE(first.value(), second.value());
  for (std::uint32_t spi : {first.value(), second.value()}) {
    EXPECT_GE(spi, 0xc0000000u);
    EXPECT_LE(spi, 0xcfffffffu);
  }
  char spi_text[16];
  std::snprintf(spi_text, sizeof spi_text, "0x%08x", first.value());
  EXPECT_NE(run("ip xfrm state").find(spi_text), std::string::npos);

  SaSpec inbound = cbc_spec(first.value());
  inbound.source = peer;
  inbound.destination = local;
  inbound.reqid = 100;
  auto filled = socket_->add_sa(inbound, true);
  if (!filled) {
    EXPECT_EQ(filled.error_number(), EPROTONOSUPPORT) << filled.error();
    EXPECT_NE(filled.error().find("kernel lacks ESP: load module esp4"), std::string::npos) << filled.error();
    GTEST_SKIP() << "this kernel has no ESP: filling the allocated SPI is proven in the VM (" << filled.error()
                 << ")";
  }
  auto counters = socket_->query_sa(local, first.value());
  ASSERT_TRUE(counters) << counters.error();
  EXPECT_EQ(counters->packets, 0u);
  EXPECT_GT(counters->add_time_seconds, 0u);
  ASSERT_TRUE(socket_->delete_sa(local, first.value()));
}

TEST_F(XfrmKernel, EspSaRefusalIsClearOrTheSaWorks) {
  auto result = socket_->add_sa(gcm_spec());
  if (!result) {
    // Without ESP, AES-GCM fails at the algorithm or at the protocol.
    EXPECT_TRUE(result.error_number() == ENOSYS || result.error_number() == EPROTONOSUPPORT) << result.error();
    EXPECT_NE(result.error().find("add SA esp spi 0xc0a80101 192.0.2.1→192.0.2.2: kernel lacks "), std::string::npos)
        << result.error();
    if (!kernel_has_esp()) GTEST_SKIP() << "this kernel has no ESP; refusal checked: " << result.error();
    FAIL() << "ESP exists but AES-GCM was refused: " << result.error();
  }
  auto duplicate = socket_->add_sa(gcm_spec());
  ASSERT_FALSE(duplicate);
  EXPECT_EQ(duplicate.error_number(), EEXIST) << duplicate.error();
  auto counters = socket_->query_sa(address("192.0.2.2"), 0xc0a80101);
  ASSERT_TRUE(counters) << counters.error();
  ASSERT_TRUE(socket_->update_sa_addresses(address("192.0.2.2"), 0xc0a80101, address("192.0.2.1"),
                                           address("192.0.2.3"), Encapsulation{}));
  EXPECT_FALSE(socket_->query_sa(address("192.0.2.2"), 0xc0a80101));
  ASSERT_TRUE(socket_->delete_sa(address("192.0.2.3"), 0xc0a80101));
}

TEST_F(XfrmKernel, MissingSaIsNamed) {
  auto missing = socket_->query_sa(address("192.0.2.9"), 0xc0000001);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error_number(), ESRCH) << missing.error();
  EXPECT_NE(missing.error().find("query SA esp spi 0xc0000001 to 192.0.2.9: no such SA: ESRCH"), std::string::npos)
      << missing.error();
  auto gone = socket_->delete_sa(address("192.0.2.9"), 0xc0000001);
  ASSERT_FALSE(gone);
  EXPECT_NE(gone.error().find("delete SA esp spi 0xc0000001 to 192.0.2.9: no such SA"), std::string::npos)
      << gone.error();
}

TEST_F(XfrmKernel, RemovesWhatAnEarlierAgentLeftAndNothingElse) {
  const IpAddress peer = address("192.0.2.2"), local = address("192.0.2.1");
  // An earlier agent's: a tunnel's policies in both directions, enough more
  // that the dump spans several reads, and SAs (larval ones where the
  // kernel has no ESP).
  PolicySpec out = tunnel_policy();
  out.reqid = kAgentReqidFirst + 7;
  PolicySpec in = out;
  std::swap(in.source, in.destination);
  std::swap(in.template_source, in.template_destination);
  in.direction = Direction::In;
  ASSERT_TRUE(socket_->add_policy(out));
  ASSERT_TRUE(socket_->add_policy(in));
  constexpr int kMore = 400;
  for (int index = 0; index < kMore; ++index) {
    PolicySpec more = out;
    more.source = selector(("10.8." + std::to_string(index / 200) + "." + std::to_string(index % 200)).c_str());
    more.reqid = kAgentReqidLast - static_cast<std::uint32_t>(index);
    ASSERT_TRUE(socket_->add_policy(more)) << index;
  }
  auto agent_spi = socket_->allocate_spi(peer, local, kAgentReqidFirst + 7);
  ASSERT_TRUE(agent_spi) << agent_spi.error();
  std::size_t agent_sas = 1;
  if (kernel_has_esp()) {
    SaSpec full = cbc_spec(0x3000);
    full.reqid = kAgentReqidFirst;
    ASSERT_TRUE(socket_->add_sa(full));
    ++agent_sas;
  }
  // Another IKE daemon's, which must stay.
  PolicySpec other = tunnel_policy();
  other.source = selector("10.5.0.0/24");
  other.reqid = 42;
  ASSERT_TRUE(socket_->add_policy(other));
  auto other_spi = socket_->allocate_spi(peer, local, 42);
  ASSERT_TRUE(other_spi) << other_spi.error();

  auto removed = socket_->remove_leftovers();
  ASSERT_TRUE(removed) << removed.error();
  EXPECT_EQ(removed->policies, 2u + kMore);
  EXPECT_EQ(removed->sas, agent_sas);
  const std::string policies = run("ip xfrm policy");
  EXPECT_NE(policies.find("src 10.5.0.0/24"), std::string::npos) << policies;
  EXPECT_EQ(policies.find("src 10.0.0.0/24"), std::string::npos) << policies;
  EXPECT_EQ(policies.find("src 10.1.0.0/16"), std::string::npos) << policies;
  EXPECT_EQ(policies.find("10.8."), std::string::npos) << policies;
  char spi_text[16];
  const std::string states = run("ip xfrm state");
  std::snprintf(spi_text, sizeof spi_text, "0x%08x", other_spi.value());
  EXPECT_NE(states.find(spi_text), std::string::npos) << states;
  std::snprintf(spi_text, sizeof spi_text, "0x%08x", agent_spi.value());
  EXPECT_EQ(states.find(spi_text), std::string::npos) << states;
  EXPECT_EQ(states.find("0x00003000"), std::string::npos) << states;

  auto again = socket_->remove_leftovers();
  ASSERT_TRUE(again) << again.error();
  EXPECT_EQ(again->policies + again->sas, 0u);
}

TEST_F(XfrmKernel, PipelinedAddMatchesEveryAcknowledgement) {
  // Half the requests are valid SAs, a few cannot even be built; every one
  // must be accounted for by its own acknowledgement.
  constexpr std::uint32_t kCount = 3000;
  std::vector<SaSpec> specs;
  for (std::uint32_t index = 0; index < kCount; ++index) specs.push_back(cbc_spec(0x2000 + index));
  specs[10].spi = 0;  // refused before sending
  auto result = socket_->add_sas(std::move(specs));
  if (result) {
    FAIL() << "SPI 0 must be refused";
  }
  const bool esp = kernel_has_esp();
  if (esp) {
    EXPECT_NE(result.error().find("1 of 3000 SAs failed; first: add SA esp spi 0x00000000"), std::string::npos)
        << result.error();
    auto counters = socket_->query_sa(address("192.0.2.2"), 0x2000 + kCount - 1);
    EXPECT_TRUE(counters) << counters.error();
  } else {
    EXPECT_NE(result.error().find("3000 of 3000 SAs failed; first: add SA esp spi 0x00002000 192.0.2.1→192.0.2.2: "
                                  "kernel lacks ESP"),
              std::string::npos)
        << result.error();
  }
  // The socket is still in step: a later request gets its own answer.
  auto missing = socket_->query_sa(address("192.0.2.9"), 0xc0000001);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error_number(), ESRCH) << missing.error();
}

core::UniqueFd udp_socket() { return core::UniqueFd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)); }

int send_probe(int fd, std::uint16_t port) {
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(port);
  ::inet_pton(AF_INET, "10.0.0.2", &peer.sin_addr);
  const char byte = 'x';
  return ::sendto(fd, &byte, 1, 0, reinterpret_cast<sockaddr*>(&peer), sizeof peer) == 1 ? 0 : errno;
}

TEST_F(XfrmKernel, BypassSocketEscapesABlockPolicy) {
  PolicySpec block;
  block.source = selector("10.0.0.1");
  block.destination = selector("10.0.0.2");
  block.direction = Direction::Out;
  block.block = true;
  ASSERT_TRUE(socket_->add_policy(block));

  auto plain = udp_socket();
  EXPECT_EQ(send_probe(plain.get(), 9), EPERM) << "the block policy must stop a normal socket";

  auto bypassing = udp_socket();
  auto bypass = bypass_socket_policy(bypassing.get(), AF_INET);
  ASSERT_TRUE(bypass) << bypass.error();
  EXPECT_EQ(send_probe(bypassing.get(), 9), 0) << "the bypass socket must get through";

  auto wrong = bypass_socket_policy(bypassing.get(), AF_UNIX);
  EXPECT_FALSE(wrong);
}

TEST_F(XfrmKernel, EspInUdpOnAUdpSocketOnly) {
  auto udp = udp_socket();
  auto enabled = enable_esp_in_udp(udp.get());
  EXPECT_TRUE(enabled) << enabled.error();
  core::UniqueFd tcp(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  auto refused = enable_esp_in_udp(tcp.get());
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().find("enable ESP-in-UDP on socket"), std::string::npos) << refused.error();
}

TEST_F(XfrmKernel, AcquireArrivesForATrapPolicy) {
  auto events = XfrmEvents::open();
  ASSERT_TRUE(events) << events.error();
  auto nothing = events->read();
  ASSERT_TRUE(nothing) << nothing.error();
  EXPECT_TRUE(nothing->empty());

  PolicySpec trap;
  trap.source = selector("10.0.0.1");
  trap.destination = selector("10.0.0.2[udp/5000]");
  trap.direction = Direction::Out;
  trap.mode = Mode::Tunnel;
  trap.template_source = address("192.0.2.1");
  trap.template_destination = address("192.0.2.2");
  trap.reqid = 7;
  ASSERT_TRUE(socket_->add_policy(trap));

  auto sender = udp_socket();
  send_probe(sender.get(), 5000);  // dropped (no SA yet); only the ACQUIRE matters

  std::vector<Event> received;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (received.empty() && std::chrono::steady_clock::now() < deadline) {
    pollfd waiting{events->fd(), POLLIN, 0};
    ::poll(&waiting, 1, 200);
    auto batch = events->read();
    ASSERT_TRUE(batch) << batch.error();
    received.insert(received.end(), batch->begin(), batch->end());
  }
  ASSERT_EQ(received.size(), 1u);
  const auto* acquire = std::get_if<AcquireEvent>(&received.front());
  ASSERT_NE(acquire, nullptr);
  EXPECT_EQ(acquire->source.start.to_string(), "10.0.0.1");
  EXPECT_EQ(acquire->source.end.to_string(), "10.0.0.1");
  EXPECT_EQ(acquire->source.ip_protocol, IPPROTO_UDP);
  EXPECT_EQ(acquire->source.start_port, acquire->source.end_port) << "the sending port, exactly";
  EXPECT_NE(acquire->source.start_port, 0);
  EXPECT_EQ(acquire->destination.to_string(), "10.0.0.2/32[udp/5000]");
  EXPECT_EQ(acquire->outer_source.to_string(), "192.0.2.1");
  EXPECT_EQ(acquire->outer_destination.to_string(), "192.0.2.2");
  EXPECT_EQ(acquire->reqid, 7u);
}

// The address monitor (used to move IKE SAs with MOBIKE) lives with the
// other tests that need a private network namespace.
TEST(AddressMonitor, ReportsAddressAndRouteChangesAndNothingElse) {
  if (!PrivateNamespace::ready) GTEST_SKIP() << PrivateNamespace::why_not;
  auto monitor = AddressMonitor::open();
  ASSERT_TRUE(monitor) << monitor.error();
  EXPECT_FALSE(monitor->drain()) << "nothing changed yet";

  auto changed_within = [&](int ms) {
    pollfd p{monitor->fd(), POLLIN, 0};
    return ::poll(&p, 1, ms) == 1 && monitor->drain();
  };
  ASSERT_EQ(std::system("ip addr add 10.0.0.9/24 dev xfrmt0"), 0);
  EXPECT_TRUE(changed_within(2000)) << "adding an address went unnoticed";
  ASSERT_EQ(std::system("ip route add 198.51.100.0/24 via 10.0.0.2"), 0);
  EXPECT_TRUE(changed_within(2000)) << "adding a route went unnoticed";
  ASSERT_EQ(std::system("ip addr del 10.0.0.9/24 dev xfrmt0"), 0);
  EXPECT_TRUE(changed_within(2000)) << "removing an address went unnoticed";
  EXPECT_FALSE(changed_within(100)) << "a change reported twice";
}

}  // namespace
}  // namespace tapsec::kernel::xfrm
