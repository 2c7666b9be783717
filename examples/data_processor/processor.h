/*
 * processor.h: the async data processor, an example of broker in C on libpq.
 *
 *   main.c    options, the supervisor (worker pools, clean stop), the history
 *   http.c    POST /message: validate, shard by timestamp, enqueue in one
 *             transaction (libmicrohttpd, json-c); GET /workers
 *   worker.c  a worker process: batches under a lease, append + fsync,
 *             then delete
 *   db.c      connections that come back: what a lost connection is, and
 *             connecting again with a bounded backoff
 */
#ifndef PROCESSOR_H
#define PROCESSOR_H

#include <libpq-fe.h>
#include <json-c/json.h>

struct config
{
	const char *dsn;			/* libpq connection string ("": PG* environment) */
	const char *listen;			/* address the HTTP endpoint binds */
	int			port;			/* its port; 0: any free one */
	const char *port_file;		/* where to write the port once listening */
	const char *out;			/* directory of the workers' files */
	const char *prefix;			/* queue names: prefix + shard number */
	int			shards;			/* N queues */
	int			min_workers;	/* workers per shard at start */
	int			max_workers;	/* at most this many per shard */
	int			grow_at;		/* a pool grows while its queue has more ready */
	int			batch;			/* messages per dequeue */
	int			timeout;		/* seconds: a batch's lease, its processing timeout */
	int			work_ms;		/* simulated processing time per batch */
	int			reconnect_timeout;	/* seconds a worker tries to connect again
									 * after a lost connection before it gives up */
	const char *kill_after_write;	/* test fault "ID:N": worker ID dies after its
									 * Nth write, before the delete */
	int			lose_commit_reply;	/* test fault: the answer to the COMMIT of
									 * the Nth POST /message is lost */
	/* set only in a worker process */
	const char *worker_id;
	int			shard;
	int			extra;			/* an extra worker leaves when its queue is empty */
};

/* main.c */
extern volatile sig_atomic_t stop_requested;
void		queue_name(const struct config *cfg, int shard, char *buf, size_t size);
json_object *history_json(PGconn *conn);

/* http.c */
struct MHD_Daemon *http_start(const struct config *cfg);

/* worker.c */
int			worker_main(const struct config *cfg);

/* db.c */
struct backoff
{
	double		started;		/* now_s() at backoff_start */
	double		deadline;		/* when to give up */
	int			pause_ms;		/* the next pause (before jitter) */
	int			attempts;		/* attempts allowed so far */
};

double		now_s(void);
int			pause_ms(int ms);

/* Is this the failure of a lost connection (res: the failed statement's
 * result, NULL when libpq returned none)? */
int			db_lost(PGconn *conn, const PGresult *res);

/* The error of res (or else of conn) on one line, into buf. */
void		db_error(PGconn *conn, const PGresult *res, char *buf, size_t size);

/* One attempt to connect, for at most `seconds`, given up at once on a stop
 * request if stoppable: the connection, or NULL with the reason in error.
 * Its notices are printed after "who: " (a string that outlives it). */
PGconn	   *db_connect_once(const char *dsn, const char *who, double seconds, int stoppable,
							char *error, size_t size);

/* Attempts within `seconds`: call backoff_wait before each one.  The first
 * returns at once; the next ones pause 50 ms, 100 ms, ... up to 2 s (less a
 * random part of up to a half).  False once the time has passed (after at
 * least one attempt) or a stop is requested. */
void		backoff_start(struct backoff *b, double seconds);
int			backoff_wait(struct backoff *b);
double		backoff_left(const struct backoff *b);

#endif
