// IKEv2 key material: SecretBytes, algorithm suites and proposal selection,
// the PRF and prf+, key exchange groups and the key schedules.
#include "agent/engines/ikev2/crypto.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <initializer_list>
#include <stdexcept>

#include "agent/core/openssl_ptr.h"

namespace tapsec::ikev2 {
namespace {

using core::OpenSslPtr;

using core::EvpMacCtxPtr;
using core::EvpPkeyCtxPtr;
using core::EvpPkeyPtr;
using BignumPtr = OpenSslPtr<BIGNUM, BN_clear_free>;
using BnCtxPtr = OpenSslPtr<BN_CTX, BN_CTX_free>;
using ParamBuildPtr = OpenSslPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using ParamPtr = OpenSslPtr<OSSL_PARAM, OSSL_PARAM_free>;
using EcGroupPtr = OpenSslPtr<EC_GROUP, EC_GROUP_free>;
using EcPointPtr = OpenSslPtr<EC_POINT, EC_POINT_free>;

// ---------------------------------------------------------------- HMAC

const char* prf_digest_name(std::uint16_t prf_id) {
  switch (prf_id) {
    case prf::kHmacSha256: return "SHA256";
    case prf::kHmacSha384: return "SHA384";
    case prf::kHmacSha512: return "SHA512";
    default: return nullptr;
  }
}

std::size_t prf_output_size(std::uint16_t prf_id) {
  switch (prf_id) {
    case prf::kHmacSha256: return 32;
    case prf::kHmacSha384: return 48;
    case prf::kHmacSha512: return 64;
    default: return 0;
  }
}

EVP_MAC* hmac_algorithm() {
  // Fetched once; OpenSSL's fetched algorithms are safe to share between threads.
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  return mac;
}

SecretBytes hmac(const char* digest, std::span<const std::uint8_t> key,
                 std::initializer_list<std::span<const std::uint8_t>> parts) {
  static const std::uint8_t kEmptyKey = 0;  // EVP_MAC_init treats a null key as "keep the old one"
  EVP_MAC* mac = hmac_algorithm();
  if (mac == nullptr || digest == nullptr) throw std::runtime_error("HMAC is not available");
  EvpMacCtxPtr context(EVP_MAC_CTX_new(mac));
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_end(),
  };
  const std::uint8_t* key_data = key.empty() ? &kEmptyKey : key.data();
  if (!context || EVP_MAC_init(context.get(), key_data, key.size(), params) != 1)
    throw std::runtime_error("HMAC initialisation failed");
  for (const auto& part : parts) {
    if (!part.empty() && EVP_MAC_update(context.get(), part.data(), part.size()) != 1)
      throw std::runtime_error("HMAC update failed");
  }
  SecretBytes out(EVP_MAC_CTX_get_mac_size(context.get()));
  std::size_t written = 0;
  if (EVP_MAC_final(context.get(), out.data(), &written, out.size()) != 1 || written != out.size())
    throw std::runtime_error("HMAC final failed");
  return out;
}

void append(Bytes& out, std::span<const std::uint8_t> bytes) { out.insert(out.end(), bytes.begin(), bytes.end()); }

void append_u64(Bytes& out, std::uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(value >> shift));
}

// A byte buffer for concatenated secrets that is wiped when it goes away.
struct WipedBuffer {
  Bytes bytes;
  ~WipedBuffer() {
    if (!bytes.empty()) OPENSSL_cleanse(bytes.data(), bytes.size());
  }
};

// ---------------------------------------------------------------- suites

bool is_aead_encryption(std::uint16_t id) { return id == encr::kAesGcm16 || id == encr::kChaCha20Poly1305; }

bool encryption_supported(const Transform& t) {
  switch (t.id) {
    case encr::kAesCbc:
    case encr::kAesGcm16: return t.key_length == 128 || t.key_length == 256;
    case encr::kChaCha20Poly1305: return !t.key_length.has_value() || t.key_length == 256;
    default: return false;
  }
}

bool transform_supported(const Transform& t) {
  switch (t.type) {
    case TransformType::Encryption: return encryption_supported(t);
    case TransformType::Prf: return prf_digest_name(t.id) != nullptr && !t.key_length;
    case TransformType::Integrity:
      return (t.id == integ::kNone || t.id == integ::kHmacSha256_128 || t.id == integ::kHmacSha384_192 ||
              t.id == integ::kHmacSha512_256) &&
             !t.key_length;
    case TransformType::KeyExchange: return (t.id == group::kNone || group_supported(t.id)) && !t.key_length;
    case TransformType::Esn: return (t.id == esn::kNo || t.id == esn::kYes) && !t.key_length;
  }
  return false;
}

// ChaCha20-Poly1305 carries no Key Length attribute; compare it as 256 bits.
bool same_transform(const Transform& a, const Transform& b) {
  if (a.type != b.type || a.id != b.id) return false;
  if (a.type == TransformType::Encryption && a.id == encr::kChaCha20Poly1305) return true;
  return a.key_length == b.key_length;
}

