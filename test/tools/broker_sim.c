/*-------------------------------------------------------------------------
 *
 * broker_sim.c
 *		Load simulator for the broker extension.
 *
 * Producer and consumer threads, each with its own libpq connection, drive
 * broker.enqueue[_batch], broker.dequeue and broker.delete on one queue.
 * Every payload names its run, producer and sequence number,
 *
 *		{"r":"<run>","p":<producer>,"n":<seq>,"ts":<us since epoch>,"pad":"x.."}
 *
 * so each message can be checked to be consumed exactly once and timed end
 * to end (consumer receive time minus "ts", both CLOCK_REALTIME).
 *
 * Duplicate rule.  A duplicate is counted for
 *	 1. each successful delete of a message beyond its first (delete returned
 *		true, or the ids[] form returned the id), and
 *	 2. each delivery that overlaps another delivery of the same message.
 *		Deliveries are ordered by delivery_count; a later delivery received
 *		before the earlier one's lease_until means two consumers held the
 *		message at once (two deliveries with the same delivery_count always
 *		count).  The receive time is read right after dequeue returns, i.e.
 *		after the server decided to hand the message out, so a correct broker
 *		never trips this.  A holder that deleted the message is not exempted:
 *		a deleted message must never be delivered again (and the simulator
 *		never releases messages).
 * Messages of other runs (possible with --no-purge) are deleted and counted
 * as foreign, nothing else.  A stale-receipt delete (false, or an id missing
 * from what the ids[] form returned) is no error: it counts as stale.
 *
 * Through a transaction-mode pooler (PgBouncer with pool_mode = transaction)
 * each statement may run on another server connection, so a statement
 * prepared on one is unknown on the next.  --pooler sends every statement
 * with PQexecParams (the unnamed statement, parsed with each call) instead
 * of PQprepare/PQexecPrepared, and uses no session state: every call is a
 * transaction of its own.  --consumer-dsn lets the consumers, which hold a
 * server connection for the whole of a long-poll wait, use a pool of their
 * own (a separate database alias or user in the pooler).
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
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

/* latency histogram: log buckets from 1 us to 1000 s, about 1.2% wide */
#define HIST_PER_DECADE 200
#define HIST_BUCKETS	(HIST_PER_DECADE * 9 + 2)

#define SQL_ENQ			"SELECT broker.enqueue($1::text, $2::jsonb)"
#define SQL_ENQ_BATCH	"SELECT * FROM broker.enqueue_batch($1::text, $2::jsonb[])"
#define SQL_DEQ \
	"SELECT id, receipt, delivery_count," \
	" (extract(epoch FROM lease_until) * 1000000)::int8," \
	" payload->>'r', payload->>'p', payload->>'n', payload->>'ts'" \
	" FROM broker.dequeue($1::text, $2::int4, $3::interval, $4::interval)"
#define SQL_DEL_ONE		"SELECT broker.delete($1::text, $2::int8, $3::int8)"
#define SQL_DEL_MANY	"SELECT * FROM broker.delete($1::text, $2::int8[])"

/* A statement: prepared under its name, or sent whole with --pooler. */
typedef struct Stmt
{
	const char *name;
	const char *sql;
	int			nparams;
} Stmt;

static const Stmt stmt_enq = {"enq", SQL_ENQ, 2};
static const Stmt stmt_enq_batch = {"enq", SQL_ENQ_BATCH, 2};
static const Stmt stmt_deq = {"deq", SQL_DEQ, 4};
static const Stmt stmt_del_one = {"del", SQL_DEL_ONE, 3};
static const Stmt stmt_del_many = {"del", SQL_DEL_MANY, 2};

typedef struct SimOptions
{
	const char *dsn;
	const char *consumer_dsn;	/* NULL: dsn */
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
	bool		pooler;
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
	uint8_t		committed;		/* the producer's enqueue committed */
	uint16_t	deletes;		/* successful deletes */
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
	char		receipt[24];	/* text; empty if NULL */
	int32_t		dc;
	int64_t		lease_until_us;
	int			producer;		/* -1: not a message of this run */
	int64_t		seq;
	int64_t		ts_us;
	bool		deleted;		/* returned by the ids[] form of delete */
} Delivery;

