#include "agent/engines/ikev2/types.h"

#include <arpa/inet.h>
#include <openssl/asn1.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <memory>
#include <span>

#include "agent/engines/ikev2/message.h"

namespace tapsec::ikev2 {

static_assert(AF_INET6 == 10, "types.h assumes Linux's AF_INET6");

namespace {

constexpr std::string_view kFqdnPrefix = "fqdn:";
constexpr std::string_view kKeyIdPrefix = "keyid:";

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

template <typename Integer>
std::optional<Integer> parse_number(std::string_view text, Integer max) {
  unsigned long value = 0;
  if (text.empty()) return std::nullopt;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value > max) return std::nullopt;
  return static_cast<Integer>(value);
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  text.reserve(bytes.size() * 2);
  for (std::uint8_t byte : bytes) {
    text.push_back(kDigits[byte >> 4]);
    text.push_back(kDigits[byte & 0x0f]);
  }
  return text;
}

std::optional<Bytes> from_hex(std::string_view text) {
  if (text.empty() || text.size() % 2 != 0) return std::nullopt;
  Bytes bytes;
  for (std::size_t i = 0; i < text.size(); i += 2) {
    std::uint8_t byte = 0;
    const auto [end, error] = std::from_chars(text.data() + i, text.data() + i + 2, byte, 16);
    if (error != std::errc() || end != text.data() + i + 2) return std::nullopt;
    bytes.push_back(byte);
  }
  return bytes;
}

// Text from the wire is printed for logs: printable ASCII as is, the rest escaped.
std::string printable(std::span<const std::uint8_t> bytes) {
  std::string text;
  for (std::uint8_t byte : bytes) {
    if (byte >= 0x20 && byte < 0x7f) {
      text.push_back(static_cast<char>(byte));
    } else {
      static constexpr char kDigits[] = "0123456789abcdef";
      text += "\\x";
      text.push_back(kDigits[byte >> 4]);
      text.push_back(kDigits[byte & 0x0f]);
    }
  }
  return text;
}

// ---- protocols in selector text ------------------------------------------

struct ProtocolName {
  std::string_view name;
  std::uint8_t number;
};
constexpr ProtocolName kProtocolNames[] = {
    {"icmp", 1}, {"tcp", 6}, {"udp", 17}, {"gre", 47}, {"esp", 50}, {"icmpv6", 58}, {"sctp", 132},
};

std::optional<std::uint8_t> parse_protocol(std::string_view text) {
  if (text == "any") return 0;
  for (const auto& known : kProtocolNames)
    if (known.name == text) return known.number;
  return parse_number<std::uint8_t>(text, 255);
}

std::string protocol_to_string(std::uint8_t protocol) {
  if (protocol == 0) return "any";
  for (const auto& known : kProtocolNames)
    if (known.number == protocol) return std::string(known.name);
  return std::to_string(protocol);
}

// ---- prefixes -------------------------------------------------------------

bool bit_is_set(const IpAddress& address, std::size_t bit) {
  return address.bytes[bit / 8] & (0x80 >> (bit % 8));
}

// The first or last address of the prefix `address`/`length`.
IpAddress prefix_bound(const IpAddress& address, std::size_t length, bool last) {
  IpAddress bound = address;
  for (std::size_t bit = length; bit < bound.size() * 8; ++bit) {
    const std::uint8_t mask = 0x80 >> (bit % 8);
    if (last) {
      bound.bytes[bit / 8] |= mask;
    } else {
      bound.bytes[bit / 8] &= static_cast<std::uint8_t>(~mask);
    }
  }
  return bound;
}

// ---- distinguished names (OpenSSL) ---------------------------------------

struct X509NameFree {
  void operator()(X509_NAME* name) const { X509_NAME_free(name); }
};
using X509NamePtr = std::unique_ptr<X509_NAME, X509NameFree>;

// Splits at unescaped `separator`; a backslash escapes the next character.
std::vector<std::string> split_escaped(std::string_view text, char separator) {
  std::vector<std::string> parts(1);
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size()) {
      parts.back().push_back('\\');
      parts.back().push_back(text[++i]);
    } else if (text[i] == separator) {
      parts.emplace_back();
    } else {
      parts.back().push_back(text[i]);
    }
  }
  return parts;
}

std::string unescape(std::string_view text) {
  std::string plain;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size()) ++i;
    plain.push_back(text[i]);
  }
  return plain;
}