std::vector<const Transform*> transforms_of(const Proposal& proposal, TransformType type) {
  std::vector<const Transform*> found;
  for (const auto& t : proposal.transforms)
    if (t.type == type) found.push_back(&t);
  return found;
}

std::vector<std::uint16_t> groups_of(const Proposal& proposal) {
  std::vector<std::uint16_t> groups;
  for (const auto* t : transforms_of(proposal, TransformType::KeyExchange)) groups.push_back(t->id);
  if (groups.empty()) groups.push_back(group::kNone);
  return groups;
}

bool has_real_integrity(const Proposal& proposal) {
  for (const auto* t : transforms_of(proposal, TransformType::Integrity))
    if (t->id != integ::kNone) return true;
  return false;
}

// The first transform of `type` in the peer's order that `ours` also lists.
std::optional<Transform> pick(const Proposal& offered, const Proposal& ours, TransformType type) {
  for (const auto* candidate : transforms_of(offered, type)) {
    if (!transform_supported(*candidate)) continue;
    for (const auto* mine : transforms_of(ours, type))
      if (same_transform(*candidate, *mine)) return *candidate;
  }
  return std::nullopt;
}

// Selects from one offered proposal against one of ours, strongSwan style.
std::optional<ChosenProposal> select(const Proposal& offered, const Proposal& ours) {
  if (offered.protocol != ours.protocol) return std::nullopt;
  const bool ike = offered.protocol == ProtocolId::Ike;
  if (!ike && offered.protocol != ProtocolId::Esp) return std::nullopt;

  ChosenProposal chosen;
  chosen.proposal.number = offered.number;
  chosen.proposal.protocol = offered.protocol;
  chosen.proposal.spi = offered.spi;

  auto encryption = pick(offered, ours, TransformType::Encryption);
  if (!encryption) return std::nullopt;
  const bool aead = is_aead_encryption(encryption->id);
  chosen.proposal.transforms.push_back(*encryption);
  chosen.suite.encryption = encryption->id;
  chosen.suite.encryption_key_bits = encryption->key_length.value_or(256);

  if (ike) {
    auto prf_transform = pick(offered, ours, TransformType::Prf);
    if (!prf_transform) return std::nullopt;
    chosen.proposal.transforms.push_back(*prf_transform);
    chosen.suite.prf = prf_transform->id;
  } else if (!transforms_of(offered, TransformType::Prf).empty()) {
    return std::nullopt;  // a PRF has no place in an ESP proposal
  }

  if (aead) {
    // RFC 5282 §8: an AEAD proposal carries no integrity, or only NONE.
    if (has_real_integrity(offered)) return std::nullopt;
  } else {
    auto integrity = pick(offered, ours, TransformType::Integrity);
    if (!integrity || integrity->id == integ::kNone) return std::nullopt;
    chosen.proposal.transforms.push_back(*integrity);
    chosen.suite.integrity = integrity->id;
  }

  if (ike) {
    auto key_exchange = pick(offered, ours, TransformType::KeyExchange);
    if (!key_exchange || key_exchange->id == group::kNone) return std::nullopt;
    chosen.proposal.transforms.push_back(*key_exchange);
    chosen.suite.key_exchange = key_exchange->id;
  } else {
    // PFS: the groups must agree; a proposal without KE transforms means NONE.
    std::optional<std::uint16_t> agreed;
    for (std::uint16_t candidate : groups_of(offered)) {
      if (candidate != group::kNone && !group_supported(candidate)) continue;
      auto ours_groups = groups_of(ours);
      if (std::find(ours_groups.begin(), ours_groups.end(), candidate) != ours_groups.end()) {
        agreed = candidate;
        break;
      }
    }
    if (!agreed) return std::nullopt;
    if (*agreed != group::kNone) {
      chosen.proposal.transforms.push_back(Transform{TransformType::KeyExchange, *agreed, std::nullopt});
      chosen.suite.key_exchange = *agreed;
    }
  }

  if (!ike) {
    auto esn_transform = pick(offered, ours, TransformType::Esn);
    if (!esn_transform) return std::nullopt;
    chosen.proposal.transforms.push_back(*esn_transform);
    chosen.suite.extended_sequence_numbers = esn_transform->id == esn::kYes;
  } else if (!transforms_of(offered, TransformType::Esn).empty()) {
    return std::nullopt;
  }
  return chosen;
}

// ---------------------------------------------------------------- proposal strings

struct TokenMeaning {
  std::string_view token;
  TransformType type;
  std::uint16_t id;
  std::optional<std::uint16_t> key_length;
};

