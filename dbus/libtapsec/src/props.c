/* The a{sv} request properties of SecureSocket and Connect. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-bus.h>

#include "dbus/libtapsec/src/internal.h"
#include "tapsec/tapsec.h"

enum prop_type { PROP_STRING, PROP_OBJECT_PATH, PROP_STRV, PROP_BOOL, PROP_U32, PROP_ALGORITHMS };

struct prop_key {
  const char *name;
  enum prop_type type;
};

/* Every key the agent accepts; it rejects unknown keys, so we do too, early. */
static const struct prop_key known_keys[] = {
    {"protocols", PROP_STRV},        {"identity", PROP_STRING},
    {"psk", PROP_STRING},            {"algorithms", PROP_ALGORITHMS},
    {"versions", PROP_STRV},         {"alpn", PROP_STRV},
    {"server-name", PROP_STRING},    {"session-cache", PROP_BOOL},
    {"peer-validation", PROP_STRING}, {"peer-pins", PROP_STRV},
    {"validator", PROP_OBJECT_PATH}, {"require-peer-certificate", PROP_BOOL},
    {"export", PROP_BOOL},           {"offload", PROP_STRING},
    {"timeout-ms", PROP_U32},
};

static const char *const algorithm_kinds[] = {"ciphersuites", "groups", "signature-algorithms"};
#define ALGORITHM_KINDS (sizeof(algorithm_kinds) / sizeof(algorithm_kinds[0]))

struct prop_entry {
  const struct prop_key *key;
  char *string;  /* PROP_STRING, PROP_OBJECT_PATH */
  char **strv;   /* PROP_STRV */
  int boolean;   /* PROP_BOOL */
  uint32_t u32;  /* PROP_U32 */
  /* PROP_ALGORITHMS: one optional list per kind, in algorithm_kinds order. */
  char **algorithms[ALGORITHM_KINDS];
};

struct tapsec_props {
  /* Entries in the order they were first set, so messages are predictable. */
  struct prop_entry entries[sizeof(known_keys) / sizeof(known_keys[0])];
  size_t count;
};

static const struct prop_key *find_key(const char *name) {
  if (!name) return NULL;
  for (size_t i = 0; i < sizeof(known_keys) / sizeof(known_keys[0]); i++)
    if (strcmp(known_keys[i].name, name) == 0) return &known_keys[i];
  return NULL;
}

void tapsec_strv_free(char **strv) {
  if (!strv) return;
  for (char **s = strv; *s; s++) free(*s);
  free(strv);
}

char **tapsec_strv_copy(const char *const *strv) {
  size_t n = 0;
  while (strv[n]) n++;
  char **copy = calloc(n + 1, sizeof(char *));
  if (!copy) return NULL;
  for (size_t i = 0; i < n; i++) {
    copy[i] = strdup(strv[i]);
    if (!copy[i]) {
      tapsec_strv_free(copy);
      return NULL;
    }
  }
  return copy;
}

static void entry_clear_value(struct prop_entry *e) {
  free(e->string);
  e->string = NULL;
  tapsec_strv_free(e->strv);
  e->strv = NULL;
  for (size_t k = 0; k < ALGORITHM_KINDS; k++) {
    tapsec_strv_free(e->algorithms[k]);
    e->algorithms[k] = NULL;
  }
}

/* The entry for key, created if missing. */
static struct prop_entry *entry_for(tapsec_props *props, const struct prop_key *key) {
  for (size_t i = 0; i < props->count; i++)
    if (props->entries[i].key == key) return &props->entries[i];
  struct prop_entry *e = &props->entries[props->count++];
  memset(e, 0, sizeof(*e));
  e->key = key;
  return e;
}

static const struct prop_entry *entry_find(const tapsec_props *props, const char *name) {
  if (!props) return NULL;
  for (size_t i = 0; i < props->count; i++)
    if (strcmp(props->entries[i].key->name, name) == 0) return &props->entries[i];
  return NULL;
}

tapsec_props *tapsec_props_new(void) { return calloc(1, sizeof(tapsec_props)); }

void tapsec_props_free(tapsec_props *props) {
  if (!props) return;
  for (size_t i = 0; i < props->count; i++) entry_clear_value(&props->entries[i]);
  free(props);
}

int tapsec_props_set_string(tapsec_props *props, const char *key, const char *value) {
  const struct prop_key *k = find_key(key);
  if (!props || !k || !value) return -EINVAL;
  if (k->type != PROP_STRING && k->type != PROP_OBJECT_PATH) return -EINVAL;
  if (k->type == PROP_OBJECT_PATH && !sd_bus_object_path_is_valid(value)) return -EINVAL;
  char *copy = strdup(value);
  if (!copy) return -ENOMEM;
  struct prop_entry *e = entry_for(props, k);
  entry_clear_value(e);
  e->string = copy;
  return 0;
}

