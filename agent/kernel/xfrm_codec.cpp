#include "agent/kernel/xfrm_codec.h"

#include <arpa/inet.h>
#include <linux/udp.h>
#include <netinet/in.h>
#include <netlink/addr.h>
#include <netlink/attr.h>
#include <netlink/xfrm/lifetime.h>
#include <netlink/xfrm/selector.h>
#include <netlink/xfrm/sp.h>
#include <netlink/xfrm/template.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace tapsec::kernel::xfrm::detail {
namespace {

constexpr std::uint64_t kUnlimited = XFRM_INF;
// The kernel keeps at most XFRMA_REPLAY_ESN_MAX bytes of replay bitmap.
constexpr std::uint32_t kMaxReplayWindow = XFRMA_REPLAY_ESN_MAX;
// Windows above this need the ESN replay state even without ESN.
constexpr std::uint32_t kLegacyReplayWindow = 32;
constexpr std::size_t kAlgorithmNameSize = sizeof(xfrm_algo{}.alg_name);

// libnl objects, each released by its own put/free.
struct NlAddrFree {
  void operator()(nl_addr* address) const { nl_addr_put(address); }
};
struct SelectorFree {
  void operator()(xfrmnl_sel* selector) const { xfrmnl_sel_put(selector); }
};
struct PolicyFree {
  void operator()(xfrmnl_sp* policy) const { xfrmnl_sp_put(policy); }
};
struct TemplateFree {
  void operator()(xfrmnl_user_tmpl* entry) const { xfrmnl_user_tmpl_free(entry); }
};
struct LifetimeFree {
  void operator()(xfrmnl_ltime_cfg* lifetime) const { xfrmnl_ltime_cfg_put(lifetime); }
};
using NlAddrPtr = std::unique_ptr<nl_addr, NlAddrFree>;
using SelectorPtr = std::unique_ptr<xfrmnl_sel, SelectorFree>;
using PolicyPtr = std::unique_ptr<xfrmnl_sp, PolicyFree>;
using TemplatePtr = std::unique_ptr<xfrmnl_user_tmpl, TemplateFree>;
using LifetimePtr = std::unique_ptr<xfrmnl_ltime_cfg, LifetimeFree>;

bool valid_family(int family) { return family == AF_INET || family == AF_INET6; }

std::string hex32(std::uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", value);
  return text;
}

const char* direction_name(Direction direction) {
  switch (direction) {
    case Direction::In: return "in";
    case Direction::Out: return "out";
    case Direction::Forward: return "fwd";
  }
  return "?";
}

std::uint8_t kernel_direction(Direction direction) {
  switch (direction) {
    case Direction::In: return XFRM_POLICY_IN;
    case Direction::Out: return XFRM_POLICY_OUT;
    case Direction::Forward: return XFRM_POLICY_FWD;
  }
  return XFRM_POLICY_OUT;
}

std::uint8_t kernel_mode(Mode mode) { return mode == Mode::Tunnel ? XFRM_MODE_TUNNEL : XFRM_MODE_TRANSPORT; }

std::uint64_t limit_or_unlimited(std::uint64_t value) { return value == 0 ? kUnlimited : value; }

NlMsgPtr new_message(std::uint16_t type, std::size_t payload_capacity, int flags = 0) {
  NlMsgPtr message(nlmsg_alloc_size(NLMSG_HDRLEN + payload_capacity + 64));
  if (!message) return message;
  if (!nlmsg_put(message.get(), 0, 0, type, 0, flags)) message.reset();
  return message;
}

Result<NlMsgPtr> no_memory(const char* what) {
  return Result<NlMsgPtr>::failure(std::string("cannot build the netlink request for ") + what +
                                       " (out of memory or message too large)",
                                   ENOMEM);
}

// A traffic selector's port range as the kernel's port + mask.
std::optional<std::pair<std::uint16_t, std::uint16_t>> port_and_mask(std::uint16_t start, std::uint16_t end) {
  if (start == 0 && end == 65535) return std::pair<std::uint16_t, std::uint16_t>{0, 0};
  if (start == end) return std::pair<std::uint16_t, std::uint16_t>{start, 0xffff};
  if (start > end) return std::nullopt;
  const std::uint32_t size = std::uint32_t{end} - start + 1;
  if (!std::has_single_bit(size) || start % size != 0) return std::nullopt;
  return std::pair<std::uint16_t, std::uint16_t>{start, static_cast<std::uint16_t>(~(size - 1))};
}

TrafficSelector traffic_from(const xfrm_address_t& address, std::uint8_t prefix, int family, std::uint16_t port,
                             std::uint16_t mask, std::uint8_t protocol) {
  TrafficSelector selector;
  selector.start = from_xfrm_address(address, family);
  selector.end = selector.start;
  const std::size_t bits = selector.start.size() * 8;
  for (std::size_t bit = 0; bit < bits; ++bit) {
    const std::uint8_t flag = static_cast<std::uint8_t>(0x80u >> (bit % 8));
    if (bit < prefix) continue;
    selector.start.bytes[bit / 8] &= static_cast<std::uint8_t>(~flag);
    selector.end.bytes[bit / 8] |= flag;
  }
  selector.ip_protocol = protocol;
  const std::uint16_t host_port = ntohs(port), host_mask = ntohs(mask);
  if (host_mask == 0) {
    selector.start_port = 0;
    selector.end_port = 65535;
  } else {
    selector.start_port = host_port & host_mask;
    selector.end_port = static_cast<std::uint16_t>(selector.start_port | static_cast<std::uint16_t>(~host_mask));
  }
  return selector;
}

void put_lifetime(xfrm_lifetime_cfg& out, const Lifetime& lifetime) {
  out.soft_byte_limit = limit_or_unlimited(lifetime.soft_bytes);
  out.hard_byte_limit = limit_or_unlimited(lifetime.hard_bytes);
  out.soft_packet_limit = limit_or_unlimited(lifetime.soft_packets);
  out.hard_packet_limit = limit_or_unlimited(lifetime.hard_packets);
  out.soft_add_expires_seconds = lifetime.soft_add_seconds;
  out.hard_add_expires_seconds = lifetime.hard_add_seconds;
}

std::optional<std::uint32_t> default_truncation(const std::string& integrity) {
  if (integrity == "hmac(sha1)") return 96;
  if (integrity == "hmac(sha256)") return 128;
  if (integrity == "hmac(sha384)") return 192;
  if (integrity == "hmac(sha512)") return 256;
  return std::nullopt;
}

template <typename Header>
bool payload_fits(const nlmsghdr* message) {
  return message && message->nlmsg_len >= NLMSG_LENGTH(sizeof(Header));
}

}  // namespace

