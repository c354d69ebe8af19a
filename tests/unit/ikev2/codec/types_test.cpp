// IpAddress, Endpoint, TrafficSelector and Identification: text forms in
// and out, prefixes, and the DER of distinguished names.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include "agent/engines/ikev2/message.h"
#include "agent/engines/ikev2/types.h"

namespace tapsec::ikev2 {
namespace {

IpAddress address(std::string_view text) {
  auto parsed = IpAddress::parse(text);
  EXPECT_TRUE(parsed) << text;
  return parsed.value_or(IpAddress{});
}

TrafficSelector selector(std::string_view text) {
  auto parsed = TrafficSelector::parse(text);
  EXPECT_TRUE(parsed) << text;
  return parsed.value_or(TrafficSelector{});
}

TEST(IpAddress, ParsesAndPrintsBothFamilies) {
  const auto v4 = address("192.0.2.1");
  EXPECT_EQ(v4.family, AF_INET);
  EXPECT_EQ(v4.size(), 4u);
  EXPECT_EQ(v4.bytes[0], 192);
  EXPECT_EQ(v4.bytes[3], 1);
  EXPECT_EQ(v4.bytes[4], 0);
  EXPECT_EQ(v4.to_string(), "192.0.2.1");

  const auto v6 = address("2001:db8::1");
  EXPECT_EQ(v6.family, AF_INET6);
  EXPECT_EQ(v6.size(), 16u);
  EXPECT_EQ(v6.bytes[0], 0x20);
  EXPECT_EQ(v6.bytes[15], 1);
  EXPECT_EQ(v6.to_string(), "2001:db8::1");
}

TEST(IpAddress, RefusesNonAddresses) {
  for (std::string_view text : {"", "192.0.2", "192.0.2.256", "host.example", "2001:db8:::1", "192.0.2.1 ",
                                "::ffff:1.2.3.4.5", "0123456789012345678901234567890123456789012345678901"})
    EXPECT_FALSE(IpAddress::parse(text)) << text;
}

TEST(IpAddress, AnyIsAllZeros) {
  EXPECT_EQ(IpAddress::any(AF_INET).to_string(), "0.0.0.0");
  EXPECT_EQ(IpAddress::any(AF_INET6).to_string(), "::");
  EXPECT_EQ(IpAddress::any(AF_INET6), address("::"));
  EXPECT_EQ(IpAddress{}.to_string(), "%none");
}

TEST(Endpoint, BracketsIpv6) {
  EXPECT_EQ((Endpoint{address("192.0.2.1"), 500}).to_string(), "192.0.2.1:500");
  EXPECT_EQ((Endpoint{address("2001:db8::1"), 4500}).to_string(), "[2001:db8::1]:4500");
}

TEST(TrafficSelector, ParsesPrefixes) {
  const auto subnet = selector("10.1.0.0/16");
  EXPECT_EQ(subnet.start, address("10.1.0.0"));
  EXPECT_EQ(subnet.end, address("10.1.255.255"));
  EXPECT_EQ(subnet.ip_protocol, 0);
  EXPECT_EQ(subnet.start_port, 0);
  EXPECT_EQ(subnet.end_port, 65535);
  EXPECT_EQ(subnet.prefix_length(), 16);
  EXPECT_EQ(subnet.to_string(), "10.1.0.0/16");

  const auto everything = selector("0.0.0.0/0");
  EXPECT_EQ(everything.end, address("255.255.255.255"));
  EXPECT_EQ(everything.prefix_length(), 0);
  EXPECT_EQ(everything.to_string(), "0.0.0.0/0");

  const auto everything6 = selector("::/0");
  EXPECT_EQ(everything6.end, address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
  EXPECT_EQ(everything6.to_string(), "::/0");

  const auto v6 = selector("2001:db8:1::/48");
  EXPECT_EQ(v6.end, address("2001:db8:1:ffff:ffff:ffff:ffff:ffff"));
  EXPECT_EQ(v6.prefix_length(), 48);
  EXPECT_EQ(v6.to_string(), "2001:db8:1::/48");

  // Host bits are cleared: the selector is the whole prefix.
  EXPECT_EQ(selector("10.1.2.3/16"), subnet);
  EXPECT_EQ(selector("10.1.0.0/17").end, address("10.1.127.255"));
}

TEST(TrafficSelector, SingleAddressIsAHost) {
  const auto parsed = selector("192.0.2.1");
  EXPECT_EQ(parsed, TrafficSelector::host(address("192.0.2.1")));
  EXPECT_EQ(parsed.start, parsed.end);
  EXPECT_EQ(parsed.prefix_length(), 32);
  EXPECT_EQ(parsed.to_string(), "192.0.2.1/32");
  EXPECT_EQ(TrafficSelector::host(address("2001:db8::1")).to_string(), "2001:db8::1/128");
}

TEST(TrafficSelector, ParsesProtocolsAndPorts) {
  const auto https = selector("10.0.0.0/8[tcp/443]");
  EXPECT_EQ(https.ip_protocol, 6);
  EXPECT_EQ(https.start_port, 443);
  EXPECT_EQ(https.end_port, 443);
  EXPECT_EQ(https.to_string(), "10.0.0.0/8[tcp/443]");

  const auto udp = selector("10.0.0.0/8[udp]");
  EXPECT_EQ(udp.ip_protocol, 17);
  EXPECT_EQ(udp.start_port, 0);
  EXPECT_EQ(udp.end_port, 65535);
  EXPECT_EQ(udp.to_string(), "10.0.0.0/8[udp]");

  EXPECT_EQ(selector("10.0.0.0/8[tcp]").to_string(), "10.0.0.0/8[tcp]");
  EXPECT_EQ(selector("10.0.0.0/8[icmp]").ip_protocol, 1);
  EXPECT_EQ(selector("10.0.0.0/8[17/1000-2000]").to_string(), "10.0.0.0/8[udp/1000-2000]");
  EXPECT_EQ(selector("10.0.0.0/8[47]").to_string(), "10.0.0.0/8[gre]");
  EXPECT_EQ(selector("10.0.0.0/8[200]").to_string(), "10.0.0.0/8[200]");
  EXPECT_EQ(selector("10.0.0.0/8[any/53]").to_string(), "10.0.0.0/8[any/53]");
  EXPECT_EQ(selector("::/0[tcp/22]").to_string(), "::/0[tcp/22]");
}

TEST(TrafficSelector, RangesThatAreNotPrefixes) {
  const auto range = selector("10.0.0.1-10.0.0.5");
  EXPECT_FALSE(range.prefix_length());
  EXPECT_EQ(range.to_string(), "10.0.0.1-10.0.0.5");
  EXPECT_EQ(selector(range.to_string()), range);

  const auto aligned = selector("10.0.0.0-10.0.0.255");
  EXPECT_EQ(aligned.prefix_length(), 24);
  EXPECT_EQ(aligned.to_string(), "10.0.0.0/24");

  TrafficSelector mixed;
  mixed.start = address("10.0.0.0");
  mixed.end = address("::1");
  EXPECT_FALSE(mixed.prefix_length());
  EXPECT_FALSE(TrafficSelector{}.prefix_length());
  // Start all zeros after the common part, but end not all ones.
  EXPECT_FALSE(selector("10.0.0.0-10.0.0.254").prefix_length());
}

TEST(TrafficSelector, RefusesMalformedText) {
  for (std::string_view text :
       {"", "bogus", "10.0.0.0/33", "::/129", "10.0.0.0/-1", "10.0.0.0/", "10.0.0.0/8[foo]", "10.0.0.0/8[tcp/70000]",
        "10.0.0.0/8[tcp/500-400]", "10.0.0.0/8[tcp", "10.0.0.0/8[]", "10.0.0.5-10.0.0.1", "10.0.0.1-::1",
        "10.0.0.0/8[tcp/]", "[tcp]", "10.0.0.0/8[256]"})
    EXPECT_FALSE(TrafficSelector::parse(text)) << text;
}

TEST(Identification, ParsesAddresses) {
  const auto v4 = Identification::parse("192.0.2.1");
  ASSERT_TRUE(v4);
  EXPECT_EQ(v4->type, id_type::kIpv4);
  EXPECT_EQ(v4->data, (Bytes{192, 0, 2, 1}));
  EXPECT_EQ(v4->to_string(), "192.0.2.1");

  const auto v6 = Identification::parse("2001:db8::1");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->type, id_type::kIpv6);
  EXPECT_EQ(v6->data.size(), 16u);
  EXPECT_EQ(v6->to_string(), "2001:db8::1");
}

TEST(Identification, ParsesNamesAndKeyIds) {
  const auto email = Identification::parse("user@example.org");
  ASSERT_TRUE(email);
  EXPECT_EQ(email->type, id_type::kRfc822);
  EXPECT_EQ(std::string(email->data.begin(), email->data.end()), "user@example.org");
  EXPECT_EQ(email->to_string(), "user@example.org");

  const auto fqdn = Identification::parse("gw.example.org");
  ASSERT_TRUE(fqdn);
  EXPECT_EQ(fqdn->type, id_type::kFqdn);
  EXPECT_EQ(std::string(fqdn->data.begin(), fqdn->data.end()), "gw.example.org");
  EXPECT_EQ(fqdn->to_string(), "gw.example.org");

  // "fqdn:" forces the type; to_string keeps the prefix where it matters.
  const auto forced = Identification::parse("fqdn:192.0.2.1");
  ASSERT_TRUE(forced);
  EXPECT_EQ(forced->type, id_type::kFqdn);
  EXPECT_EQ(std::string(forced->data.begin(), forced->data.end()), "192.0.2.1");
  EXPECT_EQ(forced->to_string(), "fqdn:192.0.2.1");
  EXPECT_EQ(Identification::parse(forced->to_string()), forced);
  EXPECT_EQ(Identification::parse("fqdn:a@b")->to_string(), "fqdn:a@b");

  const auto key_id = Identification::parse("keyid:0a1bFF");
  ASSERT_TRUE(key_id);
  EXPECT_EQ(key_id->type, id_type::kKeyId);
  EXPECT_EQ(key_id->data, (Bytes{0x0a, 0x1b, 0xff}));
  EXPECT_EQ(key_id->to_string(), "keyid:0a1bff");

  const auto odd_email = Identification::parse("a=b@example.org");
  ASSERT_TRUE(odd_email);
  EXPECT_EQ(odd_email->type, id_type::kRfc822);

  for (std::string_view bad : {"", "keyid:", "keyid:abc", "keyid:zz", "fqdn:", "XX=1", "CN=", "=gw"})
    EXPECT_FALSE(Identification::parse(bad)) << bad;
}

TEST(Identification, DistinguishedNameIsDer) {
  const auto dn = Identification::parse("CN=gw, O=Example");
  ASSERT_TRUE(dn);
  EXPECT_EQ(dn->type, id_type::kDerAsn1Dn);
  // SEQUENCE { SET { SEQUENCE { 2.5.4.3, UTF8String "gw" } },
  //            SET { SEQUENCE { 2.5.4.10, UTF8String "Example" } } }
  const Bytes expected = {0x30, 0x1f,                                                        //
                          0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02,  //
                          'g',  'w',                                                         //
                          0x31, 0x10, 0x30, 0x0e, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x07,  //
                          'E',  'x',  'a',  'm',  'p',  'l',  'e'};
  EXPECT_EQ(dn->data, expected);
  EXPECT_EQ(dn->to_string(), "CN=gw, O=Example");
}

TEST(Identification, DistinguishedNameKeepsOrderAndEscapes) {
  for (std::string_view text : {"O=Example, CN=gw", "C=DE, O=Example Org, OU=VPN, CN=gw.example.org",
                                "CN=a\\, b, O=x", "CN=a + OU=b, O=c", "CN=gw, emailAddress=admin@example.org"}) {
    const auto dn = Identification::parse(text);
    ASSERT_TRUE(dn) << text;
    EXPECT_EQ(dn->type, id_type::kDerAsn1Dn);
    EXPECT_EQ(dn->to_string(), text);
    EXPECT_EQ(Identification::parse(dn->to_string()), dn);
  }
  // Spacing differences read the same name.
  EXPECT_EQ(Identification::parse("CN=gw,O=Example"), Identification::parse("CN = gw ,  O = Example"));
}

TEST(Identification, PrintsWireDataSafely) {
  Identification garbage_dn{id_type::kDerAsn1Dn, {0x30, 0x05, 0x01}};
  EXPECT_EQ(garbage_dn.to_string(), "id9:300501");
  Identification short_v4{id_type::kIpv4, {1, 2}};
  EXPECT_EQ(short_v4.to_string(), "id1:0102");
  Identification control{id_type::kFqdn, {'a', 0x01, 'b'}};
  EXPECT_EQ(control.to_string(), "fqdn:a\\x01b");
  Identification unknown{200, {0xab}};
  EXPECT_EQ(unknown.to_string(), "id200:ab");
}

}  // namespace
}  // namespace tapsec::ikev2
