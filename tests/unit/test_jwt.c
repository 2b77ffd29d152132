/* Unit tests: base64url, HS256 JWT signing and verification, and the
 * hash_password claim. */
#include <sodium.h>
#include <stdlib.h>

#include "check.h"
#include "jwt.h"
#include "users.h"

static const unsigned char key[] = "0123456789abcdef0123456789abcdef";
#define KEYLEN (sizeof key - 1)

/* Build header.payload.signature from JSON texts, signed with k. */
static char *forge(const char *header, const char *payload, const unsigned char *k, size_t klen)
{
	struct buf b;
	unsigned char mac[crypto_auth_hmacsha256_BYTES];
	crypto_auth_hmacsha256_state st;

	buf_init(&b, 8192);
	jwt_b64_encode(&b, (const unsigned char *)header, strlen(header));
	CHECK(buf_putc(&b, '.') == BUF_OK);
	jwt_b64_encode(&b, (const unsigned char *)payload, strlen(payload));
	crypto_auth_hmacsha256_init(&st, k, klen);
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)b.data, b.len);
	crypto_auth_hmacsha256_final(&st, mac);
	CHECK(buf_putc(&b, '.') == BUF_OK);
	jwt_b64_encode(&b, mac, sizeof mac);
	return buf_steal(&b);
}

static void test_base64url(void)
{
	static const struct {
		const char *raw, *enc;
	} cases[] = {
		{"", ""}, {"f", "Zg"}, {"fo", "Zm8"}, {"foo", "Zm9v"}, {"\xfb\xff", "-_8"},
	};
	unsigned char out[64];
	size_t n, i;

	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct buf b;

		buf_init(&b, 64);
		CHECK(jwt_b64_encode(&b, (const unsigned char *)cases[i].raw,
				     strlen(cases[i].raw)) == 0);
		CHECK_STR(buf_str(&b), cases[i].enc);
		CHECK(jwt_b64_decode(cases[i].enc, strlen(cases[i].enc), out, sizeof out, &n) == 0);
		CHECK(n == strlen(cases[i].raw) && memcmp(out, cases[i].raw, n) == 0);
		buf_free(&b);
	}
	CHECK(jwt_b64_decode("Zm9v=", 5, out, sizeof out, &n) < 0); /* padding */
	CHECK(jwt_b64_decode("Zm+v", 4, out, sizeof out, &n) < 0);  /* not url-safe */
	CHECK(jwt_b64_decode("Z", 1, out, sizeof out, &n) < 0);	    /* truncated */
}

static void test_sign_verify(void)
{
	struct jwt_claims c;
	struct buf b;
	time_t now = 1700000000;

	buf_init(&b, JWT_MAX_LEN);
	CHECK(jwt_sign(&b, JWT_ACCESS, 42, NULL, now, 300, key, KEYLEN) == 0);
	CHECK(jwt_verify(buf_str(&b), key, KEYLEN, now + 10, &c) == 0);
	CHECK(c.type == JWT_ACCESS && c.user_id == 42 && c.exp == now + 300 && c.iat == now);
	CHECK(strlen(c.jti) == 32);
	/* Expired, wrong key, tampered. */
	CHECK(jwt_verify(buf_str(&b), key, KEYLEN, now + 300, &c) < 0);
	CHECK(jwt_verify(buf_str(&b), (const unsigned char *)"other", 5, now, &c) < 0);
	b.data[b.len - 2] ^= 1;
	CHECK(jwt_verify(buf_str(&b), key, KEYLEN, now, &c) < 0);
	buf_reset(&b);
	CHECK(jwt_sign(&b, JWT_REFRESH, 7, NULL, now, 86400, key, KEYLEN) == 0);
	CHECK(jwt_verify(buf_str(&b), key, KEYLEN, now, &c) == 0 && c.type == JWT_REFRESH);
	buf_free(&b);
}

