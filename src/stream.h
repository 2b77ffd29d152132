/*
 * stream — GET/POST /api/chat/stream/: one exchange relayed to the client
 * as Server-Sent Events while the model writes it.
 */
#ifndef JARVAS_STREAM_H
#define JARVAS_STREAM_H

#include "request.h"

void stream_get(struct request *r);
void stream_post(struct request *r);

#endif
