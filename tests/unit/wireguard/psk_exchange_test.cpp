#include "agent/engines/wireguard/psk_exchange.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace tapsec::wireguard {
namespace {

using Bytes = std::vector<std::uint8_t>;

Key key_filled(std::uint8_t value) {
  Key key;
  key.fill(value);
  return key;
}

Bytes be64(std::uint64_t value) {
  Bytes out(8);
  for (int i = 7; i >= 0; --i, value >>= 8) out[i] = static_cast<std::uint8_t>(value);
  return out;
}

Bytes frame(std::uint8_t type, const Bytes& body) {
  Bytes out(3 + body.size());
  out[0] = type;
  out[1] = static_cast<std::uint8_t>(body.size() >> 8);
  out[2] = static_cast<std::uint8_t>(body.size());
  std::copy(body.begin(), body.end(), out.begin() + 3);
  return out;
}

Bytes hello_frame(const Key& key, std::uint16_t port, std::uint8_t version = 1) {
  Bytes body{version};
  body.insert(body.end(), key.begin(), key.end());
  body.push_back(static_cast<std::uint8_t>(port >> 8));
  body.push_back(static_cast<std::uint8_t>(port));
  return frame(1, body);
}

Bytes epoch_frame(std::uint8_t type, std::uint64_t epoch, const Key& ephemeral) {
  Bytes body = be64(epoch);
  body.insert(body.end(), ephemeral.begin(), ephemeral.end());
  return frame(type, body);
}

Bytes rotate_frame(std::uint64_t epoch, const Key& ephemeral) { return epoch_frame(2, epoch, ephemeral); }
Bytes ack_frame(std::uint64_t epoch, const Key& ephemeral) { return epoch_frame(3, epoch, ephemeral); }

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const auto& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

struct Frame {
  std::uint8_t type;
  Bytes body;
};

// Splits a sender's output into frames; fails the test on a partial frame.
std::vector<Frame> parse_frames(const Bytes& bytes) {
  std::vector<Frame> frames;
  std::size_t offset = 0;
  while (offset < bytes.size()) {
    EXPECT_GE(bytes.size() - offset, 3u);
    if (bytes.size() - offset < 3) break;
    const std::size_t length = bytes[offset + 1] << 8 | bytes[offset + 2];
    EXPECT_GE(bytes.size() - offset - 3, length);
    if (bytes.size() - offset - 3 < length) break;
    frames.push_back({bytes[offset], Bytes(bytes.begin() + offset + 3, bytes.begin() + offset + 3 + length)});
    offset += 3 + length;
  }
  return frames;
}

std::optional<std::string> error_frame_reason(const Bytes& output) {
  for (const auto& f : parse_frames(output))
    if (f.type == 4) return std::string(f.body.begin(), f.body.end());
  return std::nullopt;
}

// An exporter as a TLS session would give it: both ends of one session
// compute the same output for the same context. `session_secret` stands for
// the session; two different secrets are two different sessions.
struct FakeExporter {
  std::string session_secret;
  std::shared_ptr<std::vector<Bytes>> contexts = std::make_shared<std::vector<Bytes>>();
  bool available = true;

  static Key output_for(const std::string& secret, std::span<const std::uint8_t> context) {
    Bytes input(secret.begin(), secret.end());
    input.insert(input.end(), kExporterLabel.begin(), kExporterLabel.end());
    input.insert(input.end(), context.begin(), context.end());
    Key out{};
    unsigned int length = 0;
    EXPECT_EQ(EVP_Digest(input.data(), input.size(), out.data(), &length, EVP_sha256(), nullptr), 1);
    return out;
  }

  Exporter callback() {
    return [contexts = contexts, secret = session_secret, available = available](
               std::string_view label, std::span<const std::uint8_t> context) -> std::optional<Key> {
      EXPECT_EQ(label, kExporterLabel);
      contexts->emplace_back(context.begin(), context.end());
      if (!available) return std::nullopt;
      return output_for(secret, context);
    };
  }
};

struct Collected {
  std::vector<PeerHello> hellos;
  std::vector<PskReady> psks;
  std::vector<std::string> failures;

