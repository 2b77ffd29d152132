/*
 * chat — the non-streaming endpoints of the `chat` responder:
 * POST /api/chat/, GET/DELETE /api/chat/history/, GET
 * /api/chat/conversations/ and PATCH/DELETE /api/chat/conversations/<id>/.
 */
#ifndef JARVAS_CHAT_H
#define JARVAS_CHAT_H

#include "request.h"

void chat_post(struct request *r);
void chat_history_get(struct request *r);
void chat_history_delete(struct request *r);
void chat_conversations_get(struct request *r);
void chat_conversation_patch(struct request *r);
void chat_conversation_delete(struct request *r);

#endif
