/*
 * http.c: the HTTP endpoint, on libmicrohttpd (one internal thread, so one
 * database connection serves every request, one at a time).
 *
 *   POST /message   a JSON array of {"timestamp": ..., "value": ...}
 *                   201 {"enqueued": n, "shards": {...}}: every message is
 *                   in its shard's queue, all in one transaction; 400 with
 *                   {"error": "..."} when the body is not such an array (and
 *                   nothing is enqueued); 503 when the database cannot be
 *                   reached, saying whether the messages may have been
 *                   enqueued
 *   GET /workers    the history of the workers and what each processed
 *
 * A timestamp is a number of seconds since 1970 (fractions allowed) or an
 * RFC 3339 string ("2024-05-01T12:00:07.25Z", "...+02:00").  A message goes
 * to shard (whole seconds of its timestamp) mod N: the messages of one
 * second are processed by one pool.
 *
 * A lost connection (db.c) is not the client's problem when it can be
 * helped: the transaction is made again on a new connection, up to
 * POST_ATTEMPTS times within POST_RETRY_SECONDS (and not after a stop
 * request).  A connection lost while the COMMIT was on its way leaves its
 * outcome unknown; so that the same messages can be sent again, every
 * message goes with a dedup key: the request's id and the message's place
 * in the request, "<id>#<k>".  The id is the request's Idempotency-Key
 * header, or else one made here for the request.  The queues remember a
 * key for their dedup_window (setup.sql): a transaction made again stores
 * nothing that its predecessor committed, and neither does the same
 * request sent again by a client with the same Idempotency-Key within that
 * window (the 503 answer names the key to send).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/random.h>
#include <microhttpd.h>

#include "processor.h"

#define MAX_BODY (16 * 1024 * 1024)
#define MAX_KEY 200				/* of an Idempotency-Key: "<key>#<k>" fits 255 */
#define POST_ATTEMPTS 4			/* transactions of one POST */
#define POST_RETRY_SECONDS 15	/* at most (or --reconnect-timeout if shorter) */

static const struct config *cfg;
static PGconn *db;				/* used by the daemon's thread only; NULL
								 * when lost */
static int	posts;				/* POST /message requests, for the test fault */
static int	fault_done;			/* --lose-commit-reply happened */

/* One request: its body, gathered as it arrives. */
struct request
{
	char	   *body;
	size_t		len;
	int			too_large;
};

static enum MHD_Result
reply(struct MHD_Connection *c, unsigned status, json_object *doc)
{
	const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
	struct MHD_Response *r =
		MHD_create_response_from_buffer(strlen(text), (void *) text, MHD_RESPMEM_MUST_COPY);
	enum MHD_Result ret;

	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "POST");
	if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "5");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	json_object_put(doc);
	return ret;
}

