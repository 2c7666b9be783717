/*
 * wake_latency.c: long-poll wake-up latency of broker.dequeue(wait => ...).
 *
 * N consumer threads (default 16) each wait in broker.dequeue(q, 1,
 * wait => '10 s', or --wait seconds) on their own connection.  One producer thread, one
 * message at a time: BEGIN; enqueue; stamp t0; COMMIT.  The consumer that
 * returns the message stamps t1; latency = t1 - t0, from the moment the
 * producer sends COMMIT to the moment dequeue returns in the consumer.
 * The producer waits until the message was received (so every message
 * finds all consumers idle and waiting), then sleeps --interval ms.
 *
 * Also reports how many waiters woke per message (broker.waiters'
 * wakeups and empty_wakeups before and after): about 1 means no herd.
 *
 *   wake_latency [-d conninfo] [-c consumers] [-n messages] [-i interval_ms]
 *                [--sync-commit on|off] [--wait seconds] [--in-xact]
 *
 * A wake-up that is lost shows as a latency of about the wait: the waiter
 * sleeps until its deadline and finds the message then (TAP 005 checks the
 * maximum).
 */
#define _DEFAULT_SOURCE
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "libpq-fe.h"

static const char *dsn = "";
static const char *queue = "wake_latency";
static int	nconsumers = 16;
static int	nmessages = 1000;
static int	interval_ms = 5;
static const char *sync_commit = "on";
static int	wait_s = 10;
static int	in_xact = 0;

static double *t0s;				/* per message: when COMMIT was sent */
static double *tcs;				/* per message: when COMMIT returned */
static double *t1s;				/* per message: when dequeue returned */
static atomic_int received;

/* Seconds since the epoch, microsecond resolution. */
static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Connect or die. */
static PGconn *
connect_or_die(void)
{
	PGconn	   *c = PQconnectdb(dsn);

	if (PQstatus(c) != CONNECTION_OK)
	{
		fprintf(stderr, "connection failed: %s", PQerrorMessage(c));
		exit(1);
	}
	return c;
}

/* Run a statement or die. */
static PGresult *
run(PGconn *c, const char *sql)
{
	PGresult   *r = PQexec(c, sql);

	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "%s: %s", sql, PQerrorMessage(c));
		exit(1);
	}
	return r;
}

/*
 * A consumer: wait, stamp, delete, repeat.  Each dequeue is its own
 * transaction (its lease is committed, with synchronous_commit on a WAL
 * flush, before the message reaches the client), or with --in-xact the
 * dequeue and the delete share one transaction (BEGIN; dequeue; delete;
 * COMMIT), so the message arrives before any commit of the consumer.
 */
static void *
consumer(void *arg)
{
	PGconn	   *c = connect_or_die();
	char		wait_str[16];
	const char *params[2] = {queue, wait_str};

	(void) arg;
	snprintf(wait_str, sizeof(wait_str), "%d", wait_s);
	run(c, "SET application_name = 'wake_latency'");
	for (;;)
	{
		PGresult   *r;
		double		t1;

		if (in_xact)
			PQclear(run(c, "BEGIN"));
		r = PQexecParams(c,
									 "SELECT id, (payload->>'seq')::int FROM broker.dequeue($1, 1, wait => pg_catalog.make_interval(secs => $2::int))",
									 2, NULL, params, NULL, NULL, 0);
		t1 = now_s();

		if (PQresultStatus(r) != PGRES_TUPLES_OK)
		{
			fprintf(stderr, "dequeue: %s", PQerrorMessage(c));
			exit(1);
		}
		if (PQntuples(r) == 1)
		{
			int			seq = atoi(PQgetvalue(r, 0, 1));
			const char *dparams[2] = {queue, PQgetvalue(r, 0, 0)};
			PGresult   *d;

			if (seq < 0)
			{
				d = PQexecParams(c, "SELECT broker.delete($1, $2::bigint)", 2, NULL,
								 dparams, NULL, NULL, 0);
				PQclear(d);
				PQclear(r);
				if (in_xact)
					PQclear(run(c, "COMMIT"));
				break;			/* the producer's stop message */
			}

			/* t0s[seq] was written before COMMIT was sent */
			t1s[seq] = t1;
			d = PQexecParams(c, "SELECT broker.delete($1, $2::bigint)", 2, NULL,
							 dparams, NULL, NULL, 0);
			PQclear(d);
			if (in_xact)
				PQclear(run(c, "COMMIT"));
			atomic_fetch_add(&received, 1);
		}
		else if (in_xact)
			PQclear(run(c, "COMMIT"));
		PQclear(r);
	}
	PQfinish(c);
	return NULL;
}

/* Fetch wakeups and empty_wakeups of the queue. */
static void
wakeups(PGconn *c, long *w, long *e)
{
	const char *params[1] = {queue};
	PGresult   *r = PQexecParams(c, "SELECT wakeups, empty_wakeups FROM broker.waiters($1)",
								 1, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
	{
		fprintf(stderr, "waiters: %s", PQerrorMessage(c));
		exit(1);
	}
	*w = atol(PQgetvalue(r, 0, 0));
	*e = atol(PQgetvalue(r, 0, 1));
	PQclear(r);
}

/* qsort comparator for doubles. */
static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return (x > y) - (x < y);
}

