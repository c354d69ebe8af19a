// ktls-selftest: exercises this kernel's kTLS with tapsec's installer on a
// loopback TCP pair. Both ends get the same key material (no handshake), so
// every byte that arrives intact went through kernel encryption and
// decryption. Checks, per cipher and version:
//   wire    the kernel's records decrypt in userspace (OpenSSL) with the IV,
//           salt and sequence layout tapsec installs
//   bulk    N MiB each way arrive intact; /proc/net/tls_stat counters move
//   alert   read() of a non-data record fails with EIO; recv_record() reads it
//   rekey   a second TLS_TX / TLS_RX after a KeyUpdate: accepted or refused
// Exit: 0 all passed, 1 a check failed, 77 kernel has no kTLS.
#include <openssl/evp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/kernel/capability.h"
#include "agent/kernel/ktls.h"
#include "agent/kernel/loopback.h"
#include "agent/kernel/tls_stat.h"

namespace {

using namespace tapsec::kernel;
using tapsec::tls::RecordCipher;
using tapsec::tls::TrafficKeys;

int failures = 0;

void report(const std::string& combo, const std::string& check, bool passed,
            const std::string& detail = {}) {
  std::printf("%s %s %s%s%s\n", passed ? "PASS" : "FAIL", combo.c_str(), check.c_str(),
              detail.empty() ? "" : ": ", detail.c_str());
  std::fflush(stdout);
  if (!passed) ++failures;
}

void info(const std::string& combo, const std::string& text) {
  std::printf("INFO %s %s\n", combo.c_str(), text.c_str());
  std::fflush(stdout);
}

const char* cipher_option_name(RecordCipher cipher) {
  switch (cipher) {
    case RecordCipher::AesGcm128: return "aes-gcm-128";
    case RecordCipher::AesGcm256: return "aes-gcm-256";
    case RecordCipher::Chacha20Poly1305: return "chacha20-poly1305";
  }
  return "?";
}

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Deterministic keys: epoch and direction pick distinct material.
TrafficKeys make_keys(std::uint16_t version, RecordCipher cipher, int direction, int epoch,
                      std::uint64_t seq) {
  TrafficKeys keys;
  keys.version = version;
  keys.cipher = cipher;
  keys.seq = seq;
  keys.key.resize(cipher == RecordCipher::AesGcm128 ? 16 : 32);
  std::uint64_t state = splitmix64(static_cast<std::uint64_t>(direction * 1000 + epoch));
  for (auto& byte : keys.key) byte = static_cast<std::uint8_t>(state = splitmix64(state));
  for (auto& byte : keys.iv) byte = static_cast<std::uint8_t>(state = splitmix64(state));
  if (version == tls12_version && cipher != RecordCipher::Chacha20Poly1305) {
    // TLS 1.2 AES-GCM: bytes 4..11 are the next explicit nonce = seq.
    for (int i = 0; i < 8; ++i) keys.iv[4 + i] = static_cast<std::uint8_t>(seq >> (56 - 8 * i));
  }
  return keys;
}

// Stream content: byte i of stream s, cheap to regenerate on the reader.
void fill_pattern(std::uint64_t stream, std::uint64_t offset, std::uint8_t* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t position = offset + i;
    out[i] = static_cast<std::uint8_t>(splitmix64(stream ^ (position >> 3)) >> (8 * (position & 7)));
  }
}

bool write_all(int fd, const std::uint8_t* data, std::size_t length, std::string& error) {
  while (length > 0) {
    const ssize_t n = ::send(fd, data, length, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      error = "send: " + describe_errno(errno);
      return false;
    }
    data += n;
    length -= static_cast<std::size_t>(n);
  }
  return true;
}

bool read_exact(int fd, std::uint8_t* data, std::size_t length, std::string& error) {
  while (length > 0) {
    const ssize_t n = ::recv(fd, data, length, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error = n == 0 ? "unexpected end of stream" : "recv: " + describe_errno(errno);
      return false;
    }
    data += n;
    length -= static_cast<std::size_t>(n);
  }
  return true;
}

