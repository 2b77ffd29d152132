/*
 * jarvas-admin — the operator's command line behind spawn/jarvasctl:
 * create or migrate the database and secret key, and manage users.
 *
 *   jarvas-admin init          (refuses to make a key while users exist)
 *   jarvas-admin new-key       (a new secret.key, on purpose)
 *   jarvas-admin adduser NAME     (password: asked twice at a terminal,
 *   jarvas-admin passwd NAME       else one line on stdin; 8+ characters)
 *   jarvas-admin deluser NAME
 *   jarvas-admin users
 *   jarvas-admin context NAME     (the user's prompt context: all of stdin)
 *
 * Exit status: 0 done, 1 failed (reason on stderr), 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "db.h"
#include "password.h"
#include "users.h"

#define PASSWORD_MIN_CHARS 8
#define PASSWORD_MAX_BYTES 4096

static int usage(void)
{
	fprintf(stderr, "usage: jarvas-admin init | new-key | adduser NAME | passwd NAME | "
			"deluser NAME | users | context NAME\n");
	return 2;
}

/* Write 64 fresh hex characters to path, mode 0600, exclusively (an
 * existing file stays: *exists is set).  0 or -1 (reason on stderr). */
static int write_key(const char *path, int *exists)
{
	unsigned char raw[32];
	char hex[65];
	int fd;

	*exists = 0;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		if (errno == EEXIST) {
			*exists = 1;
			return 0;
		}
		fprintf(stderr, "jarvas-admin: cannot create %s: %s\n", path, strerror(errno));
		return -1;
	}
	randombytes_buf(raw, sizeof raw);
	sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
	sodium_memzero(raw, sizeof raw);
	hex[64] = '\n';
	if (write(fd, hex, sizeof hex) != (ssize_t)sizeof hex || fsync(fd) < 0) {
		fprintf(stderr, "jarvas-admin: cannot write %s: %s\n", path, strerror(errno));
		sodium_memzero(hex, sizeof hex);
		close(fd);
		unlink(path);
		return -1;
	}
	sodium_memzero(hex, sizeof hex);
	return close(fd);
}

/* Users in the database (0 when it has no users table yet), or -1. */
static long count_users(struct db *d)
{
	static const char sql[] = "SELECT count(*) FROM users";
	struct db_stmt *st = db_stmt(d, sql);
	long n = -1;

	if (st && db_step(st) == DB_ROW)
		n = (long)db_column_int64(st, 0);
	if (st)
		db_reset(st);
	return n;
}

/* The key is created once, when there is nobody whose tokens it would
 * end: a missing key with users in the database is a lost key, and a
 * new one is made only on purpose (new-key). */
static int make_secret(struct db *d)
{
	long users;
	int exists;

	if (config.secret)
		return 0; /* JARVAS_SECRET_KEY is set: no file needed */
	if (access(config.secret_path, F_OK) == 0)
		return 0;
	users = count_users(d);
	if (users < 0) {
		fprintf(stderr, "jarvas-admin: cannot count users: %s\n", db_errmsg(d));
		return -1;
	}
	if (users > 0) {
		fprintf(stderr,
			"jarvas-admin: %s is missing, but the database has %ld user%s: refusing to "
			"make a new key, which would end every session and token they hold.\n"
			"  Restore the file from a backup (the running responders, if any, keep "
			"the key in memory until they stop),\n"
			"  or make a new key on purpose: jarvasctl new-key\n",
			config.secret_path, users, users == 1 ? "" : "s");
		return -1;
	}
	return write_key(config.secret_path, &exists);
}

static int cmd_init(void)
{
	char err[512];
	struct db *d;
	int rc;

	d = db_open(config.db_path, 1);
	if (!d) {
		fprintf(stderr, "jarvas-admin: cannot open %s\n", config.db_path);
		return 1;
	}
	rc = db_migrate(d, err, sizeof err);
	chmod(config.db_path, 0600);
	if (rc < 0)
		fprintf(stderr, "jarvas-admin: %s\n", err);
	else
		rc = make_secret(d);
	db_close(d);
	return rc < 0 ? 1 : 0;
}

/* A new key replaces the file at once (written aside, then renamed);
 * the responders use it from their next start or restart. */
static int cmd_new_key(void)
{
	struct buf tmp;
	int exists, rc = 1;

	if (getenv("JARVAS_SECRET_KEY") && *getenv("JARVAS_SECRET_KEY")) {
		fprintf(stderr, "jarvas-admin: the key comes from JARVAS_SECRET_KEY: change it "
				"there\n");
		return 1;
	}
	buf_init(&tmp, 8192);
	if (buf_printf(&tmp, "%s.new", config.secret_path) != BUF_OK) {
		fprintf(stderr, "jarvas-admin: path too long\n");
		goto out;
	}
	unlink(buf_str(&tmp)); /* left by an interrupted new-key */
	if (write_key(buf_str(&tmp), &exists) < 0)
		goto out;
	if (rename(buf_str(&tmp), config.secret_path) < 0) {
		fprintf(stderr, "jarvas-admin: cannot replace %s: %s\n", config.secret_path,
			strerror(errno));
		unlink(buf_str(&tmp));
		goto out;
	}
	printf("new key written to %s; every token signed with the old key stops working once "
	       "the responders use it:\nrun jarvasctl restart (or start), then log in again.\n",
	       config.secret_path);
	rc = 0;
out:
	buf_free(&tmp);
	return rc;
}

