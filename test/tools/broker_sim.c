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
 * Failover (--retry).  A client of a server that can fail over connects
 * through a multi-host conninfo with target_session_attrs=read-write, and
 * when its connection is lost, or the server it reaches is read-only (a
 * standby, a primary being demoted: SQLSTATE 25006), or the server says it
 * is going away (57P01..57P03, class 08), it connects again, with a backoff
 * from 50 ms doubling to 1 s, and runs the call again; it gives up (an
 * error) after --retry-timeout seconds, or at once when the run is
 * abandoned.  A call whose connection was lost while it ran has an unknown
 * outcome: it may have committed.  Then
 *	- an enqueue is sent again with the same dedup key: every enqueue of a
 *	  run with --retry carries the key "<run>-<producer>-<seq>" when the
 *	  queue has deduplication (broker 0.2.0 and later: every queue has a
 *	  dedup_window), so a retry of an enqueue that did commit stores nothing
 *	  and returns the id it got (--no-dedup retries without keys, and a
 *	  retry may then store the message twice: counted as "stored twice");
 *	- a delete with a receipt is sent again; if the retry deletes nothing,
 *	  the message was deleted by the lost attempt, or its lease ran out and
 *	  it was delivered again (then the simulator sees that delivery): the
 *	  delete's outcome is "unknown", and the message counts as consumed
 *	  unless a later delivery shows up;
 *	- a dequeue is sent again; a lease the lost attempt took runs out and
 *	  the message is delivered again (at least once).
 * Two more rules count as duplicates: a delivery of a message after a
 * delete of it with a receipt was acknowledged ("after a delete"; a
 * delete by id, with --batch > 1, does not check the receipt, so not
 * there), and two different ids for one message ("stored twice").
 *
 * --record=FILE writes one line per event, as it happens (line-buffered),
 * so a checker can verify the run against the server afterwards:
 *	E <producer> <seq> <id> <ack_us> <attempts> <unknown>
 *		an acknowledged enqueue (unknown = 1: an attempt had an unknown
 *		outcome before the one acknowledged)
 *	L <producer> <seq> <id> <delivery_count> <recv_us> <lease_until_us> <receipt>
 *		a delivery received by a consumer (receipt "-" if none)
 *	D <producer> <seq> <id> <delivery_count> <ack_us> <t|f|u> <attempts>
 *		a delete of that delivery: t acknowledged, f stale (nothing
 *		deleted), u unknown (a lost attempt, then nothing deleted)
 *	O <worker> <call> <start_us> <end_us> <attempts> <unknown> <error>
 *		an outage: the call failed first at start_us and succeeded at end_us
 * Times are microseconds since the epoch (CLOCK_REALTIME).  Messages of
 * other runs are not recorded.
 *
 * SIGINT or SIGTERM stops producing, as the end of --duration does (the
 * run drains and reports); a second one abandons the run.  --consumers=0
 * runs producers only: nothing is consumed, and losses are not checked
 * (a checker reads the --record file and the queue).
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
/* with --retry on a queue with deduplication: every enqueue has its key */
#define SQL_ENQ_KEY		"SELECT broker.enqueue($1::text, $2::jsonb, dedup_key => $3::text)"
#define SQL_ENQ_BATCH_KEY \
	"SELECT * FROM broker.enqueue_batch($1::text, $2::jsonb[], dedup_keys => $3::text[])"

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
static const Stmt stmt_enq_key = {"enq", SQL_ENQ_KEY, 3};
static const Stmt stmt_enq_batch_key = {"enq", SQL_ENQ_BATCH_KEY, 3};

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
	bool		retry;			/* reconnect and retry (see the header) */
	double		retry_timeout_s;
	bool		no_dedup;		/* --retry without dedup keys */
	const char *record;			/* event file, NULL: none */
} SimOptions;

/* What the simulator knows about one message of this run. */
typedef struct MsgState
{
	int64_t		id;				/* its id (acknowledged or delivered), 0: none yet */
	int64_t		recv_us;		/* receive time of latest recorded delivery */
	int64_t		lease_until_us; /* its lease_until */
	int32_t		dc;				/* its delivery_count */
	int32_t		del_dc;			/* delivery_count of the first acknowledged
								 * delete with a receipt, 0: none */
	int32_t		unknown_dc;		/* delivery_count of a delivery whose delete
								 * had an unknown outcome, 0: none */
	uint8_t		seen;			/* a delivery was recorded */
	uint8_t		committed;		/* the producer's enqueue committed */
	uint8_t		done;			/* committed and gone: counted in n_done */
	uint8_t		twice;			/* two ids were seen (counted once) */
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
	bool		consumer;
	unsigned int seed;			/* backoff jitter */
} Worker;

/*
 * A worker's connection, and what it needs again after reconnecting: the
 * statements to prepare (none with --pooler).
 */
typedef struct Session
{
	Worker	   *w;
	const char *dsn;
	PGconn	   *conn;
	const Stmt *stmts[2];
	int			nstmts;
} Session;

