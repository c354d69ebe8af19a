// libFuzzer target for what a relayed kTLS connection reads from the peer
// after the handshake: records of type handshake, decrypted by the kernel,
// whose content the relay splits into messages (PostHandshakeMessages) and
// hands on, tickets to the engine's absorb_post_handshake (OpenSSL's
// NewSessionTicket parser and the session cache), KeyUpdates to
// parse_key_update. The input is a list of records, each a 2-byte length
// and its content. The client session is established once against a real
// server Session, as a long connection would be, and made again when a
// refused message has failed it.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>

#include "agent/engines/tls/post_handshake.h"
#include "agent/engines/tls/tls_engine.h"
#include "tests/fuzz/tls/throwaway_identity.h"

namespace {

using tapsec::tls::Credentials;
using tapsec::tls::PostHandshakeMessages;
using tapsec::tls::Session;
using tapsec::tls::SessionCache;
using tapsec::tls::Settings;

std::unique_ptr<Session> make(const Settings& settings) {
  auto created = Session::create(settings);
  if (!std::holds_alternative<std::unique_ptr<Session>>(created)) abort();
  return std::move(std::get<std::unique_ptr<Session>>(created));
}

// Feeds every whole record `from` wrote to `to`.
void deliver(Session& from, Session& to) {
  auto bytes = from.take_output();
  std::span<const std::uint8_t> rest(bytes);
  while (!rest.empty()) {
    std::string error;
    auto length = Session::complete_record_length(rest, &error);
    if (!length) abort();
    to.feed_record(rest.first(*length));
    rest = rest.subspan(*length);
  }
}

// A client established against a real server, its reads handed to the
// "kernel", as the relay holds it; it keeps its tickets in a cache.
std::unique_ptr<Session> established_client() {
  static const std::shared_ptr<Credentials> identity = tapsec::tls::fuzz::throwaway_identity();
  static const auto cache = std::make_shared<SessionCache>(16);
  Settings server_settings;
  server_settings.role = tapsec::tls::Role::Server;
  server_settings.credentials = identity;
  Settings client_settings;
  client_settings.role = tapsec::tls::Role::Client;
  client_settings.server_name = "fuzz.test";
  client_settings.peer_validation = tapsec::tls::PeerValidation::None;
  client_settings.session_cache = cache;
  client_settings.session_cache_key = "fuzz";
  auto client = make(client_settings);
  auto server = make(server_settings);
  client->start();
  server->start();
  for (int round = 0; round < 6 && client->status() != Session::Status::Established; ++round) {
    deliver(*client, *server);
    deliver(*server, *client);
  }
  if (client->status() != Session::Status::Established) abort();
  client->hand_reads_to_kernel();
  return client;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static std::unique_ptr<Session> client = established_client();
  PostHandshakeMessages messages;
  std::span<const std::uint8_t> input(data, size);
  while (input.size() >= 2) {
    const std::size_t length = std::min<std::size_t>((std::size_t{input[0]} << 8) | input[1], input.size() - 2);
    messages.add(input.subspan(2, length));
    input = input.subspan(2 + length);
    for (;;) {
      auto next = messages.next();
      if (auto* error = std::get_if<std::string>(&next)) {
        if (error->empty()) abort();
        if (!std::holds_alternative<std::string>(messages.next())) abort();  // the error sticks
        return 0;
      }
      auto* message = std::get_if<PostHandshakeMessages::Message>(&next);
      if (message == nullptr) break;
      const auto& bytes = message->bytes;
      if (bytes.size() < 4 || bytes.size() > PostHandshakeMessages::kMaxMessage || bytes[0] != message->type) abort();
      const std::size_t body = (std::size_t{bytes[1]} << 16) | (std::size_t{bytes[2]} << 8) | bytes[3];
      if (body + 4 != bytes.size()) abort();
      if (message->type == PostHandshakeMessages::kKeyUpdate) {
        (void)PostHandshakeMessages::parse_key_update(bytes);
      } else if (message->type == PostHandshakeMessages::kNewSessionTicket) {
        if (client->absorb_post_handshake(bytes) == Session::Status::Failed) {
          if (client->error().empty()) abort();
          client = established_client();
        }
      }
    }
  }
  return 0;
}