constexpr TokenMeaning kTokens[] = {
    {"aes128", TransformType::Encryption, encr::kAesCbc, 128},
    {"aes256", TransformType::Encryption, encr::kAesCbc, 256},
    {"aes128gcm16", TransformType::Encryption, encr::kAesGcm16, 128},
    {"aes256gcm16", TransformType::Encryption, encr::kAesGcm16, 256},
    {"aes128gcm128", TransformType::Encryption, encr::kAesGcm16, 128},
    {"aes256gcm128", TransformType::Encryption, encr::kAesGcm16, 256},
    {"aes128gcm", TransformType::Encryption, encr::kAesGcm16, 128},
    {"aes256gcm", TransformType::Encryption, encr::kAesGcm16, 256},
    {"chacha20poly1305", TransformType::Encryption, encr::kChaCha20Poly1305, std::nullopt},
    {"sha256", TransformType::Integrity, integ::kHmacSha256_128, std::nullopt},
    {"sha2_256", TransformType::Integrity, integ::kHmacSha256_128, std::nullopt},
    {"sha384", TransformType::Integrity, integ::kHmacSha384_192, std::nullopt},
    {"sha2_384", TransformType::Integrity, integ::kHmacSha384_192, std::nullopt},
    {"sha512", TransformType::Integrity, integ::kHmacSha512_256, std::nullopt},
    {"sha2_512", TransformType::Integrity, integ::kHmacSha512_256, std::nullopt},
    {"prfsha256", TransformType::Prf, prf::kHmacSha256, std::nullopt},
    {"prfsha384", TransformType::Prf, prf::kHmacSha384, std::nullopt},
    {"prfsha512", TransformType::Prf, prf::kHmacSha512, std::nullopt},
    {"x25519", TransformType::KeyExchange, group::kCurve25519, std::nullopt},
    {"curve25519", TransformType::KeyExchange, group::kCurve25519, std::nullopt},
    {"ecp256", TransformType::KeyExchange, group::kEcp256, std::nullopt},
    {"ecp384", TransformType::KeyExchange, group::kEcp384, std::nullopt},
    {"modp2048", TransformType::KeyExchange, group::kModp2048, std::nullopt},
    {"esn", TransformType::Esn, esn::kYes, std::nullopt},
    {"noesn", TransformType::Esn, esn::kNo, std::nullopt},
};

std::uint16_t prf_for_integrity(std::uint16_t integrity_id) {
  switch (integrity_id) {
    case integ::kHmacSha256_128: return prf::kHmacSha256;
    case integ::kHmacSha384_192: return prf::kHmacSha384;
    case integ::kHmacSha512_256: return prf::kHmacSha512;
    default: return 0;
  }
}

void add_unique(std::vector<Transform>& list, const Transform& transform) {
  if (std::find(list.begin(), list.end(), transform) == list.end()) list.push_back(transform);
}

Proposal must_parse(std::string_view text, ProtocolId protocol) {
  auto parsed = parse_proposal(text, protocol);
  if (auto* error = std::get_if<ProposalParseError>(&parsed)) throw std::logic_error(error->message);
  return std::get<Proposal>(parsed);
}

// ---------------------------------------------------------------- key exchange

enum class GroupKind { X25519, Ecp, Modp };

struct GroupInfo {
  std::uint16_t id;
  GroupKind kind;
  const char* openssl_name;   // curve or FFDH group name
  std::size_t public_size;    // bytes of the KE payload data
};

constexpr GroupInfo kGroups[] = {
    {group::kCurve25519, GroupKind::X25519, "X25519", 32},
    {group::kEcp256, GroupKind::Ecp, "P-256", 64},
    {group::kEcp384, GroupKind::Ecp, "P-384", 96},
    {group::kModp2048, GroupKind::Modp, "modp_2048", 256},
};

const GroupInfo* group_info(std::uint16_t id) {
  for (const auto& info : kGroups)
    if (info.id == id) return &info;
  return nullptr;
}

BignumPtr modp_prime(const GroupInfo& info) {
  (void)info;  // only MODP 2048 is offered
  return BignumPtr(BN_get_rfc3526_prime_2048(nullptr));
}

EvpPkeyPtr pkey_from_params(const char* type, int selection, OSSL_PARAM_BLD* builder) {
  ParamPtr params(OSSL_PARAM_BLD_to_param(builder));
  EvpPkeyCtxPtr context(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  if (!params || !context || EVP_PKEY_fromdata_init(context.get()) != 1) return nullptr;
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_fromdata(context.get(), &key, selection, params.get()) != 1) return nullptr;
  return EvpPkeyPtr(key);
}

// The uncompressed SEC1 point 0x04 || x || y of a private scalar.
std::optional<Bytes> ec_public_point(const GroupInfo& info, const BIGNUM& scalar) {
  EcGroupPtr curve(EC_GROUP_new_by_curve_name(EC_curve_nist2nid(info.openssl_name)));
  if (!curve) return std::nullopt;
  EcPointPtr point(EC_POINT_new(curve.get()));
  BnCtxPtr bn_context(BN_CTX_new());
  if (!point || !bn_context ||
      EC_POINT_mul(curve.get(), point.get(), &scalar, nullptr, nullptr, bn_context.get()) != 1 ||
      EC_POINT_is_at_infinity(curve.get(), point.get()))
    return std::nullopt;
  Bytes encoded(1 + info.public_size);
  if (EC_POINT_point2oct(curve.get(), point.get(), POINT_CONVERSION_UNCOMPRESSED, encoded.data(), encoded.size(),
                         bn_context.get()) != encoded.size())
    return std::nullopt;
  return encoded;
}

class EvpKeyExchange final : public KeyExchange {
 public:
  EvpKeyExchange(const GroupInfo& info, EvpPkeyPtr key) : info_(info), key_(std::move(key)) {}

