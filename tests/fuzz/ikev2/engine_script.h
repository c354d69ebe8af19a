// What the IKE engine fuzz target feeds one engine, "the target" (b.example,
// 10.2.0.0/16, pre-shared key: the engine tests' config), as a byte string:
//
//   script  = options record*
//   options = one byte; bit 0: the target asks every IKE_SA_INIT for a cookie
//   record  = 0x00 path length(2, big endian) datagram    a datagram arrives
//           | 0x01 nanoseconds(8, big endian)              the clock moves on
//           | 0x02                                         timers run
//           | 0x03 command argument                        the agent commands
//
// (record kinds and commands are taken modulo their count, so every byte
// string is a script). A path byte names the target's address (high nibble)
// and the peer's (low nibble) from small tables that cover NAT and MOBIKE.
// With the random streams of DeterministicRandom restarted, a script the
// seed recorder wrote replays exactly: the target answers with the same
// bytes, so the peer's recorded datagrams still decrypt.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "agent/engines/ikev2/ike_engine.h"

namespace tapsec::ikev2::fuzz {

inline constexpr TimePoint kScriptStart = TimePoint{} + std::chrono::hours(1000);
inline constexpr std::uint8_t kOptionCookies = 0x01;

enum class RecordKind : std::uint8_t { Datagram, Clock, Timer, Command };
inline constexpr std::uint8_t kRecordKinds = 4;
// The argument names the SA (high nibble) and child (low nibble) by index in
// sas(); for Initiate a path, for UpdateLocalAddress the target's new address.
enum class Command : std::uint8_t { Initiate, RekeyChild, DeleteChild, RekeyIke, Close, CheckLiveness, UpdateLocalAddress };
inline constexpr std::uint8_t kCommands = 7;

// The tables path bytes index (at most 16 entries each).
const std::vector<Endpoint>& target_addresses();
const std::vector<Endpoint>& peer_addresses();

std::shared_ptr<IkeConfig> target_config();
// The target as every script starts it (deterministic SPIs; the caller
// restarts the random streams first).
std::unique_ptr<IkeEngine> make_target(std::uint8_t options);
void execute(IkeEngine& target, Command command, std::uint8_t argument, TimePoint now);

// What the target did, to compare a replay with the run that recorded it.
struct Outcome {
  std::size_t sent = 0, ike_up = 0, ike_down = 0, installs = 0, removes = 0, path_changes = 0, dropped = 0;
  void count(const Event& event);
  bool operator==(const Outcome&) const = default;
};

Outcome run_script(std::span<const std::uint8_t> script);

// Writes what the target is given, as a script.
class ScriptWriter {
 public:
  explicit ScriptWriter(std::uint8_t options) : bytes_{options} {}
  void datagram(const Endpoint& local, const Endpoint& remote, std::span<const std::uint8_t> data, TimePoint now);
  void timer(TimePoint now);
  void command(Command command, std::uint8_t argument, TimePoint now);
  const std::vector<std::uint8_t>& bytes() const { return bytes_; }

 private:
  void advance(TimePoint now);
  std::vector<std::uint8_t> bytes_;
  TimePoint clock_ = kScriptStart;
};

}  // namespace tapsec::ikev2::fuzz