/* How a failed call is to be handled. */
typedef enum FailKind
{
	FAIL_FATAL,					/* report it, the worker stops */
	FAIL_RETRY,					/* the call did not commit: retry it */
	FAIL_RETRY_UNKNOWN			/* it may have committed: retry it with care */
} FailKind;

/* Whether to try again. */
typedef enum RetryState
{
	RETRY_GO,
	RETRY_CANCELLED,			/* the run is abandoned, or over */
	RETRY_TIMED_OUT				/* --retry-timeout has passed */
} RetryState;

/* The backoff of a call being retried. */
typedef struct Backoff
{
	int64_t		delay_us;		/* next wait; 0: none yet */
	int64_t		deadline_us;	/* CLOCK_MONOTONIC */
} Backoff;

/* Outcome of a delete, as far as the client can know. */
typedef enum DelOutcome
{
	DEL_OK,						/* acknowledged: deleted */
	DEL_STALE,					/* nothing deleted (receipt stale) */
	DEL_UNKNOWN					/* a lost attempt, then nothing deleted */
} DelOutcome;

static SimOptions opts = {
	.dsn = "", .queue = "sim", .producers = 4, .consumers = 4,
	.payload_size = 100, .batch = 1, .lease_s = 30, .duration_s = 20,
	.drain_timeout_s = 30, .retry_timeout_s = 60,
};

static char run_id[32];
static ProducerTrack *tracks;
static pthread_barrier_t start_barrier;
static atomic_bool stop_producing, stop_consuming;
static atomic_int producers_running;
static _Atomic int64_t n_produced, n_consumed, n_double_deletes, n_overlaps,
			n_stale, n_foreign, n_errors;
/* committed messages that are gone (deleted, or deleted by a lost call) */
static _Atomic int64_t n_done;
/* duplicates found by the rules of --retry (see the header) */
static _Atomic int64_t n_twice, n_after_delete;
/* --retry: calls retried, reconnections, calls with an unknown outcome */
static _Atomic int64_t n_retries, n_reconnects, n_enq_unknown, n_del_unknown,
			n_enq_abandoned;
/* --retry: longest outage of any worker and of a producer, in us */
static _Atomic int64_t max_outage_us, max_write_outage_us;
static volatile sig_atomic_t n_signals;	/* SIGINT/SIGTERM received */
static bool use_dedup;			/* --retry, and the queue deduplicates */
static FILE *record_file;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t record_lock = PTHREAD_MUTEX_INITIALIZER;
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
		  "  -c, --consumers=N           consumer threads (default 4; 0: produce only)\n"
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
		  "      --retry                 on a lost connection or a read-only server, reconnect\n"
		  "                              (use a multi-host --dsn with\n"
		  "                              target_session_attrs=read-write) and retry the call;\n"
		  "                              enqueues carry a dedup key so that a retry does not\n"
		  "                              store a message twice\n"
		  "      --retry-timeout=SECONDS give up a call after retrying it this long (default 60)\n"
		  "      --no-dedup              with --retry: enqueue without dedup keys (a retry may\n"
		  "                              then store a message twice)\n"
		  "      --record=FILE           write every acknowledged enqueue, delivery, delete and\n"
		  "                              outage to FILE, one line each (see the source)\n"
		  "      --quiet                 no progress line\n"
		  "      --json                  also print the summary as one JSON line\n"
		  "  -h, --help                  show this help and exit\n"
		  "\n"
		  "SIGINT or SIGTERM stops producing (then the run drains and reports); a second\n"
		  "one abandons the run.\n"
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
	enum {OPT_WORK = 256, OPT_DRAIN, OPT_NO_PURGE, OPT_QUIET, OPT_JSON, OPT_CONSUMER_DSN,
	OPT_RETRY, OPT_RETRY_TIMEOUT, OPT_NO_DEDUP, OPT_RECORD};
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
		{"retry", no_argument, NULL, OPT_RETRY},
		{"retry-timeout", required_argument, NULL, OPT_RETRY_TIMEOUT},
		{"no-dedup", no_argument, NULL, OPT_NO_DEDUP},
		{"record", required_argument, NULL, OPT_RECORD},
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
			case 'c': opts.consumers = parse_num(optarg, "consumers", 0, MAX_THREADS, true); break;
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
			case OPT_RETRY: opts.retry = true; break;
			case OPT_RETRY_TIMEOUT: opts.retry_timeout_s = parse_num(optarg, "retry timeout", 0, 1e7, false); break;
			case OPT_NO_DEDUP: opts.no_dedup = true; break;
			case OPT_RECORD: opts.record = optarg; break;
			case 'h': usage(); exit(0);
			default: bad_usage("", "");
		}
	}
	if (optind < argc)
		bad_usage("unexpected argument: ", argv[optind]);
	if (opts.queue[0] == '\0')
		bad_usage("queue name must not be empty", "");
	if (opts.no_dedup && !opts.retry)
		bad_usage("--no-dedup needs --retry", "");
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

