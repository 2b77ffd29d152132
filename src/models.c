/*
 * models — the model list endpoint (see models.h).  The upstream is asked
 * on every call, within a short timeout: the answer says what is there
 * now, and "available" is null when the upstream could not say.
 */
#include "models.h"

#include <cjson/cJSON.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "response.h"
#include "upstream.h"
#include "users.h"

#define MODELS_UPSTREAM_TIMEOUT_MS 2000

/* Which of config.models the upstream listed. */
static void mark_listed(void *ctx, const char *name)
{
	unsigned char *listed = ctx;
	int i;

	for (i = 0; i < config.nmodels; i++)
		if (wire_model_matches(name, config.models[i]))
			listed[i] = 1;
}

void models_get(struct request *r)
{
	unsigned char listed[CONFIG_MODELS_MAX] = {0};
	char err[256] = "", note[300] = "ok";
	struct user u;
	cJSON *o, *list;
	int i, known;

	if (auth_require(r, 0, &u) < 0)
		return;
	users_clear(&u);
	known = upstream_models(MODELS_UPSTREAM_TIMEOUT_MS, mark_listed, listed, err, sizeof err) ==
		0;
	if (!known) /* err is set only then */
		snprintf(note, sizeof note, "error: %s", err);
	o = cJSON_CreateObject();
	if (!o || !cJSON_AddStringToObject(o, "default", config.model) ||
	    !cJSON_AddStringToObject(o, "upstream", note) ||
	    !(list = cJSON_AddArrayToObject(o, "models")))
		goto oom;
	for (i = 0; i < config.nmodels; i++) {
		cJSON *m = cJSON_CreateObject();

		if (!m)
			goto oom;
		cJSON_AddItemToArray(list, m);
		if (!cJSON_AddStringToObject(m, "name", config.models[i]) ||
		    !cJSON_AddBoolToObject(m, "default", config.models[i] == config.model) ||
		    !(known ? cJSON_AddBoolToObject(m, "available", listed[i])
			    : cJSON_AddNullToObject(m, "available")))
			goto oom;
	}
	resp_json(r, 200, o);
	return;
oom:
	cJSON_Delete(o);
	resp_json(r, 500, NULL);
}