// "CN=gw, O=Example" (attributes in the order given, '+' joins a
// multi-valued RDN) to DER.
std::optional<Bytes> parse_distinguished_name(std::string_view text) {
  X509NamePtr name(X509_NAME_new());
  if (!name) return std::nullopt;
  for (const std::string& rdn : split_escaped(text, ',')) {
    bool first_in_rdn = true;
    for (const std::string& attribute : split_escaped(rdn, '+')) {
      const std::string_view pair = trim(attribute);
      const auto equals = pair.find('=');
      if (equals == std::string_view::npos || equals == 0) return std::nullopt;
      const std::string key(trim(pair.substr(0, equals)));
      const std::string value = unescape(trim(pair.substr(equals + 1)));
      if (value.empty()) return std::nullopt;
      // set 0 starts a new RDN at the end; -1 adds to the last one.
      if (X509_NAME_add_entry_by_txt(name.get(), key.c_str(), MBSTRING_UTF8,
                                     reinterpret_cast<const unsigned char*>(value.data()),
                                     static_cast<int>(value.size()), -1, first_in_rdn ? 0 : -1) != 1)
        return std::nullopt;
      first_in_rdn = false;
    }
  }
  if (X509_NAME_entry_count(name.get()) == 0) return std::nullopt;
  unsigned char* der = nullptr;
  const int length = i2d_X509_NAME(name.get(), &der);
  if (length <= 0) return std::nullopt;
  Bytes bytes(der, der + length);
  OPENSSL_free(der);
  return bytes;
}

std::string escape_dn_value(std::string_view value) {
  std::string escaped;
  for (std::size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    const bool edge_space = c == ' ' && (i == 0 || i + 1 == value.size());
    if (std::strchr(",+\\=<>;\"", c) != nullptr || edge_space || (c == '#' && i == 0)) escaped.push_back('\\');
    escaped.push_back(c);
  }
  return escaped;
}

std::optional<std::string> distinguished_name_to_string(std::span<const std::uint8_t> der) {
  const unsigned char* cursor = der.data();
  X509NamePtr name(d2i_X509_NAME(nullptr, &cursor, static_cast<long>(der.size())));
  if (!name || cursor != der.data() + der.size()) return std::nullopt;
  std::string text;
  int previous_set = -1;
  for (int i = 0; i < X509_NAME_entry_count(name.get()); ++i) {
    const X509_NAME_ENTRY* entry = X509_NAME_get_entry(name.get(), i);
    const ASN1_OBJECT* object = X509_NAME_ENTRY_get_object(entry);
    const int nid = OBJ_obj2nid(object);
    std::string key;
    if (const char* short_name = nid != NID_undef ? OBJ_nid2sn(nid) : nullptr) {
      key = short_name;
    } else {
      char oid[80];
      if (OBJ_obj2txt(oid, sizeof oid, object, 1) <= 0) return std::nullopt;
      key = oid;
    }
    unsigned char* utf8 = nullptr;
    const int length = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(entry));
    if (length < 0) return std::nullopt;
    const std::string value(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(length));
    OPENSSL_free(utf8);
    const int set = X509_NAME_ENTRY_set(entry);
    if (i > 0) text += set == previous_set ? " + " : ", ";
    previous_set = set;
    text += key + "=" + escape_dn_value(value);
  }
  return text;
}

}  // namespace

// ---- IpAddress ------------------------------------------------------------

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  if (text.empty() || text.size() > INET6_ADDRSTRLEN) return std::nullopt;
  const std::string terminated(text);
  IpAddress address;
  if (inet_pton(AF_INET, terminated.c_str(), address.bytes.data()) == 1) {
    address.family = AF_INET;
    return address;
  }
  if (inet_pton(AF_INET6, terminated.c_str(), address.bytes.data()) == 1) {
    address.family = AF_INET6;
    return address;
  }
  return std::nullopt;
}

IpAddress IpAddress::any(int family) {
  IpAddress address;
  address.family = family;
  return address;
}

std::string IpAddress::to_string() const {
  if (family != AF_INET && family != AF_INET6) return "%none";
  char text[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(family, bytes.data(), text, sizeof text) == nullptr) return "%invalid";
  return text;
}

std::string Endpoint::to_string() const {
  if (address.family == AF_INET6) return "[" + address.to_string() + "]:" + std::to_string(port);
  return address.to_string() + ":" + std::to_string(port);
}

// ---- TrafficSelector ------------------------------------------------------

std::optional<TrafficSelector> TrafficSelector::parse(std::string_view text) {
  text = trim(text);
  TrafficSelector selector;

  // Optional "[protocol]" or "[protocol/port]" / "[protocol/low-high]".
  if (const auto open = text.find('['); open != std::string_view::npos) {
    if (text.back() != ']') return std::nullopt;
    const std::string_view inside = text.substr(open + 1, text.size() - open - 2);
    text = trim(text.substr(0, open));
    const auto slash = inside.find('/');
    const auto protocol = parse_protocol(trim(inside.substr(0, slash)));
    if (!protocol) return std::nullopt;
    selector.ip_protocol = *protocol;
    if (slash != std::string_view::npos) {
      const std::string_view ports = trim(inside.substr(slash + 1));
      const auto dash = ports.find('-');
      const auto low = parse_number<std::uint16_t>(ports.substr(0, dash), 65535);
      const auto high = dash == std::string_view::npos ? low : parse_number<std::uint16_t>(ports.substr(dash + 1), 65535);
      if (!low || !high || *low > *high) return std::nullopt;
      selector.start_port = *low;
      selector.end_port = *high;
    }
  }

  // "a-b" range, "address/length" prefix or a single address.
  if (const auto dash = text.find('-'); dash != std::string_view::npos) {
    const auto start = IpAddress::parse(trim(text.substr(0, dash)));
    const auto end = IpAddress::parse(trim(text.substr(dash + 1)));
    if (!start || !end || start->family != end->family || start->bytes > end->bytes) return std::nullopt;
    selector.start = *start;
    selector.end = *end;
    return selector;
  }
  const auto slash = text.find('/');
  const auto address = IpAddress::parse(text.substr(0, slash));
  if (!address) return std::nullopt;
  std::size_t length = address->size() * 8;
  if (slash != std::string_view::npos) {
    const auto parsed = parse_number<std::size_t>(text.substr(slash + 1), address->size() * 8);
    if (!parsed) return std::nullopt;
    length = *parsed;
  }
  selector.start = prefix_bound(*address, length, false);
  selector.end = prefix_bound(*address, length, true);
  return selector;
}

