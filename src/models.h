/*
 * models — GET /api/models/: the models a request may name in "model"
 * (JARVAS_MODELS), the default among them, and whether the upstream has
 * each (its own list: Ollama's /api/tags, OpenAI's /v1/models).
 */
#ifndef JARVAS_MODELS_H
#define JARVAS_MODELS_H

#include "request.h"

void models_get(struct request *r);

#endif
