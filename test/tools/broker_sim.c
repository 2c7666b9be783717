/*-------------------------------------------------------------------------
 *
 * broker_sim.c
 *		Load simulator for the broker extension.
 *
 * Producer and consumer threads, each with its own libpq connection, drive
 * broker.enqueue[_batch], broker.dequeue and broker.delete on one queue.
 * Every payload names its run, producer and sequence number:
 *
 *		{"r":"<run>","p":<producer>,"n":<seq>,"ts":<µs since epoch>,"pad":"xx.."}
 *
 * so each message can be identified, checked to be consumed exactly once and
 * timed end to end (consumer receive time minus producer "ts", both taken
 * from CLOCK_REALTIME on this machine).
 *
 * Duplicate rule.  A duplicate is counted for
 *	 1. every successful delete of a message beyond its first one (delete
 *		returned true, or the id came back from the ids[] form), and
 *	 2. every delivery that overlaps another delivery of the same message:
 *		deliveries are ordered by delivery_count, and a later delivery that
 *		was received (client clock, read right after dequeue returned, hence
 *		after the server decided to hand the message out) before the lease of
 *		the earlier one ran out (its lease_until) means two consumers held the
 *		message at once.  Two deliveries with the same delivery_count are
 *		always a duplicate.  A holder that has deleted the message is not
 *		exempted: a deleted message must never be delivered again, and the
 *		simulator never releases messages, so a correct broker never trips
 *		this rule.
 * Messages of other runs (possible with --no-purge) are deleted and counted
 * as "foreign", nothing else.  A stale-receipt delete (false, or an id not
 * returned by the ids[] form) is not an error: it is counted as a stale
 * delete.
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define MAX_THREADS		1000
#define MAX_BATCH		1000
#define MAX_PAYLOAD		1000000

/* per-producer message state lives in lazily allocated fixed-size chunks */
#define CHUNK_BITS		16
#define CHUNK_SIZE		(1 << CHUNK_BITS)
#define MAX_CHUNKS		(1 << 14)

/* latency histogram: log buckets, 1 µs .. 10 s, ~1.2% wide */
#define HIST_PER_DECADE 200
#define HIST_DECADES	7
#define HIST_BUCKETS	(HIST_PER_DECADE * HIST_DECADES + 2)

#define SQL_ENQ \
	"SELECT broker.enqueue($1::text, $2::jsonb)"
#define SQL_ENQ_BATCH \
	"SELECT * FROM broker.enqueue_batch($1::text, $2::jsonb[])"
#define SQL_DEQ \
	"SELECT id, receipt, delivery_count," \
	" (extract(epoch FROM lease_until) * 1000000)::int8," \
	" payload->>'r', payload->>'p', payload->>'n', payload->>'ts'" \
	" FROM broker.dequeue($1::text, $2::int4, $3::interval, $4::interval)"
#define SQL_DEL_ONE \
	"SELECT broker.delete($1::text, $2::int8, $3::int8)"
#define SQL_DEL_MANY \
	"SELECT * FROM broker.delete($1::text, $2::int8[])"

typedef struct SimOptions
{
	const char *dsn;
	const char *queue;
	int			producers;
	int			consumers;
	int			payload_size;
	int			batch;
	double		lease_s;
	double		duration_s;
	double		rate;
	int			wait_ms;
	int			work_ms;
	double		drain_timeout_s;
	bool		no_purge;
	bool		quiet;
	bool		json;
} SimOptions;

/* What the simulator knows about one message of this run. */
typedef struct MsgState
{
	int64_t		recv_us;		/* receive time of latest recorded delivery */
	int64_t		lease_until_us; /* its lease_until */
	int32_t		dc;				/* its delivery_count */
	uint8_t		seen;			/* a delivery was recorded */
	uint16_t	deletes;		/* successful deletes */
	uint8_t		committed;		/* the producer's enqueue committed */
} MsgState;

/* Message states of one producer, guarded by its lock. */
typedef struct ProducerTrack
{
	pthread_mutex_t lock;
	int64_t		nissued;		/* sequence numbers handed out */
	MsgState  **chunks;			/* MAX_CHUNKS pointers */
} ProducerTrack;

typedef struct Histogram
{
	uint64_t	counts[HIST_BUCKETS];
	uint64_t	n;
	int64_t		max_us;
} Histogram;

/* One message as returned by dequeue. */
typedef struct Delivery
{
	int64_t		id;
	const char *receipt;		/* text, NULL if SQL NULL */
	char		receipt_buf[24];
	int32_t		dc;
	int64_t		lease_until_us;
	int			producer;		/* -1: not of this run */
	int64_t		seq;
	int64_t		ts_us;
} Delivery;

typedef struct Worker
{
	pthread_t	thread;
	int			index;
	char		name[32];
	Histogram	hist;			/* consumers only */
} Worker;

static SimOptions opts = {
	.dsn = "", .queue = "sim", .producers = 4, .consumers = 4,
	.payload_size = 100, .batch = 1, .lease_s = 30, .duration_s = 20,
	.rate = 0, .wait_ms = 0, .work_ms = 0, .drain_timeout_s = 30,
};

static char run_id[32];
static ProducerTrack *tracks;
static pthread_barrier_t start_barrier;

