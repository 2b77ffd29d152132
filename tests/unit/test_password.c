/* Unit tests: argon2id password hashing and checking. */
#include "check.h"
#include "password.h"

int main(void)
{
	char h1[PASSWORD_HASH_MAX], h2[PASSWORD_HASH_MAX];

	CHECK(password_init(2) == 0);
	CHECK(password_hash("correct horse", h1) == 0);
	CHECK(password_hash("correct horse", h2) == 0);
	CHECK(strncmp(h1, "$argon2id$", 10) == 0);
	CHECK(strcmp(h1, h2) != 0); /* salted */
	CHECK(password_check(h1, "correct horse") == 1);
	CHECK(password_check(h1, "correct horsE") == 0);
	CHECK(password_check(h1, "") == 0);
	CHECK(password_check(NULL, "anything") == 0);
	CHECK(password_check("not a hash", "x") == 0);
	return check_report("test_password");
}