void NlMsgFree::operator()(nl_msg* message) const {
  if (!message) return;
  if (nlmsghdr* header = nlmsg_hdr(message)) OPENSSL_cleanse(header, header->nlmsg_len);
  nlmsg_free(message);
}

WipedBytes::WipedBytes(const void* data, std::size_t size) : bytes_(size) {
  if (size) std::memcpy(bytes_.data(), data, size);
}

WipedBytes& WipedBytes::operator=(WipedBytes&& other) noexcept {
  if (this != &other) {
    wipe();
    bytes_ = std::move(other.bytes_);
  }
  return *this;
}

void WipedBytes::wipe() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
}

void wipe_key(std::vector<std::uint8_t>& key) {
  if (!key.empty()) OPENSSL_cleanse(key.data(), key.size());
  key.clear();
}

xfrm_address_t to_xfrm_address(const IpAddress& address) {
  xfrm_address_t out{};
  std::memcpy(&out, address.bytes.data(), address.family == AF_INET6 ? 16 : 4);
  return out;
}

IpAddress from_xfrm_address(const xfrm_address_t& address, int family) {
  IpAddress out = IpAddress::any(family == AF_INET6 ? AF_INET6 : AF_INET);
  std::memcpy(out.bytes.data(), &address, out.size());
  return out;
}

std::string describe_sa(std::string_view operation, std::uint32_t spi, const IpAddress* source,
                        const IpAddress& destination) {
  std::string text(operation);
  text += " SA esp spi " + hex32(spi) + " ";
  if (source) {
    text += source->to_string() + "→" + destination.to_string();
  } else {
    text += "to " + destination.to_string();
  }
  return text;
}

std::string describe_policy(std::string_view operation, const TrafficSelector& source,
                            const TrafficSelector& destination, Direction direction) {
  std::string text(operation);
  text += " policy ";
  text += direction_name(direction);
  text += ' ';
  text += source.to_string();
  text += "→";
  text += destination.to_string();
  return text;
}

std::string explain_failure(const std::string& what, Subject subject, int error_number,
                            std::string_view kernel_message, int family, std::string_view algorithms) {
  const char* esp_module = family == AF_INET6 ? "esp6" : "esp4";
  std::string reason;
  switch (error_number) {
    case EPROTONOSUPPORT:
    case ENOPROTOOPT:
      if (subject == Subject::Sa) reason = std::string("kernel lacks ESP: load module ") + esp_module;
      break;
    case ENOSYS:
      if (subject == Subject::Sa) {
        reason = "kernel lacks the algorithm";
        if (!algorithms.empty()) {
          reason += ' ';
          reason += algorithms;
        }
        reason += " (load its crypto modules, e.g. gcm, chacha20poly1305, aesni_intel)";
      }
      break;
    case EEXIST:
      reason = subject == Subject::Policy ? "a policy with these selectors and direction already exists"
                                          : "an SA with this SPI and destination already exists";
      break;
    case ENOENT:  // policies
    case ESRCH:   // SA lookups (get, delete, update)
      reason = subject == Subject::Policy ? "no such policy" : "no such SA";
      break;
    case EPERM:
      reason = "not permitted: needs CAP_NET_ADMIN";
      break;
    case EINVAL:
      reason = "the kernel rejected the parameters";
      break;
    case ENOBUFS:
      reason = "netlink acknowledgements were lost (receive buffer overrun)";
      break;
    default:
      break;
  }
  std::string text = what + ": ";
  if (!reason.empty()) text += reason + ": ";
  text += describe_errno(error_number);
  if (!kernel_message.empty()) text += " (kernel: " + std::string(kernel_message) + ")";
  return text;
}

