/*
 * main.c: the async data processor's options and its supervisor.
 *
 * The supervisor serves HTTP (http.c) and runs one pool of worker processes
 * per shard (worker.c): each pool starts with --min-workers (3) and grows,
 * one worker at a time, up to --max-workers (4) while its queue has more
 * than --grow-at messages ready; an extra worker leaves once its queue is
 * empty, and a worker that dies is replaced.  SIGINT or SIGTERM stops it
 * cleanly: no more requests, every worker told to stop (a batch not yet
 * written is released, one being written is finished), then the history of
 * the workers is printed and written to OUT/history.json.
 *
 * The history: every worker, its shard, pid, when it started and ended and
 * how, with how many messages it took (delivered) and acknowledged
 * (deleted), from broker.consumers (each worker names itself with
 * broker.consumer), and the lines of its file.
 *
 * The server may restart or fail over under it: the workers and the HTTP
 * endpoint connect again (worker.c, http.c, db.c); the supervisor's own
 * connection, which only reads the backlogs for the pools' growth, is
 * tried again at most once a second, a second at a time, meanwhile the
 * pools keep their size.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <microhttpd.h>

#include "processor.h"

volatile sig_atomic_t stop_requested;

struct worker
{
	char		id[32];			/* sK-wN: its consumer name and file name */
	int			shard;
	pid_t		pid;
	int			extra;			/* started because the backlog grew */
	time_t		started;
	time_t		ended;			/* 0 while it runs */
	char		how[48];		/* how it ended */
};

static struct config cfg = {
	.dsn = "", .listen = "127.0.0.1", .port = 8080, .out = "out", .prefix = "ingest_",
	.shards = 4, .min_workers = 3, .max_workers = 4, .grow_at = 100, .batch = 5,
	.timeout = 30, .reconnect_timeout = 60, .shard = -1,
};
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;	/* workers[], peak[] */
static struct worker *workers;
static int	nworkers;
static int *peak;				/* most workers a shard had at once */
static int	last_number;		/* N of the last worker sK-wN */
static sigset_t original_mask;

void
queue_name(const struct config *c, int shard, char *buf, size_t size)
{
	snprintf(buf, size, "%s%d", c->prefix, shard);
}

static int
running(int shard, int extra_only)
{
	int			n = 0;

	for (int i = 0; i < nworkers; i++)
		n += workers[i].shard == shard && workers[i].ended == 0 &&
			(!extra_only || workers[i].extra);
	return n;
}

/* Start a worker for a shard: this program again, as `--worker ID`. */
static void
spawn(int shard, int extra)
{
	char		id[32], shard_s[16], batch[16], timeout[16], work_ms[16], reconnect[16];
	const char *argv[32];
	int			a = 0;
	pid_t		pid;

	snprintf(id, sizeof id, "s%d-w%d", shard, last_number + 1);
	snprintf(shard_s, sizeof shard_s, "%d", shard);
	snprintf(batch, sizeof batch, "%d", cfg.batch);
	snprintf(timeout, sizeof timeout, "%d", cfg.timeout);
	snprintf(work_ms, sizeof work_ms, "%d", cfg.work_ms);
	snprintf(reconnect, sizeof reconnect, "%d", cfg.reconnect_timeout);
	argv[a++] = "processor";
	argv[a++] = "--worker";
	argv[a++] = id;
	argv[a++] = "--shard";
	argv[a++] = shard_s;
	argv[a++] = "--dsn";
	argv[a++] = cfg.dsn;
	argv[a++] = "--out";
	argv[a++] = cfg.out;
	argv[a++] = "--prefix";
	argv[a++] = cfg.prefix;
	argv[a++] = "--batch";
	argv[a++] = batch;
	argv[a++] = "--timeout";
	argv[a++] = timeout;
	argv[a++] = "--work-ms";
	argv[a++] = work_ms;
	argv[a++] = "--reconnect-timeout";
	argv[a++] = reconnect;
	if (extra)
		argv[a++] = "--extra";
	if (cfg.kill_after_write)
	{
		argv[a++] = "--kill-after-write";
		argv[a++] = cfg.kill_after_write;
	}
	argv[a] = NULL;

	pid = fork();
	if (pid == 0)
	{
		/* only async-signal-safe calls between fork and exec (HTTP runs in a thread) */
		sigprocmask(SIG_SETMASK, &original_mask, NULL);
		execv("/proc/self/exe", (char *const *) argv);
		_exit(127);
	}
	if (pid < 0)
	{
		perror("fork");
		return;
	}
	pthread_mutex_lock(&lock);
	workers = realloc(workers, (nworkers + 1) * sizeof *workers);
	workers[nworkers] = (struct worker) {.shard = shard, .pid = pid, .extra = extra,
	.started = time(NULL)};
	strcpy(workers[nworkers].id, id);
	nworkers++;
	last_number++;
	if (running(shard, 0) > peak[shard])
		peak[shard] = running(shard, 0);
	pthread_mutex_unlock(&lock);
	fprintf(stderr, "processor: started %s (pid %d)%s\n", id, (int) pid,
			extra ? ", the backlog grew" : "");
}

