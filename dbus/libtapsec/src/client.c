/* The bus connection, Manager and Association calls, and the validator. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "dbus/libtapsec/src/internal.h"
#include "tapsec/tapsec.h"

#define DEFAULT_HANDSHAKE_TIMEOUT_MS 10000u
/* Beyond the handshake timeout, time for the agent to answer at all. */
#define CALL_MARGIN_USEC (5ull * 1000 * 1000)

struct tapsec_client {
  sd_bus *bus;
  sd_bus_slot *validator_slot;
  char *validator_path;
  tapsec_peer_validator_fn validator;
  void *validator_userdata;
};

static int open_bus_at_address(const char *address, sd_bus **out) {
  sd_bus *bus = NULL;
  int r = sd_bus_new(&bus);
  if (r < 0) return r;
  r = sd_bus_set_address(bus, address);
  if (r >= 0) r = sd_bus_set_bus_client(bus, 1);
  if (r >= 0) r = sd_bus_negotiate_fds(bus, 1);
  if (r >= 0) r = sd_bus_start(bus);
  if (r < 0) {
    sd_bus_unref(bus);
    return r;
  }
  *out = bus;
  return 0;
}

tapsec_client *tapsec_open(const char *bus_address, int *err) {
  tapsec_client *client = calloc(1, sizeof(*client));
  int r = client ? 0 : -ENOMEM;
  if (r == 0) {
    if (!bus_address || strcmp(bus_address, "system") == 0)
      r = sd_bus_open_system(&client->bus);
    else if (strcmp(bus_address, "session") == 0 || strcmp(bus_address, "user") == 0)
      r = sd_bus_open_user(&client->bus);
    else
      r = open_bus_at_address(bus_address, &client->bus);
  }
  if (r < 0) {
    if (err) *err = r;
    tapsec_close(client);
    return NULL;
  }
  if (err) *err = 0;
  return client;
}

void tapsec_close(tapsec_client *client) {
  if (!client) return;
  sd_bus_slot_unref(client->validator_slot);
  free(client->validator_path);
  sd_bus_flush_close_unref(client->bus);
  free(client);
}

int tapsec_client_get_fd(tapsec_client *client) { return client ? sd_bus_get_fd(client->bus) : -EINVAL; }

int tapsec_client_process(tapsec_client *client) {
  if (!client) return -EINVAL;
  int r;
  do r = sd_bus_process(client->bus, NULL);
  while (r > 0);
  return r;
}

/* ---------------------------------------------------------------- validator */

static int reply_validation(sd_bus_message *call, int accept, const char *reason) {
  return sd_bus_reply_method_return(call, "bs", accept, reason ? reason : "");
}

static int on_validate_peer(sd_bus_message *call, void *userdata, sd_bus_error *ret_error) {
  tapsec_client *client = userdata;
  const char *protocol = NULL, *server_name = NULL;
  int r = sd_bus_message_read(call, "ss", &protocol, &server_name);
  if (r < 0) return r;
  r = sd_bus_message_enter_container(call, 'a', "ay");
  if (r < 0) return r;

  tapsec_certificate *chain = NULL;
  size_t chain_length = 0;
  for (;;) {
    const void *der = NULL;
    size_t length = 0;
    r = sd_bus_message_read_array(call, 'y', &der, &length);
    if (r < 0) goto done;
    if (r == 0) break;
    tapsec_certificate *grown = realloc(chain, (chain_length + 1) * sizeof(*chain));
    if (!grown) {
      r = -ENOMEM;
      goto done;
    }
    chain = grown;
    chain[chain_length].der = der;
    chain[chain_length].length = length;
    chain_length++;
  }
  r = sd_bus_message_exit_container(call);
  if (r < 0) goto done;

  char *reason = NULL;
  int verdict = client->validator(client->validator_userdata, protocol, server_name, chain, chain_length, &reason);
  if (verdict < 0) {
    r = sd_bus_error_setf(ret_error, "org.tapsec1.Error.PeerNotValidated", "The application's validator failed: %s",
                          reason ? reason : strerror(-verdict));
  } else {
    r = reply_validation(call, verdict > 0, reason);
  }
  free(reason);
done:
  free(chain);
  return r;
}

