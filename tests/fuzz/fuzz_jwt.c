/*
 * fuzz_jwt — libFuzzer target for jwt_verify() (and jwt_sign()).
 *
 * The key is fixed (FUZZ_KEY below); the seed corpus holds tokens signed
 * with it, so the fuzzer starts past the signature check.  The first input
 * byte picks a mode:
 *   'T' rest is a token, verified as is (so is any input not starting
 *       with 'S' or 'R');
 *   'S' rest is "<header JSON>\n<payload JSON>": the harness encodes and
 *       signs them, so mutations reach the claim parser;
 *   'R' rest is binary: type, user_id, now, lifetime, verify offset — a
 *       jwt_sign()/jwt_verify() round trip.
 * Invariants: an accepted token has exactly three base64url segments in
 * canonical form (see check_canonical for the one known exception), a
 * signature equal to our own HMAC-SHA256 of the first two, alg "HS256", a
 * known token_type, a non-empty jti that fits claims.jti, exp > now
 * (strictly), and is refused under another key and at now = exp; a
 * signed token verifies exactly when it has not expired, with the claims
 * it was signed with.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <sodium.h>

#include "jwt.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_jwt: invariant failed at %s:%d: %s\n", __FILE__,     \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* The seed tokens in corpus/jwt/ are signed with this key. */
#define FUZZ_KEY "jarvas-fuzz-hs256-key-0123456789"
#define FUZZ_NOW 1700000000LL

static const unsigned char *key = (const unsigned char *)FUZZ_KEY;
static const size_t keylen = sizeof FUZZ_KEY - 1;
static const unsigned char other_key[] = "jarvas-fuzz-hs256-key-0123456788";

#define B64 sodium_base64_VARIANT_URLSAFE_NO_PADDING

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	if (sodium_init() < 0)
		abort();
	return 0;
}

/* Malloc'd base64url of p. */
static char *b64(const unsigned char *p, size_t n)
{
	size_t len = sodium_base64_ENCODED_LEN(n, B64);
	char *s = malloc(len);

	FUZZ_ASSERT(s);
	sodium_bin2base64(s, len, p, n, B64);
	return s;
}

/* Decode one segment; the caller frees.  NULL when it does not decode. */
static unsigned char *unb64(const char *s, size_t n, size_t *outlen)
{
	unsigned char *out = malloc(n + 1);
	const char *end = NULL;

	FUZZ_ASSERT(out);
	if (sodium_base642bin(out, n + 1, s, n, NULL, outlen, &end, B64) != 0 || end != s + n) {
		free(out);
		return NULL;
	}
	return out;
}

/* The segment's text is the canonical encoding of its bytes.  libsodium
 * 1.0.18 reads any byte >= 0x80 as '_' (a signed char in its decoder), so
 * unless FUZZ_JWT_STRICT_B64 is defined such a byte counts as '_' here:
 * the quirk is known and only makes the signature's spelling malleable,
 * never forgeable (the HMAC covers the header and payload text). */
static void check_canonical(const char *s, size_t n, const unsigned char *raw, size_t len)
{
	char *again = b64(raw, len);
	size_t i;

	FUZZ_ASSERT(strlen(again) == n);
	for (i = 0; i < n; i++) {
#ifndef FUZZ_JWT_STRICT_B64
		if ((unsigned char)s[i] >= 0x80 && again[i] == '_')
			continue;
#endif
		FUZZ_ASSERT(s[i] == again[i]);
	}
	free(again);
}

/* Decode a JSON segment that must be canonical; the caller frees. */
static cJSON *canonical_json_segment(const char *s, size_t n)
{
	size_t len;
	unsigned char *raw = unb64(s, n, &len);
	cJSON *json;

	FUZZ_ASSERT(raw);
	check_canonical(s, n, raw, len);
	json = cJSON_ParseWithLength((const char *)raw, len);
	free(raw);
	return json;
}

static long long number_claim(const cJSON *payload, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(payload, name);

	FUZZ_ASSERT(cJSON_IsNumber(v));
	return (long long)v->valuedouble;
}

