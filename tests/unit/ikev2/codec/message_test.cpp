// The IKEv2 message codec: exact RFC 7296 bytes, round trips of every
// payload, and refusal of every malformed input with the right notify.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

#include "agent/engines/ikev2/message.h"

namespace tapsec::ikev2 {
namespace {

Bytes repeated(std::uint8_t value, std::size_t count) { return Bytes(count, value); }

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

Payload payload(PayloadType type, decltype(Payload::body) body, bool critical = false) {
  Payload p;
  p.type = type;
  p.critical = critical;
  p.body = std::move(body);
  return p;
}

Message decode_ok(const Bytes& bytes) {
  auto decoded = decode_message(bytes);
  if (auto* error = std::get_if<DecodeError>(&decoded)) {
    ADD_FAILURE() << "refused: " << error->message;
    return {};
  }
  return std::get<Message>(decoded);
}

DecodeError decode_refused(const Bytes& bytes) {
  auto decoded = decode_message(bytes);
  if (!std::holds_alternative<DecodeError>(decoded)) {
    ADD_FAILURE() << "accepted a malformed message";
    return {};
  }
  return std::get<DecodeError>(decoded);
}

// ---- the hand-built IKE_SA_INIT request ----------------------------------------

Header sa_init_header() {
  Header header;
  header.initiator_spi = 0x0102030405060708;
  header.responder_spi = 0;
  header.exchange = ExchangeType::IkeSaInit;
  header.flags = header_flags::kInitiator;
  header.message_id = 0;
  return header;
}

std::vector<Payload> sa_init_payloads() {
  Proposal proposal;
  proposal.number = 1;
  proposal.protocol = ProtocolId::Ike;
  proposal.transforms = {
      {TransformType::Encryption, encr::kAesCbc, 128},
      {TransformType::Integrity, integ::kHmacSha256_128, std::nullopt},
      {TransformType::Prf, prf::kHmacSha256, std::nullopt},
      {TransformType::KeyExchange, group::kEcp256, std::nullopt},
  };
  return {
      payload(PayloadType::SecurityAssociation, SecurityAssociationPayload{{proposal}}),
      payload(PayloadType::KeyExchange, KeyExchangePayload{group::kEcp256, {0xaa, 0xbb, 0xcc, 0xdd}}),
      payload(PayloadType::Nonce, NoncePayload{repeated(0x11, 16)}),
      make_notify(notify::kNatDetectionSourceIp, repeated(0x22, 20)),
      make_notify(notify::kIkeFragmentationSupported),
  };
}

// The same message written out by hand from RFC 7296 §3.1-§3.10.
Bytes sa_init_wire() {
  return concat({
      // IKE header: SPIi, SPIr, next SA(33), version 2.0, IKE_SA_INIT(34),
      // flags Initiator, message ID 0, length 144.
      {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0},
      {33, 0x20, 34, 0x08, 0, 0, 0, 0, 0, 0, 0, 144},
      // SA: next KE(34), length 48.
      {34, 0, 0, 48},
      // Proposal: last(0), length 44, #1, IKE, SPI size 0, 4 transforms.
      {0, 0, 0, 44, 1, 1, 0, 4},
      // ENCR AES-CBC with Key Length 128 (TV attribute 0x800e).
      {3, 0, 0, 12, 1, 0, 0, 12, 0x80, 0x0e, 0x00, 0x80},
      // INTEG HMAC-SHA2-256-128, PRF HMAC-SHA2-256, KE group 19 (last).
      {3, 0, 0, 8, 3, 0, 0, 12},
      {3, 0, 0, 8, 2, 0, 0, 5},
      {0, 0, 0, 8, 4, 0, 0, 19},
      // KE: next Nonce(40), length 12, group 19, reserved, data.
      {40, 0, 0, 12, 0, 19, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd},
      // Nonce: next N(41), length 20.
      {41, 0, 0, 20},
      repeated(0x11, 16),
      // N(NAT_DETECTION_SOURCE_IP = 16388 = 0x4004): next N, length 28.
      {41, 0, 0, 28, 0, 0, 0x40, 0x04},
      repeated(0x22, 20),
      // N(IKE_FRAGMENTATION_SUPPORTED = 16430 = 0x402e): last, length 8.
      {0, 0, 0, 8, 0, 0, 0x40, 0x2e},
  });
}

TEST(Encode, IkeSaInitMatchesTheRfcLayout) {
  const Bytes wire = sa_init_wire();
  ASSERT_EQ(wire.size(), 144u);
  EXPECT_EQ(encode_message(sa_init_header(), sa_init_payloads()), wire);
}

TEST(Decode, IkeSaInitFromTheRfcLayout) {
  const Message message = decode_ok(sa_init_wire());
  EXPECT_EQ(message.header.initiator_spi, 0x0102030405060708u);
  EXPECT_EQ(message.header.responder_spi, 0u);
  EXPECT_EQ(message.header.next_payload, PayloadType::SecurityAssociation);
  EXPECT_EQ(message.header.version, kIkeVersion);
  EXPECT_EQ(message.header.exchange, ExchangeType::IkeSaInit);
  EXPECT_TRUE(message.header.from_initiator());
  EXPECT_FALSE(message.header.is_response());
  EXPECT_EQ(message.header.length, 144u);
  ASSERT_EQ(message.payloads.size(), 5u);

  const auto* sa = message.find(PayloadType::SecurityAssociation);
  ASSERT_NE(sa, nullptr);
  const auto& proposals = std::get<SecurityAssociationPayload>(sa->body).proposals;
  ASSERT_EQ(proposals.size(), 1u);
  EXPECT_EQ(proposals[0], std::get<SecurityAssociationPayload>(sa_init_payloads()[0].body).proposals[0]);
  EXPECT_EQ(proposals[0].transforms[0].key_length, 128);
  EXPECT_FALSE(proposals[0].transforms[1].key_length);

  const auto* ke = message.find(PayloadType::KeyExchange);
  ASSERT_NE(ke, nullptr);
  EXPECT_EQ(std::get<KeyExchangePayload>(ke->body).group, group::kEcp256);
  EXPECT_EQ(std::get<KeyExchangePayload>(ke->body).data, (Bytes{0xaa, 0xbb, 0xcc, 0xdd}));

  const auto* natd = message.notify(notify::kNatDetectionSourceIp);
  ASSERT_NE(natd, nullptr);
  EXPECT_EQ(natd->data, repeated(0x22, 20));
  EXPECT_FALSE(natd->is_error());
  EXPECT_NE(message.notify(notify::kIkeFragmentationSupported), nullptr);
  EXPECT_EQ(message.notify(notify::kCookie), nullptr);
  EXPECT_EQ(message.find(PayloadType::Encrypted), nullptr);

  EXPECT_EQ(describe(message), "IKE_SA_INIT request #0 [ SA KE No N(NATD_S_IP) N(FRAG_SUP) ]");
  auto header = decode_header(sa_init_wire());
  ASSERT_TRUE(std::holds_alternative<Header>(header));
  EXPECT_EQ(std::get<Header>(header).initiator_spi, 0x0102030405060708u);
}

// ---- round trips ------------------------------------------------------------------

// Encodes one payload as a whole message, decodes it and checks that
// re-encoding gives the same bytes; returns the decoded payload.
Payload round_trip(const Payload& original) {
  Header header = sa_init_header();
  header.exchange = ExchangeType::IkeAuth;
  header.message_id = 1;
  const Bytes wire = encode_message(header, {original});
  const Message message = decode_ok(wire);
  EXPECT_EQ(message.payloads.size(), 1u);
  if (message.payloads.size() != 1) return {};
  EXPECT_EQ(encode_message(message.header, message.payloads), wire);
  EXPECT_EQ(message.payloads[0].type, original.type);
  EXPECT_EQ(message.payloads[0].critical, original.critical);
  EXPECT_EQ(message.payloads[0].body.index(), original.body.index());
  return message.payloads[0];
}

TEST(RoundTrip, SecurityAssociationWithSeveralProposals) {
  Proposal gcm{1, ProtocolId::Esp, {0xc0, 0x01, 0x02, 0x03},
               {{TransformType::Encryption, encr::kAesGcm16, 256}, {TransformType::Esn, esn::kNo, std::nullopt}}};
  Proposal chacha{2, ProtocolId::Esp, {0xc0, 0x01, 0x02, 0x03},
                  {{TransformType::Encryption, encr::kChaCha20Poly1305, std::nullopt},
                   {TransformType::KeyExchange, group::kCurve25519, std::nullopt},
                   {TransformType::Esn, esn::kYes, std::nullopt}}};
  Proposal rekey{3, ProtocolId::Ike, repeated(0x5a, 8), {{TransformType::Prf, prf::kHmacSha512, std::nullopt}}};
  const auto decoded = round_trip(payload(PayloadType::SecurityAssociation, SecurityAssociationPayload{{gcm, chacha, rekey}}));
  const auto& proposals = std::get<SecurityAssociationPayload>(decoded.body).proposals;
  ASSERT_EQ(proposals.size(), 3u);
  EXPECT_EQ(proposals[0], gcm);
  EXPECT_EQ(proposals[1], chacha);
  EXPECT_EQ(proposals[2], rekey);
}

TEST(RoundTrip, KeyExchangeIdentityCertificatesAuth) {
  const auto ke = round_trip(payload(PayloadType::KeyExchange, KeyExchangePayload{group::kCurve25519, repeated(7, 32)}));
  EXPECT_EQ(std::get<KeyExchangePayload>(ke.body).group, group::kCurve25519);
  EXPECT_EQ(std::get<KeyExchangePayload>(ke.body).data, repeated(7, 32));

  const auto idi = round_trip(payload(PayloadType::IdInitiator, IdentificationPayload{id_type::kFqdn, {'g', 'w'}}));
  EXPECT_EQ(std::get<IdentificationPayload>(idi.body).id_type, id_type::kFqdn);
  EXPECT_EQ(std::get<IdentificationPayload>(idi.body).data, (Bytes{'g', 'w'}));
  const auto idr = round_trip(payload(PayloadType::IdResponder, IdentificationPayload{id_type::kIpv4, {192, 0, 2, 1}}));
  EXPECT_EQ(std::get<IdentificationPayload>(idr.body).data, (Bytes{192, 0, 2, 1}));

  const auto cert = round_trip(payload(PayloadType::Certificate, CertificatePayload{cert_encoding::kX509Signature, repeated(0x30, 300)}));
  EXPECT_EQ(std::get<CertificatePayload>(cert.body).encoding, cert_encoding::kX509Signature);
  EXPECT_EQ(std::get<CertificatePayload>(cert.body).data, repeated(0x30, 300));

  const auto certreq = round_trip(payload(PayloadType::CertificateRequest, CertificateRequestPayload{4, repeated(0xee, 40)}));
  EXPECT_EQ(std::get<CertificateRequestPayload>(certreq.body).authorities, repeated(0xee, 40));

  const auto auth = round_trip(payload(PayloadType::Authentication, AuthenticationPayload{auth_method::kDigitalSignature, repeated(1, 72)}));
  EXPECT_EQ(std::get<AuthenticationPayload>(auth.body).method, auth_method::kDigitalSignature);
  EXPECT_EQ(std::get<AuthenticationPayload>(auth.body).data, repeated(1, 72));
}

TEST(RoundTrip, NonceNotifyDeleteVendor) {
  const auto nonce = round_trip(payload(PayloadType::Nonce, NoncePayload{repeated(3, 32)}));
  EXPECT_EQ(std::get<NoncePayload>(nonce.body).data, repeated(3, 32));

  const auto rekey = round_trip(make_notify(notify::kRekeySa, {}, ProtocolId::Esp, {1, 2, 3, 4}));
  const auto& rekey_body = std::get<NotifyPayload>(rekey.body);
  EXPECT_EQ(rekey_body.type, notify::kRekeySa);
  EXPECT_EQ(rekey_body.protocol, ProtocolId::Esp);
  EXPECT_EQ(rekey_body.spi, (Bytes{1, 2, 3, 4}));
  EXPECT_TRUE(rekey_body.data.empty());
  const auto error = round_trip(make_notify(notify::kInvalidKePayload, {0, 31}));
  EXPECT_TRUE(std::get<NotifyPayload>(error.body).is_error());
  EXPECT_EQ(std::get<NotifyPayload>(error.body).data, (Bytes{0, 31}));

  const auto child_delete = round_trip(payload(PayloadType::Delete, DeletePayload{ProtocolId::Esp, 4, {{1, 2, 3, 4}, {5, 6, 7, 8}}}));
  const auto& deleted = std::get<DeletePayload>(child_delete.body);
  EXPECT_EQ(deleted.protocol, ProtocolId::Esp);
  EXPECT_EQ(deleted.spi_size, 4);
  ASSERT_EQ(deleted.spis.size(), 2u);
  EXPECT_EQ(deleted.spis[1], (Bytes{5, 6, 7, 8}));
  const auto ike_delete = round_trip(payload(PayloadType::Delete, DeletePayload{ProtocolId::Ike, 0, {}}));
  EXPECT_TRUE(std::get<DeletePayload>(ike_delete.body).spis.empty());

  const auto vendor = round_trip(payload(PayloadType::VendorId, VendorIdPayload{{'t', 'a', 'p'}}));
  EXPECT_EQ(std::get<VendorIdPayload>(vendor.body).data, (Bytes{'t', 'a', 'p'}));
}

TEST(RoundTrip, TrafficSelectorsBothFamilies) {
  const std::vector<TrafficSelector> selectors = {
      *TrafficSelector::parse("10.1.0.0/16"),
      *TrafficSelector::parse("10.0.0.0/8[tcp/443]"),
      *TrafficSelector::parse("2001:db8::/32[udp/500-4500]"),
      *TrafficSelector::parse("::/0"),
  };
  const auto tsi = round_trip(payload(PayloadType::TsInitiator, TrafficSelectorPayload{selectors}));
  EXPECT_EQ(std::get<TrafficSelectorPayload>(tsi.body).selectors, selectors);
  const auto tsr = round_trip(payload(PayloadType::TsResponder, TrafficSelectorPayload{{selectors[0]}}));
  EXPECT_EQ(std::get<TrafficSelectorPayload>(tsr.body).selectors, std::vector<TrafficSelector>{selectors[0]});

  // RFC 7296's OPAQUE ports: start 65535, end 0.
  TrafficSelector opaque = selectors[0];
  opaque.start_port = 65535;
  opaque.end_port = 0;
  const auto opaque_ts = round_trip(payload(PayloadType::TsInitiator, TrafficSelectorPayload{{opaque}}));
  EXPECT_EQ(std::get<TrafficSelectorPayload>(opaque_ts.body).selectors[0], opaque);
}

TEST(RoundTrip, ConfigurationEapAndEncrypted) {
  ConfigurationPayload request{1, {{1, {}}, {8, {}}, {3, {10, 0, 0, 1}}}};
  const auto cp = round_trip(payload(PayloadType::Configuration, request));
  const auto& cp_body = std::get<ConfigurationPayload>(cp.body);
  EXPECT_EQ(cp_body.config_type, 1);
  ASSERT_EQ(cp_body.attributes.size(), 3u);
  EXPECT_EQ(cp_body.attributes[2].type, 3);
  EXPECT_EQ(cp_body.attributes[2].value, (Bytes{10, 0, 0, 1}));

  const Bytes eap_identity = {2, 7, 0, 9, 1, 'u', 's', 'e', 'r'};
  const auto eap = round_trip(payload(PayloadType::Eap, EapPayload{eap_identity}));
  EXPECT_EQ(std::get<EapPayload>(eap.body).message, eap_identity);

  const auto sk = round_trip(payload(PayloadType::Encrypted, EncryptedPayload{PayloadType::IdInitiator, repeated(0x99, 64)}));
  EXPECT_EQ(std::get<EncryptedPayload>(sk.body).first_inner, PayloadType::IdInitiator);
  EXPECT_EQ(std::get<EncryptedPayload>(sk.body).body, repeated(0x99, 64));

  const auto skf = round_trip(payload(PayloadType::EncryptedFragment,
                                      EncryptedFragmentPayload{1, 3, PayloadType::IdInitiator, repeated(0x98, 40)}));
  const auto& fragment = std::get<EncryptedFragmentPayload>(skf.body);
  EXPECT_EQ(fragment.number, 1);
  EXPECT_EQ(fragment.total, 3);
  EXPECT_EQ(fragment.first_inner, PayloadType::IdInitiator);
  EXPECT_EQ(fragment.body, repeated(0x98, 40));
}

TEST(RoundTrip, UnknownNonCriticalPayloadIsKept) {
  Payload unknown;
  unknown.type = static_cast<PayloadType>(99);
  unknown.body = UnknownPayload{99, {1, 2, 3}};
  const auto decoded = round_trip(unknown);
  EXPECT_FALSE(decoded.critical);
  EXPECT_EQ(std::get<UnknownPayload>(decoded.body).type, 99);
  EXPECT_EQ(std::get<UnknownPayload>(decoded.body).data, (Bytes{1, 2, 3}));
}

TEST(RoundTrip, KnownPayloadKeepsItsCriticalBit) {
  const auto decoded = round_trip(payload(PayloadType::VendorId, VendorIdPayload{{1}}, true));
  EXPECT_TRUE(decoded.critical);
}

TEST(Encode, SkNamesItsFirstInnerPayloadAndTheInnerChainDecodes) {
  std::vector<Payload> inner = {
      payload(PayloadType::IdInitiator, IdentificationPayload{id_type::kFqdn, {'a'}}),
      payload(PayloadType::Authentication, AuthenticationPayload{auth_method::kSharedKey, repeated(4, 32)}),
      payload(PayloadType::TsInitiator, TrafficSelectorPayload{{*TrafficSelector::parse("10.0.0.0/8")}}),
  };
  Bytes plain;
  EXPECT_EQ(encode_payloads(inner, plain), PayloadType::IdInitiator);
  // Chaining: IDi -> AUTH -> TSi -> none.
  EXPECT_EQ(plain[0], 39);
  const std::size_t auth_offset = 4 + 4 + 1;
  EXPECT_EQ(plain[auth_offset], 44);

  auto decoded = decode_payloads(PayloadType::IdInitiator, plain);
  ASSERT_TRUE(std::holds_alternative<std::vector<Payload>>(decoded));
  const auto& payloads = std::get<std::vector<Payload>>(decoded);
  ASSERT_EQ(payloads.size(), 3u);
  EXPECT_EQ(payloads[2].type, PayloadType::TsInitiator);

  Message with_inner;
  with_inner.header.exchange = ExchangeType::IkeAuth;
  with_inner.header.flags = header_flags::kResponse;
  with_inner.header.message_id = 1;
  with_inner.payloads = payloads;
  EXPECT_EQ(describe(with_inner), "IKE_AUTH response #1 [ IDi AUTH TSi ]");

  Bytes empty;
  EXPECT_EQ(encode_payloads({}, empty), PayloadType::None);
  EXPECT_TRUE(empty.empty());
  auto none = decode_payloads(PayloadType::None, {});
  ASSERT_TRUE(std::holds_alternative<std::vector<Payload>>(none));
  EXPECT_TRUE(std::get<std::vector<Payload>>(none).empty());
}

TEST(Encode, SkMessageDescribesItself) {
  Header header = sa_init_header();
  header.exchange = ExchangeType::IkeAuth;
  header.message_id = 1;
  const Bytes wire =
      encode_message(header, {payload(PayloadType::Encrypted, EncryptedPayload{PayloadType::IdInitiator, repeated(0, 48)})});
  // Header's next is SK; SK's own next names IDi.
  EXPECT_EQ(wire[16], 46);
  EXPECT_EQ(wire[28], 35);
  EXPECT_EQ(describe(decode_ok(wire)), "IKE_AUTH request #1 [ SK ]");
}

TEST(Encode, OversizedPayloadIsRefusedNotTruncated) {
  Bytes out;
  EXPECT_THROW(encode_payloads({payload(PayloadType::VendorId, VendorIdPayload{repeated(0, 65532)})}, out),
               std::length_error);
  Bytes fits;
  encode_payloads({payload(PayloadType::VendorId, VendorIdPayload{repeated(0, 65531)})}, fits);
  EXPECT_EQ(fits.size(), 65535u);
  EXPECT_EQ(fits[2], 0xff);
  EXPECT_EQ(fits[3], 0xff);
}

// ---- names ---------------------------------------------------------------------------

TEST(Names, NotifyExchangeAndPayloadNames) {
  EXPECT_EQ(notify_name(notify::kNoProposalChosen), "NO_PROPOSAL_CHOSEN");
  EXPECT_EQ(notify_name(notify::kIkeFragmentationSupported), "IKE_FRAGMENTATION_SUPPORTED");
  EXPECT_EQ(notify_name(notify::kUnsupportedCriticalPayload), "UNSUPPORTED_CRITICAL_PAYLOAD");
  EXPECT_EQ(notify_name(notify::kSignatureHashAlgorithms), "SIGNATURE_HASH_ALGORITHMS");
  EXPECT_EQ(notify_name(12345), "12345");
  // Every notify type message.h declares has a name.
  for (std::uint16_t type :
       {notify::kUnsupportedCriticalPayload, notify::kInvalidIkeSpi, notify::kInvalidMajorVersion, notify::kInvalidSyntax,
        notify::kInvalidMessageId, notify::kInvalidSpi, notify::kNoProposalChosen, notify::kInvalidKePayload,
        notify::kAuthenticationFailed, notify::kSinglePairRequired, notify::kNoAdditionalSas,
        notify::kInternalAddressFailure, notify::kFailedCpRequired, notify::kTsUnacceptable, notify::kInvalidSelectors,
        notify::kUnacceptableAddresses, notify::kUnexpectedNatDetected, notify::kTemporaryFailure,
        notify::kChildSaNotFound, notify::kInitialContact, notify::kSetWindowSize, notify::kIpcompSupported,
        notify::kNatDetectionSourceIp, notify::kNatDetectionDestinationIp, notify::kCookie, notify::kUseTransportMode,
        notify::kRekeySa, notify::kEspTfcPaddingNotSupported, notify::kNonFirstFragmentsAlso, notify::kMobikeSupported,
        notify::kAdditionalIp4Address, notify::kAdditionalIp6Address, notify::kNoAdditionalAddresses,
        notify::kUpdateSaAddresses, notify::kCookie2, notify::kNoNatsAllowed, notify::kIkeFragmentationSupported,
        notify::kSignatureHashAlgorithms})
    EXPECT_NE(notify_name(type), std::to_string(type)) << type;

  EXPECT_EQ(to_string(ExchangeType::IkeSaInit), "IKE_SA_INIT");
  EXPECT_EQ(to_string(ExchangeType::CreateChildSa), "CREATE_CHILD_SA");
  EXPECT_EQ(to_string(ExchangeType::Informational), "INFORMATIONAL");
  EXPECT_EQ(to_string(static_cast<ExchangeType>(43)), "EXCHANGE_43");
  EXPECT_EQ(to_string(PayloadType::Nonce), "No");
  EXPECT_EQ(to_string(PayloadType::TsResponder), "TSr");
  EXPECT_EQ(to_string(static_cast<PayloadType>(99)), "PAYLOAD_99");
}

TEST(Names, DescribeShowsFragmentsUnknownsAndUnnamedNotifies) {
  Message message;
  message.header.exchange = ExchangeType::Informational;
  message.header.message_id = 7;
  message.header.flags = header_flags::kResponse;
  Payload unknown;
  unknown.type = static_cast<PayloadType>(99);
  unknown.body = UnknownPayload{99, {}};
  message.payloads = {make_notify(40000), unknown,
                      payload(PayloadType::EncryptedFragment, EncryptedFragmentPayload{2, 3, PayloadType::None, {}})};
  EXPECT_EQ(describe(message), "INFORMATIONAL response #7 [ N(40000) PAYLOAD_99 SKF(2/3) ]");
}

// ---- refusals ---------------------------------------------------------------------------

// A message around one payload whose body is given as raw bytes, so
// malformed bodies can be written exactly.
Bytes message_with_body(std::uint8_t type, const Bytes& body, std::uint8_t flags = 0) {
  const std::size_t payload_length = 4 + body.size();
  Bytes wire = concat({{1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0},
                       {type, 0x20, 35, 0x08, 0, 0, 0, 1, 0, 0, 0, 0},
                       {0, flags, static_cast<std::uint8_t>(payload_length >> 8), static_cast<std::uint8_t>(payload_length)},
                       body});
  wire[27] = static_cast<std::uint8_t>(wire.size());
  wire[26] = static_cast<std::uint8_t>(wire.size() >> 8);
  return wire;
}

void set_length(Bytes& wire, std::uint32_t length) {
  for (int i = 0; i < 4; ++i) wire[24 + i] = static_cast<std::uint8_t>(length >> (24 - 8 * i));
}

void expect_syntax_error(const Bytes& wire, std::string_view why) {
  const DecodeError error = decode_refused(wire);
  EXPECT_EQ(error.notify_type, notify::kInvalidSyntax) << why << ": " << error.message;
  EXPECT_FALSE(error.message.empty()) << why;
}

TEST(Refuse, ShortDatagramsAreDroppedSilently) {
  const Bytes wire = sa_init_wire();
  for (std::size_t size = 0; size < kHeaderSize; ++size) {
    const DecodeError error = decode_refused(Bytes(wire.begin(), wire.begin() + static_cast<long>(size)));
    EXPECT_EQ(error.notify_type, 0) << size;
    EXPECT_TRUE(std::holds_alternative<DecodeError>(decode_header(std::span(wire).first(size))));
  }
}

TEST(Refuse, HeaderLengthMustBeExact) {
  Bytes longer = sa_init_wire();
  longer.push_back(0);
  expect_syntax_error(longer, "trailing byte not counted by the header");
  Bytes claims_more = sa_init_wire();
  set_length(claims_more, 145);
  expect_syntax_error(claims_more, "header longer than the datagram");
  Bytes claims_less = sa_init_wire();
  set_length(claims_less, 143);
  expect_syntax_error(claims_less, "header shorter than the datagram");
}

TEST(Refuse, MajorVersionOtherThanTwo) {
  for (std::uint8_t version : {0x10, 0x30, 0x00, 0xf0}) {
    Bytes wire = sa_init_wire();
    wire[17] = version;
    EXPECT_EQ(decode_refused(wire).notify_type, notify::kInvalidMajorVersion) << int(version);
    const auto header = decode_header(wire);
    ASSERT_TRUE(std::holds_alternative<DecodeError>(header));
    EXPECT_EQ(std::get<DecodeError>(header).notify_type, notify::kInvalidMajorVersion);
  }
  // A higher minor version is accepted (RFC 7296 §2.5).
  Bytes minor = sa_init_wire();
  minor[17] = 0x21;
  EXPECT_EQ(decode_ok(minor).header.version, 0x21);
}

TEST(Refuse, PayloadLengthsOutOfBounds) {
  Bytes below_header = sa_init_wire();
  below_header[28 + 3] = 3;  // SA payload length 3
  expect_syntax_error(below_header, "payload length below 4");
  Bytes past_end = sa_init_wire();
  past_end[28 + 136 - 28 + 3] = 9;  // last notify claims 9 bytes, 8 remain
  expect_syntax_error(past_end, "payload past the end");
  Bytes chain_runs_out = sa_init_wire();
  chain_runs_out[28 + 136 - 28] = 43;  // last notify says a V follows; nothing does
  expect_syntax_error(chain_runs_out, "next payload without bytes");
  // Header says no payloads but bytes follow.
  Bytes orphan_bytes = sa_init_wire();
  orphan_bytes[16] = 0;
  expect_syntax_error(orphan_bytes, "bytes after the chain");
}

TEST(Refuse, BodiesBelowTheMinimumForTheirType) {
  expect_syntax_error(message_with_body(34, {0, 19, 0}), "KE without its reserved bytes");
  expect_syntax_error(message_with_body(35, {1, 0, 0}), "IDi header");
  expect_syntax_error(message_with_body(37, {}), "CERT without encoding");
  expect_syntax_error(message_with_body(38, {}), "CERTREQ without encoding");
  expect_syntax_error(message_with_body(39, {2, 0}), "AUTH header");
  expect_syntax_error(message_with_body(40, repeated(1, 15)), "nonce of 15 bytes");
  expect_syntax_error(message_with_body(40, repeated(1, 257)), "nonce of 257 bytes");
  expect_syntax_error(message_with_body(41, {0, 0, 0x40}), "notify header");
  expect_syntax_error(message_with_body(41, {3, 4, 0x40, 0x09, 1, 2, 3}), "notify SPI past its payload");
  expect_syntax_error(message_with_body(42, {1, 0, 0}), "delete header");
  expect_syntax_error(message_with_body(44, {1, 0, 0}), "TS header");
  expect_syntax_error(message_with_body(47, {1, 0, 0}), "CP header");
  expect_syntax_error(message_with_body(48, {1, 1, 0}), "EAP header");
  expect_syntax_error(message_with_body(53, {0, 1, 0}), "SKF header");
  expect_syntax_error(message_with_body(33, {}), "SA without proposals");
  // Exactly the minimum is fine.
  decode_ok(message_with_body(40, repeated(1, 16)));
  decode_ok(message_with_body(40, repeated(1, 256)));
  decode_ok(message_with_body(37, {4}));
}

TEST(Refuse, DeleteAndEapLengthsMustAgree) {
  expect_syntax_error(message_with_body(42, {3, 4, 0, 2, 1, 2, 3, 4}), "two SPIs announced, one present");
  expect_syntax_error(message_with_body(42, {1, 0, 0, 0, 9}), "stray byte in an IKE delete");
  decode_ok(message_with_body(42, {3, 4, 0, 1, 1, 2, 3, 4}));
  expect_syntax_error(message_with_body(48, {2, 7, 0, 9, 1}), "EAP length beyond the payload");
  expect_syntax_error(message_with_body(47, {1, 0, 0, 0, 0, 3, 0, 4, 10, 0}), "CP attribute past its payload");
}

// An SA body of one IKE proposal with the given transforms (raw bytes).
Bytes proposal_bytes(std::uint8_t more, std::uint8_t number, std::uint8_t transform_count, const Bytes& transforms,
                     Bytes spi = {}) {
  const std::size_t length = 8 + spi.size() + transforms.size();
  return concat({{more, 0, static_cast<std::uint8_t>(length >> 8), static_cast<std::uint8_t>(length), number, 1,
                  static_cast<std::uint8_t>(spi.size()), transform_count},
                 spi,
                 transforms});
}

const Bytes kEncrTransform = {3, 0, 0, 12, 1, 0, 0, 12, 0x80, 0x0e, 0x00, 0x80};
const Bytes kLastPrfTransform = {0, 0, 0, 8, 2, 0, 0, 5};

TEST(Refuse, ProposalStructure) {
  const Bytes good = proposal_bytes(0, 1, 2, concat({kEncrTransform, kLastPrfTransform}));
  decode_ok(message_with_body(33, good));
  decode_ok(message_with_body(33, concat({proposal_bytes(2, 1, 1, kLastPrfTransform), proposal_bytes(0, 2, 1, kLastPrfTransform)})));
  decode_ok(message_with_body(33, concat({proposal_bytes(2, 1, 1, kLastPrfTransform), proposal_bytes(0, 1, 1, kLastPrfTransform)})));

  expect_syntax_error(message_with_body(33, proposal_bytes(2, 1, 2, concat({kEncrTransform, kLastPrfTransform}))),
                      "only proposal says more follow");
  expect_syntax_error(message_with_body(33, concat({proposal_bytes(0, 1, 1, kLastPrfTransform), proposal_bytes(0, 2, 1, kLastPrfTransform)})),
                      "first of two proposals says it is last");
  expect_syntax_error(message_with_body(33, proposal_bytes(1, 1, 1, kLastPrfTransform)), "last-proposal value 1");
  expect_syntax_error(message_with_body(33, proposal_bytes(0, 2, 1, kLastPrfTransform)), "first proposal numbered 2");
  expect_syntax_error(message_with_body(33, concat({proposal_bytes(2, 1, 1, kLastPrfTransform), proposal_bytes(0, 3, 1, kLastPrfTransform)})),
                      "proposal numbers 1, 3");
  expect_syntax_error(message_with_body(33, proposal_bytes(0, 1, 3, concat({kEncrTransform, kLastPrfTransform}))),
                      "three transforms announced, two present");
  expect_syntax_error(message_with_body(33, proposal_bytes(0, 1, 1, concat({kEncrTransform, kLastPrfTransform}))),
                      "one transform announced, two present");

  Bytes short_proposal = good;
  short_proposal[3] = 7;
  expect_syntax_error(message_with_body(33, short_proposal), "proposal length 7");
  Bytes long_proposal = good;
  long_proposal[3] = static_cast<std::uint8_t>(good.size() + 1);
  expect_syntax_error(message_with_body(33, long_proposal), "proposal longer than its SA");
  Bytes spi_too_big = proposal_bytes(0, 1, 1, kLastPrfTransform, repeated(1, 8));
  spi_too_big[6] = 40;
  expect_syntax_error(message_with_body(33, spi_too_big), "SPI size past the proposal");
  Bytes protocol_zero = good;
  protocol_zero[5] = 0;
  expect_syntax_error(message_with_body(33, protocol_zero), "protocol ID 0");
}

TEST(Refuse, TransformStructure) {
  auto with_transforms = [](std::uint8_t count, const Bytes& transforms) {
    return message_with_body(33, proposal_bytes(0, 1, count, transforms));
  };
  Bytes last_says_more = kLastPrfTransform;
  last_says_more[0] = 3;
  expect_syntax_error(with_transforms(1, last_says_more), "last transform says more follow");
  Bytes first_says_last = kEncrTransform;
  first_says_last[0] = 0;
  expect_syntax_error(with_transforms(2, concat({first_says_last, kLastPrfTransform})), "first transform says last");
  Bytes short_transform = kLastPrfTransform;
  short_transform[3] = 7;
  expect_syntax_error(with_transforms(1, short_transform), "transform length 7");
  Bytes long_transform = kLastPrfTransform;
  long_transform[3] = 9;
  expect_syntax_error(with_transforms(1, long_transform), "transform longer than its proposal");
  // Attributes: unknown TV type, TLV Key Length, repeated Key Length, truncated.
  expect_syntax_error(with_transforms(1, {0, 0, 0, 12, 1, 0, 0, 12, 0x80, 0x0f, 0x00, 0x80}), "attribute type 15");
  expect_syntax_error(with_transforms(1, {0, 0, 0, 14, 1, 0, 0, 12, 0x00, 0x0e, 0x00, 0x02, 0x01, 0x00}), "TLV Key Length");
  expect_syntax_error(with_transforms(1, {0, 0, 0, 16, 1, 0, 0, 12, 0x80, 0x0e, 0x00, 0x80, 0x80, 0x0e, 0x01, 0x00}),
                      "two Key Lengths");
  expect_syntax_error(with_transforms(1, {0, 0, 0, 10, 1, 0, 0, 12, 0x80, 0x0e}), "attribute truncated");
}

Bytes ts_body(std::uint8_t count, const Bytes& selectors) { return concat({{count, 0, 0, 0}, selectors}); }

TEST(Refuse, TrafficSelectors) {
  const Bytes v4 = {7, 6, 0, 16, 0, 0, 0xff, 0xff, 10, 0, 0, 0, 10, 255, 255, 255};
  decode_ok(message_with_body(44, ts_body(1, v4)));
  decode_ok(message_with_body(45, ts_body(0, {})));

  Bytes reversed = {7, 0, 0, 16, 0, 0, 0xff, 0xff, 10, 0, 0, 2, 10, 0, 0, 1};
  expect_syntax_error(message_with_body(44, ts_body(1, reversed)), "start address after end");
  Bytes ports_reversed = {7, 0, 0, 16, 0, 2, 0, 1, 10, 0, 0, 1, 10, 0, 0, 1};
  expect_syntax_error(message_with_body(44, ts_body(1, ports_reversed)), "start port after end");
  Bytes v4_claims_v6_size = v4;
  v4_claims_v6_size[3] = 40;
  expect_syntax_error(message_with_body(44, ts_body(1, concat({v4_claims_v6_size, repeated(0, 24)}))), "type 7 of 40 bytes");
  Bytes v6_with_v4_size = v4;
  v6_with_v4_size[0] = 8;
  expect_syntax_error(message_with_body(44, ts_body(1, v6_with_v4_size)), "type 8 of 16 bytes");
  Bytes unknown_type = v4;
  unknown_type[0] = 9;
  expect_syntax_error(message_with_body(44, ts_body(1, unknown_type)), "TS type 9");
  expect_syntax_error(message_with_body(44, ts_body(2, v4)), "two selectors announced, one present");
  expect_syntax_error(message_with_body(44, ts_body(1, concat({v4, {0}}))), "byte after the selectors");
  expect_syntax_error(message_with_body(44, ts_body(1, Bytes(v4.begin(), v4.end() - 2))), "selector truncated");
}

TEST(Refuse, EncryptedPayloadMustBeLast) {
  // SK (length 8) followed by a V payload that SK's length does not cover.
  Bytes wire = concat({{1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0},
                       {46, 0x20, 35, 0x08, 0, 0, 0, 1, 0, 0, 0, 44},
                       {35, 0, 0, 8, 1, 2, 3, 4},
                       {0, 0, 0, 8, 't', 'a', 'p', 's'}});
  expect_syntax_error(wire, "SK not last");
  Bytes fragment = wire;
  fragment[16] = 53;
  expect_syntax_error(fragment, "SKF not last");
  // Payloads before SK are fine.
  const Bytes ok = encode_message(sa_init_header(),
                                  {make_notify(notify::kInitialContact),
                                   payload(PayloadType::Encrypted, EncryptedPayload{PayloadType::IdInitiator, repeated(1, 32)})});
  const Message message = decode_ok(ok);
  ASSERT_EQ(message.payloads.size(), 2u);
  EXPECT_EQ(message.payloads[1].type, PayloadType::Encrypted);
}

TEST(Refuse, FragmentNumbers) {
  expect_syntax_error(message_with_body(53, {0, 0, 0, 1, 9}), "fragment 0");
  expect_syntax_error(message_with_body(53, {0, 3, 0, 2, 9}), "fragment 3 of 2");
  decode_ok(message_with_body(53, {0, 2, 0, 2, 9}));
}

TEST(Refuse, UnknownCriticalPayload) {
  const DecodeError error = decode_refused(message_with_body(99, {1, 2, 3}, 0x80));
  EXPECT_EQ(error.notify_type, notify::kUnsupportedCriticalPayload);
  EXPECT_NE(error.message.find("99"), std::string::npos) << error.message;
  // The same payload without the critical bit is kept.
  const Message kept = decode_ok(message_with_body(99, {1, 2, 3}));
  ASSERT_EQ(kept.payloads.size(), 1u);
  EXPECT_EQ(std::get<UnknownPayload>(kept.payloads[0].body).data, (Bytes{1, 2, 3}));
  // Inner chains are checked the same way.
  const Bytes inner = {0, 0x80, 0, 4};
  const auto refused = decode_payloads(static_cast<PayloadType>(50), inner);
  ASSERT_TRUE(std::holds_alternative<DecodeError>(refused));
  EXPECT_EQ(std::get<DecodeError>(refused).notify_type, notify::kUnsupportedCriticalPayload);
}

TEST(Refuse, EveryPrefixOfAValidMessage) {
  std::vector<Bytes> messages = {sa_init_wire()};
  Header header = sa_init_header();
  header.exchange = ExchangeType::IkeAuth;
  messages.push_back(encode_message(
      header, {payload(PayloadType::IdInitiator, IdentificationPayload{id_type::kFqdn, {'g', 'w'}}),
               payload(PayloadType::TsInitiator, TrafficSelectorPayload{{*TrafficSelector::parse("2001:db8::/32[tcp/22]")}}),
               payload(PayloadType::Configuration, ConfigurationPayload{1, {{1, {}}, {3, {10, 0, 0, 1}}}}),
               payload(PayloadType::Delete, DeletePayload{ProtocolId::Esp, 4, {{1, 2, 3, 4}}}),
               payload(PayloadType::Eap, EapPayload{{2, 7, 0, 5, 1}}),
               payload(PayloadType::EncryptedFragment, EncryptedFragmentPayload{1, 2, PayloadType::IdInitiator, {1, 2}})}));
  for (const Bytes& wire : messages) {
    decode_ok(wire);
    for (std::size_t size = 0; size < wire.size(); ++size) {
      Bytes prefix(wire.begin(), wire.begin() + static_cast<long>(size));
      EXPECT_TRUE(std::holds_alternative<DecodeError>(decode_message(prefix))) << size;
      // With the header length made to agree, the payload checks must catch it.
      if (size >= kHeaderSize) {
        set_length(prefix, static_cast<std::uint32_t>(size));
        EXPECT_TRUE(std::holds_alternative<DecodeError>(decode_message(prefix))) << "patched " << size;
      }
      // The inner-chain decoder sees the same prefixes of the payload chain.
      if (size >= kHeaderSize) {
        auto chain = decode_payloads(static_cast<PayloadType>(wire[16]), std::span(wire).subspan(kHeaderSize, size - kHeaderSize));
        EXPECT_TRUE(std::holds_alternative<DecodeError>(chain)) << "chain " << size;
      }
    }
  }
}


// ---- the fuzzer's seed corpus -------------------------------------------------------------

Bytes read_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

TEST(Corpus, SeedMessagesDecodeAndReencodeExactly) {
  const std::filesystem::path directory = TAPSEC_IKEV2_CORPUS_DIR;
  std::size_t messages = 0;
  for (const auto& entry : std::filesystem::directory_iterator(directory)) {
    const Bytes bytes = read_file(entry.path());
    ASSERT_FALSE(bytes.empty()) << entry.path();
    if (entry.path().filename() == "inner_chain") {
      // First byte: the first payload type; then a decrypted SK body.
      auto chain = decode_payloads(static_cast<PayloadType>(bytes[0]), std::span(bytes).subspan(1));
      ASSERT_TRUE(std::holds_alternative<std::vector<Payload>>(chain)) << std::get<DecodeError>(chain).message;
      Bytes encoded;
      EXPECT_EQ(encode_payloads(std::get<std::vector<Payload>>(chain), encoded), static_cast<PayloadType>(bytes[0]));
      EXPECT_EQ(encoded, Bytes(bytes.begin() + 1, bytes.end()));
      continue;
    }
    const Message message = decode_ok(bytes);
    EXPECT_EQ(encode_message(message.header, message.payloads), bytes) << entry.path();
    ++messages;
  }
  EXPECT_GE(messages, 8u);
}

TEST(Corpus, DecryptedIkeAuthDescribesEveryPayload) {
  const Message message = decode_ok(read_file(std::filesystem::path(TAPSEC_IKEV2_CORPUS_DIR) / "ike_auth_decrypted"));
  EXPECT_EQ(describe(message),
            "IKE_AUTH request #1 [ IDi CERT AUTH CP N(INIT_CONTACT) N(USE_TRANSP) SA TSi TSr D EAP ]");
  const auto& tsi = std::get<TrafficSelectorPayload>(message.find(PayloadType::TsInitiator)->body).selectors;
  ASSERT_EQ(tsi.size(), 2u);
  EXPECT_EQ(tsi[0].to_string(), "10.1.0.0/16");
  EXPECT_EQ(tsi[1].to_string(), "::/0[tcp/443]");
  const auto& id = std::get<IdentificationPayload>(message.find(PayloadType::IdInitiator)->body);
  EXPECT_EQ((Identification{id.id_type, id.data}).to_string(), "client.example.org");
}

}  // namespace
}  // namespace tapsec::ikev2
