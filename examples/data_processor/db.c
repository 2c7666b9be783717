/*
 * db.c: connections that come back after the server restarts or fails over.
 *
 * A connection is lost when libpq says so (PQstatus CONNECTION_BAD: the
 * socket closed), when a statement fails with an error of libpq's own (no
 * SQLSTATE: after a crash of the server, the write of a statement to the
 * closed socket fails with "server closed the connection unexpectedly"
 * while PQstatus still says CONNECTION_OK), or with SQLSTATE class 08
 * (connection exception), 57P01 admin_shutdown (a fast or smart stop),
 * 57P02 crash_shutdown (another backend crashed), 57P03 cannot_connect_now
 * (starting up, shutting down, in recovery) or 25006
 * read_only_sql_transaction (the server is a standby now, as an old primary
 * becomes after a failover).  The caller then drops the connection and
 * makes a new one: attempts with a pause between them that starts at 50 ms
 * and doubles up to 2 s (with some jitter, so that a dozen workers do not
 * knock all at once), until one succeeds, its give-up time has passed or a
 * stop is requested.
 *
 * Every wait here is bounded and sees a stop request within 100 ms: a
 * connection attempt is polled (PQconnectStartParams, PQconnectPoll), not
 * left to block in PQconnectdb, and pauses are taken in slices.  The
 * connections get TCP keepalives (and a connect_timeout per host), so that
 * a server that vanished without closing its sockets is noticed in about
 * 25 s; the --dsn may set other values.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "processor.h"

#define SLICE_MS		100		/* how often a wait looks at stop_requested */
#define FIRST_PAUSE_MS	50
#define LONGEST_PAUSE_MS 2000

/* Seconds on the monotonic clock. */
double
now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* Sleep ms milliseconds, in slices; false if a stop was requested. */
int
pause_ms(int ms)
{
	double		end = now_s() + ms / 1000.0;

	while (!stop_requested)
	{
		double		left = end - now_s();
		struct timespec t;

		if (left <= 0)
			return 1;
		if (left > SLICE_MS / 1000.0)
			left = SLICE_MS / 1000.0;
		t.tv_sec = 0;
		t.tv_nsec = (long) (left * 1e9);
		nanosleep(&t, NULL);	/* EINTR: a signal, look at stop_requested */
	}
	return 0;
}

int
db_lost(PGconn *conn, const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	if (conn == NULL || PQstatus(conn) == CONNECTION_BAD)
		return 1;
	if (state == NULL)			/* libpq's own error */
		return res == NULL || PQresultStatus(res) == PGRES_FATAL_ERROR;
	return strncmp(state, "08", 2) == 0 ||
		strcmp(state, "57P01") == 0 ||
		strcmp(state, "57P02") == 0 ||
		strcmp(state, "57P03") == 0 ||
		strcmp(state, "25006") == 0;
}

/* The message of a failed statement (or of the connection), on one line. */
void
db_error(PGconn *conn, const PGresult *res, char *buf, size_t size)
{
	const char *msg = res ? PQresultErrorMessage(res) : "";

	if (*msg == '\0' && conn != NULL)
		msg = PQerrorMessage(conn);
	if (*msg == '\0')
		msg = "unknown error";
	snprintf(buf, size, "%s", msg);
	/* "...failed: ...\n\tIs the server running...\n": one line */
	for (char *from = buf, *to = buf;; from++)
	{
		if (*from == '\n')
		{
			while (from[1] == '\n' || from[1] == '\t' || from[1] == ' ')
				from++;
			*to++ = from[1] ? ' ' : '\0';
		}
		else if ((*to++ = *from) == '\0')
			break;
	}
}

/* A notice, or the error a server sends to an idle connection as it ends it
 * (FATAL: terminating connection due to administrator command). */
static void
notice(void *who, const char *message)
{
	fprintf(stderr, "%s: from the server: %s", (const char *) who, message);
}

PGconn *
db_connect_once(const char *dsn, const char *who, double seconds, int stoppable,
				char *error, size_t size)
{
	/* our defaults first: what the dsn (expanded from "dbname") says wins */
	static const char *const keys[] = {
		"connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
		"keepalives_count", "fallback_application_name", "dbname", NULL
	};
	const char *values[] = {"5", "1", "10", "5", "3", "processor", dsn, NULL};
	double		deadline = now_s() + seconds;
	PGconn	   *conn = PQconnectStartParams(keys, values, 1);
	PostgresPollingStatusType state = PGRES_POLLING_WRITING;

	if (conn == NULL)
	{
		snprintf(error, size, "out of memory");
		return NULL;
	}
	while (PQstatus(conn) != CONNECTION_BAD &&
		   state != PGRES_POLLING_OK && state != PGRES_POLLING_FAILED)
	{
		struct pollfd pfd = {
			.fd = PQsocket(conn),
			.events = state == PGRES_POLLING_READING ? POLLIN : POLLOUT,
		};
		double		left = deadline - now_s();
		int			ready;

		if ((stoppable && stop_requested) || left <= 0)
		{
			snprintf(error, size, "%s", left > 0 ? "a stop was requested" :
					 "the connection attempt timed out");
			PQfinish(conn);
			return NULL;
		}
		ready = poll(&pfd, 1, left * 1000 < SLICE_MS ? (int) (left * 1000) + 1 : SLICE_MS);
		if (ready < 0 && errno != EINTR)
		{
			snprintf(error, size, "poll: %s", strerror(errno));
			PQfinish(conn);
			return NULL;
		}
		if (ready > 0)
			state = PQconnectPoll(conn);
	}
	if (PQstatus(conn) == CONNECTION_OK)
	{
		PQsetNoticeProcessor(conn, notice, (void *) who);
		return conn;
	}
	db_error(conn, NULL, error, size);
	PQfinish(conn);
	return NULL;
}

void
backoff_start(struct backoff *b, double seconds)
{
	b->started = now_s();
	b->deadline = b->started + seconds;
	b->pause_ms = 0;
	b->attempts = 0;
}

double
backoff_left(const struct backoff *b)
{
	double		left = b->deadline - now_s();

	return left > 0 ? left : 0;
}

int
backoff_wait(struct backoff *b)
{
	if (b->attempts > 0)
	{
		int			ms = b->pause_ms / 2 + rand() % (b->pause_ms / 2 + 1);
		double		left = backoff_left(b);

		if (ms > left * 1000)
			ms = (int) (left * 1000);
		if (!pause_ms(ms))
			return 0;
		b->pause_ms = b->pause_ms * 2 > LONGEST_PAUSE_MS ? LONGEST_PAUSE_MS : b->pause_ms * 2;
	}
	else
		b->pause_ms = FIRST_PAUSE_MS;
	if (stop_requested || (b->attempts > 0 && backoff_left(b) <= 0))
		return 0;
	b->attempts++;
	return 1;
}