static atomic_bool stop_producing;
static atomic_bool stop_consuming;
static atomic_int producers_running;
static _Atomic int64_t n_produced;
static _Atomic int64_t n_consumed;
static _Atomic int64_t n_double_deletes;
static _Atomic int64_t n_overlaps;
static _Atomic int64_t n_stale;
static _Atomic int64_t n_foreign;
static _Atomic int64_t n_errors;
static volatile sig_atomic_t sigint_count;

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static bool progress_open;		/* a progress line without newline is shown */

/* Print the usage text to the given stream. */
static void
usage(FILE *out)
{
	fputs("Usage: broker_sim [OPTION]...\n"
		  "Load simulator for the broker extension: producers enqueue, consumers dequeue\n"
		  "and delete, and every message is checked to be consumed exactly once.\n"
		  "\n"
		  "  -d, --dsn=CONNINFO          libpq connection string (default \"\": PG* variables)\n"
		  "  -q, --queue=NAME            queue to use (default sim)\n"
		  "  -p, --producers=N           producer threads (default 4)\n"
		  "  -c, --consumers=N           consumer threads (default 4)\n"
		  "  -s, --payload-size=BYTES    payload filler bytes (default 100)\n"
		  "  -b, --batch=N               messages per enqueue/dequeue/delete call (default 1)\n"
		  "  -l, --lease=SECONDS         lease taken by dequeue (default 30)\n"
		  "  -t, --duration=SECONDS      how long to produce (default 20)\n"
		  "  -r, --rate=MSGS             total msgs/s of all producers, 0 = unlimited (default 0)\n"
		  "  -w, --wait=MS               dequeue long-poll wait, 0 = poll every 1 ms (default 0)\n"
		  "      --work-ms=MS            simulated processing time per message (default 0)\n"
		  "      --drain-timeout=SECONDS time to drain after producing stops (default 30)\n"
		  "      --no-purge              do not purge the queue at start\n"
		  "      --quiet                 no progress line\n"
		  "      --json                  also print the summary as one JSON line\n"
		  "  -h, --help                  show this help and exit\n"
		  "\n"
		  "Exit status: 0 if there were no duplicates, no lost messages and no errors,\n"
		  "1 otherwise, 2 on bad usage.\n", out);
}

/* Complain about bad usage and exit with status 2. */
static void
bad_usage(const char *msg, const char *arg)
{
	fprintf(stderr, "broker_sim: %s%s\nTry \"broker_sim --help\" for more information.\n",
			msg, arg);
	exit(2);
}

/* Parse an integer option within [min, max] or exit with status 2. */
static int
parse_int(const char *arg, const char *name, long min, long max)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(arg, &end, 10);
	if (errno != 0 || end == arg || *end != '\0' || v < min || v > max)
	{
		fprintf(stderr, "broker_sim: invalid %s \"%s\" (must be %ld..%ld)\n",
				name, arg, min, max);
		exit(2);
	}
	return (int) v;
}

/* Parse a number option within [min, max] or exit with status 2. */
static double
parse_num(const char *arg, const char *name, double min, double max)
{
	char	   *end;
	double		v;

	errno = 0;
	v = strtod(arg, &end);
	if (errno != 0 || end == arg || *end != '\0' || !(v >= min && v <= max))
	{
		fprintf(stderr, "broker_sim: invalid %s \"%s\" (must be %g..%g)\n",
				name, arg, min, max);
		exit(2);
	}
	return v;
}