/*
 * Open a connection; NULL on failure, with the reason in err.  Its
 * application_name (unless PGAPPNAME or the DSN sets one) names the worker,
 * "broker_sim consumer 2": broker.consumers attributes the work to it.
 */
static PGconn *
open_conn(const char *dsn, const char *worker, char *err, size_t errsize)
{
	const char *keys[3] = {"fallback_application_name", NULL, NULL};
	const char *vals[3] = {NULL, NULL, NULL};
	char		appname[64];
	PGconn	   *conn;
	char		buf[512];

	snprintf(appname, sizeof(appname), "broker_sim %s", worker);
	vals[0] = appname;

	if (dsn[0] != '\0')
	{
		keys[1] = "dbname";
		vals[1] = dsn;
	}
	conn = PQconnectdbParams(keys, vals, 1);
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
	{
		snprintf(err, errsize, "connection failed: %s",
				 conn ? chomp(buf, sizeof(buf), PQerrorMessage(conn)) : "out of memory");
		PQfinish(conn);
		return NULL;
	}
	PQsetNoticeProcessor(conn, ignore_notice, NULL);
	return conn;
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

/* Write one line to the --record file, if any. */
static void
record_line(const char *fmt, ...)
{
	va_list		ap;

	if (record_file == NULL)
		return;
	pthread_mutex_lock(&record_lock);
	va_start(ap, fmt);
	vfprintf(record_file, fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&record_lock);
}

/* Raise an atomic maximum to v. */
static void
atomic_max(_Atomic int64_t *max, int64_t v)
{
	int64_t		cur = atomic_load(max);

	while (v > cur && !atomic_compare_exchange_weak(max, &cur, v))
		;
}

/*
 * A failed call's message and SQLSTATE on one line (for the --record file
 * and the report of a call given up).
 */
static const char *
failure_text(PGconn *conn, const PGresult *res, char *buf, size_t size)
{
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	char		tmp[400];

	if (msg == NULL)
		msg = conn ? chomp(tmp, sizeof(tmp), PQerrorMessage(conn)) : "no connection";
	snprintf(buf, size, "%s (SQLSTATE %s)", msg, state ? state : "none");
	for (char *c = buf; *c; c++)
		if (*c == '\n' || *c == '\t' || *c == '\r')
			*c = ' ';
	return buf;
}

/*
 * How to handle a failed call (res may be NULL).  Without --retry every
 * failure is fatal.  With it: a lost connection, and the errors of a
 * server going away, leave the outcome unknown; a read-only server
 * (25006: a standby, or a primary that is being demoted) did nothing.
 */
static FailKind
classify_failure(PGconn *conn, const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	if (!opts.retry)
		return FAIL_FATAL;
	if (conn == NULL || PQstatus(conn) == CONNECTION_BAD)
		return FAIL_RETRY_UNKNOWN;
	if (state == NULL)
		return FAIL_FATAL;
	if (strcmp(state, "25006") == 0)
		return FAIL_RETRY;
	if (strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
		strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0)
		return FAIL_RETRY_UNKNOWN;
	return FAIL_FATAL;
}

/*
 * Whether a worker is to stop retrying: the run is abandoned (an error
 * elsewhere, a second signal), or, for a consumer, over.
 */
static bool
cancelled(const Worker *w)
{
	return n_signals >= 2 || atomic_load(&n_errors) > 0 ||
		(w->consumer && atomic_load(&stop_consuming));
}

/*
 * Wait before the next attempt: nothing before the first retry, then 50 ms
 * doubling up to 1 s, each +-25%, never past the deadline; in slices of at
 * most 50 ms, so that cancelling takes effect at once.
 */
static RetryState
backoff_sleep(Worker *w, Backoff *b)
{
	int64_t		until;

	if (b->delay_us > 0)
	{
		until = now_us(CLOCK_MONOTONIC) +
			(int64_t) (b->delay_us * (0.75 + 0.5 * rand_r(&w->seed) / (double) RAND_MAX));
		if (until > b->deadline_us)
			until = b->deadline_us;
		while (!cancelled(w))
		{
			int64_t		left = until - now_us(CLOCK_MONOTONIC);

			if (left <= 0)
				break;
			sleep_us(left < 50000 ? left : 50000);
		}
	}
	b->delay_us = b->delay_us == 0 ? 50000 : b->delay_us >= 500000 ? 1000000 : 2 * b->delay_us;
	if (cancelled(w))
		return RETRY_CANCELLED;
	if (now_us(CLOCK_MONOTONIC) >= b->deadline_us)
		return RETRY_TIMED_OUT;
	return RETRY_GO;
}

/*
 * One attempt to (re)open a session's connection and prepare its
 * statements; on failure the reason is in err, and *fatal tells a failure
 * that no retry can mend (a statement that cannot be prepared on a
 * writable server).
 */
static bool
session_try_connect(Session *s, char *err, size_t errsize, bool *fatal)
{
	*fatal = false;
	PQfinish(s->conn);
	s->conn = open_conn(s->dsn, s->w->name, err, errsize);
	for (int i = 0; s->conn != NULL && !opts.pooler && i < s->nstmts; i++)
	{
		const Stmt *st = s->stmts[i];
		PGresult   *res = PQprepare(s->conn, st->name, st->sql, st->nparams, NULL);
		char		buf[500];

		if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK)
		{
			PQclear(res);
			continue;
		}
		snprintf(err, errsize, "prepare failed: %s", failure_text(s->conn, res, buf, sizeof(buf)));
		*fatal = classify_failure(s->conn, res) == FAIL_FATAL;
		PQclear(res);
		PQfinish(s->conn);
		s->conn = NULL;
	}
	return s->conn != NULL;
}

