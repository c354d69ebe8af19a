#include "agent/engines/wireguard/psk_exchange.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <limits>
#include <string>
#include <utility>

#include "agent/core/openssl_ptr.h"

namespace tapsec::wireguard {
namespace {

using core::EvpKdfCtxPtr;
using core::EvpKdfPtr;
using core::EvpPkeyCtxPtr;
using core::EvpPkeyPtr;

enum MessageType : std::uint8_t { kHello = 1, kRotate = 2, kAck = 3, kError = 4 };

constexpr std::uint8_t kProtocolVersion = 1;
constexpr std::size_t kHeaderSize = 3;
constexpr std::size_t kHelloBodySize = 1 + 32 + 2;
constexpr std::size_t kEpochBodySize = 8 + 32;
constexpr std::size_t kMaxErrorBodySize = 512;
constexpr std::string_view kPskInfoLabel = "tapsec wireguard psk";

// Holds a secret of fixed size and wipes it however the scope is left.
struct WipedKey {
  Key bytes{};
  WipedKey() = default;
  WipedKey(const WipedKey&) = delete;
  WipedKey& operator=(const WipedKey&) = delete;
  ~WipedKey() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
};

bool all_zero(std::span<const std::uint8_t> bytes) {
  std::uint8_t accumulated = 0;
  for (std::uint8_t b : bytes) accumulated |= b;
  return accumulated == 0;
}

// X25519 points of small order, little-endian as on the wire (bit 255 is
// ignored by X25519, so it is cleared before comparing). A peer sending one
// of these forces the shared secret to zero whatever our private key is.
constexpr std::array<Key, 7> kLowOrderPoints = {{
    {},                                                  // 0
    {0x01},                                              // 1
    {0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a,
     0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},  // order 8
    {0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b,
     0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},  // order 8
    {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},  // p - 1
    {0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},  // p (= 0)
    {0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},  // p + 1 (= 1)
}};

bool is_low_order(const Key& point) {
  Key masked = point;
  masked[31] &= 0x7f;
  return std::any_of(kLowOrderPoints.begin(), kLowOrderPoints.end(),
                     [&](const Key& bad) { return CRYPTO_memcmp(bad.data(), masked.data(), masked.size()) == 0; });
}

std::uint16_t read_be16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] << 8 | p[1]); }

std::uint64_t read_be64(const std::uint8_t* p) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = value << 8 | p[i];
  return value;
}

std::array<std::uint8_t, 8> be64(std::uint64_t value) {
  std::array<std::uint8_t, 8> out{};
  for (int i = 7; i >= 0; --i, value >>= 8) out[i] = static_cast<std::uint8_t>(value);
  return out;
}

Key read_key(const std::uint8_t* p) {
  Key key;
  std::copy_n(p, key.size(), key.begin());
  return key;
}

// Length of the valid UTF-8 sequence starting at text[i], or 0.
std::size_t utf8_sequence_length(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  std::size_t length;
  unsigned char second_min = 0x80, second_max = 0xbf;
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    if (lead == 0xe0) second_min = 0xa0;  // overlong
    if (lead == 0xed) second_max = 0x9f;  // surrogates
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    if (lead == 0xf0) second_min = 0x90;  // overlong
    if (lead == 0xf4) second_max = 0x8f;  // beyond U+10FFFF
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  if (byte(i + 1) < second_min || byte(i + 1) > second_max) return 0;
  for (std::size_t k = 2; k < length; ++k)
    if (byte(i + k) < 0x80 || byte(i + k) > 0xbf) return 0;
  return length;
}

// The peer's reason as safe text for logs: invalid UTF-8 and control
// characters become '?'.
std::string printable_reason(std::span<const std::uint8_t> body) {
  const std::string_view text(reinterpret_cast<const char*>(body.data()), body.size());
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t length = utf8_sequence_length(text, i);
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (length == 0 || (length == 1 && (c < 0x20 || c == 0x7f))) {
      out += '?';
      ++i;
    } else {
      out.append(text.substr(i, length));
      i += length;
    }
  }
  return out;
}

// `reason` cut to what fits into ERROR, never inside a UTF-8 sequence.
std::string_view truncated_reason(std::string_view reason) {
  if (reason.size() <= kMaxErrorBodySize) return reason;
  std::size_t end = kMaxErrorBodySize;
  while (end > 0 && (static_cast<unsigned char>(reason[end]) & 0xc0) == 0x80) --end;
  return reason.substr(0, end);
}

