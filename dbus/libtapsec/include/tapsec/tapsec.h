/*
 * libtapsec — ask tapsecd (bus name org.tapsec1) for transport security.
 *
 * The agent runs the handshake and installs the keys into the kernel's record
 * layer (kTLS); the application keeps using an ordinary socket. The bus
 * contract (interfaces org.tapsec1.Manager and org.tapsec1.Association) is
 * documented with the interface XML in dbus/.
 *
 * Conventions:
 *  - Functions returning int return 0 (or a documented positive value) on
 *    success and a negative errno-style code on failure.
 *  - Where a `tapsec_error *err` is taken (it may be NULL), a failure reported
 *    by the agent fills in the D-Bus error name and message. The caller frees
 *    them with tapsec_error_free(). Start with `tapsec_error err = {0};`.
 *  - A tapsec_client is not thread-safe: use one per thread.
 *
 * Agent errors map to return codes:
 *   org.tapsec1.Error.PolicyDenied     -EACCES
 *   .ExportDenied                      -EPERM
 *   .HandshakeFailed                   -EPROTO
 *   .PeerNotValidated                  -EKEYREJECTED
 *   .KernelUnsupported, .NotSupported  -EOPNOTSUPP
 *   .InvalidArgument, .UnknownProperty -EINVAL
 *   .BadSocket                         -EBADF
 *   .NoSuchIdentity                    -ENOKEY
 *   .NoSuchAssociation                 -ENOENT
 *   .Timeout                           -ETIMEDOUT
 *   .Internal                          -EIO
 *   agent not on the bus               -EHOSTDOWN
 *   any other D-Bus error              sd-bus's own mapping (often -EIO)
 */
#ifndef TAPSEC_TAPSEC_H
#define TAPSEC_TAPSEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TAPSEC_BUS_NAME "org.tapsec1"
#define TAPSEC_MANAGER_PATH "/org/tapsec1"
#define TAPSEC_MANAGER_INTERFACE "org.tapsec1.Manager"
#define TAPSEC_ASSOCIATION_INTERFACE "org.tapsec1.Association"
#define TAPSEC_PEER_VALIDATOR_INTERFACE "org.tapsec1.PeerValidator"
#define TAPSEC_ASSOCIATION_PATH_PREFIX "/org/tapsec1/association/"

/* ------------------------------------------------------------------ errors */

typedef struct tapsec_error {
  char *name;    /* D-Bus error name, e.g. "org.tapsec1.Error.PolicyDenied" */
  char *message; /* what went wrong and what to do about it */
} tapsec_error;

/* Frees name and message and resets both to NULL. Accepts NULL. */
void tapsec_error_free(tapsec_error *err);

/* 1 if err carries the given D-Bus error name, else 0. */
int tapsec_error_has_name(const tapsec_error *err, const char *name);

/* Maps a D-Bus error name to the return code listed above (negative). */
int tapsec_errno_from_error_name(const char *name);

/* ----------------------------------------------------------------- client */

typedef struct tapsec_client tapsec_client;

/*
 * Connects to a bus. bus_address: NULL or "system" for the system bus,
 * "session" for the user's session bus, anything else is a D-Bus address
 * ("unix:path=/run/x"). Returns NULL on failure and stores a negative errno
 * in *err (err may be NULL).
 */
tapsec_client *tapsec_open(const char *bus_address, int *err);

/* Closes the bus connection and drops a registered validator. Accepts NULL. */
void tapsec_close(tapsec_client *client);

/* ------------------------------------------------------- request properties
 *
 * The a{sv} "props" of SecureSocket and Connect. Keys and their types:
 *   protocols as, identity s, psk s, algorithms a{sas}, versions as, alpn as,
 *   server-name s, session-cache b, peer-validation s, peer-pins as,
 *   validator o, require-peer-certificate b, export b, offload s,
 *   timeout-ms u.
 * A setter fails with -EINVAL for an unknown key, a key of another type, or
 * an invalid value (a validator that is not an object path, NULL strings).
 * Setting a key again replaces its value; the builder copies all strings.
 */
typedef struct tapsec_props tapsec_props;

tapsec_props *tapsec_props_new(void);
void tapsec_props_free(tapsec_props *props);