/* Record the workers that ended. */
static void
reap(void)
{
	pid_t		pid;
	int			status;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
	{
		pthread_mutex_lock(&lock);
		for (int i = 0; i < nworkers; i++)
			if (workers[i].pid == pid && workers[i].ended == 0)
			{
				struct worker *w = &workers[i];

				w->ended = time(NULL);
				if (WIFSIGNALED(status))
					snprintf(w->how, sizeof w->how, "killed by signal %d", WTERMSIG(status));
				else if (WEXITSTATUS(status) != 0)
					snprintf(w->how, sizeof w->how, "failed (exit %d)", WEXITSTATUS(status));
				else
					snprintf(w->how, sizeof w->how, "%s",
							 stop_requested ? "stopped" : w->extra ? "left, queue empty" : "exited");
				fprintf(stderr, "processor: %s (pid %d) %s\n", w->id, (int) pid, w->how);
			}
		pthread_mutex_unlock(&lock);
	}
}

/*
 * A lost connection of the supervisor's: a new attempt, of a second at most,
 * no more than once a second (at the stop, for the history, one of up to
 * 5 s).  True when *conn is usable.
 */
static int
supervisor_connection(PGconn **conn)
{
	static double next_attempt;
	char		error[512];
	PGconn	   *c;

	if (PQstatus(*conn) == CONNECTION_OK)
		return 1;
	if (!stop_requested && now_s() < next_attempt)
		return 0;
	next_attempt = now_s() + 1;
	c = db_connect_once(cfg.dsn, "processor", stop_requested ? 5 : 1, !stop_requested,
						error, sizeof error);
	if (c == NULL)
	{
		if (stop_requested)
			fprintf(stderr, "processor: no connection for the history's counts: %s\n", error);
		return 0;
	}
	PQfinish(*conn);
	*conn = c;
	fprintf(stderr, "processor: the supervisor reconnected\n");
	return 1;
}