EvpPkeyPtr generate_ephemeral() { return EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519")); }

std::optional<Key> public_key_of(EVP_PKEY* key) {
  Key out;
  std::size_t length = out.size();
  if (EVP_PKEY_get_raw_public_key(key, out.data(), &length) != 1 || length != out.size()) return std::nullopt;
  return out;
}

// X25519(own, peer) into `shared`; false on any failure, including the
// all-zero result of a low-order peer key.
bool x25519(EVP_PKEY* own, const Key& peer_public, Key& shared) {
  EvpPkeyPtr peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public.data(), peer_public.size()));
  if (!peer) return false;
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new(own, nullptr));
  std::size_t length = shared.size();
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1 ||
      EVP_PKEY_derive(ctx.get(), shared.data(), &length) != 1 || length != shared.size()) {
    OPENSSL_cleanse(shared.data(), shared.size());
    return false;
  }
  return !all_zero(shared);
}

}  // namespace

std::optional<Key> derive_psk(std::span<const std::uint8_t> exporter_salt, const Key& shared_secret,
                              const Key& initiator_public, const Key& responder_public) {
  // An empty salt would drop the binding to the TLS session; a zero secret
  // means a low-order ephemeral key.
  if (exporter_salt.empty() || all_zero(shared_secret)) return std::nullopt;

  std::array<std::uint8_t, kPskInfoLabel.size() + 2 * sizeof(Key)> info{};
  auto info_end = std::copy(kPskInfoLabel.begin(), kPskInfoLabel.end(), info.begin());
  info_end = std::copy(initiator_public.begin(), initiator_public.end(), info_end);
  std::copy(responder_public.begin(), responder_public.end(), info_end);

  EvpKdfPtr kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  if (!kdf) return std::nullopt;
  EvpKdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return std::nullopt;
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<std::uint8_t*>(exporter_salt.data()),
                                        exporter_salt.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<std::uint8_t*>(shared_secret.data()),
                                        shared_secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end(),
  };
  std::optional<Key> psk(std::in_place);
  if (EVP_KDF_derive(ctx.get(), psk->data(), psk->size(), params) != 1) {
    OPENSSL_cleanse(psk->data(), psk->size());
    return std::nullopt;
  }
  return psk;
}

struct PskExchange::Impl {
  Role role;
  Key local_public_key;
  std::uint16_t local_listen_port;
  Exporter exporter;

  bool started = false;
  bool failed = false;
  std::optional<PeerHello> peer;
  std::optional<std::uint64_t> ready_epoch;
  // Initiator only: the ROTATE waiting for its ACK.
  EvpPkeyPtr pending_ephemeral;  // EVP_PKEY_free wipes the private key
  std::uint64_t pending_epoch = 0;

  std::vector<std::uint8_t> input;
  std::vector<std::uint8_t> output;
  std::vector<ExchangeEvent> events;

  Impl(Role r, Key key, std::uint16_t port, Exporter e)
      : role(r), local_public_key(key), local_listen_port(port), exporter(std::move(e)) {}

  ~Impl() { wipe_events(events); }

  static void wipe_events(std::vector<ExchangeEvent>& list) {
    for (auto& event : list)
      if (auto* ready = std::get_if<PskReady>(&event)) OPENSSL_cleanse(ready->psk.data(), ready->psk.size());
  }

  // Grows the event list by hand so no unwiped PSK copy is left behind in
  // memory the vector frees when it reallocates.
  void make_room_for_event() {
    if (events.size() < events.capacity()) return;
    std::vector<ExchangeEvent> larger;
    larger.reserve(std::max<std::size_t>(4, 2 * events.capacity()));
    for (auto& old : events) larger.push_back(old);
    wipe_events(events);
    events.swap(larger);
  }

  void push_event(ExchangeEvent event) {
    make_room_for_event();
    events.push_back(std::move(event));
  }

  void push_psk_ready(std::uint64_t epoch, const Key& psk) {
    make_room_for_event();
    auto& ready = std::get<PskReady>(events.emplace_back(std::in_place_type<PskReady>));
    ready.epoch = epoch;
    ready.psk = psk;
  }

  void queue(MessageType type, std::span<const std::uint8_t> body) {
    output.push_back(type);
    output.push_back(static_cast<std::uint8_t>(body.size() >> 8));
    output.push_back(static_cast<std::uint8_t>(body.size()));
    output.insert(output.end(), body.begin(), body.end());
  }

  void queue_epoch_message(MessageType type, std::uint64_t epoch, const Key& ephemeral_public) {
    std::array<std::uint8_t, kEpochBodySize> body{};
    const auto epoch_bytes = be64(epoch);
    std::copy(epoch_bytes.begin(), epoch_bytes.end(), body.begin());
    std::copy(ephemeral_public.begin(), ephemeral_public.end(), body.begin() + 8);
    queue(type, body);
  }