Result<xfrm_selector> make_selector(const TrafficSelector& source, const TrafficSelector& destination) {
  using R = Result<xfrm_selector>;
  const int family = source.start.family;
  if (!valid_family(family) || destination.start.family != family || source.end.family != family ||
      destination.end.family != family) {
    return R::failure("selectors " + source.to_string() + " and " + destination.to_string() +
                          " must both be IPv4 or both IPv6",
                      EINVAL);
  }
  const auto source_prefix = source.prefix_length();
  const auto destination_prefix = destination.prefix_length();
  if (!source_prefix) return R::failure("selector " + source.to_string() + " is not an address prefix", EINVAL);
  if (!destination_prefix) {
    return R::failure("selector " + destination.to_string() + " is not an address prefix", EINVAL);
  }
  if (source.ip_protocol && destination.ip_protocol && source.ip_protocol != destination.ip_protocol) {
    return R::failure("selectors " + source.to_string() + " and " + destination.to_string() +
                          " name different protocols",
                      EINVAL);
  }
  xfrm_selector selector{};
  selector.family = static_cast<std::uint16_t>(family);
  selector.saddr = to_xfrm_address(source.start);
  selector.daddr = to_xfrm_address(destination.start);
  selector.prefixlen_s = *source_prefix;
  selector.prefixlen_d = *destination_prefix;
  selector.proto = source.ip_protocol ? source.ip_protocol : destination.ip_protocol;

  const auto source_ports = port_and_mask(source.start_port, source.end_port);
  const auto destination_ports = port_and_mask(destination.start_port, destination.end_port);
  if (!source_ports || !destination_ports) {
    return R::failure("port range of " + (source_ports ? destination : source).to_string() +
                          " is not a single port, all ports or an aligned power-of-two block",
                      EINVAL);
  }
  const bool ports_restricted = source_ports->second != 0 || destination_ports->second != 0;
  if (ports_restricted && selector.proto == 0) {
    return R::failure("selectors " + source.to_string() + " and " + destination.to_string() +
                          " restrict ports without naming a protocol",
                      EINVAL);
  }
  if (selector.proto == IPPROTO_ICMP || selector.proto == IPPROTO_ICMPV6) {
    // IKE carries ICMP type and code in the source selector's 16-bit "port";
    // the kernel wants the type in the source port, the code in the
    // destination port.
    if (source_ports->second == 0) return R::success(selector);
    if (source_ports->second != 0xffff) {
      return R::failure("ICMP selector " + source.to_string() + " must name one type/code", EINVAL);
    }
    selector.sport = htons(source_ports->first >> 8);
    selector.sport_mask = htons(0xffff);
    selector.dport = htons(source_ports->first & 0xff);
    selector.dport_mask = htons(0xffff);
    return R::success(selector);
  }
  selector.sport = htons(source_ports->first);
  selector.sport_mask = htons(source_ports->second);
  selector.dport = htons(destination_ports->first);
  selector.dport_mask = htons(destination_ports->second);
  return R::success(selector);
}

std::pair<TrafficSelector, TrafficSelector> selector_traffic(const xfrm_selector& selector) {
  const int family = selector.family == AF_INET6 ? AF_INET6 : AF_INET;
  return {traffic_from(selector.saddr, selector.prefixlen_s, family, selector.sport, selector.sport_mask,
                       selector.proto),
          traffic_from(selector.daddr, selector.prefixlen_d, family, selector.dport, selector.dport_mask,
                       selector.proto)};
}

std::uint32_t derived_priority(const xfrm_selector& selector) {
  // Start high (low preference) and subtract for every bit of specificity:
  // address prefix bits weigh most, then a protocol, then port mask bits.
  constexpr std::uint32_t kBase = 400000;
  std::uint32_t priority = kBase;
  priority -= (std::uint32_t{selector.prefixlen_s} + selector.prefixlen_d) * 512;
  if (selector.proto) priority -= 256;
  priority -= static_cast<std::uint32_t>(std::popcount(ntohs(selector.sport_mask)) +
                                         std::popcount(ntohs(selector.dport_mask))) *
              4;
  return priority;
}

