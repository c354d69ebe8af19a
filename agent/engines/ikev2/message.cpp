#include "agent/engines/ikev2/message.h"

#include <sys/socket.h>

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace tapsec::ikev2 {

namespace {

constexpr std::size_t kGenericHeaderSize = 4;
constexpr std::uint8_t kCriticalBit = 0x80;
constexpr std::uint8_t kMoreProposals = 2;
constexpr std::uint8_t kMoreTransforms = 3;
constexpr std::size_t kProposalHeaderSize = 8;
constexpr std::size_t kTransformHeaderSize = 8;
constexpr std::uint16_t kAttributeFormatTv = 0x8000;
constexpr std::uint16_t kAttributeKeyLength = 14;
constexpr std::uint8_t kTsIpv4AddressRange = 7;
constexpr std::uint8_t kTsIpv6AddressRange = 8;
constexpr std::size_t kTsIpv4Size = 16;
constexpr std::size_t kTsIpv6Size = 40;
constexpr std::size_t kMinNonceSize = 16;  // RFC 7296 §3.9
constexpr std::size_t kMaxNonceSize = 256;
constexpr std::size_t kEapHeaderSize = 4;
constexpr std::size_t kMaxPayloadLength = 0xffff;

// ---- reading ----------------------------------------------------------------

// A bounds-checked cursor: every read first asks whether the bytes are there.
class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> bytes) : bytes_(bytes) {}

  std::size_t remaining() const { return bytes_.size() - offset_; }
  bool empty() const { return remaining() == 0; }

  bool u8(std::uint8_t& value) {
    if (remaining() < 1) return false;
    value = bytes_[offset_++];
    return true;
  }
  bool u16(std::uint16_t& value) {
    if (remaining() < 2) return false;
    value = static_cast<std::uint16_t>(bytes_[offset_] << 8 | bytes_[offset_ + 1]);
    offset_ += 2;
    return true;
  }
  bool u32(std::uint32_t& value) {
    std::uint16_t high = 0, low = 0;
    if (remaining() < 4) return false;
    u16(high);
    u16(low);
    value = static_cast<std::uint32_t>(high) << 16 | low;
    return true;
  }
  bool u64(std::uint64_t& value) {
    std::uint32_t high = 0, low = 0;
    if (remaining() < 8) return false;
    u32(high);
    u32(low);
    value = static_cast<std::uint64_t>(high) << 32 | low;
    return true;
  }
  bool skip(std::size_t count) {
    if (remaining() < count) return false;
    offset_ += count;
    return true;
  }
  bool take(std::size_t count, std::span<const std::uint8_t>& out) {
    if (remaining() < count) return false;
    out = bytes_.subspan(offset_, count);
    offset_ += count;
    return true;
  }
  bool bytes(std::size_t count, Bytes& out) {
    std::span<const std::uint8_t> view;
    if (!take(count, view)) return false;
    out.assign(view.begin(), view.end());
    return true;
  }
  Bytes rest() {
    Bytes out(bytes_.begin() + static_cast<long>(offset_), bytes_.end());
    offset_ = bytes_.size();
    return out;
  }

 private:
  std::span<const std::uint8_t> bytes_;
  std::size_t offset_ = 0;
};

DecodeError syntax_error(std::string message) { return DecodeError{std::move(message), notify::kInvalidSyntax}; }

// ---- names --------------------------------------------------------------------