static const sd_bus_vtable peer_validator_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD_WITH_ARGS("ValidatePeer",
                            SD_BUS_ARGS("s", protocol, "s", server_name, "aay", certificate_chain_der),
                            SD_BUS_RESULT("b", accept, "s", reason), on_validate_peer, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

int tapsec_client_set_validator(tapsec_client *client, const char *object_path, tapsec_peer_validator_fn callback,
                                void *userdata) {
  if (!client) return -EINVAL;
  client->validator_slot = sd_bus_slot_unref(client->validator_slot);
  free(client->validator_path);
  client->validator_path = NULL;
  client->validator = NULL;
  if (!callback) return 0;
  if (!object_path || !sd_bus_object_path_is_valid(object_path)) return -EINVAL;

  client->validator_path = strdup(object_path);
  if (!client->validator_path) return -ENOMEM;
  int r = sd_bus_add_object_vtable(client->bus, &client->validator_slot, object_path,
                                   TAPSEC_PEER_VALIDATOR_INTERFACE, peer_validator_vtable, client);
  if (r < 0) {
    free(client->validator_path);
    client->validator_path = NULL;
    return r;
  }
  client->validator = callback;
  client->validator_userdata = userdata;
  return 0;
}

/* ------------------------------------------------- calls that keep serving */

struct pending_call {
  int done;
  sd_bus_message *reply;
};

static int on_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
  struct pending_call *pending = userdata;
  pending->reply = sd_bus_message_ref(reply);
  pending->done = 1;
  return 0;
}

/* Sends call and waits for its reply while dispatching other incoming
 * messages (the agent calls our validator in the middle of a handshake). */
static int call_and_serve(tapsec_client *client, sd_bus_message *call, uint64_t timeout_usec, sd_bus_message **out_reply,
                          tapsec_error *err) {
  struct pending_call pending = {0, NULL};
  sd_bus_slot *slot = NULL;
  int r = sd_bus_call_async(client->bus, &slot, call, on_reply, &pending, timeout_usec);
  if (r < 0) return r;
  while (!pending.done) {
    r = sd_bus_process(client->bus, NULL);
    if (r < 0) break;
    if (r > 0) continue;
    r = sd_bus_wait(client->bus, UINT64_MAX);
    if (r < 0 && r != -EINTR) break;
  }
  sd_bus_slot_unref(slot);
  if (!pending.done) return r;

  const sd_bus_error *bus_error = sd_bus_message_get_error(pending.reply);
  if (bus_error) {
    r = tapsec_error_set_from_bus(err, bus_error, -EIO);
    sd_bus_message_unref(pending.reply);
    return r;
  }
  *out_reply = pending.reply;
  return 0;
}

/* Reads "(h fd, o association)" and takes a private copy of the fd. */
static int read_secured_reply(sd_bus_message *reply, int *out_fd, char **out_path) {
  int fd = -1;
  const char *path = NULL;
  int r = sd_bus_message_read(reply, "ho", &fd, &path);
  if (r < 0) return r;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return -errno;
  if (out_path) {
    *out_path = strdup(path);
    if (!*out_path) {
      close(copy);
      return -ENOMEM;
    }
  }
  *out_fd = copy;
  return 0;
}

static int secured_call(tapsec_client *client, sd_bus_message *call, const tapsec_props *props, int *out_fd,
                        char **out_association_path, tapsec_error *err) {
  /* A validator registered on this client stands in for a missing
   * "validator" when the application asked for application validation. */
  const char *extra_validator = NULL;
  const char *mode = tapsec_props_get_string(props, "peer-validation");
  if (client->validator_path && mode && strcmp(mode, "application") == 0 && !tapsec_props_has(props, "validator"))
    extra_validator = client->validator_path;

  int r = tapsec_props_append_with_validator(props, call, extra_validator);
  if (r < 0) return r;

  uint64_t timeout_ms = tapsec_props_get_timeout_ms(props);
  if (timeout_ms == 0) timeout_ms = DEFAULT_HANDSHAKE_TIMEOUT_MS;

  sd_bus_message *reply = NULL;
  r = call_and_serve(client, call, timeout_ms * 1000 + CALL_MARGIN_USEC, &reply, err);
  if (r < 0) return r;
  r = read_secured_reply(reply, out_fd, out_association_path);
  sd_bus_message_unref(reply);
  if (r < 0) tapsec_error_set(err, "org.tapsec1.Error.Internal", "The agent's reply could not be read");
  return r;
}

int tapsec_secure_socket(tapsec_client *client, int fd, const char *role, const tapsec_props *props, int *out_fd,
                         char **out_association_path, tapsec_error *err) {
  if (!client || fd < 0 || !role || !out_fd) return -EINVAL;
  if (strcmp(role, "client") != 0 && strcmp(role, "server") != 0) {
    tapsec_error_set(err, "org.tapsec1.Error.InvalidArgument", "role must be \"client\" or \"server\"");
    return -EINVAL;
  }
  sd_bus_message *call = NULL;
  int r = sd_bus_message_new_method_call(client->bus, &call, TAPSEC_BUS_NAME, TAPSEC_MANAGER_PATH,
                                         TAPSEC_MANAGER_INTERFACE, "SecureSocket");
  if (r >= 0) r = sd_bus_message_append(call, "hs", fd, role);
  if (r >= 0) r = secured_call(client, call, props, out_fd, out_association_path, err);
  sd_bus_message_unref(call);
  return r;
}

