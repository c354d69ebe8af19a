#include "agent/kernel/xfrm.h"

#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/kernel/xfrm_channel.h"
#include "agent/kernel/xfrm_codec.h"

namespace tapsec::kernel::xfrm {

using detail::explain_failure;
using detail::NlMsgPtr;
using detail::Outcome;
using detail::Subject;

namespace {

// Inbound SPIs come from the upper quarter, as other IKE daemons do, so
// manually keyed SAs with small SPIs never collide with them.
constexpr std::uint32_t kSpiMinimum = 0xc0000000;
constexpr std::uint32_t kSpiMaximum = 0xcfffffff;

std::string algorithm_names(const SaSpec& spec) {
  if (!spec.aead_algorithm.empty()) return spec.aead_algorithm;
  std::string names = spec.encryption_algorithm;
  if (!spec.integrity_algorithm.empty()) names += (names.empty() ? "" : " + ") + spec.integrity_algorithm;
  return names;
}

// The failure for one answered (or unbuildable) request.
std::string outcome_failure(const Outcome& outcome, const std::string& what, Subject subject, int family,
                            std::string_view algorithms = {}) {
  if (!outcome.local_failure.empty()) return outcome.local_failure;
  return explain_failure(what, subject, outcome.error_number, outcome.kernel_message, family, algorithms);
}

Result<Unit> done() { return Result<Unit>::success({}); }

}  // namespace

// ---- XfrmSocket -------------------------------------------------------------

struct XfrmSocket::Impl {
  detail::XfrmChannel channel;
};

XfrmSocket::XfrmSocket(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
XfrmSocket::XfrmSocket(XfrmSocket&&) noexcept = default;
XfrmSocket& XfrmSocket::operator=(XfrmSocket&&) noexcept = default;
XfrmSocket::~XfrmSocket() = default;

Result<XfrmSocket> XfrmSocket::open() {
  auto channel = detail::XfrmChannel::open();
  if (!channel) return Result<XfrmSocket>::failure(channel.error(), channel.error_number());
  return Result<XfrmSocket>::success(XfrmSocket(std::make_unique<Impl>(Impl{std::move(channel.value())})));
}

Result<std::uint32_t> XfrmSocket::allocate_spi(const IpAddress& source, const IpAddress& destination,
                                               std::uint32_t reqid) {
  using R = Result<std::uint32_t>;
  const std::string what = "allocate SPI for esp " + source.to_string() + "→" + destination.to_string() +
                           " reqid " + std::to_string(reqid);
  if ((source.family != AF_INET && source.family != AF_INET6) || destination.family != source.family) {
    return R::failure(what + ": addresses must both be IPv4 or both IPv6", EINVAL);
  }
  NlMsgPtr request = detail::build_allocate_spi(source, destination, reqid, kSpiMinimum, kSpiMaximum);
  if (!request) return R::failure(what + ": out of memory", ENOMEM);
  auto outcome = impl_->channel.exchange_one(std::move(request));
  if (!outcome) return R::failure(what + ": " + outcome.error(), outcome.error_number());
  if (outcome->error_number) {
    return R::failure(outcome_failure(outcome.value(), what, Subject::SpiAllocation, source.family),
                      outcome->error_number);
  }
  if (outcome->reply.empty()) return R::failure(what + ": the kernel acknowledged without an SPI", EPROTO);
  auto spi = detail::read_sa_spi(outcome->reply.header());
  if (!spi) return R::failure(what + ": " + spi.error(), spi.error_number());
  return spi;
}

Result<Unit> XfrmSocket::add_sa(SaSpec spec, bool update) {
  const std::string what =
      detail::describe_sa(update ? "update" : "add", spec.spi, &spec.source, spec.destination);
  const std::string algorithms = algorithm_names(spec);
  auto request = detail::build_add_sa(spec, update);  // wipes spec's keys
  if (!request) return Result<Unit>::failure(request.error(), request.error_number());
  auto outcome = impl_->channel.exchange_one(std::move(request.value()));
  if (!outcome) return Result<Unit>::failure(what + ": " + outcome.error(), outcome.error_number());
  if (outcome->error_number) {
    return Result<Unit>::failure(outcome_failure(outcome.value(), what, Subject::Sa, spec.source.family, algorithms),
                                 outcome->error_number);
  }
  return done();
}

Result<Unit> XfrmSocket::add_sas(std::vector<SaSpec> specs) {
  std::vector<std::string> algorithms(specs.size());
  for (std::size_t index = 0; index < specs.size(); ++index) algorithms[index] = algorithm_names(specs[index]);
  auto outcomes = impl_->channel.exchange(
      specs.size(), [&specs](std::size_t index) { return detail::build_add_sa(specs[index], false); });
  // Keys of requests never built (the exchange stopped early) go too.
  for (SaSpec& spec : specs) {
    detail::wipe_key(spec.encryption_key);
    detail::wipe_key(spec.integrity_key);
  }
  if (!outcomes) {
    return Result<Unit>::failure("add " + std::to_string(specs.size()) + " SAs: " + outcomes.error(),
                                 outcomes.error_number());
  }
  std::size_t failures = 0;
  std::string first_failure;
  int first_error = 0;
  for (std::size_t index = 0; index < specs.size(); ++index) {
    const Outcome& outcome = outcomes.value()[index];
    if (!outcome.error_number) continue;
    if (failures++ == 0) {
      const SaSpec& spec = specs[index];
      first_failure = outcome_failure(outcome, detail::describe_sa("add", spec.spi, &spec.source, spec.destination),
                                      Subject::Sa, spec.source.family, algorithms[index]);
      first_error = outcome.error_number;
    }
  }
  if (failures) {
    return Result<Unit>::failure(std::to_string(failures) + " of " + std::to_string(specs.size()) +
                                     " SAs failed; first: " + first_failure,
                                 first_error);
  }
  return done();
}

Result<Unit> XfrmSocket::delete_sa(const IpAddress& destination, std::uint32_t spi) {
  const std::string what = detail::describe_sa("delete", spi, nullptr, destination);
  NlMsgPtr request = detail::build_sa_id(XFRM_MSG_DELSA, destination, spi);
  if (!request) return Result<Unit>::failure(what + ": out of memory", ENOMEM);
  auto outcome = impl_->channel.exchange_one(std::move(request));
  if (!outcome) return Result<Unit>::failure(what + ": " + outcome.error(), outcome.error_number());
  if (outcome->error_number) {
    return Result<Unit>::failure(outcome_failure(outcome.value(), what, Subject::Sa, destination.family),
                                 outcome->error_number);
  }
  return done();
}

Result<SaCounters> XfrmSocket::query_sa(const IpAddress& destination, std::uint32_t spi) {
  using R = Result<SaCounters>;
  const std::string what = detail::describe_sa("query", spi, nullptr, destination);
  NlMsgPtr request = detail::build_sa_id(XFRM_MSG_GETSA, destination, spi);
  if (!request) return R::failure(what + ": out of memory", ENOMEM);
  auto outcome = impl_->channel.exchange_one(std::move(request));
  if (!outcome) return R::failure(what + ": " + outcome.error(), outcome.error_number());
  if (outcome->error_number) {
    return R::failure(outcome_failure(outcome.value(), what, Subject::Query, destination.family),
                      outcome->error_number);
  }
  if (outcome->reply.empty()) return R::failure(what + ": the kernel answered without the SA", EPROTO);
  auto counters = detail::read_sa_counters(outcome->reply.header());
  if (!counters) return R::failure(what + ": " + counters.error(), counters.error_number());
  return counters;
}

Result<Unit> XfrmSocket::update_sa_addresses(const IpAddress& old_destination, std::uint32_t spi,
                                             const IpAddress& new_source, const IpAddress& new_destination,
                                             std::optional<Encapsulation> encapsulation) {
  const std::string what = detail::describe_sa("move", spi, nullptr, old_destination) + " to " +
                           new_source.to_string() + "→" + new_destination.to_string();
  NlMsgPtr query = detail::build_sa_id(XFRM_MSG_GETSA, old_destination, spi);
  if (!query) return Result<Unit>::failure(what + ": out of memory", ENOMEM);
  auto current = impl_->channel.exchange_one(std::move(query));
  if (!current) return Result<Unit>::failure(what + ": " + current.error(), current.error_number());
  if (current->error_number) {
    return Result<Unit>::failure(outcome_failure(current.value(), what, Subject::Query, old_destination.family),
                                 current->error_number);
  }
  if (current->reply.empty()) return Result<Unit>::failure(what + ": the kernel answered without the SA", EPROTO);
  auto moved = detail::build_moved_sa(current->reply.header(), new_source, new_destination, encapsulation);
  current->reply.wipe();
  if (!moved) return Result<Unit>::failure(what + ": " + moved.error(), moved.error_number());

  // A new destination makes a new SA identity: add it before deleting the old
  // one so traffic never finds neither. Same destination: the old one must go
  // first. Both requests travel in one batch.
  const bool same_identity = new_destination == old_destination;
  std::vector<NlMsgPtr> requests;
  NlMsgPtr removal = detail::build_sa_id(XFRM_MSG_DELSA, old_destination, spi);
  if (!removal) return Result<Unit>::failure(what + ": out of memory", ENOMEM);
  const std::size_t removal_index = same_identity ? 0 : 1;
  if (same_identity) {
    requests.push_back(std::move(removal));
    requests.push_back(std::move(moved.value()));
  } else {
    requests.push_back(std::move(moved.value()));
    requests.push_back(std::move(removal));
  }
  auto outcomes = impl_->channel.exchange(
      requests.size(), [&requests](std::size_t index) { return Result<NlMsgPtr>::success(std::move(requests[index])); });
  if (!outcomes) return Result<Unit>::failure(what + ": " + outcomes.error(), outcomes.error_number());
  const Outcome& removed = outcomes.value()[removal_index];
  const Outcome& added = outcomes.value()[1 - removal_index];
  if (added.error_number) {
    std::string text = outcome_failure(added, what + ": add at the new addresses", Subject::Sa, new_source.family);
    if (same_identity && !removed.error_number) text += " (the SA at the old addresses is already deleted)";
    return Result<Unit>::failure(text, added.error_number);
  }
  if (removed.error_number) {
    return Result<Unit>::failure(
        outcome_failure(removed, what + ": delete at the old addresses", Subject::Sa, old_destination.family),
        removed.error_number);
  }
  return done();
}

Result<Unit> XfrmSocket::add_policy(const PolicySpec& spec, bool update) {
  const std::string what =
      detail::describe_policy(update ? "update" : "add", spec.source, spec.destination, spec.direction);
  auto request = detail::build_add_policy(spec, update);
  if (!request) return Result<Unit>::failure(request.error(), request.error_number());
  auto outcome = impl_->channel.exchange_one(std::move(request.value()));
  if (!outcome) return Result<Unit>::failure(what + ": " + outcome.error(), outcome.error_number());
  if (outcome->error_number) {
    return Result<Unit>::failure(outcome_failure(outcome.value(), what, Subject::Policy, spec.source.start.family),
                                 outcome->error_number);
  }
  return done();
}

Result<Unit> XfrmSocket::delete_policy(const TrafficSelector& source, const TrafficSelector& destination,
                                       Direction direction) {
  const std::string what = detail::describe_policy("delete", source, destination, direction);
  auto request = detail::build_delete_policy(source, destination, direction);
  if (!request) return Result<Unit>::failure(request.error(), request.error_number());
  auto outcome = impl_->channel.exchange_one(std::move(request.value()));
  if (!outcome) return Result<Unit>::failure(what + ": " + outcome.error(), outcome.error_number());
  if (outcome->error_number) {
    return Result<Unit>::failure(outcome_failure(outcome.value(), what, Subject::Policy, source.start.family),
                                 outcome->error_number);
  }
  return done();
}

Result<Leftovers> XfrmSocket::remove_leftovers() {
  using R = Result<Leftovers>;
  std::vector<detail::DumpedSa> sas;
  NlMsgPtr sa_dump = detail::build_dump(XFRM_MSG_GETSA);
  if (!sa_dump) return R::failure("dump XFRM SAs: out of memory", ENOMEM);
  auto dumped = impl_->channel.dump(std::move(sa_dump), [&sas](const nlmsghdr* message) -> Result<Unit> {
    auto sa = detail::read_dumped_sa(message);
    if (!sa) return Result<Unit>::failure(sa.error(), sa.error_number());
    if (sa.value() && is_agent_reqid(sa.value()->reqid)) sas.push_back(*sa.value());
    return done();
  });
  if (!dumped) return R::failure("dump XFRM SAs: " + dumped.error(), dumped.error_number());

  std::vector<detail::DumpedPolicy> policies;
  NlMsgPtr policy_dump = detail::build_dump(XFRM_MSG_GETPOLICY);
  if (!policy_dump) return R::failure("dump XFRM policies: out of memory", ENOMEM);
  dumped = impl_->channel.dump(std::move(policy_dump), [&policies](const nlmsghdr* message) -> Result<Unit> {
    auto policy = detail::read_dumped_policy(message);
    if (!policy) return Result<Unit>::failure(policy.error(), policy.error_number());
    const auto& reqids = policy->reqids;
    // Socket policies (the IKE sockets' bypass) have directions past FWD.
    if (policy->direction < XFRM_POLICY_MAX &&
        std::any_of(reqids.begin(), reqids.end(), [](std::uint32_t reqid) { return is_agent_reqid(reqid); }))
      policies.push_back(std::move(policy.value()));
    return done();
  });
  if (!dumped) return R::failure("dump XFRM policies: " + dumped.error(), dumped.error_number());

  // Policies first, so no traffic meets a policy whose SAs are gone.
  const std::size_t count = policies.size() + sas.size();
  auto outcomes = impl_->channel.exchange(count, [&](std::size_t index) -> Result<NlMsgPtr> {
    NlMsgPtr request =
        index < policies.size()
            ? detail::build_delete_policy_by_index(policies[index].index, policies[index].direction)
            : detail::build_sa_id(XFRM_MSG_DELSA, sas[index - policies.size()].destination,
                                  sas[index - policies.size()].spi);
    if (!request) return Result<NlMsgPtr>::failure("cannot build a deletion (out of memory)", ENOMEM);
    return Result<NlMsgPtr>::success(std::move(request));
  });
  if (!outcomes) return R::failure("remove leftover XFRM state: " + outcomes.error(), outcomes.error_number());
  Leftovers removed;
  for (std::size_t index = 0; index < count; ++index) {
    const Outcome& outcome = outcomes.value()[index];
    if (outcome.error_number == ENOENT) continue;  // gone meanwhile (a hard expiry)
    if (outcome.error_number) {
      const bool policy = index < policies.size();
      const std::string what = policy ? "delete leftover policy index " + std::to_string(policies[index].index)
                                      : detail::describe_sa("delete leftover", sas[index - policies.size()].spi,
                                                            nullptr, sas[index - policies.size()].destination);
      return R::failure(outcome_failure(outcome, what, policy ? Subject::Policy : Subject::Sa, 0),
                        outcome.error_number);
    }
    ++(index < policies.size() ? removed.policies : removed.sas);
  }
  return R::success(removed);
}

// ---- XfrmEvents -------------------------------------------------------------

struct XfrmEvents::Impl {
  detail::NlSockPtr socket;
  bool overflow_pending = false;  // events were lost; reported on the next read
};

XfrmEvents::XfrmEvents(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
XfrmEvents::XfrmEvents(XfrmEvents&&) noexcept = default;
XfrmEvents& XfrmEvents::operator=(XfrmEvents&&) noexcept = default;
XfrmEvents::~XfrmEvents() = default;

Result<XfrmEvents> XfrmEvents::open() {
  using R = Result<XfrmEvents>;
  auto socket = detail::open_xfrm_socket({XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE, XFRMNLGRP_MAPPING});
  if (!socket) return R::failure("open XFRM event socket: " + socket.error(), socket.error_number());
  if (const int status = nl_socket_set_nonblocking(socket.value().get()); status < 0) {
    return R::failure("open XFRM event socket: cannot make it non-blocking", EINVAL);
  }
  // A burst of expiries (many SAs installed at once) must not overflow it.
  const int size = 4 * 1024 * 1024;
  const int fd = nl_socket_get_fd(socket.value().get());
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  return R::success(XfrmEvents(std::make_unique<Impl>(Impl{std::move(socket.value())})));
}

int XfrmEvents::fd() const { return nl_socket_get_fd(impl_->socket.get()); }

Result<std::vector<Event>> XfrmEvents::read() {
  using R = Result<std::vector<Event>>;
  const auto lost = [] {
    return R::failure("XFRM events were lost (event socket overrun): resynchronize with the kernel's SA table",
                      ENOBUFS);
  };
  if (impl_->overflow_pending) {
    impl_->overflow_pending = false;
    return lost();
  }
  std::vector<Event> events;
  detail::WipedBytes buffer(64 * 1024);
  const int descriptor = fd();
  for (;;) {
    const ssize_t length = ::recv(descriptor, buffer.data(), buffer.size(), MSG_DONTWAIT | MSG_TRUNC);
    if (length < 0) {
      const int error_number = errno;
      if (error_number == EINTR) continue;
      if (error_number == EAGAIN || error_number == EWOULDBLOCK) break;
      if (error_number == ENOBUFS) {
        if (events.empty()) return lost();
        impl_->overflow_pending = true;
        break;
      }
      return R::failure("read XFRM events: " + describe_errno(error_number), error_number);
    }
    // A message cut short by the buffer cannot be parsed; skip it.
    if (static_cast<std::size_t>(length) > buffer.size()) continue;
    int remaining = static_cast<int>(length);
    for (auto* header = reinterpret_cast<const nlmsghdr*>(buffer.data()); NLMSG_OK(header, remaining);
         header = NLMSG_NEXT(header, remaining)) {
      auto event = detail::read_event(header);
      if (event && event.value()) events.push_back(std::move(*event.value()));
    }
  }
  return R::success(std::move(events));
}

// ---- Socket options -----------------------------------------------------------

Result<Unit> bypass_socket_policy(int fd, int family) {
  if (family != AF_INET && family != AF_INET6) {
    return Result<Unit>::failure("bypass IPsec on socket " + std::to_string(fd) + ": family must be AF_INET or AF_INET6",
                                 EINVAL);
  }
  xfrm_userpolicy_info policy{};
  policy.action = XFRM_POLICY_ALLOW;
  policy.sel.family = static_cast<std::uint16_t>(family);
  policy.lft.soft_byte_limit = policy.lft.hard_byte_limit = XFRM_INF;
  policy.lft.soft_packet_limit = policy.lft.hard_packet_limit = XFRM_INF;
  const int level = family == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IP;
  const int option = family == AF_INET6 ? IPV6_XFRM_POLICY : IP_XFRM_POLICY;
  for (const std::uint8_t direction : {XFRM_POLICY_IN, XFRM_POLICY_OUT}) {
    policy.dir = direction;
    if (::setsockopt(fd, level, option, &policy, sizeof policy) != 0) {
      const int error_number = errno;
      return Result<Unit>::failure("bypass IPsec on socket " + std::to_string(fd) +
                                       (direction == XFRM_POLICY_IN ? " (inbound)" : " (outbound)") + ": " +
                                       describe_errno(error_number),
                                   error_number);
    }
  }
  return done();
}

Result<Unit> enable_esp_in_udp(int fd) {
  const int type = UDP_ENCAP_ESPINUDP;
  if (::setsockopt(fd, SOL_UDP, UDP_ENCAP, &type, sizeof type) != 0) {
    const int error_number = errno;
    return Result<Unit>::failure("enable ESP-in-UDP on socket " + std::to_string(fd) + ": " +
                                     describe_errno(error_number),
                                 error_number);
  }
  return done();
}

}  // namespace tapsec::kernel::xfrm
