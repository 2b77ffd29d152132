/*
 * password — argon2id hashing with bounded concurrency (see password.h).
 */
#include "password.h"

#include <semaphore.h>
#include <string.h>

#include "log.h"

/* Counts free hashing slots; initialised once before threads start. */
static sem_t hash_slots;
static char dummy_hash[PASSWORD_HASH_MAX];

static int password_hash_raw(const char *password, char out[PASSWORD_HASH_MAX])
{
	return crypto_pwhash_str(out, password, strlen(password),
				 crypto_pwhash_OPSLIMIT_INTERACTIVE,
				 crypto_pwhash_MEMLIMIT_INTERACTIVE);
}

int password_init(int concurrency)
{
	if (sodium_init() < 0)
		return -1;
	if (sem_init(&hash_slots, 0, (unsigned)concurrency) < 0)
		return -1;
	return password_hash_raw("jarvas-dummy-password", dummy_hash);
}

static void slot_take(void)
{
	while (sem_wait(&hash_slots) < 0)
		; /* EINTR only */
}

int password_hash(const char *password, char out[PASSWORD_HASH_MAX])
{
	int rc;

	slot_take();
	rc = password_hash_raw(password, out);
	sem_post(&hash_slots);
	if (rc != 0)
		log_error("password hash failed (out of memory?)");
	return rc == 0 ? 0 : -1;
}

int password_check(const char *hash, const char *password)
{
	int ok;

	slot_take();
	ok = crypto_pwhash_str_verify(hash ? hash : dummy_hash, password, strlen(password)) == 0;
	sem_post(&hash_slots);
	return hash ? ok : 0;
}