  void add(std::vector<ExchangeEvent> events) {
    for (auto& event : events) {
      if (auto* hello = std::get_if<PeerHello>(&event)) hellos.push_back(*hello);
      if (auto* ready = std::get_if<PskReady>(&event)) psks.push_back(*ready);
      if (auto* failed = std::get_if<ExchangeFailed>(&event)) failures.push_back(failed->reason);
    }
  }
};

// Independent X25519 key pair for a hand-played peer.
struct EphemeralKey {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey{EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519"),
                                                             EVP_PKEY_free};
  Key public_key() const {
    Key out{};
    std::size_t length = out.size();
    EXPECT_EQ(EVP_PKEY_get_raw_public_key(pkey.get(), out.data(), &length), 1);
    return out;
  }
  // Empty when OpenSSL refuses (as it does for an all-zero result).
  std::optional<Key> shared_with(const Key& peer_public) const {
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> peer(
        EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public.data(), peer_public.size()),
        EVP_PKEY_free);
    std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new(pkey.get(), nullptr),
                                                                    EVP_PKEY_CTX_free);
    Key out{};
    std::size_t length = out.size();
    if (!peer || !ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1 ||
        EVP_PKEY_derive(ctx.get(), out.data(), &length) != 1)
      return std::nullopt;
    return out;
  }
};

// HKDF-SHA256 through the older EVP_PKEY interface, independent of the
// EVP_KDF path the engine uses.
Key reference_psk(const Key& salt, const Key& ikm, const Key& initiator_public, const Key& responder_public) {
  const std::string label = "tapsec wireguard psk";
  Bytes info(label.begin(), label.end());
  info.insert(info.end(), initiator_public.begin(), initiator_public.end());
  info.insert(info.end(), responder_public.begin(), responder_public.end());
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr),
                                                                  EVP_PKEY_CTX_free);
  Key out{};
  std::size_t length = out.size();
  EXPECT_EQ(EVP_PKEY_derive_init(ctx.get()), 1);
  EXPECT_EQ(EVP_PKEY_CTX_set_hkdf_md(ctx.get(), EVP_sha256()), 1);
  EXPECT_EQ(EVP_PKEY_CTX_set1_hkdf_salt(ctx.get(), salt.data(), salt.size()), 1);
  EXPECT_EQ(EVP_PKEY_CTX_set1_hkdf_key(ctx.get(), ikm.data(), ikm.size()), 1);
  EXPECT_EQ(EVP_PKEY_CTX_add1_hkdf_info(ctx.get(), info.data(), info.size()), 1);
  EXPECT_EQ(EVP_PKEY_derive(ctx.get(), out.data(), &length), 1);
  EXPECT_EQ(length, out.size());
  return out;
}

const Key kInitiatorKey = key_filled(0x11);
const Key kResponderKey = key_filled(0x22);
constexpr std::uint16_t kInitiatorPort = 51820;
constexpr std::uint16_t kResponderPort = 51821;

// Two engines wired back to back, as two agents over one TLS session.
struct Pair {
  FakeExporter initiator_exporter{"session-A"};
  FakeExporter responder_exporter{"session-A"};
  std::unique_ptr<PskExchange> initiator;
  std::unique_ptr<PskExchange> responder;
  Collected initiator_seen, responder_seen;
  std::size_t chunk_size = 0;  // 0: whole output at once

  void create() {
    initiator = std::make_unique<PskExchange>(Role::Initiator, kInitiatorKey, kInitiatorPort,
                                              initiator_exporter.callback());
    responder = std::make_unique<PskExchange>(Role::Responder, kResponderKey, kResponderPort,
                                              responder_exporter.callback());
  }

  void deliver(const Bytes& bytes, PskExchange& to) {
    if (chunk_size == 0) return to.feed(bytes);
    for (std::size_t i = 0; i < bytes.size(); i += chunk_size)
      to.feed(std::span(bytes).subspan(i, std::min(chunk_size, bytes.size() - i)));
  }

  // Moves bytes both ways until neither side has anything to say.
  void pump() {
    for (int round = 0; round < 16; ++round) {
      Bytes from_initiator = initiator->take_output();
      Bytes from_responder = responder->take_output();
      initiator_seen.add(initiator->take_events());
      responder_seen.add(responder->take_events());
      if (from_initiator.empty() && from_responder.empty()) return;
      deliver(from_initiator, *responder);
      deliver(from_responder, *initiator);
    }
    ADD_FAILURE() << "exchange did not settle";
  }

  void start() {
    create();
    initiator->start();
    responder->start();
    pump();
  }
};