bool wait_readable(int fd, int timeout_ms) {
  pollfd readable{fd, POLLIN, 0};
  return ::poll(&readable, 1, timeout_ms) == 1;
}

const EVP_CIPHER* evp_cipher(RecordCipher cipher) {
  switch (cipher) {
    case RecordCipher::AesGcm128: return EVP_aes_128_gcm();
    case RecordCipher::AesGcm256: return EVP_aes_256_gcm();
    case RecordCipher::Chacha20Poly1305: return EVP_chacha20_poly1305();
  }
  return nullptr;
}

// Decrypts one record as a TLS peer would, from the key material alone.
std::optional<std::string> open_record(const TrafficKeys& keys, std::uint64_t seq,
                                       const std::vector<std::uint8_t>& record,
                                       std::string& plaintext) {
  if (record.size() < 5 + 16) return "record too short";
  const std::size_t body_length = (record[3] << 8) | record[4];
  if (body_length + 5 != record.size()) return "record length field mismatch";
  const bool explicit_nonce = keys.version == tls12_version && keys.cipher != RecordCipher::Chacha20Poly1305;

  std::array<std::uint8_t, 12> nonce = keys.iv;
  const std::uint8_t* ciphertext = record.data() + 5;
  std::size_t ciphertext_length = body_length - 16;
  if (explicit_nonce) {
    if (body_length < 8 + 16) return "record too short for an explicit nonce";
    std::memcpy(nonce.data() + 4, record.data() + 5, 8);
    std::array<std::uint8_t, 8> expected;
    for (int i = 0; i < 8; ++i) expected[i] = static_cast<std::uint8_t>(seq >> (56 - 8 * i));
    if (std::memcmp(expected.data(), record.data() + 5, 8) != 0)
      return "explicit nonce is not the record sequence number";
    ciphertext += 8;
    ciphertext_length -= 8;
  } else {
    for (int i = 0; i < 8; ++i) nonce[4 + i] ^= static_cast<std::uint8_t>(seq >> (56 - 8 * i));
  }

  std::vector<std::uint8_t> aad;
  if (keys.version == tls13_version) {
    aad.assign(record.begin(), record.begin() + 5);
  } else {
    for (int i = 0; i < 8; ++i) aad.push_back(static_cast<std::uint8_t>(seq >> (56 - 8 * i)));
    aad.insert(aad.end(), record.begin(), record.begin() + 3);
    aad.push_back(static_cast<std::uint8_t>(ciphertext_length >> 8));
    aad.push_back(static_cast<std::uint8_t>(ciphertext_length));
  }

  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                     EVP_CIPHER_CTX_free);
  std::vector<std::uint8_t> out(ciphertext_length + 16);
  int length = 0, final_length = 0;
  std::vector<std::uint8_t> tag(ciphertext + ciphertext_length, ciphertext + ciphertext_length + 16);
  if (!EVP_DecryptInit_ex(ctx.get(), evp_cipher(keys.cipher), nullptr, nullptr, nullptr) ||
      !EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr) ||
      !EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, keys.key.data(), nonce.data()) ||
      !EVP_DecryptUpdate(ctx.get(), nullptr, &length, aad.data(), static_cast<int>(aad.size())) ||
      !EVP_DecryptUpdate(ctx.get(), out.data(), &length, ciphertext, static_cast<int>(ciphertext_length)) ||
      !EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, 16, tag.data()) ||
      EVP_DecryptFinal_ex(ctx.get(), out.data() + length, &final_length) <= 0) {
    return "authentication failed: the kernel used a different nonce, key or AAD";
  }
  out.resize(static_cast<std::size_t>(length + final_length));
  if (keys.version == tls13_version) {
    while (!out.empty() && out.back() == 0) out.pop_back();  // padding
    if (out.empty() || out.back() != content_type::application_data)
      return "inner content type is not application_data";
    out.pop_back();
  }
  plaintext.assign(out.begin(), out.end());
  return std::nullopt;
}

