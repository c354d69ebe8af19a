// In-process client <-> server engine pairs exchanging records one at a
// time, as the agent's driver does over TCP.
#include "agent/engines/tls/tls_engine.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <deque>
#include <filesystem>
#include <map>
#include <string>
#include <tuple>

#include "agent/engines/tls/context_cache.h"
#include "agent/engines/tls/record_crypto.h"
#include "tests/unit/tls/test_pki.h"
#include "tests/unit/tls/test_records.h"

namespace tapsec::tls {
namespace {

using testing::certificate_der;
using testing::open_record;
using testing::pki;
using testing::seal_record;
using testing::split_records;
using testing::spki_sha256;
using Status = Session::Status;

constexpr std::uint8_t kAlert = 21;
constexpr std::uint8_t kHandshake = 22;
constexpr std::uint8_t kApplicationData = 23;

std::vector<std::uint8_t> bytes_of(std::string_view text) { return {text.begin(), text.end()}; }

Settings client_settings() {
  Settings s;
  s.role = Role::Client;
  s.server_name = "server.test";
  s.use_system_trust = false;
  s.trust_anchor_files = {pki().ca_pem};
  return s;
}

Settings server_settings(std::shared_ptr<Credentials> credentials = nullptr) {
  Settings s;
  s.role = Role::Server;
  s.credentials = credentials ? credentials : pki().server_ec;
  s.use_system_trust = false;
  s.trust_anchor_files = {pki().ca_pem};
  return s;
}

std::map<const Session*, std::deque<std::vector<std::uint8_t>>>& inboxes();

std::unique_ptr<Session> make(const Settings& settings) {
  auto created = Session::create(settings);
  if (auto* error = std::get_if<std::string>(&created)) {
    ADD_FAILURE() << "Session::create failed: " << *error;
    return nullptr;
  }
  auto session = std::move(std::get<std::unique_ptr<Session>>(created));
  inboxes().erase(session.get());
  return session;
}

std::string create_error(const Settings& settings) {
  auto created = Session::create(settings);
  if (auto* error = std::get_if<std::string>(&created)) return *error;
  return {};
}

// Records in flight to each session, so that a session pausing for peer
// validation keeps the rest of the peer's flight for later.
std::map<const Session*, std::deque<std::vector<std::uint8_t>>>& inboxes() {
  static std::map<const Session*, std::deque<std::vector<std::uint8_t>>> queues;
  return queues;
}

// Moves everything `from` has to send towards `to` and feeds `to` one whole
// record per call while it wants records.
Status deliver(Session& from, Session& to) {
  auto& inbox = inboxes()[&to];
  for (auto& record : split_records(from.take_output())) inbox.push_back(std::move(record));
  Status last = to.status();
  while (!inbox.empty() && last != Status::Failed && last != Status::NeedPeerValidation) {
    last = to.feed_record(inbox.front());
    inbox.pop_front();
  }
  return last;
}

// Runs the handshake until both sides are established, one side fails or
// waits for peer validation. The server's post-handshake records (tickets)
// are left in its output.
void handshake(Session& client, Session& server) {
  client.start();
  server.start();
  for (int round = 0; round < 10; ++round) {
    deliver(client, server);
    if (server.status() == Status::Failed || server.status() == Status::NeedPeerValidation) return;
    if (client.status() == Status::Established && server.status() == Status::Established) return;
    deliver(server, client);
    if (client.status() == Status::Failed || client.status() == Status::NeedPeerValidation) return;
  }
}

struct Pair {
  std::unique_ptr<Session> client;
  std::unique_ptr<Session> server;
};

Pair connect(const Settings& client_config, const Settings& server_config) {
  Pair pair{make(client_config), make(server_config)};
  if (pair.client && pair.server) handshake(*pair.client, *pair.server);
  return pair;
}

void expect_established(const Pair& pair) {
  ASSERT_TRUE(pair.client && pair.server);
  ASSERT_EQ(pair.client->status(), Status::Established) << pair.client->error();
  ASSERT_EQ(pair.server->status(), Status::Established) << pair.server->error();
}

// A record sealed with `sender`'s kernel TX keys by the test's own AEAD
// must be opened by OpenSSL in `receiver`. With check_reply, the next
// record OpenSSL seals in `receiver` must open with `sender`'s RX keys; it
// is then fed to `sender` too, to keep its OpenSSL reader in step.
// Afterwards `sender`'s TX direction belongs to the "kernel": OpenSSL in
// `sender` must not write any more.
void expect_kernel_keys_work(Session& sender, Session& receiver, const std::string& label, bool check_reply = true) {
  SCOPED_TRACE(label);
  const TrafficKeys tx = sender.tx_keys();
  ASSERT_NE(tx.version, 0) << "no TX keys";
  const auto message = bytes_of("kernel-sealed record: " + label);
  const auto record = seal_record(tx, tx.seq, kApplicationData, message);
  ASSERT_EQ(receiver.feed_ciphertext(record), Status::Established) << receiver.error();
  EXPECT_EQ(receiver.take_plaintext(), message);
  if (!check_reply) return;

  const TrafficKeys rx = sender.rx_keys();
  ASSERT_NE(rx.version, 0) << "no RX keys";
  const auto reply = bytes_of("OpenSSL-sealed reply: " + label);
  receiver.write_plaintext(reply);
  const auto records = split_records(receiver.take_output());
  ASSERT_EQ(records.size(), 1u);
  const auto opened = open_record(rx, rx.seq, records[0]);
  ASSERT_TRUE(opened) << "reply does not open with the RX keys at seq " << rx.seq;
  EXPECT_EQ(opened->type, kApplicationData);
  EXPECT_EQ(opened->content, reply);
  ASSERT_EQ(sender.feed_ciphertext(records[0]), Status::Established) << sender.error();
  EXPECT_EQ(sender.take_plaintext(), reply);
}

// ---------------------------------------------------------------- records

TEST(CompleteRecordLength, NeedsMoreBytesUntilWhole) {
  std::string error;
  const std::vector<std::uint8_t> record = {22, 3, 1, 0, 3, 1, 2, 3, 23, 3};
  EXPECT_FALSE(Session::complete_record_length({}, &error));
  EXPECT_TRUE(error.empty());
  for (std::size_t n = 1; n < 8; ++n) {
    EXPECT_FALSE(Session::complete_record_length(std::span(record).first(n), &error)) << n;
    EXPECT_TRUE(error.empty()) << n;
  }
  EXPECT_EQ(Session::complete_record_length(std::span(record).first(8), &error), 8u);
  EXPECT_EQ(Session::complete_record_length(record, &error), 8u);
}

TEST(CompleteRecordLength, RejectsWhatIsNotTls) {
  std::string error;
  const std::vector<std::vector<std::uint8_t>> bad = {
      {'G', 'E', 'T', ' ', '/'}, {24, 3, 3, 0, 1}, {22, 2, 0}, {22, 3, 0, 0, 1}, {23, 3, 5, 0, 1},
      {23, 3, 3, 0x41, 0x01},  // 2^14 + 257
      {22, 3, 3, 0, 0},        // empty handshake record
      {0x80, 0x2e, 0x01},      // SSLv2-style hello
  };
  for (const auto& bytes : bad) {
    EXPECT_FALSE(Session::complete_record_length(bytes, &error));
    EXPECT_FALSE(error.empty());
  }
  const std::vector<std::uint8_t> largest = {23, 3, 3, 0x41, 0x00};  // 2^14 + 256 is allowed
  EXPECT_FALSE(Session::complete_record_length(largest, &error));
  EXPECT_TRUE(error.empty());
}

// --------------------------------------------------------------- settings

TEST(Settings, RejectsWhatTheKernelCannotCarry) {
  Settings s = client_settings();
  s.ciphersuites = {"TLS_AES_128_CCM_SHA256"};
  EXPECT_NE(create_error(s).find("TLS_AES_128_CCM_SHA256"), std::string::npos);
  s = client_settings();
  s.ciphers12 = {"AES128-SHA"};
  EXPECT_NE(create_error(s).find("not allowed"), std::string::npos);
  s = client_settings();
  s.groups = {"no-such-group"};
  EXPECT_FALSE(create_error(s).empty());
}

TEST(Settings, RejectsIncompleteConfigurations) {
  Settings server = server_settings();
  server.credentials = nullptr;
  EXPECT_NE(create_error(server).find("identity"), std::string::npos);

  Settings pinned = client_settings();
  pinned.peer_validation = PeerValidation::Pinned;
  EXPECT_NE(create_error(pinned).find("pin"), std::string::npos);

  Settings nameless = client_settings();
  nameless.server_name.clear();
  EXPECT_NE(create_error(nameless).find("server name"), std::string::npos);

  Settings versions = client_settings();
  versions.min_version = Version::Tls13;
  versions.max_version = Version::Tls12;
  EXPECT_FALSE(create_error(versions).empty());

  Settings psk12 = client_settings();
  psk12.max_version = Version::Tls12;
  psk12.psk = ExternalPsk{"id", std::vector<std::uint8_t>(32, 7)};
  EXPECT_NE(create_error(psk12).find("TLS 1.3"), std::string::npos);

  Settings anchors = client_settings();
  anchors.trust_anchor_files = {"/nonexistent/ca.pem"};
  EXPECT_NE(create_error(anchors).find("/nonexistent/ca.pem"), std::string::npos);
}

TEST(CredentialsTest, LoadErrorsSayWhatIsWrong) {
  auto missing = Credentials::load("x", "/nonexistent.pem", pki().client_key);
  ASSERT_TRUE(std::holds_alternative<std::string>(missing));
  EXPECT_NE(std::get<std::string>(missing).find("/nonexistent.pem"), std::string::npos);

  auto mismatch = Credentials::load("x", pki().client_pem, pki().server_ec_key);
  ASSERT_TRUE(std::holds_alternative<std::string>(mismatch));
  EXPECT_NE(std::get<std::string>(mismatch).find("does not match"), std::string::npos);

  auto not_a_key = Credentials::load("x", pki().client_pem, pki().client_pem);
  ASSERT_TRUE(std::holds_alternative<std::string>(not_a_key));

  EXPECT_EQ(pki().client->name(), "client");
  EXPECT_NE(pki().client->subject().find("CN=client.test"), std::string::npos);
  EXPECT_EQ(pki().client->chain_der().front(), certificate_der(pki().client_pem));
}

// Identity and trust anchor files go through the agent's file checks
// (agent/core/trusted_file.h): a private key only its owner may read, no
// file writable by others.
TEST(CredentialsTest, FilesOthersControlAreRefused) {
  const std::string loose_key = pki().dir + "/loose.key";
  std::filesystem::copy_file(pki().client_key, loose_key, std::filesystem::copy_options::overwrite_existing);
  ::chmod(loose_key.c_str(), 0640);
  auto loaded = Credentials::load("x", pki().client_pem, loose_key);
  ASSERT_TRUE(std::holds_alternative<std::string>(loaded));
  EXPECT_EQ(std::get<std::string>(loaded), "identity 'x': private key file " + loose_key +
                                               " has mode 0640 and holds a private key: run \"chmod 0600 " +
                                               loose_key + "\"");

  const std::string open_anchors = pki().dir + "/open-ca.pem";
  std::filesystem::copy_file(pki().ca_pem, open_anchors, std::filesystem::copy_options::overwrite_existing);
  ::chmod(open_anchors.c_str(), 0646);
  Settings anchors = client_settings();
  anchors.trust_anchor_files = {open_anchors};
  EXPECT_NE(create_error(anchors).find("trust store file " + open_anchors +
                                       " has mode 0646 and is writable by every user: run \"chmod 0644 " +
                                       open_anchors + "\""),
            std::string::npos)
      << create_error(anchors);
}

// ------------------------------------------------------- handshakes, keys

class Tls13Suites : public ::testing::TestWithParam<std::string> {};

TEST_P(Tls13Suites, HandshakeAndKernelKeysBothWays) {
  Settings c = client_settings();
  c.ciphersuites = {GetParam()};
  Settings s = server_settings();
  s.ciphersuites = {GetParam()};
  Pair pair = connect(c, s);
  expect_established(pair);

  const Info info = pair.client->info();
  EXPECT_EQ(info.version, "TLSv1.3");
  EXPECT_EQ(info.cipher, GetParam());
  EXPECT_EQ(info.group, "X25519");
  EXPECT_FALSE(info.resumed);
  EXPECT_NE(info.peer_identity.find("CN=server.test"), std::string::npos);
  EXPECT_EQ(pair.server->info().local_identity, "server-ec");
  EXPECT_EQ(pair.server->info().cipher, GetParam());

  // The server has already sent its two NewSessionTickets under its
  // application keys; the client has not read them yet.
  EXPECT_EQ(pair.server->tx_keys().seq, 2u);
  EXPECT_EQ(pair.client->rx_keys().seq, 0u);
  EXPECT_EQ(pair.client->tx_keys().seq, 0u);
  EXPECT_EQ(pair.server->rx_keys().seq, 0u);
  EXPECT_EQ(pair.client->tx_keys().key, pair.server->rx_keys().key);
  EXPECT_EQ(pair.client->tx_keys().iv, pair.server->rx_keys().iv);

  // The tickets are readable with the client's RX keys at seq 0 and 1.
  const auto tickets = split_records(pair.server->take_output());
  ASSERT_EQ(tickets.size(), 2u);
  for (std::size_t i = 0; i < tickets.size(); ++i) {
    const auto opened = open_record(pair.client->rx_keys(), i, tickets[i]);
    ASSERT_TRUE(opened) << "ticket " << i;
    EXPECT_EQ(opened->type, kHandshake);
    EXPECT_EQ(opened->content.at(0), 4);  // new_session_ticket
  }
  // The client consumes the tickets: its RX seq must count them.
  for (const auto& ticket : tickets) ASSERT_EQ(pair.client->feed_record(ticket), Status::Established);
  EXPECT_EQ(pair.client->rx_keys().seq, 2u);
  // Kernel client -> OpenSSL server; the server's reply has seq 2.
  expect_kernel_keys_work(*pair.client, *pair.server, "client to server");
  EXPECT_EQ(pair.server->tx_keys().seq, 3u);
  expect_kernel_keys_work(*pair.server, *pair.client, "server to client", false);
}

INSTANTIATE_TEST_SUITE_P(AllKernelSuites, Tls13Suites,
                         ::testing::Values("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                           "TLS_CHACHA20_POLY1305_SHA256"));

class Tls12Ciphers : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(Tls12Ciphers, HandshakeAndKernelKeysBothWays) {
  const auto& [cipher, rsa] = GetParam();
  Settings c = client_settings();
  c.max_version = Version::Tls12;
  c.ciphers12 = {cipher};
  Settings s = server_settings(rsa ? pki().server_rsa : pki().server_ec);
  s.ciphers12 = {cipher};
  Pair pair = connect(c, s);
  expect_established(pair);
  (void)pair.server->take_output();

  const Info info = pair.client->info();
  EXPECT_EQ(info.version, "TLSv1.2");
  EXPECT_NE(info.cipher.find("TLS_ECDHE_"), std::string::npos) << info.cipher;
  EXPECT_EQ(info.group, "X25519");
  // Finished was sequence number 0 in each direction.
  EXPECT_EQ(pair.client->tx_keys().seq, 1u);
  EXPECT_EQ(pair.client->rx_keys().seq, 1u);
  EXPECT_EQ(pair.server->tx_keys().seq, 1u);
  EXPECT_EQ(pair.server->rx_keys().seq, 1u);
  const TrafficKeys tx = pair.client->tx_keys();
  if (tx.cipher != RecordCipher::Chacha20Poly1305) {
    // Explicit nonce of the next record = its sequence number.
    EXPECT_EQ(tx.iv[11], 1);
    EXPECT_EQ(tx.iv[4], 0);
  }
  expect_kernel_keys_work(*pair.client, *pair.server, "client to server");
  expect_kernel_keys_work(*pair.server, *pair.client, "server to client", false);
}

INSTANTIATE_TEST_SUITE_P(
    AllKernelCiphers, Tls12Ciphers,
    ::testing::Values(std::make_tuple("ECDHE-ECDSA-AES128-GCM-SHA256", false),
                      std::make_tuple("ECDHE-ECDSA-AES256-GCM-SHA384", false),
                      std::make_tuple("ECDHE-ECDSA-CHACHA20-POLY1305", false),
                      std::make_tuple("ECDHE-RSA-AES128-GCM-SHA256", true),
                      std::make_tuple("ECDHE-RSA-AES256-GCM-SHA384", true),
                      std::make_tuple("ECDHE-RSA-CHACHA20-POLY1305", true)));

TEST(Handshake, P256GroupAndRsaServerOnTls13) {
  Settings c = client_settings();
  c.groups = {"P-256"};
  Pair pair = connect(c, server_settings(pki().server_rsa));
  expect_established(pair);
  EXPECT_EQ(pair.client->info().group, "P-256");
  EXPECT_EQ(pair.server->info().group, "P-256");
}

TEST(Handshake, HelloRetryRequestToP256) {
  Settings s = server_settings();
  s.groups = {"P-256"};  // the client's first key share is X25519
  Pair pair = connect(client_settings(), s);
  expect_established(pair);
  EXPECT_EQ(pair.client->info().group, "P-256");
  deliver(*pair.server, *pair.client);
  expect_kernel_keys_work(*pair.client, *pair.server, "after HRR");
  expect_kernel_keys_work(*pair.server, *pair.client, "after HRR, back", false);
}

TEST(Handshake, P256OnTls12) {
  Settings c = client_settings();
  c.groups = {"P-256"};
  c.max_version = Version::Tls12;
  Pair pair = connect(c, server_settings());
  expect_established(pair);
  EXPECT_EQ(pair.server->info().group, "P-256");
}

TEST(Handshake, ServerSeesSni) {
  Pair pair = connect(client_settings(), server_settings());
  expect_established(pair);
  EXPECT_EQ(pair.server->info().server_name, "server.test");
  EXPECT_EQ(pair.client->info().server_name, "server.test");
}

TEST(Handshake, AlpnPicksFirstClientChoiceTheServerAccepts) {
  Settings c = client_settings();
  c.alpn = {"h2", "http/1.1"};
  Settings s = server_settings();
  s.alpn = {"http/1.1", "h2"};
  Pair pair = connect(c, s);
  expect_established(pair);
  EXPECT_EQ(pair.client->info().alpn, "h2");
  EXPECT_EQ(pair.server->info().alpn, "h2");
}

TEST(Handshake, AlpnMismatchFailsWithNoApplicationProtocol) {
  Settings c = client_settings();
  c.alpn = {"h2"};
  Settings s = server_settings();
  s.alpn = {"imap"};
  Pair pair = connect(c, s);
  EXPECT_EQ(pair.server->status(), Status::Failed);
  EXPECT_NE(pair.server->error().find("no application protocol"), std::string::npos) << pair.server->error();
  deliver(*pair.server, *pair.client);
  EXPECT_EQ(pair.client->status(), Status::Failed);
  EXPECT_NE(pair.client->error().find("no application protocol"), std::string::npos) << pair.client->error();
}

TEST(Validation, HostnameMismatchFails) {
  Settings c = client_settings();
  c.server_name = "other.test";
  Pair pair = connect(c, server_settings());
  EXPECT_EQ(pair.client->status(), Status::Failed);
  EXPECT_NE(pair.client->error().find("hostname mismatch"), std::string::npos) << pair.client->error();
  deliver(*pair.client, *pair.server);
  EXPECT_EQ(pair.server->status(), Status::Failed);
}

TEST(Validation, UntrustedIssuerFails) {
  Settings c = client_settings();
  c.trust_anchor_files = {pki().other_ca_pem};
  Pair pair = connect(c, server_settings());
  EXPECT_EQ(pair.client->status(), Status::Failed);
  EXPECT_NE(pair.client->error().find("peer validation failed"), std::string::npos) << pair.client->error();
}

TEST(Validation, PinnedAcceptsTheRightKeyWithoutTrustStore) {
  Settings c = client_settings();
  c.peer_validation = PeerValidation::Pinned;
  c.trust_anchor_files.clear();
  c.server_name = "not-checked.example";
  c.spki_sha256_pins = {spki_sha256(pki().client_pem), spki_sha256(pki().server_ec_pem)};
  Pair pair = connect(c, server_settings());
  expect_established(pair);
}

TEST(Validation, PinnedRejectsAnotherKey) {
  Settings c = client_settings();
  c.peer_validation = PeerValidation::Pinned;
  c.spki_sha256_pins = {spki_sha256(pki().server_rsa_pem)};
  Pair pair = connect(c, server_settings(pki().server_ec));
  EXPECT_EQ(pair.client->status(), Status::Failed);
  EXPECT_NE(pair.client->error().find("pinned"), std::string::npos) << pair.client->error();
}

TEST(Validation, ApplicationAcceptsOnClient) {
  Settings c = client_settings();
  c.peer_validation = PeerValidation::Application;
  Pair pair = connect(c, server_settings());
  ASSERT_EQ(pair.client->status(), Status::NeedPeerValidation) << pair.client->error();
  const auto chain = pair.client->peer_chain_der();
  ASSERT_FALSE(chain.empty());
  EXPECT_EQ(chain.front(), certificate_der(pki().server_ec_pem));
  EXPECT_TRUE(pair.client->take_output().empty());
  EXPECT_EQ(pair.client->resolve_peer_validation(true, ""), Status::WantRecord);
  handshake(*pair.client, *pair.server);
  expect_established(pair);
}

TEST(Validation, FeedingWhileValidationIsPendingFails) {
  Settings c = client_settings();
  c.peer_validation = PeerValidation::Application;
  Pair pair = connect(c, server_settings());
  ASSERT_EQ(pair.client->status(), Status::NeedPeerValidation);
  auto& pending = inboxes()[pair.client.get()];
  ASSERT_FALSE(pending.empty());
  EXPECT_EQ(pair.client->feed_record(pending.front()), Status::Failed);
  EXPECT_NE(pair.client->error().find("pending"), std::string::npos);
}

TEST(Validation, PinParsing) {
  const auto pin = spki_sha256(pki().server_ec_pem);
  unsigned char encoded[64] = {};
  EVP_EncodeBlock(encoded, pin.data(), 32);
  EXPECT_EQ(parse_spki_pin("sha256/" + std::string(reinterpret_cast<char*>(encoded))), pin);
  EXPECT_FALSE(parse_spki_pin(std::string(reinterpret_cast<char*>(encoded))));
  EXPECT_FALSE(parse_spki_pin("sha256/AAAA"));
  EXPECT_FALSE(parse_spki_pin("sha256/!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!="));
  EXPECT_FALSE(parse_spki_pin("sha1/" + std::string(reinterpret_cast<char*>(encoded))));
}

TEST(Validation, ApplicationRejectsOnClient) {
  Settings c = client_settings();
  c.peer_validation = PeerValidation::Application;
  Pair pair = connect(c, server_settings());
  ASSERT_EQ(pair.client->status(), Status::NeedPeerValidation);
  EXPECT_EQ(pair.client->resolve_peer_validation(false, "not our server"), Status::Failed);
  EXPECT_NE(pair.client->error().find("not our server"), std::string::npos) << pair.client->error();
  deliver(*pair.client, *pair.server);
  EXPECT_EQ(pair.server->status(), Status::Failed);
}

Settings server_requiring_client_certificates(PeerValidation validation) {
  Settings s = server_settings();
  s.require_peer_certificate = true;
  s.peer_validation = validation;
  return s;
}

TEST(Validation, ClientCertificateRequired) {
  Settings c = client_settings();
  Pair without = connect(c, server_requiring_client_certificates(PeerValidation::System));
  EXPECT_EQ(without.server->status(), Status::Failed);
  EXPECT_FALSE(without.server->error().empty());

  c.credentials = pki().client;
  Pair with = connect(c, server_requiring_client_certificates(PeerValidation::System));
  expect_established(with);
  EXPECT_NE(with.server->info().peer_identity.find("CN=client.test"), std::string::npos);
  EXPECT_EQ(with.client->info().local_identity, "client");
}

TEST(Validation, ApplicationOnServerAccepts) {
  Settings c = client_settings();
  c.credentials = pki().client;
  Pair pair = connect(c, server_requiring_client_certificates(PeerValidation::Application));
  ASSERT_EQ(pair.server->status(), Status::NeedPeerValidation) << pair.server->error();
  EXPECT_EQ(pair.server->peer_chain_der().front(), certificate_der(pki().client_pem));
  pair.server->resolve_peer_validation(true, "");
  handshake(*pair.client, *pair.server);
  expect_established(pair);
  EXPECT_EQ(pair.server->tx_keys().seq, 2u);
}

TEST(Validation, ApplicationOnServerRejectsWithAlert) {
  for (Version version : {Version::Tls13, Version::Tls12}) {
    SCOPED_TRACE(std::string(to_string(version)));
    Settings c = client_settings();
    c.credentials = pki().client;
    c.max_version = version;
    Pair pair = connect(c, server_requiring_client_certificates(PeerValidation::Application));
    ASSERT_EQ(pair.server->status(), Status::NeedPeerValidation) << pair.server->error();
    EXPECT_EQ(pair.server->resolve_peer_validation(false, "unknown device"), Status::Failed);
    EXPECT_NE(pair.server->error().find("unknown device"), std::string::npos);
    // The client reads the rest of its flight being refused with an alert.
    deliver(*pair.server, *pair.client);
    EXPECT_EQ(pair.client->status(), Status::Failed);
    EXPECT_NE(pair.client->error().find("bad certificate"), std::string::npos) << pair.client->error();
  }
}

TEST(Validation, NoneAcceptsAnyServer) {
  Settings c = client_settings();
  c.peer_validation = PeerValidation::None;
  c.trust_anchor_files = {pki().other_ca_pem};
  c.server_name = "whatever.test";
  expect_established(connect(c, server_settings()));
}

// -------------------------------------------------------------------- PSK

TEST(ExternalPskTest, HandshakeWithoutCertificates) {
  Settings c = client_settings();
  c.psk = ExternalPsk{"device-17", std::vector<std::uint8_t>(32, 0x5a)};
  c.peer_validation = PeerValidation::None;
  Settings s = server_settings();
  s.credentials = nullptr;
  s.psk = c.psk;
  Pair pair = connect(c, s);
  expect_established(pair);
  EXPECT_EQ(pair.client->info().peer_identity, "psk:device-17");
  EXPECT_EQ(pair.server->info().peer_identity, "psk:device-17");
  EXPECT_FALSE(pair.server->info().resumed);
  EXPECT_EQ(pair.client->info().version, "TLSv1.3");
  deliver(*pair.server, *pair.client);
  expect_kernel_keys_work(*pair.client, *pair.server, "psk");
  expect_kernel_keys_work(*pair.server, *pair.client, "psk back", false);
}

TEST(ExternalPskTest, WrongKeyFails) {
  Settings c = client_settings();
  c.psk = ExternalPsk{"device-17", std::vector<std::uint8_t>(32, 0x5a)};
  c.peer_validation = PeerValidation::None;
  Settings s = server_settings();
  s.credentials = nullptr;
  s.psk = ExternalPsk{"device-17", std::vector<std::uint8_t>(32, 0x77)};
  Pair pair = connect(c, s);
  EXPECT_TRUE(pair.client->status() == Status::Failed || pair.server->status() == Status::Failed);
  EXPECT_NE(pair.server->status(), Status::Established);
}

// ------------------------------------------------------------- resumption

void resume_across_sessions(Version version) {
  auto cache = std::make_shared<SessionCache>(16);
  auto ticket_keys = TicketKeys::generate();
  ASSERT_TRUE(ticket_keys);
  Settings c = client_settings();
  c.max_version = version;
  c.session_cache = cache;
  c.session_cache_key = "server.test:443|system";
  Settings s = server_settings();
  s.ticket_keys = ticket_keys;

  Pair first = connect(c, s);
  expect_established(first);
  deliver(*first.server, *first.client);  // tickets (TLS 1.3)
  EXPECT_EQ(first.client->status(), Status::Established);
  EXPECT_FALSE(first.client->info().resumed);
  const std::size_t stored = cache->size();
  EXPECT_EQ(stored, version == Version::Tls13 ? 2u : 1u);

  Pair second = connect(c, s);
  expect_established(second);
  EXPECT_TRUE(second.client->info().resumed);
  EXPECT_TRUE(second.server->info().resumed);
  EXPECT_NE(second.client->info().peer_identity.find("CN=server.test"), std::string::npos);
  deliver(*second.server, *second.client);
  expect_kernel_keys_work(*second.client, *second.server, "resumed");
  expect_kernel_keys_work(*second.server, *second.client, "resumed back", false);

  const std::size_t entries = cache->size();
  EXPECT_GE(entries, 1u);
  EXPECT_EQ(cache->flush(), entries);
  EXPECT_EQ(cache->size(), 0u);
}

TEST(Resumption, Tls13AcrossSessionsWithSharedTicketKeys) { resume_across_sessions(Version::Tls13); }
TEST(Resumption, Tls12AcrossSessionsWithSharedTicketKeys) { resume_across_sessions(Version::Tls12); }

// Relayed kernel offload: kTLS reads the tickets, the agent gives their
// plaintext back to the engine, and they must reach the cache all the same.
TEST(Resumption, TicketsTheKernelReadReachTheCacheThroughAbsorb) {
  auto cache = std::make_shared<SessionCache>(16);
  auto ticket_keys = TicketKeys::generate();
  Settings c = client_settings();
  c.session_cache = cache;
  c.session_cache_key = "k";
  Settings s = server_settings();
  s.ticket_keys = ticket_keys;
  Pair first = connect(c, s);
  expect_established(first);
  first.client->hand_reads_to_kernel();
  TrafficKeys kernel_rx = first.client->rx_keys();
  const auto records = split_records(first.server->take_output());
  ASSERT_EQ(records.size(), 2u) << "OpenSSL's server sends two tickets";
  for (const auto& record : records) {
    auto inner = tapsec::tls::detail::tls13_open_record(kernel_rx, record);  // what kTLS does
    ++kernel_rx.seq;
    ASSERT_TRUE(inner);
    ASSERT_EQ(inner->type, 22);
    EXPECT_EQ(first.client->absorb_post_handshake(inner->content), Status::Established) << first.client->error();
  }
  EXPECT_EQ(cache->size(), 2u);
  EXPECT_EQ(first.client->rx_keys().seq, 0u) << "absorbed records are not the kernel's";
  // A KeyUpdate the kernel followed does not disturb OpenSSL's own read keys.
  first.client->advance_rx_keys();
  EXPECT_EQ(first.client->status(), Status::Established);

  Pair second = connect(c, s);
  expect_established(second);
  EXPECT_TRUE(second.client->info().resumed);
}

TEST(Resumption, AbsorbBeforeTheKernelReadsIsRefused) {
  Pair pair = connect(client_settings(), server_settings());
  expect_established(pair);
  const std::vector<std::uint8_t> ticket = {4, 0, 0, 0};
  EXPECT_EQ(pair.client->absorb_post_handshake(ticket), Status::Failed);
  EXPECT_NE(pair.client->error().find("before the kernel took over"), std::string::npos) << pair.client->error();
}

TEST(Resumption, WithoutSharedTicketKeysDoesNotResume) {
  auto cache = std::make_shared<SessionCache>(16);
  Settings c = client_settings();
  c.session_cache = cache;
  c.session_cache_key = "k";
  Pair first = connect(c, server_settings());
  deliver(*first.server, *first.client);
  ASSERT_EQ(cache->size(), 2u);
  Pair second = connect(c, server_settings());
  expect_established(second);
  EXPECT_FALSE(second.client->info().resumed);
}

TEST(Resumption, RotatedTicketKeysStillResumeOnceThenForget) {
  auto cache = std::make_shared<SessionCache>(16);
  auto ticket_keys = TicketKeys::generate();
  Settings c = client_settings();
  c.session_cache = cache;
  c.session_cache_key = "k";
  Settings s = server_settings();
  s.ticket_keys = ticket_keys;
  Pair first = connect(c, s);
  deliver(*first.server, *first.client);
  ticket_keys->rotate();
  Pair second = connect(c, s);
  expect_established(second);
  EXPECT_TRUE(second.server->info().resumed);
  ticket_keys->rotate();
  ticket_keys->rotate();
  Pair third = connect(c, s);  // the newest ticket is under a key two rotations old
  expect_established(third);
  EXPECT_FALSE(third.server->info().resumed);
  EXPECT_EQ(ticket_keys->generation(), 3u);
}

// Each resumed handshake brings a new ticket, and the cache keeps it: a run
// of connections resumes every time after the first, never falling back to
// a full handshake for want of a ticket.
TEST(Resumption, ARunOfConnectionsResumesEveryTimeAfterTheFirst) {
  auto cache = std::make_shared<SessionCache>(16);
  Settings c = client_settings();
  c.session_cache = cache;
  c.session_cache_key = "k";
  Settings s = server_settings();
  s.ticket_keys = TicketKeys::generate();
  for (int i = 0; i < 6; ++i) {
    Pair pair = connect(c, s);
    expect_established(pair);
    EXPECT_EQ(pair.client->info().resumed, i > 0) << "connection " << i;
    deliver(*pair.server, *pair.client);
    EXPECT_GE(cache->size(), 1u) << "connection " << i << " left no ticket";
  }
}

// However many tickets one server sends, it holds at most kSessionsPerKey
// places, the newest; other peers' sessions stay.
TEST(SessionCacheTest, OnePeerKeepsOnlyItsNewestFewSessions) {
  auto cache = std::make_shared<SessionCache>(4 * SessionCache::kSessionsPerKey);
  Settings c = client_settings();
  c.session_cache = cache;
  c.session_cache_key = "other";
  Pair other = connect(c, server_settings());
  deliver(*other.server, *other.client);
  ASSERT_EQ(cache->size(), 2u);
  c.session_cache_key = "flooding";
  // Without shared ticket keys nothing resumes: each connection uses one
  // ticket and brings two.
  for (std::size_t i = 0; i < SessionCache::kSessionsPerKey + 2; ++i) {
    Pair pair = connect(c, server_settings());
    deliver(*pair.server, *pair.client);
  }
  EXPECT_EQ(cache->forget("flooding"), SessionCache::kSessionsPerKey);
  EXPECT_EQ(cache->forget("other"), 2u);
}

TEST(SessionCacheTest, CapacityAndFlush) {
  auto cache = std::make_shared<SessionCache>(8);
  Settings c = client_settings();
  c.session_cache = cache;
  for (int i = 0; i < 3; ++i) {
    c.session_cache_key = "peer-" + std::to_string(i);
    Pair pair = connect(c, server_settings());
    deliver(*pair.server, *pair.client);
  }
  EXPECT_EQ(cache->size(), 6u);
  EXPECT_EQ(cache->forget("peer-0"), 2u);
  cache->set_capacity(3);
  EXPECT_EQ(cache->capacity(), 3u);
  EXPECT_EQ(cache->size(), 3u);
  EXPECT_EQ(cache->flush(), 3u);
  EXPECT_EQ(cache->size(), 0u);
}

// ------------------------------------------------ shared OpenSSL contexts
// Sessions with equal context-level settings share one SSL_CTX; nothing a
// single connection configures may reach another through it. Each test
// creates all its Sessions before driving any handshake, so that a setting
// leaking through the shared context would be seen by the other Session.

std::uint64_t contexts_built() { return detail::shared_context_cache().contexts_built(); }

Settings server_with_ticket_keys() {
  static const auto ticket_keys = TicketKeys::generate();
  Settings s = server_settings();
  s.ticket_keys = ticket_keys;
  return s;
}

TEST(SharedContext, EqualContextSettingsBuildOneContext) {
  flush_context_cache();
  const std::uint64_t before = contexts_built();
  Settings a = client_settings();
  a.alpn = {"h2"};
  Settings b = client_settings();
  b.server_name = "other.test";
  b.alpn = {"http/1.1"};
  b.session_cache = std::make_shared<SessionCache>(4);
  b.session_cache_key = "other.test:443";
  auto first = make(a);
  auto second = make(b);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(contexts_built(), before + 1);
  EXPECT_EQ(detail::shared_context_cache().size(), 1u);

  Settings other_groups = client_settings();
  other_groups.groups = {"P-256"};
  auto third = make(other_groups);
  EXPECT_EQ(contexts_built(), before + 2);

  auto server1 = make(server_with_ticket_keys());
  auto server2 = make(server_with_ticket_keys());
  EXPECT_EQ(contexts_built(), before + 3);
  Settings other_identity = server_with_ticket_keys();
  other_identity.credentials = pki().server_rsa;
  auto server3 = make(other_identity);
  EXPECT_EQ(contexts_built(), before + 4);

  // Tickets under a context's own keys must not resume elsewhere: not shared.
  auto unshared = make(server_settings());
  EXPECT_EQ(detail::shared_context_cache().size(), 4u);

  flush_context_cache();
  EXPECT_EQ(detail::shared_context_cache().size(), 0u);
  auto after_flush = make(a);
  EXPECT_EQ(contexts_built(), before + 5);
  // Sessions created before the flush still work on their own context.
  Pair pair{std::move(first), make(server_with_ticket_keys())};
  handshake(*pair.client, *pair.server);
  expect_established(pair);
}

TEST(ContextCacheTest, EvictsLeastRecentlyUsedAndDoesNotCacheFailures) {
  detail::ContextCache cache(2);
  int builds = 0;
  auto build = [&]() -> std::variant<detail::SslCtxPtr, std::string> {
    ++builds;
    return detail::SslCtxPtr(SSL_CTX_new(TLS_client_method()));
  };
  auto context_of = [&](const std::string& key) {
    auto got = cache.acquire(key, {}, build);
    EXPECT_TRUE(std::holds_alternative<detail::SslCtxPtr>(got));
    return std::holds_alternative<detail::SslCtxPtr>(got) ? std::get<detail::SslCtxPtr>(got).get() : nullptr;
  };
  SSL_CTX* a = context_of("a");
  context_of("b");
  EXPECT_EQ(context_of("a"), a);  // "a" is now the most recently used
  context_of("c");                // evicts "b"
  EXPECT_EQ(builds, 3);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(context_of("a"), a);
  context_of("b");
  EXPECT_EQ(builds, 4);

  auto failed = cache.acquire("bad", {}, [] { return std::variant<detail::SslCtxPtr, std::string>("no context"); });
  ASSERT_TRUE(std::holds_alternative<std::string>(failed));
  EXPECT_EQ(std::get<std::string>(failed), "no context");
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.contexts_built(), 5u);
  EXPECT_EQ(cache.flush(), 2u);
}

Settings pinned_client(const std::string& pinned_certificate) {
  Settings c = client_settings();
  c.peer_validation = PeerValidation::Pinned;
  c.spki_sha256_pins = {spki_sha256(pinned_certificate)};
  return c;
}

TEST(SharedContext, PinsStayWithTheirSession) {
  for (bool right_first : {true, false}) {
    SCOPED_TRACE(right_first ? "right pin first" : "wrong pin first");
    const std::uint64_t before = contexts_built();
    std::unique_ptr<Session> right, wrong;
    if (right_first) {
      right = make(pinned_client(pki().server_ec_pem));
      wrong = make(pinned_client(pki().server_rsa_pem));
    } else {
      wrong = make(pinned_client(pki().server_rsa_pem));
      right = make(pinned_client(pki().server_ec_pem));
    }
    EXPECT_LE(contexts_built(), before + 1);
    Pair accepted{std::move(right), make(server_with_ticket_keys())};
    Pair refused{std::move(wrong), make(server_with_ticket_keys())};
    handshake(*refused.client, *refused.server);
    handshake(*accepted.client, *accepted.server);
    expect_established(accepted);
    EXPECT_EQ(refused.client->status(), Status::Failed);
    EXPECT_NE(refused.client->error().find("pinned"), std::string::npos) << refused.client->error();
  }
}

TEST(SharedContext, AlpnStaysWithItsSession) {
  for (bool h2_first : {true, false}) {
    SCOPED_TRACE(h2_first ? "h2 first" : "http/1.1 first");
    Settings h2 = client_settings();
    h2.alpn = {"h2"};
    Settings http11 = client_settings();
    http11.alpn = {"http/1.1"};
    Settings server_both = server_with_ticket_keys();
    server_both.alpn = {"http/1.1", "h2"};
    Settings server_none = server_with_ticket_keys();

    std::vector<std::unique_ptr<Session>> clients(2), servers(2);
    const int h2_index = h2_first ? 0 : 1;
    clients[h2_index] = make(h2);
    clients[1 - h2_index] = make(http11);
    servers[h2_index] = make(server_both);
    servers[1 - h2_index] = make(server_none);
    Pair plain{make(client_settings()), make(server_both)};
    Pair with_h2{std::move(clients[h2_index]), std::move(servers[h2_index])};
    Pair with_http11{std::move(clients[1 - h2_index]), std::move(servers[1 - h2_index])};
    for (Pair* pair : {&plain, &with_h2, &with_http11}) handshake(*pair->client, *pair->server);

    expect_established(with_h2);
    EXPECT_EQ(with_h2.client->info().alpn, "h2");
    EXPECT_EQ(with_h2.server->info().alpn, "h2");
    // A server without a list ignores the offer rather than refusing it.
    expect_established(with_http11);
    EXPECT_EQ(with_http11.client->info().alpn, "");
    EXPECT_EQ(with_http11.server->info().alpn, "");
    expect_established(plain);
    EXPECT_EQ(plain.client->info().alpn, "");
  }
}

TEST(SharedContext, PskStaysWithItsSession) {
  for (bool psk_first : {true, false}) {
    SCOPED_TRACE(psk_first ? "PSK sessions first" : "PSK sessions last");
    Settings psk_client = client_settings();
    psk_client.psk = ExternalPsk{"device-17", std::vector<std::uint8_t>(32, 0x5a)};
    Settings psk_server = server_with_ticket_keys();
    psk_server.psk = psk_client.psk;
    // TLS 1.2 only: reachable solely by a client whose context still allows 1.2.
    Settings tls12_server = server_settings();
    tls12_server.max_version = Version::Tls12;

    std::unique_ptr<Session> with_psk, without_psk, psk_to_plain_server;
    std::unique_ptr<Session> psk_side, plain_side, plain_server;
    if (psk_first) {
      with_psk = make(psk_client);
      psk_side = make(psk_server);
      psk_to_plain_server = make(psk_client);
    }
    without_psk = make(client_settings());
    plain_side = make(tls12_server);
    plain_server = make(server_with_ticket_keys());
    if (!psk_first) {
      with_psk = make(psk_client);
      psk_side = make(psk_server);
      psk_to_plain_server = make(psk_client);
    }
    Pair psk_pair{std::move(with_psk), std::move(psk_side)};
    Pair plain_pair{std::move(without_psk), std::move(plain_side)};
    Pair mixed_pair{std::move(psk_to_plain_server), std::move(plain_server)};
    for (Pair* pair : {&psk_pair, &plain_pair, &mixed_pair}) handshake(*pair->client, *pair->server);

    expect_established(psk_pair);
    EXPECT_EQ(psk_pair.client->info().peer_identity, "psk:device-17");
    EXPECT_EQ(psk_pair.server->info().peer_identity, "psk:device-17");
    expect_established(plain_pair);
    EXPECT_EQ(plain_pair.client->info().version, "TLSv1.2");
    EXPECT_NE(plain_pair.client->info().peer_identity.find("CN=server.test"), std::string::npos);
    // The server without the PSK must not find one through the shared context.
    expect_established(mixed_pair);
    EXPECT_NE(mixed_pair.client->info().peer_identity.find("CN=server.test"), std::string::npos);
    EXPECT_EQ(mixed_pair.server->info().peer_identity, "");
  }
}

TEST(SharedContext, ApplicationDecisionsStayWithTheirSession) {
  for (bool accept_first : {true, false}) {
    SCOPED_TRACE(accept_first ? "accept first" : "reject first");
    Settings c = client_settings();
    c.peer_validation = PeerValidation::Application;
    Pair accepted = connect(c, server_with_ticket_keys());
    Pair rejected = connect(c, server_with_ticket_keys());
    ASSERT_EQ(accepted.client->status(), Status::NeedPeerValidation) << accepted.client->error();
    ASSERT_EQ(rejected.client->status(), Status::NeedPeerValidation) << rejected.client->error();
    if (accept_first) {
      EXPECT_EQ(accepted.client->resolve_peer_validation(true, ""), Status::WantRecord);
      EXPECT_EQ(rejected.client->resolve_peer_validation(false, "not this one"), Status::Failed);
    } else {
      EXPECT_EQ(rejected.client->resolve_peer_validation(false, "not this one"), Status::Failed);
      EXPECT_EQ(accepted.client->resolve_peer_validation(true, ""), Status::WantRecord);
    }
    handshake(*accepted.client, *accepted.server);
    expect_established(accepted);
    EXPECT_NE(rejected.client->error().find("not this one"), std::string::npos) << rejected.client->error();

    // A later Session on the same context starts undecided again.
    Pair later = connect(c, server_with_ticket_keys());
    EXPECT_EQ(later.client->status(), Status::NeedPeerValidation) << later.client->error();
  }
}

TEST(SharedContext, TicketsResumeOnlyUnderTheSameValidationSettings) {
  auto cache = std::make_shared<SessionCache>(16);
  Settings c = client_settings();
  c.credentials = pki().client;
  c.session_cache = cache;
  c.session_cache_key = "k";
  Settings pins_client_key = server_with_ticket_keys();
  pins_client_key.require_peer_certificate = true;
  pins_client_key.peer_validation = PeerValidation::Pinned;
  pins_client_key.spki_sha256_pins = {spki_sha256(pki().client_pem)};
  Settings also_pins_another = pins_client_key;
  also_pins_another.spki_sha256_pins.push_back(spki_sha256(pki().server_rsa_pem));

  const std::uint64_t before = contexts_built();
  Pair first = connect(c, pins_client_key);
  expect_established(first);
  deliver(*first.server, *first.client);
  ASSERT_GE(cache->size(), 1u);
  Pair other_pins = connect(c, also_pins_another);
  expect_established(other_pins);
  EXPECT_FALSE(other_pins.server->info().resumed);
  EXPECT_LE(contexts_built(), before + 2);  // one client and one server context at most
  deliver(*other_pins.server, *other_pins.client);
  Pair same_pins = connect(c, also_pins_another);
  expect_established(same_pins);
  EXPECT_TRUE(same_pins.server->info().resumed);
}

// ------------------------------------------------------ post-handshake use

TEST(Exporter, EqualOnBothSides) {
  for (Version version : {Version::Tls13, Version::Tls12}) {
    Settings c = client_settings();
    c.max_version = version;
    Pair pair = connect(c, server_settings());
    expect_established(pair);
    const std::vector<std::uint8_t> context = {1, 2, 3};
    auto a = pair.client->export_keying_material("EXPORTER-tapsec-test", context, 32);
    auto b = pair.server->export_keying_material("EXPORTER-tapsec-test", context, 32);
    auto other = pair.server->export_keying_material("EXPORTER-tapsec-other", context, 32);
    ASSERT_TRUE(std::holds_alternative<std::vector<std::uint8_t>>(a));
    ASSERT_TRUE(std::holds_alternative<std::vector<std::uint8_t>>(b));
    EXPECT_EQ(std::get<0>(a), std::get<0>(b));
    EXPECT_NE(std::get<0>(a), std::get<0>(other));
    EXPECT_TRUE(std::holds_alternative<std::string>(pair.client->export_keying_material("x", {}, 0)));
  }
}

TEST(Exporter, RefusedBeforeEstablished) {
  auto client = make(client_settings());
  client->start();
  EXPECT_TRUE(std::holds_alternative<std::string>(client->export_keying_material("EXPORTER-x", {}, 16)));
}

TEST(InnerContentType, TellsTicketsFromApplicationData) {
  Pair pair = connect(client_settings(), server_settings());
  expect_established(pair);
  const auto tickets = split_records(pair.server->take_output());
  ASSERT_EQ(tickets.size(), 2u);
  EXPECT_EQ(pair.client->inner_content_type(tickets[0]), kHandshake);
  EXPECT_EQ(pair.client->inner_content_type(tickets[0]), kHandshake);  // peeking does not consume
  EXPECT_FALSE(pair.client->inner_content_type(tickets[1]));           // wrong sequence number
  ASSERT_EQ(pair.client->feed_record(tickets[0]), Status::Established);
  EXPECT_EQ(pair.client->inner_content_type(tickets[1]), kHandshake);
  ASSERT_EQ(pair.client->feed_record(tickets[1]), Status::Established);

  pair.server->write_plaintext(bytes_of("hello"));
  const auto data = split_records(pair.server->take_output());
  ASSERT_EQ(data.size(), 1u);
  EXPECT_EQ(pair.client->inner_content_type(data[0]), kApplicationData);
  auto tampered = data[0];
  tampered.back() ^= 1;
  EXPECT_FALSE(pair.client->inner_content_type(tampered));

  pair.server->close_notify();
  const auto alert = split_records(pair.server->take_output());
  ASSERT_EQ(alert.size(), 1u);
  ASSERT_EQ(pair.client->feed_record(data[0]), Status::Established);
  EXPECT_EQ(pair.client->inner_content_type(alert[0]), kAlert);
}

TEST(KeyUpdate, KernelSideUpdateMatchesOpenSsl) {
  for (const char* suite : {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"}) {
    SCOPED_TRACE(suite);
    Settings c = client_settings();
    c.ciphersuites = {suite};
    Pair pair = connect(c, server_settings());
    expect_established(pair);
    deliver(*pair.server, *pair.client);
    EXPECT_EQ(pair.client->key_epoch(), 0u);

    // The "kernel" client sends KeyUpdate under the old keys, then data under the new.
    const TrafficKeys old_keys = pair.client->tx_keys();
    const auto message = pair.client->key_update_message(false);
    ASSERT_EQ(message, (std::vector<std::uint8_t>{24, 0, 0, 1, 0}));
    EXPECT_EQ(pair.client->key_epoch(), 1u);
    const TrafficKeys new_keys = pair.client->tx_keys();
    EXPECT_EQ(new_keys.seq, 0u);
    EXPECT_NE(new_keys.key, old_keys.key);
    ASSERT_EQ(pair.server->feed_ciphertext(seal_record(old_keys, old_keys.seq, kHandshake, message)),
              Status::Established)
        << pair.server->error();
    expect_kernel_keys_work(*pair.client, *pair.server, "after client key update");

    // The OpenSSL server updates its keys; the "kernel" client follows.
    pair.server->update_keys(false);
    EXPECT_EQ(pair.server->key_epoch(), 1u);
    const auto update = split_records(pair.server->take_output());
    ASSERT_EQ(update.size(), 1u);
    const TrafficKeys rx = pair.client->rx_keys();
    const auto opened = open_record(rx, rx.seq, update[0]);
    ASSERT_TRUE(opened);
    EXPECT_EQ(opened->type, kHandshake);
    EXPECT_EQ(opened->content, (std::vector<std::uint8_t>{24, 0, 0, 1, 0}));
    pair.client->advance_rx_keys();
    EXPECT_EQ(pair.client->rx_keys().seq, 0u);
    pair.server->write_plaintext(bytes_of("after server update"));
    const auto data = split_records(pair.server->take_output());
    ASSERT_EQ(data.size(), 1u);
    const auto fresh = open_record(pair.client->rx_keys(), 0, data[0]);
    ASSERT_TRUE(fresh);
    EXPECT_EQ(fresh->content, bytes_of("after server update"));
  }
}

TEST(KeyUpdate, RequestedUpdateIsAnsweredInUserspace) {
  Pair pair = connect(client_settings(), server_settings());
  expect_established(pair);
  deliver(*pair.server, *pair.client);
  pair.client->update_keys(true);
  deliver(*pair.client, *pair.server);
  EXPECT_EQ(pair.server->status(), Status::Established) << pair.server->error();
  pair.server->write_plaintext(bytes_of("x"));  // carries the answering KeyUpdate first
  deliver(*pair.server, *pair.client);
  EXPECT_EQ(pair.client->take_plaintext(), bytes_of("x"));
  EXPECT_EQ(pair.server->key_epoch(), 1u);
  // The engines' own bookkeeping still yields working kernel keys.
  expect_kernel_keys_work(*pair.client, *pair.server, "after userspace updates");
  expect_kernel_keys_work(*pair.server, *pair.client, "after userspace updates, back", false);
}

TEST(KeyUpdate, NotOnTls12) {
  Settings c = client_settings();
  c.max_version = Version::Tls12;
  Pair pair = connect(c, server_settings());
  expect_established(pair);
  EXPECT_TRUE(pair.client->key_update_message(true).empty());
}

TEST(UserspaceRecordLayer, DataBothWaysAndCloseNotify) {
  Pair pair = connect(client_settings(), server_settings());
  expect_established(pair);
  const std::vector<std::uint8_t> big(40000, 0xab);
  pair.client->write_plaintext(big);
  const auto out = pair.client->take_output();
  // Arbitrary chunking on the userspace path.
  for (std::size_t offset = 0; offset < out.size(); offset += 1000) {
    const auto chunk = std::span(out).subspan(offset, std::min<std::size_t>(1000, out.size() - offset));
    ASSERT_EQ(pair.server->feed_ciphertext(chunk), Status::Established);
  }
  EXPECT_EQ(pair.server->take_plaintext(), big);
  deliver(*pair.server, *pair.client);
  pair.server->write_plaintext(bytes_of("pong"));
  deliver(*pair.server, *pair.client);
  EXPECT_EQ(pair.client->take_plaintext(), bytes_of("pong"));
  EXPECT_FALSE(pair.client->peer_closed());
  pair.server->close_notify();
  deliver(*pair.server, *pair.client);
  EXPECT_TRUE(pair.client->peer_closed());
  EXPECT_EQ(Session::close_notify_alert_plaintext(), (std::vector<std::uint8_t>{1, 0}));
}

// ------------------------------------------------------------ bad input

TEST(Malformed, GarbageRecordsFailTheServerCleanly) {
  const std::vector<std::vector<std::uint8_t>> inputs = {
      {22, 3, 1, 0, 4, 1, 0, 0, 0},        // empty ClientHello
      {22, 3, 1, 0, 4, 0xff, 0, 0, 0},     // unknown handshake type
      {23, 3, 3, 0, 2, 0xde, 0xad},        // application data before handshake
      {21, 3, 3, 0, 2, 2, 40},             // a fatal alert
      {20, 3, 3, 0, 1, 1},                 // ChangeCipherSpec out of place
      {22, 3, 3, 0, 0},                    // zero-length handshake record
  };
  for (const auto& input : inputs) {
    auto server = make(server_settings());
    const Status status = server->feed_record(input);
    EXPECT_EQ(status, Status::Failed) << "input of " << input.size() << " bytes";
    EXPECT_FALSE(server->error().empty());
    EXPECT_EQ(server->feed_record(input), Status::Failed);  // stays failed
  }
}

TEST(Malformed, FeedRecordWantsExactlyOneRecord) {
  auto server = make(server_settings());
  EXPECT_EQ(server->feed_record(std::vector<std::uint8_t>{22, 3, 1, 0, 4, 1}), Status::Failed);
  EXPECT_NE(server->error().find("incomplete"), std::string::npos);
  server = make(server_settings());
  EXPECT_EQ(server->feed_record(std::vector<std::uint8_t>{22, 3, 1, 0, 1, 1, 22, 3, 1, 0, 1, 1}), Status::Failed);
  server = make(server_settings());
  EXPECT_EQ(server->feed_record(std::vector<std::uint8_t>{'G', 'E', 'T', ' ', '/'}), Status::Failed);
  EXPECT_NE(server->error().find("not a TLS record"), std::string::npos);
}

TEST(Malformed, TamperedHandshakeRecordFails) {
  auto client = make(client_settings());
  auto server = make(server_settings());
  client->start();
  deliver(*client, *server);
  auto flight = split_records(server->take_output());
  ASSERT_GE(flight.size(), 3u);
  flight.back().back() ^= 0x80;  // corrupt the last encrypted record's tag
  Status status = Status::WantRecord;
  for (const auto& record : flight) status = client->feed_record(record);
  EXPECT_EQ(status, Status::Failed);
}

TEST(Malformed, CiphertextBeforeHandshakeIsRefused) {
  auto server = make(server_settings());
  EXPECT_EQ(server->feed_ciphertext(std::vector<std::uint8_t>{23, 3, 3, 0, 0}), Status::Failed);
  EXPECT_TRUE(server->tx_keys().key.empty());
  EXPECT_FALSE(server->inner_content_type(std::vector<std::uint8_t>{23, 3, 3, 0, 0}));
}

}  // namespace
}  // namespace tapsec::tls
