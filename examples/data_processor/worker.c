/*
 * worker.c: one worker of a shard's pool, a process of its own (the
 * supervisor runs it as `processor --worker ID --shard K ...`).
 *
 * Its loop: take a batch of up to 5 messages under a lease as long as the
 * processing timeout, waiting up to a second for one (long-poll); process
 * it; append it to its file OUT/ID.jsonl, one line per message, and fsync;
 * only then delete each message with its receipt.
 *
 * Each message ends up in exactly one file, exactly once, also when a
 * worker is killed (kill -9) at any point:
 *  - killed before its write: the batch's leases run out and the messages
 *    are delivered again, to another worker of the shard, which writes them;
 *  - killed after its write, before the delete: they are delivered again
 *    too, with a delivery_count of 2 or more.  A worker that receives such a
 *    redelivery looks for the ids in the files of the shard, skips the ones
 *    already written, and deletes them all.  A first delivery cannot have
 *    been written by anyone, so the files are read only after a crash;
 *  - stalled past its lease (a stop, a swap storm): meanwhile the messages
 *    may have gone to another worker.  So, before it writes, a worker
 *    confirms its leases with extend_lease, which fails for a message
 *    delivered again since: it writes only what it still holds.
 * The confirmation, the search and the write + fsync happen under the
 * shard's lock (flock on OUT/.sK.lock), so that a redelivery's search sees
 * every write that a confirmed lease allowed.
 *
 * SIGTERM or SIGINT: a batch not yet written is released (deliverable again
 * at once, not after the lease); a batch being written is finished and
 * deleted; then the worker leaves.
 *
 * A lost connection (the server restarted, crashed or failed over; see
 * db.c) does not end the worker: it connects again, with a backoff of
 * 50 ms doubling to 2 s, names itself again (broker.consumer,
 * application_name) and goes on; it gives up, and exits with status 1,
 * only when --reconnect-timeout (60 s) passes without a connection, and
 * leaves at once when a stop is requested meanwhile.  What it held is safe
 * wherever the connection broke, since the database keeps the leases:
 *  - in dequeue (or in release, at a stop): whatever it took comes back
 *    after its lease, to a worker that looks in the files first;
 *  - while confirming the leases: nothing is written yet.  The lock is let
 *    go, and once connected again the confirmation is made again, with the
 *    same receipts: it fails for what was delivered to someone else since;
 *  - in the deletes, after the write: their outcome is unknown, so they are
 *    made again with the same receipts (a message that the first attempt
 *    deleted gives false, as does one delivered again since, which the next
 *    holder finds in our file and skips).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/prctl.h>

#include "processor.h"

struct message
{
	char	   *id;				/* bigint as text */
	char	   *receipt;
	int			redelivered;	/* delivery_count > 1 */
	char	   *payload;		/* jsonb as JSON text (one line: jsonb output has no newline) */
	int			lost;			/* the lease was lost: someone else has it */
	int			written;		/* already in a file of the shard */
};

static const struct config *cfg;
static PGconn *conn;
static char queue[64];
static char file_path[4096];
static int	out_fd = -1;
static int	lock_fd = -1;

static void
on_signal(int sig)
{
	(void) sig;
	stop_requested = 1;
}

/*
 * Connect, or connect again after a loss, and name ourselves.  False when a
 * stop was requested first; exits when --reconnect-timeout passes.
 */