static enum MHD_Result
error(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
{
	char		msg[512];
	va_list		ap;
	json_object *doc = json_object_new_object();

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	json_object_object_add(doc, "error", json_object_new_string(msg));
	return reply(c, status, doc);
}

/* Seconds since 1970 of an RFC 3339 timestamp; 0 if it is not one. */
static int
parse_rfc3339(const char *s, double *secs)
{
	struct tm	tm = {0};
	const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	double		frac = 0;

	if (p == NULL)
		return 0;
	if (*p == '.')
	{
		char	   *end;

		frac = strtod(p, &end);	/* ".25" */
		if (end == p + 1)
			return 0;
		p = end;
	}
	p = strptime(p, "%z", &tm);	/* "Z", "+02:00", "-0500" */
	if (p == NULL || *p != '\0')
		return 0;
	*secs = (double) (timegm(&tm) - tm.tm_gmtoff) + frac;
	return 1;
}

/* The shard of a message, or -1 with *why set when its timestamp is bad. */
static int
shard_of(json_object *msg, const char **why)
{
	json_object *ts;
	double		secs;

	if (!json_object_is_type(msg, json_type_object))
		return *why = "must be an object with \"timestamp\" and \"value\"", -1;
	if (!json_object_object_get_ex(msg, "timestamp", &ts) || ts == NULL)
		return *why = "\"timestamp\" is required", -1;
	if (json_object_is_type(ts, json_type_int) || json_object_is_type(ts, json_type_double))
		secs = json_object_get_double(ts);
	else if (!json_object_is_type(ts, json_type_string) ||
			 !parse_rfc3339(json_object_get_string(ts), &secs))
		return *why = "\"timestamp\" must be seconds since 1970 or an RFC 3339 string "
			"such as \"2024-05-01T12:00:07Z\"", -1;
	if (!isfinite(secs))
		return *why = "\"timestamp\" is out of range", -1;
	return (int) (((long long) floor(secs) % cfg->shards + cfg->shards) % cfg->shards);
}

/*
 * Make sure there is a connection: when the last one was lost, attempts
 * with a backoff until the deadline of b.  False when there is none, with
 * the reason in error.
 */
static int
db_ready(struct backoff *b, char *why, size_t size)
{
	if (db != NULL && PQstatus(db) == CONNECTION_OK)
		return 1;
	if (db != NULL)
	{
		PQfinish(db);
		db = NULL;
	}
	while (backoff_wait(b))
	{
		db = db_connect_once(cfg->dsn, "processor", backoff_left(b) + 0.1, 1, why, size);
		if (db != NULL)
			return 1;
	}
	if (stop_requested)
		snprintf(why, size, "the processor is stopping");
	return 0;
}

/* Drop a connection found lost. */
static void
db_drop(void)
{
	PQfinish(db);
	db = NULL;
}

/* A statement that returns no rows we need; NULL on success, else the
 * error result (the caller clears it). */
static PGresult *
exec(const char *sql, int nparams, const char *const *params)
{
	PGresult   *res = PQexecParams(db, sql, nparams, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		PQclear(res);
		return NULL;
	}
	return res;
}

/* The request's id: its Idempotency-Key, or a new random one ("" and
 * false when the header is not a usable key). */
static int
request_id(struct MHD_Connection *c, char *id, size_t size)
{
	const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
	unsigned char random[16];
	size_t		got = 0;

	if (key != NULL)
	{
		size_t		len = strlen(key);

		for (size_t i = 0; i < len; i++)
			if (key[i] <= ' ' || key[i] > '~')
				len = 0;
		if (len == 0 || len > MAX_KEY)
			return *id = '\0', 0;
		snprintf(id, size, "%s", key);
		return 1;
	}
	while (got < sizeof random)
	{
		ssize_t		n = getrandom(random + got, sizeof random - got, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
		{
			/* no entropy source: unique enough within this run */
			snprintf(id, size, "p%d-%ld-%d", (int) getpid(), (long) time(NULL), posts);
			return 1;
		}
		got += n;
	}
	strcpy(id, "r-");
	for (size_t i = 0; i < sizeof random; i++)
		sprintf(id + 2 + 2 * i, "%02x", random[i]);
	return 1;
}

enum attempt
{
	ENQUEUED,					/* committed */
	LOST,						/* the connection was lost; see *commit_sent */
	FAILED						/* an error: rolled back */
};

/*
 * One transaction: every shard's batch with its dedup keys, then COMMIT.
 * LOST with *commit_sent set: whether it committed is unknown.
 */
static enum attempt
enqueue_all(json_object **shards, json_object **keys, json_object *counts,
			PGresult **error, int *commit_sent)
{
	PGresult   *res;

	*commit_sent = 0;
	if ((res = exec("BEGIN", 0, NULL)) != NULL)
		goto failed;
	for (int s = 0; s < cfg->shards; s++)
	{
		char		queue[64];
		const char *params[3];

		if (json_object_array_length(shards[s]) == 0)
			continue;
		queue_name(cfg, s, queue, sizeof queue);
		params[0] = queue;
		params[1] = json_object_to_json_string_ext(shards[s], JSON_C_TO_STRING_PLAIN);
		params[2] = json_object_to_json_string_ext(keys[s], JSON_C_TO_STRING_PLAIN);
		res = exec("SELECT count(*) FROM broker.enqueue_batch($1, ARRAY("
				   "  SELECT m FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS t(m, n)"
				   "   ORDER BY n), dedup_keys => ARRAY("
				   "  SELECT k FROM jsonb_array_elements_text($3::jsonb) WITH ORDINALITY AS t(k, n)"
				   "   ORDER BY n))", 3, params);
		if (res != NULL)
			goto failed;
		json_object_object_add(counts, queue,
							   json_object_new_int(json_object_array_length(shards[s])));
	}
	*commit_sent = 1;
	if ((res = exec("COMMIT", 0, NULL)) != NULL)
		goto failed;
	if (cfg->lose_commit_reply == posts && !fault_done)
	{
		/* committed, but as if the answer had not come back */
		fault_done = 1;
		*error = NULL;
		return LOST;
	}
	return ENQUEUED;

failed:
	*error = res;
	if (db_lost(db, res))
		return LOST;
	*commit_sent = 0;			/* an error before or in the COMMIT: rolled back */
	if (PQtransactionStatus(db) != PQTRANS_IDLE)
		PQclear(PQexec(db, "ROLLBACK"));
	return FAILED;
}

static enum MHD_Result
post_message(struct MHD_Connection *c, struct request *r)
{
	json_tokener *tok = json_tokener_new();
	json_object *doc, *shards[cfg->shards], *keys[cfg->shards], *counts = NULL;
	enum json_tokener_error jerr;
	size_t		n, end;
	PGresult   *res = NULL;
	char		id[MAX_KEY + 1], msg[512] = "";
	struct backoff b;
	int			attempt, commit_sent, maybe = 0;
	enum attempt outcome = FAILED;

	posts++;
	if (r->too_large)
	{
		json_tokener_free(tok);
		return error(c, MHD_HTTP_CONTENT_TOO_LARGE, "the body is larger than %d bytes", MAX_BODY);
	}
	if (!request_id(c, id, sizeof id))
	{
		json_tokener_free(tok);
		return error(c, MHD_HTTP_BAD_REQUEST, "the header Idempotency-Key must be 1 to %d "
					 "visible ASCII characters; nothing was enqueued", MAX_KEY);
	}

	/* the body is NUL-terminated: passing the NUL ends a number at the end */
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	doc = json_tokener_parse_ex(tok, r->body ? r->body : "", r->len + 1);
	jerr = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (jerr != json_tokener_success)
		return error(c, MHD_HTTP_BAD_REQUEST, "the body is not valid JSON: %s (at byte %zu)",
					 r->len == 0 ? "it is empty" : json_tokener_error_desc(jerr), end);
	if (end < r->len && r->body[end + strspn(r->body + end, " \t\r\n")] != '\0')
	{
		json_object_put(doc);
		return error(c, MHD_HTTP_BAD_REQUEST,
					 "the body is not valid JSON: something follows the value (at byte %zu)", end);
	}
	if (!json_object_is_type(doc, json_type_array) || json_object_array_length(doc) == 0)
	{
		json_object_put(doc);
		return error(c, MHD_HTTP_BAD_REQUEST,
					 "the body must be a non-empty JSON array of {\"timestamp\", \"value\"}");
	}

	/* validate every message and sort it into its shard, before anything is
	 * sent; its dedup key is the request's id and its place, from 1 */
	n = json_object_array_length(doc);
	for (int s = 0; s < cfg->shards; s++)
	{
		shards[s] = json_object_new_array();
		keys[s] = json_object_new_array();
	}
	for (size_t i = 0; i < n; i++)
	{
		json_object *m = json_object_array_get_idx(doc, i);
		const char *why = "";
		int			s = shard_of(m, &why);
		char		key[MAX_KEY + 32];

		if (s < 0)
		{
			for (int k = 0; k < cfg->shards; k++)
			{
				json_object_put(shards[k]);
				json_object_put(keys[k]);
			}
			json_object_put(doc);
			return error(c, MHD_HTTP_BAD_REQUEST, "message %zu of %zu: %s; nothing was enqueued",
						 i + 1, n, why);
		}
		json_object_array_add(shards[s], json_object_get(m));
		snprintf(key, sizeof key, "%s#%zu", id, i + 1);
		json_object_array_add(keys[s], json_object_new_string(key));
	}

	/*
	 * one transaction: every shard's batch, or none; made again on a new
	 * connection when the connection is lost
	 */
	backoff_start(&b, cfg->reconnect_timeout < POST_RETRY_SECONDS ?
				  cfg->reconnect_timeout : POST_RETRY_SECONDS);
	for (attempt = 1; attempt <= POST_ATTEMPTS; attempt++)
	{
		if (!db_ready(&b, msg, sizeof msg))
			break;
		json_object_put(counts);
		counts = json_object_new_object();
		outcome = enqueue_all(shards, keys, counts, &res, &commit_sent);
		if (outcome != LOST)
			break;
		maybe |= commit_sent;
		if (res != NULL)
			db_error(db, res, msg, sizeof msg);
		else
			snprintf(msg, sizeof msg, "test fault: the answer to the COMMIT is lost");
		PQclear(res);
		res = NULL;
		db_drop();
		fprintf(stderr, "processor: POST /message: connection lost (attempt %d of %d%s): %s\n",
				attempt, POST_ATTEMPTS, commit_sent ? ", in the COMMIT" : "", msg);
	}

	for (int s = 0; s < cfg->shards; s++)
	{
		json_object_put(shards[s]);
		json_object_put(keys[s]);
	}
	json_object_put(doc);
	if (outcome == ENQUEUED)
	{
		json_object *ok = json_object_new_object();

		if (attempt > 1)
			fprintf(stderr, "processor: POST /message: enqueued at attempt %d (request %s)\n",
					attempt, id);
		json_object_object_add(ok, "enqueued", json_object_new_int64(n));
		json_object_object_add(ok, "shards", counts);
		return reply(c, MHD_HTTP_CREATED, ok);
	}
	json_object_put(counts);
	{
		/* a message too large for its queue (54000) is the client's fault */
		const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
		int			client = state && strcmp(state, "54000") == 0;
		json_object *fail = json_object_new_object();
		char		text[1024];

		if (res != NULL)
			db_error(db, res, msg, sizeof msg);
		PQclear(res);
		if (maybe)
			snprintf(text, sizeof text, "%s; the messages may have been enqueued (the "
					 "connection was lost during a COMMIT): send the same request again "
					 "with the header Idempotency-Key: %s to enqueue them at most once", msg, id);
		else
			snprintf(text, sizeof text, "%s; nothing was enqueued", msg);
		fprintf(stderr, "processor: POST /message failed: %s\n", text);
		json_object_object_add(fail, "error", json_object_new_string(text));
		json_object_object_add(fail, "enqueued",
							   json_object_new_string(maybe ? "unknown" : "none"));
		json_object_object_add(fail, "idempotency_key", json_object_new_string(id));
		return reply(c, client ? MHD_HTTP_CONTENT_TOO_LARGE : MHD_HTTP_SERVICE_UNAVAILABLE,
					 fail);
	}
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
		   const char *version, const char *upload, size_t *upload_size, void **req_cls)
{
	struct request *r = *req_cls;

	(void) cls;
	(void) version;
	if (r == NULL)
	{
		/* the headers: start gathering the body */
		*req_cls = calloc(1, sizeof(struct request));
		return *req_cls ? MHD_YES : MHD_NO;
	}
	if (*upload_size > 0)
	{
		if (!r->too_large && r->len + *upload_size <= MAX_BODY)
		{
			r->body = realloc(r->body, r->len + *upload_size + 1);
			memcpy(r->body + r->len, upload, *upload_size);
			r->len += *upload_size;
			r->body[r->len] = '\0';
		}
		else
			r->too_large = 1;
		*upload_size = 0;
		return MHD_YES;
	}

	/* the whole request is here */
	if (strcmp(url, "/message") == 0)
	{
		if (strcmp(method, "POST") != 0)
			return error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "use POST /message");
		return post_message(c, r);
	}
	if (strcmp(url, "/workers") == 0 && strcmp(method, "GET") == 0)
	{
		struct backoff b;
		char		why[512];

		/* a connection found lost by the query: once more on a new one */
		backoff_start(&b, cfg->reconnect_timeout < POST_RETRY_SECONDS ?
					  cfg->reconnect_timeout : POST_RETRY_SECONDS);
		for (int attempt = 1;; attempt++)
		{
			json_object *doc;

			if (!db_ready(&b, why, sizeof why))
				return error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "%s", why);
			doc = history_json(db);
			if (PQstatus(db) == CONNECTION_OK || attempt == 2)
				return reply(c, MHD_HTTP_OK, doc);
			json_object_put(doc);
			db_drop();
		}
	}
	return error(c, MHD_HTTP_NOT_FOUND, "no such resource: %s %s", method, url);
}