  std::uint16_t group() const override { return info_.id; }

  Bytes public_value() const override {
    Bytes value(info_.public_size);
    switch (info_.kind) {
      case GroupKind::X25519: {
        std::size_t length = value.size();
        if (EVP_PKEY_get_raw_public_key(key_.get(), value.data(), &length) != 1 || length != value.size())
          return {};
        return value;
      }
      case GroupKind::Ecp: {
        Bytes point(1 + info_.public_size);
        std::size_t length = 0;
        if (EVP_PKEY_get_octet_string_param(key_.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size(),
                                            &length) != 1 ||
            length != point.size() || point[0] != 0x04)
          return {};
        return Bytes(point.begin() + 1, point.end());  // RFC 5903 §7: x || y, no format octet
      }
      case GroupKind::Modp: {
        BIGNUM* raw = nullptr;
        if (EVP_PKEY_get_bn_param(key_.get(), OSSL_PKEY_PARAM_PUB_KEY, &raw) != 1) return {};
        BignumPtr public_number(raw);
        if (BN_bn2binpad(public_number.get(), value.data(), static_cast<int>(value.size())) < 0) return {};
        return value;
      }
    }
    return {};
  }

  std::optional<SecretBytes> shared_secret(std::span<const std::uint8_t> peer_public) const override {
    if (peer_public.size() != info_.public_size) return std::nullopt;
    EvpPkeyPtr peer = peer_key(peer_public);
    if (!peer) return std::nullopt;

    EvpPkeyCtxPtr context(EVP_PKEY_CTX_new_from_pkey(nullptr, key_.get(), nullptr));
    if (!context || EVP_PKEY_derive_init(context.get()) != 1) return std::nullopt;
    if (info_.kind == GroupKind::Modp) {
      unsigned int pad = 1;  // RFC 7296 §2.14: g^ir is as long as the prime
      OSSL_PARAM params[] = {OSSL_PARAM_construct_uint(OSSL_EXCHANGE_PARAM_PAD, &pad), OSSL_PARAM_construct_end()};
      if (EVP_PKEY_CTX_set_params(context.get(), params) != 1) return std::nullopt;
    }
    if (EVP_PKEY_derive_set_peer(context.get(), peer.get()) != 1) return std::nullopt;
    std::size_t length = 0;
    if (EVP_PKEY_derive(context.get(), nullptr, &length) != 1) return std::nullopt;
    SecretBytes secret(length);
    if (EVP_PKEY_derive(context.get(), secret.data(), &length) != 1) return std::nullopt;
    secret = secret.slice(0, length);

    if (info_.kind == GroupKind::Modp && secret.size() < info_.public_size) {
      SecretBytes padded(info_.public_size);
      std::copy(secret.data(), secret.data() + secret.size(), padded.data() + (padded.size() - secret.size()));
      secret = std::move(padded);
    }
    if (info_.kind == GroupKind::X25519) {
      // RFC 8031 §2.3 / RFC 7748 §6.1: an all-zero result means a low-order point.
      std::uint8_t accumulated = 0;
      for (std::size_t i = 0; i < secret.size(); ++i) accumulated |= secret.data()[i];
      if (accumulated == 0) return std::nullopt;
    }
    return secret;
  }

 private:
  EvpPkeyPtr peer_key(std::span<const std::uint8_t> value) const {
    switch (info_.kind) {
      case GroupKind::X25519:
        return EvpPkeyPtr(EVP_PKEY_new_raw_public_key_ex(nullptr, "X25519", nullptr, value.data(), value.size()));
      case GroupKind::Ecp: {
        Bytes point{0x04};
        append(point, value);
        ParamBuildPtr builder(OSSL_PARAM_BLD_new());
        if (!builder ||
            OSSL_PARAM_BLD_push_utf8_string(builder.get(), OSSL_PKEY_PARAM_GROUP_NAME, info_.openssl_name, 0) != 1 ||
            OSSL_PARAM_BLD_push_octet_string(builder.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1)
          return nullptr;
        EvpPkeyPtr key = pkey_from_params("EC", EVP_PKEY_PUBLIC_KEY, builder.get());
        if (!key) return nullptr;
        // The import already refuses points off the curve; the check makes it explicit.
        EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
        if (!check || EVP_PKEY_public_check(check.get()) != 1) return nullptr;
        return key;
      }
      case GroupKind::Modp: {
        BignumPtr prime = modp_prime(info_);
        BignumPtr peer_number(BN_bin2bn(value.data(), static_cast<int>(value.size()), nullptr));
        if (!prime || !peer_number) return nullptr;
        // RFC 7296 §2.12 / NIST SP 800-56A: refuse 0, 1, p-1 and anything >= p.
        BignumPtr upper(BN_dup(prime.get()));
        if (!upper || BN_sub_word(upper.get(), 1) != 1) return nullptr;
        if (BN_cmp(peer_number.get(), BN_value_one()) <= 0 || BN_cmp(peer_number.get(), upper.get()) >= 0)
          return nullptr;
        ParamBuildPtr builder(OSSL_PARAM_BLD_new());
        if (!builder ||
            OSSL_PARAM_BLD_push_utf8_string(builder.get(), OSSL_PKEY_PARAM_GROUP_NAME, info_.openssl_name, 0) != 1 ||
            OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_PUB_KEY, peer_number.get()) != 1)
          return nullptr;
        return pkey_from_params("DH", EVP_PKEY_PUBLIC_KEY, builder.get());
      }
    }
    return nullptr;
  }