/* Everything an accepted token must satisfy, checked independently. */
static void check_accepted(const char *token, const struct jwt_claims *c)
{
	const char *dot1 = strchr(token, '.'), *dot2, *sig_s;
	unsigned char mac[crypto_auth_hmacsha256_BYTES], *sig;
	size_t siglen;
	cJSON *header, *payload;
	const cJSON *alg, *type, *jti;
	struct jwt_claims again;

	FUZZ_ASSERT(strlen(token) <= JWT_MAX_LEN);
	FUZZ_ASSERT(dot1);
	dot2 = strchr(dot1 + 1, '.');
	FUZZ_ASSERT(dot2 && !strchr(dot2 + 1, '.'));
	sig_s = dot2 + 1;

	sig = unb64(sig_s, strlen(sig_s), &siglen);
	FUZZ_ASSERT(sig && siglen == sizeof mac);
	crypto_auth_hmacsha256(mac, (const unsigned char *)token, (size_t)(dot2 - token), key);
	FUZZ_ASSERT(memcmp(mac, sig, sizeof mac) == 0);
	check_canonical(sig_s, strlen(sig_s), sig, siglen);
	free(sig);

	header = canonical_json_segment(token, (size_t)(dot1 - token));
	payload = canonical_json_segment(dot1 + 1, (size_t)(dot2 - dot1 - 1));
	alg = cJSON_GetObjectItemCaseSensitive(header, "alg");
	FUZZ_ASSERT(cJSON_IsString(alg) && strcmp(alg->valuestring, "HS256") == 0);
	FUZZ_ASSERT(cJSON_IsObject(payload));
	type = cJSON_GetObjectItemCaseSensitive(payload, "token_type");
	FUZZ_ASSERT(cJSON_IsString(type));
	FUZZ_ASSERT((c->type == JWT_ACCESS && strcmp(type->valuestring, "access") == 0) ||
		    (c->type == JWT_REFRESH && strcmp(type->valuestring, "refresh") == 0));
	FUZZ_ASSERT(c->exp == number_claim(payload, "exp"));
	FUZZ_ASSERT(c->user_id == number_claim(payload, "user_id"));
	FUZZ_ASSERT(c->exp > FUZZ_NOW);
	FUZZ_ASSERT(c->user_id >= -9000000000000000LL && c->user_id <= 9000000000000000LL);
	/* SimpleJWT: a token has an id; it fits claims.jti whole. */
	jti = cJSON_GetObjectItemCaseSensitive(payload, "jti");
	FUZZ_ASSERT(cJSON_IsString(jti) && strcmp(jti->valuestring, c->jti) == 0);
	FUZZ_ASSERT(c->jti[0] != '\0' && memchr(c->jti, '\0', sizeof c->jti) != NULL);
	cJSON_Delete(header);
	cJSON_Delete(payload);

	/* Another key, or the very second it expires: refused. */
	FUZZ_ASSERT(jwt_verify(token, other_key, sizeof other_key - 1, FUZZ_NOW, &again) < 0);
	FUZZ_ASSERT(jwt_verify(token, key, keylen, (time_t)c->exp, &again) < 0);
	/* Verifying is a pure function of its inputs. */
	FUZZ_ASSERT(jwt_verify(token, key, keylen, FUZZ_NOW, &again) == 0);
	FUZZ_ASSERT(again.type == c->type && again.exp == c->exp && again.user_id == c->user_id &&
		    strcmp(again.jti, c->jti) == 0);
}

static void verify_token(const char *token)
{
	struct jwt_claims c;

	memset(&c, 0xa5, sizeof c);
	if (jwt_verify(token, key, keylen, FUZZ_NOW, &c) == 0)
		check_accepted(token, &c);
}

/* 'S': sign "<header>\n<payload>" ourselves, then verify. */
static void signed_parts(const uint8_t *p, size_t n)
{
	const uint8_t *nl = memchr(p, '\n', n);
	size_t hlen = nl ? (size_t)(nl - p) : n;
	const uint8_t *pl = nl ? nl + 1 : p + n;
	size_t plen = nl ? n - hlen - 1 : 0;
	char *h64 = b64(p, hlen), *p64 = b64(pl, plen), *s64, *token;
	unsigned char mac[crypto_auth_hmacsha256_BYTES];
	size_t tlen = strlen(h64) + 1 + strlen(p64);

	token = malloc(tlen + 1 + sodium_base64_ENCODED_LEN(sizeof mac, B64));
	FUZZ_ASSERT(token);
	memcpy(token, h64, strlen(h64));
	token[strlen(h64)] = '.';
	memcpy(token + strlen(h64) + 1, p64, strlen(p64));
	crypto_auth_hmacsha256(mac, (const unsigned char *)token, tlen, key);
	s64 = b64(mac, sizeof mac);
	token[tlen] = '.';
	memcpy(token + tlen + 1, s64, strlen(s64) + 1);
	verify_token(token);
	free(h64);
	free(p64);
	free(s64);
	free(token);
}

static uint64_t take(const uint8_t **p, size_t *n, size_t bytes)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; i < bytes; i++) {
		v = v << 8 | (*n ? **p : 0);
		if (*n) {
			(*p)++;
			(*n)--;
		}
	}
	return v;
}

/* 'R': jwt_sign() then jwt_verify() at a chosen time. */
static void round_trip(const uint8_t *p, size_t n)
{
	enum jwt_type type = take(&p, &n, 1) & 1 ? JWT_REFRESH : JWT_ACCESS;
	long long user_id = (long long)take(&p, &n, 8);
	time_t now = (time_t)take(&p, &n, 4); /* 0 .. 2106: a real clock */
	long lifetime = (long)(int32_t)take(&p, &n, 4);
	long long at = (long long)now + (int32_t)take(&p, &n, 4);
	struct jwt_claims c;
	struct buf out;
	int rc, want;

	buf_init(&out, JWT_MAX_LEN);
	FUZZ_ASSERT(jwt_sign(&out, type, user_id, NULL, now, lifetime, key, keylen) == 0);
	rc = jwt_verify(buf_str(&out), key, keylen, (time_t)at, &c);
	want = (long long)now + lifetime > at && user_id >= -9000000000000000LL &&
	       user_id <= 9000000000000000LL;
	FUZZ_ASSERT(rc == (want ? 0 : -1));
	if (rc == 0) {
		FUZZ_ASSERT(c.type == type && c.user_id == user_id &&
			    c.exp == (long long)now + lifetime && c.iat == (long long)now);
		FUZZ_ASSERT(strlen(c.jti) == 32 && strspn(c.jti, "0123456789abcdef") == 32);
	}
	buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *token;

	if (size >= 1 && data[0] == 'S') {
		signed_parts(data + 1, size - 1);
		return 0;
	}
	if (size >= 1 && data[0] == 'R') {
		round_trip(data + 1, size - 1);
		return 0;
	}
	if (size >= 1 && data[0] == 'T') {
		data++;
		size--;
	}
	/* Tokens arrive as C strings (a header or a query parameter). */
	token = strndup((const char *)data, size);
	FUZZ_ASSERT(token);
	verify_token(token);
	free(token);
	return 0;
}