int tapsec_props_set_string(tapsec_props *props, const char *key, const char *value);
/* strv is NULL-terminated; an empty list is allowed. */
int tapsec_props_set_strv(tapsec_props *props, const char *key, const char *const *strv);
int tapsec_props_set_bool(tapsec_props *props, const char *key, int value);
int tapsec_props_set_u32(tapsec_props *props, const char *key, uint32_t value);
/* kind: "ciphersuites", "groups" or "signature-algorithms". */
int tapsec_props_set_algorithms(tapsec_props *props, const char *kind, const char *const *names);
/* 1 if key has been set, else 0. */
int tapsec_props_has(const tapsec_props *props, const char *key);

struct sd_bus_message;
/* Appends the props as one a{sv} to a message being built (for programs that
 * speak sd-bus themselves). props may be NULL (empty dictionary). */
int tapsec_props_append(const tapsec_props *props, struct sd_bus_message *message);

/* ------------------------------------------------------------ securing I/O */

/*
 * Hands a connected TCP socket to the agent, which runs the handshake in the
 * given role ("client" or "server") and returns a socket to use from now on
 * in *out_fd (the caller owns it): by default one end of a Unix socketpair
 * whose other end the agent joins to the protected socket it keeps (kTLS,
 * or its own record layer where the kernel lacks kTLS and policy allows);
 * no read() on it fails on a record that is not data, and the peer's
 * close_notify reads as end of file. With props "direct-socket" true, the
 * same socket with kTLS installed (an agent without CAP_SYS_PTRACE, as
 * packaged, answers NotSupported); dbus/API.md says what a program sees in
 * each mode. The caller keeps ownership of fd and should close it
 * once *out_fd is in use. *out_association_path (may be NULL) receives the
 * association's object path (free()).
 *
 * While the handshake runs this function keeps serving incoming calls on the
 * client's connection, so a validator registered with
 * tapsec_client_set_validator() is consulted. If a validator is registered
 * and props ask for peer-validation "application" without naming a
 * "validator", its object path is added to the request.
 * The call waits timeout-ms (default 10 s) plus 5 s for the agent.
 */
int tapsec_secure_socket(tapsec_client *client, int fd, const char *role, const tapsec_props *props,
                         int *out_fd, char **out_association_path, tapsec_error *err);

/* Like tapsec_secure_socket, but the agent resolves host and connects. */
int tapsec_connect(tapsec_client *client, const char *host, uint16_t port, const tapsec_props *props,
                   int *out_fd, char **out_association_path, tapsec_error *err);

/* ---------------------------------------------------------- associations */

/* TLS 1.3 KeyUpdate (KU); request_peer asks the peer to update too. */
int tapsec_update_keys(tapsec_client *client, const char *association_path, int request_peer,
                       tapsec_error *err);

/*
 * RFC 8446 §7.5 exporter (SSKE), if policy allowed "export". context may be
 * NULL (empty). On success *out is a malloc()ed buffer of `length` bytes;
 * release it with tapsec_secret_free(), which wipes it first.
 */
int tapsec_export_keying_material(tapsec_client *client, const char *association_path, const char *label,
                                  const void *context, size_t context_len, uint32_t length, uint8_t **out,
                                  tapsec_error *err);

/* Wipes and frees a secret returned by this library. Accepts NULL. */
void tapsec_secret_free(void *secret, size_t length);

/* Ends the association: close_notify is sent and the kernel state removed. */
int tapsec_terminate(tapsec_client *client, const char *association_path, tapsec_error *err);

/* Reads one org.tapsec1.Association property, e.g. "Cipher". *out is
 * malloc()ed. */
int tapsec_get_association_property_string(tapsec_client *client, const char *association_path,
                                           const char *property, char **out, tapsec_error *err);
/* Accepts properties of the D-Bus types t, u, q and y. */
int tapsec_get_association_property_u64(tapsec_client *client, const char *association_path,
                                        const char *property, uint64_t *out, tapsec_error *err);
int tapsec_get_association_property_bool(tapsec_client *client, const char *association_path,
                                         const char *property, int *out, tapsec_error *err);