/* Keep every pool at its size: replace dead workers, grow with the backlog. */
static void
adjust_pools(PGconn **conn)
{
	long		ready[cfg.shards];
	const char *params[] = {cfg.prefix};
	PGresult   *res = NULL;

	memset(ready, 0, sizeof ready);
	if (supervisor_connection(conn))
		res = PQexecParams(*conn, "SELECT queue, ready FROM broker.metrics()"
						   " WHERE starts_with(queue, $1)", 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		for (int r = 0; r < PQntuples(res); r++)
		{
			int			s = atoi(PQgetvalue(res, r, 0) + strlen(cfg.prefix));

			if (s >= 0 && s < cfg.shards)
				ready[s] = atol(PQgetvalue(res, r, 1));
		}
	PQclear(res);
	for (int s = 0; s < cfg.shards; s++)
	{
		while (running(s, 0) - running(s, 1) < cfg.min_workers)
			spawn(s, 0);
		if (ready[s] > cfg.grow_at && running(s, 0) < cfg.max_workers)
			spawn(s, 1);
	}
}

static long
count_lines(const char *id)
{
	char		path[4096], buf[65536];
	FILE	   *f;
	size_t		n;
	long		lines = 0;

	snprintf(path, sizeof path, "%s/%s.jsonl", cfg.out, id);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	while ((n = fread(buf, 1, sizeof buf, f)) > 0)
		for (size_t i = 0; i < n; i++)
			lines += buf[i] == '\n';
	fclose(f);
	return lines;
}

static json_object *
time_json(time_t t)
{
	char		buf[32];

	if (t == 0)
		return NULL;
	strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
	return json_object_new_string(buf);
}

/* The history: {"shards": [...], "workers": [...]}. */
json_object *
history_json(PGconn *conn)
{
	json_object *doc = json_object_new_object(), *list = json_object_new_array(),
			   *shards = json_object_new_array();
	const char *params[] = {cfg.prefix};
	PGresult   *res = PQexecParams(conn,
								   "SELECT consumer, sum(delivered), sum(deleted) FROM broker.consumers"
								   " WHERE starts_with(queue, $1) GROUP BY consumer",
								   1, NULL, params, NULL, NULL, 0);
	int			have = PQresultStatus(res) == PGRES_TUPLES_OK;

	pthread_mutex_lock(&lock);
	for (int s = 0; s < cfg.shards; s++)
	{
		json_object *o = json_object_new_object();
		char		q[64];

		queue_name(&cfg, s, q, sizeof q);
		json_object_object_add(o, "queue", json_object_new_string(q));
		json_object_object_add(o, "running", json_object_new_int(running(s, 0)));
		json_object_object_add(o, "peak_workers", json_object_new_int(peak[s]));
		json_object_array_add(shards, o);
	}
	for (int i = 0; i < nworkers; i++)
	{
		struct worker *w = &workers[i];
		json_object *o = json_object_new_object();
		long		delivered = 0, deleted = 0;
		char		q[64];

		for (int r = 0; have && r < PQntuples(res); r++)
			if (strcmp(PQgetvalue(res, r, 0), w->id) == 0)
			{
				delivered = atol(PQgetvalue(res, r, 1));
				deleted = atol(PQgetvalue(res, r, 2));
			}
		queue_name(&cfg, w->shard, q, sizeof q);
		json_object_object_add(o, "worker", json_object_new_string(w->id));
		json_object_object_add(o, "queue", json_object_new_string(q));
		json_object_object_add(o, "pid", json_object_new_int(w->pid));
		json_object_object_add(o, "extra", json_object_new_boolean(w->extra));
		json_object_object_add(o, "started", time_json(w->started));
		json_object_object_add(o, "ended", time_json(w->ended));
		json_object_object_add(o, "how", json_object_new_string(w->ended ? w->how : "running"));
		json_object_object_add(o, "delivered", json_object_new_int64(delivered));
		json_object_object_add(o, "deleted", json_object_new_int64(deleted));
		json_object_object_add(o, "lines", json_object_new_int64(count_lines(w->id)));
		json_object_array_add(list, o);
	}
	pthread_mutex_unlock(&lock);
	PQclear(res);
	json_object_object_add(doc, "shards", shards);
	json_object_object_add(doc, "workers", list);
	return doc;
}

/* Worker numbers go on from the files a previous run left in OUT. */
static void
find_last_number(void)
{
	DIR		   *dir = opendir(cfg.out);
	struct dirent *e;
	int			shard, number;

	while (dir && (e = readdir(dir)) != NULL)
		if (sscanf(e->d_name, "s%d-w%d.jsonl", &shard, &number) == 2 && number > last_number)
			last_number = number;
	if (dir)
		closedir(dir);
}

static void
print_history(PGconn **conn)
{
	json_object *doc, *list;
	char		path[4096];

	/* the counts come from the server: connected again if need be (also
	 * when the query finds the connection lost) */
	supervisor_connection(conn);
	doc = history_json(*conn);
	if (PQstatus(*conn) != CONNECTION_OK && supervisor_connection(conn))
	{
		json_object_put(doc);
		doc = history_json(*conn);
	}
	list = json_object_object_get(doc, "workers");

	printf("%-9s %-10s %7s %-6s %-24s %9s %7s %6s\n", "worker", "queue", "pid", "role",
		   "how it ended", "delivered", "deleted", "lines");
	for (size_t i = 0; i < json_object_array_length(list); i++)
	{
		json_object *w = json_object_array_get_idx(list, i);

#define S(k) json_object_get_string(json_object_object_get(w, k))
		printf("%-9s %-10s %7s %-6s %-24s %9s %7s %6s\n", S("worker"), S("queue"), S("pid"),
			   json_object_get_boolean(json_object_object_get(w, "extra")) ? "extra" : "base",
			   S("how"), S("delivered"), S("deleted"), S("lines"));
#undef S
	}
	snprintf(path, sizeof path, "%s/history.json", cfg.out);
	if (json_object_to_file_ext(path, doc, JSON_C_TO_STRING_PRETTY) != 0)
		perror(path);
	json_object_put(doc);
}

static void
usage(int status)
{
	fprintf(status ? stderr : stdout,
			"usage: processor [options]\n"
			"  --dsn CONNINFO       libpq connection string (default: the PG* environment)\n"
			"  --listen ADDR        IPv4 address of the HTTP endpoint (127.0.0.1)\n"
			"  --port N             its port (8080; 0: any free one)\n"
			"  --port-file FILE     write the port there once listening\n"
			"  --out DIR            directory of the workers' files (out)\n"
			"  --shards N           queues PREFIX0 .. PREFIX<N-1> (4)\n"
			"  --prefix PREFIX      queue name prefix (ingest_)\n"
			"  --min-workers N      workers per shard at start (3)\n"
			"  --max-workers N      at most this many per shard (4)\n"
			"  --grow-at N          grow a pool while its queue has more ready (100)\n"
			"  --batch N            messages per batch (5)\n"
			"  --timeout SECONDS    processing timeout: the lease of a batch (30)\n"
			"  --work-ms MS         simulated processing time per batch (0)\n"
			"  --reconnect-timeout SECONDS  how long a worker tries to connect again\n"
			"                       after losing its connection before it gives up (60)\n"
			"  --kill-after-write ID:N  test fault: worker ID kills itself after\n"
			"                       writing its Nth batch, before deleting it\n"
			"  --lose-commit-reply N  test fault: the answer to the COMMIT of the Nth\n"
			"                       POST /message is lost (the connection is dropped)\n");
	exit(status);
}

static void
parse_options(int argc, char **argv)
{
	static const struct option opts[] = {
		{"dsn", required_argument, NULL, 'd'}, {"listen", required_argument, NULL, 'l'},
		{"port", required_argument, NULL, 'p'}, {"port-file", required_argument, NULL, 'P'},
		{"out", required_argument, NULL, 'o'}, {"shards", required_argument, NULL, 'n'},
		{"prefix", required_argument, NULL, 'q'},
		{"min-workers", required_argument, NULL, 'm'},
		{"max-workers", required_argument, NULL, 'M'},
		{"grow-at", required_argument, NULL, 'g'}, {"batch", required_argument, NULL, 'b'},
		{"timeout", required_argument, NULL, 't'}, {"work-ms", required_argument, NULL, 'w'},
		{"kill-after-write", required_argument, NULL, 'k'},
		{"reconnect-timeout", required_argument, NULL, 'r'},
		{"lose-commit-reply", required_argument, NULL, 'L'},
		{"worker", required_argument, NULL, 'W'}, {"shard", required_argument, NULL, 'S'},
		{"extra", no_argument, NULL, 'x'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	int			c;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1)
		switch (c)
		{
			case 'd': cfg.dsn = optarg; break;
			case 'l': cfg.listen = optarg; break;
			case 'p': cfg.port = atoi(optarg); break;
			case 'P': cfg.port_file = optarg; break;
			case 'o': cfg.out = optarg; break;
			case 'n': cfg.shards = atoi(optarg); break;
			case 'q': cfg.prefix = optarg; break;
			case 'm': cfg.min_workers = atoi(optarg); break;
			case 'M': cfg.max_workers = atoi(optarg); break;
			case 'g': cfg.grow_at = atoi(optarg); break;
			case 'b': cfg.batch = atoi(optarg); break;
			case 't': cfg.timeout = atoi(optarg); break;
			case 'w': cfg.work_ms = atoi(optarg); break;
			case 'k': cfg.kill_after_write = optarg; break;
			case 'r': cfg.reconnect_timeout = atoi(optarg); break;
			case 'L': cfg.lose_commit_reply = atoi(optarg); break;
			case 'W': cfg.worker_id = optarg; break;
			case 'S': cfg.shard = atoi(optarg); break;
			case 'x': cfg.extra = 1; break;
			case 'h': usage(0); break;
			default: usage(2);
		}
	if (optind < argc || cfg.shards < 1 || cfg.shards > 1000 || cfg.min_workers < 1 ||
		cfg.max_workers < cfg.min_workers || cfg.batch < 1 || cfg.timeout < 1 ||
		cfg.work_ms < 0 || cfg.reconnect_timeout < 1 || cfg.lose_commit_reply < 0 ||
		(cfg.worker_id && cfg.shard < 0))
		usage(2);
}

int
main(int argc, char **argv)
{
	sigset_t	signals;
	struct MHD_Daemon *http;
	PGconn	   *conn;
	char		error[512];
	struct timespec tick = {0, 200 * 1000 * 1000};
	time_t		deadline;

	parse_options(argc, argv);
	if (cfg.worker_id)
		return worker_main(&cfg);

	/* the supervisor */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (mkdir(cfg.out, 0755) != 0 && errno != EEXIST)
	{
		perror(cfg.out);
		return 1;
	}
	srand(getpid() ^ (unsigned) time(NULL));	/* the backoff's jitter */
	if ((conn = db_connect_once(cfg.dsn, "processor", 30, 1, error, sizeof error)) == NULL)
	{
		fprintf(stderr, "processor: %s\n", error);
		return 1;
	}
	peak = calloc(cfg.shards, sizeof *peak);
	find_last_number();

	/* signals are taken synchronously by this thread (sigtimedwait); the
	 * HTTP thread, started after this, inherits the mask */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&signals);
	sigaddset(&signals, SIGINT);
	sigaddset(&signals, SIGTERM);
	sigaddset(&signals, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, &signals, &original_mask);

	adjust_pools(&conn);		/* min_workers per shard */
	if ((http = http_start(&cfg)) == NULL)
	{
		fprintf(stderr, "processor: cannot listen on %s:%d\n", cfg.listen, cfg.port);
		stop_requested = 1;
	}
	else
		fprintf(stderr, "processor: listening on %s:%u, %d shard(s), out %s\n", cfg.listen,
				MHD_get_daemon_info(http, MHD_DAEMON_INFO_BIND_PORT)->port, cfg.shards,
				cfg.out);

	while (!stop_requested)
	{
		int			sig = sigtimedwait(&signals, NULL, &tick);

		if (sig == SIGINT || sig == SIGTERM)
			stop_requested = 1;
		reap();
		if (!stop_requested && sig != SIGCHLD)
			adjust_pools(&conn);
	}

	/* the clean stop: no more requests, then every worker stops */
	fprintf(stderr, "processor: stopping\n");
	if (http)
		MHD_stop_daemon(http);
	pthread_mutex_lock(&lock);
	for (int i = 0; i < nworkers; i++)
		if (workers[i].ended == 0)
			kill(workers[i].pid, SIGTERM);
	pthread_mutex_unlock(&lock);
	deadline = time(NULL) + cfg.timeout + 5;
	for (;;)
	{
		int			left = 0;

		reap();
		for (int i = 0; i < nworkers; i++)
			left += workers[i].ended == 0;
		if (left == 0)
			break;
		if (time(NULL) > deadline)
		{
			/* a worker stuck in a write: its batch comes back after the lease */
			for (int i = 0; i < nworkers; i++)
				if (workers[i].ended == 0)
					kill(workers[i].pid, SIGKILL);
		}
		sigtimedwait(&signals, NULL, &tick);
	}
	print_history(&conn);
	if (conn != NULL)
		PQfinish(conn);
	return 0;
}
