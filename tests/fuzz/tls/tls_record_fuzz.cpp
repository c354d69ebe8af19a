// libFuzzer target for the TLS engine's record intake: the input is split
// into records with complete_record_length() and fed one by one to a
// server Session (first byte even) or to a client Session that has sent
// its ClientHello (first byte odd). Every outcome but a crash is fine; the
// engine must never read past a record or accept a non-record.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>

#include "agent/engines/tls/tls_engine.h"
#include "tests/fuzz/tls/throwaway_identity.h"

namespace {

using tapsec::tls::Credentials;
using tapsec::tls::Session;
using tapsec::tls::Settings;

Settings server_settings() {
  static const std::shared_ptr<Credentials> identity = tapsec::tls::fuzz::throwaway_identity();
  Settings settings;
  settings.role = tapsec::tls::Role::Server;
  settings.credentials = identity;
  settings.alpn = {"h2"};
  return settings;
}

Settings client_settings() {
  Settings settings;
  settings.role = tapsec::tls::Role::Client;
  settings.server_name = "fuzz.test";
  settings.peer_validation = tapsec::tls::PeerValidation::None;
  return settings;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool client = data[0] & 1;
  std::span<const std::uint8_t> input(data + 1, size - 1);

  auto created = Session::create(client ? client_settings() : server_settings());
  if (!std::holds_alternative<std::unique_ptr<Session>>(created)) abort();
  auto& session = std::get<std::unique_ptr<Session>>(created);
  session->start();
  (void)session->take_output();

  while (!input.empty()) {
    std::string error;
    const auto length = Session::complete_record_length(input, &error);
    if (!length) {
      // Not a whole record: the engine must refuse it, not crash.
      if (session->feed_record(input) != Session::Status::Failed) abort();
      break;
    }
    if (*length < 5 || *length > input.size() || !error.empty()) abort();
    const auto status = session->feed_record(input.first(*length));
    (void)session->take_output();
    (void)session->info();
    if (status == Session::Status::Failed) {
      if (session->error().empty()) abort();
      break;
    }
    if (status == Session::Status::Established) (void)session->tx_keys();
    input = input.subspan(*length);
  }
  return 0;
}
