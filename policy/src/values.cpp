#include "policy/src/values.h"

#include <arpa/inet.h>
#include <fnmatch.h>
#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cerrno>
#include <cstring>
#include <type_traits>
#include <utility>

namespace tapsec::policy::detail {
namespace {

bool equals_ignore_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// Decimal without sign, leading '+', or trailing junk.
std::optional<std::uint64_t> parse_unsigned(std::string_view text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

struct Alias {
  std::string_view spelling;
  std::string_view canonical;
};

std::optional<std::string> lookup(std::string_view name, std::initializer_list<Alias> table,
                                  bool ignore_case) {
  for (const Alias& entry : table) {
    if (ignore_case ? equals_ignore_case(entry.spelling, name) : entry.spelling == name)
      return std::string(entry.canonical);
  }
  return std::nullopt;
}

}  // namespace

bool is_valid_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  if (!std::isalnum(static_cast<unsigned char>(name.front()))) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

std::string_view trim(std::string_view text) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  return text;
}

std::vector<std::string_view> split_words(std::string_view value) {
  std::vector<std::string_view> words;
  std::size_t i = 0;
  while (i < value.size()) {
    while (i < value.size() && (value[i] == ' ' || value[i] == '\t')) ++i;
    const std::size_t start = i;
    while (i < value.size() && value[i] != ' ' && value[i] != '\t') ++i;
    if (i > start) words.push_back(value.substr(start, i - start));
  }
  return words;
}

std::optional<bool> parse_bool(std::string_view value, std::string& why) {
  for (std::string_view yes : {"yes", "true", "on", "1"})
    if (equals_ignore_case(value, yes)) return true;
  for (std::string_view no : {"no", "false", "off", "0"})
    if (equals_ignore_case(value, no)) return false;
  why = "'" + std::string(value) + "' is not a boolean (use yes or no)";
  return std::nullopt;
}

std::optional<PortRange> parse_port_range(std::string_view value, std::string& why) {
  const auto port = [&](std::string_view text) -> std::optional<std::uint16_t> {
    const auto number = parse_unsigned(text);
    if (!number || *number < 1 || *number > 65535) {
      why = "'" + std::string(text) + "' is not a port number (1-65535)";
      return std::nullopt;
    }
    return static_cast<std::uint16_t>(*number);
  };
  PortRange range;
  range.text = std::string(value);
  const std::size_t dash = value.find('-');
  if (dash == std::string_view::npos) {
    const auto single = port(value);
    if (!single) return std::nullopt;
    range.low = range.high = *single;
    return range;
  }
  const auto low = port(value.substr(0, dash));
  if (!low) return std::nullopt;
  const auto high = port(value.substr(dash + 1));
  if (!high) return std::nullopt;
  if (*low > *high) {
    why = "port range '" + range.text + "' is empty (low end above high end)";
    return std::nullopt;
  }
  range.low = *low;
  range.high = *high;
  return range;
}

std::optional<Cidr> parse_address(std::string_view value) {
  if (value.empty() || value.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  const std::string text(value);
  Cidr address;
  address.text = text;
  in_addr v4{};
  if (inet_pton(AF_INET, text.c_str(), &v4) == 1) {
    std::memcpy(address.bytes.data(), &v4, 4);
    address.prefix_length = 32;
    return address;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, text.c_str(), &v6) == 1) {
    static constexpr std::uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(v6.s6_addr, kV4MappedPrefix, sizeof kV4MappedPrefix) == 0) {
      std::memcpy(address.bytes.data(), v6.s6_addr + 12, 4);
      address.prefix_length = 32;
      return address;
    }
    address.is_v6 = true;
    std::memcpy(address.bytes.data(), v6.s6_addr, 16);
    address.prefix_length = 128;
    return address;
  }
  return std::nullopt;
}