typedef struct Worker
{
	pthread_t	thread;
	int			index;
	char		name[32];
	Histogram	hist;			/* consumers: end-to-end latency */
	Histogram	call_hist;		/* producers: time of each enqueue call */
} Worker;

static SimOptions opts = {
	.dsn = "", .queue = "sim", .producers = 4, .consumers = 4,
	.payload_size = 100, .batch = 1, .lease_s = 30, .duration_s = 20,
	.drain_timeout_s = 30,
};

static char run_id[32];
static ProducerTrack *tracks;
static pthread_barrier_t start_barrier;
static atomic_bool stop_producing, stop_consuming;
static atomic_int producers_running;
static _Atomic int64_t n_produced, n_consumed, n_double_deletes, n_overlaps,
			n_stale, n_foreign, n_errors;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static bool progress_open;		/* a progress line without newline is shown */

/* Print the usage text. */
static void
usage(void)
{
	fputs("Usage: broker_sim [OPTION]...\n"
		  "Load simulator for the broker extension: producers enqueue, consumers dequeue\n"
		  "and delete, and every message is checked to be consumed exactly once.\n"
		  "\n"
		  "  -d, --dsn=CONNINFO          libpq connection string (default \"\": PG* variables)\n"
		  "      --consumer-dsn=CONNINFO connection string of the consumers (default: --dsn)\n"
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
		  "  -P, --pooler                work through a transaction-mode pooler (PgBouncer):\n"
		  "                              no prepared statements (PQexecParams), no session state\n"
		  "      --quiet                 no progress line\n"
		  "      --json                  also print the summary as one JSON line\n"
		  "  -h, --help                  show this help and exit\n"
		  "\n"
		  "Exit status: 0 if there were no duplicates, no lost messages and no errors,\n"
		  "1 otherwise, 2 on bad usage.\n", stdout);
}

/* Complain about bad usage and exit with status 2. */
static void
bad_usage(const char *msg, const char *arg)
{
	fprintf(stderr, "broker_sim: %s%s\nTry \"broker_sim --help\" for more information.\n",
			msg, arg);
	exit(2);
}

/* Parse a number option within [min, max] (an integer if asked) or exit 2. */
static double
parse_num(const char *arg, const char *name, double min, double max, bool integer)
{
	char	   *end;
	double		v;

	errno = 0;
	v = strtod(arg, &end);
	if (errno != 0 || end == arg || *end != '\0' || !(v >= min && v <= max) ||
		(integer && v != floor(v)))
	{
		fprintf(stderr, "broker_sim: invalid %s \"%s\" (must be %s %g..%g)\n",
				name, arg, integer ? "an integer" : "a number", min, max);
		exit(2);
	}
	return v;
}