Result<NlMsgPtr> build_add_sa(SaSpec& spec, bool update) {
  // Whatever happens below, the caller's copy of the keys is gone after this.
  struct KeyWiper {
    SaSpec& spec;
    ~KeyWiper() {
      wipe_key(spec.encryption_key);
      wipe_key(spec.integrity_key);
    }
  } wiper{spec};

  using R = Result<NlMsgPtr>;
  const std::string what = describe_sa(update ? "update" : "add", spec.spi, &spec.source, spec.destination);
  const int family = spec.source.family;
  if (!valid_family(family) || spec.destination.family != family) {
    return R::failure(what + ": outer addresses must both be IPv4 or both IPv6", EINVAL);
  }
  if (spec.spi == 0) return R::failure(what + ": SPI 0 is not a valid SPI", EINVAL);

  const bool aead = !spec.aead_algorithm.empty();
  if (aead && (!spec.encryption_algorithm.empty() || !spec.integrity_algorithm.empty() || !spec.integrity_key.empty())) {
    return R::failure(what + ": an AEAD SA takes no separate encryption or integrity algorithm", EINVAL);
  }
  if (!aead && spec.encryption_algorithm.empty() && spec.integrity_algorithm.empty()) {
    return R::failure(what + ": no algorithm given", EINVAL);
  }
  for (const std::string* name : {&spec.aead_algorithm, &spec.encryption_algorithm, &spec.integrity_algorithm}) {
    if (name->size() >= kAlgorithmNameSize) return R::failure(what + ": algorithm name too long: " + *name, EINVAL);
  }
  if (aead && spec.encryption_key.empty()) return R::failure(what + ": AEAD key missing", EINVAL);
  std::uint32_t truncation_bits = spec.integrity_truncation_bits;
  if (!spec.integrity_algorithm.empty() && truncation_bits == 0) {
    const auto derived = default_truncation(spec.integrity_algorithm);
    if (!derived) {
      return R::failure(what + ": give the truncation length for " + spec.integrity_algorithm, EINVAL);
    }
    truncation_bits = *derived;
  }
  if (spec.replay_window > kMaxReplayWindow) {
    return R::failure(what + ": replay window " + std::to_string(spec.replay_window) + " exceeds the kernel's " +
                          std::to_string(kMaxReplayWindow),
                      EINVAL);
  }

  xfrm_usersa_info info{};
  info.id.daddr = to_xfrm_address(spec.destination);
  info.id.spi = htonl(spec.spi);
  info.id.proto = IPPROTO_ESP;
  info.saddr = to_xfrm_address(spec.source);
  info.family = static_cast<std::uint16_t>(family);
  info.mode = kernel_mode(spec.mode);
  info.reqid = spec.reqid;
  put_lifetime(info.lft, spec.lifetime);
  if (spec.mode == Mode::Tunnel) info.flags |= XFRM_STATE_AF_UNSPEC;  // inner traffic may be of either family

  if (spec.selector_source.has_value() != spec.selector_destination.has_value()) {
    return R::failure(what + ": give both selector_source and selector_destination, or neither", EINVAL);
  }
  if (spec.selector_source) {
    auto selector = make_selector(*spec.selector_source, *spec.selector_destination);
    if (!selector) return R::failure(what + ": " + selector.error(), EINVAL);
    info.sel = selector.value();
  }

  // ESN, and windows the 32-bit legacy bitmap cannot hold, use the ESN
  // replay state; the kernel then wants the legacy field zero. It also
  // refuses ESN without a window, even on outbound SAs where none is used.
  const bool esn_state = spec.extended_sequence_numbers || spec.replay_window > kLegacyReplayWindow;
  std::uint32_t esn_window = spec.replay_window;
  if (spec.extended_sequence_numbers && esn_window == 0) esn_window = 1;
  const std::uint32_t bitmap_words = (esn_window + 31) / 32;
  if (esn_state) {
    info.replay_window = 0;
    if (spec.extended_sequence_numbers) info.flags |= XFRM_STATE_ESN;
  } else {
    info.replay_window = static_cast<std::uint8_t>(spec.replay_window);
  }

  const std::size_t capacity = sizeof info + nla_total_size(sizeof(xfrm_algo_aead) + spec.encryption_key.size()) +
                               nla_total_size(sizeof(xfrm_algo) + spec.encryption_key.size()) +
                               nla_total_size(sizeof(xfrm_algo_auth) + spec.integrity_key.size()) +
                               nla_total_size(sizeof(xfrm_encap_tmpl)) +
                               nla_total_size(sizeof(xfrm_replay_state_esn) + bitmap_words * 4);
  NlMsgPtr message = new_message(update ? XFRM_MSG_UPDSA : XFRM_MSG_NEWSA, capacity);
  if (!message || nlmsg_append(message.get(), &info, sizeof info, NLMSG_ALIGNTO) < 0) return no_memory("an SA");

  // Keys are written straight into the message (wiped with it), never into
  // another temporary buffer.
  if (aead) {
    nlattr* attribute = nla_reserve(message.get(), XFRMA_ALG_AEAD,
                                    static_cast<int>(sizeof(xfrm_algo_aead) + spec.encryption_key.size()));
    if (!attribute) return no_memory("an SA");
    auto* algorithm = static_cast<xfrm_algo_aead*>(nla_data(attribute));
    std::memset(algorithm, 0, sizeof *algorithm);
    std::memcpy(algorithm->alg_name, spec.aead_algorithm.c_str(), spec.aead_algorithm.size());
    algorithm->alg_key_len = static_cast<unsigned>(spec.encryption_key.size() * 8);
    algorithm->alg_icv_len = spec.aead_icv_bits;
    std::memcpy(algorithm->alg_key, spec.encryption_key.data(), spec.encryption_key.size());
  } else {
    if (!spec.encryption_algorithm.empty()) {
      nlattr* attribute = nla_reserve(message.get(), XFRMA_ALG_CRYPT,
                                      static_cast<int>(sizeof(xfrm_algo) + spec.encryption_key.size()));
      if (!attribute) return no_memory("an SA");
      auto* algorithm = static_cast<xfrm_algo*>(nla_data(attribute));
      std::memset(algorithm, 0, sizeof *algorithm);
      std::memcpy(algorithm->alg_name, spec.encryption_algorithm.c_str(), spec.encryption_algorithm.size());
      algorithm->alg_key_len = static_cast<unsigned>(spec.encryption_key.size() * 8);
      if (!spec.encryption_key.empty()) {
        std::memcpy(algorithm->alg_key, spec.encryption_key.data(), spec.encryption_key.size());
      }
    }
    if (!spec.integrity_algorithm.empty()) {
      nlattr* attribute = nla_reserve(message.get(), XFRMA_ALG_AUTH_TRUNC,
                                      static_cast<int>(sizeof(xfrm_algo_auth) + spec.integrity_key.size()));
      if (!attribute) return no_memory("an SA");
      auto* algorithm = static_cast<xfrm_algo_auth*>(nla_data(attribute));
      std::memset(algorithm, 0, sizeof *algorithm);
      std::memcpy(algorithm->alg_name, spec.integrity_algorithm.c_str(), spec.integrity_algorithm.size());
      algorithm->alg_key_len = static_cast<unsigned>(spec.integrity_key.size() * 8);
      algorithm->alg_trunc_len = truncation_bits;
      if (!spec.integrity_key.empty()) {
        std::memcpy(algorithm->alg_key, spec.integrity_key.data(), spec.integrity_key.size());
      }
    }
  }

  if (spec.encapsulation) {
    xfrm_encap_tmpl encapsulation{};
    encapsulation.encap_type = UDP_ENCAP_ESPINUDP;
    encapsulation.encap_sport = htons(spec.encapsulation->source_port);
    encapsulation.encap_dport = htons(spec.encapsulation->destination_port);
    if (nla_put(message.get(), XFRMA_ENCAP, sizeof encapsulation, &encapsulation) < 0) return no_memory("an SA");
  }

  if (esn_state) {
    const std::size_t size = sizeof(xfrm_replay_state_esn) + bitmap_words * sizeof(std::uint32_t);
    nlattr* attribute = nla_reserve(message.get(), XFRMA_REPLAY_ESN_VAL, static_cast<int>(size));
    if (!attribute) return no_memory("an SA");
    auto* replay = static_cast<xfrm_replay_state_esn*>(nla_data(attribute));
    std::memset(replay, 0, size);
    replay->bmp_len = bitmap_words;
    replay->replay_window = esn_window;
  }
  return R::success(std::move(message));
}

