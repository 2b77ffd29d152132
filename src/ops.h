/*
 * ops — the operator's endpoints: GET /api/health/ and GET /api/metrics.
 * Neither needs authentication.
 */
#ifndef JARVAS_OPS_H
#define JARVAS_OPS_H

#include "request.h"

void ops_health(struct request *r);
void ops_metrics(struct request *r);

#endif