/* Fill opts from the command line. */
static void
parse_options(int argc, char **argv)
{
	enum {OPT_WORK = 256, OPT_DRAIN, OPT_NO_PURGE, OPT_QUIET, OPT_JSON, OPT_CONSUMER_DSN};
	static const struct option longopts[] = {
		{"dsn", required_argument, NULL, 'd'},
		{"consumer-dsn", required_argument, NULL, OPT_CONSUMER_DSN},
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
		{"pooler", no_argument, NULL, 'P'},
		{"quiet", no_argument, NULL, OPT_QUIET},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	int			c;

	while ((c = getopt_long(argc, argv, "d:q:p:c:s:b:l:t:r:w:Ph", longopts, NULL)) != -1)
	{
		switch (c)
		{
			case 'd': opts.dsn = optarg; break;
			case OPT_CONSUMER_DSN: opts.consumer_dsn = optarg; break;
			case 'q': opts.queue = optarg; break;
			case 'p': opts.producers = parse_num(optarg, "producers", 1, MAX_THREADS, true); break;
			case 'c': opts.consumers = parse_num(optarg, "consumers", 1, MAX_THREADS, true); break;
			case 's': opts.payload_size = parse_num(optarg, "payload size", 0, MAX_PAYLOAD, true); break;
			case 'b': opts.batch = parse_num(optarg, "batch", 1, MAX_BATCH, true); break;
			case 'l': opts.lease_s = parse_num(optarg, "lease", 0.001, 86400, false); break;
			case 't': opts.duration_s = parse_num(optarg, "duration", 0.001, 1e7, false); break;
			case 'r': opts.rate = parse_num(optarg, "rate", 0, 1e9, false); break;
			case 'w': opts.wait_ms = parse_num(optarg, "wait", 0, 3600000, true); break;
			case OPT_WORK: opts.work_ms = parse_num(optarg, "work-ms", 0, 3600000, true); break;
			case OPT_DRAIN: opts.drain_timeout_s = parse_num(optarg, "drain timeout", 0, 1e7, false); break;
			case OPT_NO_PURGE: opts.no_purge = true; break;
			case 'P': opts.pooler = true; break;
			case OPT_QUIET: opts.quiet = true; break;
			case OPT_JSON: opts.json = true; break;
			case 'h': usage(); exit(0);
			default: bad_usage("", "");
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
	struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};

	while (us > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Print an error on stderr (after any progress line) and count it. */
static void
log_error(const char *fmt, ...)
{
	va_list		ap;

	pthread_mutex_lock(&log_lock);
	fputs(progress_open ? "\nbroker_sim: " : "broker_sim: ", stderr);
	progress_open = false;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	pthread_mutex_unlock(&log_lock);
	atomic_fetch_add(&n_errors, 1);
}

/* Copy a libpq error message into buf without its trailing newlines. */
static const char *
chomp(char *buf, size_t size, const char *msg)
{
	size_t		len;

	snprintf(buf, size, "%s", msg);
	len = strlen(buf);
	while (len > 0 && buf[len - 1] == '\n')
		buf[--len] = '\0';
	return buf;
}

/* Check a result's status; else report (message, SQLSTATE), clear, false. */
static bool
check_result(const char *who, const char *what, PGconn *conn, PGresult *res,
			 ExecStatusType expected)
{
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
	char		buf[512];

	if (res != NULL && PQresultStatus(res) == expected)
		return true;
	if (msg == NULL && res != NULL && PQresultStatus(res) != PGRES_FATAL_ERROR)
		msg = PQresStatus(PQresultStatus(res));		/* unexpected kind of result */
	else if (msg == NULL)
		msg = chomp(buf, sizeof(buf), PQerrorMessage(conn));
	log_error("%s: %s failed: %s (SQLSTATE %s)%s%s", who, what, msg,
			  state ? state : "none", detail ? "\nDETAIL: " : "", detail ? detail : "");
	PQclear(res);
	return false;
}

/* Notice processor that drops notices (e.g. "queue already exists"). */
static void
ignore_notice(void *arg, const char *message)
{
	(void) arg;
	(void) message;
}

/* Open a connection with a conninfo ("": PG* variables); NULL (reported) on failure. */
static PGconn *
connect_db(const char *who, const char *dsn)
{
	const char *keys[3] = {"fallback_application_name", NULL, NULL};
	const char *vals[3] = {"broker_sim", NULL, NULL};
	PGconn	   *conn;
	char		buf[512];

	if (dsn[0] != '\0')
	{
		keys[1] = "dbname";
		vals[1] = dsn;
	}
	conn = PQconnectdbParams(keys, vals, 1);
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
	{
		log_error("%s: connection failed: %s", who,
				  conn ? chomp(buf, sizeof(buf), PQerrorMessage(conn)) : "out of memory");
		PQfinish(conn);
		return NULL;
	}
	PQsetNoticeProcessor(conn, ignore_notice, NULL);
	return conn;
}

/* Prepare a statement on a connection (nothing to do with --pooler). */
static bool
prepare(PGconn *conn, const char *who, const Stmt *st)
{
	PGresult   *res;

	if (opts.pooler)
		return true;
	res = PQprepare(conn, st->name, st->sql, st->nparams, NULL);
	if (!check_result(who, "prepare", conn, res, PGRES_COMMAND_OK))
		return false;
	PQclear(res);
	return true;
}

/*
 * Run a statement: the prepared one, or with --pooler the whole text as the
 * unnamed statement, which lives only as long as this call's transaction.
 */
static PGresult *
exec_stmt(PGconn *conn, const Stmt *st, const char *const *params)
{
	if (opts.pooler)
		return PQexecParams(conn, st->sql, st->nparams, NULL, params, NULL, NULL, 0);
	return PQexecPrepared(conn, st->name, st->nparams, params, NULL, NULL, 0);
}

/* Hand out count sequence numbers of producer pt; -1 when out of room. */
static int64_t
track_reserve(ProducerTrack *pt, int count)
{
	int64_t		first;

	pthread_mutex_lock(&pt->lock);
	first = pt->nissued;
	for (int64_t c = first >> CHUNK_BITS; c <= (first + count - 1) >> CHUNK_BITS; c++)
	{
		if (c >= MAX_CHUNKS ||
			(pt->chunks[c] == NULL &&
			 (pt->chunks[c] = calloc(CHUNK_SIZE, sizeof(MsgState))) == NULL))
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

	if (m->seen && d->dc < m->dc)
		return m->recv_us < d->lease_until_us;	/* older delivery, noted late */
	dup = m->seen && (d->dc == m->dc || recv_us < m->lease_until_us);
	m->seen = 1;
	m->dc = d->dc;
	m->recv_us = recv_us;
	m->lease_until_us = d->lease_until_us;
	return dup;
}

/* Add one latency sample (us) to a histogram. */
static void
hist_add(Histogram *h, int64_t us)
{
	int			b = us < 1 ? 0 : (int) (log10((double) us) * HIST_PER_DECADE) + 1;

	h->counts[b < HIST_BUCKETS ? b : HIST_BUCKETS - 1]++;
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

/* Latency (ms) at quantile q: bucket's geometric middle, capped by max. */
static double
hist_quantile_ms(const Histogram *h, double q)
{
	uint64_t	rank = (uint64_t) ceil(q * (double) h->n);
	uint64_t	seen = 0;
	double		us = 0;

	for (int i = 0; i < HIST_BUCKETS && h->n > 0; i++)
	{
		seen += h->counts[i];
		if (seen >= rank && seen > 0)
		{
			us = i == 0 ? 0 : i == HIST_BUCKETS - 1 ? (double) h->max_us :
				pow(10.0, (i - 0.5) / HIST_PER_DECADE);
			break;
		}
	}
	return (us < (double) h->max_us ? us : (double) h->max_us) / 1000.0;
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
	PGconn	   *conn = connect_db(w->name, opts.dsn);
	const Stmt *enq = opts.batch > 1 ? &stmt_enq_batch : &stmt_enq;
	bool		ok = conn != NULL && prepare(conn, w->name, enq);
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
		const char *params[2] = {opts.queue, buf};
		PGresult   *res;
		int64_t		first;
		int64_t		call_start;
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
			/* a jsonb[] literal: {"<escaped json>","<escaped json>",...} */
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
		call_start = now_us(CLOCK_MONOTONIC);
		res = exec_stmt(conn, enq, params);
		hist_add(&w->call_hist, now_us(CLOCK_MONOTONIC) - call_start);
		if (!check_result(w->name, "enqueue", conn, res, PGRES_TUPLES_OK))
			break;
		ok = PQntuples(res) == opts.batch;
		if (!ok)
			log_error("%s: enqueue returned %d ids for %d messages",
					  w->name, PQntuples(res), opts.batch);
		PQclear(res);
		if (!ok)
			break;
		track_commit(pt, first, opts.batch);
		atomic_fetch_add(&n_produced, opts.batch);
		sent += opts.batch;
	}
	atomic_fetch_sub(&producers_running, 1);
	free(buf);
	PQfinish(conn);
	return NULL;
}

/* Parse a decimal int64; false if NULL, empty or malformed. */
static bool
parse_i64(const char *s, int64_t *out)
{
	char	   *end;

	if (s == NULL || *s == '\0')
		return false;
	errno = 0;
	*out = strtoll(s, &end, 10);
	return errno == 0 && *end == '\0';
}

/* Fill d from row i of a dequeue result; false (reported) without an id. */
static bool
parse_delivery(const char *who, PGresult *res, int i, Delivery *d)
{
	int64_t		v;

	memset(d, 0, sizeof(*d));
	d->producer = -1;
	if (!parse_i64(PQgetvalue(res, i, 0), &d->id))
	{
		log_error("%s: dequeue returned a row without id", who);
		return false;
	}
	snprintf(d->receipt, sizeof(d->receipt), "%s", PQgetvalue(res, i, 1));
	d->dc = parse_i64(PQgetvalue(res, i, 2), &v) ? (int32_t) v : 0;
	d->lease_until_us = parse_i64(PQgetvalue(res, i, 3), &v) ? v : 0;
	if (PQgetisnull(res, i, 4) || strcmp(PQgetvalue(res, i, 4), run_id) != 0)
		return true;			/* a message of another run */
	if (!parse_i64(PQgetvalue(res, i, 5), &v) || v < 0 || v >= opts.producers ||
		!parse_i64(PQgetvalue(res, i, 6), &d->seq) ||
		!parse_i64(PQgetvalue(res, i, 7), &d->ts_us))
		log_error("%s: message %lld of this run has a malformed payload",
				  who, (long long) d->id);
	else
		d->producer = (int) v;
	return true;
}

/* Note that delivery d, received at recv_us, was dequeued. */
static void
note_delivery(const char *who, Delivery *d, int64_t recv_us)
{
	ProducerTrack *pt = d->producer >= 0 ? &tracks[d->producer] : NULL;
	MsgState   *m;

	if (pt == NULL)
	{
		atomic_fetch_add(&n_foreign, 1);
		return;
	}
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
	ProducerTrack *pt = &tracks[d->producer < 0 ? 0 : d->producer];
	MsgState   *m;
	int			deletes;

	if (d->producer < 0)
		return;
	if (!deleted)
	{
		atomic_fetch_add(&n_stale, 1);
		return;
	}
	pthread_mutex_lock(&pt->lock);
	m = track_get(pt, d->seq);
	if (m->deletes < UINT16_MAX)
		m->deletes++;
	deletes = m->deletes;
	pthread_mutex_unlock(&pt->lock);
	if (deletes > 1)
		atomic_fetch_add(&n_double_deletes, 1);
	else
	{
		hist_add(&w->hist, recv_us - d->ts_us);
		atomic_fetch_add(&n_consumed, 1);
	}
}

/* Delete the n deliveries of one dequeue; false on SQL error. */
static bool
delete_deliveries(Worker *w, PGconn *conn, Delivery *ds, int n, int64_t recv_us,
				  char *idbuf)
{
	const char *params[3] = {opts.queue, idbuf, NULL};
	PGresult   *res;
	size_t		len = 0;
	int			nids;

	if (opts.batch == 1)
	{
		/* delete(queue, id, receipt): false means the receipt is stale */
		for (int i = 0; i < n; i++)
		{
			sprintf(idbuf, "%lld", (long long) ds[i].id);
			params[2] = ds[i].receipt[0] ? ds[i].receipt : NULL;
			res = exec_stmt(conn, &stmt_del_one, params);
			if (!check_result(w->name, "delete", conn, res, PGRES_TUPLES_OK))
				return false;
			note_delete(w, &ds[i], PQntuples(res) == 1 &&
						strcmp(PQgetvalue(res, 0, 0), "t") == 0, recv_us);
			PQclear(res);
		}
		return true;
	}

	/* delete(queue, ids[]): the ids that come back are the ones deleted */
	idbuf[len++] = '{';
	for (int i = 0; i < n; i++)
		len += sprintf(idbuf + len, "%s%lld", i > 0 ? "," : "", (long long) ds[i].id);
	strcpy(idbuf + len, "}");
	res = exec_stmt(conn, &stmt_del_many, params);
	if (!check_result(w->name, "delete", conn, res, PGRES_TUPLES_OK))
		return false;
	if ((nids = PQntuples(res)) > n)
	{
		log_error("%s: delete returned %d ids for %d", w->name, nids, n);
		PQclear(res);
		return false;
	}
	for (int j = 0; j < nids; j++)
	{
		int64_t		id = strtoll(PQgetvalue(res, j, 0), NULL, 10);

		for (int i = 0; i < n; i++)
			ds[i].deleted |= ds[i].id == id;
	}
	PQclear(res);
	for (int i = 0; i < n; i++)
		note_delete(w, &ds[i], ds[i].deleted, recv_us);
	return true;
}

/* Consumer thread: dequeue, work, delete, until told to stop. */
static void *
consumer_main(void *arg)
{
	Worker	   *w = arg;
	PGconn	   *conn = connect_db(w->name, opts.consumer_dsn ? opts.consumer_dsn : opts.dsn);
	bool		ok = conn != NULL &&
		prepare(conn, w->name, &stmt_deq) &&
		prepare(conn, w->name, opts.batch > 1 ? &stmt_del_many : &stmt_del_one);
	Delivery   *ds = calloc(opts.batch, sizeof(Delivery));
	char	   *idbuf = malloc((size_t) opts.batch * 24 + 4);
	char		max_text[16];
	char		lease_text[64];
	char		wait_text[64];
	const char *params[4] = {opts.queue, max_text, lease_text, wait_text};

	snprintf(max_text, sizeof(max_text), "%d", opts.batch);
	snprintf(lease_text, sizeof(lease_text), "%.6f seconds", opts.lease_s);
	snprintf(wait_text, sizeof(wait_text), "%d milliseconds", opts.wait_ms);
	pthread_barrier_wait(&start_barrier);
	if ((ds == NULL || idbuf == NULL) && ok)
	{
		log_error("%s: out of memory", w->name);
		ok = false;
	}
	while (ok && !atomic_load(&stop_consuming))
	{
		PGresult   *res = exec_stmt(conn, &stmt_deq, params);
		int64_t		recv_us = now_us(CLOCK_REALTIME);
		int			n;

		if (!check_result(w->name, "dequeue", conn, res, PGRES_TUPLES_OK))
			break;
		if ((n = PQntuples(res)) > opts.batch)
		{
			log_error("%s: dequeue returned %d rows, asked for %d", w->name, n, opts.batch);
			ok = false;
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
		ok = delete_deliveries(w, conn, ds, n, recv_us, idbuf);
	}
	free(ds);
	free(idbuf);
	PQfinish(conn);
	return NULL;
}

/* Run a one-off statement on the admin connection; NULL (reported) on error. */
static PGresult *
admin_exec(PGconn *conn, const char *what, const char *sql, int nparams,
		   const char *const *params)
{
	PGresult   *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);

	return check_result("setup", what, conn, res, PGRES_TUPLES_OK) ? res : NULL;
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

	max_size = max_size < 4096 ? 4096 : max_size > 1048576 ? 1048576 : max_size;
	snprintf(lease_text, sizeof(lease_text), "%.6f seconds", opts.lease_s);
	snprintf(size_text, sizeof(size_text), "%d", max_size);
	res = admin_exec(conn, "create_queue",
					 "SELECT broker.create_queue($1::text, lease => $2::interval,"
					 " max_message_size => $3::int4, if_not_exists => true)", 3, params);
	PQclear(res);
	if (res == NULL || opts.no_purge)
		return res != NULL;
	res = admin_exec(conn, "purge_queue", "SELECT broker.purge_queue($1::text)", 1, params);
	PQclear(res);
	return res != NULL;
}

/* Overwrite the progress line on stderr. */
static void
show_progress(double elapsed_s, int64_t prod, int64_t cons, double prod_rate,
			  double cons_rate)
{
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "\r%7.1f s  produced %10lld  consumed %10lld  backlog %8lld"
			"  %8.0f in/s  %8.0f out/s ", elapsed_s, (long long) prod,
			(long long) cons, (long long) (prod - cons), prod_rate, cons_rate);
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
		for (int64_t n = 0; n < tracks[p].nissued; n++)
		{
			MsgState   *m = track_get(&tracks[p], n);

			lost += m->committed && m->deletes == 0;
		}
	}
	return lost;
}

/* Allocate tracking state and start all workers. */
static Worker *
start_workers(void)
{
	int			nthreads = opts.producers + opts.consumers;
	Worker	   *workers = calloc(nthreads, sizeof(Worker));

	tracks = calloc(opts.producers, sizeof(ProducerTrack));
	for (int p = 0; tracks != NULL && p < opts.producers; p++)
	{
		pthread_mutex_init(&tracks[p].lock, NULL);
		if ((tracks[p].chunks = calloc(MAX_CHUNKS, sizeof(MsgState *))) == NULL)
			tracks = NULL;
	}
	if (tracks == NULL || workers == NULL)
	{
		fprintf(stderr, "broker_sim: out of memory\n");
		exit(1);
	}
	pthread_barrier_init(&start_barrier, NULL, nthreads + 1);
	atomic_store(&producers_running, opts.producers);
	for (int i = 0; i < nthreads; i++)
	{
		Worker	   *w = &workers[i];
		bool		producer = i < opts.producers;

		w->index = producer ? i : i - opts.producers;
		snprintf(w->name, sizeof(w->name), "%s %d", producer ? "producer" : "consumer",
				 w->index);
		if (pthread_create(&w->thread, NULL, producer ? producer_main : consumer_main, w))
		{
			fprintf(stderr, "broker_sim: cannot create thread\n");
			exit(1);
		}
	}
	return workers;
}

/* Produce for the duration, then drain until all consumed or timed out. */
static void
run_loop(int64_t *t0, int64_t *produce_end, int64_t *done_at)
{
	int64_t		now, last_tick, produced, consumed, last_prod = 0, last_cons = 0;
	bool		done = false;

	pthread_barrier_wait(&start_barrier);
	*t0 = last_tick = now_us(CLOCK_MONOTONIC);
	*produce_end = 0;
	while (!done)
	{
		sleep_us(10000);
		now = now_us(CLOCK_MONOTONIC);
		produced = atomic_load(&n_produced);
		consumed = atomic_load(&n_consumed);
		if (now - *t0 >= (int64_t) (opts.duration_s * 1e6) || atomic_load(&n_errors) > 0)
			atomic_store(&stop_producing, true);
		if (*produce_end == 0 && atomic_load(&producers_running) == 0)
			*produce_end = now;
		done = *produce_end != 0 &&
			(consumed >= produced || atomic_load(&n_errors) > 0 ||
			 now - *produce_end >= (int64_t) (opts.drain_timeout_s * 1e6));
		if (!opts.quiet && (done || now - last_tick >= 1000000))
		{
			double		dt = now > last_tick ? (now - last_tick) / 1e6 : 1;

			show_progress((now - *t0) / 1e6, produced, consumed,
						  (produced - last_prod) / dt, (consumed - last_cons) / dt);
			last_tick = now;
			last_prod = produced;
			last_cons = consumed;
		}
	}
	*done_at = now;
	if (!opts.quiet)
	{
		pthread_mutex_lock(&log_lock);
		fputc('\n', stderr);
		progress_open = false;
		pthread_mutex_unlock(&log_lock);
	}
}

/* Print the summary (and JSON line); returns the exit status. */
static int
print_summary(const Histogram *h, const Histogram *ch, double run_s, double drain_s)
{
	int64_t		produced = atomic_load(&n_produced);
	int64_t		consumed = atomic_load(&n_consumed);
	int64_t		dd = atomic_load(&n_double_deletes);
	int64_t		ov = atomic_load(&n_overlaps);
	int64_t		errors = atomic_load(&n_errors);
	int64_t		lost = count_lost();
	double		p50 = hist_quantile_ms(h, 0.50);
	double		p95 = hist_quantile_ms(h, 0.95);
	double		p99 = hist_quantile_ms(h, 0.99);
	double		pmax = h->max_us / 1000.0;
	double		e50 = hist_quantile_ms(ch, 0.50);
	double		e95 = hist_quantile_ms(ch, 0.95);
	double		e99 = hist_quantile_ms(ch, 0.99);
	double		emax = ch->max_us / 1000.0;
	double		prod_rate = run_s > 0 ? produced / run_s : 0;
	double		cons_rate = run_s + drain_s > 0 ? consumed / (run_s + drain_s) : 0;
	int			status = (dd + ov == 0 && lost == 0 && errors == 0) ? 0 : 1;

	printf("broker_sim summary\n"
		   "  producers/consumers  %d/%d   batch %d   payload %d B   lease %g s%s\n"
		   "  duration             %.1f s (+ %.1f s drain)\n"
		   "  produced             %lld\n"
		   "  consumed             %lld\n"
		   "  produce rate         %.0f msg/s\n"
		   "  consume rate         %.0f msg/s\n"
		   "  latency p50/p95/p99/max  %.2f / %.2f / %.2f / %.2f ms\n"
		   "  enqueue call p50/p95/p99/max  %.2f / %.2f / %.2f / %.2f ms\n"
		   "  duplicates           %lld (%lld deleted again, %lld overlapping leases)\n"
		   "  lost                 %lld\n"
		   "  stale deletes        %lld\n"
		   "  foreign messages     %lld\n"
		   "  errors               %lld\n"
		   "  result               %s\n",
		   opts.producers, opts.consumers, opts.batch, opts.payload_size, opts.lease_s,
		   opts.pooler ? "   pooler" : "",
		   run_s, drain_s, (long long) produced, (long long) consumed, prod_rate,
		   cons_rate, p50, p95, p99, pmax, e50, e95, e99, emax,
		   (long long) (dd + ov), (long long) dd,
		   (long long) ov, (long long) lost, (long long) atomic_load(&n_stale),
		   (long long) atomic_load(&n_foreign), (long long) errors, status == 0 ? "OK" : "FAILED");
	if (opts.json)
		printf("{\"producers\":%d,\"consumers\":%d,\"batch\":%d,\"payload_size\":%d,"
			   "\"lease_s\":%g,\"duration_s\":%.3f,\"drain_s\":%.3f,\"produced\":%lld,"
			   "\"consumed\":%lld,\"produce_rate\":%.1f,\"consume_rate\":%.1f,"
			   "\"latency_ms\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
			   "\"enqueue_call_ms\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
			   "\"pooler\":%s,"
			   "\"duplicates\":%lld,\"double_deletes\":%lld,\"overlapping_leases\":%lld,"
			   "\"lost\":%lld,\"stale_deletes\":%lld,\"foreign\":%lld,"
			   "\"errors\":%lld,\"ok\":%s}\n",
			   opts.producers, opts.consumers, opts.batch, opts.payload_size,
			   opts.lease_s, run_s, drain_s, (long long) produced, (long long) consumed,
			   prod_rate, cons_rate, p50, p95, p99, pmax, e50, e95, e99, emax,
			   opts.pooler ? "true" : "false", (long long) (dd + ov),
			   (long long) dd, (long long) ov, (long long) lost,
			   (long long) atomic_load(&n_stale), (long long) atomic_load(&n_foreign),
			   (long long) errors, status == 0 ? "true" : "false");
	return status;
}

/* Set up the queue, run the simulation and report. */
int
main(int argc, char **argv)
{
	PGconn	   *admin;
	Worker	   *workers;
	static Histogram hist;
	static Histogram call_hist;
	int64_t		t0, produce_end, done_at;
	bool		ok;

	parse_options(argc, argv);
	snprintf(run_id, sizeof(run_id), "%llx",
			 (unsigned long long) (now_us(CLOCK_REALTIME) ^ ((int64_t) getpid() << 40)));
	if (!PQisthreadsafe())
	{
		fprintf(stderr, "broker_sim: libpq is not thread-safe\n");
		return 1;
	}
	admin = connect_db("setup", opts.dsn);
	ok = admin != NULL && setup_queue(admin);
	PQfinish(admin);
	if (!ok)
		return 1;
	workers = start_workers();
	run_loop(&t0, &produce_end, &done_at);
	atomic_store(&stop_consuming, true);
	for (int i = 0; i < opts.producers + opts.consumers; i++)
		pthread_join(workers[i].thread, NULL);

	for (int i = 0; i < opts.producers; i++)
		hist_merge(&call_hist, &workers[i].call_hist);
	for (int i = opts.producers; i < opts.producers + opts.consumers; i++)
		hist_merge(&hist, &workers[i].hist);
	free(workers);
	return print_summary(&hist, &call_hist, (produce_end - t0) / 1e6, (done_at - produce_end) / 1e6);
}
