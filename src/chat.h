/*
 * chat — the non-streaming endpoints of the `chat` responder:
 * POST /api/chat/ and GET/DELETE /api/chat/history/.
 */
#ifndef JARVAS_CHAT_H
#define JARVAS_CHAT_H

#include "request.h"

void chat_post(struct request *r);
void chat_history_get(struct request *r);
void chat_history_delete(struct request *r);

#endif
