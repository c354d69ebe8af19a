/*
 * tls-echo-server: accepts TCP connections, has tapsecd secure each one as
 * the server side (SecureSocket) and echoes what the client sends.
 *
 *   tls-echo-server [--bus B] [--identity NAME] [--once] PORT
 *
 * One connection at a time, to keep the example short.
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <tapsec/tapsec.h>

static int listen_on(unsigned port) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int off = 0, on = 1;
  setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  struct sockaddr_in6 address = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                                 .sin6_addr = IN6ADDR_ANY_INIT};
  if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0 || listen(fd, 16) < 0) {
    close(fd);
    return -1;
  }
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

/* Echoes until the peer closes; returns when the connection is over. */
static void echo(tapsec_client *client, const char *path, int fd) {
  char buffer[16384];
  for (;;) {
    ssize_t n = tapsec_read(fd, buffer, sizeof(buffer));
    if (n > 0) {
      if (write_all(fd, buffer, (size_t)n) < 0) return;
      continue;
    }
    if (n == 0) return;
    int action = tapsec_handle_read_error(client, path, fd, errno);
    if (action != TAPSEC_READ_RETRY) {
      if (action < 0) fprintf(stderr, "tls-echo-server: read: %s\n", strerror(-action));
      return;
    }
  }
}

int main(int argc, char **argv) {
  const char *bus = NULL, *identity = NULL;
  int once = 0;
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    if (strcmp(argv[i], "--bus") == 0 && i + 1 < argc)
      bus = argv[++i];
    else if (strcmp(argv[i], "--identity") == 0 && i + 1 < argc)
      identity = argv[++i];
    else if (strcmp(argv[i], "--once") == 0)
      once = 1;
    else
      break;
  }
  if (argc - i != 1) {
    fprintf(stderr, "usage: tls-echo-server [--bus B] [--identity NAME] [--once] PORT\n");
    return 2;
  }
  char *end = NULL;
  unsigned long port = strtoul(argv[i], &end, 10);
  if (*end || port == 0 || port > 65535) {
    fprintf(stderr, "tls-echo-server: bad port '%s'\n", argv[i]);
    return 2;
  }

  int r = 0;
  tapsec_client *client = tapsec_open(bus, &r);
  if (!client) {
    fprintf(stderr, "tls-echo-server: cannot connect to the bus: %s\n", strerror(-r));
    return 1;
  }
  int listener = listen_on((unsigned)port);
  if (listener < 0) {
    fprintf(stderr, "tls-echo-server: cannot listen on port %lu: %s\n", port, strerror(errno));
    tapsec_close(client);
    return 1;
  }
  tapsec_props *props = tapsec_props_new();
  const char *const protocols[] = {"tls", NULL};
  tapsec_props_set_strv(props, "protocols", protocols);
  if (identity) tapsec_props_set_string(props, "identity", identity);

  int status = 0;
  do {
    int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (connection < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "tls-echo-server: accept: %s\n", strerror(errno));
      status = 1;
      break;
    }
    tapsec_error err = {0};
    int secured = -1;
    char *path = NULL;
    r = tapsec_secure_socket(client, connection, "server", props, &secured, &path, &err);
    close(connection);
    if (r < 0) {
      fprintf(stderr, "tls-echo-server: %s (%s)\n", err.message ? err.message : strerror(-r),
              err.name ? err.name : "local error");
      tapsec_error_free(&err);
      status = 1;
      continue;
    }
    printf("secured %s\n", path);
    fflush(stdout);
    echo(client, path, secured);
    close(secured);
    free(path);
  } while (!once);

  tapsec_props_free(props);
  close(listener);
  tapsec_close(client);
  return status;
}
