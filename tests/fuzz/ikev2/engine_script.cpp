#include "tests/fuzz/ikev2/engine_script.h"

#include <algorithm>
#include <stdexcept>

#include "tests/unit/ikev2/engine/engine_configs.h"

namespace tapsec::ikev2::fuzz {
namespace {

// Far beyond any lifetime, and far from overflowing the clock.
constexpr std::chrono::nanoseconds kLongestStep = std::chrono::hours(48);

std::size_t index_of(const std::vector<Endpoint>& table, const Endpoint& endpoint) {
  auto found = std::find(table.begin(), table.end(), endpoint);
  if (found == table.end()) throw std::invalid_argument("endpoint " + endpoint.to_string() + " is in no path table");
  return static_cast<std::size_t>(found - table.begin());
}

class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> bytes) : bytes_(bytes) {}
  bool empty() const { return at_ >= bytes_.size(); }
  std::uint8_t byte() { return empty() ? 0 : bytes_[at_++]; }
  std::uint64_t big_endian(int width) {
    std::uint64_t value = 0;
    for (int i = 0; i < width; ++i) value = (value << 8) | byte();
    return value;
  }
  std::span<const std::uint8_t> take(std::size_t length) {
    const std::size_t available = std::min(length, bytes_.size() - std::min(at_, bytes_.size()));
    auto out = bytes_.subspan(std::min(at_, bytes_.size()), available);
    at_ += available;
    return out;
  }

 private:
  std::span<const std::uint8_t> bytes_;
  std::size_t at_ = 0;
};

}  // namespace

const std::vector<Endpoint>& target_addresses() {
  static const std::vector<Endpoint> table = {
      {test::ip("192.0.2.2"), 500}, {test::ip("192.0.2.2"), 4500},
      {test::ip("192.0.2.12"), 500}, {test::ip("192.0.2.12"), 4500}};
  return table;
}

const std::vector<Endpoint>& peer_addresses() {
  static const std::vector<Endpoint> table = {
      {test::ip("192.0.2.1"), 500},       {test::ip("192.0.2.1"), 4500},      {test::ip("192.0.2.11"), 500},
      {test::ip("192.0.2.11"), 4500},     {test::ip("198.51.100.7"), 40000}, {test::ip("198.51.100.7"), 40001},
      {test::ip("198.51.100.7"), 40002}, {test::ip("198.51.100.7"), 40003}};
  return table;
}

std::shared_ptr<IkeConfig> target_config() { return test::psk_ends().b; }

std::unique_ptr<IkeEngine> make_target(std::uint8_t options) {
  auto selector = std::make_shared<test::FixedSelector>();
  selector->config = target_config();
  IkeEngine::Options engine_options;
  engine_options.selector = selector;
  auto next_spi = std::make_shared<std::uint32_t>(0xb0000001);
  engine_options.allocate_spi = [next_spi](const Endpoint&, const Endpoint&) -> std::optional<std::uint32_t> {
    return (*next_spi)++;
  };
  if (options & kOptionCookies) engine_options.cookie_threshold = 0;
  return std::make_unique<IkeEngine>(std::move(engine_options));
}

void execute(IkeEngine& target, Command command, std::uint8_t argument, TimePoint now) {
  const auto& locals = target_addresses();
  const auto& peers = peer_addresses();
  if (command == Command::Initiate) {
    target.initiate(target_config(), locals[(argument >> 4) % locals.size()], peers[(argument & 15) % peers.size()],
                    now);
    return;
  }
  const std::vector<IkeSaState> sas = target.sas();
  if (sas.empty()) return;
  const IkeSaState& sa = sas[(argument >> 4) % sas.size()];
  const ChildSaId child = sa.children.empty() ? 0 : sa.children[(argument & 15) % sa.children.size()].id;
  switch (command) {
    case Command::RekeyChild: target.rekey_child(sa.id, child, now); break;
    case Command::DeleteChild: target.delete_child(sa.id, child, now); break;
    case Command::RekeyIke: target.rekey_ike(sa.id, now); break;
    case Command::Close: target.close(sa.id, now); break;
    case Command::CheckLiveness: target.check_liveness(sa.id, now); break;
    case Command::UpdateLocalAddress:
      target.update_local_address(sa.id, locals[(argument & 15) % locals.size()], now);
      break;
    case Command::Initiate: break;
  }
}

