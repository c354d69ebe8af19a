// libtapsec without a bus: the props builder's message contents, the error
// mapping and tapsec_read on sockets without kTLS.
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "dbus/tapsecctl/bus.h"
#include "tapsec/tapsec.h"

namespace {

using tapsec::ctl::Value;

// A bus object that was started on one end of a socketpair: enough for
// sd-bus to build messages; nothing is ever sent.
class MessageFactory {
 public:
  MessageFactory() {
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair_), 0);
    EXPECT_GE(sd_bus_new(&bus_), 0);
    EXPECT_GE(sd_bus_set_fd(bus_, pair_[0], pair_[0]), 0);
    EXPECT_GE(sd_bus_start(bus_), 0);
  }
  ~MessageFactory() {
    sd_bus_close_unref(bus_);
    close(pair_[1]);
  }
  // A sealed method call holding props (as built by tapsec_props_append),
  // rewound for reading.
  tapsec::ctl::MessagePtr call_with(const tapsec_props* props, int& append_result) {
    sd_bus_message* m = nullptr;
    EXPECT_GE(sd_bus_message_new_method_call(bus_, &m, "org.tapsec1", "/org/tapsec1", "org.tapsec1.Manager",
                                             "Connect"),
              0);
    append_result = tapsec_props_append(props, m);
    EXPECT_GE(sd_bus_message_seal(m, 1, 0), 0);
    EXPECT_GE(sd_bus_message_rewind(m, 1), 0);
    return tapsec::ctl::MessagePtr(m);
  }

 private:
  int pair_[2] = {-1, -1};
  sd_bus* bus_ = nullptr;
};

struct PropsDeleter {
  void operator()(tapsec_props* p) const { tapsec_props_free(p); }
};
using PropsPtr = std::unique_ptr<tapsec_props, PropsDeleter>;

std::vector<std::pair<std::string, Value>> read_back(const tapsec_props* props, std::string* signature = nullptr) {
  MessageFactory factory;
  int r = 0;
  auto m = factory.call_with(props, r);
  EXPECT_GE(r, 0);
  if (signature) *signature = sd_bus_message_get_signature(m.get(), 1);
  std::vector<std::pair<std::string, Value>> dict;
  EXPECT_GE(tapsec::ctl::read_property_dict(m.get(), dict), 0);
  return dict;
}

TEST(PropsBuilder, EmptyPropsAreAnEmptyDictionary) {
  PropsPtr props(tapsec_props_new());
  std::string signature;
  auto dict = read_back(props.get(), &signature);
  EXPECT_EQ(signature, "a{sv}");
  EXPECT_TRUE(dict.empty());
  // NULL props are allowed too.
  EXPECT_TRUE(read_back(nullptr).empty());
}