/*
 * Open a session's first connection; false (reported) on failure.  With
 * --retry a failed connection is tried again as a failed call is.
 */
static bool
session_open(Session *s)
{
	Backoff		b = {0, now_us(CLOCK_MONOTONIC) + (int64_t) (opts.retry_timeout_s * 1e6)};
	char		err[600];
	bool		fatal;
	RetryState	rs = RETRY_GO;

	while (!session_try_connect(s, err, sizeof(err), &fatal))
	{
		if (!opts.retry || fatal || (rs = backoff_sleep(s->w, &b)) != RETRY_GO)
		{
			if (rs != RETRY_CANCELLED)
				log_error("%s: %s%s", s->w->name, err,
						  rs == RETRY_TIMED_OUT ? " (retried until --retry-timeout)" : "");
			return false;
		}
	}
	return true;
}

/* Note an outage of a worker, from start_us to now (a call that was retried). */
static void
note_outage(Worker *w, const char *what, int64_t start_us, int attempts, bool unknown,
			const char *err)
{
	int64_t		end_us = now_us(CLOCK_REALTIME);

	atomic_max(&max_outage_us, end_us - start_us);
	if (!w->consumer)
		atomic_max(&max_write_outage_us, end_us - start_us);
	record_line("O %c%d %s %lld %lld %d %d %s\n", w->consumer ? 'c' : 'p', w->index, what,
				(long long) start_us, (long long) end_us, attempts, unknown ? 1 : 0, err);
}

/*
 * Run a statement of the session: the result (PGRES_TUPLES_OK) or NULL
 * (reported, unless the run is being abandoned).  With --retry, a call that
 * failed because the connection was lost, the server is read-only or is
 * going away is run again on a new connection (the same parameters: a
 * retried enqueue has the same dedup key, a retried delete the same
 * receipt), with a backoff, until it succeeds, fails otherwise, the run is
 * abandoned or --retry-timeout has passed since its first failure.
 * *unknown tells whether an attempt may have committed unseen, *attempts
 * how many were made.
 */
static PGresult *
session_exec(Session *s, const Stmt *st, const char *const *params, const char *what,
			 bool *unknown, int *attempts)
{
	Backoff		b = {0, 0};
	int64_t		start_us = 0;
	char		err[500] = "";
	char		cerr[600];
	bool		fatal;
	RetryState	rs;

	*unknown = false;
	*attempts = 0;
	for (;;)
	{
		PGresult   *res = exec_stmt(s->conn, st, params);
		FailKind	kind;

		(*attempts)++;
		if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK)
		{
			if (start_us != 0)
				note_outage(s->w, what, start_us, *attempts, *unknown, err);
			return res;
		}
		if ((kind = classify_failure(s->conn, res)) == FAIL_FATAL)
		{
			check_result(s->w->name, what, s->conn, res, PGRES_TUPLES_OK);
			return NULL;
		}
		*unknown |= kind == FAIL_RETRY_UNKNOWN;
		if (start_us == 0)
		{
			start_us = now_us(CLOCK_REALTIME);
			b.deadline_us = now_us(CLOCK_MONOTONIC) + (int64_t) (opts.retry_timeout_s * 1e6);
			failure_text(s->conn, res, err, sizeof(err));
		}
		PQclear(res);
		atomic_fetch_add(&n_retries, 1);
		/* a new connection, to a writable server with a multi-host conninfo */
		do
		{
			if ((rs = backoff_sleep(s->w, &b)) != RETRY_GO)
			{
				if (rs == RETRY_TIMED_OUT)
					log_error("%s: %s: gave up after %.1f s: %s", s->w->name, what,
							  (now_us(CLOCK_REALTIME) - start_us) / 1e6, err);
				return NULL;
			}
			if (!session_try_connect(s, cerr, sizeof(cerr), &fatal) && fatal)
			{
				log_error("%s: %s", s->w->name, cerr);
				return NULL;
			}
		} while (s->conn == NULL);
		atomic_fetch_add(&n_reconnects, 1);
	}
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