NlMsgPtr build_sa_id(std::uint16_t type, const IpAddress& destination, std::uint32_t spi) {
  xfrm_usersa_id id{};
  id.daddr = to_xfrm_address(destination);
  id.spi = htonl(spi);
  id.family = static_cast<std::uint16_t>(destination.family);
  id.proto = IPPROTO_ESP;
  NlMsgPtr message = new_message(type, sizeof id);
  if (message && nlmsg_append(message.get(), &id, sizeof id, NLMSG_ALIGNTO) < 0) message.reset();
  return message;
}

NlMsgPtr build_allocate_spi(const IpAddress& source, const IpAddress& destination, std::uint32_t reqid,
                            std::uint32_t minimum, std::uint32_t maximum) {
  xfrm_userspi_info request{};
  request.info.id.daddr = to_xfrm_address(destination);
  request.info.id.proto = IPPROTO_ESP;
  request.info.saddr = to_xfrm_address(source);
  request.info.family = static_cast<std::uint16_t>(destination.family);
  request.info.reqid = reqid;
  request.min = minimum;
  request.max = maximum;
  NlMsgPtr message = new_message(XFRM_MSG_ALLOCSPI, sizeof request);
  if (message && nlmsg_append(message.get(), &request, sizeof request, NLMSG_ALIGNTO) < 0) message.reset();
  return message;
}