TEST(PskExchange, BothSidesLearnThePeerAndAgreeOnEpochZero) {
  Pair pair;
  pair.start();

  ASSERT_EQ(pair.initiator_seen.hellos.size(), 1u);
  EXPECT_EQ(pair.initiator_seen.hellos[0].public_key, kResponderKey);
  EXPECT_EQ(pair.initiator_seen.hellos[0].listen_port, kResponderPort);
  ASSERT_EQ(pair.responder_seen.hellos.size(), 1u);
  EXPECT_EQ(pair.responder_seen.hellos[0].public_key, kInitiatorKey);
  EXPECT_EQ(pair.responder_seen.hellos[0].listen_port, kInitiatorPort);
  EXPECT_EQ(pair.initiator->peer()->public_key, kResponderKey);
  EXPECT_EQ(pair.responder->peer()->listen_port, kInitiatorPort);

  ASSERT_EQ(pair.initiator_seen.psks.size(), 1u);
  ASSERT_EQ(pair.responder_seen.psks.size(), 1u);
  EXPECT_EQ(pair.initiator_seen.psks[0].epoch, 0u);
  EXPECT_EQ(pair.responder_seen.psks[0].epoch, 0u);
  EXPECT_EQ(pair.initiator_seen.psks[0].psk, pair.responder_seen.psks[0].psk);
  EXPECT_NE(pair.initiator_seen.psks[0].psk, Key{});
  EXPECT_NE(pair.initiator_seen.psks[0].psk, FakeExporter::output_for("session-A", be64(0)));
  EXPECT_EQ(pair.initiator->epoch(), 0u);
  EXPECT_EQ(pair.responder->epoch(), 0u);

  EXPECT_EQ(*pair.initiator_exporter.contexts, std::vector<Bytes>{be64(0)});
  EXPECT_EQ(*pair.responder_exporter.contexts, std::vector<Bytes>{be64(0)});
  EXPECT_FALSE(pair.initiator->failed());
  EXPECT_FALSE(pair.responder->failed());
  EXPECT_TRUE(pair.initiator_seen.failures.empty());
  EXPECT_TRUE(pair.responder_seen.failures.empty());
}

TEST(PskExchange, EveryRotationGivesBothSidesAFreshPsk) {
  Pair pair;
  pair.start();
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(pair.initiator->rotate());
    pair.pump();
  }
  ASSERT_EQ(pair.initiator_seen.psks.size(), 5u);
  ASSERT_EQ(pair.responder_seen.psks.size(), 5u);
  std::set<Key> distinct;
  for (std::uint64_t epoch = 0; epoch < 5; ++epoch) {
    EXPECT_EQ(pair.initiator_seen.psks[epoch].epoch, epoch);
    EXPECT_EQ(pair.responder_seen.psks[epoch].epoch, epoch);
    EXPECT_EQ(pair.initiator_seen.psks[epoch].psk, pair.responder_seen.psks[epoch].psk);
    EXPECT_NE(pair.initiator_seen.psks[epoch].psk, FakeExporter::output_for("session-A", be64(epoch)));
    distinct.insert(pair.initiator_seen.psks[epoch].psk);
    EXPECT_EQ((*pair.initiator_exporter.contexts)[epoch], be64(epoch));
    EXPECT_EQ((*pair.responder_exporter.contexts)[epoch], be64(epoch));
  }
  EXPECT_EQ(distinct.size(), 5u);
  EXPECT_EQ(pair.initiator->epoch(), 4u);
  EXPECT_EQ(pair.responder->epoch(), 4u);
}

TEST(PskExchange, ByteByByteDeliveryGivesTheSameResult) {
  for (std::size_t chunk : {1u, 2u, 3u, 7u, 41u}) {
    SCOPED_TRACE("chunk size " + std::to_string(chunk));
    Pair pair;
    pair.chunk_size = chunk;
    pair.start();
    ASSERT_TRUE(pair.initiator->rotate());
    pair.pump();
    ASSERT_EQ(pair.initiator_seen.psks.size(), 2u);
    ASSERT_EQ(pair.responder_seen.psks.size(), 2u);
    EXPECT_EQ(pair.initiator_seen.psks[1].psk, pair.responder_seen.psks[1].psk);
    EXPECT_EQ(pair.initiator_seen.hellos.size(), 1u);
    EXPECT_TRUE(pair.initiator_seen.failures.empty());
  }
}