/* Read stdin: one line (password) or everything (context), capped. */
static int read_stdin(struct buf *out, int one_line)
{
	char chunk[4096];
	size_t n;

	while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
		if (buf_append(out, chunk, n) != BUF_OK)
			return -1;
	if (ferror(stdin))
		return -1;
	if (one_line) {
		size_t len = strcspn(buf_str(out), "\r\n");
		out->len = len;
		if (out->data)
			out->data[len] = '\0';
	}
	return 0;
}

/* Passwords at a terminal: the settings to restore, for the signal handler
 * too (a ^C at the prompt must not leave the terminal without echo).
 * Written only by the main thread, before the handler can run. */
static struct termios tty_saved;
static volatile sig_atomic_t tty_quiet;

static void tty_restore(void)
{
	if (tty_quiet)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &tty_saved);
	tty_quiet = 0;
}

static void tty_on_signal(int sig)
{
	tty_restore();
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Prompt on stderr and read one line from the terminal without echo; the
 * Enter that ends it is echoed (ECHONL), so the cursor moves on. */
static int tty_read_secret(const char *prompt, struct buf *out)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP};
	struct termios quiet;
	size_t i;
	ssize_t n;
	char c;
	int rc = -1;

	buf_reset(out);
	if (tcgetattr(STDIN_FILENO, &tty_saved) < 0)
		return -1;
	for (i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		signal(sigs[i], tty_on_signal);
	quiet = tty_saved;
	quiet.c_lflag &= ~(tcflag_t)ECHO;
	quiet.c_lflag |= ECHONL | ICANON;
	if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) < 0)
		goto out;
	tty_quiet = 1;
	/* Only now: what is typed once the prompt shows is never echoed. */
	fputs(prompt, stderr);
	fflush(stderr);
	for (;;) {
		n = read(STDIN_FILENO, &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto out;
		if (n == 0 || c == '\n' || c == '\r')
			break; /* Enter, or ^D */
		if (buf_putc(out, c) != BUF_OK)
			goto out;
	}
	rc = 0;
out:
	tty_restore();
	for (i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		signal(sigs[i], SIG_DFL);
	return rc;
}

/* Characters, not bytes: a password of four two-byte letters is short. */
static size_t utf8_chars(const char *s, size_t n)
{
	size_t i, chars = 0;

	for (i = 0; i < n; i++)
		if (((unsigned char)s[i] & 0xC0) != 0x80)
			chars++;
	return chars;
}

static int password_acceptable(const struct buf *pw)
{
	if (pw->len == 0) {
		fprintf(stderr, "jarvas-admin: the password is empty\n");
		return 0;
	}
	if (utf8_chars(buf_str(pw), pw->len) < PASSWORD_MIN_CHARS) {
		fprintf(stderr,
			"jarvas-admin: the password is too short: use at least %d characters\n",
			PASSWORD_MIN_CHARS);
		return 0;
	}
	return 1;
}

/* At a terminal: asked twice, both must match; three tries. */
static int ask_password(struct buf *pw)
{
	struct buf again;
	int tries, rc = -1;

	buf_init(&again, PASSWORD_MAX_BYTES);
	if (buf_reserve(&again, PASSWORD_MAX_BYTES) != BUF_OK)
		goto out;
	for (tries = 0; tries < 3 && rc < 0; tries++) {
		if (tty_read_secret("Password: ", pw) < 0) {
			fprintf(stderr,
				"jarvas-admin: cannot read the password (at most %d bytes)\n",
				PASSWORD_MAX_BYTES);
			break;
		}
		if (!password_acceptable(pw))
			continue;
		if (tty_read_secret("Password (again): ", &again) < 0)
			break;
		if (again.len == pw->len && memcmp(buf_str(&again), buf_str(pw), pw->len) == 0)
			rc = 0;
		else
			fprintf(stderr, "jarvas-admin: the passwords do not match\n");
	}
out:
	if (again.data)
		sodium_memzero(again.data, again.cap);
	buf_free(&again);
	return rc;
}

/* The password: asked at a terminal, else one line of stdin (scripts,
 * tests, jarvasctl run).  0 with an acceptable password in pw, or -1. */
static int read_password(struct buf *pw)
{
	/* One allocation up front: growing would leave copies behind. */
	if (buf_reserve(pw, PASSWORD_MAX_BYTES) != BUF_OK)
		return -1;
	if (isatty(STDIN_FILENO))
		return ask_password(pw);
	if (read_stdin(pw, 1) < 0) {
		fprintf(stderr,
			"jarvas-admin: give the password as one line (at most %d bytes) "
			"on stdin\n",
			PASSWORD_MAX_BYTES);
		return -1;
	}
	return password_acceptable(pw) ? 0 : -1;
}

static int cmd_password(const char *name, int create)
{
	char hash[PASSWORD_HASH_MAX], err[256];
	struct buf pw;
	struct db *d = NULL;
	struct user u;
	int rc = 1, changed, found;

	buf_init(&pw, PASSWORD_MAX_BYTES);
	if (create && !users_name_valid(name)) {
		fprintf(stderr,
			"jarvas-admin: invalid username: use 1-150 letters, digits and @.+-_\n");
		goto out;
	}
	d = db_open(config.db_path, 0);
	if (!d) {
		fprintf(stderr, "jarvas-admin: cannot open %s (run jarvasctl start first)\n",
			config.db_path);
		goto out;
	}
	/* Before asking for a password that could not be used anyway. */
	found = users_by_name(d, name, &u);
	if (found == 1)
		users_clear(&u);
	if (found < 0 || found == create) {
		fprintf(stderr, "jarvas-admin: %s\n",
			found < 0 ? db_errmsg(d)
			: create  ? "that user exists already"
				  : "no such user");
		goto out;
	}
	if (read_password(&pw) < 0)
		goto out;
	if (password_hash(buf_str(&pw), hash) < 0) {
		fprintf(stderr, "jarvas-admin: hashing failed\n");
		goto out;
	}
	if (create) {
		if (users_create(d, name, hash, err, sizeof err) < 0) {
			fprintf(stderr, "jarvas-admin: %s\n", err);
			goto out;
		}
	} else {
		changed = users_set_password(d, name, hash);
		if (changed <= 0) {
			fprintf(stderr, "jarvas-admin: %s\n",
				changed == 0 ? "no such user" : db_errmsg(d));
			goto out;
		}
	}
	printf(create ? "created user %s\n" : "changed the password of %s\n", name);
	rc = 0;
out:
	db_close(d);
	if (pw.data)
		sodium_memzero(pw.data, pw.cap);
	buf_free(&pw);
	return rc;
}

static int cmd_update(const char *name, int delete)
{
	struct buf text;
	struct db *d;
	int changed;

	buf_init(&text, 64 * 1024);
	if (!delete &&read_stdin(&text, 0) < 0) {
		fprintf(stderr, "jarvas-admin: context too long (at most 64 KiB)\n");
		buf_free(&text);
		return 1;
	}
	d = db_open(config.db_path, 0);
	if (!d) {
		fprintf(stderr, "jarvas-admin: cannot open %s\n", config.db_path);
		buf_free(&text);
		return 1;
	}
	changed = delete ? users_delete(d, name) : users_set_context(d, name, buf_str(&text));
	if (changed <= 0)
		fprintf(stderr, "jarvas-admin: %s\n", changed == 0 ? "no such user" : db_errmsg(d));
	else
		printf(delete ? "deleted user %s\n" : "set the context of %s\n", name);
	db_close(d);
	buf_free(&text);
	return changed > 0 ? 0 : 1;
}

static int cmd_users(void)
{
	static const char sql[] =
		"SELECT username, is_active, created_at FROM users ORDER BY username";
	struct db_stmt *st;
	struct db *d = db_open(config.db_path, 0);
	int rc;

	if (!d) {
		fprintf(stderr, "jarvas-admin: cannot open %s\n", config.db_path);
		return 1;
	}
	st = db_stmt(d, sql);
	/* Tab-separated like the rows, so scripts can skip one line. */
	if (st)
		printf("username\tactive\tcreated_at\n");
	while (st && (rc = db_step(st)) == DB_ROW)
		printf("%s\t%d\t%s\n", db_column_text(st, 0), db_column_int(st, 1),
		       db_column_text(st, 2));
	rc = st && rc == DB_DONE ? 0 : 1;
	if (rc)
		fprintf(stderr, "jarvas-admin: %s\n", db_errmsg(d));
	db_close(d);
	return rc;
}

int main(int argc, char **argv)
{
	char err[512];
	int rc;

	if (argc < 2)
		return usage();
	if (config_load("admin", 0, err, sizeof err) < 0) {
		fprintf(stderr, "jarvas-admin: configuration: %s\n", err);
		return 1;
	}
	if (password_init(1) < 0) {
		fprintf(stderr, "jarvas-admin: libsodium initialisation failed\n");
		return 1;
	}
	if (strcmp(argv[1], "init") == 0 && argc == 2)
		rc = cmd_init();
	else if (strcmp(argv[1], "new-key") == 0 && argc == 2)
		rc = cmd_new_key();
	else if (strcmp(argv[1], "adduser") == 0 && argc == 3)
		rc = cmd_password(argv[2], 1);
	else if (strcmp(argv[1], "passwd") == 0 && argc == 3)
		rc = cmd_password(argv[2], 0);
	else if (strcmp(argv[1], "deluser") == 0 && argc == 3)
		rc = cmd_update(argv[2], 1);
	else if (strcmp(argv[1], "context") == 0 && argc == 3)
		rc = cmd_update(argv[2], 0);
	else if (strcmp(argv[1], "users") == 0 && argc == 2)
		rc = cmd_users();
	else
		rc = usage();
	config_free();
	return rc;
}
