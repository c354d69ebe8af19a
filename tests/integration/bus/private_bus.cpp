#include "tests/integration/bus/private_bus.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace tapsec::test {

PrivateBus::PrivateBus(const std::string& extra_config, bool permissive_default_policy) {
  char dir_template[] = "/tmp/tapsec-bus-test-XXXXXX";
  if (!mkdtemp(dir_template)) {
    error_ = std::string("mkdtemp: ") + std::strerror(errno);
    return;
  }
  directory_ = dir_template;
  chmod(directory_.c_str(), 0755);  // other users reach the socket too

  std::string config_path = directory_ + "/bus.conf";
  {
    std::ofstream config(config_path);
    config << "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
              " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
              "<busconfig>\n"
              "  <type>session</type>\n"
              "  <listen>unix:path="
           << directory_ << "/bus_socket</listen>\n"
           << "  <auth>EXTERNAL</auth>\n";
    if (permissive_default_policy) {
      config << "  <policy context=\"default\">\n"
                "    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
                "    <allow eavesdrop=\"true\"/>\n"
                "    <allow own=\"*\"/>\n"
                "    <allow user=\"*\"/>\n"
                "  </policy>\n";
    }
    config << extra_config << "</busconfig>\n";
  }

  int address_pipe[2];
  if (pipe2(address_pipe, O_CLOEXEC) < 0) {
    error_ = std::string("pipe: ") + std::strerror(errno);
    return;
  }
  pid_ = fork();
  if (pid_ < 0) {
    error_ = std::string("fork: ") + std::strerror(errno);
    close(address_pipe[0]);
    close(address_pipe[1]);
    return;
  }
  if (pid_ == 0) {
    // The write end must survive exec: move it to a non-CLOEXEC fd.
    int fd = dup(address_pipe[1]);
    std::string print_address = "--print-address=" + std::to_string(fd);
    std::string config_arg = "--config-file=" + config_path;
    execlp("dbus-daemon", "dbus-daemon", config_arg.c_str(), "--nofork", "--nopidfile", print_address.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  close(address_pipe[1]);

  // The daemon prints its address once it listens.
  std::string output;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (output.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    pollfd p{address_pipe[0], POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    char buffer[512];
    ssize_t n = read(address_pipe[0], buffer, sizeof buffer);
    if (n <= 0) break;
    output.append(buffer, static_cast<std::size_t>(n));
  }
  close(address_pipe[0]);
  auto newline = output.find('\n');
  if (newline == std::string::npos) {
    error_ = "dbus-daemon did not print its address (config rejected or daemon missing)";
    return;
  }
  address_ = output.substr(0, newline);
}

PrivateBus::~PrivateBus() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  if (!directory_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(directory_, ignored);
  }
}

}  // namespace tapsec::test