Result<NlMsgPtr> build_add_policy(const PolicySpec& spec, bool update) {
  using R = Result<NlMsgPtr>;
  const std::string what = describe_policy(update ? "update" : "add", spec.source, spec.destination, spec.direction);
  auto kernel_selector = make_selector(spec.source, spec.destination);
  if (!kernel_selector) return R::failure(what + ": " + kernel_selector.error(), EINVAL);
  const xfrm_selector& sel = kernel_selector.value();
  const int family = sel.family;
  const std::size_t address_size = family == AF_INET6 ? 16 : 4;

  SelectorPtr selector(xfrmnl_sel_alloc());
  NlAddrPtr source(nl_addr_build(family, &sel.saddr, address_size));
  NlAddrPtr destination(nl_addr_build(family, &sel.daddr, address_size));
  PolicyPtr policy(xfrmnl_sp_alloc());
  LifetimePtr lifetime(xfrmnl_ltime_cfg_alloc());
  if (!selector || !source || !destination || !policy || !lifetime) return no_memory("a policy");
  nl_addr_set_prefixlen(source.get(), sel.prefixlen_s);
  nl_addr_set_prefixlen(destination.get(), sel.prefixlen_d);
  xfrmnl_sel_set_saddr(selector.get(), source.get());
  xfrmnl_sel_set_daddr(selector.get(), destination.get());
  xfrmnl_sel_set_prefixlen_s(selector.get(), sel.prefixlen_s);
  xfrmnl_sel_set_prefixlen_d(selector.get(), sel.prefixlen_d);
  xfrmnl_sel_set_family(selector.get(), family);
  xfrmnl_sel_set_proto(selector.get(), sel.proto);
  // libnl takes ports in host order.
  xfrmnl_sel_set_sport(selector.get(), ntohs(sel.sport));
  xfrmnl_sel_set_sportmask(selector.get(), ntohs(sel.sport_mask));
  xfrmnl_sel_set_dport(selector.get(), ntohs(sel.dport));
  xfrmnl_sel_set_dportmask(selector.get(), ntohs(sel.dport_mask));

  for (auto setter : {xfrmnl_ltime_cfg_set_soft_bytelimit, xfrmnl_ltime_cfg_set_hard_bytelimit,
                      xfrmnl_ltime_cfg_set_soft_packetlimit, xfrmnl_ltime_cfg_set_hard_packetlimit}) {
    setter(lifetime.get(), kUnlimited);
  }

  xfrmnl_sp_set_sel(policy.get(), selector.get());
  xfrmnl_sp_set_lifetime_cfg(policy.get(), lifetime.get());
  xfrmnl_sp_set_dir(policy.get(), kernel_direction(spec.direction));
  xfrmnl_sp_set_action(policy.get(), spec.block ? XFRM_POLICY_BLOCK : XFRM_POLICY_ALLOW);
  xfrmnl_sp_set_priority(policy.get(), spec.priority ? spec.priority : derived_priority(sel));
  xfrmnl_sp_set_share(policy.get(), XFRM_SHARE_ANY);

  if (!spec.block) {
    const bool tunnel = spec.mode == Mode::Tunnel;
    const int outer_family = tunnel ? spec.template_source.family : family;
    if (tunnel && (!valid_family(outer_family) || spec.template_destination.family != outer_family)) {
      return R::failure(what + ": a tunnel template needs outer addresses of one family", EINVAL);
    }
    const std::size_t outer_size = outer_family == AF_INET6 ? 16 : 4;
    // Transport templates carry no addresses: the packet's own are used.
    const xfrm_address_t outer_source = tunnel ? to_xfrm_address(spec.template_source) : xfrm_address_t{};
    const xfrm_address_t outer_destination = tunnel ? to_xfrm_address(spec.template_destination) : xfrm_address_t{};
    NlAddrPtr template_source(nl_addr_build(outer_family, &outer_source, outer_size));
    NlAddrPtr template_destination(nl_addr_build(outer_family, &outer_destination, outer_size));
    TemplatePtr entry(xfrmnl_user_tmpl_alloc());
    if (!template_source || !template_destination || !entry) return no_memory("a policy");
    xfrmnl_user_tmpl_set_saddr(entry.get(), template_source.get());
    xfrmnl_user_tmpl_set_daddr(entry.get(), template_destination.get());
    xfrmnl_user_tmpl_set_family(entry.get(), outer_family);
    xfrmnl_user_tmpl_set_proto(entry.get(), IPPROTO_ESP);
    xfrmnl_user_tmpl_set_mode(entry.get(), kernel_mode(spec.mode));
    xfrmnl_user_tmpl_set_reqid(entry.get(), spec.reqid);
    xfrmnl_user_tmpl_set_optional(entry.get(), spec.optional_template ? 1 : 0);
    // Any algorithm: the SA found by reqid decides.
    xfrmnl_user_tmpl_set_aalgos(entry.get(), ~0u);
    xfrmnl_user_tmpl_set_ealgos(entry.get(), ~0u);
    xfrmnl_user_tmpl_set_calgos(entry.get(), ~0u);
    xfrmnl_sp_add_usertemplate(policy.get(), entry.release());  // the policy owns it now
  }

  nl_msg* raw = nullptr;
  const int status = update ? xfrmnl_sp_build_update_request(policy.get(), 0, &raw)
                            : xfrmnl_sp_build_add_request(policy.get(), 0, &raw);
  NlMsgPtr message(raw);
  if (status < 0 || !message) return no_memory("a policy");
  return R::success(std::move(message));
}

Result<NlMsgPtr> build_delete_policy(const TrafficSelector& source, const TrafficSelector& destination,
                                     Direction direction) {
  using R = Result<NlMsgPtr>;
  auto selector = make_selector(source, destination);
  if (!selector) {
    return R::failure(describe_policy("delete", source, destination, direction) + ": " + selector.error(), EINVAL);
  }
  xfrm_userpolicy_id id{};
  id.sel = selector.value();
  id.dir = kernel_direction(direction);
  NlMsgPtr message = new_message(XFRM_MSG_DELPOLICY, sizeof id);
  if (!message || nlmsg_append(message.get(), &id, sizeof id, NLMSG_ALIGNTO) < 0) return no_memory("a policy");
  return R::success(std::move(message));
}

