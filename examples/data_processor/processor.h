/*
 * processor.h: the async data processor, an example of broker in C on libpq.
 *
 *   main.c    options, the supervisor (worker pools, clean stop), the history
 *   http.c    POST /message: validate, shard by timestamp, enqueue in one
 *             transaction (libmicrohttpd, json-c); GET /workers
 *   worker.c  a worker process: batches under a lease, append + fsync,
 *             then delete
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
	const char *kill_after_write;	/* test fault "ID:N": worker ID dies after its
									 * Nth write, before the delete */
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

#endif
