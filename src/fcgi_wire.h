/*
 * fcgi_wire — FastCGI records written by hand, for a stream that has left
 * libfcgi.  A chat_stream worker answers the request's headers through
 * libfcgi, then hands the connection to relay.c, which writes every later
 * byte itself on a non-blocking socket: FCGI_STDOUT records, and at the
 * end an empty FCGI_STDOUT and FCGI_END_REQUEST (FastCGI 1.0, sections
 * 3.3, 5.3 and 5.5).  And what may still come in on that socket, read
 * and dropped without ever blocking.
 */
#ifndef JARVAS_FCGI_WIRE_H
#define JARVAS_FCGI_WIRE_H

#include <stddef.h>

#include "buf.h"

#define FCGI_WIRE_HEADER 8

/* Begin an FCGI_STDOUT record in out: room for its header.  Append the
 * content to out, then call fcgi_wire_stdout_end() with the offset this
 * returned.  -1 when out is full. */
long fcgi_wire_stdout_begin(struct buf *out);
/* Fill in the header of the record begun at offset `at`; content longer
 * than a record holds (65,535 bytes) is split into several, and no
 * content gives no record (an empty one ends the stream).  0 or -1. */
int fcgi_wire_stdout_end(struct buf *out, long at, int request_id);

/* Append the end of the request: an empty FCGI_STDOUT (end of stream) and
 * FCGI_END_REQUEST with application status 0.  0 or -1. */
int fcgi_wire_end(struct buf *out, int request_id);

/* Read and drop what the peer sent on a non-blocking socket (after the
 * hand-off nginx sends nothing that matters: at most the rest of
 * FCGI_STDIN), at most `max` bytes per call so one peer cannot hold the
 * caller.  0 while the peer is there, -1 once it closed or failed.
 * Never blocks (the socket is non-blocking); fuzzed with the peer still
 * connected. */
int fcgi_wire_drain(int fd, size_t max);

#endif