/* Note an id of message m; a second, different one: stored twice.  Caller locks. */
static void
note_id(MsgState *m, int64_t id)
{
	if (m->id == 0)
		m->id = id;
	else if (m->id != id && !m->twice)
	{
		m->twice = 1;
		atomic_fetch_add(&n_twice, 1);
	}
}

/*
 * Count m in n_done while it is committed and gone: deleted, or deleted by
 * a delete whose outcome is unknown, and not delivered since.  Caller locks.
 */
static void
track_settle(MsgState *m)
{
	bool		done = m->committed &&
		(m->deletes > 0 || (m->unknown_dc != 0 && m->unknown_dc == m->dc));

	if (done != (bool) m->done)
	{
		m->done = done;
		atomic_fetch_add(&n_done, done ? 1 : -1);
	}
}

/* Mark count messages from first of producer pt as committed, with their ids. */
static void
track_commit(ProducerTrack *pt, int64_t first, int count, const int64_t *ids)
{
	pthread_mutex_lock(&pt->lock);
	for (int i = 0; i < count; i++)
	{
		MsgState   *m = track_get(pt, first + i);

		m->committed = 1;
		note_id(m, ids[i]);
		track_settle(m);
	}
	pthread_mutex_unlock(&pt->lock);
}

/*
 * Record a delivery of a message (rule 2); true if it overlaps another.
 * Also counts a delivery after an acknowledged delete with a receipt.
 */