TEST(PskExchange, DerivePskMatchesAnIndependentHkdf) {
  const Key salt = key_filled(0x5a);
  const Key ikm = key_filled(0xa5);
  const auto psk = derive_psk(salt, ikm, kInitiatorKey, kResponderKey);
  ASSERT_TRUE(psk);
  EXPECT_EQ(*psk, reference_psk(salt, ikm, kInitiatorKey, kResponderKey));
  // The order of the WireGuard keys matters: the roles are bound in.
  EXPECT_NE(*psk, *derive_psk(salt, ikm, kResponderKey, kInitiatorKey));
  EXPECT_FALSE(derive_psk({}, ikm, kInitiatorKey, kResponderKey));
  EXPECT_FALSE(derive_psk(salt, Key{}, kInitiatorKey, kResponderKey));
}

// The test plays the responder by hand with its own X25519 and HKDF, so the
// wire format and the whole derivation are checked against the header.
TEST(PskExchange, InitiatorMatchesAHandWrittenResponder) {
  FakeExporter exporter{"session-B"};
  PskExchange initiator(Role::Initiator, kInitiatorKey, kInitiatorPort, exporter.callback());
  initiator.start();
  EXPECT_EQ(initiator.take_output(), hello_frame(kInitiatorKey, kInitiatorPort));

  initiator.feed(hello_frame(kResponderKey, kResponderPort));
  auto frames = parse_frames(initiator.take_output());
  ASSERT_EQ(frames.size(), 1u);
  ASSERT_EQ(frames[0].type, 2);
  ASSERT_EQ(frames[0].body.size(), 40u);
  EXPECT_EQ(Bytes(frames[0].body.begin(), frames[0].body.begin() + 8), be64(0));
  Key initiator_ephemeral;
  std::copy(frames[0].body.begin() + 8, frames[0].body.end(), initiator_ephemeral.begin());

  EphemeralKey responder_ephemeral;
  const auto shared = responder_ephemeral.shared_with(initiator_ephemeral);
  ASSERT_TRUE(shared);
  const Key expected =
      reference_psk(FakeExporter::output_for("session-B", be64(0)), *shared, kInitiatorKey, kResponderKey);

  initiator.feed(ack_frame(0, responder_ephemeral.public_key()));
  Collected seen;
  seen.add(initiator.take_events());
  ASSERT_EQ(seen.psks.size(), 1u);
  EXPECT_EQ(seen.psks[0].psk, expected);
  EXPECT_TRUE(initiator.take_output().empty());
}

TEST(PskExchange, ResponderMatchesAHandWrittenInitiator) {
  FakeExporter exporter{"session-C"};
  PskExchange responder(Role::Responder, kResponderKey, kResponderPort, exporter.callback());
  responder.start();
  (void)responder.take_output();
  EphemeralKey initiator_ephemeral;
  // HELLO and ROTATE coalesced in one read.
  responder.feed(concat({hello_frame(kInitiatorKey, kInitiatorPort), rotate_frame(0, initiator_ephemeral.public_key())}));
  const auto frames = parse_frames(responder.take_output());
  ASSERT_EQ(frames.size(), 1u);
  ASSERT_EQ(frames[0].type, 3);
  EXPECT_EQ(Bytes(frames[0].body.begin(), frames[0].body.begin() + 8), be64(0));
  Key responder_ephemeral;
  std::copy(frames[0].body.begin() + 8, frames[0].body.end(), responder_ephemeral.begin());
  const auto shared = initiator_ephemeral.shared_with(responder_ephemeral);
  ASSERT_TRUE(shared);

  Collected seen;
  seen.add(responder.take_events());
  ASSERT_EQ(seen.psks.size(), 1u);
  EXPECT_EQ(seen.psks[0].psk,
            reference_psk(FakeExporter::output_for("session-C", be64(0)), *shared, kInitiatorKey, kResponderKey));
}

TEST(PskExchange, InitiatorWaitsForThePeersHelloEvenWhenItArrivesBeforeStart) {
  FakeExporter exporter{"s"};
  PskExchange initiator(Role::Initiator, kInitiatorKey, kInitiatorPort, exporter.callback());
  initiator.feed(hello_frame(kResponderKey, kResponderPort));
  EXPECT_TRUE(initiator.take_output().empty());
  initiator.start();
  const auto frames = parse_frames(initiator.take_output());
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].type, 1);
  EXPECT_EQ(frames[1].type, 2);
}