struct NotifyName {
  std::uint16_t type;
  const char* name;
  const char* short_name;  // for one-line message descriptions
};
constexpr NotifyName kNotifyNames[] = {
    {notify::kUnsupportedCriticalPayload, "UNSUPPORTED_CRITICAL_PAYLOAD", "CRIT"},
    {notify::kInvalidIkeSpi, "INVALID_IKE_SPI", "INVAL_IKE_SPI"},
    {notify::kInvalidMajorVersion, "INVALID_MAJOR_VERSION", "INVAL_MAJOR"},
    {notify::kInvalidSyntax, "INVALID_SYNTAX", "INVAL_SYN"},
    {notify::kInvalidMessageId, "INVALID_MESSAGE_ID", "INVAL_MID"},
    {notify::kInvalidSpi, "INVALID_SPI", "INVAL_SPI"},
    {notify::kNoProposalChosen, "NO_PROPOSAL_CHOSEN", "NO_PROP"},
    {notify::kInvalidKePayload, "INVALID_KE_PAYLOAD", "INVAL_KE"},
    {notify::kAuthenticationFailed, "AUTHENTICATION_FAILED", "AUTH_FAILED"},
    {notify::kSinglePairRequired, "SINGLE_PAIR_REQUIRED", "SINGLE_PAIR"},
    {notify::kNoAdditionalSas, "NO_ADDITIONAL_SAS", "NO_ADD_SAS"},
    {notify::kInternalAddressFailure, "INTERNAL_ADDRESS_FAILURE", "INT_ADDR_FAIL"},
    {notify::kFailedCpRequired, "FAILED_CP_REQUIRED", "FAIL_CP_REQ"},
    {notify::kTsUnacceptable, "TS_UNACCEPTABLE", "TS_UNACCEPT"},
    {notify::kInvalidSelectors, "INVALID_SELECTORS", "INVAL_SEL"},
    {notify::kUnacceptableAddresses, "UNACCEPTABLE_ADDRESSES", "UNACCEPT_ADDR"},
    {notify::kUnexpectedNatDetected, "UNEXPECTED_NAT_DETECTED", "UNEXPECT_NAT"},
    {notify::kTemporaryFailure, "TEMPORARY_FAILURE", "TEMP_FAIL"},
    {notify::kChildSaNotFound, "CHILD_SA_NOT_FOUND", "CHILD_SA_NOT_FOUND"},
    {notify::kInitialContact, "INITIAL_CONTACT", "INIT_CONTACT"},
    {notify::kSetWindowSize, "SET_WINDOW_SIZE", "SET_WINSIZE"},
    {notify::kIpcompSupported, "IPCOMP_SUPPORTED", "IPCOMP_SUP"},
    {notify::kNatDetectionSourceIp, "NAT_DETECTION_SOURCE_IP", "NATD_S_IP"},
    {notify::kNatDetectionDestinationIp, "NAT_DETECTION_DESTINATION_IP", "NATD_D_IP"},
    {notify::kCookie, "COOKIE", "COOKIE"},
    {notify::kUseTransportMode, "USE_TRANSPORT_MODE", "USE_TRANSP"},
    {notify::kRekeySa, "REKEY_SA", "REKEY_SA"},
    {notify::kEspTfcPaddingNotSupported, "ESP_TFC_PADDING_NOT_SUPPORTED", "ESP_TFC_PAD_N"},
    {notify::kNonFirstFragmentsAlso, "NON_FIRST_FRAGMENTS_ALSO", "NON_FIRST_FRAG"},
    {notify::kMobikeSupported, "MOBIKE_SUPPORTED", "MOBIKE_SUP"},
    {notify::kAdditionalIp4Address, "ADDITIONAL_IP4_ADDRESS", "ADD_4_ADDR"},
    {notify::kAdditionalIp6Address, "ADDITIONAL_IP6_ADDRESS", "ADD_6_ADDR"},
    {notify::kNoAdditionalAddresses, "NO_ADDITIONAL_ADDRESSES", "NO_ADD_ADDR"},
    {notify::kUpdateSaAddresses, "UPDATE_SA_ADDRESSES", "UPD_SA_ADDR"},
    {notify::kCookie2, "COOKIE2", "COOKIE2"},
    {notify::kNoNatsAllowed, "NO_NATS_ALLOWED", "NO_NATS"},
    {notify::kIkeFragmentationSupported, "IKE_FRAGMENTATION_SUPPORTED", "FRAG_SUP"},
    {notify::kSignatureHashAlgorithms, "SIGNATURE_HASH_ALGORITHMS", "HASH_ALG"},
};

const NotifyName* find_notify_name(std::uint16_t type) {
  for (const auto& entry : kNotifyNames)
    if (entry.type == type) return &entry;
  return nullptr;
}

// ---- payload bodies: decoding -------------------------------------------------

using BodyResult = std::variant<decltype(Payload::body), DecodeError>;

// Transform attributes: only Key Length (TV) is defined for the transforms
// tapsec speaks; anything else makes the proposal unusable, so it is refused
// rather than silently dropped.
std::optional<DecodeError> decode_transform_attributes(Reader attributes, Transform& transform) {
  while (!attributes.empty()) {
    std::uint16_t type_field = 0, value = 0;
    if (!attributes.u16(type_field) || !attributes.u16(value))
      return syntax_error("transform attribute truncated");
    const std::uint16_t type = type_field & ~kAttributeFormatTv;
    if (!(type_field & kAttributeFormatTv)) {
      // TLV: `value` is a length; skip it for the error message's sake.
      return syntax_error("unsupported TLV transform attribute type " + std::to_string(type));
    }
    if (type != kAttributeKeyLength)
      return syntax_error("unsupported transform attribute type " + std::to_string(type));
    if (transform.key_length) return syntax_error("repeated Key Length attribute");
    transform.key_length = value;
  }
  return std::nullopt;
}