Result<NlMsgPtr> build_moved_sa(const nlmsghdr* current, const IpAddress& new_source,
                                const IpAddress& new_destination, const std::optional<Encapsulation>& encapsulation) {
  using R = Result<NlMsgPtr>;
  if (!payload_fits<xfrm_usersa_info>(current) || current->nlmsg_type != XFRM_MSG_NEWSA) {
    return R::failure("the kernel's description of the SA is malformed", EPROTO);
  }
  if (!valid_family(new_source.family) || new_destination.family != new_source.family) {
    return R::failure("new outer addresses must both be IPv4 or both IPv6", EINVAL);
  }
  xfrm_usersa_info info{};
  std::memcpy(&info, NLMSG_DATA(current), sizeof info);
  const IpAddress old_source = from_xfrm_address(info.saddr, info.family);
  const IpAddress old_destination = from_xfrm_address(info.id.daddr, info.family);
  const int old_family = info.family;
  info.saddr = to_xfrm_address(new_source);
  info.id.daddr = to_xfrm_address(new_destination);
  info.family = static_cast<std::uint16_t>(new_source.family);
  std::memset(&info.curlft, 0, sizeof info.curlft);
  std::memset(&info.stats, 0, sizeof info.stats);
  // A transport SA's host selector follows its addresses.
  if (info.mode == XFRM_MODE_TRANSPORT && info.sel.family == old_family) {
    const unsigned full = old_family == AF_INET6 ? 128 : 32;
    if (info.sel.prefixlen_s == full && from_xfrm_address(info.sel.saddr, old_family) == old_source &&
        info.sel.prefixlen_d == full && from_xfrm_address(info.sel.daddr, old_family) == old_destination) {
      info.sel.saddr = info.saddr;
      info.sel.daddr = info.id.daddr;
      info.sel.family = info.family;
      info.sel.prefixlen_s = info.sel.prefixlen_d = new_source.family == AF_INET6 ? 128 : 32;
    }
  }

  nlattr* attributes[XFRMA_MAX + 1] = {};
  if (nlmsg_parse(const_cast<nlmsghdr*>(current), sizeof(xfrm_usersa_info), attributes, XFRMA_MAX, nullptr) < 0) {
    return R::failure("the kernel's description of the SA is malformed", EPROTO);
  }
  if (attributes[XFRMA_REPLAY_ESN_VAL]) info.replay_window = 0;

  NlMsgPtr message = new_message(XFRM_MSG_NEWSA, current->nlmsg_len + nla_total_size(sizeof(xfrm_encap_tmpl)));
  if (!message || nlmsg_append(message.get(), &info, sizeof info, NLMSG_ALIGNTO) < 0) return no_memory("an SA");
  // Keys, replay state and marks carry over; counters, encapsulation and
  // everything the kernel computes itself do not.
  static constexpr int kCarried[] = {XFRMA_ALG_AEAD,       XFRMA_ALG_CRYPT,      XFRMA_ALG_AUTH_TRUNC,
                                     XFRMA_ALG_COMP,       XFRMA_REPLAY_VAL,     XFRMA_REPLAY_ESN_VAL,
                                     XFRMA_REPLAY_THRESH,  XFRMA_ETIMER_THRESH,  XFRMA_SA_EXTRA_FLAGS,
                                     XFRMA_MARK,           XFRMA_SET_MARK,       XFRMA_SET_MARK_MASK,
                                     XFRMA_IF_ID,          XFRMA_TFCPAD};
  for (int type : kCarried) {
    const nlattr* attribute = attributes[type];
    if (!attribute) continue;
    if (nla_put(message.get(), type, nla_len(attribute), nla_data(attribute)) < 0) return no_memory("an SA");
  }
  // Old kernels describe integrity only as XFRMA_ALG_AUTH.
  if (!attributes[XFRMA_ALG_AUTH_TRUNC] && attributes[XFRMA_ALG_AUTH]) {
    const nlattr* attribute = attributes[XFRMA_ALG_AUTH];
    if (nla_put(message.get(), XFRMA_ALG_AUTH, nla_len(attribute), nla_data(attribute)) < 0) {
      return no_memory("an SA");
    }
  }
  if (encapsulation) {
    xfrm_encap_tmpl template_value{};
    template_value.encap_type = UDP_ENCAP_ESPINUDP;
    template_value.encap_sport = htons(encapsulation->source_port);
    template_value.encap_dport = htons(encapsulation->destination_port);
    if (nla_put(message.get(), XFRMA_ENCAP, sizeof template_value, &template_value) < 0) return no_memory("an SA");
  }
  return R::success(std::move(message));
}

NlMsgPtr build_dump(std::uint16_t type) { return new_message(type, 0, NLM_F_DUMP); }

NlMsgPtr build_delete_policy_by_index(std::uint32_t index, std::uint8_t kernel_direction) {
  xfrm_userpolicy_id id{};
  id.index = index;
  id.dir = kernel_direction;
  NlMsgPtr message = new_message(XFRM_MSG_DELPOLICY, sizeof id);
  if (message && nlmsg_append(message.get(), &id, sizeof id, NLMSG_ALIGNTO) < 0) message.reset();
  return message;
}

Result<std::optional<DumpedSa>> read_dumped_sa(const nlmsghdr* message) {
  using R = Result<std::optional<DumpedSa>>;
  if (!payload_fits<xfrm_usersa_info>(message) || message->nlmsg_type != XFRM_MSG_NEWSA) {
    return R::failure("unexpected message in an SA dump", EPROTO);
  }
  xfrm_usersa_info info;
  std::memcpy(&info, NLMSG_DATA(message), sizeof info);
  if (info.id.proto != IPPROTO_ESP) return R::success(std::nullopt);
  if (!valid_family(info.family)) return R::failure("SA dump: address family " + std::to_string(info.family), EPROTO);
  DumpedSa sa;
  sa.destination = from_xfrm_address(info.id.daddr, info.family);
  sa.spi = ntohl(info.id.spi);
  sa.reqid = info.reqid;
  OPENSSL_cleanse(&info, sizeof info);
  return R::success(sa);
}

