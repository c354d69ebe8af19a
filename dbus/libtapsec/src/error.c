/* tapsec_error and the mapping of agent error names to errno codes. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dbus/libtapsec/src/internal.h"

struct error_mapping {
  const char *name;
  int code;
};

static const struct error_mapping error_mappings[] = {
    {"org.tapsec1.Error.PolicyDenied", EACCES},
    {"org.tapsec1.Error.ExportDenied", EPERM},
    {"org.tapsec1.Error.HandshakeFailed", EPROTO},
    {"org.tapsec1.Error.PeerNotValidated", EKEYREJECTED},
    {"org.tapsec1.Error.KernelUnsupported", EOPNOTSUPP},
    {"org.tapsec1.Error.NotSupported", EOPNOTSUPP},
    {"org.tapsec1.Error.InvalidArgument", EINVAL},
    {"org.tapsec1.Error.UnknownProperty", EINVAL},
    {"org.tapsec1.Error.BadSocket", EBADF},
    {"org.tapsec1.Error.NoSuchIdentity", ENOKEY},
    {"org.tapsec1.Error.NoSuchAssociation", ENOENT},
    {"org.tapsec1.Error.Timeout", ETIMEDOUT},
    {"org.tapsec1.Error.Internal", EIO},
    {"org.freedesktop.DBus.Error.ServiceUnknown", EHOSTDOWN},
    {"org.freedesktop.DBus.Error.NameHasNoOwner", EHOSTDOWN},
};

int tapsec_errno_from_error_name(const char *name) {
  if (!name) return -EIO;
  for (size_t i = 0; i < sizeof(error_mappings) / sizeof(error_mappings[0]); i++)
    if (strcmp(error_mappings[i].name, name) == 0) return -error_mappings[i].code;
  sd_bus_error probe = SD_BUS_ERROR_MAKE_CONST(name, NULL);
  int r = sd_bus_error_get_errno(&probe);
  return r > 0 ? -r : -EIO;
}

void tapsec_error_free(tapsec_error *err) {
  if (!err) return;
  free(err->name);
  free(err->message);
  err->name = NULL;
  err->message = NULL;
}

int tapsec_error_has_name(const tapsec_error *err, const char *name) {
  return err && err->name && name && strcmp(err->name, name) == 0;
}

void tapsec_error_set(tapsec_error *err, const char *name, const char *message) {
  if (!err) return;
  tapsec_error_free(err);
  err->name = name ? strdup(name) : NULL;
  err->message = message ? strdup(message) : NULL;
}

int tapsec_error_set_from_bus(tapsec_error *err, const sd_bus_error *bus_error, int fallback) {
  if (!sd_bus_error_is_set(bus_error)) return fallback;
  const char *message = bus_error->message;
  if (sd_bus_error_has_names(bus_error, "org.freedesktop.DBus.Error.ServiceUnknown",
                             "org.freedesktop.DBus.Error.NameHasNoOwner"))
    message = "tapsecd is not running (org.tapsec1 not on the bus)";
  tapsec_error_set(err, bus_error->name, message);
  return tapsec_errno_from_error_name(bus_error->name);
}