void check_wire_format(const std::string& combo, std::uint16_t version, RecordCipher cipher) {
  auto pair = make_loopback_tcp_pair();
  if (!pair) return report(combo, "wire", false, pair.error());
  const std::uint64_t first_seq = 5;
  TrafficKeys keys = make_keys(version, cipher, 9, 0, first_seq);
  if (auto e = install_ulp(pair->client.get())) return report(combo, "wire", false, *e);
  if (auto e = install_tx(pair->client.get(), keys)) return report(combo, "wire", false, *e);

  const std::string messages[2] = {"first record", "second record"};
  std::string error;
  for (const auto& m : messages) {
    if (!write_all(pair->client.get(), reinterpret_cast<const std::uint8_t*>(m.data()), m.size(), error))
      return report(combo, "wire", false, error);
  }
  for (int i = 0; i < 2; ++i) {
    std::vector<std::uint8_t> record(5);
    if (!read_exact(pair->server.get(), record.data(), 5, error)) return report(combo, "wire", false, error);
    const std::size_t body = (record[3] << 8) | record[4];
    record.resize(5 + body);
    if (!read_exact(pair->server.get(), record.data() + 5, body, error))
      return report(combo, "wire", false, error);
    if (record[0] != content_type::application_data || record[1] != 3 || record[2] != 3)
      return report(combo, "wire", false, "unexpected record header");
    std::string plaintext;
    if (auto e = open_record(keys, first_seq + i, record, plaintext))
      return report(combo, "wire", false, "record " + std::to_string(i) + ": " + *e);
    if (plaintext != messages[i]) return report(combo, "wire", false, "plaintext differs");
  }
  report(combo, "wire", true, "2 kernel records opened in userspace from seq " + std::to_string(first_seq));
}

bool set_up_pair(const std::string& combo, TcpPair& pair, std::uint16_t version, RecordCipher cipher) {
  for (int fd : {pair.client.get(), pair.server.get()}) {
    if (auto e = install_ulp(fd)) {
      report(combo, "setup", false, *e);
      return false;
    }
  }
  // Direction 1: client -> server; direction 2: server -> client.
  std::optional<std::string> e;
  if ((e = install_tx(pair.client.get(), make_keys(version, cipher, 1, 0, 0))) ||
      (e = install_rx(pair.server.get(), make_keys(version, cipher, 1, 0, 0))) ||
      (e = install_tx(pair.server.get(), make_keys(version, cipher, 2, 0, 0))) ||
      (e = install_rx(pair.client.get(), make_keys(version, cipher, 2, 0, 0)))) {
    report(combo, "setup", false, *e);
    return false;
  }
  auto ulp = ulp_name(pair.client.get());
  report(combo, "setup", ulp && ulp.value() == "tls", ulp ? "ulp=" + ulp.value() : ulp.error());
  return true;
}