Result<DumpedPolicy> read_dumped_policy(const nlmsghdr* message) {
  using R = Result<DumpedPolicy>;
  if (!payload_fits<xfrm_userpolicy_info>(message) || message->nlmsg_type != XFRM_MSG_NEWPOLICY) {
    return R::failure("unexpected message in a policy dump", EPROTO);
  }
  xfrm_userpolicy_info info;
  std::memcpy(&info, NLMSG_DATA(message), sizeof info);
  DumpedPolicy policy;
  policy.index = info.index;
  policy.direction = info.dir;
  nlattr* attributes[XFRMA_MAX + 1] = {};
  if (nlmsg_parse(const_cast<nlmsghdr*>(message), sizeof(xfrm_userpolicy_info), attributes, XFRMA_MAX, nullptr) < 0) {
    return R::failure("policy dump: malformed attributes", EPROTO);
  }
  if (const nlattr* templates = attributes[XFRMA_TMPL]) {
    const auto* bytes = static_cast<const std::uint8_t*>(nla_data(templates));
    const std::size_t count = static_cast<std::size_t>(nla_len(templates)) / sizeof(xfrm_user_tmpl);
    for (std::size_t i = 0; i < count; ++i) {
      xfrm_user_tmpl entry;
      std::memcpy(&entry, bytes + i * sizeof entry, sizeof entry);
      policy.reqids.push_back(entry.reqid);
    }
  }
  return R::success(std::move(policy));
}

Result<SaCounters> read_sa_counters(const nlmsghdr* message) {
  if (!payload_fits<xfrm_usersa_info>(message) || message->nlmsg_type != XFRM_MSG_NEWSA) {
    return Result<SaCounters>::failure("unexpected answer to an SA query", EPROTO);
  }
  xfrm_usersa_info info;
  std::memcpy(&info, NLMSG_DATA(message), sizeof info);
  SaCounters counters;
  counters.bytes = info.curlft.bytes;
  counters.packets = info.curlft.packets;
  counters.add_time_seconds = info.curlft.add_time;
  counters.use_time_seconds = info.curlft.use_time;
  counters.replay_dropped = std::uint64_t{info.stats.replay_window} + info.stats.replay;
  counters.integrity_failed = info.stats.integrity_failed;
  return Result<SaCounters>::success(counters);
}

Result<std::uint32_t> read_sa_spi(const nlmsghdr* message) {
  if (!payload_fits<xfrm_usersa_info>(message) || message->nlmsg_type != XFRM_MSG_NEWSA) {
    return Result<std::uint32_t>::failure("unexpected answer to an SPI allocation", EPROTO);
  }
  xfrm_usersa_info info;
  std::memcpy(&info, NLMSG_DATA(message), sizeof info);
  return Result<std::uint32_t>::success(ntohl(info.id.spi));
}

Result<std::optional<Event>> read_event(const nlmsghdr* message) {
  using R = Result<std::optional<Event>>;
  switch (message->nlmsg_type) {
    case XFRM_MSG_ACQUIRE: {
      if (!payload_fits<xfrm_user_acquire>(message)) return R::failure("truncated XFRM ACQUIRE message", EPROTO);
      xfrm_user_acquire acquire;
      std::memcpy(&acquire, NLMSG_DATA(message), sizeof acquire);
      AcquireEvent event;
      std::tie(event.source, event.destination) = selector_traffic(acquire.sel);
      int outer_family = acquire.sel.family;
      nlattr* attributes[XFRMA_MAX + 1] = {};
      if (nlmsg_parse(const_cast<nlmsghdr*>(message), sizeof(xfrm_user_acquire), attributes, XFRMA_MAX, nullptr) >=
              0 &&
          attributes[XFRMA_TMPL] && nla_len(attributes[XFRMA_TMPL]) >= static_cast<int>(sizeof(xfrm_user_tmpl))) {
        xfrm_user_tmpl first;
        std::memcpy(&first, nla_data(attributes[XFRMA_TMPL]), sizeof first);
        event.reqid = first.reqid;
        if (valid_family(first.family)) outer_family = first.family;
      }
      event.outer_source = from_xfrm_address(acquire.saddr, outer_family);
      event.outer_destination = from_xfrm_address(acquire.id.daddr, outer_family);
      return R::success(Event{event});
    }
    case XFRM_MSG_EXPIRE: {
      if (!payload_fits<xfrm_user_expire>(message)) return R::failure("truncated XFRM EXPIRE message", EPROTO);
      xfrm_user_expire expire;
      std::memcpy(&expire, NLMSG_DATA(message), sizeof expire);
      ExpireEvent event;
      event.destination = from_xfrm_address(expire.state.id.daddr, expire.state.family);
      event.spi = ntohl(expire.state.id.spi);
      event.hard = expire.hard != 0;
      event.packets = expire.state.curlft.packets;
      event.hard_packet_limit = expire.state.lft.hard_packet_limit == XFRM_INF ? 0 : expire.state.lft.hard_packet_limit;
      return R::success(Event{event});
    }
    case XFRM_MSG_MAPPING: {
      if (!payload_fits<xfrm_user_mapping>(message)) return R::failure("truncated XFRM MAPPING message", EPROTO);
      xfrm_user_mapping mapping;
      std::memcpy(&mapping, NLMSG_DATA(message), sizeof mapping);
      MappingEvent event;
      event.spi = ntohl(mapping.id.spi);
      event.old_address = from_xfrm_address(mapping.old_saddr, mapping.id.family);
      event.new_address = from_xfrm_address(mapping.new_saddr, mapping.id.family);
      event.old_port = ntohs(mapping.old_sport);
      event.new_port = ntohs(mapping.new_sport);
      return R::success(Event{event});
    }
    default:
      return R::success(std::nullopt);
  }
}

}  // namespace tapsec::kernel::xfrm::detail