TEST(PropsBuilder, EveryKeyHasItsContractType) {
  PropsPtr p(tapsec_props_new());
  const char* const protocols[] = {"tls", nullptr};
  const char* const versions[] = {"1.3", nullptr};
  const char* const alpn[] = {"h2", "http/1.1", nullptr};
  const char* const pins[] = {"sha256/AAAA", nullptr};
  const char* const groups[] = {"X25519", "P-256", nullptr};
  const char* const suites[] = {"TLS_AES_128_GCM_SHA256", nullptr};
  ASSERT_EQ(tapsec_props_set_strv(p.get(), "protocols", protocols), 0);
  ASSERT_EQ(tapsec_props_set_string(p.get(), "identity", "web"), 0);
  ASSERT_EQ(tapsec_props_set_string(p.get(), "psk", "link"), 0);
  ASSERT_EQ(tapsec_props_set_algorithms(p.get(), "groups", groups), 0);
  ASSERT_EQ(tapsec_props_set_algorithms(p.get(), "ciphersuites", suites), 0);
  ASSERT_EQ(tapsec_props_set_strv(p.get(), "versions", versions), 0);
  ASSERT_EQ(tapsec_props_set_strv(p.get(), "alpn", alpn), 0);
  ASSERT_EQ(tapsec_props_set_string(p.get(), "server-name", "example.com"), 0);
  ASSERT_EQ(tapsec_props_set_bool(p.get(), "session-cache", 0), 0);
  ASSERT_EQ(tapsec_props_set_string(p.get(), "peer-validation", "pinned"), 0);
  ASSERT_EQ(tapsec_props_set_strv(p.get(), "peer-pins", pins), 0);
  ASSERT_EQ(tapsec_props_set_string(p.get(), "validator", "/com/example/Validator"), 0);
  ASSERT_EQ(tapsec_props_set_bool(p.get(), "require-peer-certificate", 5), 0);
  ASSERT_EQ(tapsec_props_set_bool(p.get(), "export", 1), 0);
  ASSERT_EQ(tapsec_props_set_string(p.get(), "offload", "required"), 0);
  ASSERT_EQ(tapsec_props_set_u32(p.get(), "timeout-ms", 2500), 0);

  // Read the raw variant signatures, key by key, in the order set.
  MessageFactory factory;
  int r = 0;
  auto m = factory.call_with(p.get(), r);
  ASSERT_GE(r, 0);
  ASSERT_GT(sd_bus_message_enter_container(m.get(), 'a', "{sv}"), 0);
  std::vector<std::pair<std::string, std::string>> types;
  while (sd_bus_message_enter_container(m.get(), 'e', "sv") > 0) {
    const char* key = nullptr;
    const char* contents = nullptr;
    ASSERT_GE(sd_bus_message_read(m.get(), "s", &key), 0);
    ASSERT_GE(sd_bus_message_peek_type(m.get(), nullptr, &contents), 0);
    types.emplace_back(key, contents);
    ASSERT_GE(sd_bus_message_skip(m.get(), "v"), 0);
    ASSERT_GE(sd_bus_message_exit_container(m.get()), 0);
  }
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"protocols", "as"},     {"identity", "s"},      {"psk", "s"},
      {"algorithms", "a{sas}"}, {"versions", "as"},     {"alpn", "as"},
      {"server-name", "s"},    {"session-cache", "b"}, {"peer-validation", "s"},
      {"peer-pins", "as"},     {"validator", "o"},     {"require-peer-certificate", "b"},
      {"export", "b"},         {"offload", "s"},       {"timeout-ms", "u"},
  };
  EXPECT_EQ(types, expected);

  auto dict = read_back(p.get());
  using tapsec::ctl::find_property;
  ASSERT_NE(find_property(dict, "alpn"), nullptr);
  ASSERT_EQ(find_property(dict, "alpn")->items.size(), 2u);
  EXPECT_EQ(find_property(dict, "alpn")->items[1].text, "http/1.1");
  EXPECT_EQ(find_property(dict, "server-name")->text, "example.com");
  EXPECT_FALSE(find_property(dict, "session-cache")->flag);
  EXPECT_TRUE(find_property(dict, "require-peer-certificate")->flag);
  EXPECT_EQ(find_property(dict, "timeout-ms")->unsigned_number, 2500u);
  // Algorithms always come in the order ciphersuites, groups, signature-algorithms.
  const Value* algorithms = find_property(dict, "algorithms");
  ASSERT_EQ(algorithms->entries.size(), 2u);
  EXPECT_EQ(algorithms->entries[0].first, "ciphersuites");
  EXPECT_EQ(algorithms->entries[1].first, "groups");
  EXPECT_EQ(tapsec::ctl::value_to_text(algorithms->entries[1].second), "X25519, P-256");
}

TEST(PropsBuilder, SettingAgainReplacesAndKeepsPosition) {
  PropsPtr p(tapsec_props_new());
  ASSERT_EQ(tapsec_props_set_string(p.get(), "server-name", "a.example"), 0);
  ASSERT_EQ(tapsec_props_set_bool(p.get(), "export", 1), 0);
  ASSERT_EQ(tapsec_props_set_string(p.get(), "server-name", "b.example"), 0);
  auto dict = read_back(p.get());
  ASSERT_EQ(dict.size(), 2u);
  EXPECT_EQ(dict[0].first, "server-name");
  EXPECT_EQ(dict[0].second.text, "b.example");
  EXPECT_EQ(tapsec_props_has(p.get(), "export"), 1);
  EXPECT_EQ(tapsec_props_has(p.get(), "psk"), 0);
}

