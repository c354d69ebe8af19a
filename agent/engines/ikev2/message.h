// The IKEv2 message codec (RFC 7296 §3, RFC 7383 §2.5): a header and a
// chain of payloads, parsed defensively (every length checked, nothing read
// past the end, unknown non-critical payloads kept, unknown critical ones
// reported) and serialized back. It knows nothing of keys: the SK payload's
// body is carried as opaque bytes and sealed/opened by protection.h.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "agent/engines/ikev2/types.h"

namespace tapsec::ikev2 {

enum class ExchangeType : std::uint8_t {
  IkeSaInit = 34,
  IkeAuth = 35,
  CreateChildSa = 36,
  Informational = 37,
};

enum class PayloadType : std::uint8_t {
  None = 0,
  SecurityAssociation = 33,
  KeyExchange = 34,
  IdInitiator = 35,
  IdResponder = 36,
  Certificate = 37,
  CertificateRequest = 38,
  Authentication = 39,
  Nonce = 40,
  Notify = 41,
  Delete = 42,
  VendorId = 43,
  TsInitiator = 44,
  TsResponder = 45,
  Encrypted = 46,
  Configuration = 47,
  Eap = 48,
  EncryptedFragment = 53,
};

namespace header_flags {
inline constexpr std::uint8_t kInitiator = 0x08;
inline constexpr std::uint8_t kVersion = 0x10;
inline constexpr std::uint8_t kResponse = 0x20;
}  // namespace header_flags

inline constexpr std::size_t kHeaderSize = 28;
inline constexpr std::uint8_t kIkeVersion = 0x20;  // major 2, minor 0

enum class ProtocolId : std::uint8_t { None = 0, Ike = 1, Ah = 2, Esp = 3 };
enum class TransformType : std::uint8_t { Encryption = 1, Prf = 2, Integrity = 3, KeyExchange = 4, Esn = 5 };

// IANA transform IDs tapsec speaks.
namespace encr {
inline constexpr std::uint16_t kAesCbc = 12;
inline constexpr std::uint16_t kAesGcm16 = 20;
inline constexpr std::uint16_t kChaCha20Poly1305 = 28;
}  // namespace encr
namespace prf {
inline constexpr std::uint16_t kHmacSha256 = 5;
inline constexpr std::uint16_t kHmacSha384 = 6;
inline constexpr std::uint16_t kHmacSha512 = 7;
}  // namespace prf
namespace integ {
inline constexpr std::uint16_t kNone = 0;
inline constexpr std::uint16_t kHmacSha256_128 = 12;
inline constexpr std::uint16_t kHmacSha384_192 = 13;
inline constexpr std::uint16_t kHmacSha512_256 = 14;
}  // namespace integ
namespace group {
inline constexpr std::uint16_t kNone = 0;
inline constexpr std::uint16_t kModp2048 = 14;
inline constexpr std::uint16_t kEcp256 = 19;
inline constexpr std::uint16_t kEcp384 = 20;
inline constexpr std::uint16_t kCurve25519 = 31;
}  // namespace group
namespace esn {
inline constexpr std::uint16_t kNo = 0;
inline constexpr std::uint16_t kYes = 1;
}  // namespace esn

namespace id_type {
inline constexpr std::uint8_t kIpv4 = 1;
inline constexpr std::uint8_t kFqdn = 2;
inline constexpr std::uint8_t kRfc822 = 3;
inline constexpr std::uint8_t kIpv6 = 5;
inline constexpr std::uint8_t kDerAsn1Dn = 9;
inline constexpr std::uint8_t kKeyId = 11;
}  // namespace id_type

namespace auth_method {
inline constexpr std::uint8_t kRsaSignature = 1;
inline constexpr std::uint8_t kSharedKey = 2;
inline constexpr std::uint8_t kEcdsaSha256P256 = 9;
inline constexpr std::uint8_t kEcdsaSha384P384 = 10;
inline constexpr std::uint8_t kDigitalSignature = 14;  // RFC 7427
}  // namespace auth_method

namespace cert_encoding {
inline constexpr std::uint8_t kX509Signature = 4;
}

// Notify message types (RFC 7296 §3.10.1 and extensions) tapsec uses.
namespace notify {
// errors (< 16384)
inline constexpr std::uint16_t kUnsupportedCriticalPayload = 1;
inline constexpr std::uint16_t kInvalidIkeSpi = 4;
inline constexpr std::uint16_t kInvalidMajorVersion = 5;
inline constexpr std::uint16_t kInvalidSyntax = 7;
inline constexpr std::uint16_t kInvalidMessageId = 9;
inline constexpr std::uint16_t kInvalidSpi = 11;
inline constexpr std::uint16_t kNoProposalChosen = 14;
inline constexpr std::uint16_t kInvalidKePayload = 17;
inline constexpr std::uint16_t kAuthenticationFailed = 24;
inline constexpr std::uint16_t kSinglePairRequired = 34;
inline constexpr std::uint16_t kNoAdditionalSas = 35;
inline constexpr std::uint16_t kInternalAddressFailure = 36;
inline constexpr std::uint16_t kFailedCpRequired = 37;
inline constexpr std::uint16_t kTsUnacceptable = 38;
inline constexpr std::uint16_t kInvalidSelectors = 39;
inline constexpr std::uint16_t kUnacceptableAddresses = 40;   // RFC 4555
inline constexpr std::uint16_t kUnexpectedNatDetected = 41;   // RFC 4555
inline constexpr std::uint16_t kTemporaryFailure = 43;
inline constexpr std::uint16_t kChildSaNotFound = 44;
// status (>= 16384)
inline constexpr std::uint16_t kInitialContact = 16384;
inline constexpr std::uint16_t kSetWindowSize = 16385;
inline constexpr std::uint16_t kIpcompSupported = 16387;
inline constexpr std::uint16_t kNatDetectionSourceIp = 16388;
inline constexpr std::uint16_t kNatDetectionDestinationIp = 16389;
inline constexpr std::uint16_t kCookie = 16390;
inline constexpr std::uint16_t kUseTransportMode = 16391;
inline constexpr std::uint16_t kRekeySa = 16393;
inline constexpr std::uint16_t kEspTfcPaddingNotSupported = 16394;
inline constexpr std::uint16_t kNonFirstFragmentsAlso = 16395;
inline constexpr std::uint16_t kMobikeSupported = 16396;       // RFC 4555
inline constexpr std::uint16_t kAdditionalIp4Address = 16397;  // RFC 4555
inline constexpr std::uint16_t kAdditionalIp6Address = 16398;  // RFC 4555
inline constexpr std::uint16_t kNoAdditionalAddresses = 16399; // RFC 4555
inline constexpr std::uint16_t kUpdateSaAddresses = 16400;     // RFC 4555
inline constexpr std::uint16_t kCookie2 = 16401;               // RFC 4555
inline constexpr std::uint16_t kNoNatsAllowed = 16402;         // RFC 4555
inline constexpr std::uint16_t kIkeFragmentationSupported = 16430;  // RFC 7383
inline constexpr std::uint16_t kSignatureHashAlgorithms = 16431;    // RFC 7427
}  // namespace notify

struct Transform {
  TransformType type = TransformType::Encryption;
  std::uint16_t id = 0;
  std::optional<std::uint16_t> key_length;  // bits, the Key Length attribute (14)
  bool operator==(const Transform&) const = default;
};

struct Proposal {
  std::uint8_t number = 1;
  ProtocolId protocol = ProtocolId::Ike;
  Bytes spi;  // empty in an initial IKE_SA_INIT, 8 bytes in IKE rekeys, 4 for ESP
  std::vector<Transform> transforms;
  bool operator==(const Proposal&) const = default;
};

struct SecurityAssociationPayload { std::vector<Proposal> proposals; };
struct KeyExchangePayload { std::uint16_t group = 0; Bytes data; };
struct IdentificationPayload { std::uint8_t id_type = 0; Bytes data; };  // IDi or IDr (see Payload::type)
struct CertificatePayload { std::uint8_t encoding = cert_encoding::kX509Signature; Bytes data; };
struct CertificateRequestPayload { std::uint8_t encoding = cert_encoding::kX509Signature; Bytes authorities; };
struct AuthenticationPayload { std::uint8_t method = 0; Bytes data; };
struct NoncePayload { Bytes data; };
struct NotifyPayload {
  ProtocolId protocol = ProtocolId::None;
  Bytes spi;
  std::uint16_t type = 0;
  Bytes data;
  bool is_error() const { return type < 16384; }
};
struct DeletePayload {
  ProtocolId protocol = ProtocolId::Ike;
  std::uint8_t spi_size = 0;
  std::vector<Bytes> spis;  // empty for an IKE SA delete
};
struct VendorIdPayload { Bytes data; };
struct TrafficSelectorPayload { std::vector<TrafficSelector> selectors; };  // TSi or TSr
struct ConfigurationAttribute { std::uint16_t type = 0; Bytes value; };
struct ConfigurationPayload { std::uint8_t config_type = 0; std::vector<ConfigurationAttribute> attributes; };
struct EapPayload { Bytes message; };
// SK: the first inner payload type and the opaque IV || ciphertext || ICV.
struct EncryptedPayload { PayloadType first_inner = PayloadType::None; Bytes body; };
// SKF (RFC 7383): one fragment of an SK payload.
struct EncryptedFragmentPayload {
  std::uint16_t number = 1, total = 1;
  PayloadType first_inner = PayloadType::None;  // meaningful in fragment 1 only
  Bytes body;
};
// A payload type tapsec does not know; kept so a critical one can be refused.
struct UnknownPayload { std::uint8_t type = 0; Bytes data; };

struct Payload {
  PayloadType type = PayloadType::None;  // IDi vs IDr, TSi vs TSr are told apart here
  bool critical = false;
  std::variant<SecurityAssociationPayload, KeyExchangePayload, IdentificationPayload, CertificatePayload,
               CertificateRequestPayload, AuthenticationPayload, NoncePayload, NotifyPayload, DeletePayload,
               VendorIdPayload, TrafficSelectorPayload, ConfigurationPayload, EapPayload, EncryptedPayload,
               EncryptedFragmentPayload, UnknownPayload>
      body;
};

struct Header {
  std::uint64_t initiator_spi = 0;
  std::uint64_t responder_spi = 0;
  PayloadType next_payload = PayloadType::None;
  std::uint8_t version = kIkeVersion;
  ExchangeType exchange = ExchangeType::IkeSaInit;
  std::uint8_t flags = 0;
  std::uint32_t message_id = 0;
  std::uint32_t length = 0;  // filled in by encode

