/*
 * jwt — sign and verify HS256 tokens (see jwt.h).
 * The header is fixed; we never trust a token's header for anything but
 * checking that it says HS256.
 */
#include "jwt.h"

#include <cjson/cJSON.h>
#include <sodium.h>
#include <string.h>

static const char jwt_header_json[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

int jwt_b64_encode(struct buf *out, const unsigned char *p, size_t n)
{
	size_t len = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	char tmp[1024];

	if (len > sizeof tmp)
		return -1;
	sodium_bin2base64(tmp, len, p, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	return buf_puts(out, tmp) == BUF_OK ? 0 : -1;
}

int jwt_b64_decode(const char *s, size_t n, unsigned char *out, size_t cap, size_t *outlen)
{
	const char *end = NULL;
	size_t i;

	/* libsodium 1.0.18 reads bytes 0x80-0xff as '_': a token would have
	 * several spellings.  Only the URL-safe alphabet is a token. */
	for (i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_'))
			return -1;
	}

	if (sodium_base642bin(out, cap, s, n, NULL, outlen, &end,
			      sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
		return -1;
	return end == s + n ? 0 : -1;
}

static void hmac(unsigned char mac[crypto_auth_hmacsha256_BYTES], const char *msg, size_t n,
		 const unsigned char *key, size_t keylen)
{
	crypto_auth_hmacsha256_state st;

	crypto_auth_hmacsha256_init(&st, key, keylen);
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)msg, n);
	crypto_auth_hmacsha256_final(&st, mac);
}

int jwt_sign(struct buf *out, enum jwt_type type, long long user_id, const char *hash_password,
	     time_t now, long lifetime, const unsigned char *key, size_t keylen)
{
	unsigned char jti_raw[16], mac[crypto_auth_hmacsha256_BYTES];
	char jti[33], payload[320];
	size_t start = out->len;
	int n;

	/* The claim is ours (hex); anything else would need JSON escaping. */
	if (hash_password && (strlen(hash_password) != JWT_CLAIM_HASH_LEN ||
			      strspn(hash_password, "0123456789ABCDEF") != JWT_CLAIM_HASH_LEN))
		return -1;
	randombytes_buf(jti_raw, sizeof jti_raw);
	sodium_bin2hex(jti, sizeof jti, jti_raw, sizeof jti_raw);
	n = snprintf(payload, sizeof payload,
		     "{\"token_type\":\"%s\",\"exp\":%lld,\"iat\":%lld,\"jti\":\"%s\",\"user_id\":%"
		     "lld%s%s%s}",
		     type == JWT_ACCESS ? "access" : "refresh", (long long)now + lifetime,
		     (long long)now, jti, user_id, hash_password ? ",\"hash_password\":\"" : "",
		     hash_password ? hash_password : "", hash_password ? "\"" : "");
	if (n < 0 || (size_t)n >= sizeof payload)
		return -1;
	if (jwt_b64_encode(out, (const unsigned char *)jwt_header_json,
			   sizeof jwt_header_json - 1) < 0 ||
	    buf_putc(out, '.') != BUF_OK ||
	    jwt_b64_encode(out, (const unsigned char *)payload, (size_t)n) < 0)
		return -1;
	hmac(mac, out->data + start, out->len - start, key, keylen);
	if (buf_putc(out, '.') != BUF_OK || jwt_b64_encode(out, mac, sizeof mac) < 0)
		return -1;
	return 0;
}

/* Decode one base64url JSON segment into a cJSON object (caller frees). */
static cJSON *decode_json_segment(const char *s, size_t n)
{
	unsigned char raw[JWT_MAX_LEN];
	size_t len;

	if (jwt_b64_decode(s, n, raw, sizeof raw, &len) < 0)
		return NULL;
	return cJSON_ParseWithLength((const char *)raw, len);
}

static int claim_int(const cJSON *obj, const char *name, long long *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);

	if (!cJSON_IsNumber(v) || v->valuedouble < -9e15 || v->valuedouble > 9e15)
		return -1;
	*out = (long long)v->valuedouble;
	return 0;
}

int jwt_verify(const char *token, const unsigned char *key, size_t keylen, time_t now,
	       struct jwt_claims *claims)
{
	unsigned char mac[crypto_auth_hmacsha256_BYTES], sig[64];
	const char *dot1, *dot2;
	cJSON *header = NULL, *payload = NULL;
	const cJSON *alg, *type, *jti, *hash;
	size_t len, siglen;
	int rc = -1;

	len = strnlen(token, JWT_MAX_LEN + 1);
	if (len > JWT_MAX_LEN)
		return -1;
	dot1 = memchr(token, '.', len);
	if (!dot1)
		return -1;
	dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
	if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
		return -1;

	/* Signature first: nothing else in an unsigned token is worth parsing. */
	if (jwt_b64_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), sig, sizeof sig, &siglen) <
		    0 ||
	    siglen != sizeof mac)
		return -1;
	hmac(mac, token, (size_t)(dot2 - token), key, keylen);
	if (sodium_memcmp(mac, sig, sizeof mac) != 0)
		return -1;

	header = decode_json_segment(token, (size_t)(dot1 - token));
	alg = cJSON_GetObjectItemCaseSensitive(header, "alg");
	if (!cJSON_IsString(alg) || strcmp(alg->valuestring, "HS256") != 0)
		goto out;

	payload = decode_json_segment(dot1 + 1, (size_t)(dot2 - dot1 - 1));
	if (!cJSON_IsObject(payload))
		goto out;
	type = cJSON_GetObjectItemCaseSensitive(payload, "token_type");
	if (!cJSON_IsString(type))
		goto out;
	if (strcmp(type->valuestring, "access") == 0)
		claims->type = JWT_ACCESS;
	else if (strcmp(type->valuestring, "refresh") == 0)
		claims->type = JWT_REFRESH;
	else
		goto out;
	if (claim_int(payload, "exp", &claims->exp) < 0 ||
	    claim_int(payload, "user_id", &claims->user_id) < 0)
		goto out;
	if (claim_int(payload, "iat", &claims->iat) < 0)
		claims->iat = 0;
	/* SimpleJWT: "Token has no id". */
	jti = cJSON_GetObjectItemCaseSensitive(payload, "jti");
	if (!cJSON_IsString(jti) || !jti->valuestring[0] ||
	    strlen(jti->valuestring) >= sizeof claims->jti)
		goto out;
	memcpy(claims->jti, jti->valuestring, strlen(jti->valuestring) + 1);
	/* Optional here; its absence is a mismatch where it is compared. */
	hash = cJSON_GetObjectItemCaseSensitive(payload, "hash_password");
	claims->hash_password[0] = '\0';
	if (cJSON_IsString(hash) && strlen(hash->valuestring) == JWT_CLAIM_HASH_LEN)
		memcpy(claims->hash_password, hash->valuestring, JWT_CLAIM_HASH_LEN + 1);
	if (claims->exp <= (long long)now)
		goto out;
	rc = 0;
out:
	cJSON_Delete(header);
	cJSON_Delete(payload);
	return rc;
}