static bool
record_delivery(MsgState *m, const Delivery *d, int64_t recv_us)
{
	bool		dup;

	note_id(m, d->id);
	if (m->del_dc != 0 && d->dc > m->del_dc)
		atomic_fetch_add(&n_after_delete, 1);
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

static bool parse_i64(const char *s, int64_t *out);

/* Producer thread: enqueue paced messages until told to stop. */
static void *
producer_main(void *arg)
{
	Worker	   *w = arg;
	ProducerTrack *pt = &tracks[w->index];
	const Stmt *enq = opts.batch > 1 ? (use_dedup ? &stmt_enq_batch_key : &stmt_enq_batch) :
		(use_dedup ? &stmt_enq_key : &stmt_enq);
	Session		s = {.w = w, .dsn = opts.dsn, .stmts = {enq}, .nstmts = 1};
	bool		ok = session_open(&s);
	size_t		room = (size_t) opts.batch * (opts.payload_size + 200) + 16;
	char	   *buf = malloc(room);
	char	   *keys = malloc((size_t) opts.batch * 64 + 4);
	int64_t    *ids = malloc(sizeof(int64_t) * opts.batch);
	double		per_rate = opts.rate / opts.producers;
	int64_t		sent = 0;
	int64_t		start;

	pthread_barrier_wait(&start_barrier);
	start = now_us(CLOCK_MONOTONIC);
	if ((buf == NULL || keys == NULL || ids == NULL) && ok)
	{
		log_error("%s: out of memory", w->name);
		ok = false;
	}
	while (ok && !atomic_load(&stop_producing))
	{
		const char *params[3] = {opts.queue, buf, keys};
		PGresult   *res;
		int64_t		first;
		int64_t		call_start;
		int64_t		ack_us;
		size_t		len = 0;
		size_t		klen = 0;
		bool		unknown;
		int			attempts;

		if (per_rate > 0 && !pace_until(start + (int64_t) (sent * 1e6 / per_rate)))
			break;
		if ((first = track_reserve(pt, opts.batch)) < 0)
		{
			log_error("%s: cannot track more messages", w->name);
			break;
		}
		if (opts.batch == 1)
		{
			len = format_payload(buf, room, w->index, first, false);
			snprintf(keys, 64, "%s-%d-%lld", run_id, w->index, (long long) first);
		}
		else
		{
			/* a jsonb[] literal: {"<escaped json>","<escaped json>",...} */
			buf[len++] = '{';
			keys[klen++] = '{';
			for (int i = 0; i < opts.batch; i++)
			{
				if (i > 0)
				{
					buf[len++] = ',';
					keys[klen++] = ',';
				}
				buf[len++] = '"';
				len += format_payload(buf + len, room - len, w->index, first + i, true);
				buf[len++] = '"';
				/* keys need no quotes: hex digits, digits and '-' */
				klen += sprintf(keys + klen, "%s-%d-%lld", run_id, w->index,
								(long long) (first + i));
			}
			buf[len++] = '}';
			strcpy(keys + klen, "}");
		}
		buf[len] = '\0';
		call_start = now_us(CLOCK_MONOTONIC);
		res = session_exec(&s, enq, params, "enqueue", &unknown, &attempts);
		hist_add(&w->call_hist, now_us(CLOCK_MONOTONIC) - call_start);
		if (res == NULL)
		{
			/* given up (reported) or abandoned: it may have committed */
			if (unknown)
				atomic_fetch_add(&n_enq_abandoned, opts.batch);
			break;
		}
		ack_us = now_us(CLOCK_REALTIME);
		ok = PQntuples(res) == opts.batch;
		if (!ok)
			log_error("%s: enqueue returned %d ids for %d messages",
					  w->name, PQntuples(res), opts.batch);
		for (int i = 0; i < opts.batch && ok; i++)
		{
			if (!(ok = parse_i64(PQgetvalue(res, i, 0), &ids[i])))
				log_error("%s: enqueue returned a row without id", w->name);
		}
		PQclear(res);
		if (!ok)
			break;
		track_commit(pt, first, opts.batch, ids);
		atomic_fetch_add(&n_produced, opts.batch);
		if (unknown)
			atomic_fetch_add(&n_enq_unknown, opts.batch);
		for (int i = 0; i < opts.batch; i++)
			record_line("E %d %lld %lld %lld %d %d\n", w->index, (long long) (first + i),
						(long long) ids[i], (long long) ack_us, attempts, unknown ? 1 : 0);
		sent += opts.batch;
	}
	atomic_fetch_sub(&producers_running, 1);
	free(buf);
	free(keys);
	free(ids);
	PQfinish(s.conn);
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
	if (m != NULL)
		track_settle(m);
	pthread_mutex_unlock(&pt->lock);
	if (m == NULL)
	{
		log_error("%s: message %lld names p=%d n=%lld, which was never produced",
				  who, (long long) d->id, d->producer, (long long) d->seq);
		d->producer = -1;
		return;
	}
	record_line("L %d %lld %lld %d %lld %lld %s\n", d->producer, (long long) d->seq,
				(long long) d->id, d->dc, (long long) recv_us, (long long) d->lease_until_us,
				d->receipt[0] ? d->receipt : "-");
}

/*
 * Note the outcome of deleting delivery d (rule 1, latency, stale, unknown),
 * acknowledged at ack_us after attempts calls.
 */
static void
note_delete(Worker *w, const Delivery *d, DelOutcome outcome, int64_t recv_us,
			int64_t ack_us, int attempts)
{
	ProducerTrack *pt = &tracks[d->producer < 0 ? 0 : d->producer];
	MsgState   *m;
	int			deletes;

	if (d->producer < 0)
		return;
	record_line("D %d %lld %lld %d %lld %c %d\n", d->producer, (long long) d->seq,
				(long long) d->id, d->dc, (long long) ack_us,
				outcome == DEL_OK ? 't' : outcome == DEL_STALE ? 'f' : 'u', attempts);
	if (outcome == DEL_STALE)
	{
		atomic_fetch_add(&n_stale, 1);
		return;
	}
	pthread_mutex_lock(&pt->lock);
	m = track_get(pt, d->seq);
	if (outcome == DEL_UNKNOWN)
	{
		/* deleted by the lost attempt, unless delivered again */
		if (m->unknown_dc < d->dc)
			m->unknown_dc = d->dc;
		track_settle(m);
		pthread_mutex_unlock(&pt->lock);
		atomic_fetch_add(&n_del_unknown, 1);
		return;
	}
	if (m->deletes < UINT16_MAX)
		m->deletes++;
	deletes = m->deletes;
	if (opts.batch == 1)
	{
		/* with a receipt: no later delivery may exist, before or after */
		if (m->del_dc == 0)
			m->del_dc = d->dc;
		if (m->seen && m->dc > d->dc)
			atomic_fetch_add(&n_after_delete, 1);
	}
	track_settle(m);
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
delete_deliveries(Worker *w, Session *s, Delivery *ds, int n, int64_t recv_us,
				  char *idbuf)
{
	const char *params[3] = {opts.queue, idbuf, NULL};
	PGresult   *res;
	size_t		len = 0;
	int			nids;
	bool		unknown;
	int			attempts;
	int64_t		ack_us;

	if (opts.batch == 1)
	{
		/* delete(queue, id, receipt): false means the receipt is stale */
		for (int i = 0; i < n; i++)
		{
			bool		deleted;

			sprintf(idbuf, "%lld", (long long) ds[i].id);
			params[2] = ds[i].receipt[0] ? ds[i].receipt : NULL;
			res = session_exec(s, &stmt_del_one, params, "delete", &unknown, &attempts);
			if (res == NULL)
				return false;
			ack_us = now_us(CLOCK_REALTIME);
			deleted = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
			PQclear(res);
			note_delete(w, &ds[i], deleted ? DEL_OK : unknown ? DEL_UNKNOWN : DEL_STALE,
						recv_us, ack_us, attempts);
		}
		return true;
	}

	/* delete(queue, ids[]): the ids that come back are the ones deleted */
	idbuf[len++] = '{';
	for (int i = 0; i < n; i++)
		len += sprintf(idbuf + len, "%s%lld", i > 0 ? "," : "", (long long) ds[i].id);
	strcpy(idbuf + len, "}");
	res = session_exec(s, &stmt_del_many, params, "delete", &unknown, &attempts);
	if (res == NULL)
		return false;
	ack_us = now_us(CLOCK_REALTIME);
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
		note_delete(w, &ds[i], ds[i].deleted ? DEL_OK : unknown ? DEL_UNKNOWN : DEL_STALE,
					recv_us, ack_us, attempts);
	return true;
}

/* Consumer thread: dequeue, work, delete, until told to stop. */
static void *
consumer_main(void *arg)
{
	Worker	   *w = arg;
	Session		s = {.w = w, .dsn = opts.consumer_dsn ? opts.consumer_dsn : opts.dsn,
		.stmts = {&stmt_deq, opts.batch > 1 ? &stmt_del_many : &stmt_del_one}, .nstmts = 2};
	bool		ok = session_open(&s);
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
		bool		unknown;
		int			attempts;
		PGresult   *res = session_exec(&s, &stmt_deq, params, "dequeue", &unknown, &attempts);
		int64_t		recv_us = now_us(CLOCK_REALTIME);
		int			n;

		if (res == NULL)
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
		ok = delete_deliveries(w, &s, ds, n, recv_us, idbuf);
	}
	free(ds);
	free(idbuf);
	PQfinish(s.conn);
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
	if (res == NULL)
		return false;
	if (opts.retry && !opts.no_dedup)
	{
		/* deduplication came with broker 0.2.0, and with it dedup_window */
		res = PQexecParams(conn, "SELECT dedup_window FROM broker.queues WHERE queue = $1",
						   1, NULL, params, NULL, NULL, 0);
		use_dedup = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
			!PQgetisnull(res, 0, 0);
		PQclear(res);
		if (!use_dedup)
			fprintf(stderr, "broker_sim: queue \"%s\" has no deduplication: a retried enqueue "
					"may store a message twice\n", opts.queue);
	}
	if (opts.no_purge)
		return true;
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

			lost += m->committed && !m->done;
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
		w->consumer = !producer;
		w->seed = (unsigned int) (now_us(CLOCK_REALTIME) ^ (i * 2654435761u));
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
	bool		abandoned = false;

	pthread_barrier_wait(&start_barrier);
	*t0 = last_tick = now_us(CLOCK_MONOTONIC);
	*produce_end = 0;
	while (!done)
	{
		sleep_us(10000);
		now = now_us(CLOCK_MONOTONIC);
		produced = atomic_load(&n_produced);
		consumed = atomic_load(&n_consumed);
		if (n_signals >= 2 && !abandoned)
		{
			log_error("run abandoned (second signal)");
			abandoned = true;
		}
		if (now - *t0 >= (int64_t) (opts.duration_s * 1e6) || atomic_load(&n_errors) > 0 ||
			n_signals > 0)
			atomic_store(&stop_producing, true);
		if (*produce_end == 0 && atomic_load(&producers_running) == 0)
			*produce_end = now;
		/* drained: every committed message is gone */
		done = *produce_end != 0 &&
			(opts.consumers == 0 || atomic_load(&n_done) >= produced ||
			 atomic_load(&n_errors) > 0 ||
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
	int64_t		tw = atomic_load(&n_twice);
	int64_t		ad = atomic_load(&n_after_delete);
	int64_t		dups = dd + ov + tw + ad;
	int64_t		errors = atomic_load(&n_errors);
	int64_t		lost = opts.consumers > 0 ? count_lost() : 0;
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
	double		outage_s = atomic_load(&max_outage_us) / 1e6;
	double		write_outage_s = atomic_load(&max_write_outage_us) / 1e6;
	int			status = (dups == 0 && lost == 0 && errors == 0) ? 0 : 1;
	char		lost_text[64];

	if (opts.consumers > 0)
		snprintf(lost_text, sizeof(lost_text), "%lld", (long long) lost);
	else
		snprintf(lost_text, sizeof(lost_text), "not checked (no consumers)");
	printf("broker_sim summary\n"
		   "  producers/consumers  %d/%d   batch %d   payload %d B   lease %g s%s\n"
		   "  duration             %.1f s (+ %.1f s drain)\n"
		   "  produced             %lld\n"
		   "  consumed             %lld\n"
		   "  produce rate         %.0f msg/s\n"
		   "  consume rate         %.0f msg/s\n"
		   "  latency p50/p95/p99/max  %.2f / %.2f / %.2f / %.2f ms\n"
		   "  enqueue call p50/p95/p99/max  %.2f / %.2f / %.2f / %.2f ms\n"
		   "  duplicates           %lld (%lld deleted again, %lld overlapping leases,"
		   " %lld stored twice, %lld after a delete)\n"
		   "  lost                 %s\n"
		   "  stale deletes        %lld\n"
		   "  foreign messages     %lld\n",
		   opts.producers, opts.consumers, opts.batch, opts.payload_size, opts.lease_s,
		   opts.pooler ? "   pooler" : "",
		   run_s, drain_s, (long long) produced, (long long) consumed, prod_rate,
		   cons_rate, p50, p95, p99, pmax, e50, e95, e99, emax,
		   (long long) dups, (long long) dd, (long long) ov, (long long) tw,
		   (long long) ad, lost_text, (long long) atomic_load(&n_stale),
		   (long long) atomic_load(&n_foreign));
	if (opts.retry)
		printf("  retried calls        %lld (%lld reconnections)\n"
			   "  unknown outcomes     %lld enqueues (retried %s), %lld deletes,"
			   " %lld enqueues given up\n"
			   "  longest outage       %.3f s (producers %.3f s)\n",
			   (long long) atomic_load(&n_retries), (long long) atomic_load(&n_reconnects),
			   (long long) atomic_load(&n_enq_unknown),
			   use_dedup ? "with their dedup keys" : "without dedup keys",
			   (long long) atomic_load(&n_del_unknown),
			   (long long) atomic_load(&n_enq_abandoned), outage_s, write_outage_s);
	printf("  errors               %lld\n"
		   "  result               %s\n",
		   (long long) errors, status == 0 ? "OK" : "FAILED");
	if (opts.json)
		printf("{\"producers\":%d,\"consumers\":%d,\"batch\":%d,\"payload_size\":%d,"
			   "\"lease_s\":%g,\"duration_s\":%.3f,\"drain_s\":%.3f,\"produced\":%lld,"
			   "\"consumed\":%lld,\"produce_rate\":%.1f,\"consume_rate\":%.1f,"
			   "\"latency_ms\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
			   "\"enqueue_call_ms\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
			   "\"pooler\":%s,"
			   "\"duplicates\":%lld,\"double_deletes\":%lld,\"overlapping_leases\":%lld,"
			   "\"stored_twice\":%lld,\"after_delete\":%lld,"
			   "\"lost\":%lld,\"stale_deletes\":%lld,\"foreign\":%lld,"
			   "\"retry\":%s,\"dedup\":%s,\"retried_calls\":%lld,\"reconnects\":%lld,"
			   "\"enqueue_unknown\":%lld,\"delete_unknown\":%lld,\"enqueue_given_up\":%lld,"
			   "\"max_outage_s\":%.3f,\"max_write_outage_s\":%.3f,"
			   "\"errors\":%lld,\"ok\":%s}\n",
			   opts.producers, opts.consumers, opts.batch, opts.payload_size,
			   opts.lease_s, run_s, drain_s, (long long) produced, (long long) consumed,
			   prod_rate, cons_rate, p50, p95, p99, pmax, e50, e95, e99, emax,
			   opts.pooler ? "true" : "false", (long long) dups,
			   (long long) dd, (long long) ov, (long long) tw, (long long) ad,
			   (long long) lost, (long long) atomic_load(&n_stale),
			   (long long) atomic_load(&n_foreign),
			   opts.retry ? "true" : "false", use_dedup ? "true" : "false",
			   (long long) atomic_load(&n_retries), (long long) atomic_load(&n_reconnects),
			   (long long) atomic_load(&n_enq_unknown), (long long) atomic_load(&n_del_unknown),
			   (long long) atomic_load(&n_enq_abandoned), outage_s, write_outage_s,
			   (long long) errors, status == 0 ? "true" : "false");
	return status;
}

/* SIGINT, SIGTERM: the first stops producing, a second abandons the run. */
static void
handle_signal(int signo)
{
	(void) signo;
	n_signals++;
}

/* Set up the queue, run the simulation and report. */
int
main(int argc, char **argv)
{
	static Worker setup_worker = {.name = "setup"};
	Session		admin = {.w = &setup_worker};
	Worker	   *workers;
	static Histogram hist;
	static Histogram call_hist;
	int64_t		t0, produce_end, done_at;
	struct sigaction sa = {.sa_handler = handle_signal};
	bool		ok;
	int			status;

	parse_options(argc, argv);
	snprintf(run_id, sizeof(run_id), "%llx",
			 (unsigned long long) (now_us(CLOCK_REALTIME) ^ ((int64_t) getpid() << 40)));
	if (!PQisthreadsafe())
	{
		fprintf(stderr, "broker_sim: libpq is not thread-safe\n");
		return 1;
	}
	if (opts.record != NULL)
	{
		if ((record_file = fopen(opts.record, "w")) == NULL)
		{
			fprintf(stderr, "broker_sim: cannot open %s: %s\n", opts.record, strerror(errno));
			return 1;
		}
		/* a line at a time, so that a checker may read it during the run */
		setvbuf(record_file, NULL, _IOLBF, 0);
	}
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	admin.dsn = opts.dsn;
	ok = session_open(&admin) && setup_queue(admin.conn);
	PQfinish(admin.conn);
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
	status = print_summary(&hist, &call_hist, (produce_end - t0) / 1e6,
						   (done_at - produce_end) / 1e6);
	if (record_file != NULL && fclose(record_file) != 0)
	{
		fprintf(stderr, "broker_sim: cannot write %s: %s\n", opts.record, strerror(errno));
		status = 1;
	}
	return status;
}
