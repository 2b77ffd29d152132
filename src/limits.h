/*
 * limits — caps that must hold across every responder process: at most
 * config.max_streams_per_user open streams per user.
 *
 * Each chat_stream process maps a small file $STATE/run/streams.<pid>
 * with one slot per stream it can hold (config.streams_max), each holding
 * the user id of the open stream in it (0: none).  Admitting a stream writes the slot first and
 * then counts that user's slots in every live process, so two racing
 * requests can both be refused but never both admitted past the cap.  A
 * process that dies takes its slots with it: files of dead pids are not
 * counted, so nothing leaks.  Other processes' files stay mapped; a new
 * process is seen within a second.
 */
#ifndef JARVAS_LIMITS_H
#define JARVAS_LIMITS_H

/* 0, or -1 (the cap is then not enforced in this process; logged). */
int limits_open(int slots);
void limits_close(void);

/* 0 admitted, with *slot to give back to limits_stream_leave() (-1 when
 * the cap is not enforced here), or -1: the user already has the maximum
 * open. */
int limits_stream_enter(long long user_id, int *slot);
void limits_stream_leave(int slot);

#endif