/* ------------------------------------------------ identity validation (IV)
 *
 * The agent calls org.tapsec1.PeerValidator.ValidatePeer on the application
 * when props say peer-validation "application". The callback gets the peer's
 * certificate chain (DER, leaf first) and returns 1 to accept, 0 to reject or
 * a negative errno on failure (the agent then fails the handshake). It may
 * store a malloc()ed reason in *out_reason; it is sent back to the agent.
 * The certificate buffers are valid only during the call.
 */
typedef struct tapsec_certificate {
  const uint8_t *der;
  size_t length;
} tapsec_certificate;

typedef int (*tapsec_peer_validator_fn)(void *userdata, const char *protocol, const char *server_name,
                                        const tapsec_certificate *chain, size_t chain_length,
                                        char **out_reason);

/*
 * Exports org.tapsec1.PeerValidator at object_path on the client's own
 * connection; callback NULL removes it. Replaces a previous registration.
 */
int tapsec_client_set_validator(tapsec_client *client, const char *object_path,
                                tapsec_peer_validator_fn callback, void *userdata);

/* Serves pending incoming calls (validator) without blocking; for
 * applications that own an event loop: poll tapsec_client_get_fd() for
 * input. Returns 0 or a negative errno. */
int tapsec_client_process(tapsec_client *client);
int tapsec_client_get_fd(tapsec_client *client);

/* ----------------------------------------------------- reading kTLS sockets
 *
 * A socket with kTLS receive offload hands only application data to read().
 * When the next record is something else, read() fails with EIO; the record
 * has to be taken with recvmsg() and a control buffer, which reports its
 * content type in a SOL_TLS/TLS_GET_RECORD_TYPE control message.
 *
 * tapsec_read() does this for the application. It always reads with recvmsg()
 * and a control buffer, and:
 *   - application data: returned, as read() would;
 *   - handshake records (NewSessionTicket after a TLS 1.3 handshake,
 *     KeyUpdate): dropped, and it reads on. Session tickets are of no use
 *     here: the agent, not the application, owns the session cache.
 *   - alert close_notify: returns 0 (end of stream);
 *   - any other alert: -1 with errno ECONNRESET;
 *   - after a peer's KeyUpdate, kernels with kTLS rekey support pause
 *     receiving until the next key is installed and fail with EKEYEXPIRED:
 *     returned as -1/EKEYEXPIRED; pass it to tapsec_handle_read_error().
 *     (tapsec_read() has then taken the KeyUpdate itself, so a peer's
 *     request for an update in return is not seen by the agent; plain read()
 *     with tapsec_handle_read_error() on EIO lets the agent answer it.)
 * On a socket without kTLS (the agent's userspace stand-in) it behaves like
 * read(). On Linux 6.1 a peer's KeyUpdate is fatal to a kTLS socket (the
 * kernel cannot take a new receive key); reads then fail with EBADMSG/EIO.
 */
ssize_t tapsec_read(int fd, void *buf, size_t len);

#define TAPSEC_READ_RETRY 0
#define TAPSEC_READ_EOF 1

/*
 * Turns an errno from read()/recv()/tapsec_read() on a secured socket into an
 * action:
 *   EKEYEXPIRED  asks the agent (UpdateKeys(false) on the association) to
 *                install the peer's next receive key; the agent answers with
 *                its own KeyUpdate when the peer requested one. Returns
 *                TAPSEC_READ_RETRY when reading may go on.
 *   EIO          from a plain read(): when the waiting record is the peer's
 *                KeyUpdate, the agent takes it (UpdateKeys(false)), installs
 *                the peer's next key and answers a requested update: returns
 *                TAPSEC_READ_RETRY. Any other non-data record is taken off
 *                the socket as tapsec_read() would; returns TAPSEC_READ_RETRY
 *                (handshake record skipped), TAPSEC_READ_EOF (close_notify)
 *                or -ECONNRESET (fatal alert).
 *   EINTR/EAGAIN TAPSEC_READ_RETRY.
 *   other        returned negated: the connection is unusable.
 * association_path may be NULL when only EIO handling is wanted.
 */
int tapsec_handle_read_error(tapsec_client *client, const char *association_path, int fd, int error_number);

#ifdef __cplusplus
}
#endif

#endif /* TAPSEC_TAPSEC_H */