std::optional<DecodeError> decode_proposal(Reader& reader, std::uint8_t previous_number, bool& last, Proposal& proposal) {
  std::uint8_t more = 0, reserved = 0, protocol = 0, spi_size = 0, transform_count = 0;
  std::uint16_t length = 0;
  if (!reader.u8(more) || !reader.u8(reserved) || !reader.u16(length))
    return syntax_error("proposal header truncated");
  if (more != 0 && more != kMoreProposals) return syntax_error("bad last-proposal value " + std::to_string(more));
  if (length < kProposalHeaderSize) return syntax_error("proposal length " + std::to_string(length) + " too short");
  std::span<const std::uint8_t> body_view;
  if (!reader.take(length - kGenericHeaderSize, body_view)) return syntax_error("proposal length exceeds its SA");
  last = more == 0;
  if (last != reader.empty())
    return syntax_error(last ? "data after the last proposal" : "proposal says more follow but none does");

  Reader body(body_view);
  body.u8(proposal.number);
  body.u8(protocol);
  body.u8(spi_size);
  body.u8(transform_count);
  const bool number_ok = previous_number == 0 ? proposal.number == 1
                                              : proposal.number == previous_number || proposal.number == previous_number + 1;
  if (!number_ok) return syntax_error("proposal number " + std::to_string(proposal.number) + " out of sequence");
  if (protocol == 0) return syntax_error("proposal with protocol ID 0");
  proposal.protocol = static_cast<ProtocolId>(protocol);
  if (!body.bytes(spi_size, proposal.spi)) return syntax_error("proposal SPI exceeds the proposal");

  for (unsigned index = 0; index < transform_count; ++index) {
    const bool should_be_last = index + 1 == transform_count;
    std::uint8_t transform_more = 0, transform_type = 0;
    std::uint16_t transform_length = 0, transform_id = 0;
    if (!body.u8(transform_more) || !body.skip(1) || !body.u16(transform_length))
      return syntax_error("transform header truncated");
    if (transform_more != (should_be_last ? 0 : kMoreTransforms))
      return syntax_error("bad last-transform value " + std::to_string(transform_more));
    if (transform_length < kTransformHeaderSize)
      return syntax_error("transform length " + std::to_string(transform_length) + " too short");
    std::span<const std::uint8_t> transform_view;
    if (!body.take(transform_length - kGenericHeaderSize, transform_view))
      return syntax_error("transform length exceeds its proposal");
    Reader transform_reader(transform_view);
    transform_reader.u8(transform_type);
    transform_reader.skip(1);
    transform_reader.u16(transform_id);
    Transform transform;
    transform.type = static_cast<TransformType>(transform_type);
    transform.id = transform_id;
    if (auto error = decode_transform_attributes(transform_reader, transform)) return error;
    proposal.transforms.push_back(transform);
  }
  if (!body.empty()) return syntax_error("proposal has data after its " + std::to_string(transform_count) + " transforms");
  return std::nullopt;
}

BodyResult decode_security_association(Reader body) {
  SecurityAssociationPayload sa;
  if (body.empty()) return syntax_error("SA payload without proposals");
  bool last = false;
  std::uint8_t previous_number = 0;
  while (!last) {
    Proposal proposal;
    if (auto error = decode_proposal(body, previous_number, last, proposal)) return *error;
    previous_number = proposal.number;
    sa.proposals.push_back(std::move(proposal));
  }
  return sa;
}

std::optional<DecodeError> decode_address(Reader& reader, int family, IpAddress& address) {
  address = IpAddress::any(family);
  std::span<const std::uint8_t> view;
  if (!reader.take(address.size(), view)) return syntax_error("traffic selector address truncated");
  std::copy(view.begin(), view.end(), address.bytes.begin());
  return std::nullopt;
}