int tapsec_connect(tapsec_client *client, const char *host, uint16_t port, const tapsec_props *props, int *out_fd,
                   char **out_association_path, tapsec_error *err) {
  if (!client || !host || !out_fd) return -EINVAL;
  sd_bus_message *call = NULL;
  int r = sd_bus_message_new_method_call(client->bus, &call, TAPSEC_BUS_NAME, TAPSEC_MANAGER_PATH,
                                         TAPSEC_MANAGER_INTERFACE, "Connect");
  if (r >= 0) r = sd_bus_message_append(call, "sq", host, port);
  if (r >= 0) r = secured_call(client, call, props, out_fd, out_association_path, err);
  sd_bus_message_unref(call);
  return r;
}

/* ------------------------------------------------------------ associations */

static int association_call(tapsec_client *client, const char *path, const char *method, sd_bus_message **reply,
                            tapsec_error *err, const char *types, ...) {
  if (!client || !path || !sd_bus_object_path_is_valid(path)) return -EINVAL;
  sd_bus_message *call = NULL;
  int r = sd_bus_message_new_method_call(client->bus, &call, TAPSEC_BUS_NAME, path, TAPSEC_ASSOCIATION_INTERFACE,
                                         method);
  if (r >= 0 && types) {
    va_list ap;
    va_start(ap, types);
    r = sd_bus_message_appendv(call, types, ap);
    va_end(ap);
  }
  if (r >= 0) r = call_and_serve(client, call, 0, reply, err);
  sd_bus_message_unref(call);
  return r;
}

int tapsec_update_keys(tapsec_client *client, const char *association_path, int request_peer, tapsec_error *err) {
  sd_bus_message *reply = NULL;
  int r = association_call(client, association_path, "UpdateKeys", &reply, err, "b", !!request_peer);
  sd_bus_message_unref(reply);
  return r;
}

int tapsec_terminate(tapsec_client *client, const char *association_path, tapsec_error *err) {
  sd_bus_message *reply = NULL;
  int r = association_call(client, association_path, "Terminate", &reply, err, NULL);
  sd_bus_message_unref(reply);
  return r;
}

void tapsec_secret_free(void *secret, size_t length) {
  if (!secret) return;
  explicit_bzero(secret, length);
  free(secret);
}

int tapsec_export_keying_material(tapsec_client *client, const char *association_path, const char *label,
                                  const void *context, size_t context_len, uint32_t length, uint8_t **out,
                                  tapsec_error *err) {
  if (!client || !association_path || !label || !out || (context_len > 0 && !context)) return -EINVAL;
  if (!sd_bus_object_path_is_valid(association_path)) return -EINVAL;
  sd_bus_message *call = NULL, *reply = NULL;
  int r = sd_bus_message_new_method_call(client->bus, &call, TAPSEC_BUS_NAME, association_path,
                                         TAPSEC_ASSOCIATION_INTERFACE, "ExportKeyingMaterial");
  if (r >= 0) r = sd_bus_message_append_basic(call, 's', label);
  if (r >= 0) r = sd_bus_message_append_array(call, 'y', context ? context : "", context_len);
  if (r >= 0) r = sd_bus_message_append_basic(call, 'u', &length);
  if (r >= 0) r = call_and_serve(client, call, 0, &reply, err);
  sd_bus_message_unref(call);
  if (r < 0) return r;

  /* The reply carries key material: have sd-bus wipe it when freed. */
  sd_bus_message_sensitive(reply);
  const void *bytes = NULL;
  size_t size = 0;
  r = sd_bus_message_read_array(reply, 'y', &bytes, &size);
  if (r >= 0 && size != length) {
    tapsec_error_set(err, "org.tapsec1.Error.Internal", "The agent returned keying material of the wrong length");
    r = -EBADMSG;
  }
  if (r >= 0) {
    *out = malloc(size ? size : 1);
    if (!*out)
      r = -ENOMEM;
    else
      memcpy(*out, bytes, size);
  }
  sd_bus_message_unref(reply);
  return r < 0 ? r : 0;
}

/* Reads a property into a reply positioned at the variant's contents;
 * *type is the variant's signature character. */