static int
reconnect(void)
{
	static int	connected_before;
	struct backoff b;
	char		error[512] = "";
	const char *params[] = {cfg->worker_id};

	if (conn != NULL)
		return 1;
	backoff_start(&b, cfg->reconnect_timeout);
	while (backoff_wait(&b))
	{
		PGresult   *res;
		int			lost;

		conn = db_connect_once(cfg->dsn, cfg->worker_id, backoff_left(&b) + 0.1, 1,
							   error, sizeof error);
		if (conn == NULL)
			continue;
		/* our name in broker.consumers (and pg_stat_activity) */
		res = PQexecParams(conn, "SELECT set_config('broker.consumer', $1, false),"
						   "       set_config('application_name', $1, false)",
						   1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK)
		{
			PQclear(res);
			if (connected_before)
				fprintf(stderr, "%s: reconnected after %.1f s (%d attempt(s))\n",
						cfg->worker_id, now_s() - b.started, b.attempts);
			connected_before = 1;
			return 1;
		}
		db_error(conn, res, error, sizeof error);
		lost = db_lost(conn, res);
		PQclear(res);
		PQfinish(conn);
		conn = NULL;
		if (!lost)
		{
			fprintf(stderr, "%s: %s\n", cfg->worker_id, error);
			exit(1);
		}
	}
	if (stop_requested)
		return 0;
	fprintf(stderr, "%s: no connection for %d s (%d attempt(s)), giving up: %s\n",
			cfg->worker_id, cfg->reconnect_timeout, b.attempts, error);
	exit(1);					/* what we hold comes back after its lease */
}

/*
 * Run a statement that returns rows.  NULL when the connection is lost: it
 * is closed, and reconnect() makes a new one.  Exits on any other error.
 */
static PGresult *
query(const char *sql, int nparams, const char *const *params)
{
	PGresult   *res;
	char		error[512];

	if (conn == NULL)
		return NULL;
	res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		return res;
	db_error(conn, res, error, sizeof error);
	if (!db_lost(conn, res))
	{
		fprintf(stderr, "%s: %s\n", cfg->worker_id, error);
		exit(1);				/* what we hold comes back after its lease */
	}
	fprintf(stderr, "%s: connection lost: %s\n", cfg->worker_id, error);
	PQclear(res);
	PQfinish(conn);
	conn = NULL;
	return NULL;
}

/* "{1,2,3}": the ids (or receipts) of the messages with lost == 0. */
static char *
array_of(struct message *m, int n, int receipts)
{
	size_t		size = 3 + n * 21;
	char	   *buf = malloc(size), *p = buf;

	*p++ = '{';
	for (int i = 0; i < n; i++)
		if (!m[i].lost)
			p += sprintf(p, "%s%s", p > buf + 1 ? "," : "", receipts ? m[i].receipt : m[i].id);
	strcpy(p, "}");
	return buf;
}

/* Call broker.release or broker.delete on every message still held; returns
 * how many it acted on, or -1 when the connection was lost. */
static int
for_each_held(const char *fn, struct message *m, int n)
{
	char		sql[256];
	char	   *ids = array_of(m, n, 0), *receipts = array_of(m, n, 1);
	const char *params[] = {queue, ids, receipts};
	PGresult   *res;
	int			count;

	snprintf(sql, sizeof sql,
			 "SELECT count(*) FILTER (WHERE broker.%s($1, t.id, t.receipt))"
			 "  FROM unnest($2::bigint[], $3::bigint[]) AS t(id, receipt)", fn);
	res = query(sql, 3, params);
	count = res ? atoi(PQgetvalue(res, 0, 0)) : -1;
	PQclear(res);
	free(ids);
	free(receipts);
	return count;
}

/* Sleep, unless a stop is requested; false if it was. */
static int
work(int ms)
{
	struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

	while (!stop_requested && nanosleep(&t, &t) != 0 && errno == EINTR)
		;
	return !stop_requested;
}

/* Confirm the leases: extend them to the full timeout again.  A message
 * delivered to someone else since (stale receipt) is marked lost.  False
 * when the connection was lost (and nothing is marked). */
static int
confirm_leases(struct message *m, int n)
{
	char		lease[32];
	char	   *ids = array_of(m, n, 0), *receipts = array_of(m, n, 1);
	const char *params[] = {queue, ids, receipts, lease};
	PGresult   *res;

	snprintf(lease, sizeof lease, "%d seconds", cfg->timeout);
	res = query("SELECT t.id FROM unnest($2::bigint[], $3::bigint[]) AS t(id, receipt)"
				" WHERE broker.extend_lease($1, t.id, t.receipt, $4::interval) IS NULL",
				4, params);
	for (int r = 0; res && r < PQntuples(res); r++)
		for (int i = 0; i < n; i++)
			if (strcmp(m[i].id, PQgetvalue(res, r, 0)) == 0)
			{
				m[i].lost = 1;
				fprintf(stderr, "%s: lease of message %s lost (processing took longer "
						"than %d s): another worker has it\n", cfg->worker_id, m[i].id,
						cfg->timeout);
			}
	PQclear(res);
	free(ids);
	free(receipts);
	return res != NULL;
}