  const GroupInfo& info_;
  EvpPkeyPtr key_;
};

EvpPkeyPtr generate_key(const GroupInfo& info) {
  switch (info.kind) {
    case GroupKind::X25519: return EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519"));
    case GroupKind::Ecp: return EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", info.openssl_name));
    case GroupKind::Modp: {
      EvpPkeyCtxPtr context(EVP_PKEY_CTX_new_from_name(nullptr, "DH", nullptr));
      OSSL_PARAM params[] = {
          OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, const_cast<char*>(info.openssl_name), 0),
          OSSL_PARAM_construct_end(),
      };
      if (!context || EVP_PKEY_keygen_init(context.get()) != 1 ||
          EVP_PKEY_CTX_set_params(context.get(), params) != 1)
        return nullptr;
      EVP_PKEY* key = nullptr;
      if (EVP_PKEY_generate(context.get(), &key) != 1) return nullptr;
      return EvpPkeyPtr(key);
    }
  }
  return nullptr;
}

EvpPkeyPtr import_private_key(const GroupInfo& info, std::span<const std::uint8_t> scalar) {
  if (info.kind == GroupKind::X25519) {
    if (scalar.size() != 32) return nullptr;
    return EvpPkeyPtr(EVP_PKEY_new_raw_private_key_ex(nullptr, "X25519", nullptr, scalar.data(), scalar.size()));
  }
  BignumPtr private_number(BN_bin2bn(scalar.data(), static_cast<int>(scalar.size()), nullptr));
  if (!private_number || BN_is_zero(private_number.get())) return nullptr;
  ParamBuildPtr builder(OSSL_PARAM_BLD_new());
  if (!builder ||
      OSSL_PARAM_BLD_push_utf8_string(builder.get(), OSSL_PKEY_PARAM_GROUP_NAME, info.openssl_name, 0) != 1 ||
      OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_PRIV_KEY, private_number.get()) != 1)
    return nullptr;
  if (info.kind == GroupKind::Ecp) {
    auto point = ec_public_point(info, *private_number);
    if (!point ||
        OSSL_PARAM_BLD_push_octet_string(builder.get(), OSSL_PKEY_PARAM_PUB_KEY, point->data(), point->size()) != 1)
      return nullptr;
    return pkey_from_params("EC", EVP_PKEY_KEYPAIR, builder.get());
  }
  // MODP: y = g^x mod p with g = 2 (RFC 3526 §3).
  BignumPtr prime = modp_prime(info);
  BignumPtr generator(BN_new());
  BignumPtr public_number(BN_new());
  BnCtxPtr bn_context(BN_CTX_new());
  if (!prime || !generator || !public_number || !bn_context || BN_set_word(generator.get(), 2) != 1 ||
      BN_mod_exp(public_number.get(), generator.get(), private_number.get(), prime.get(), bn_context.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(builder.get(), OSSL_PKEY_PARAM_PUB_KEY, public_number.get()) != 1)
    return nullptr;
  return pkey_from_params("DH", EVP_PKEY_KEYPAIR, builder.get());
}

}  // namespace

// ---------------------------------------------------------------- SecretBytes

SecretBytes::SecretBytes(std::span<const std::uint8_t> bytes) : bytes_(bytes.begin(), bytes.end()) {}
SecretBytes::SecretBytes(std::size_t size) : bytes_(size, 0) {}
SecretBytes::SecretBytes(const SecretBytes& other) : bytes_(other.bytes_) {}

SecretBytes& SecretBytes::operator=(const SecretBytes& other) {
  if (this != &other) {
    if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
    bytes_ = other.bytes_;
  }
  return *this;
}

SecretBytes::SecretBytes(SecretBytes&& other) noexcept : bytes_(std::move(other.bytes_)) { other.bytes_.clear(); }

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

SecretBytes::~SecretBytes() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
}

SecretBytes SecretBytes::slice(std::size_t offset, std::size_t length) const {
  if (offset > bytes_.size() || length > bytes_.size() - offset) throw std::out_of_range("SecretBytes::slice");
  return SecretBytes(std::span<const std::uint8_t>(bytes_).subspan(offset, length));
}

bool SecretBytes::operator==(const SecretBytes& other) const {
  if (bytes_.size() != other.bytes_.size()) return false;
  return bytes_.empty() || CRYPTO_memcmp(bytes_.data(), other.bytes_.data(), bytes_.size()) == 0;
}

// ---------------------------------------------------------------- AlgorithmSuite

bool AlgorithmSuite::is_aead() const { return is_aead_encryption(encryption); }

