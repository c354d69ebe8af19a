// libFuzzer target for the WireGuard PSK exchange. An initiator and a
// responder each get a valid HELLO from a pretend peer, so the fuzz bytes
// reach ROTATE, ACK and ERROR handling; then the bytes after the first are
// fed to both in chunks whose size the first byte picks. The initiator tries
// rotate() after every chunk. Every outcome but a crash or a broken
// invariant is fine:
//   - at most one ExchangeFailed, and nothing after it;
//   - PSK epochs count up by one from 0, and epoch() follows them;
//   - output is always a sequence of whole, well-formed frames.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <span>
#include <string_view>
#include <variant>
#include <vector>

#include "agent/engines/wireguard/psk_exchange.h"

namespace {

using tapsec::wireguard::ExchangeFailed;
using tapsec::wireguard::Key;
using tapsec::wireguard::PeerHello;
using tapsec::wireguard::PskExchange;
using tapsec::wireguard::PskReady;
using tapsec::wireguard::Role;

void require(bool condition) {
  if (!condition) std::abort();
}

std::vector<std::uint8_t> hello_from_peer() {
  std::vector<std::uint8_t> frame = {1, 0, 35, 1};
  for (int i = 0; i < 32; ++i) frame.push_back(0x40 + i);
  frame.push_back(0xca);
  frame.push_back(0x6c);
  return frame;
}

void check_frames(const std::vector<std::uint8_t>& output) {
  std::size_t offset = 0;
  while (offset < output.size()) {
    require(output.size() - offset >= 3);
    const std::uint8_t type = output[offset];
    const std::size_t length = output[offset + 1] << 8 | output[offset + 2];
    require(type >= 1 && type <= 4);
    require(type != 1 || length == 35);
    require(type != 2 && type != 3 ? length <= 512 : length == 40);
    require(output.size() - offset - 3 >= length);
    offset += 3 + length;
  }
}

struct Tracker {
  bool failed = false;
  std::optional<std::uint64_t> last_epoch;

  void check(PskExchange& engine) {
    check_frames(engine.take_output());
    for (auto& event : engine.take_events()) {
      require(!failed);
      if (std::holds_alternative<ExchangeFailed>(event)) failed = true;
      if (auto* ready = std::get_if<PskReady>(&event)) {
        require(ready->epoch == (last_epoch ? *last_epoch + 1 : 0));
        last_epoch = ready->epoch;
      }
      require(!std::holds_alternative<PeerHello>(event));  // the only HELLO came before
    }
    require(engine.failed() == failed);
    require(engine.epoch() == last_epoch);
  }
};

void drive(Role role, bool exporter_works, std::size_t chunk_size, std::span<const std::uint8_t> input) {
  Key own{};
  own.fill(role == Role::Initiator ? 0x11 : 0x22);
  PskExchange engine(role, own, 51820,
                     [exporter_works](std::string_view, std::span<const std::uint8_t> context) -> std::optional<Key> {
                       if (!exporter_works) return std::nullopt;
                       Key salt{};
                       for (std::size_t i = 0; i < context.size() && i < salt.size(); ++i) salt[i] = context[i] ^ 0x5c;
                       return salt;
                     });
  engine.start();
  engine.feed(hello_from_peer());
  require(!engine.failed());
  require(engine.peer().has_value());
  (void)engine.take_events();
  Tracker tracker;
  tracker.check(engine);

  for (std::size_t offset = 0; offset < input.size(); offset += chunk_size) {
    engine.feed(input.subspan(offset, std::min(chunk_size, input.size() - offset)));
    const bool rotated = engine.rotate();
    require(!rotated || role == Role::Initiator);
    tracker.check(engine);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t control = data[0];
  const std::size_t chunk_size = (control & 0x3f) + 1;
  const bool exporter_works = (control & 0x40) == 0;
  const std::span<const std::uint8_t> input(data + 1, size - 1);
  drive(Role::Responder, exporter_works, chunk_size, input);
  drive(Role::Initiator, exporter_works, chunk_size, input);
  return 0;
}