BodyResult decode_traffic_selectors(Reader body) {
  TrafficSelectorPayload payload;
  std::uint8_t count = 0;
  body.u8(count);
  body.skip(3);
  for (unsigned index = 0; index < count; ++index) {
    std::uint8_t ts_type = 0, protocol = 0;
    std::uint16_t length = 0;
    if (!body.u8(ts_type) || !body.u8(protocol) || !body.u16(length))
      return syntax_error("traffic selector header truncated");
    int family = 0;
    if (ts_type == kTsIpv4AddressRange && length == kTsIpv4Size) {
      family = AF_INET;
    } else if (ts_type == kTsIpv6AddressRange && length == kTsIpv6Size) {
      family = AF_INET6;
    } else {
      return syntax_error("traffic selector type " + std::to_string(ts_type) + " with length " + std::to_string(length));
    }
    TrafficSelector selector;
    selector.ip_protocol = protocol;
    if (!body.u16(selector.start_port) || !body.u16(selector.end_port))
      return syntax_error("traffic selector ports truncated");
    if (auto error = decode_address(body, family, selector.start)) return *error;
    if (auto error = decode_address(body, family, selector.end)) return *error;
    if (selector.start.bytes > selector.end.bytes) return syntax_error("traffic selector start address after end address");
    // 65535..0 is RFC 7296's OPAQUE port range; any other inversion is invalid.
    const bool opaque_ports = selector.start_port == 65535 && selector.end_port == 0;
    if (selector.start_port > selector.end_port && !opaque_ports)
      return syntax_error("traffic selector start port after end port");
    payload.selectors.push_back(selector);
  }
  if (!body.empty()) return syntax_error("traffic selector payload has data after its selectors");
  return payload;
}

BodyResult decode_configuration(Reader body) {
  ConfigurationPayload payload;
  body.u8(payload.config_type);
  body.skip(3);
  while (!body.empty()) {
    ConfigurationAttribute attribute;
    std::uint16_t type = 0, length = 0;
    if (!body.u16(type) || !body.u16(length)) return syntax_error("configuration attribute header truncated");
    attribute.type = type & 0x7fff;  // the top bit is reserved
    if (!body.bytes(length, attribute.value)) return syntax_error("configuration attribute exceeds its payload");
    payload.attributes.push_back(std::move(attribute));
  }
  return payload;
}

BodyResult decode_delete(Reader body) {
  DeletePayload payload;
  std::uint8_t protocol = 0;
  std::uint16_t count = 0;
  body.u8(protocol);
  body.u8(payload.spi_size);
  body.u16(count);
  payload.protocol = static_cast<ProtocolId>(protocol);
  if (body.remaining() != static_cast<std::size_t>(payload.spi_size) * count)
    return syntax_error("delete payload length does not match its " + std::to_string(count) + " SPIs");
  for (unsigned index = 0; index < count; ++index) {
    Bytes spi;
    body.bytes(payload.spi_size, spi);
    payload.spis.push_back(std::move(spi));
  }
  return payload;
}

// The fixed part every payload type needs before its variable data.
std::size_t minimum_body_size(PayloadType type) {
  switch (type) {
    case PayloadType::KeyExchange:
    case PayloadType::IdInitiator:
    case PayloadType::IdResponder:
    case PayloadType::Authentication:
    case PayloadType::Notify:
    case PayloadType::Delete:
    case PayloadType::TsInitiator:
    case PayloadType::TsResponder:
    case PayloadType::Configuration:
    case PayloadType::EncryptedFragment:
      return 4;
    case PayloadType::Certificate:
    case PayloadType::CertificateRequest:
      return 1;
    case PayloadType::Nonce:
      return kMinNonceSize;
    case PayloadType::Eap:
      return kEapHeaderSize;
    default:
      return 0;
  }
}

bool is_known(std::uint8_t type) {
  return (type >= static_cast<std::uint8_t>(PayloadType::SecurityAssociation) &&
          type <= static_cast<std::uint8_t>(PayloadType::Eap)) ||
         type == static_cast<std::uint8_t>(PayloadType::EncryptedFragment);
}