static int get_property(tapsec_client *client, const char *path, const char *property, sd_bus_message **out_reply,
                        char *type, tapsec_error *err) {
  if (!client || !path || !property || !sd_bus_object_path_is_valid(path)) return -EINVAL;
  sd_bus_message *call = NULL, *reply = NULL;
  int r = sd_bus_message_new_method_call(client->bus, &call, TAPSEC_BUS_NAME, path, "org.freedesktop.DBus.Properties",
                                         "Get");
  if (r >= 0) r = sd_bus_message_append(call, "ss", TAPSEC_ASSOCIATION_INTERFACE, property);
  if (r >= 0) r = call_and_serve(client, call, 0, &reply, err);
  sd_bus_message_unref(call);
  if (r < 0) return r;
  const char *contents = NULL;
  r = sd_bus_message_peek_type(reply, NULL, &contents);
  if (r >= 0 && (!contents || strlen(contents) != 1)) r = -EBADMSG;
  if (r >= 0) r = sd_bus_message_enter_container(reply, 'v', contents);
  if (r < 0) {
    sd_bus_message_unref(reply);
    return r;
  }
  *type = contents[0];
  *out_reply = reply;
  return 0;
}

static void set_type_error(tapsec_error *err, const char *property, char type) {
  char message[160];
  snprintf(message, sizeof(message), "Property %s has D-Bus type '%c', not the one asked for", property, type);
  tapsec_error_set(err, "org.freedesktop.DBus.Error.InvalidSignature", message);
}

int tapsec_get_association_property_string(tapsec_client *client, const char *association_path, const char *property,
                                           char **out, tapsec_error *err) {
  if (!out) return -EINVAL;
  sd_bus_message *reply = NULL;
  char type = 0;
  int r = get_property(client, association_path, property, &reply, &type, err);
  if (r < 0) return r;
  const char *value = NULL;
  if (type != 's' && type != 'o') {
    set_type_error(err, property, type);
    r = -EBADMSG;
  } else {
    r = sd_bus_message_read_basic(reply, type, &value);
  }
  if (r >= 0) {
    *out = strdup(value);
    r = *out ? 0 : -ENOMEM;
  }
  sd_bus_message_unref(reply);
  return r;
}

int tapsec_get_association_property_u64(tapsec_client *client, const char *association_path, const char *property,
                                        uint64_t *out, tapsec_error *err) {
  if (!out) return -EINVAL;
  sd_bus_message *reply = NULL;
  char type = 0;
  int r = get_property(client, association_path, property, &reply, &type, err);
  if (r < 0) return r;
  union {
    uint64_t t;
    uint32_t u;
    uint16_t q;
    uint8_t y;
  } value;
  switch (type) {
    case 't':
      r = sd_bus_message_read_basic(reply, 't', &value.t);
      *out = value.t;
      break;
    case 'u':
      r = sd_bus_message_read_basic(reply, 'u', &value.u);
      *out = value.u;
      break;
    case 'q':
      r = sd_bus_message_read_basic(reply, 'q', &value.q);
      *out = value.q;
      break;
    case 'y':
      r = sd_bus_message_read_basic(reply, 'y', &value.y);
      *out = value.y;
      break;
    default:
      set_type_error(err, property, type);
      r = -EBADMSG;
  }
  sd_bus_message_unref(reply);
  return r < 0 ? r : 0;
}

int tapsec_get_association_property_bool(tapsec_client *client, const char *association_path, const char *property,
                                         int *out, tapsec_error *err) {
  if (!out) return -EINVAL;
  sd_bus_message *reply = NULL;
  char type = 0;
  int r = get_property(client, association_path, property, &reply, &type, err);
  if (r < 0) return r;
  if (type != 'b') {
    set_type_error(err, property, type);
    r = -EBADMSG;
  } else {
    r = sd_bus_message_read_basic(reply, 'b', out);
  }
  sd_bus_message_unref(reply);
  return r < 0 ? r : 0;
}

/* ------------------------------------------------------ kTLS read errors */

int tapsec_handle_read_error(tapsec_client *client, const char *association_path, int fd, int error_number) {
  switch (error_number) {
    case EINTR:
    case EAGAIN:
      return TAPSEC_READ_RETRY;
    case EIO:
      /* The peer's KeyUpdate is for the agent to take: it installs the
       * peer's next key and answers if the peer asked for an update. */
      if (client && association_path && tapsec_next_record_is_key_update(fd)) {
        tapsec_error err = {0};
        int r = tapsec_update_keys(client, association_path, 0, &err);
        tapsec_error_free(&err);
        return r < 0 ? r : TAPSEC_READ_RETRY;
      }
      return tapsec_consume_control_record(fd);
    case EKEYEXPIRED: {
      if (!client || !association_path) return -EKEYEXPIRED;
      tapsec_error err = {0};
      int r = tapsec_update_keys(client, association_path, 0, &err);
      tapsec_error_free(&err);
      return r < 0 ? r : TAPSEC_READ_RETRY;
    }
    default:
      return error_number > 0 ? -error_number : -EIO;
  }
}