int tapsec_props_set_strv(tapsec_props *props, const char *key, const char *const *strv) {
  const struct prop_key *k = find_key(key);
  if (!props || !k || !strv || k->type != PROP_STRV) return -EINVAL;
  char **copy = tapsec_strv_copy(strv);
  if (!copy) return -ENOMEM;
  struct prop_entry *e = entry_for(props, k);
  entry_clear_value(e);
  e->strv = copy;
  return 0;
}

int tapsec_props_set_bool(tapsec_props *props, const char *key, int value) {
  const struct prop_key *k = find_key(key);
  if (!props || !k || k->type != PROP_BOOL) return -EINVAL;
  entry_for(props, k)->boolean = !!value;
  return 0;
}

int tapsec_props_set_u32(tapsec_props *props, const char *key, uint32_t value) {
  const struct prop_key *k = find_key(key);
  if (!props || !k || k->type != PROP_U32) return -EINVAL;
  entry_for(props, k)->u32 = value;
  return 0;
}

int tapsec_props_set_algorithms(tapsec_props *props, const char *kind, const char *const *names) {
  if (!props || !kind || !names) return -EINVAL;
  size_t index = ALGORITHM_KINDS;
  for (size_t i = 0; i < ALGORITHM_KINDS; i++)
    if (strcmp(algorithm_kinds[i], kind) == 0) index = i;
  if (index == ALGORITHM_KINDS) return -EINVAL;
  char **copy = tapsec_strv_copy(names);
  if (!copy) return -ENOMEM;
  struct prop_entry *e = entry_for(props, find_key("algorithms"));
  tapsec_strv_free(e->algorithms[index]);
  e->algorithms[index] = copy;
  return 0;
}

int tapsec_props_has(const tapsec_props *props, const char *key) { return entry_find(props, key) != NULL; }

const char *tapsec_props_get_string(const tapsec_props *props, const char *key) {
  const struct prop_entry *e = entry_find(props, key);
  return e ? e->string : NULL;
}

uint32_t tapsec_props_get_timeout_ms(const tapsec_props *props) {
  const struct prop_entry *e = entry_find(props, "timeout-ms");
  return e ? e->u32 : 0;
}

static int append_entry(sd_bus_message *m, const struct prop_entry *e) {
  int r = sd_bus_message_open_container(m, 'e', "sv");
  if (r < 0) return r;
  r = sd_bus_message_append_basic(m, 's', e->key->name);
  if (r < 0) return r;
  switch (e->key->type) {
    case PROP_STRING:
      r = sd_bus_message_append(m, "v", "s", e->string);
      break;
    case PROP_OBJECT_PATH:
      r = sd_bus_message_append(m, "v", "o", e->string);
      break;
    case PROP_BOOL:
      r = sd_bus_message_append(m, "v", "b", e->boolean);
      break;
    case PROP_U32:
      r = sd_bus_message_append(m, "v", "u", e->u32);
      break;
    case PROP_STRV:
      r = sd_bus_message_open_container(m, 'v', "as");
      if (r >= 0) r = sd_bus_message_append_strv(m, e->strv);
      if (r >= 0) r = sd_bus_message_close_container(m);
      break;
    case PROP_ALGORITHMS:
      r = sd_bus_message_open_container(m, 'v', "a{sas}");
      if (r >= 0) r = sd_bus_message_open_container(m, 'a', "{sas}");
      for (size_t k = 0; r >= 0 && k < ALGORITHM_KINDS; k++) {
        if (!e->algorithms[k]) continue;
        r = sd_bus_message_open_container(m, 'e', "sas");
        if (r >= 0) r = sd_bus_message_append_basic(m, 's', algorithm_kinds[k]);
        if (r >= 0) r = sd_bus_message_append_strv(m, e->algorithms[k]);
        if (r >= 0) r = sd_bus_message_close_container(m);
      }
      if (r >= 0) r = sd_bus_message_close_container(m);
      if (r >= 0) r = sd_bus_message_close_container(m);
      break;
  }
  if (r < 0) return r;
  return sd_bus_message_close_container(m);
}

int tapsec_props_append_with_validator(const tapsec_props *props, sd_bus_message *m,
                                       const char *extra_validator_path) {
  int r = sd_bus_message_open_container(m, 'a', "{sv}");
  if (r < 0) return r;
  for (size_t i = 0; props && i < props->count; i++) {
    r = append_entry(m, &props->entries[i]);
    if (r < 0) return r;
  }
  if (extra_validator_path) {
    r = sd_bus_message_append(m, "{sv}", "validator", "o", extra_validator_path);
    if (r < 0) return r;
  }
  return sd_bus_message_close_container(m);
}

int tapsec_props_append(const tapsec_props *props, struct sd_bus_message *message) {
  if (!message) return -EINVAL;
  return tapsec_props_append_with_validator(props, message, NULL);
}