  bool is_response() const { return flags & header_flags::kResponse; }
  bool from_initiator() const { return flags & header_flags::kInitiator; }
};

struct Message {
  Header header;
  std::vector<Payload> payloads;  // for a protected message: the outer payloads, SK/SKF last

  // First payload of a type (nullptr if none); notify(t) finds a Notify by type.
  const Payload* find(PayloadType type) const;
  const NotifyPayload* notify(std::uint16_t notify_type) const;
};

// Why a message or payload chain was refused; notify_type is the error
// notification a responder should answer with (0 = drop silently).
struct DecodeError {
  std::string message;
  std::uint16_t notify_type = notify::kInvalidSyntax;
};

template <typename T>
using Decoded = std::variant<T, DecodeError>;

// Reads just the header (for dispatch by SPI before any other work).
Decoded<Header> decode_header(std::span<const std::uint8_t> datagram);
// Header and outer payload chain. An SK/SKF payload must be last.
Decoded<Message> decode_message(std::span<const std::uint8_t> datagram);
// A payload chain that starts with `first` (the inner payloads of SK).
Decoded<std::vector<Payload>> decode_payloads(PayloadType first, std::span<const std::uint8_t> bytes);

// Serializes payloads, chaining next-payload fields; returns the first type.
PayloadType encode_payloads(const std::vector<Payload>& payloads, Bytes& out);
// Header + payloads with the length field set.
Bytes encode_message(const Header& header, const std::vector<Payload>& payloads);

// Convenience constructors used by the engine and the tests.
Payload make_notify(std::uint16_t type, Bytes data = {}, ProtocolId protocol = ProtocolId::None, Bytes spi = {});
std::string to_string(ExchangeType exchange);
std::string to_string(PayloadType type);
std::string notify_name(std::uint16_t type);  // "NO_PROPOSAL_CHOSEN", "16430" for an unknown one
// One line for logs: "IKE_AUTH request #1 [ SK{IDi AUTH SA TSi TSr} ]".
std::string describe(const Message& message);

}  // namespace tapsec::ikev2