/* Mark the redelivered messages that a file of the shard already holds. */
static void
find_written(struct message *m, int n)
{
	char		prefix[32];
	DIR		   *dir;
	struct dirent *e;
	int			found = 0, redelivered = 0;

	for (int i = 0; i < n; i++)
		redelivered += m[i].redelivered && !m[i].lost;
	if (redelivered == 0)
		return;
	snprintf(prefix, sizeof prefix, "s%d-w", cfg->shard);
	if ((dir = opendir(cfg->out)) == NULL)
	{
		perror(cfg->out);
		exit(1);
	}
	while ((e = readdir(dir)) != NULL)
	{
		char		path[4096], line[65536];
		FILE	   *f;
		size_t		len = strlen(e->d_name);

		if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || len < 6 ||
			strcmp(e->d_name + len - 6, ".jsonl") != 0)
			continue;
		snprintf(path, sizeof path, "%s/%s", cfg->out, e->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		while (fgets(line, sizeof line, f))
		{
			json_object *doc, *id;

			if (line[strlen(line) - 1] != '\n')
				continue;		/* an incomplete last line was not written */
			if ((doc = json_tokener_parse(line)) == NULL)
				continue;
			if (json_object_object_get_ex(doc, "id", &id))
				for (int i = 0; i < n; i++)
					if (m[i].redelivered && !m[i].written &&
						strcmp(m[i].id, json_object_get_string(id)) == 0)
					{
						m[i].written = 1;
						found++;
					}
			json_object_put(doc);
		}
		fclose(f);
	}
	closedir(dir);
	fprintf(stderr, "%s: %d of %d redelivered messages were already written, "
			"skipped\n", cfg->worker_id, found, redelivered);
}

