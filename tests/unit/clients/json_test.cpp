// tapsecctl's JSON writer.
#include <gtest/gtest.h>

#include "dbus/tapsecctl/json.h"

namespace {

using tapsec::ctl::json_quote;
using tapsec::ctl::JsonWriter;

TEST(JsonQuote, EscapesWhatJsonRequires) {
  EXPECT_EQ(json_quote(""), "\"\"");
  EXPECT_EQ(json_quote("plain"), "\"plain\"");
  EXPECT_EQ(json_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(json_quote("\n\r\t\b\f"), "\"\\n\\r\\t\\b\\f\"");
  EXPECT_EQ(json_quote(std::string("\x01\x1f\x7f", 3)), "\"\\u0001\\u001f\\u007f\"");
  EXPECT_EQ(json_quote(std::string("nul\0byte", 8)), "\"nul\\u0000byte\"");
  EXPECT_EQ(json_quote("/path/ok"), "\"/path/ok\"");  // '/' need not be escaped
}

TEST(JsonQuote, KeepsValidUtf8AndReplacesInvalidBytes) {
  EXPECT_EQ(json_quote("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x94\x92"), "\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x94\x92\"");
  const std::string replacement = "\xEF\xBF\xBD";
  EXPECT_EQ(json_quote("\xFF"), "\"" + replacement + "\"");
  EXPECT_EQ(json_quote("\xC3"), "\"" + replacement + "\"");                       // truncated
  EXPECT_EQ(json_quote("\xC0\xAF"), "\"" + replacement + replacement + "\"");     // overlong
  EXPECT_EQ(json_quote("\xED\xA0\x80"), "\"" + replacement + replacement + replacement + "\"");  // surrogate
  EXPECT_EQ(json_quote("\xF4\x90\x80\x80x"), "\"" + replacement + replacement + replacement + replacement + "x\"");
}

TEST(JsonWriter, NestsWithCommasInTheRightPlaces) {
  JsonWriter w;
  w.begin_object();
  w.field("name", "tls");
  w.field("count", 3);
  w.field("big", std::uint64_t{18446744073709551615ull});
  w.field("negative", std::int64_t{-5});
  w.field("ok", true);
  w.key("nothing");
  w.null();
  w.field("list", std::vector<std::string>{"a", "b"});
  w.key("empty");
  w.begin_array();
  w.end_array();
  w.key("nested");
  w.begin_array();
  w.begin_object();
  w.end_object();
  w.begin_object();
  w.field("k", "v");
  w.end_object();
  w.end_array();
  w.end_object();
  EXPECT_EQ(w.str(),
            "{\"name\":\"tls\",\"count\":3,\"big\":18446744073709551615,\"negative\":-5,\"ok\":true,"
            "\"nothing\":null,\"list\":[\"a\",\"b\"],\"empty\":[],\"nested\":[{},{\"k\":\"v\"}]}");
}

TEST(JsonWriter, KeysAreEscapedAndNonFiniteNumbersAreNull) {
  JsonWriter w;
  w.begin_object();
  w.field("we\"ird\n", 1.5);
  w.field("nan", std::numeric_limits<double>::quiet_NaN());
  w.end_object();
  EXPECT_EQ(w.str(), "{\"we\\\"ird\\n\":1.5,\"nan\":null}");
}

}  // namespace