// `next_field` is the payload header's next-payload byte: for SK/SKF it
// names the first inner payload instead.
BodyResult decode_body(PayloadType type, std::uint8_t next_field, Reader body) {
  if (body.remaining() < minimum_body_size(type))
    return syntax_error(to_string(type) + " payload body of " + std::to_string(body.remaining()) + " bytes is too short");
  switch (type) {
    case PayloadType::SecurityAssociation:
      return decode_security_association(body);
    case PayloadType::KeyExchange: {
      KeyExchangePayload payload;
      body.u16(payload.group);
      body.skip(2);
      payload.data = body.rest();
      return payload;
    }
    case PayloadType::IdInitiator:
    case PayloadType::IdResponder: {
      IdentificationPayload payload;
      body.u8(payload.id_type);
      body.skip(3);
      payload.data = body.rest();
      return payload;
    }
    case PayloadType::Certificate: {
      CertificatePayload payload;
      body.u8(payload.encoding);
      payload.data = body.rest();
      return payload;
    }
    case PayloadType::CertificateRequest: {
      CertificateRequestPayload payload;
      body.u8(payload.encoding);
      payload.authorities = body.rest();
      return payload;
    }
    case PayloadType::Authentication: {
      AuthenticationPayload payload;
      body.u8(payload.method);
      body.skip(3);
      payload.data = body.rest();
      return payload;
    }
    case PayloadType::Nonce:
      if (body.remaining() > kMaxNonceSize) return syntax_error("nonce longer than 256 bytes");
      return NoncePayload{body.rest()};
    case PayloadType::Notify: {
      NotifyPayload payload;
      std::uint8_t protocol = 0, spi_size = 0;
      body.u8(protocol);
      body.u8(spi_size);
      body.u16(payload.type);
      payload.protocol = static_cast<ProtocolId>(protocol);
      if (!body.bytes(spi_size, payload.spi)) return syntax_error("notify SPI exceeds its payload");
      payload.data = body.rest();
      return payload;
    }
    case PayloadType::Delete:
      return decode_delete(body);
    case PayloadType::VendorId:
      return VendorIdPayload{body.rest()};
    case PayloadType::TsInitiator:
    case PayloadType::TsResponder:
      return decode_traffic_selectors(body);
    case PayloadType::Encrypted:
      return EncryptedPayload{static_cast<PayloadType>(next_field), body.rest()};
    case PayloadType::Configuration:
      return decode_configuration(body);
    case PayloadType::Eap: {
      Reader header = body;
      std::uint16_t eap_length = 0;
      header.skip(2);
      header.u16(eap_length);
      if (eap_length != body.remaining()) return syntax_error("EAP length field disagrees with the payload length");
      return EapPayload{body.rest()};
    }
    case PayloadType::EncryptedFragment: {
      EncryptedFragmentPayload payload;
      body.u16(payload.number);
      body.u16(payload.total);
      if (payload.number == 0 || payload.number > payload.total)
        return syntax_error("fragment " + std::to_string(payload.number) + " of " + std::to_string(payload.total));
      payload.first_inner = static_cast<PayloadType>(next_field);
      payload.body = body.rest();
      return payload;
    }
    default:
      return UnknownPayload{static_cast<std::uint8_t>(type), body.rest()};
  }
}

Decoded<std::vector<Payload>> decode_chain(PayloadType first, Reader reader) {
  std::vector<Payload> payloads;
  std::uint8_t next = static_cast<std::uint8_t>(first);
  while (next != 0) {
    const std::uint8_t type = next;
    std::uint8_t flags = 0;
    std::uint16_t length = 0;
    if (!reader.u8(next) || !reader.u8(flags) || !reader.u16(length))
      return syntax_error("payload header of " + to_string(static_cast<PayloadType>(type)) + " truncated");
    if (length < kGenericHeaderSize) return syntax_error("payload length " + std::to_string(length) + " below 4");
    std::span<const std::uint8_t> body_view;
    if (!reader.take(length - kGenericHeaderSize, body_view))
      return syntax_error(to_string(static_cast<PayloadType>(type)) + " payload length " + std::to_string(length) +
                          " exceeds the message");

    Payload payload;
    payload.type = static_cast<PayloadType>(type);
    payload.critical = flags & kCriticalBit;
    if (!is_known(type) && payload.critical)
      return DecodeError{"unsupported critical payload type " + std::to_string(type), notify::kUnsupportedCriticalPayload};

    auto body = decode_body(payload.type, next, Reader(body_view));
    if (auto* error = std::get_if<DecodeError>(&body)) return std::move(*error);
    payload.body = std::move(std::get<0>(body));
    payloads.push_back(std::move(payload));

    if (type == static_cast<std::uint8_t>(PayloadType::Encrypted) ||
        type == static_cast<std::uint8_t>(PayloadType::EncryptedFragment)) {
      // Its next-payload field names the first inner payload; it ends the chain.
      if (!reader.empty()) return syntax_error("payloads after the encrypted payload");
      return payloads;
    }
  }
  if (!reader.empty()) return syntax_error(std::to_string(reader.remaining()) + " bytes after the last payload");
  return payloads;
}

// ---- encoding -----------------------------------------------------------------

void put_u8(Bytes& out, std::uint8_t value) { out.push_back(value); }
void put_u16(Bytes& out, std::uint16_t value) {
  out.push_back(static_cast<std::uint8_t>(value >> 8));
  out.push_back(static_cast<std::uint8_t>(value));
}
void put_u32(Bytes& out, std::uint32_t value) {
  put_u16(out, static_cast<std::uint16_t>(value >> 16));
  put_u16(out, static_cast<std::uint16_t>(value));
}
void put_u64(Bytes& out, std::uint64_t value) {
  put_u32(out, static_cast<std::uint32_t>(value >> 32));
  put_u32(out, static_cast<std::uint32_t>(value));
}
void put_bytes(Bytes& out, std::span<const std::uint8_t> bytes) { out.insert(out.end(), bytes.begin(), bytes.end()); }
void put_zeros(Bytes& out, std::size_t count) { out.insert(out.end(), count, 0); }

