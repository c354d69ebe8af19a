#include "agent/kernel/netlink_ack.h"

#include <netlink/attr.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>

namespace tapsec::kernel {

std::string extended_ack_text(const nlmsghdr* header) {
  if (!(header->nlmsg_flags & NLM_F_ACK_TLVS)) return {};
  const auto* error = static_cast<const nlmsgerr*>(NLMSG_DATA(header));
  std::size_t offset = sizeof(nlmsgerr);
  // Without NLM_F_CAPPED the whole request is echoed before the attributes.
  if (!(header->nlmsg_flags & NLM_F_CAPPED)) offset += error->msg.nlmsg_len - NLMSG_HDRLEN;
  offset = NLMSG_ALIGN(offset);
  const std::size_t payload = header->nlmsg_len - NLMSG_HDRLEN;
  if (offset >= payload) return {};
  nlattr* attributes[NLMSGERR_ATTR_MAX + 1] = {};
  auto* first = reinterpret_cast<nlattr*>(const_cast<std::uint8_t*>(static_cast<const std::uint8_t*>(NLMSG_DATA(header))) + offset);
  if (nla_parse(attributes, NLMSGERR_ATTR_MAX, first, static_cast<int>(payload - offset), nullptr) < 0) return {};
  const nlattr* text = attributes[NLMSGERR_ATTR_MSG];
  if (!text || nla_len(text) <= 0) return {};
  const char* characters = static_cast<const char*>(nla_data(text));
  return std::string(characters, ::strnlen(characters, static_cast<std::size_t>(nla_len(text))));
}

Acknowledgement read_acknowledgement(const nlmsghdr* header) {
  if (header->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) return {EPROTO, {}};
  const int error = static_cast<const nlmsgerr*>(NLMSG_DATA(header))->error;
  // INT_MIN has no positive counterpart.
  if (error > 0 || error == INT_MIN) return {EPROTO, extended_ack_text(header)};
  return {-error, extended_ack_text(header)};
}

}  // namespace tapsec::kernel