TEST(PskExchange, DifferentTlsSessionsGiveDifferentPsks) {
  Pair pair;
  pair.responder_exporter.session_secret = "session-of-a-man-in-the-middle";
  pair.start();
  ASSERT_EQ(pair.initiator_seen.psks.size(), 1u);
  ASSERT_EQ(pair.responder_seen.psks.size(), 1u);
  EXPECT_NE(pair.initiator_seen.psks[0].psk, pair.responder_seen.psks[0].psk);
}

TEST(PskExchange, RotateRules) {
  FakeExporter exporter{"s"};
  PskExchange initiator(Role::Initiator, kInitiatorKey, kInitiatorPort, exporter.callback());
  EXPECT_FALSE(initiator.rotate());  // before start
  initiator.start();
  EXPECT_FALSE(initiator.rotate());  // before the peer's HELLO
  initiator.feed(hello_frame(kResponderKey, kResponderPort));
  (void)initiator.take_output();
  EXPECT_FALSE(initiator.rotate());  // epoch 0 not acknowledged yet
  EXPECT_TRUE(initiator.take_output().empty());

  Pair pair;
  pair.start();
  EXPECT_FALSE(pair.responder->rotate());
  EXPECT_TRUE(pair.responder->take_output().empty());
  EXPECT_TRUE(pair.initiator->rotate());
  EXPECT_FALSE(pair.initiator->rotate());  // epoch 1 still pending
  pair.pump();
  EXPECT_TRUE(pair.initiator->rotate());
  pair.initiator->abort("stop");
  EXPECT_FALSE(pair.initiator->rotate());
}

TEST(PskExchange, AbortSendsErrorAndThePeerReportsIt) {
  Pair pair;
  pair.start();
  pair.initiator->abort("policy revoked");
  EXPECT_TRUE(pair.initiator->failed());
  pair.pump();
  ASSERT_EQ(pair.initiator_seen.failures.size(), 1u);
  EXPECT_EQ(pair.initiator_seen.failures[0], "policy revoked");
  ASSERT_EQ(pair.responder_seen.failures.size(), 1u);
  EXPECT_NE(pair.responder_seen.failures[0].find("policy revoked"), std::string::npos);
  EXPECT_TRUE(pair.responder->failed());
  // The side that got ERROR does not answer with one.
  EXPECT_TRUE(pair.responder->take_output().empty());
  pair.initiator->abort("again");
  EXPECT_TRUE(pair.initiator->take_output().empty());
}

TEST(PskExchange, LongAbortReasonIsCutToFitAndStillAccepted) {
  Pair pair;
  pair.start();
  pair.responder->abort(std::string(600, 'x') + "\xc3\xa9");
  const Bytes output = pair.responder->take_output();
  const auto reason = error_frame_reason(output);
  ASSERT_TRUE(reason);
  EXPECT_EQ(reason->size(), 512u);
  pair.initiator->feed(output);
  EXPECT_TRUE(pair.initiator->failed());
}

TEST(PskExchange, PeerErrorReasonIsSanitized) {
  FakeExporter exporter{"s"};
  PskExchange responder(Role::Responder, kResponderKey, kResponderPort, exporter.callback());
  responder.start();
  const Bytes body{'b', 'a', 'd', '\n', 0xff, 0xc3, 0xa9};  // newline, invalid byte, then "é"
  responder.feed(frame(4, body));
  Collected seen;
  seen.add(responder.take_events());
  ASSERT_EQ(seen.failures.size(), 1u);
  EXPECT_NE(seen.failures[0].find("bad??\xc3\xa9"), std::string::npos) << seen.failures[0];
}

TEST(PskExchange, ExporterFailureFailsTheExchange) {
  for (bool initiator_side : {true, false}) {
    SCOPED_TRACE(initiator_side ? "initiator's exporter" : "responder's exporter");
    Pair pair;
    (initiator_side ? pair.initiator_exporter : pair.responder_exporter).available = false;
    pair.start();
    Collected& broken = initiator_side ? pair.initiator_seen : pair.responder_seen;
    Collected& other = initiator_side ? pair.responder_seen : pair.initiator_seen;
    ASSERT_EQ(broken.failures.size(), 1u);
    EXPECT_NE(broken.failures[0].find("exporter"), std::string::npos);
    ASSERT_EQ(other.failures.size(), 1u);  // told through ERROR
    EXPECT_NE(other.failures[0].find("exporter"), std::string::npos);
    EXPECT_TRUE(pair.initiator_seen.psks.empty() || !initiator_side);
    EXPECT_TRUE(pair.responder_seen.psks.empty() || initiator_side);
  }
}

