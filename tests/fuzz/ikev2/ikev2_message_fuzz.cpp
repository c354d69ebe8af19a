// libFuzzer target for the IKEv2 codec: the input is decoded as a
// datagram; whatever decodes is encoded again and must decode to a message
// that encodes to the very same bytes (a stable round trip). The input is
// also decoded as a bare payload chain (the inner payloads of SK), its
// first byte naming the first payload. Refusals are fine; crashes,
// out-of-bounds reads and unstable round trips are not.
#include <cstdint>
#include <cstdlib>
#include <span>
#include <variant>

#include "agent/engines/ikev2/message.h"

namespace {

using namespace tapsec::ikev2;

void check_message_round_trip(std::span<const std::uint8_t> input) {
  auto decoded = decode_message(input);
  if (auto* error = std::get_if<DecodeError>(&decoded)) {
    if (error->message.empty()) abort();
    return;
  }
  const Message& message = std::get<Message>(decoded);
  if (message.header.length != input.size()) abort();
  (void)describe(message);
  // Identities and selectors from the wire are printed in logs.
  for (const Payload& payload : message.payloads) {
    if (const auto* id = std::get_if<IdentificationPayload>(&payload.body))
      (void)Identification{id->id_type, id->data}.to_string();
    if (const auto* ts = std::get_if<TrafficSelectorPayload>(&payload.body))
      for (const TrafficSelector& selector : ts->selectors) {
        (void)selector.to_string();
        (void)selector.prefix_length();
      }
  }

  const Bytes encoded = encode_message(message.header, message.payloads);
  auto again = decode_message(encoded);
  if (!std::holds_alternative<Message>(again)) abort();
  const Message& second = std::get<Message>(again);
  if (second.payloads.size() != message.payloads.size()) abort();
  if (encode_message(second.header, second.payloads) != encoded) abort();
}

void check_chain_round_trip(std::span<const std::uint8_t> input) {
  if (input.empty()) return;
  const auto first = static_cast<PayloadType>(input[0]);
  auto decoded = decode_payloads(first, input.subspan(1));
  if (!std::holds_alternative<std::vector<Payload>>(decoded)) return;
  const auto& payloads = std::get<std::vector<Payload>>(decoded);
  Bytes encoded;
  const PayloadType encoded_first = encode_payloads(payloads, encoded);
  auto again = decode_payloads(encoded_first, encoded);
  if (!std::holds_alternative<std::vector<Payload>>(again)) abort();
  Bytes encoded_again;
  if (encode_payloads(std::get<std::vector<Payload>>(again), encoded_again) != encoded_first) abort();
  if (encoded_again != encoded) abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> input(data, size);
  (void)decode_header(input);
  check_message_round_trip(input);
  check_chain_round_trip(input);
  // The same bytes as a header followed by a chain the header's next-payload
  // field starts, without the header's length checks.
  if (size > kHeaderSize) {
    auto chain = decode_payloads(static_cast<PayloadType>(data[16]), input.subspan(kHeaderSize));
    if (auto* error = std::get_if<DecodeError>(&chain); error && error->message.empty()) abort();
  }
  return 0;
}