  // Fails without telling the peer (it told us, or it is gone).
  void fail_quietly(std::string reason) {
    if (failed) return;
    failed = true;
    pending_ephemeral.reset();
    input.clear();
    push_event(ExchangeFailed{std::move(reason)});
  }

  // Fails and queues ERROR so the peer learns why.
  void fail(std::string_view reason) {
    if (failed) return;
    const std::string_view sent = truncated_reason(reason);
    queue(kError, std::span(reinterpret_cast<const std::uint8_t*>(sent.data()), sent.size()));
    fail_quietly(std::string(reason));
  }

  void start() {
    if (started || failed) return;
    started = true;
    std::array<std::uint8_t, kHelloBodySize> body{};
    body[0] = kProtocolVersion;
    std::copy(local_public_key.begin(), local_public_key.end(), body.begin() + 1);
    body[33] = static_cast<std::uint8_t>(local_listen_port >> 8);
    body[34] = static_cast<std::uint8_t>(local_listen_port);
    queue(kHello, body);
    if (role == Role::Initiator && peer) send_rotate(0);
  }

  void send_rotate(std::uint64_t epoch) {
    EvpPkeyPtr ephemeral = generate_ephemeral();
    const std::optional<Key> ephemeral_public = ephemeral ? public_key_of(ephemeral.get()) : std::nullopt;
    if (!ephemeral_public) return fail("cannot generate an ephemeral X25519 key");
    pending_ephemeral = std::move(ephemeral);
    pending_epoch = epoch;
    queue_epoch_message(kRotate, epoch, *ephemeral_public);
  }

  bool rotate() {
    if (role != Role::Initiator || failed || !started || !peer || pending_ephemeral || !ready_epoch ||
        *ready_epoch == std::numeric_limits<std::uint64_t>::max())
      return false;
    send_rotate(*ready_epoch + 1);
    return !failed;
  }

  // Frame header checks, before the body has arrived: a wrong type or
  // length fails at once instead of waiting for bytes that never come.
  std::optional<std::string> header_problem(std::uint8_t type, std::size_t length) const {
    switch (type) {
      case kHello:
        if (length != kHelloBodySize) return "HELLO of " + std::to_string(length) + " bytes, expected 35";
        return std::nullopt;
      case kRotate:
      case kAck:
        if (length != kEpochBodySize)
          return std::string(type == kRotate ? "ROTATE" : "ACK") + " of " + std::to_string(length) +
                 " bytes, expected 40";
        return std::nullopt;
      case kError:
        if (length > kMaxErrorBodySize) return "ERROR of " + std::to_string(length) + " bytes, at most 512 allowed";
        return std::nullopt;
    }
    return "unknown message type " + std::to_string(type);
  }

  void feed(std::span<const std::uint8_t> bytes) {
    if (failed) return;
    input.insert(input.end(), bytes.begin(), bytes.end());
    std::size_t offset = 0;
    while (!failed && input.size() - offset >= 1) {
      const std::uint8_t type = input[offset];
      if (type < kHello || type > kError) return fail("unknown message type " + std::to_string(type));
      if (input.size() - offset < kHeaderSize) break;
      const std::size_t length = read_be16(&input[offset + 1]);
      if (auto problem = header_problem(type, length)) return fail(*problem);
      if (input.size() - offset < kHeaderSize + length) break;
      const std::span<const std::uint8_t> body(&input[offset + kHeaderSize], length);
      offset += kHeaderSize + length;
      handle(type, body);
    }
    if (failed) return;  // input already cleared
    input.erase(input.begin(), input.begin() + static_cast<std::ptrdiff_t>(offset));
  }

  void handle(std::uint8_t type, std::span<const std::uint8_t> body) {
    if (type == kError) {
      const std::string reason = printable_reason(body);
      return fail_quietly("peer reported an error: " + (reason.empty() ? std::string("(no reason given)") : reason));
    }
    if (type == kHello) return on_hello(body);
    if (!peer) return fail(std::string(type == kRotate ? "ROTATE" : "ACK") + " before HELLO");
    const std::uint64_t epoch = read_be64(body.data());
    const Key peer_ephemeral = read_key(body.data() + 8);
    if (type == kRotate) return on_rotate(epoch, peer_ephemeral);
    return on_ack(epoch, peer_ephemeral);
  }