void Outcome::count(const Event& event) {
  std::visit(
      [this](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, SendDatagram>) ++sent;
        if constexpr (std::is_same_v<T, IkeSaUp>) ++ike_up;
        if constexpr (std::is_same_v<T, IkeSaDown>) ++ike_down;
        if constexpr (std::is_same_v<T, ChildSaInstall>) ++installs;
        if constexpr (std::is_same_v<T, ChildSaRemove>) ++removes;
        if constexpr (std::is_same_v<T, PathChange>) ++path_changes;
        if constexpr (std::is_same_v<T, Dropped>) ++dropped;
      },
      event);
}

Outcome run_script(std::span<const std::uint8_t> script) {
  Reader in(script);
  std::unique_ptr<IkeEngine> target = make_target(in.byte());
  TimePoint now = kScriptStart;
  Outcome outcome;
  const auto& locals = target_addresses();
  const auto& peers = peer_addresses();
  while (!in.empty()) {
    switch (static_cast<RecordKind>(in.byte() % kRecordKinds)) {
      case RecordKind::Datagram: {
        const std::uint8_t path = in.byte();
        const auto length = static_cast<std::size_t>(in.big_endian(2));
        target->receive(locals[(path >> 4) % locals.size()], peers[(path & 15) % peers.size()], in.take(length), now);
        break;
      }
      case RecordKind::Clock:
        now += std::chrono::nanoseconds(
            std::min(in.big_endian(8), static_cast<std::uint64_t>(kLongestStep.count())));
        break;
      case RecordKind::Timer: target->on_timer(now); break;
      case RecordKind::Command: {
        const auto command = static_cast<Command>(in.byte() % kCommands);
        execute(*target, command, in.byte(), now);
        break;
      }
    }
    for (const Event& event : target->take_events()) outcome.count(event);
  }
  return outcome;
}

void ScriptWriter::advance(TimePoint now) {
  if (now == clock_) return;
  if (now < clock_ || now - clock_ > kLongestStep) throw std::invalid_argument("the clock went back or leapt");
  const auto step = static_cast<std::uint64_t>((now - clock_).count());
  bytes_.push_back(static_cast<std::uint8_t>(RecordKind::Clock));
  for (int shift = 56; shift >= 0; shift -= 8) bytes_.push_back(static_cast<std::uint8_t>(step >> shift));
  clock_ = now;
}

void ScriptWriter::datagram(const Endpoint& local, const Endpoint& remote, std::span<const std::uint8_t> data,
                            TimePoint now) {
  advance(now);
  if (data.size() > 0xffff) throw std::invalid_argument("datagram too long for a script");
  bytes_.push_back(static_cast<std::uint8_t>(RecordKind::Datagram));
  bytes_.push_back(static_cast<std::uint8_t>(index_of(target_addresses(), local) << 4 |
                                             index_of(peer_addresses(), remote)));
  bytes_.push_back(static_cast<std::uint8_t>(data.size() >> 8));
  bytes_.push_back(static_cast<std::uint8_t>(data.size()));
  bytes_.insert(bytes_.end(), data.begin(), data.end());
}

void ScriptWriter::timer(TimePoint now) {
  advance(now);
  bytes_.push_back(static_cast<std::uint8_t>(RecordKind::Timer));
}

void ScriptWriter::command(Command command, std::uint8_t argument, TimePoint now) {
  advance(now);
  bytes_.push_back(static_cast<std::uint8_t>(RecordKind::Command));
  bytes_.push_back(static_cast<std::uint8_t>(command));
  bytes_.push_back(argument);
}

}  // namespace tapsec::ikev2::fuzz