/* Print percentiles of to[i] - from[i] in ms (sorted: scratch space). */
static void
report(const char *what, const double *from, const double *to, double *sorted)
{
	for (int i = 0; i < nmessages; i++)
		sorted[i] = (to[i] - from[i]) * 1000.0;
	qsort(sorted, nmessages, sizeof(double), cmp_double);
	printf("%s (ms): p50 %.3f  p95 %.3f  p99 %.3f  max %.3f\n", what,
		   sorted[nmessages / 2], sorted[(int) (nmessages * 0.95)],
		   sorted[(int) (nmessages * 0.99)], sorted[nmessages - 1]);
}

int
main(int argc, char **argv)
{
	static struct option opts[] = {
		{"dsn", required_argument, NULL, 'd'},
		{"consumers", required_argument, NULL, 'c'},
		{"messages", required_argument, NULL, 'n'},
		{"interval", required_argument, NULL, 'i'},
		{"sync-commit", required_argument, NULL, 's'},
		{"wait", required_argument, NULL, 'w'},
		{"in-xact", no_argument, NULL, 'x'},
		{NULL, 0, NULL, 0}
	};
	int			ch;
	pthread_t  *threads;
	PGconn	   *p;
	char		sql[256];
	long		w0, e0, w1, e1;
	double	   *sorted;

	while ((ch = getopt_long(argc, argv, "d:c:n:i:s:w:x", opts, NULL)) != -1)
	{
		switch (ch)
		{
			case 'd': dsn = optarg; break;
			case 'c': nconsumers = atoi(optarg); break;
			case 'n': nmessages = atoi(optarg); break;
			case 'i': interval_ms = atoi(optarg); break;
			case 's': sync_commit = optarg; break;
			case 'w': wait_s = atoi(optarg); break;
			case 'x': in_xact = 1; break;
			default:
				fprintf(stderr, "usage: wake_latency [-d conninfo] [-c consumers] [-n messages] [-i interval_ms] [--sync-commit on|off] [--wait seconds] [--in-xact]\n");
				return 2;
		}
	}
	if (nconsumers < 1 || nmessages < 1 || interval_ms < 0 || wait_s < 1)
	{
		fprintf(stderr, "wake_latency: bad arguments\n");
		return 2;
	}
	t0s = calloc(nmessages, sizeof(double));
	tcs = calloc(nmessages, sizeof(double));
	t1s = calloc(nmessages, sizeof(double));
	sorted = calloc(nmessages, sizeof(double));
	threads = calloc(nconsumers, sizeof(pthread_t));

	p = connect_or_die();
	PQclear(run(p, "SET client_min_messages = warning"));
	snprintf(sql, sizeof(sql), "SELECT broker.create_queue('%s', if_not_exists => true)", queue);
	PQclear(run(p, sql));
	snprintf(sql, sizeof(sql), "SELECT broker.purge_queue('%s')", queue);
	PQclear(run(p, sql));
	snprintf(sql, sizeof(sql), "SET synchronous_commit = %s",
			 strcmp(sync_commit, "off") == 0 ? "off" : "on");
	PQclear(run(p, sql));

	for (int i = 0; i < nconsumers; i++)
		pthread_create(&threads[i], NULL, consumer, NULL);
	/* let every consumer reach its wait */
	for (int tries = 0; tries < 100; tries++)
	{
		PGresult   *r = run(p, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'wake_latency' AND wait_event_type = 'Extension'");
		int			n = atoi(PQgetvalue(r, 0, 0));

		PQclear(r);
		if (n >= nconsumers)
			break;
		usleep(50000);
	}
	wakeups(p, &w0, &e0);

	for (int seq = 0; seq < nmessages; seq++)
	{
		char		payload[64];
		const char *params[2] = {queue, payload};

		snprintf(payload, sizeof(payload), "{\"seq\": %d}", seq);
		PQclear(run(p, "BEGIN"));
		PQclear(PQexecParams(p, "SELECT broker.enqueue($1, $2::jsonb)", 2, NULL, params,
							 NULL, NULL, 0));
		t0s[seq] = now_s();
		PQclear(run(p, "COMMIT"));
		tcs[seq] = now_s();
		while (atomic_load(&received) <= seq)
			usleep(50);
		/* let the consumer go back to waiting before the next message */
		usleep(interval_ms * 1000);
	}
	wakeups(p, &w1, &e1);
	for (int i = 0; i < nconsumers; i++)
	{
		const char *params[1] = {queue};

		PQclear(PQexecParams(p, "SELECT broker.enqueue($1, '{\"seq\": -1}')", 1, NULL,
							 params, NULL, NULL, 0));
	}
	for (int i = 0; i < nconsumers; i++)
		pthread_join(threads[i], NULL);

	printf("wake_latency: %d consumers waiting (%s), %d messages one at a time, synchronous_commit %s\n",
		   nconsumers, in_xact ? "dequeue and delete in one transaction" : "dequeue autocommit",
		   nmessages, sync_commit);
	report("  latency from COMMIT sent to dequeue returned", t0s, t1s, sorted);
	report("  of which the producer's COMMIT round trip", t0s, tcs, sorted);
	report("  from COMMIT returned to dequeue returned (may be < 0)", tcs, t1s, sorted);
	printf("  waiter wake-ups per message: %.2f (%.2f found nothing)\n",
		   (double) (w1 - w0) / nmessages, (double) (e1 - e0) / nmessages);
	PQfinish(p);
	return 0;
}