TEST(PropsBuilder, RejectsUnknownKeysWrongTypesAndBadValues) {
  PropsPtr p(tapsec_props_new());
  const char* const list[] = {"x", nullptr};
  EXPECT_EQ(tapsec_props_set_string(p.get(), "no-such-key", "x"), -EINVAL);
  EXPECT_EQ(tapsec_props_set_string(p.get(), "protocols", "tls"), -EINVAL);
  EXPECT_EQ(tapsec_props_set_strv(p.get(), "server-name", list), -EINVAL);
  EXPECT_EQ(tapsec_props_set_bool(p.get(), "timeout-ms", 1), -EINVAL);
  EXPECT_EQ(tapsec_props_set_u32(p.get(), "export", 1), -EINVAL);
  EXPECT_EQ(tapsec_props_set_string(p.get(), "validator", "not/a path"), -EINVAL);
  EXPECT_EQ(tapsec_props_set_string(p.get(), "identity", nullptr), -EINVAL);
  EXPECT_EQ(tapsec_props_set_string(p.get(), nullptr, "x"), -EINVAL);
  EXPECT_EQ(tapsec_props_set_algorithms(p.get(), "hashes", list), -EINVAL);
  EXPECT_EQ(tapsec_props_set_string(nullptr, "identity", "x"), -EINVAL);
  EXPECT_TRUE(read_back(p.get()).empty());
}

TEST(Errors, AgentErrorNamesMapToErrno) {
  EXPECT_EQ(tapsec_errno_from_error_name("org.tapsec1.Error.PolicyDenied"), -EACCES);
  EXPECT_EQ(tapsec_errno_from_error_name("org.tapsec1.Error.PeerNotValidated"), -EKEYREJECTED);
  EXPECT_EQ(tapsec_errno_from_error_name("org.tapsec1.Error.KernelUnsupported"), -EOPNOTSUPP);
  EXPECT_EQ(tapsec_errno_from_error_name("org.tapsec1.Error.Timeout"), -ETIMEDOUT);
  EXPECT_EQ(tapsec_errno_from_error_name("org.tapsec1.Error.NoSuchAssociation"), -ENOENT);
  EXPECT_EQ(tapsec_errno_from_error_name("org.freedesktop.DBus.Error.ServiceUnknown"), -EHOSTDOWN);
  EXPECT_EQ(tapsec_errno_from_error_name("org.freedesktop.DBus.Error.AccessDenied"), -EACCES);
  EXPECT_EQ(tapsec_errno_from_error_name("com.example.Unheard.Of"), -EIO);
  EXPECT_EQ(tapsec_errno_from_error_name(nullptr), -EIO);

  tapsec_error err = {nullptr, nullptr};
  tapsec_error_free(&err);  // freeing an empty error is fine
  tapsec_error_free(nullptr);
  EXPECT_FALSE(tapsec_error_has_name(&err, "x"));
}

TEST(Read, PlainSocketsReadLikeRead) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(write(pair[1], "abc", 3), 3);
  char buffer[8] = {};
  EXPECT_EQ(tapsec_read(pair[0], buffer, sizeof(buffer)), 3);
  EXPECT_EQ(std::string(buffer, 3), "abc");
  EXPECT_EQ(tapsec_read(pair[0], buffer, 0), 0);
  close(pair[1]);
  EXPECT_EQ(tapsec_read(pair[0], buffer, sizeof(buffer)), 0);
  close(pair[0]);
  errno = 0;
  EXPECT_EQ(tapsec_read(-1, buffer, sizeof(buffer)), -1);
  EXPECT_EQ(errno, EBADF);
}

TEST(Read, ReadErrorsBecomeActions) {
  EXPECT_EQ(tapsec_handle_read_error(nullptr, nullptr, -1, EINTR), TAPSEC_READ_RETRY);
  EXPECT_EQ(tapsec_handle_read_error(nullptr, nullptr, -1, EAGAIN), TAPSEC_READ_RETRY);
  EXPECT_EQ(tapsec_handle_read_error(nullptr, nullptr, -1, ECONNRESET), -ECONNRESET);
  // Without a client and association there is nobody to ask for the next key.
  EXPECT_EQ(tapsec_handle_read_error(nullptr, nullptr, -1, EKEYEXPIRED), -EKEYEXPIRED);

  // EIO on a socket without kTLS: the "control record" is plain data, which
  // cannot be handed back, so the stream is reported broken.
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(write(pair[1], "x", 1), 1);
  EXPECT_EQ(tapsec_handle_read_error(nullptr, nullptr, pair[0], EIO), -EIO);
  close(pair[1]);
  EXPECT_EQ(tapsec_handle_read_error(nullptr, nullptr, pair[0], EIO), TAPSEC_READ_EOF);
  close(pair[0]);
}

}  // namespace