// Writes the 16-bit length of the structure that began at `start`.
void patch_length(Bytes& out, std::size_t start, std::size_t length_offset) {
  const std::size_t length = out.size() - start;
  if (length > kMaxPayloadLength) throw std::length_error("IKEv2 structure longer than 65535 bytes");
  out[start + length_offset] = static_cast<std::uint8_t>(length >> 8);
  out[start + length_offset + 1] = static_cast<std::uint8_t>(length);
}

void encode_security_association(const SecurityAssociationPayload& sa, Bytes& out) {
  for (std::size_t p = 0; p < sa.proposals.size(); ++p) {
    const Proposal& proposal = sa.proposals[p];
    const std::size_t proposal_start = out.size();
    put_u8(out, p + 1 == sa.proposals.size() ? 0 : kMoreProposals);
    put_u8(out, 0);
    put_u16(out, 0);
    put_u8(out, proposal.number);
    put_u8(out, static_cast<std::uint8_t>(proposal.protocol));
    put_u8(out, static_cast<std::uint8_t>(proposal.spi.size()));
    put_u8(out, static_cast<std::uint8_t>(proposal.transforms.size()));
    put_bytes(out, proposal.spi);
    for (std::size_t t = 0; t < proposal.transforms.size(); ++t) {
      const Transform& transform = proposal.transforms[t];
      const std::size_t transform_start = out.size();
      put_u8(out, t + 1 == proposal.transforms.size() ? 0 : kMoreTransforms);
      put_u8(out, 0);
      put_u16(out, 0);
      put_u8(out, static_cast<std::uint8_t>(transform.type));
      put_u8(out, 0);
      put_u16(out, transform.id);
      if (transform.key_length) {
        put_u16(out, kAttributeFormatTv | kAttributeKeyLength);
        put_u16(out, *transform.key_length);
      }
      patch_length(out, transform_start, 2);
    }
    patch_length(out, proposal_start, 2);
  }
}

void encode_traffic_selectors(const TrafficSelectorPayload& payload, Bytes& out) {
  put_u8(out, static_cast<std::uint8_t>(payload.selectors.size()));
  put_zeros(out, 3);
  for (const TrafficSelector& selector : payload.selectors) {
    const bool v6 = selector.start.family == AF_INET6;
    put_u8(out, v6 ? kTsIpv6AddressRange : kTsIpv4AddressRange);
    put_u8(out, selector.ip_protocol);
    put_u16(out, static_cast<std::uint16_t>(v6 ? kTsIpv6Size : kTsIpv4Size));
    put_u16(out, selector.start_port);
    put_u16(out, selector.end_port);
    const std::size_t address_size = v6 ? 16 : 4;
    put_bytes(out, std::span(selector.start.bytes).first(address_size));
    put_bytes(out, std::span(selector.end.bytes).first(address_size));
  }
}

