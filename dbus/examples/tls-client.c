/*
 * tls-client: sends one line over a connection secured by tapsecd and prints
 * the reply and the association's properties.
 *
 *   tls-client [--bus B] [--own-socket] [--server-name N]
 *              [--peer-validation system|pinned|application|none] HOST PORT [LINE]
 *
 * By default the agent opens the connection (Connect). With --own-socket the
 * program connects itself and hands the socket over (SecureSocket).
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <tapsec/tapsec.h>

static int connect_tcp(const char *host, const char *port) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *list = NULL;
  int r = getaddrinfo(host, port, &hints, &list);
  if (r != 0) {
    fprintf(stderr, "tls-client: %s: %s\n", host, gai_strerror(r));
    return -1;
  }
  int fd = -1;
  for (struct addrinfo *ai = list; ai && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(list);
  if (fd < 0) fprintf(stderr, "tls-client: cannot connect to %s port %s\n", host, port);
  return fd;
}

static int write_all(int fd, const char *data, size_t length) {
  while (length > 0) {
    ssize_t n = write(fd, data, length);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    data += n;
    length -= (size_t)n;
  }
  return 0;
}

static void print_properties(tapsec_client *client, const char *path) {
  static const char *const strings[] = {"Protocol", "Version", "Cipher", "Group", "PeerIdentity",
                                        "ServerName", "ALPN", "Offload", "PeerAddress", "State"};
  static const char *const numbers[] = {"KeyEpoch", "BytesSent", "BytesReceived"};
  printf("association %s\n", path);
  for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
    char *value = NULL;
    if (tapsec_get_association_property_string(client, path, strings[i], &value, NULL) == 0)
      printf("  %s: %s\n", strings[i], value);
    free(value);
  }
  for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
    uint64_t value = 0;
    if (tapsec_get_association_property_u64(client, path, numbers[i], &value, NULL) == 0)
      printf("  %s: %llu\n", numbers[i], (unsigned long long)value);
  }
  int resumed = 0;
  if (tapsec_get_association_property_bool(client, path, "Resumed", &resumed, NULL) == 0)
    printf("  Resumed: %s\n", resumed ? "yes" : "no");
}

static void usage(void) {
  fprintf(stderr,
          "usage: tls-client [--bus B] [--own-socket] [--server-name N] [--peer-validation M] HOST PORT [LINE]\n");
}

int main(int argc, char **argv) {
  const char *bus = NULL, *server_name = NULL, *validation = NULL;
  int own_socket = 0;
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    if (strcmp(argv[i], "--own-socket") == 0)
      own_socket = 1;
    else if (strcmp(argv[i], "--bus") == 0 && i + 1 < argc)
      bus = argv[++i];
    else if (strcmp(argv[i], "--server-name") == 0 && i + 1 < argc)
      server_name = argv[++i];
    else if (strcmp(argv[i], "--peer-validation") == 0 && i + 1 < argc)
      validation = argv[++i];
    else {
      usage();
      return 2;
    }
  }
  if (argc - i < 2 || argc - i > 3) {
    usage();
    return 2;
  }
  const char *host = argv[i], *port_text = argv[i + 1];
  const char *line = argc - i == 3 ? argv[i + 2] : "hello from tapsec";
  char *end = NULL;
  unsigned long port = strtoul(port_text, &end, 10);
  if (*end || port == 0 || port > 65535) {
    fprintf(stderr, "tls-client: bad port '%s'\n", port_text);
    return 2;
  }

  int r = 0;
  tapsec_client *client = tapsec_open(bus, &r);
  if (!client) {
    fprintf(stderr, "tls-client: cannot connect to the bus: %s\n", strerror(-r));
    return 1;
  }
  tapsec_props *props = tapsec_props_new();
  const char *const protocols[] = {"tls", NULL};
  tapsec_props_set_strv(props, "protocols", protocols);
  tapsec_props_set_string(props, "server-name", server_name ? server_name : host);
  if (validation) tapsec_props_set_string(props, "peer-validation", validation);

  tapsec_error err = {0};
  int secured = -1;
  char *path = NULL;
  if (own_socket) {
    int fd = connect_tcp(host, port_text);
    if (fd < 0) {
      r = -ECONNREFUSED;
      tapsec_error_free(&err);
    } else {
      r = tapsec_secure_socket(client, fd, "client", props, &secured, &path, &err);
      close(fd);
    }
  } else {
    r = tapsec_connect(client, host, (uint16_t)port, props, &secured, &path, &err);
  }
  tapsec_props_free(props);
  if (r < 0) {
    fprintf(stderr, "tls-client: %s (%s)\n", err.message ? err.message : strerror(-r),
            err.name ? err.name : "local error");
    tapsec_error_free(&err);
    tapsec_close(client);
    return 1;
  }

  int status = 0;
  if (write_all(secured, line, strlen(line)) < 0 || write_all(secured, "\n", 1) < 0) {
    fprintf(stderr, "tls-client: write: %s\n", strerror(errno));
    status = 1;
  }
  char reply[4096];
  while (status == 0) {
    ssize_t n = tapsec_read(secured, reply, sizeof(reply));
    if (n > 0) {
      fwrite(reply, 1, (size_t)n, stdout);
      if (memchr(reply, '\n', (size_t)n)) break;
      continue;
    }
    if (n == 0) break;
    int action = tapsec_handle_read_error(client, path, secured, errno);
    if (action == TAPSEC_READ_RETRY) continue;
    if (action != TAPSEC_READ_EOF) {
      fprintf(stderr, "tls-client: read: %s\n", strerror(-action));
      status = 1;
    }
    break;
  }
  print_properties(client, path);
  tapsec_terminate(client, path, NULL);
  close(secured);
  free(path);
  tapsec_close(client);
  return status;
}