/* Append the messages nobody wrote yet to our file, and fsync it. */
static int
append(struct message *m, int n)
{
	size_t		size = 1, len = 0;
	char	   *buf;
	int			lines = 0;

	for (int i = 0; i < n; i++)
		size += strlen(m[i].id) + strlen(m[i].payload) + 32;
	buf = malloc(size);
	for (int i = 0; i < n; i++)
		if (!m[i].lost && !m[i].written)
		{
			len += sprintf(buf + len, "{\"id\": %s, \"message\": %s}\n", m[i].id, m[i].payload);
			lines++;
		}
	if (lines > 0 && out_fd < 0)
	{
		/* our file, made durable with its directory entry */
		int			dir_fd = open(cfg->out, O_RDONLY | O_DIRECTORY);

		out_fd = open(file_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (out_fd < 0 || dir_fd < 0 || fsync(dir_fd) != 0)
		{
			perror(file_path);
			exit(1);
		}
		close(dir_fd);
	}
	for (size_t done = 0; done < len;)
	{
		ssize_t		w = write(out_fd, buf + done, len - done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
		{
			perror(file_path);
			exit(1);			/* not deleted: delivered again after the lease */
		}
		done += w;
	}
	if (lines > 0 && fsync(out_fd) != 0)
	{
		perror(file_path);
		exit(1);
	}
	free(buf);
	return lines;
}

int
worker_main(const struct config *config)
{
	struct sigaction sa = {.sa_handler = on_signal};	/* no SA_RESTART */
	char		batch[16], lease[32], lock_path[4096];
	const char *fault_id = NULL;
	int			fault_batch = 0, writes = 0;
	long		taken = 0, wrote = 0, skipped = 0;

	cfg = config;
	srand(getpid() ^ (unsigned) time(NULL));	/* the backoff's jitter */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	prctl(PR_SET_PDEATHSIG, SIGTERM);	/* leave if the supervisor dies */
	if (getppid() == 1)
		return 1;
	queue_name(cfg, cfg->shard, queue, sizeof queue);
	snprintf(file_path, sizeof file_path, "%s/%s.jsonl", cfg->out, cfg->worker_id);
	snprintf(lock_path, sizeof lock_path, "%s/.s%d.lock", cfg->out, cfg->shard);
	if ((lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0)
	{
		perror(lock_path);
		return 1;
	}
	if (cfg->kill_after_write)
	{
		const char *colon = strchr(cfg->kill_after_write, ':');

		if (colon && strncmp(cfg->kill_after_write, cfg->worker_id,
							 colon - cfg->kill_after_write) == 0 &&
			cfg->worker_id[colon - cfg->kill_after_write] == '\0')
		{
			fault_id = cfg->worker_id;
			fault_batch = atoi(colon + 1);
		}
	}

	snprintf(batch, sizeof batch, "%d", cfg->batch);
	snprintf(lease, sizeof lease, "%d seconds", cfg->timeout);
	while (!stop_requested && reconnect())
	{
		const char *p[] = {queue, batch, lease};
		PGresult   *res = query("SELECT id, receipt, delivery_count > 1, payload"
								"  FROM broker.dequeue($1, $2::integer, lease => $3::interval,"
								"                      wait => '1 second')", 3, p);
		int			n = res ? PQntuples(res) : 0;
		struct message m[n > 0 ? n : 1];
		int			confirmed;

		if (res == NULL)
			continue;			/* lost: what it took comes back after its lease */
		if (n == 0)
		{
			PQclear(res);
			if (cfg->extra)
				break;			/* the backlog is gone: the pool shrinks */
			continue;
		}
		for (int i = 0; i < n; i++)
			m[i] = (struct message) {
				.id = PQgetvalue(res, i, 0),
				.receipt = PQgetvalue(res, i, 1),
				.redelivered = PQgetvalue(res, i, 2)[0] == 't',
				.payload = PQgetvalue(res, i, 3),
			};
		taken += n;

		/* the processing (simulated); a stop before the write gives the batch back */
		if (!work(cfg->work_ms))
		{
			int			released = for_each_held("release", m, n);

			if (released >= 0)
				fprintf(stderr, "%s: stopping: released %d message(s)\n", cfg->worker_id,
						released);
			else
				fprintf(stderr, "%s: stopping: could not release %d message(s), they come "
						"back after their lease\n", cfg->worker_id, n);
			PQclear(res);
			break;
		}

		/*
		 * append under the shard's lock: confirm the leases, skip what a dead
		 * worker wrote, write, fsync.  A connection lost while confirming:
		 * the lock is let go (others go on while we reconnect), then the
		 * confirmation is made again.
		 */
		do
		{
			while (flock(lock_fd, LOCK_EX) != 0)
				if (errno != EINTR)		/* a signal: the holder is quick, wait on */
				{
					perror(lock_path);
					return 1;
				}
			if ((confirmed = confirm_leases(m, n)))
			{
				find_written(m, n);
				wrote += append(m, n);
			}
			flock(lock_fd, LOCK_UN);
		} while (!confirmed && reconnect());
		if (!confirmed)
		{
			/* a stop while reconnecting: nothing written, back after the lease */
			PQclear(res);
			break;
		}
		for (int i = 0; i < n; i++)
			skipped += m[i].written;

		if (fault_id && ++writes == fault_batch)
		{
			fprintf(stderr, "%s: test fault: killed after writing batch %d, before "
					"deleting it\n", cfg->worker_id, writes);
			raise(SIGKILL);
		}

		/*
		 * flushed: now the messages may go (a lost one is not ours to
		 * delete).  When the connection is lost the deletes' outcome is
		 * unknown: made again with the same receipts once reconnected.
		 */
		while (for_each_held("delete", m, n) < 0 && reconnect())
			;
		PQclear(res);
	}
	fprintf(stderr, "%s: %s after taking %ld message(s): %ld written, %ld already "
			"written by another worker\n", cfg->worker_id,
			stop_requested ? "stopped" : "idle, leaving", taken, wrote, skipped);
	if (conn != NULL)
		PQfinish(conn);
	return 0;
}