void check_bulk(const std::string& combo, TcpPair& pair, std::size_t megabytes) {
  const std::size_t total = megabytes << 20;
  constexpr std::size_t chunk = 1 << 16;
  std::atomic<int> bad{0};
  std::string errors[4];

  auto writer = [&](int fd, std::uint64_t stream, std::string& error) {
    std::vector<std::uint8_t> buffer(chunk);
    for (std::size_t offset = 0; offset < total; offset += chunk) {
      const std::size_t n = std::min(chunk, total - offset);
      fill_pattern(stream, offset, buffer.data(), n);
      if (!write_all(fd, buffer.data(), n, error)) return ++bad, void();
    }
  };
  auto reader = [&](int fd, std::uint64_t stream, std::string& error) {
    std::vector<std::uint8_t> buffer(chunk), expected(chunk);
    std::size_t offset = 0;
    while (offset < total) {
      const ssize_t n = ::recv(fd, buffer.data(), std::min(chunk, total - offset), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        error = n == 0 ? "stream ended early" : "recv: " + describe_errno(errno);
        return ++bad, void();
      }
      fill_pattern(stream, offset, expected.data(), static_cast<std::size_t>(n));
      if (std::memcmp(buffer.data(), expected.data(), static_cast<std::size_t>(n)) != 0) {
        error = "data differs near offset " + std::to_string(offset);
        return ++bad, void();
      }
      offset += static_cast<std::size_t>(n);
    }
  };

  const auto started = std::chrono::steady_clock::now();
  std::thread threads[] = {
      std::thread(writer, pair.client.get(), 1, std::ref(errors[0])),
      std::thread(reader, pair.server.get(), 1, std::ref(errors[1])),
      std::thread(writer, pair.server.get(), 2, std::ref(errors[2])),
      std::thread(reader, pair.client.get(), 2, std::ref(errors[3])),
  };
  for (auto& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::string detail;
  for (const auto& e : errors) {
    if (!e.empty()) detail += (detail.empty() ? "" : "; ") + e;
  }
  if (bad == 0) {
    char text[128];
    std::snprintf(text, sizeof(text), "%zu MiB each way intact in %.1f s", megabytes, seconds);
    detail = text;
  }
  report(combo, "bulk", bad == 0, detail);
}

void check_counters(const std::string& combo, const TlsStats& before) {
  auto after = read_tls_stat();
  if (!after) return report(combo, "tls_stat", false, after.error());
  std::string detail;
  bool passed = true;
  for (const char* name : {"TlsTxSw", "TlsRxSw"}) {
    const std::uint64_t delta = after->get(name) - before.get(name);
    detail += std::string(detail.empty() ? "" : " ") + name + "+" + std::to_string(delta);
    if (delta < 2) passed = false;
  }
  detail += " TlsCurrTxSw=" + std::to_string(after->get("TlsCurrTxSw")) +
            " TlsCurrRxSw=" + std::to_string(after->get("TlsCurrRxSw")) +
            " TlsDecryptError+" + std::to_string(after->get("TlsDecryptError") - before.get("TlsDecryptError"));
  if (after->get("TlsCurrTxSw") < 2 || after->get("TlsCurrRxSw") < 2) passed = false;
  if (after->get("TlsDecryptError") != before.get("TlsDecryptError")) passed = false;
  report(combo, "tls_stat", passed, detail);
}

void check_alert(const std::string& combo, TcpPair& pair) {
  auto sent = send_record(pair.client.get(), content_type::alert, close_notify_alert);
  if (!sent) return report(combo, "alert", false, sent.error());
  if (!wait_readable(pair.server.get(), 5000)) return report(combo, "alert", false, "no record arrived");

  std::uint8_t buffer[64];
  const ssize_t plain = ::recv(pair.server.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
  const int plain_errno = plain < 0 ? errno : 0;
  report(combo, "alert-plain-read-eio", plain < 0 && plain_errno == EIO,
         plain < 0 ? describe_errno(plain_errno) : "read returned " + std::to_string(plain) + " bytes");

  auto record = recv_record(pair.server.get(), buffer, MSG_DONTWAIT);
  if (!record) return report(combo, "alert", false, record.error());
  const bool passed = record->content_type == content_type::alert && record->length == 2 &&
                      buffer[0] == 1 && buffer[1] == 0;
  report(combo, "alert", passed,
         "type " + std::to_string(record->content_type) + ", " + std::to_string(record->length) + " bytes");
}

// Returns {tx accepted, rx accepted}; prints the errno of a refusal.
std::pair<bool, bool> check_rekey(const std::string& combo, TcpPair& pair, std::uint16_t version,
                                  RecordCipher cipher) {
  const int sender = pair.client.get(), receiver = pair.server.get();
  const auto key_update = key_update_message(false);
  auto sent = send_record(sender, content_type::handshake, key_update);
  if (!sent) {
    report(combo, "rekey", false, "sending KeyUpdate: " + sent.error());
    return {false, false};
  }
  int tx_errno = 0;
  auto tx_refused = install_tx(sender, make_keys(version, cipher, 1, 1, 0), &tx_errno);
  info(combo, std::string("second TLS_TX: ") + (tx_refused ? "refused, " + describe_errno(tx_errno) : "accepted"));

  const std::string after_update = "data under the updated key";
  std::string error;
  if (!tx_refused &&
      !write_all(sender, reinterpret_cast<const std::uint8_t*>(after_update.data()), after_update.size(), error)) {
    report(combo, "rekey", false, error);
  }

  std::uint8_t buffer[256];
  if (!wait_readable(receiver, 5000)) {
    report(combo, "rekey", false, "KeyUpdate record did not arrive");
    return {!tx_refused, false};
  }
  auto record = recv_record(receiver, buffer, MSG_DONTWAIT);
  const bool got_update = record && record->content_type == content_type::handshake &&
                          record->length == key_update.size() &&
                          std::memcmp(buffer, key_update.data(), key_update.size()) == 0;
  report(combo, "rekey-keyupdate-received", got_update,
         record ? "type " + std::to_string(record->content_type) : record.error());

  if (!tx_refused) {
    // Newer kernels hold RX after a KeyUpdate until the next key arrives.
    wait_readable(receiver, 2000);
    const ssize_t early = ::recv(receiver, buffer, sizeof(buffer), MSG_DONTWAIT);
    info(combo, "read before the RX re-key: " +
                    (early < 0 ? describe_errno(errno) : std::to_string(early) + " bytes"));
  }
  int rx_errno = 0;
  auto rx_refused = install_rx(receiver, make_keys(version, cipher, 1, 1, 0), &rx_errno);
  info(combo, std::string("second TLS_RX after KeyUpdate: ") +
                  (rx_refused ? "refused, " + describe_errno(rx_errno) : "accepted"));
  if (!tx_refused && !rx_refused) {
    std::string received(after_update.size(), '\0');
    const bool arrived = read_exact(receiver, reinterpret_cast<std::uint8_t*>(received.data()),
                                    received.size(), error);
    report(combo, "rekey-data", arrived && received == after_update,
           arrived ? "data under the new keys " + std::string(received == after_update ? "intact" : "differs") : error);
  }
  return {!tx_refused, !rx_refused};
}

struct Options {
  std::vector<RecordCipher> ciphers{RecordCipher::AesGcm128, RecordCipher::AesGcm256,
                                    RecordCipher::Chacha20Poly1305};
  std::vector<std::uint16_t> versions{tls12_version, tls13_version};
  std::size_t megabytes = 64;
  enum class Expect { Auto, Yes, No } expect_rekey = Expect::Auto;
};

[[noreturn]] void usage(const char* problem) {
  std::fprintf(stderr,
               "ktls-selftest: %s\nusage: ktls-selftest [--cipher aes-gcm-128|aes-gcm-256|"
               "chacha20-poly1305|all] [--version 1.2|1.3|all] [--megabytes N] "
               "[--expect-rekey yes|no|auto]\n",
               problem);
  std::exit(2);
}

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(("missing value for " + flag).c_str());
    const std::string value = argv[++i];
    if (flag == "--cipher") {
      if (value == "all") continue;
      bool found = false;
      for (RecordCipher c : {RecordCipher::AesGcm128, RecordCipher::AesGcm256, RecordCipher::Chacha20Poly1305}) {
        if (value == cipher_option_name(c)) options.ciphers = {c}, found = true;
      }
      if (!found) usage(("unknown cipher " + value).c_str());
    } else if (flag == "--version") {
      if (value == "1.2") options.versions = {tls12_version};
      else if (value == "1.3") options.versions = {tls13_version};
      else if (value != "all") usage(("unknown version " + value).c_str());
    } else if (flag == "--megabytes") {
      options.megabytes = std::strtoul(value.c_str(), nullptr, 10);
      if (options.megabytes == 0) usage("--megabytes needs a positive number");
    } else if (flag == "--expect-rekey") {
      if (value == "yes") options.expect_rekey = Options::Expect::Yes;
      else if (value == "no") options.expect_rekey = Options::Expect::No;
      else if (value != "auto") usage("--expect-rekey takes yes, no or auto");
    } else {
      usage(("unknown option " + flag).c_str());
    }
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse_options(argc, argv);

  const KernelCapabilities caps = probe_kernel_capabilities();
  std::printf("KERNEL %s\n", caps.kernel_release.c_str());
  std::string features;
  for (const auto& name : caps.feature_names()) features += " " + name;
  std::printf("FEATURES%s\n", features.c_str());
  std::printf("PROBE ktls=%d tx_rekey=%d (errno %d) rx_rekey=%d (errno %d) ciphers=%zu\n", caps.ktls,
              caps.ktls_tx_rekey, caps.ktls_tx_rekey_errno, caps.ktls_rx_rekey,
              caps.ktls_rx_rekey_errno, caps.ktls_ciphers.size());
  for (const auto& note : caps.notes) std::printf("NOTE %s\n", note.c_str());

  {
    auto probe = make_loopback_tcp_pair();
    if (!probe) {
      std::fprintf(stderr, "SKIP: %s\n", probe.error().c_str());
      return 77;
    }
    if (auto missing = install_ulp(probe->client.get())) {
      std::fprintf(stderr, "SKIP: %s\n", missing->c_str());
      return 77;
    }
  }

  for (std::uint16_t version : options.versions) {
    for (RecordCipher cipher : options.ciphers) {
      const std::string combo = std::string(version == tls13_version ? "tls1.3/" : "tls1.2/") +
                                cipher_option_name(cipher);
      check_wire_format(combo, version, cipher);

      auto pair = make_loopback_tcp_pair();
      if (!pair) {
        report(combo, "setup", false, pair.error());
        continue;
      }
      auto before = read_tls_stat();
      if (!set_up_pair(combo, pair.value(), version, cipher)) continue;
      if (!before) before = read_tls_stat();  // the module may have just loaded
      check_bulk(combo, pair.value(), options.megabytes);
      if (before) check_counters(combo, before.value());
      else report(combo, "tls_stat", false, before.error());
      check_alert(combo, pair.value());

      auto [tx_rekey, rx_rekey] = check_rekey(combo, pair.value(), version, cipher);
      if (version == tls13_version) {
        report(combo, "probe-agrees", tx_rekey == caps.ktls_tx_rekey && rx_rekey == caps.ktls_rx_rekey,
               "probe said tx=" + std::to_string(caps.ktls_tx_rekey) + " rx=" + std::to_string(caps.ktls_rx_rekey));
        if (options.expect_rekey != Options::Expect::Auto) {
          const bool expected = options.expect_rekey == Options::Expect::Yes;
          report(combo, "rekey-expected", tx_rekey == expected && rx_rekey == expected,
                 std::string("expected ") + (expected ? "accepted" : "refused"));
        }
      } else if (tx_rekey || rx_rekey) {
        info(combo, "kernel accepted a TLS 1.2 re-key");
      }
    }
  }

  auto stats = read_tls_stat();
  if (stats) {
    std::printf("TLS_STAT");
    for (const auto& [name, value] : stats->counters) std::printf(" %s=%llu", name.c_str(), static_cast<unsigned long long>(value));
    std::printf("\n");
  }
  std::printf("%s: %d failure(s)\n", failures == 0 ? "OK" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}