std::optional<Cidr> parse_cidr(std::string_view value, std::string& why) {
  const std::size_t slash = value.find('/');
  const std::string_view address_text = value.substr(0, slash);
  // Mapped addresses are not accepted in the policy itself: write the v4 form.
  std::optional<Cidr> prefix;
  if (address_text.find(':') != std::string_view::npos) {
    in6_addr v6{};
    const std::string text(address_text);
    if (text.size() < INET6_ADDRSTRLEN && inet_pton(AF_INET6, text.c_str(), &v6) == 1) {
      prefix.emplace();
      prefix->is_v6 = true;
      std::memcpy(prefix->bytes.data(), v6.s6_addr, 16);
    }
  } else {
    in_addr v4{};
    const std::string text(address_text);
    if (text.size() < INET_ADDRSTRLEN && inet_pton(AF_INET, text.c_str(), &v4) == 1) {
      prefix.emplace();
      std::memcpy(prefix->bytes.data(), &v4, 4);
    }
  }
  if (!prefix) {
    why = "'" + std::string(value) + "' is not an address or CIDR prefix (e.g. 10.0.0.0/8, fd00::/8)";
    return std::nullopt;
  }
  const unsigned max_length = prefix->is_v6 ? 128 : 32;
  prefix->prefix_length = max_length;
  if (slash != std::string_view::npos) {
    const auto length = parse_unsigned(value.substr(slash + 1));
    if (!length || *length > max_length) {
      why = "'" + std::string(value) + "' has a bad prefix length (0-" + std::to_string(max_length) + ")";
      return std::nullopt;
    }
    prefix->prefix_length = static_cast<unsigned>(*length);
  }
  // Host bits set is almost always a typo for a different network.
  const unsigned total_bytes = prefix->is_v6 ? 16 : 4;
  for (unsigned bit = prefix->prefix_length; bit < total_bytes * 8; ++bit) {
    if (prefix->bytes[bit / 8] & (0x80u >> (bit % 8))) {
      why = "'" + std::string(value) + "' has host bits set after the prefix length";
      return std::nullopt;
    }
  }
  prefix->text = std::string(value);
  return prefix;
}

bool cidr_contains(const Cidr& prefix, const Cidr& address) {
  if (prefix.is_v6 != address.is_v6) return false;
  const unsigned full_bytes = prefix.prefix_length / 8;
  if (std::memcmp(prefix.bytes.data(), address.bytes.data(), full_bytes) != 0) return false;
  const unsigned rest_bits = prefix.prefix_length % 8;
  if (rest_bits == 0) return true;
  const std::uint8_t mask = static_cast<std::uint8_t>(0xff00u >> rest_bits);
  return (prefix.bytes[full_bytes] & mask) == (address.bytes[full_bytes] & mask);
}

std::optional<std::vector<std::uint8_t>> parse_hex_key(std::string_view hex, std::string& why) {
  const auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2 != 0) {
    why = "key has an odd number of hex digits";
    return std::nullopt;
  }
  if (hex.size() / 2 < kMinKeyBytes) {
    why = "key is too short: " + std::to_string(hex.size() / 2) + " bytes, at least " +
          std::to_string(kMinKeyBytes) + " needed";
    return std::nullopt;
  }
  if (hex.size() / 2 > kMaxKeyBytes) {
    why = "key is too long: at most " + std::to_string(kMaxKeyBytes) + " bytes";
    return std::nullopt;
  }
  std::vector<std::uint8_t> key;
  key.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int high = nibble(hex[i]);
    const int low = nibble(hex[i + 1]);
    if (high < 0 || low < 0) {
      why = "key contains a character that is not a hex digit";
      // The partial key is secret too.
      std::fill(key.begin(), key.end(), 0);
      return std::nullopt;
    }
    key.push_back(static_cast<std::uint8_t>(high << 4 | low));
  }
  return key;
}

std::optional<std::string> canonical_protocol(std::string_view name) {
  for (const std::string& known : known_protocols())
    if (known == name) return known;
  return std::nullopt;
}

const std::vector<std::string>& known_protocols() {
  static const std::vector<std::string> protocols = {"tls", "ikev2", "wireguard", "tcpcrypt"};
  return protocols;
}

const std::vector<std::string>& known_peer_validation_modes() {
  static const std::vector<std::string> modes = {"system", "pinned", "application", "none"};
  return modes;
}

}  // namespace tapsec::policy::detail

namespace tapsec::policy {
const std::vector<std::string>& known_operations() {
  static const std::vector<std::string> operations = {"observe", "manage", "flush-session-cache"};
  return operations;
}
}  // namespace tapsec::policy

