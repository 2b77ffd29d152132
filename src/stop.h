/*
 * stop — POST /api/chat/stop/ {"message_id": N} or {"conversation_id":
 * "..."}: end a generation now, whichever chat_stream process runs it.
 */
#ifndef JARVAS_STOP_H
#define JARVAS_STOP_H

#include "request.h"

void stop_post(struct request *r);

#endif
