/* Reading from kTLS sockets: non-data records are taken with recvmsg(). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <linux/tls.h>

#include "dbus/libtapsec/src/internal.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

/* TLS record content types (RFC 8446 §5.1). */
enum {
  RECORD_ALERT = 21,
  RECORD_HANDSHAKE = 22,
  RECORD_APPLICATION_DATA = 23,
};
enum { ALERT_CLOSE_NOTIFY = 0 };

/* The largest TLS plaintext record plus room for the kernel's bookkeeping. */
#define MAX_RECORD_PLAINTEXT (16384 + 256)

/* recvmsg() that also reports the record's content type, or -1 when the
 * socket gave none (no kTLS: everything is application data). */
static ssize_t receive_record_flags(int fd, void *buf, size_t len, int *record_type, int flags) {
  union {
    char buffer[CMSG_SPACE(sizeof(unsigned char))];
    struct cmsghdr align;
  } control;
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  struct msghdr msg = {
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = control.buffer,
      .msg_controllen = sizeof(control.buffer),
  };
  ssize_t n = recvmsg(fd, &msg, flags);
  if (n < 0) return -1;
  *record_type = -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
    if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE)
      *record_type = *(unsigned char *)CMSG_DATA(c);
  return n;
}

static ssize_t receive_record(int fd, void *buf, size_t len, int *record_type) {
  return receive_record_flags(fd, buf, len, record_type, 0);
}

/* Whether the record at the head of the stream is the peer's KeyUpdate,
 * which the agent must take itself to install the peer's next key. */
int tapsec_next_record_is_key_update(int fd) {
  unsigned char head[8];
  int type = -1;
  ssize_t n = receive_record_flags(fd, head, sizeof(head), &type, MSG_PEEK | MSG_DONTWAIT);
  return n >= 1 && type == RECORD_HANDSHAKE && head[0] == 24;
}

/* What an alert record means for the reader: EOF or a fatal error. */
static int alert_outcome(const unsigned char *alert, size_t length) {
  if (length >= 2 && alert[1] == ALERT_CLOSE_NOTIFY) return TAPSEC_READ_EOF;
  return -ECONNRESET;
}

int tapsec_consume_control_record(int fd) {
  static _Thread_local unsigned char record[MAX_RECORD_PLAINTEXT];
  int type = -1;
  ssize_t n = receive_record(fd, record, sizeof(record), &type);
  if (n < 0) return errno == EINTR || errno == EAGAIN ? TAPSEC_READ_RETRY : -errno;
  if (n == 0) return TAPSEC_READ_EOF;
  switch (type) {
    case RECORD_ALERT:
      return alert_outcome(record, (size_t)n);
    case RECORD_APPLICATION_DATA:
    case -1:
      /* Data where a control record was expected: it cannot be handed back,
       * so the stream is broken for the caller. */
      return -EIO;
    default:
      return TAPSEC_READ_RETRY;
  }
}

ssize_t tapsec_read(int fd, void *buf, size_t len) {
  if (len == 0) return 0;
  for (;;) {
    int type = -1;
    ssize_t n = receive_record(fd, buf, len, &type);
    if (n < 0) return -1;
    if (type == -1 || type == RECORD_APPLICATION_DATA || n == 0) return n;
    if (type == RECORD_ALERT) {
      unsigned char alert[2] = {0, 0xff};
      memcpy(alert, buf, n >= 2 ? 2 : 1);
      size_t have = n >= 2 ? 2 : 1;
      if (have < 2) {
        /* A one-byte buffer: the rest of the alert is the next read. */
        int rest_type = -1;
        if (receive_record(fd, &alert[1], 1, &rest_type) == 1) have = 2;
      }
      if (alert_outcome(alert, have) == TAPSEC_READ_EOF) return 0;
      errno = ECONNRESET;
      return -1;
    }
    /* Handshake (session tickets, KeyUpdate) and anything else: skip. */
  }
}