TrafficSelector TrafficSelector::host(const IpAddress& address) {
  TrafficSelector selector;
  selector.start = address;
  selector.end = address;
  return selector;
}

std::optional<std::uint8_t> TrafficSelector::prefix_length() const {
  if (start.family != end.family || (start.family != AF_INET && start.family != AF_INET6)) return std::nullopt;
  const std::size_t bits = start.size() * 8;
  // The prefix is the common leading bits; after it start must be all
  // zeros and end all ones.
  std::size_t length = 0;
  while (length < bits && bit_is_set(start, length) == bit_is_set(end, length)) ++length;
  for (std::size_t bit = length; bit < bits; ++bit)
    if (bit_is_set(start, bit) || !bit_is_set(end, bit)) return std::nullopt;
  return static_cast<std::uint8_t>(length);
}

std::string TrafficSelector::to_string() const {
  std::string text;
  if (const auto length = prefix_length()) {
    text = start.to_string() + "/" + std::to_string(*length);
  } else {
    text = start.to_string() + "-" + end.to_string();
  }
  const bool any_port = start_port == 0 && end_port == 65535;
  if (ip_protocol != 0 || !any_port) {
    text += "[" + protocol_to_string(ip_protocol);
    if (!any_port) {
      text += "/" + std::to_string(start_port);
      if (end_port != start_port) text += "-" + std::to_string(end_port);
    }
    text += "]";
  }
  return text;
}

// ---- Identification -------------------------------------------------------

std::optional<Identification> Identification::parse(std::string_view text) {
  text = trim(text);
  if (text.empty()) return std::nullopt;
  Identification id;
  auto set_text = [&id](std::uint8_t type, std::string_view value) {
    id.type = type;
    id.data.assign(value.begin(), value.end());
  };
  if (text.starts_with(kFqdnPrefix)) {
    const std::string_view name = text.substr(kFqdnPrefix.size());
    if (name.empty()) return std::nullopt;
    set_text(id_type::kFqdn, name);
    return id;
  }
  if (text.starts_with(kKeyIdPrefix)) {
    auto key_id = from_hex(text.substr(kKeyIdPrefix.size()));
    if (!key_id) return std::nullopt;
    id.type = id_type::kKeyId;
    id.data = std::move(*key_id);
    return id;
  }
  if (const auto address = IpAddress::parse(text)) {
    id.type = address->family == AF_INET ? id_type::kIpv4 : id_type::kIpv6;
    id.data.assign(address->bytes.begin(), address->bytes.begin() + static_cast<long>(address->size()));
    return id;
  }
  if (text.find('=') != std::string_view::npos) {
    if (auto der = parse_distinguished_name(text)) {
      id.type = id_type::kDerAsn1Dn;
      id.data = std::move(*der);
      return id;
    }
    // Not a name OpenSSL knows; an address with '=' in it is still an address.
    if (text.find('@') == std::string_view::npos) return std::nullopt;
  }
  if (text.find('@') != std::string_view::npos) {
    set_text(id_type::kRfc822, text);
    return id;
  }
  set_text(id_type::kFqdn, text);
  return id;
}

std::string Identification::to_string() const {
  switch (type) {
    case id_type::kIpv4:
    case id_type::kIpv6: {
      const bool v4 = type == id_type::kIpv4;
      if (data.size() != (v4 ? 4u : 16u)) break;
      IpAddress address = IpAddress::any(v4 ? AF_INET : AF_INET6);
      std::copy(data.begin(), data.end(), address.bytes.begin());
      return address.to_string();
    }
    case id_type::kFqdn: {
      const std::string name = printable(data);
      // A name that would read back as another kind of ID keeps its prefix.
      const auto reread = parse(name);
      if (!reread || reread->type != id_type::kFqdn || reread->data != data) return std::string(kFqdnPrefix) + name;
      return name;
    }
    case id_type::kRfc822:
      return printable(data);
    case id_type::kDerAsn1Dn:
      if (auto text = distinguished_name_to_string(data)) return *text;
      break;
    case id_type::kKeyId:
      return std::string(kKeyIdPrefix) + to_hex(data);
    default:
      break;
  }
  return "id" + std::to_string(type) + ":" + to_hex(data);
}

}  // namespace tapsec::ikev2