std::size_t AlgorithmSuite::encryption_key_size() const {
  const std::size_t key = encryption == encr::kChaCha20Poly1305 ? 32 : encryption_key_bits / 8;
  return is_aead() ? key + 4 : key;  // RFC 5282 §7.1, RFC 7634 §2: 4-byte salt
}

std::size_t AlgorithmSuite::integrity_key_size() const {
  switch (integrity) {
    case integ::kHmacSha256_128: return 32;
    case integ::kHmacSha384_192: return 48;
    case integ::kHmacSha512_256: return 64;
    default: return 0;
  }
}

std::size_t AlgorithmSuite::icv_size() const {
  if (is_aead()) return 16;
  switch (integrity) {
    case integ::kHmacSha256_128: return 16;
    case integ::kHmacSha384_192: return 24;
    case integ::kHmacSha512_256: return 32;
    default: return 0;
  }
}

std::string AlgorithmSuite::to_string() const {
  std::string text;
  switch (encryption) {
    case encr::kAesCbc: text = "AES_CBC_" + std::to_string(encryption_key_bits); break;
    case encr::kAesGcm16: text = "AES_GCM_16_" + std::to_string(encryption_key_bits); break;
    case encr::kChaCha20Poly1305: text = "CHACHA20_POLY1305"; break;
    default: text = "ENCR_" + std::to_string(encryption); break;
  }
  switch (integrity) {
    case integ::kNone: break;
    case integ::kHmacSha256_128: text += "/HMAC_SHA2_256_128"; break;
    case integ::kHmacSha384_192: text += "/HMAC_SHA2_384_192"; break;
    case integ::kHmacSha512_256: text += "/HMAC_SHA2_512_256"; break;
    default: text += "/INTEG_" + std::to_string(integrity); break;
  }
  switch (prf) {
    case 0: break;
    case prf::kHmacSha256: text += "/PRF_HMAC_SHA2_256"; break;
    case prf::kHmacSha384: text += "/PRF_HMAC_SHA2_384"; break;
    case prf::kHmacSha512: text += "/PRF_HMAC_SHA2_512"; break;
    default: text += "/PRF_" + std::to_string(prf); break;
  }
  switch (key_exchange) {
    case group::kNone: break;
    case group::kModp2048: text += "/MODP_2048"; break;
    case group::kEcp256: text += "/ECP_256"; break;
    case group::kEcp384: text += "/ECP_384"; break;
    case group::kCurve25519: text += "/CURVE_25519"; break;
    default: text += "/KE_" + std::to_string(key_exchange); break;
  }
  if (prf == 0) text += extended_sequence_numbers ? "/EXT_SEQ" : "/NO_EXT_SEQ";  // ESP
  return text;
}

// ---------------------------------------------------------------- proposals

std::optional<ChosenProposal> choose_proposal(const std::vector<Proposal>& offered,
                                              const std::vector<Proposal>& supported) {
  for (const auto& candidate : offered) {
    for (const auto& ours : supported) {
      if (auto chosen = select(candidate, ours)) return chosen;
    }
  }
  return std::nullopt;
}

std::optional<AlgorithmSuite> suite_of(const Proposal& chosen, const std::vector<Proposal>& ours) {
  // A chosen proposal carries at most one transform of each type.
  for (auto type : {TransformType::Encryption, TransformType::Prf, TransformType::Integrity,
                    TransformType::KeyExchange, TransformType::Esn}) {
    if (transforms_of(chosen, type).size() > 1) return std::nullopt;
  }
  auto selected = choose_proposal({chosen}, ours);
  if (!selected) return std::nullopt;
  return selected->suite;
}

std::variant<Proposal, ProposalParseError> parse_proposal(std::string_view text, ProtocolId protocol) {
  if (protocol != ProtocolId::Ike && protocol != ProtocolId::Esp)
    return ProposalParseError{"proposals are for IKE or ESP only"};
  const bool ike = protocol == ProtocolId::Ike;
  std::vector<Transform> encryption, integrity, prfs, groups, esns;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find('-', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view token = text.substr(start, end - start);
    start = end + 1;
    if (token.empty()) return ProposalParseError{"empty algorithm in proposal '" + std::string(text) + "'"};
    const TokenMeaning* meaning = nullptr;
    for (const auto& candidate : kTokens)
      if (candidate.token == token) meaning = &candidate;
    if (meaning == nullptr) return ProposalParseError{"unknown algorithm '" + std::string(token) + "'"};
    Transform transform{meaning->type, meaning->id, meaning->key_length};
    switch (meaning->type) {
      case TransformType::Encryption: add_unique(encryption, transform); break;
      case TransformType::Integrity: add_unique(integrity, transform); break;
      case TransformType::Prf:
        if (!ike) return ProposalParseError{"'" + std::string(token) + "' is an IKE PRF, not valid for ESP"};
        add_unique(prfs, transform);
        break;
      case TransformType::KeyExchange: add_unique(groups, transform); break;
      case TransformType::Esn:
        if (ike) return ProposalParseError{"'" + std::string(token) + "' is valid for ESP only"};
        add_unique(esns, transform);
        break;
    }
    if (end == text.size()) break;
  }

  if (encryption.empty()) return ProposalParseError{"proposal '" + std::string(text) + "' has no encryption algorithm"};
  const bool aead = is_aead_encryption(encryption.front().id);
  for (const auto& t : encryption) {
    if (is_aead_encryption(t.id) != aead)
      return ProposalParseError{"proposal '" + std::string(text) + "' mixes AEAD and classic encryption"};
  }
  // strongSwan: in IKE proposals an integrity token also names the PRF unless a prf token is given.
  if (ike && prfs.empty()) {
    for (const auto& t : integrity) add_unique(prfs, Transform{TransformType::Prf, prf_for_integrity(t.id), {}});
  }
  if (aead) integrity.clear();  // AEAD proposals carry no integrity algorithm
  if (!aead && integrity.empty())
    return ProposalParseError{"proposal '" + std::string(text) + "' has no integrity algorithm"};
  if (ike && prfs.empty()) return ProposalParseError{"proposal '" + std::string(text) + "' has no PRF"};
  if (ike && groups.empty())
    return ProposalParseError{"proposal '" + std::string(text) + "' has no key exchange group"};
  if (!ike && esns.empty()) esns.push_back(Transform{TransformType::Esn, esn::kNo, {}});

  Proposal proposal;
  proposal.protocol = protocol;
  for (auto* list : {&encryption, &prfs, &integrity, &groups, &esns})
    proposal.transforms.insert(proposal.transforms.end(), list->begin(), list->end());
  return proposal;
}

