/*
 * log — lines on stderr an operator can grep (spawn/jarvasctl sends them to
 * log/<responder>.log).  Every line is key=value pairs starting with the
 * time and the responder, written with a single write(2) so lines from
 * several threads never interleave.
 */
#ifndef JARVAS_LOG_H
#define JARVAS_LOG_H

struct log_request_fields {
	const char *method;
	const char *path;
	int status;
	long long user_id; /* 0: anonymous */
	double duration_ms;
	double first_chunk_ms; /* < 0: not a stream */
	unsigned long long bytes;
	const char *note; /* extra key=value pairs or NULL */
};

void log_request(const struct log_request_fields *f);
/* Free-form event: level is "info", "warn" or "error". */
void log_event(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_event("error", __VA_ARGS__)
#define log_warn(...) log_event("warn", __VA_ARGS__)
#define log_info(...) log_event("info", __VA_ARGS__)

#endif