static void
on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct request *r = *req_cls;

	(void) cls;
	(void) c;
	(void) toe;
	if (r != NULL)
	{
		free(r->body);
		free(r);
	}
	*req_cls = NULL;
}

/* Start the endpoint on cfg->listen:cfg->port; writes the port to
 * cfg->port_file when asked.  NULL when it cannot listen. */
struct MHD_Daemon *
http_start(const struct config *config)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(config->port)};
	struct MHD_Daemon *d;

	cfg = config;
	if (inet_pton(AF_INET, cfg->listen, &addr.sin_addr) != 1)
	{
		fprintf(stderr, "processor: --listen %s is not an IPv4 address\n", cfg->listen);
		return NULL;
	}
	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, cfg->port,
						 NULL, NULL, on_request, NULL,
						 MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &addr,
						 MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
						 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 30,
						 MHD_OPTION_END);
	if (d == NULL)
		return NULL;
	if (cfg->port_file)
	{
		const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
		char		tmp[4096];
		FILE	   *f;

		snprintf(tmp, sizeof tmp, "%s.tmp", cfg->port_file);
		if ((f = fopen(tmp, "w")) == NULL || fprintf(f, "%u\n", info->port) < 0 ||
			fclose(f) != 0 || rename(tmp, cfg->port_file) != 0)
			perror(cfg->port_file);
	}
	return d;
}
