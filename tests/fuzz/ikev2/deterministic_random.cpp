// RAND_set_rand_method is deprecated in OpenSSL 3.0 but is still the one
// switch that every draw (RAND_bytes, RAND_priv_bytes, key generation in the
// default provider) obeys.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "tests/fuzz/ikev2/deterministic_random.h"

#include <openssl/rand.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace tapsec::ikev2::fuzz {
namespace {

// splitmix64: tiny, and every stream state gives a usable sequence.
struct Stream {
  std::uint64_t state = 0;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

std::array<Stream, DeterministicRandom::kStreams> streams;
int in_use = 0;

int fill(unsigned char* out, int length) {
  for (int at = 0; at < length; at += 8) {
    const std::uint64_t word = streams[in_use].next();
    std::memcpy(out + at, &word, static_cast<std::size_t>(length - at < 8 ? length - at : 8));
  }
  return 1;
}
int seed(const void*, int) { return 1; }
int add(const void*, int, double) { return 1; }
int status() { return 1; }

const RAND_METHOD kMethod = {seed, fill, nullptr, add, fill, status};

}  // namespace

void DeterministicRandom::restart(int current) {
  static const bool installed = RAND_set_rand_method(&kMethod) == 1;
  if (!installed) abort();
  for (int i = 0; i < kStreams; ++i) streams[static_cast<std::size_t>(i)].state = 0x7461707365630000ull + static_cast<std::uint64_t>(i);
  use(current);
}

void DeterministicRandom::use(int stream) {
  if (stream < 0 || stream >= kStreams) abort();
  in_use = stream;
}

}  // namespace tapsec::ikev2::fuzz
