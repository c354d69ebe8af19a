/*
 * A program built the way a user of libtapsec-dev builds one: against the
 * headers and pkg-config file of the package alone (tests/vm/packaging/run.sh
 * compiles it with `pkg-config --cflags --libs tapsec` from the unpacked
 * package, not from the tree). In the installed system it asks the agent on
 * the system bus for a TLS connection, sends one line and prints the reply.
 *   dev-client HOST PORT SERVER_NAME
 */
#include <tapsec/tapsec.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: dev-client HOST PORT SERVER_NAME\n");
    return 2;
  }
  int open_error = 0;
  tapsec_client *client = tapsec_open(NULL, &open_error);
  if (!client) {
    fprintf(stderr, "dev-client: cannot reach the agent: %s\n", strerror(-open_error));
    return 1;
  }
  tapsec_props *props = tapsec_props_new();
  if (!props || tapsec_props_set_string(props, "server-name", argv[3]) < 0) {
    fprintf(stderr, "dev-client: out of memory\n");
    return 1;
  }
  tapsec_error error = {NULL, NULL};
  int fd = -1;
  char *path = NULL;
  int status = tapsec_connect(client, argv[1], (uint16_t)atoi(argv[2]), props, &fd, &path, &error);
  tapsec_props_free(props);
  if (status < 0) {
    fprintf(stderr, "dev-client: %s: %s\n", error.name ? error.name : "error", error.message ? error.message : "");
    tapsec_error_free(&error);
    tapsec_close(client);
    return 1;
  }
  static const char line[] = "devpackage\n";
  char reply[128];
  ssize_t got = -1;
  if (write(fd, line, sizeof line - 1) == (ssize_t)(sizeof line - 1)) got = read(fd, reply, sizeof reply - 1);
  if (got <= 0) {
    fprintf(stderr, "dev-client: no reply on %s: %s\n", path, got < 0 ? strerror(errno) : "end of file");
    return 1;
  }
  reply[got] = '\0';
  printf("association %s reply=%s", path, reply);
  free(path);
  close(fd);
  tapsec_close(client);
  return 0;
}
