/* Pieces shared between libtapsec's source files; not installed. */
#ifndef TAPSEC_LIBTAPSEC_INTERNAL_H
#define TAPSEC_LIBTAPSEC_INTERNAL_H

#include <systemd/sd-bus.h>

#include "tapsec/tapsec.h"

char **tapsec_strv_copy(const char *const *strv);
void tapsec_strv_free(char **strv);

/* The string value of key, or NULL when unset or not a string key. */
const char *tapsec_props_get_string(const tapsec_props *props, const char *key);

/* The "timeout-ms" value, 0 when unset. */
uint32_t tapsec_props_get_timeout_ms(const tapsec_props *props);

/* Appends props as a{sv}; adds "validator" = extra_validator_path if given. */
int tapsec_props_append_with_validator(const tapsec_props *props, sd_bus_message *m,
                                       const char *extra_validator_path);

/* Copies an sd_bus_error into a tapsec_error and returns the mapped code. */
int tapsec_error_set_from_bus(tapsec_error *err, const sd_bus_error *bus_error, int fallback);
/* Fills a tapsec_error with a library-side failure. */
void tapsec_error_set(tapsec_error *err, const char *name, const char *message);

/* Takes a non-data kTLS record off fd. Returns TAPSEC_READ_RETRY,
 * TAPSEC_READ_EOF or a negative errno. */
int tapsec_consume_control_record(int fd);
int tapsec_next_record_is_key_update(int fd);

#endif
