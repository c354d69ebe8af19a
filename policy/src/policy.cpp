#include "tapsec/policy.h"

#include <dirent.h>
#include <openssl/crypto.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/core/trusted_file.h"
#include "agent/core/unique_fd.h"
#include "policy/src/model.h"

namespace tapsec::policy {

struct Policy::Data : detail::PolicyData {};

namespace detail {

PolicyData::~PolicyData() {
  for (Psk& psk : psks)
    if (!psk.key.empty()) OPENSSL_cleanse(psk.key.data(), psk.key.size());
}

}  // namespace detail

namespace {

constexpr std::size_t kMaxPolicyFileBytes = 1 << 20;

bool has_policy_suffix(const std::string& name) {
  constexpr std::string_view kSuffix = ".policy";
  return name.size() > kSuffix.size() && name.front() != '.' &&
         name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0;
}

// Errors sorted by file, then line; the order within one line is kept.
void sort_errors(std::vector<Error>& errors) {
  std::stable_sort(errors.begin(), errors.end(), [](const Error& a, const Error& b) {
    if (a.file != b.file) return a.file < b.file;
    return a.line < b.line;
  });
}

// A moved-from Policy behaves as an empty one (denies everything).
const detail::PolicyData& empty_policy() {
  static const detail::PolicyData empty;
  return empty;
}

}  // namespace

std::string Error::to_string() const {
  if (line == 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ": " + message;
}

Policy::Policy() : data_(std::make_unique<Data>()) {}
Policy::~Policy() = default;
Policy::Policy(Policy&&) noexcept = default;
Policy& Policy::operator=(Policy&&) noexcept = default;

std::variant<Policy, std::vector<Error>> Policy::parse(std::string_view text, const std::string& file) {
  Policy policy;
  detail::Declarations declared;
  std::vector<Error> errors;
  detail::parse_file(text, file, *policy.data_, declared, errors);
  detail::resolve_references(declared, errors);
  if (!errors.empty()) {
    sort_errors(errors);
    return errors;
  }
  return policy;
}

std::variant<Policy, std::vector<Error>> Policy::load_directory(const std::string& dir) {
  Policy policy;
  std::vector<Error> errors;

  // The directory is opened once and its entries are opened relative to
  // it, so the directory checked is the directory read.
  std::string why;
  core::UniqueFd dir_fd(core::open_trusted_directory(dir, "policy directory", why));
  if (!dir_fd) {
    if (errno == ENOENT) return policy;  // no policy: everything is denied
    errors.push_back({dir, 0, why});
    return errors;
  }
  std::vector<std::string> names;
  {
    DIR* stream = ::fdopendir(::dup(dir_fd.get()));
    if (!stream) {
      errors.push_back({dir, 0, std::string("cannot read policy directory: ") + std::strerror(errno)});
      return errors;
    }
    while (const dirent* entry = ::readdir(stream)) {
      std::string name = entry->d_name;
      if (has_policy_suffix(name)) names.push_back(std::move(name));
    }
    ::closedir(stream);
  }
  std::sort(names.begin(), names.end());

  detail::Declarations declared;
  for (const std::string& name : names) {
    const std::string path = dir + (dir.empty() || dir.back() == '/' ? "" : "/") + name;
    auto contents = core::read_trusted_file_at(dir_fd.get(), name, path, kMaxPolicyFileBytes, {"policy file", ""}, why);
    if (!contents) {
      errors.push_back({path, 0, why});
      continue;
    }
    const detail::FileFacts facts = detail::parse_file(contents->bytes, path, *policy.data_, declared, errors);
    // A policy that carries a PSK inline is as secret as a key file.
    if (!facts.inline_key_lines.empty()) {
      const std::string problem =
          core::secret_mode_problem(contents->status, path, "policy file", "a PSK inline (Key=)");
      if (!problem.empty())
        for (unsigned line : facts.inline_key_lines) errors.push_back({path, line, problem});
    }
  }
  detail::resolve_references(declared, errors);
  if (!errors.empty()) {
    sort_errors(errors);
    return errors;
  }
  return policy;
}

Decision Policy::evaluate(const Caller& caller, const Request& request) const {
  return detail::evaluate(data_ ? *data_ : empty_policy(), caller, request);
}

const detail::PolicyData& Policy::data() const { return data_ ? *data_ : empty_policy(); }

const Identity* Policy::identity(std::string_view name) const {
  for (const Identity& identity : data().identities)
    if (identity.name == name) return &identity;
  return nullptr;
}

const Psk* Policy::psk(std::string_view name) const {
  for (const Psk& psk : data().psks)
    if (psk.name == name) return &psk;
  return nullptr;
}

const TrustStore* Policy::trust_store(std::string_view name) const {
  for (const TrustStore& store : data().trust_stores)
    if (store.name == name) return &store;
  return nullptr;
}

std::vector<std::string> Policy::identity_names() const {
  std::vector<std::string> names;
  for (const Identity& identity : data().identities) names.push_back(identity.name);
  return names;
}

std::vector<std::string> Policy::psk_names() const {
  std::vector<std::string> names;
  for (const Psk& psk : data().psks) names.push_back(psk.name);
  return names;
}

std::vector<std::string> Policy::trust_store_names() const {
  std::vector<std::string> names;
  for (const TrustStore& store : data().trust_stores) names.push_back(store.name);
  return names;
}

const Tunnel* Policy::tunnel(std::string_view name) const {
  for (const Tunnel& tunnel : data().tunnels)
    if (tunnel.name == name) return &tunnel;
  return nullptr;
}

std::vector<std::string> Policy::tunnel_names() const {
  std::vector<std::string> names;
  for (const Tunnel& tunnel : data().tunnels) names.push_back(tunnel.name);
  return names;
}

std::vector<std::string> Policy::rule_names() const {
  std::vector<std::string> names;
  for (const detail::Rule& rule : data().rules) names.push_back(rule.name);
  return names;
}

}  // namespace tapsec::policy