static void test_rejects(void)
{
	static const char good_payload[] = "{\"token_type\":\"access\",\"exp\":9999999999,\"iat\":"
					   "1,\"jti\":\"x\",\"user_id\":1}";
	static const struct {
		const char *header, *payload;
	} bad[] = {
		{"{\"alg\":\"none\",\"typ\":\"JWT\"}", good_payload},
		{"{\"alg\":\"HS512\",\"typ\":\"JWT\"}", good_payload},
		{"{\"typ\":\"JWT\"}", good_payload},
		{"not json", good_payload},
		{"{\"alg\":\"HS256\"}",
		 "{\"token_type\":\"other\",\"exp\":9999999999,\"user_id\":1}"},
		{"{\"alg\":\"HS256\"}", "{\"token_type\":\"access\",\"user_id\":1}"},
		{"{\"alg\":\"HS256\"}",
		 "{\"token_type\":\"access\",\"exp\":\"soon\",\"user_id\":1}"},
		{"{\"alg\":\"HS256\"}", "{\"token_type\":\"access\",\"exp\":9999999999}"},
		{"{\"alg\":\"HS256\"}", "[1,2]"},
		/* SimpleJWT: "Token has no id". */
		{"{\"alg\":\"HS256\"}",
		 "{\"token_type\":\"access\",\"exp\":9999999999,\"user_id\":1}"},
	};
	struct jwt_claims c;
	char *t;
	size_t i;

	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		t = forge(bad[i].header, bad[i].payload, key, KEYLEN);
		CHECK(jwt_verify(t, key, KEYLEN, 1000, &c) < 0);
		free(t);
	}
	t = forge("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", good_payload, key, KEYLEN);
	CHECK(jwt_verify(t, key, KEYLEN, 1000, &c) == 0);
	free(t);
	/* Shapes that are not three segments, or absurdly long. */
	CHECK(jwt_verify("", key, KEYLEN, 0, &c) < 0);
	CHECK(jwt_verify("a.b", key, KEYLEN, 0, &c) < 0);
	CHECK(jwt_verify("a.b.c.d", key, KEYLEN, 0, &c) < 0);
	CHECK(jwt_verify("..", key, KEYLEN, 0, &c) < 0);
	{
		char *longtok = malloc(JWT_MAX_LEN + 10);
		memset(longtok, 'a', JWT_MAX_LEN + 9);
		longtok[JWT_MAX_LEN + 9] = '\0';
		CHECK(jwt_verify(longtok, key, KEYLEN, 0, &c) < 0);
		free(longtok);
	}
}

/* SimpleJWT's get_md5_hash_password(): hashlib.md5(p.encode()).hexdigest().upper(). */
static void test_password_claim(void)
{
	static const struct {
		const char *hash, *claim;
	} cases[] = {
		{"", "D41D8CD98F00B204E9800998ECF8427E"},
		{"$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
		 "5118D7984C728A427E395A4C35511142"},
	};
	char claim[JWT_CLAIM_HASH_LEN + 1];
	struct jwt_claims c;
	struct buf b;
	size_t i;

	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		CHECK(users_password_claim(cases[i].hash, claim) == 0);
		CHECK_STR(claim, cases[i].claim);
	}
	/* Signed into the token and read back; without it, read as "". */
	buf_init(&b, JWT_MAX_LEN);
	CHECK(jwt_sign(&b, JWT_ACCESS, 5, cases[1].claim, 1000, 60, key, KEYLEN) == 0);
	CHECK(jwt_verify(buf_str(&b), key, KEYLEN, 1010, &c) == 0);
	CHECK_STR(c.hash_password, cases[1].claim);
	buf_reset(&b);
	CHECK(jwt_sign(&b, JWT_ACCESS, 5, NULL, 1000, 60, key, KEYLEN) == 0);
	CHECK(jwt_verify(buf_str(&b), key, KEYLEN, 1010, &c) == 0);
	CHECK_STR(c.hash_password, "");
	/* Only our own hex goes in: nothing to escape. */
	CHECK(jwt_sign(&b, JWT_ACCESS, 5, "5118d7984c728a427e395a4c35511142", 1000, 60, key,
		       KEYLEN) < 0);
	CHECK(jwt_sign(&b, JWT_ACCESS, 5, "5118D7984C728A427E395A4C35511142\"", 1000, 60, key,
		       KEYLEN) < 0);
	buf_free(&b);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	test_base64url();
	test_sign_verify();
	test_rejects();
	test_password_claim();
	return check_report("test_jwt");
}