// An engine of `role` that has sent HELLO and received a valid one (the
// initiator has also sent ROTATE for epoch 0).
std::unique_ptr<PskExchange> engine_after_hello(Role role, FakeExporter& exporter) {
  auto engine = std::make_unique<PskExchange>(role, role == Role::Initiator ? kInitiatorKey : kResponderKey, 1,
                                              exporter.callback());
  engine->start();
  engine->feed(hello_frame(role == Role::Initiator ? kResponderKey : kInitiatorKey, 2));
  (void)engine->take_output();
  (void)engine->take_events();
  return engine;
}

struct MalformedCase {
  std::string name;
  Role role;
  bool after_hello;  // feed after a valid exchange of HELLOs
  Bytes input;
  std::string expected_reason;
};

const Key kValidEphemeral = [] {
  Key k{};
  k[0] = 9;  // the X25519 base point
  return k;
}();

std::vector<MalformedCase> malformed_cases() {
  Bytes oversized = {4, 0x02, 0x01};  // ERROR of 513 bytes (header is enough)
  return {
      {"unknown type", Role::Responder, true, {9}, "unknown message type 9"},
      {"type zero", Role::Initiator, false, {0, 0, 0}, "unknown message type 0"},
      {"short HELLO", Role::Responder, false, frame(1, Bytes(34, 1)), "HELLO of 34 bytes"},
      {"huge HELLO header", Role::Responder, false, {1, 0xff, 0xff}, "HELLO of 65535 bytes"},
      {"long ROTATE", Role::Responder, true, frame(2, Bytes(41, 1)), "ROTATE of 41 bytes"},
      {"short ACK", Role::Initiator, true, frame(3, Bytes(39, 1)), "ACK of 39 bytes"},
      {"oversized ERROR", Role::Responder, true, oversized, "ERROR of 513 bytes"},
      {"wrong version", Role::Responder, false, hello_frame(kInitiatorKey, 1, 2), "unsupported protocol version 2"},
      {"HELLO twice", Role::Initiator, true, hello_frame(kResponderKey, 2), "HELLO received twice"},
      {"zero WireGuard key", Role::Initiator, false, hello_frame(Key{}, 2), "WireGuard public key is zero"},
      {"ROTATE before HELLO", Role::Responder, false, rotate_frame(0, kValidEphemeral), "before HELLO"},
      {"ROTATE to initiator", Role::Initiator, true, rotate_frame(0, kValidEphemeral), "ROTATE sent to the initiator"},
      {"ACK to responder", Role::Responder, true, ack_frame(0, kValidEphemeral), "ACK sent to the responder"},
      {"ACK for wrong epoch", Role::Initiator, true, ack_frame(1, kValidEphemeral), "ACK for epoch 1, expected 0"},
      {"ACK twice", Role::Initiator, true, concat({ack_frame(0, kValidEphemeral), ack_frame(0, kValidEphemeral)}),
       "without a ROTATE"},
      {"ROTATE skips epoch 0", Role::Responder, true, rotate_frame(1, kValidEphemeral),
       "ROTATE for epoch 1, expected 0"},
      {"ROTATE repeats an epoch", Role::Responder, true,
       concat({rotate_frame(0, kValidEphemeral), rotate_frame(0, kValidEphemeral)}), "ROTATE for epoch 0, expected 1"},
      {"ROTATE jumps an epoch", Role::Responder, true,
       concat({rotate_frame(0, kValidEphemeral), rotate_frame(2, kValidEphemeral)}), "ROTATE for epoch 2, expected 1"},
      {"ROTATE with epoch max", Role::Responder, true, rotate_frame(~0ull, kValidEphemeral), "expected 0"},
      {"zero ephemeral in ROTATE", Role::Responder, true, rotate_frame(0, Key{}), "ephemeral key is zero"},
      {"zero ephemeral in ACK", Role::Initiator, true, ack_frame(0, Key{}), "ephemeral key is zero"},
  };
}