/* Fill opts from the command line. */
static void
parse_options(int argc, char **argv)
{
	enum {OPT_WORK = 256, OPT_DRAIN, OPT_NO_PURGE, OPT_QUIET, OPT_JSON};
	static const struct option longopts[] = {
		{"dsn", required_argument, NULL, 'd'},
		{"queue", required_argument, NULL, 'q'},
		{"producers", required_argument, NULL, 'p'},
		{"consumers", required_argument, NULL, 'c'},
		{"payload-size", required_argument, NULL, 's'},
		{"batch", required_argument, NULL, 'b'},
		{"lease", required_argument, NULL, 'l'},
		{"duration", required_argument, NULL, 't'},
		{"rate", required_argument, NULL, 'r'},
		{"wait", required_argument, NULL, 'w'},
		{"work-ms", required_argument, NULL, OPT_WORK},
		{"drain-timeout", required_argument, NULL, OPT_DRAIN},
		{"no-purge", no_argument, NULL, OPT_NO_PURGE},
		{"quiet", no_argument, NULL, OPT_QUIET},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	int			c;

	while ((c = getopt_long(argc, argv, "d:q:p:c:s:b:l:t:r:w:h",
							longopts, NULL)) != -1)
	{
		switch (c)
		{
			case 'd': opts.dsn = optarg; break;
			case 'q': opts.queue = optarg; break;
			case 'p': opts.producers = parse_int(optarg, "producers", 1, MAX_THREADS); break;
			case 'c': opts.consumers = parse_int(optarg, "consumers", 1, MAX_THREADS); break;
			case 's': opts.payload_size = parse_int(optarg, "payload size", 0, MAX_PAYLOAD); break;
			case 'b': opts.batch = parse_int(optarg, "batch", 1, MAX_BATCH); break;
			case 'l': opts.lease_s = parse_num(optarg, "lease", 0.001, 86400); break;
			case 't': opts.duration_s = parse_num(optarg, "duration", 0.001, 31536000); break;
			case 'r': opts.rate = parse_num(optarg, "rate", 0, 1e9); break;
			case 'w': opts.wait_ms = parse_int(optarg, "wait", 0, 3600000); break;
			case OPT_WORK: opts.work_ms = parse_int(optarg, "work-ms", 0, 3600000); break;
			case OPT_DRAIN: opts.drain_timeout_s = parse_num(optarg, "drain timeout", 0, 31536000); break;
			case OPT_NO_PURGE: opts.no_purge = true; break;
			case OPT_QUIET: opts.quiet = true; break;
			case OPT_JSON: opts.json = true; break;
			case 'h': usage(stdout); exit(0);
			default:
				fprintf(stderr, "Try \"broker_sim --help\" for more information.\n");
				exit(2);
		}
	}
	if (optind < argc)
		bad_usage("unexpected argument: ", argv[optind]);
	if (opts.queue[0] == '\0')
		bad_usage("queue name must not be empty", "");
}

/* Microseconds on the given clock. */
static int64_t
now_us(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Sleep for the given number of microseconds. */
static void
sleep_us(int64_t us)
{
	struct timespec ts;

	if (us <= 0)
		return;
	ts.tv_sec = us / 1000000;
	ts.tv_nsec = (us % 1000000) * 1000;
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Print an error on stderr (after any progress line) and count it. */
static void
log_error(const char *fmt, ...)
{
	va_list		ap;

	pthread_mutex_lock(&log_lock);
	if (progress_open)
		fputc('\n', stderr);
	progress_open = false;
	fputs("broker_sim: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	pthread_mutex_unlock(&log_lock);
	atomic_fetch_add(&n_errors, 1);
}

/* Report a failed statement with the server message and SQLSTATE. */
static void
report_sql_error(const char *who, const char *what, PGconn *conn, PGresult *res)
{
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
	char		buf[512];
	size_t		len;

	if (msg == NULL)
	{
		/* client-side failure, or a result of an unexpected status */
		snprintf(buf, sizeof(buf), "%s%s%s",
				 res ? PQresStatus(PQresultStatus(res)) : "",
				 res ? ": " : "", PQerrorMessage(conn));
		len = strlen(buf);
		while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' ' ||
						   buf[len - 1] == ':'))
			buf[--len] = '\0';
		msg = buf;
	}
	log_error("%s: %s failed: %s (SQLSTATE %s)%s%s", who, what, msg,
			  state ? state : "none", detail ? "\nDETAIL: " : "",
			  detail ? detail : "");
}

/* Check a result's status; report, clear it and return false if wrong. */
static bool
check_result(const char *who, const char *what, PGconn *conn, PGresult *res,
			 ExecStatusType expected)
{
	if (res != NULL && PQresultStatus(res) == expected)
		return true;
	report_sql_error(who, what, conn, res);
	PQclear(res);
	return false;
}

/* Open a connection with the user's conninfo; NULL (reported) on failure. */
static PGconn *
connect_db(const char *who)
{
	const char *keys[3];
	const char *vals[3];
	int			i = 0;
	PGconn	   *conn;
	char		buf[512];
	size_t		len;

	if (opts.dsn[0] != '\0')
	{
		keys[i] = "dbname";
		vals[i++] = opts.dsn;
	}
	keys[i] = "fallback_application_name";
	vals[i++] = "broker_sim";
	keys[i] = NULL;
	vals[i] = NULL;
	conn = PQconnectdbParams(keys, vals, 1);
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
	{
		snprintf(buf, sizeof(buf), "%s",
				 conn ? PQerrorMessage(conn) : "out of memory");
		len = strlen(buf);
		while (len > 0 && buf[len - 1] == '\n')
			buf[--len] = '\0';
		log_error("%s: connection failed: %s", who, buf);
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/* Prepare one named statement on a connection. */
static bool
prepare(PGconn *conn, const char *who, const char *name, const char *sql,
		int nparams)
{
	PGresult   *res = PQprepare(conn, name, sql, nparams, NULL);

	if (!check_result(who, "prepare", conn, res, PGRES_COMMAND_OK))
		return false;
	PQclear(res);
	return true;
}

/* Hand out count sequence numbers of producer pt; -1 when out of room. */
static int64_t
track_reserve(ProducerTrack *pt, int count)
{
	int64_t		first;
	int64_t		c;

	pthread_mutex_lock(&pt->lock);
	first = pt->nissued;
	for (c = first >> CHUNK_BITS; c <= (first + count - 1) >> CHUNK_BITS; c++)
	{
		if (c >= MAX_CHUNKS)
		{
			first = -1;
			break;
		}
		if (pt->chunks[c] == NULL &&
			(pt->chunks[c] = calloc(CHUNK_SIZE, sizeof(MsgState))) == NULL)
		{
			first = -1;
			break;
		}
	}
	if (first >= 0)
		pt->nissued += count;
	pthread_mutex_unlock(&pt->lock);
	return first;
}

/* State of message n of producer pt, NULL if never issued; caller locks. */
static MsgState *
track_get(ProducerTrack *pt, int64_t n)
{
	if (n < 0 || n >= pt->nissued)
		return NULL;
	return &pt->chunks[n >> CHUNK_BITS][n & (CHUNK_SIZE - 1)];
}

/* Mark count messages from first of producer pt as committed. */
static void
track_commit(ProducerTrack *pt, int64_t first, int count)
{
	pthread_mutex_lock(&pt->lock);
	for (int i = 0; i < count; i++)
		track_get(pt, first + i)->committed = 1;
	pthread_mutex_unlock(&pt->lock);
}

/* Record a delivery of a message (rule 2); true if it overlaps another. */
static bool
record_delivery(MsgState *m, const Delivery *d, int64_t recv_us)
{
	bool		dup;

	if (!m->seen)
		dup = false;
	else if (d->dc > m->dc)
		dup = recv_us < m->lease_until_us;
	else if (d->dc == m->dc)
		dup = true;
	else
	{
		/* an older delivery recorded late: the newer one stays recorded */
		return m->recv_us < d->lease_until_us;
	}
	m->seen = 1;
	m->dc = d->dc;
	m->recv_us = recv_us;
	m->lease_until_us = d->lease_until_us;
	return dup;
}

/* Bucket index of a latency in microseconds. */
static int
hist_bucket(int64_t us)
{
	int			b;

	if (us < 1)
		return 0;
	b = (int) (log10((double) us) * HIST_PER_DECADE) + 1;
	return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

/* Add one latency sample. */
static void
hist_add(Histogram *h, int64_t us)
{
	h->counts[hist_bucket(us)]++;
	h->n++;
	if (us > h->max_us)
		h->max_us = us;
}

/* Add all samples of src into dst. */
static void
hist_merge(Histogram *dst, const Histogram *src)
{
	for (int i = 0; i < HIST_BUCKETS; i++)
		dst->counts[i] += src->counts[i];
	dst->n += src->n;
	if (src->max_us > dst->max_us)
		dst->max_us = src->max_us;
}

/* Latency in ms at quantile q (bucket geometric midpoint, capped by max). */
static double
hist_quantile_ms(const Histogram *h, double q)
{
	uint64_t	rank = (uint64_t) ceil(q * (double) h->n);
	uint64_t	seen = 0;
	double		us = 0;

	if (h->n == 0)
		return 0;
	if (rank < 1)
		rank = 1;
	for (int i = 0; i < HIST_BUCKETS; i++)
	{
		seen += h->counts[i];
		if (seen >= rank)
		{
			us = i == 0 ? 0 : pow(10.0, (i - 0.5) / HIST_PER_DECADE);
			break;
		}
	}
	if (us > (double) h->max_us)
		us = (double) h->max_us;
	return us / 1000.0;
}

/* Write one payload at dst; quotes escaped when it is a jsonb[] element. */
static size_t
format_payload(char *dst, size_t room, int p, int64_t n, bool in_array)
{
	const char *q = in_array ? "\\\"" : "\"";
	int			len;

	len = snprintf(dst, room, "{%sr%s:%s%s%s,%sp%s:%d,%sn%s:%lld,%sts%s:%lld,%spad%s:%s",
				   q, q, q, run_id, q, q, q, p, q, q, (long long) n,
				   q, q, (long long) now_us(CLOCK_REALTIME), q, q, q);
	memset(dst + len, 'x', opts.payload_size);
	len += opts.payload_size;
	len += snprintf(dst + len, room - len, "%s}", q);
	return (size_t) len;
}

/* Wait until monotonic time target_us; false if producing was stopped. */
static bool
pace_until(int64_t target_us)
{
	for (;;)
	{
		int64_t		left = target_us - now_us(CLOCK_MONOTONIC);

		if (atomic_load(&stop_producing))
			return false;
		if (left <= 0)
			return true;
		sleep_us(left < 50000 ? left : 50000);
	}
}

/* Producer thread: enqueue paced messages until told to stop. */
static void *
producer_main(void *arg)
{
	Worker	   *w = arg;
	ProducerTrack *pt = &tracks[w->index];
	PGconn	   *conn = connect_db(w->name);
	bool		ok = conn != NULL &&
		prepare(conn, w->name, "enq", opts.batch > 1 ? SQL_ENQ_BATCH : SQL_ENQ, 2);
	size_t		room = (size_t) opts.batch * (opts.payload_size + 200) + 16;
	char	   *buf = malloc(room);
	double		per_rate = opts.rate / opts.producers;
	int64_t		sent = 0;
	int64_t		start;

	pthread_barrier_wait(&start_barrier);
	start = now_us(CLOCK_MONOTONIC);
	if (buf == NULL && ok)
	{
		log_error("%s: out of memory", w->name);
		ok = false;
	}
	while (ok && !atomic_load(&stop_producing))
	{
		const char *params[2];
		PGresult   *res;
		int64_t		first;
		size_t		len = 0;

		if (per_rate > 0 && !pace_until(start + (int64_t) (sent * 1e6 / per_rate)))
			break;
		if ((first = track_reserve(pt, opts.batch)) < 0)
		{
			log_error("%s: cannot track more messages", w->name);
			break;
		}
		if (opts.batch == 1)
			len = format_payload(buf, room, w->index, first, false);
		else
		{
			buf[len++] = '{';
			for (int i = 0; i < opts.batch; i++)
			{
				if (i > 0)
					buf[len++] = ',';
				buf[len++] = '"';
				len += format_payload(buf + len, room - len, w->index, first + i, true);
				buf[len++] = '"';
			}
			buf[len++] = '}';
		}
		buf[len] = '\0';
		params[0] = opts.queue;
		params[1] = buf;
		res = PQexecPrepared(conn, "enq", 2, params, NULL, NULL, 0);
		if (!check_result(w->name, "enqueue", conn, res, PGRES_TUPLES_OK))
			break;
		if (PQntuples(res) != opts.batch)
		{
			log_error("%s: enqueue returned %d ids for %d messages",
					  w->name, PQntuples(res), opts.batch);
			PQclear(res);
			break;
		}
		PQclear(res);
		track_commit(pt, first, opts.batch);
		atomic_fetch_add(&n_produced, opts.batch);
		sent += opts.batch;
	}
	atomic_fetch_sub(&producers_running, 1);
	free(buf);
	PQfinish(conn);
	return NULL;
}

/* Parse a decimal int64 field; false if NULL or malformed. */
static bool
parse_i64(const char *s, int64_t *out)
{
	char	   *end;
	long long	v;

	if (s == NULL || *s == '\0')
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*out = v;
	return true;
}

/* Fill d from row i of a dequeue result; false (reported) on bad data. */
static bool
parse_delivery(const char *who, PGresult *res, int i, Delivery *d)
{
	int64_t		v;
	int64_t		p;

	memset(d, 0, sizeof(*d));
	d->producer = -1;
	if (!parse_i64(PQgetvalue(res, i, 0), &d->id))
	{
		log_error("%s: dequeue returned a row without id", who);
		return false;
	}
	if (!PQgetisnull(res, i, 1))
	{
		snprintf(d->receipt_buf, sizeof(d->receipt_buf), "%s", PQgetvalue(res, i, 1));
		d->receipt = d->receipt_buf;
	}
	d->dc = parse_i64(PQgetvalue(res, i, 2), &v) ? (int32_t) v : 0;
	d->lease_until_us = parse_i64(PQgetvalue(res, i, 3), &v) ? v : 0;
	if (PQgetisnull(res, i, 4) || strcmp(PQgetvalue(res, i, 4), run_id) != 0)
		return true;			/* not ours: foreign */
	if (!parse_i64(PQgetvalue(res, i, 5), &p) || p < 0 || p >= opts.producers ||
		!parse_i64(PQgetvalue(res, i, 6), &d->seq) ||
		!parse_i64(PQgetvalue(res, i, 7), &d->ts_us))
	{
		log_error("%s: message %lld of this run has a malformed payload",
				  who, (long long) d->id);
		return true;
	}
	d->producer = (int) p;
	return true;
}

/* Note that delivery d (received at recv_us) was dequeued. */
static void
note_delivery(const char *who, Delivery *d, int64_t recv_us)
{
	ProducerTrack *pt;
	MsgState   *m;

	if (d->producer < 0)
	{
		atomic_fetch_add(&n_foreign, 1);
		return;
	}
	pt = &tracks[d->producer];
	pthread_mutex_lock(&pt->lock);
	m = track_get(pt, d->seq);
	if (m != NULL && record_delivery(m, d, recv_us))
		atomic_fetch_add(&n_overlaps, 1);
	pthread_mutex_unlock(&pt->lock);
	if (m == NULL)
	{
		log_error("%s: message %lld names p=%d n=%lld, which was never produced",
				  who, (long long) d->id, d->producer, (long long) d->seq);
		d->producer = -1;
	}
}

/* Note the outcome of deleting delivery d (rule 1, latency, stale). */
static void
note_delete(Worker *w, const Delivery *d, bool deleted, int64_t recv_us)
{
	ProducerTrack *pt;
	MsgState   *m;
	int			deletes;

	if (d->producer < 0)
		return;
	if (!deleted)
	{
		atomic_fetch_add(&n_stale, 1);
		return;
	}
	pt = &tracks[d->producer];
	pthread_mutex_lock(&pt->lock);
	m = track_get(pt, d->seq);
	if (m->deletes < UINT16_MAX)
		m->deletes++;
	deletes = m->deletes;
	pthread_mutex_unlock(&pt->lock);
	if (deletes == 1)
	{
		hist_add(&w->hist, recv_us - d->ts_us);
		atomic_fetch_add(&n_consumed, 1);
	}
	else
		atomic_fetch_add(&n_double_deletes, 1);
}

/* Compare two int64 values for qsort/bsearch. */
static int
cmp_i64(const void *a, const void *b)
{
	int64_t		x = *(const int64_t *) a;
	int64_t		y = *(const int64_t *) b;

	return (x > y) - (x < y);
}

/* Delete the n deliveries of one dequeue; false on SQL error. */
static bool
delete_deliveries(Worker *w, PGconn *conn, Delivery *ds, int n,
				  int64_t recv_us, char *idbuf, int64_t *ids)
{
	const char *params[3];
	PGresult   *res;
	char		idtext[24];

	params[0] = opts.queue;
	if (opts.batch == 1)
	{
		for (int i = 0; i < n; i++)
		{
			snprintf(idtext, sizeof(idtext), "%lld", (long long) ds[i].id);
			params[1] = idtext;
			params[2] = ds[i].receipt;
			res = PQexecPrepared(conn, "del", 3, params, NULL, NULL, 0);
			if (!check_result(w->name, "delete", conn, res, PGRES_TUPLES_OK))
				return false;
			note_delete(w, &ds[i], PQntuples(res) == 1 &&
						strcmp(PQgetvalue(res, 0, 0), "t") == 0, recv_us);
			PQclear(res);
		}
		return true;
	}

	/* ids[] form: the ids that come back are the ones deleted */
	{
		size_t		len = 0;
		int			nids;

		idbuf[len++] = '{';
		for (int i = 0; i < n; i++)
			len += sprintf(idbuf + len, "%s%lld", i > 0 ? "," : "",
						   (long long) ds[i].id);
		idbuf[len++] = '}';
		idbuf[len] = '\0';
		params[1] = idbuf;
		res = PQexecPrepared(conn, "del", 2, params, NULL, NULL, 0);
		if (!check_result(w->name, "delete", conn, res, PGRES_TUPLES_OK))
			return false;
		nids = PQntuples(res);
		if (nids > n)
		{
			log_error("%s: delete returned %d ids for %d", w->name, nids, n);
			PQclear(res);
			return false;
		}
		for (int i = 0; i < nids; i++)
			if (!parse_i64(PQgetvalue(res, i, 0), &ids[i]))
				ids[i] = -1;
		PQclear(res);
		qsort(ids, nids, sizeof(int64_t), cmp_i64);
		for (int i = 0; i < n; i++)
			note_delete(w, &ds[i],
						bsearch(&ds[i].id, ids, nids, sizeof(int64_t), cmp_i64) != NULL,
						recv_us);
	}
	return true;
}

/* Consumer thread: dequeue, work, delete, until told to stop. */
static void *
consumer_main(void *arg)
{
	Worker	   *w = arg;
	PGconn	   *conn = connect_db(w->name);
	bool		ok = conn != NULL &&
		prepare(conn, w->name, "deq", SQL_DEQ, 4) &&
		prepare(conn, w->name, "del", opts.batch > 1 ? SQL_DEL_MANY : SQL_DEL_ONE,
				opts.batch > 1 ? 2 : 3);
	Delivery   *ds = calloc(opts.batch, sizeof(Delivery));
	int64_t    *ids = calloc(opts.batch, sizeof(int64_t));
	char	   *idbuf = malloc((size_t) opts.batch * 24 + 4);
	char		max_text[16];
	char		lease_text[64];
	char		wait_text[64];
	const char *params[4] = {opts.queue, max_text, lease_text, wait_text};

	snprintf(max_text, sizeof(max_text), "%d", opts.batch);
	snprintf(lease_text, sizeof(lease_text), "%.6f seconds", opts.lease_s);
	snprintf(wait_text, sizeof(wait_text), "%d milliseconds", opts.wait_ms);

	pthread_barrier_wait(&start_barrier);
	if ((ds == NULL || ids == NULL || idbuf == NULL) && ok)
	{
		log_error("%s: out of memory", w->name);
		ok = false;
	}
	while (ok && !atomic_load(&stop_consuming))
	{
		PGresult   *res = PQexecPrepared(conn, "deq", 4, params, NULL, NULL, 0);
		int64_t		recv_us = now_us(CLOCK_REALTIME);
		int			n;

		if (!check_result(w->name, "dequeue", conn, res, PGRES_TUPLES_OK))
			break;
		n = PQntuples(res);
		if (n > opts.batch)
		{
			log_error("%s: dequeue returned %d rows, asked for %d",
					  w->name, n, opts.batch);
			PQclear(res);
			break;
		}
		for (int i = 0; i < n && ok; i++)
			ok = parse_delivery(w->name, res, i, &ds[i]);
		PQclear(res);
		if (!ok)
			break;
		if (n == 0)
		{
			if (opts.wait_ms == 0)
				sleep_us(1000);
			continue;
		}
		for (int i = 0; i < n; i++)
			note_delivery(w->name, &ds[i], recv_us);
		sleep_us((int64_t) opts.work_ms * 1000 * n);
		ok = delete_deliveries(w, conn, ds, n, recv_us, idbuf, ids);
	}
	free(ds);
	free(ids);
	free(idbuf);
	PQfinish(conn);
	return NULL;
}

/* Create the queue if needed and purge it unless --no-purge. */
static bool
setup_queue(PGconn *conn)
{
	char		lease_text[64];
	char		size_text[16];
	const char *params[3] = {opts.queue, lease_text, size_text};
	int			max_size = opts.payload_size + 256;
	PGresult   *res;

	if (max_size < 4096)
		max_size = 4096;
	if (max_size > 1048576)
		max_size = 1048576;
	snprintf(lease_text, sizeof(lease_text), "%.6f seconds", opts.lease_s);
	snprintf(size_text, sizeof(size_text), "%d", max_size);
	res = PQexecParams(conn,
					   "SELECT broker.create_queue($1::text, lease => $2::interval,"
					   " max_message_size => $3::int4, if_not_exists => true)",
					   3, NULL, params, NULL, NULL, 0);
	if (!check_result("setup", "create_queue", conn, res, PGRES_TUPLES_OK))
		return false;
	PQclear(res);
	if (opts.no_purge)
		return true;
	res = PQexecParams(conn, "SELECT broker.purge_queue($1::text)",
					   1, NULL, params, NULL, NULL, 0);
	if (!check_result("setup", "purge_queue", conn, res, PGRES_TUPLES_OK))
		return false;
	PQclear(res);
	return true;
}

/* Messages left in the queue per broker.metrics(); -1 if unknown. */
static int64_t
queue_total(PGconn *conn)
{
	const char *params[1] = {opts.queue};
	PGresult   *res;
	int64_t		total = -1;

	res = PQexecParams(conn, "SELECT total FROM broker.metrics($1::text)",
					   1, NULL, params, NULL, NULL, 0);
	if (!check_result("summary", "metrics", conn, res, PGRES_TUPLES_OK))
		return -1;
	if (PQntuples(res) != 1 || !parse_i64(PQgetvalue(res, 0, 0), &total))
		total = -1;
	PQclear(res);
	return total;
}

/* Overwrite the progress line on stderr. */
static void
show_progress(double elapsed_s, int64_t prod, int64_t cons,
			  double prod_rate, double cons_rate)
{
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "\r%7.1f s  produced %10lld  consumed %10lld  backlog %8lld"
			"  %8.0f in/s  %8.0f out/s ",
			elapsed_s, (long long) prod, (long long) cons,
			(long long) (prod - cons), prod_rate, cons_rate);
	fflush(stderr);
	progress_open = true;
	pthread_mutex_unlock(&log_lock);
}

/* Count committed messages of this run that were never deleted. */
static int64_t
count_lost(void)
{
	int64_t		lost = 0;

	for (int p = 0; p < opts.producers; p++)
	{
		ProducerTrack *pt = &tracks[p];

		pthread_mutex_lock(&pt->lock);
		for (int64_t n = 0; n < pt->nissued; n++)
		{
			MsgState   *m = track_get(pt, n);

			if (m->committed && m->deletes == 0)
				lost++;
		}
		pthread_mutex_unlock(&pt->lock);
	}
	return lost;
}

/* First ^C: stop producing and drain; second: stop at once. */
static void
handle_sigint(int signo)
{
	(void) signo;
	sigint_count = sigint_count + 1;
}

/* Run the simulation and print the summary; returns the exit status. */
int
main(int argc, char **argv)
{
	int			nthreads;
	Worker	   *workers;
	PGconn	   *admin;
	sigset_t	block, old;
	struct sigaction sa;
	int64_t		t0, now, produce_end = 0, done_at, last_tick;
	int64_t		last_prod = 0, last_cons = 0;
	int64_t		produced, consumed, dups, lost, left;
	double		run_s, drain_s, cons_s;
	Histogram	hist;
	double		p50, p95, p99, pmax;
	int			status;

	parse_options(argc, argv);
	snprintf(run_id, sizeof(run_id), "%llx",
			 (unsigned long long) (now_us(CLOCK_REALTIME) ^ ((int64_t) getpid() << 40)));
	if (!PQisthreadsafe())
	{
		fprintf(stderr, "broker_sim: libpq is not thread-safe\n");
		return 1;
	}
	if ((admin = connect_db("setup")) == NULL || !setup_queue(admin))
		return 1;

	nthreads = opts.producers + opts.consumers;
	tracks = calloc(opts.producers, sizeof(ProducerTrack));
	workers = calloc(nthreads, sizeof(Worker));
	if (tracks == NULL || workers == NULL)
	{
		fprintf(stderr, "broker_sim: out of memory\n");
		return 1;
	}
	for (int p = 0; p < opts.producers; p++)
	{
		pthread_mutex_init(&tracks[p].lock, NULL);
		if ((tracks[p].chunks = calloc(MAX_CHUNKS, sizeof(MsgState *))) == NULL)
		{
			fprintf(stderr, "broker_sim: out of memory\n");
			return 1;
		}
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handle_sigint;
	sigaction(SIGINT, &sa, NULL);
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	pthread_sigmask(SIG_BLOCK, &block, &old);	/* workers never see ^C */

	pthread_barrier_init(&start_barrier, NULL, nthreads + 1);
	atomic_store(&producers_running, opts.producers);
	for (int i = 0; i < nthreads; i++)
	{
		Worker	   *w = &workers[i];
		bool		is_producer = i < opts.producers;

		w->index = is_producer ? i : i - opts.producers;
		snprintf(w->name, sizeof(w->name), "%s %d",
				 is_producer ? "producer" : "consumer", w->index);
		if (pthread_create(&w->thread, NULL,
						   is_producer ? producer_main : consumer_main, w) != 0)
		{
			fprintf(stderr, "broker_sim: cannot create thread\n");
			exit(1);
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_barrier_wait(&start_barrier);
	t0 = last_tick = now_us(CLOCK_MONOTONIC);

	/* produce for the duration, then drain until all consumed or timeout */
	for (;;)
	{
		sleep_us(10000);
		now = now_us(CLOCK_MONOTONIC);
		produced = atomic_load(&n_produced);
		consumed = atomic_load(&n_consumed);
		if (now - t0 >= (int64_t) (opts.duration_s * 1e6) ||
			sigint_count > 0 || atomic_load(&n_errors) > 0)
			atomic_store(&stop_producing, true);
		if (produce_end == 0 && atomic_load(&producers_running) == 0)
			produce_end = now;
		if (produce_end != 0 &&
			(consumed >= produced || sigint_count > 1 ||
			 atomic_load(&n_errors) > 0 ||
			 now - produce_end >= (int64_t) (opts.drain_timeout_s * 1e6)))
			break;
		if (!opts.quiet && now - last_tick >= 1000000)
		{
			double		dt = (now - last_tick) / 1e6;

			show_progress((now - t0) / 1e6, produced, consumed,
						  (produced - last_prod) / dt, (consumed - last_cons) / dt);
			last_tick = now;
			last_prod = produced;
			last_cons = consumed;
		}
	}
	done_at = now;
	atomic_store(&stop_consuming, true);
	for (int i = 0; i < nthreads; i++)
		pthread_join(workers[i].thread, NULL);

	produced = atomic_load(&n_produced);
	consumed = atomic_load(&n_consumed);
	if (!opts.quiet)
	{
		double		dt = (done_at - last_tick) / 1e6;

		if (dt <= 0)
			dt = 1;
		show_progress((done_at - t0) / 1e6, produced, consumed,
					  (produced - last_prod) / dt, (consumed - last_cons) / dt);
		pthread_mutex_lock(&log_lock);
		fputc('\n', stderr);
		progress_open = false;
		pthread_mutex_unlock(&log_lock);
	}
	left = queue_total(admin);
	PQfinish(admin);

	memset(&hist, 0, sizeof(hist));
	for (int i = opts.producers; i < nthreads; i++)
		hist_merge(&hist, &workers[i].hist);
	p50 = hist_quantile_ms(&hist, 0.50);
	p95 = hist_quantile_ms(&hist, 0.95);
	p99 = hist_quantile_ms(&hist, 0.99);
	pmax = hist.max_us / 1000.0;
	lost = count_lost();
	dups = atomic_load(&n_double_deletes) + atomic_load(&n_overlaps);
	run_s = (produce_end - t0) / 1e6;
	drain_s = (done_at - produce_end) / 1e6;
	cons_s = (done_at - t0) / 1e6;
	status = (dups == 0 && lost == 0 && atomic_load(&n_errors) == 0) ? 0 : 1;

	printf("broker_sim summary\n");
	printf("  producers/consumers  %d/%d   batch %d   payload %d B   lease %g s\n",
		   opts.producers, opts.consumers, opts.batch, opts.payload_size, opts.lease_s);
	printf("  duration             %.1f s (+ %.1f s drain)\n", run_s, drain_s);
	printf("  produced             %lld\n", (long long) produced);
	printf("  consumed             %lld\n", (long long) consumed);
	printf("  produce rate         %.0f msg/s\n", run_s > 0 ? produced / run_s : 0);
	printf("  consume rate         %.0f msg/s\n", cons_s > 0 ? consumed / cons_s : 0);
	printf("  latency p50/p95/p99/max  %.2f / %.2f / %.2f / %.2f ms\n",
		   p50, p95, p99, pmax);
	printf("  duplicates           %lld (%lld deleted again, %lld overlapping leases)\n",
		   (long long) dups, (long long) atomic_load(&n_double_deletes),
		   (long long) atomic_load(&n_overlaps));
	printf("  lost                 %lld\n", (long long) lost);
	printf("  stale deletes        %lld\n", (long long) atomic_load(&n_stale));
	printf("  foreign messages     %lld\n", (long long) atomic_load(&n_foreign));
	printf("  left in queue        %lld\n", (long long) left);
	printf("  errors               %lld\n", (long long) atomic_load(&n_errors));
	printf("  result               %s\n", status == 0 ? "OK" : "FAILED");
	if (opts.json)
		printf("{\"producers\":%d,\"consumers\":%d,\"batch\":%d,\"payload_size\":%d,"
			   "\"lease_s\":%g,\"duration_s\":%.3f,\"drain_s\":%.3f,"
			   "\"produced\":%lld,\"consumed\":%lld,"
			   "\"produce_rate\":%.1f,\"consume_rate\":%.1f,"
			   "\"latency_ms\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
			   "\"duplicates\":%lld,\"double_deletes\":%lld,\"overlapping_leases\":%lld,"
			   "\"lost\":%lld,\"stale_deletes\":%lld,\"foreign\":%lld,"
			   "\"left_in_queue\":%lld,\"errors\":%lld,\"ok\":%s}\n",
			   opts.producers, opts.consumers, opts.batch, opts.payload_size,
			   opts.lease_s, run_s, drain_s, (long long) produced,
			   (long long) consumed, run_s > 0 ? produced / run_s : 0,
			   cons_s > 0 ? consumed / cons_s : 0, p50, p95, p99, pmax,
			   (long long) dups, (long long) atomic_load(&n_double_deletes),
			   (long long) atomic_load(&n_overlaps), (long long) lost,
			   (long long) atomic_load(&n_stale), (long long) atomic_load(&n_foreign),
			   (long long) left, (long long) atomic_load(&n_errors),
			   status == 0 ? "true" : "false");
	return status;
}