namespace tapsec::policy::detail {

// TLS 1.3 cipher suites OpenSSL 3.0 implements (IANA names, as OpenSSL spells them).
std::optional<std::string> canonical_ciphersuite(std::string_view name) {
  return lookup(name,
                {{"TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"},
                 {"TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"},
                 {"TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256"},
                 {"TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_SHA256"},
                 {"TLS_AES_128_CCM_8_SHA256", "TLS_AES_128_CCM_8_SHA256"}},
                false);
}

// Key exchange groups usable with TLS 1.3 in OpenSSL 3.0; the NIST and SECG
// spellings of one curve map to one canonical name.
std::optional<std::string> canonical_group(std::string_view name) {
  return lookup(name,
                {{"X25519", "X25519"},
                 {"X448", "X448"},
                 {"P-256", "P-256"},
                 {"secp256r1", "P-256"},
                 {"prime256v1", "P-256"},
                 {"P-384", "P-384"},
                 {"secp384r1", "P-384"},
                 {"P-521", "P-521"},
                 {"secp521r1", "P-521"},
                 {"ffdhe2048", "ffdhe2048"},
                 {"ffdhe3072", "ffdhe3072"},
                 {"ffdhe4096", "ffdhe4096"},
                 {"ffdhe6144", "ffdhe6144"},
                 {"ffdhe8192", "ffdhe8192"}},
                true);
}

// TLS 1.3 signature schemes OpenSSL 3.0 implements (RFC 8446 names).
std::optional<std::string> canonical_signature_algorithm(std::string_view name) {
  return lookup(name,
                {{"ecdsa_secp256r1_sha256", "ecdsa_secp256r1_sha256"},
                 {"ecdsa_secp384r1_sha384", "ecdsa_secp384r1_sha384"},
                 {"ecdsa_secp521r1_sha512", "ecdsa_secp521r1_sha512"},
                 {"ed25519", "ed25519"},
                 {"ed448", "ed448"},
                 {"rsa_pss_rsae_sha256", "rsa_pss_rsae_sha256"},
                 {"rsa_pss_rsae_sha384", "rsa_pss_rsae_sha384"},
                 {"rsa_pss_rsae_sha512", "rsa_pss_rsae_sha512"},
                 {"rsa_pss_pss_sha256", "rsa_pss_pss_sha256"},
                 {"rsa_pss_pss_sha384", "rsa_pss_pss_sha384"},
                 {"rsa_pss_pss_sha512", "rsa_pss_pss_sha512"},
                 {"rsa_pkcs1_sha256", "rsa_pkcs1_sha256"},
                 {"rsa_pkcs1_sha384", "rsa_pkcs1_sha384"},
                 {"rsa_pkcs1_sha512", "rsa_pkcs1_sha512"}},
                false);
}

namespace {

// Shared shape of getpwnam_r/getgrnam_r lookups: grow the buffer on ERANGE.
template <typename Entry, typename Lookup>
std::optional<std::uint32_t> resolve_account(std::string_view value, std::string_view kind,
                                             std::string& why, Lookup lookup_by_name) {
  if (!value.empty() && std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    const auto number = parse_unsigned(value);
    // (uid_t)-1 means "no user" to the kernel; never match on it.
    if (!number || *number >= 0xffffffffu) {
      why = std::string(kind) + " number '" + std::string(value) + "' is out of range";
      return std::nullopt;
    }
    return static_cast<std::uint32_t>(*number);
  }
  const std::string name(value);
  if (name.empty() || name.size() > 256 || name.find('\0') != std::string::npos) {
    why = "'" + name + "' is not a " + std::string(kind) + " name";
    return std::nullopt;
  }
  std::vector<char> buffer(1024);
  for (;;) {
    Entry entry{};
    Entry* result = nullptr;
    const int rc = lookup_by_name(name.c_str(), &entry, buffer.data(), buffer.size(), &result);
    if (rc == ERANGE && buffer.size() < (1u << 20)) {
      buffer.resize(buffer.size() * 2);
      continue;
    }
    if (rc == 0 && result) {
      if constexpr (std::is_same_v<Entry, passwd>) return static_cast<std::uint32_t>(result->pw_uid);
      else return static_cast<std::uint32_t>(result->gr_gid);
    }
    why = "unknown " + std::string(kind) + " '" + name + "'";
    if (rc != 0) why += std::string(" (") + std::strerror(rc) + ")";
    return std::nullopt;
  }
}

}  // namespace

std::optional<std::uint32_t> resolve_user(std::string_view value, std::string& why) {
  return resolve_account<passwd>(value, "user", why, getpwnam_r);
}

std::optional<std::uint32_t> resolve_group(std::string_view value, std::string& why) {
  return resolve_account<group>(value, "group", why, getgrnam_r);
}

bool glob_matches(const std::string& pattern, const std::string& text, bool ignore_case) {
  return fnmatch(pattern.c_str(), text.c_str(), ignore_case ? FNM_CASEFOLD : 0) == 0;
}

std::string join(const std::vector<std::string>& words, std::string_view separator) {
  std::string out;
  for (std::size_t i = 0; i < words.size(); ++i) {
    if (i) out += separator;
    out += words[i];
  }
  return out;
}

}  // namespace tapsec::policy::detail