TEST(PskExchange, MalformedInputFailsWithAReasonAndTellsThePeer) {
  for (const auto& c : malformed_cases()) {
    for (bool byte_by_byte : {false, true}) {
      SCOPED_TRACE(c.name + (byte_by_byte ? " (byte by byte)" : ""));
      FakeExporter exporter{"s"};
      std::unique_ptr<PskExchange> engine;
      if (c.after_hello) {
        engine = engine_after_hello(c.role, exporter);
      } else {
        engine = std::make_unique<PskExchange>(c.role, c.role == Role::Initiator ? kInitiatorKey : kResponderKey, 1,
                                               exporter.callback());
        engine->start();
        (void)engine->take_output();
      }
      if (byte_by_byte) {
        for (std::uint8_t b : c.input) engine->feed(std::span(&b, 1));
      } else {
        engine->feed(c.input);
      }
      ASSERT_TRUE(engine->failed());
      Collected seen;
      seen.add(engine->take_events());
      ASSERT_EQ(seen.failures.size(), 1u);
      EXPECT_NE(seen.failures[0].find(c.expected_reason), std::string::npos) << seen.failures[0];
      const auto sent = error_frame_reason(engine->take_output());
      ASSERT_TRUE(sent);
      EXPECT_EQ(*sent, seen.failures[0]);

      // Nothing more is read after a failure.
      engine->feed(hello_frame(kInitiatorKey, 1));
      engine->feed({Bytes{9, 9, 9}});
      EXPECT_TRUE(engine->take_events().empty());
      EXPECT_TRUE(engine->take_output().empty());
    }
  }
}

TEST(PskExchange, ResponderRefusesRotateBeforeItsOwnStart) {
  FakeExporter exporter{"s"};
  PskExchange responder(Role::Responder, kResponderKey, 1, exporter.callback());
  responder.feed(concat({hello_frame(kInitiatorKey, 2), rotate_frame(0, kValidEphemeral)}));
  EXPECT_TRUE(responder.failed());
  Collected seen;
  seen.add(responder.take_events());
  ASSERT_EQ(seen.failures.size(), 1u);
  EXPECT_NE(seen.failures[0].find("before this side sent HELLO"), std::string::npos);
}

// Points whose X25519 with any private key is zero, as the wire carries them
// (bit 255 is ignored by X25519, so those variants too).
std::vector<Key> low_order_points() {
  const auto from_hex = [](std::string_view hex) {
    Key key{};
    for (std::size_t i = 0; i < key.size(); ++i)
      key[i] = static_cast<std::uint8_t>(std::stoi(std::string(hex.substr(2 * i, 2)), nullptr, 16));
    return key;
  };
  std::vector<Key> points = {
      from_hex("0000000000000000000000000000000000000000000000000000000000000000"),
      from_hex("0100000000000000000000000000000000000000000000000000000000000000"),
      from_hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
      from_hex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
      from_hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
      from_hex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
      from_hex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
  };
  const std::size_t canonical = points.size();
  for (std::size_t i = 0; i < canonical; ++i) {
    Key high = points[i];
    high[31] |= 0x80;
    points.push_back(high);
  }
  return points;
}

TEST(PskExchange, LowOrderPointsReallyGiveAZeroSharedSecret) {
  EphemeralKey key;
  for (const Key& point : low_order_points()) {
    const auto shared = key.shared_with(point);
    EXPECT_TRUE(!shared || *shared == Key{});
  }
  EXPECT_TRUE(key.shared_with(kValidEphemeral));
}

TEST(PskExchange, LowOrderEphemeralKeysAreRejected) {
  for (const Key& point : low_order_points()) {
    FakeExporter exporter{"s"};
    auto responder = engine_after_hello(Role::Responder, exporter);
    responder->feed(rotate_frame(0, point));
    EXPECT_TRUE(responder->failed());
    auto initiator = engine_after_hello(Role::Initiator, exporter);
    initiator->feed(ack_frame(0, point));
    EXPECT_TRUE(initiator->failed());
    Collected seen;
    seen.add(initiator->take_events());
    ASSERT_EQ(seen.failures.size(), 1u);
    EXPECT_NE(seen.failures[0].find("low order"), std::string::npos);
    EXPECT_TRUE(exporter.contexts->empty());  // rejected before any derivation
  }
}

}  // namespace
}  // namespace tapsec::wireguard