namespace {
// The defaults are constant: parse them once, hand out copies (every
// IkeConfig and ChildConfig starts from them).
std::vector<Proposal> numbered(std::initializer_list<std::string_view> texts, ProtocolId protocol) {
  std::vector<Proposal> proposals;
  for (std::string_view text : texts) {
    proposals.push_back(must_parse(text, protocol));
    proposals.back().number = static_cast<std::uint8_t>(proposals.size());
  }
  return proposals;
}
}  // namespace

std::vector<Proposal> default_ike_proposals() {
  static const std::vector<Proposal> proposals = numbered(
      {"aes256gcm16-aes128gcm16-chacha20poly1305-prfsha384-prfsha256-x25519-ecp256-ecp384-modp2048",
       "aes256-aes128-sha256-sha384-x25519-ecp256-modp2048"},
      ProtocolId::Ike);
  return proposals;
}

std::vector<Proposal> default_esp_proposals() {
  static const std::vector<Proposal> proposals =
      numbered({"aes256gcm16-aes128gcm16-chacha20poly1305-esn-noesn", "aes256-aes128-sha256"}, ProtocolId::Esp);
  return proposals;
}

// ---------------------------------------------------------------- Prf

Prf::Prf(std::uint16_t prf_id) : id_(prf_id) {
  if (prf_digest_name(prf_id) == nullptr) throw std::invalid_argument("unsupported PRF " + std::to_string(prf_id));
}

std::size_t Prf::output_size() const { return prf_output_size(id_); }
std::size_t Prf::preferred_key_size() const { return prf_output_size(id_); }

SecretBytes Prf::compute(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data) const {
  return hmac(prf_digest_name(id_), key, {data});
}

SecretBytes Prf::plus(std::span<const std::uint8_t> key, std::span<const std::uint8_t> seed,
                      std::size_t length) const {
  if (length > 255 * output_size()) throw std::invalid_argument("prf+ output longer than 255 blocks");
  SecretBytes out(length);
  SecretBytes previous;
  std::size_t written = 0;
  for (std::uint8_t counter = 1; written < length; ++counter) {
    // T(n) = prf(K, T(n-1) | S | n)
    const std::uint8_t counter_byte[1] = {counter};
    previous = hmac(prf_digest_name(id_), key, {previous.span(), seed, counter_byte});
    const std::size_t take = std::min(previous.size(), length - written);
    std::copy(previous.data(), previous.data() + take, out.data() + written);
    written += take;
  }
  return out;
}

// ---------------------------------------------------------------- KeyExchange

std::unique_ptr<KeyExchange> KeyExchange::generate(std::uint16_t group_id) {
  const GroupInfo* info = group_info(group_id);
  if (info == nullptr) return nullptr;
  EvpPkeyPtr key = generate_key(*info);
  if (!key) return nullptr;
  return std::make_unique<EvpKeyExchange>(*info, std::move(key));
}

std::unique_ptr<KeyExchange> KeyExchange::from_private_key(std::uint16_t group_id,
                                                           std::span<const std::uint8_t> private_key) {
  const GroupInfo* info = group_info(group_id);
  if (info == nullptr) return nullptr;
  EvpPkeyPtr key = import_private_key(*info, private_key);
  if (!key) return nullptr;
  return std::make_unique<EvpKeyExchange>(*info, std::move(key));
}

bool group_supported(std::uint16_t group_id) { return group_info(group_id) != nullptr; }

// ---------------------------------------------------------------- key schedules