// The payload-specific part; returns the value for the next-payload field
// when the body overrides it (SK and SKF name their first inner payload).
std::optional<PayloadType> encode_body(const Payload& payload, Bytes& out) {
  std::optional<PayloadType> next_override;
  std::visit(
      [&](const auto& body) {
        using Body = std::decay_t<decltype(body)>;
        if constexpr (std::is_same_v<Body, SecurityAssociationPayload>) {
          encode_security_association(body, out);
        } else if constexpr (std::is_same_v<Body, KeyExchangePayload>) {
          put_u16(out, body.group);
          put_u16(out, 0);
          put_bytes(out, body.data);
        } else if constexpr (std::is_same_v<Body, IdentificationPayload>) {
          put_u8(out, body.id_type);
          put_zeros(out, 3);
          put_bytes(out, body.data);
        } else if constexpr (std::is_same_v<Body, CertificatePayload>) {
          put_u8(out, body.encoding);
          put_bytes(out, body.data);
        } else if constexpr (std::is_same_v<Body, CertificateRequestPayload>) {
          put_u8(out, body.encoding);
          put_bytes(out, body.authorities);
        } else if constexpr (std::is_same_v<Body, AuthenticationPayload>) {
          put_u8(out, body.method);
          put_zeros(out, 3);
          put_bytes(out, body.data);
        } else if constexpr (std::is_same_v<Body, NoncePayload> || std::is_same_v<Body, VendorIdPayload>) {
          put_bytes(out, body.data);
        } else if constexpr (std::is_same_v<Body, NotifyPayload>) {
          put_u8(out, static_cast<std::uint8_t>(body.protocol));
          put_u8(out, static_cast<std::uint8_t>(body.spi.size()));
          put_u16(out, body.type);
          put_bytes(out, body.spi);
          put_bytes(out, body.data);
        } else if constexpr (std::is_same_v<Body, DeletePayload>) {
          put_u8(out, static_cast<std::uint8_t>(body.protocol));
          put_u8(out, body.spi_size);
          put_u16(out, static_cast<std::uint16_t>(body.spis.size()));
          for (const Bytes& spi : body.spis) put_bytes(out, spi);
        } else if constexpr (std::is_same_v<Body, TrafficSelectorPayload>) {
          encode_traffic_selectors(body, out);
        } else if constexpr (std::is_same_v<Body, ConfigurationPayload>) {
          put_u8(out, body.config_type);
          put_zeros(out, 3);
          for (const ConfigurationAttribute& attribute : body.attributes) {
            // The attribute length counts only the value.
            if (attribute.value.size() > kMaxPayloadLength)
              throw std::length_error("configuration attribute longer than 65535 bytes");
            put_u16(out, attribute.type & 0x7fff);
            put_u16(out, static_cast<std::uint16_t>(attribute.value.size()));
            put_bytes(out, attribute.value);
          }
        } else if constexpr (std::is_same_v<Body, EapPayload>) {
          put_bytes(out, body.message);
        } else if constexpr (std::is_same_v<Body, EncryptedPayload>) {
          next_override = body.first_inner;
          put_bytes(out, body.body);
        } else if constexpr (std::is_same_v<Body, EncryptedFragmentPayload>) {
          next_override = body.first_inner;
          put_u16(out, body.number);
          put_u16(out, body.total);
          put_bytes(out, body.body);
        } else if constexpr (std::is_same_v<Body, UnknownPayload>) {
          put_bytes(out, body.data);
        }
      },
      payload.body);
  return next_override;
}

std::uint8_t wire_type(const Payload& payload) {
  if (const auto* unknown = std::get_if<UnknownPayload>(&payload.body)) return unknown->type;
  return static_cast<std::uint8_t>(payload.type);
}

std::string short_name(const Payload& payload) {
  if (const auto* notify = std::get_if<NotifyPayload>(&payload.body)) {
    const NotifyName* name = find_notify_name(notify->type);
    return "N(" + (name ? std::string(name->short_name) : std::to_string(notify->type)) + ")";
  }
  if (const auto* fragment = std::get_if<EncryptedFragmentPayload>(&payload.body))
    return "SKF(" + std::to_string(fragment->number) + "/" + std::to_string(fragment->total) + ")";
  return to_string(static_cast<PayloadType>(wire_type(payload)));
}

}  // namespace

// ---- public API -----------------------------------------------------------------

const Payload* Message::find(PayloadType type) const {
  for (const Payload& payload : payloads)
    if (payload.type == type) return &payload;
  return nullptr;
}

const NotifyPayload* Message::notify(std::uint16_t notify_type) const {
  for (const Payload& payload : payloads) {
    if (payload.type != PayloadType::Notify) continue;
    if (const auto* body = std::get_if<NotifyPayload>(&payload.body); body && body->type == notify_type) return body;
  }
  return nullptr;
}

Decoded<Header> decode_header(std::span<const std::uint8_t> datagram) {
  // Too short to hold SPIs: nobody to answer.
  if (datagram.size() < kHeaderSize)
    return DecodeError{"datagram of " + std::to_string(datagram.size()) + " bytes is shorter than the IKE header", 0};
  Reader reader(datagram);
  Header header;
  std::uint8_t next = 0, exchange = 0;
  reader.u64(header.initiator_spi);
  reader.u64(header.responder_spi);
  reader.u8(next);
  reader.u8(header.version);
  reader.u8(exchange);
  reader.u8(header.flags);
  reader.u32(header.message_id);
  reader.u32(header.length);
  header.next_payload = static_cast<PayloadType>(next);
  header.exchange = static_cast<ExchangeType>(exchange);
  if ((header.version >> 4) != (kIkeVersion >> 4))
    return DecodeError{"IKE major version " + std::to_string(header.version >> 4), notify::kInvalidMajorVersion};
  if (header.length != datagram.size())
    return syntax_error("header length " + std::to_string(header.length) + " but the datagram has " +
                        std::to_string(datagram.size()) + " bytes");
  return header;
}

