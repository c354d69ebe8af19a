// Replaces OpenSSL's random generator (RAND_bytes, and so every nonce, SPI,
// IV and key pair the IKE engine makes) with fixed streams, so an engine fed
// the same datagrams at the same times answers with the same bytes. The seed
// recorder runs two engines, each on its own stream; the fuzz target runs
// one of them again on its stream, and the recorded datagrams of the other
// still decrypt. For tests only: nothing here is random.
#pragma once

namespace tapsec::ikev2::fuzz {

class DeterministicRandom {
 public:
  static constexpr int kStreams = 2;
  // Installs the replacement (once per process) and starts every stream from
  // its beginning, stream `current` in use.
  static void restart(int current);
  // Later draws come from `stream` (0 or 1).
  static void use(int stream);
};

}  // namespace tapsec::ikev2::fuzz