  void on_hello(std::span<const std::uint8_t> body) {
    if (peer) return fail("HELLO received twice");
    if (body[0] != kProtocolVersion)
      return fail("unsupported protocol version " + std::to_string(body[0]) + ", expected 1");
    PeerHello hello{read_key(body.data() + 1), read_be16(body.data() + 33)};
    if (is_low_order(hello.public_key)) return fail("peer's WireGuard public key is zero or of low order");
    peer = hello;
    push_event(hello);
    if (role == Role::Initiator && started) send_rotate(0);
  }

  void on_rotate(std::uint64_t epoch, const Key& peer_ephemeral) {
    if (role == Role::Initiator) return fail("ROTATE sent to the initiator");
    if (!started) return fail("ROTATE before this side sent HELLO");
    if (ready_epoch && *ready_epoch == std::numeric_limits<std::uint64_t>::max())
      return fail("no epoch left after " + std::to_string(*ready_epoch));
    const std::uint64_t expected = ready_epoch ? *ready_epoch + 1 : 0;
    if (epoch != expected)
      return fail("ROTATE for epoch " + std::to_string(epoch) + ", expected " + std::to_string(expected));
    if (is_low_order(peer_ephemeral)) return fail("peer's ephemeral key is zero or of low order");
    EvpPkeyPtr ephemeral = generate_ephemeral();
    const std::optional<Key> ephemeral_public = ephemeral ? public_key_of(ephemeral.get()) : std::nullopt;
    if (!ephemeral_public) return fail("cannot generate an ephemeral X25519 key");
    // ACK goes out only when the PSK is ready here, so an ACK always means
    // the responder holds it.
    if (!complete_epoch(epoch, ephemeral.get(), peer_ephemeral)) return;
    queue_epoch_message(kAck, epoch, *ephemeral_public);
  }

  void on_ack(std::uint64_t epoch, const Key& peer_ephemeral) {
    if (role == Role::Responder) return fail("ACK sent to the responder");
    if (!pending_ephemeral) return fail("ACK for epoch " + std::to_string(epoch) + " without a ROTATE");
    if (epoch != pending_epoch)
      return fail("ACK for epoch " + std::to_string(epoch) + ", expected " + std::to_string(pending_epoch));
    if (is_low_order(peer_ephemeral)) return fail("peer's ephemeral key is zero or of low order");
    const EvpPkeyPtr ephemeral = std::move(pending_ephemeral);
    complete_epoch(epoch, ephemeral.get(), peer_ephemeral);
  }

  // Derives the epoch's PSK and reports it; false (and failed) otherwise.
  bool complete_epoch(std::uint64_t epoch, EVP_PKEY* own_ephemeral, const Key& peer_ephemeral) {
    WipedKey shared;
    if (!x25519(own_ephemeral, peer_ephemeral, shared.bytes)) {
      fail("X25519 with the peer's ephemeral key failed");
      return false;
    }
    const auto context = be64(epoch);
    std::optional<Key> salt = exporter ? exporter(kExporterLabel, context) : std::nullopt;
    if (!salt) {
      fail("TLS exporter unavailable");
      return false;
    }
    const bool initiator = role == Role::Initiator;
    std::optional<Key> psk = derive_psk(*salt, shared.bytes, initiator ? local_public_key : peer->public_key,
                                        initiator ? peer->public_key : local_public_key);
    OPENSSL_cleanse(salt->data(), salt->size());
    if (!psk) {
      fail("PSK derivation failed");
      return false;
    }
    ready_epoch = epoch;
    push_psk_ready(epoch, *psk);
    OPENSSL_cleanse(psk->data(), psk->size());
    return true;
  }
};

PskExchange::PskExchange(Role role, Key local_public_key, std::uint16_t local_listen_port, Exporter exporter)
    : impl_(std::make_unique<Impl>(role, local_public_key, local_listen_port, std::move(exporter))) {}

PskExchange::~PskExchange() = default;

void PskExchange::start() { impl_->start(); }
void PskExchange::feed(std::span<const std::uint8_t> bytes) { impl_->feed(bytes); }
bool PskExchange::rotate() { return impl_->rotate(); }

void PskExchange::abort(std::string_view reason) { impl_->fail(reason); }

std::vector<std::uint8_t> PskExchange::take_output() { return std::exchange(impl_->output, {}); }
std::vector<ExchangeEvent> PskExchange::take_events() { return std::exchange(impl_->events, {}); }

bool PskExchange::failed() const { return impl_->failed; }
std::optional<PeerHello> PskExchange::peer() const { return impl_->peer; }
std::optional<std::uint64_t> PskExchange::epoch() const { return impl_->ready_epoch; }

}  // namespace tapsec::wireguard