Decoded<Message> decode_message(std::span<const std::uint8_t> datagram) {
  auto header = decode_header(datagram);
  if (auto* error = std::get_if<DecodeError>(&header)) return std::move(*error);
  Message message;
  message.header = std::get<Header>(header);
  auto payloads = decode_chain(message.header.next_payload, Reader(datagram.subspan(kHeaderSize)));
  if (auto* error = std::get_if<DecodeError>(&payloads)) return std::move(*error);
  message.payloads = std::move(std::get<std::vector<Payload>>(payloads));
  return message;
}

Decoded<std::vector<Payload>> decode_payloads(PayloadType first, std::span<const std::uint8_t> bytes) {
  return decode_chain(first, Reader(bytes));
}

PayloadType encode_payloads(const std::vector<Payload>& payloads, Bytes& out) {
  for (std::size_t index = 0; index < payloads.size(); ++index) {
    const std::size_t start = out.size();
    const std::uint8_t chained_next = index + 1 < payloads.size() ? wire_type(payloads[index + 1]) : 0;
    put_u8(out, chained_next);
    put_u8(out, payloads[index].critical ? kCriticalBit : 0);
    put_u16(out, 0);
    if (const auto next_override = encode_body(payloads[index], out))
      out[start] = static_cast<std::uint8_t>(*next_override);
    patch_length(out, start, 2);
  }
  return payloads.empty() ? PayloadType::None : static_cast<PayloadType>(wire_type(payloads.front()));
}

Bytes encode_message(const Header& header, const std::vector<Payload>& payloads) {
  Bytes out;
  put_u64(out, header.initiator_spi);
  put_u64(out, header.responder_spi);
  put_u8(out, 0);  // next payload, known once the payloads are written
  put_u8(out, header.version);
  put_u8(out, static_cast<std::uint8_t>(header.exchange));
  put_u8(out, header.flags);
  put_u32(out, header.message_id);
  put_u32(out, 0);
  out[16] = static_cast<std::uint8_t>(encode_payloads(payloads, out));
  const auto length = static_cast<std::uint32_t>(out.size());
  for (int i = 0; i < 4; ++i) out[24 + i] = static_cast<std::uint8_t>(length >> (24 - 8 * i));
  return out;
}

Payload make_notify(std::uint16_t type, Bytes data, ProtocolId protocol, Bytes spi) {
  Payload payload;
  payload.type = PayloadType::Notify;
  payload.body = NotifyPayload{protocol, std::move(spi), type, std::move(data)};
  return payload;
}

std::string to_string(ExchangeType exchange) {
  switch (exchange) {
    case ExchangeType::IkeSaInit: return "IKE_SA_INIT";
    case ExchangeType::IkeAuth: return "IKE_AUTH";
    case ExchangeType::CreateChildSa: return "CREATE_CHILD_SA";
    case ExchangeType::Informational: return "INFORMATIONAL";
  }
  return "EXCHANGE_" + std::to_string(static_cast<unsigned>(exchange));
}

std::string to_string(PayloadType type) {
  switch (type) {
    case PayloadType::None: return "NONE";
    case PayloadType::SecurityAssociation: return "SA";
    case PayloadType::KeyExchange: return "KE";
    case PayloadType::IdInitiator: return "IDi";
    case PayloadType::IdResponder: return "IDr";
    case PayloadType::Certificate: return "CERT";
    case PayloadType::CertificateRequest: return "CERTREQ";
    case PayloadType::Authentication: return "AUTH";
    case PayloadType::Nonce: return "No";
    case PayloadType::Notify: return "N";
    case PayloadType::Delete: return "D";
    case PayloadType::VendorId: return "V";
    case PayloadType::TsInitiator: return "TSi";
    case PayloadType::TsResponder: return "TSr";
    case PayloadType::Encrypted: return "SK";
    case PayloadType::Configuration: return "CP";
    case PayloadType::Eap: return "EAP";
    case PayloadType::EncryptedFragment: return "SKF";
  }
  return "PAYLOAD_" + std::to_string(static_cast<unsigned>(type));
}

std::string notify_name(std::uint16_t type) {
  if (const NotifyName* name = find_notify_name(type)) return name->name;
  return std::to_string(type);
}

std::string describe(const Message& message) {
  std::string line = to_string(message.header.exchange);
  line += message.header.is_response() ? " response #" : " request #";
  line += std::to_string(message.header.message_id);
  line += " [";
  for (const Payload& payload : message.payloads) line += " " + short_name(payload);
  line += " ]";
  return line;
}

}  // namespace tapsec::ikev2