IkeKeys derive_ike_keys(const AlgorithmSuite& suite, std::span<const std::uint8_t> shared_secret,
                        std::span<const std::uint8_t> nonce_i, std::span<const std::uint8_t> nonce_r,
                        std::uint64_t spi_i, std::uint64_t spi_r, const SecretBytes* old_sk_d,
                        std::uint16_t old_prf) {
  const Prf prf(suite.prf);
  WipedBuffer nonces;
  append(nonces.bytes, nonce_i);
  append(nonces.bytes, nonce_r);

  SecretBytes skeyseed;
  if (old_sk_d == nullptr) {
    skeyseed = prf.compute(nonces.bytes, shared_secret);  // SKEYSEED = prf(Ni | Nr, g^ir)
  } else {
    // §2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the old SA's PRF.
    const Prf rekey_prf(old_prf != 0 ? old_prf : suite.prf);
    WipedBuffer seed;
    append(seed.bytes, shared_secret);
    append(seed.bytes, nonces.bytes);
    skeyseed = rekey_prf.compute(old_sk_d->span(), seed.bytes);
  }

  WipedBuffer seed;  // Ni | Nr | SPIi | SPIr
  append(seed.bytes, nonces.bytes);
  append_u64(seed.bytes, spi_i);
  append_u64(seed.bytes, spi_r);

  const std::size_t prf_key = prf.preferred_key_size();
  const std::size_t integrity = suite.integrity_key_size();
  const std::size_t encryption = suite.encryption_key_size();
  SecretBytes material = prf.plus(skeyseed.span(), seed.bytes, 3 * prf_key + 2 * integrity + 2 * encryption);

  IkeKeys keys;
  std::size_t offset = 0;
  auto take = [&](std::size_t size) {
    SecretBytes part = material.slice(offset, size);
    offset += size;
    return part;
  };
  keys.sk_d = take(prf_key);
  keys.sk_ai = take(integrity);
  keys.sk_ar = take(integrity);
  keys.sk_ei = take(encryption);
  keys.sk_er = take(encryption);
  keys.sk_pi = take(prf_key);
  keys.sk_pr = take(prf_key);
  return keys;
}

ChildKeys derive_child_keys(const AlgorithmSuite& esp_suite, std::uint16_t ike_prf, const SecretBytes& sk_d,
                            std::span<const std::uint8_t> nonce_i, std::span<const std::uint8_t> nonce_r,
                            const SecretBytes* shared_secret) {
  const Prf prf(ike_prf);
  WipedBuffer seed;  // [g^ir (new) |] Ni | Nr
  if (shared_secret != nullptr) append(seed.bytes, shared_secret->span());
  append(seed.bytes, nonce_i);
  append(seed.bytes, nonce_r);

  const std::size_t encryption = esp_suite.encryption_key_size();
  const std::size_t integrity = esp_suite.integrity_key_size();
  SecretBytes keymat = prf.plus(sk_d.span(), seed.bytes, 2 * (encryption + integrity));
  ChildKeys keys;
  keys.encryption_i = keymat.slice(0, encryption);
  keys.integrity_i = keymat.slice(encryption, integrity);
  keys.encryption_r = keymat.slice(encryption + integrity, encryption);
  keys.integrity_r = keymat.slice(2 * encryption + integrity, integrity);
  return keys;
}

SecretBytes derive_export(std::uint16_t ike_prf, const SecretBytes& sk_d, std::string_view label,
                          std::span<const std::uint8_t> nonce_i, std::span<const std::uint8_t> nonce_r,
                          std::size_t length) {
  static constexpr std::string_view kContext = "tapsec export";
  WipedBuffer seed;
  seed.bytes.insert(seed.bytes.end(), kContext.begin(), kContext.end());
  seed.bytes.insert(seed.bytes.end(), label.begin(), label.end());
  append(seed.bytes, nonce_i);
  append(seed.bytes, nonce_r);
  return Prf(ike_prf).plus(sk_d.span(), seed.bytes, length);
}

// ---------------------------------------------------------------- misc

Bytes nat_detection_hash(std::uint64_t spi_i, std::uint64_t spi_r, const Endpoint& endpoint) {
  Bytes input;
  append_u64(input, spi_i);
  append_u64(input, spi_r);
  input.insert(input.end(), endpoint.address.bytes.begin(),
               endpoint.address.bytes.begin() + static_cast<std::ptrdiff_t>(endpoint.address.size()));
  input.push_back(static_cast<std::uint8_t>(endpoint.port >> 8));
  input.push_back(static_cast<std::uint8_t>(endpoint.port));
  Bytes digest(20);
  unsigned int length = 0;
  if (EVP_Digest(input.data(), input.size(), digest.data(), &length, EVP_sha1(), nullptr) != 1 || length != 20)
    throw std::runtime_error("SHA-1 failed");
  return digest;
}

Bytes random_bytes(std::size_t size) {
  Bytes out(size);
  if (size != 0 && RAND_bytes(out.data(), static_cast<int>(size)) != 1)
    throw std::runtime_error("the random generator failed");
  return out;
}

std::uint64_t random_u64() {
  Bytes bytes = random_bytes(8);
  std::uint64_t value = 0;
  for (auto byte : bytes) value = (value << 8) | byte;
  return value;
}

}  // namespace tapsec::ikev2
