// A small streaming JSON writer: compact, one document per line, keys in the
// order written (so output is stable), strings escaped per RFC 8259.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tapsec::ctl {

// The JSON string literal (quotes included) for text. Control characters
// become escapes; bytes that are not valid UTF-8 become U+FFFD, so the
// output is always valid JSON.
std::string json_quote(std::string_view text);

class JsonWriter {
 public:
  void begin_object();
  void end_object();
  void begin_array();
  void end_array();
  // Inside an object: the next value's key.
  void key(std::string_view name);

  void value(std::string_view text);
  void value(const char* text) { value(std::string_view(text)); }
  void value(const std::string& text) { value(std::string_view(text)); }
  void value(bool flag);
  void value(std::int64_t number);
  void value(std::uint64_t number);
  void value(int number) { value(static_cast<std::int64_t>(number)); }
  void value(unsigned number) { value(static_cast<std::uint64_t>(number)); }
  void value(double number);
  void null();
  void value(const std::vector<std::string>& list);

  // key + value in one call.
  template <typename T>
  void field(std::string_view name, const T& v) {
    key(name);
    value(v);
  }

  const std::string& str() const { return out_; }

 private:
  void before_value();
  std::string out_;
  // Per open container: whether something was written in it already.
  std::vector<bool> has_items_;
  bool after_key_ = false;
};

}  // namespace tapsec::ctl
