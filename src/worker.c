/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Cron-free expiry: the "broker launcher" background worker, one
 *	  "broker reaper" per database, their shared state, broker.reap() and
 *	  broker.health().
 *
 * Processes
 * ---------
 * The launcher is registered from _PG_init when the library is preloaded
 * (never under pg_upgrade).  It starts once recovery has finished, so it
 * never runs on a standby and starts after a promotion, and the postmaster
 * restarts it 5 s after it exits with an error, and at once after a crash
 * restart.  It connects to no database and reads pg_database (a shared
 * catalog) every BROKER_LAUNCHER_NAPTIME_MS; for every database that
 * allows connections and is no template (narrowed by broker.databases) it
 * starts a dynamic worker, the reaper, and keeps its handle.  When a reaper
 * exits, the postmaster wakes the launcher (bgw_notify_pid), which starts
 * it again at most once per BROKER_RESTART_DELAY_MS.  When the launcher
 * exits, it terminates its reapers, so a restarted launcher starts afresh.
 *
 * A reaper connects to its database and, every broker.reaper_interval,
 * checks that the extension exists and deletes expired messages in batches
 * of BROKER_REAP_BATCH, each batch in its own transaction with its own
 * snapshot.  A batch takes its rows FOR UPDATE SKIP LOCKED, so it never
 * waits on a consumer, and counts what it removed (BrokerCount, published
 * when the batch commits).  Before each batch it locks broker.messages in
 * RowExclusiveLock and then checks again that the table is still the
 * extension's: a DROP EXTENSION that committed meanwhile makes it skip the
 * pass quietly instead of failing.  An error in a pass is reported and the
 * worker carries on with the next pass (as autovacuum does per table).
 *
 * Shared memory and locking
 * -------------------------
 * BrokerWorkerShared holds the launcher's pid (a single-instance guard, as
 * in autoprewarm), one slot per possible background worker and a short
 * table of "paused" databases.  All of it is protected by one LWLock
 * (tranche "broker worker"), held for a few instructions and never while
 * another lock is taken or catalogs are read.  A slot is reserved by the
 * launcher before it registers a reaper (pid 0), taken over by the reaper
 * when it has connected, and freed when the reaper exits.
 *
 * Commands that need a database to themselves
 * --------------------------------------------
 * DROP DATABASE, ALTER DATABASE RENAME / SET TABLESPACE and CREATE DATABASE
 * ... TEMPLATE fail while another process is connected to the database.  A
 * ProcessUtility hook therefore pauses the database first: under the lock
 * it records the pause (the launcher starts no reaper there for
 * BROKER_PAUSE_MS) and asks the reaper to stop, then waits until the slot
 * is free.  The launcher checks the pause when it reserves a slot, and the
 * reaper when it takes the slot over, both under the same lock, so no
 * reaper can slip in between.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "broker.h"
#include "worker.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"

/* Messages deleted per transaction. */
#define BROKER_REAP_BATCH			1000
/* How often the launcher reads pg_database. */
#define BROKER_LAUNCHER_NAPTIME_MS	2000
/* Minimum time between two starts of one database's reaper. */
#define BROKER_RESTART_DELAY_MS		1000
/* How long a database stays paused after a command asked for it. */
#define BROKER_PAUSE_MS				5000
/* How long such a command waits for the reaper to go. */
#define BROKER_STOP_WAIT_MS			5000
/* Databases that can be paused at the same time. */
#define BROKER_MAX_PAUSES			16

/* What a reaper is doing (broker.health().state). */
typedef enum BrokerReaperState
{
	REAPER_STARTING,
	REAPER_IDLE,
	REAPER_REAPING,
	REAPER_NO_EXTENSION
} BrokerReaperState;

static const char *const reaper_state_names[] = {
	[REAPER_STARTING] = "starting",
	[REAPER_IDLE] = "idle",
	[REAPER_REAPING] = "reaping",
	[REAPER_NO_EXTENSION] = "waiting for extension",
};

/* One reaper: reserved by the launcher, owned by the reaper once running. */
typedef struct BrokerReaperSlot
{
	bool		in_use;
	Oid			dboid;
	pid_t		pid;			/* 0 while reserved, before the reaper runs */
	Latch	   *latch;			/* the reaper's, to wake it */
	bool		stop_requested;
	BrokerReaperState state;
	TimestampTz last_pass_at;	/* 0: no pass yet */
	int64		last_pass_us;
	uint64		removed_total;
} BrokerReaperSlot;

/* A database in which no reaper may start before "until". */
typedef struct BrokerPause
{
	Oid			dboid;
	TimestampTz until;
} BrokerPause;

typedef struct BrokerWorkerShared
{
	LWLock	   *lock;
	pid_t		launcher_pid;	/* 0: no launcher */
	BrokerPause pauses[BROKER_MAX_PAUSES];
	int			nslots;
	BrokerReaperSlot slots[FLEXIBLE_ARRAY_MEMBER];
} BrokerWorkerShared;

/* The launcher's view of one database. */
typedef struct LauncherDb
{
	Oid			dboid;			/* hash key */
	char		name[NAMEDATALEN];
	bool		wanted;			/* to be served, as of the last scan */
	BackgroundWorkerHandle *handle; /* NULL: no reaper started */
	TimestampTz last_start;
	bool		warned;			/* no worker slot: warned once */
} LauncherDb;

char	   *broker_databases = NULL;

static BrokerWorkerShared *worker_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility_hook = NULL;

/* Launcher-local state. */
static HTAB *launcher_dbs = NULL;

/* Reaper-local state. */
static BrokerReaperSlot *my_slot = NULL;
static char my_dbname[NAMEDATALEN];

/*
 * Kept plans of the reaping statement: all queues, one queue.  Unlike the
 * hot-path statements these are planned at each execution (a custom plan,
 * once per batch): a generic plan made while broker.messages is empty (the
 * first pass after CREATE EXTENSION) would scan the whole table for as long
 * as the plan lives, while a custom plan sees the table's size and the
 * cut-off and picks the expiry index and a TID scan.
 */
static SPIPlanPtr reap_plans[2][BROKER_SEGMENTS];

static const char *const reap_sql[2] = {
	"DELETE FROM broker.messages_%d m"
	" WHERE m.ctid " OP("=") " ANY (ARRAY("
	"   SELECT x.ctid FROM broker.messages_%d x"
	"    WHERE x.expires_at " OP("<=") " $1"
	"    ORDER BY x.expires_at LIMIT $2"
	"      FOR UPDATE SKIP LOCKED))"
	" RETURNING m.queue_id",
	"DELETE FROM broker.messages_%d m"
	" WHERE m.ctid " OP("=") " ANY (ARRAY("
	"   SELECT x.ctid FROM broker.messages_%d x"
	"    WHERE x.queue_id " OP("=") " $3"
	"      AND x.expires_at " OP("<=") " $1"
	"    ORDER BY x.expires_at LIMIT $2"
	"      FOR UPDATE SKIP LOCKED))"
	" RETURNING m.queue_id",
};

PG_FUNCTION_INFO_V1(broker_reap);
PG_FUNCTION_INFO_V1(broker_health);

static void worker_shmem_request(void);
static void worker_shmem_startup(void);
static Size worker_shmem_size(void);
static void worker_process_utility(PlannedStmt *pstmt, const char *queryString,
								   bool readOnlyTree,
								   ProcessUtilityContext context,
								   ParamListInfo params,
								   QueryEnvironment *queryEnv,
								   DestReceiver *dest, QueryCompletion *qc);

/* ------------------------------------------------------------------------
 * Initialisation and shared memory
 * ------------------------------------------------------------------------
 */

/*
 * Install the hooks and register the launcher; called from _PG_init when
 * the library is preloaded.
 */
void
BrokerWorkerInit(void)
{
	BackgroundWorker worker;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = worker_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = worker_shmem_startup;
	prev_ProcessUtility_hook = ProcessUtility_hook;
	ProcessUtility_hook = worker_process_utility;

	/* pg_upgrade's server must not change any data: no worker at all. */
	if (IsBinaryUpgrade)
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "broker", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "broker_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "broker launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "broker launcher", BGW_MAXLEN);
	worker.bgw_main_arg = (Datum) 0;
	worker.bgw_notify_pid = 0;
	RegisterBackgroundWorker(&worker);
}

/* Space for the shared state: one slot per possible background worker. */
static Size
worker_shmem_size(void)
{
	return add_size(offsetof(BrokerWorkerShared, slots),
					mul_size(max_worker_processes, sizeof(BrokerReaperSlot)));
}

/* shmem_request_hook: ask for our space and one named LWLock. */
static void
worker_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(worker_shmem_size());
	RequestNamedLWLockTranche("broker worker", 1);
}

/* shmem_startup_hook: create or attach to the shared state. */
static void
worker_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	worker_shared = ShmemInitStruct("broker worker state",
									worker_shmem_size(), &found);
	if (!found)
	{
		memset(worker_shared, 0, worker_shmem_size());
		worker_shared->lock = &(GetNamedLWLockTranche("broker worker"))->lock;
		worker_shared->nslots = max_worker_processes;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* GUC check hook of broker.databases: a list of names. */
bool
BrokerCheckDatabases(char **newval, void **extra, GucSource source)
{
	char	   *raw;
	List	   *names;
	bool		ok;

	(void) extra;
	(void) source;
	if (*newval == NULL)
		return true;
	raw = pstrdup(*newval);
	ok = SplitIdentifierString(raw, ',', &names);
	if (!ok)
		GUC_check_errdetail("List syntax is invalid.");
	list_free(names);
	pfree(raw);
	return ok;
}

/* ------------------------------------------------------------------------
 * Pauses (under worker_shared->lock)
 * ------------------------------------------------------------------------
 */

/* True if no reaper may start in the database now. */
static bool
database_paused(Oid dboid, TimestampTz now)
{
	for (int i = 0; i < BROKER_MAX_PAUSES; i++)
	{
		BrokerPause *p = &worker_shared->pauses[i];

		if (p->dboid == dboid && now < p->until)
			return true;
	}
	return false;
}

/* Record (or extend) a pause of the database. */
static void
database_pause(Oid dboid, TimestampTz until)
{
	BrokerPause *victim = &worker_shared->pauses[0];

	for (int i = 0; i < BROKER_MAX_PAUSES; i++)
	{
		BrokerPause *p = &worker_shared->pauses[i];

		if (p->dboid == dboid)
		{
			victim = p;
			break;
		}
		/* Otherwise reuse the entry that ends first (expired ones first). */
		if (p->until < victim->until)
			victim = p;
	}
	victim->dboid = dboid;
	victim->until = until;
}

/* ------------------------------------------------------------------------
 * The ProcessUtility hook
 * ------------------------------------------------------------------------
 */

/*
 * The database that a utility statement needs with no other session
 * connected, or NULL.
 */
static const char *
exclusive_database_of(Node *stmt)
{
	ListCell   *lc;

	switch (nodeTag(stmt))
	{
		case T_DropdbStmt:
			return ((DropdbStmt *) stmt)->dbname;
		case T_RenameStmt:
			if (((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
				return ((RenameStmt *) stmt)->subname;
			return NULL;
		case T_AlterDatabaseStmt:
			foreach(lc, ((AlterDatabaseStmt *) stmt)->options)
			{
				DefElem    *def = lfirst_node(DefElem, lc);

				if (strcmp(def->defname, "tablespace") == 0)
					return ((AlterDatabaseStmt *) stmt)->dbname;
			}
			return NULL;
		case T_CreatedbStmt:
			foreach(lc, ((CreatedbStmt *) stmt)->options)
			{
				DefElem    *def = lfirst_node(DefElem, lc);

				if (strcmp(def->defname, "template") == 0 && def->arg != NULL)
					return defGetString(def);
			}
			return NULL;
		default:
			return NULL;
	}
}

/* True if a reaper is reserved for or running in the database. */
static bool
database_has_reaper(Oid dboid)
{
	bool		found = false;

	LWLockAcquire(worker_shared->lock, LW_SHARED);
	for (int i = 0; i < worker_shared->nslots && !found; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		found = slot->in_use && slot->dboid == dboid;
	}
	LWLockRelease(worker_shared->lock);
	return found;
}

/*
 * Stop the database's reaper and keep the launcher from starting another
 * for a while; wait (boundedly) until it is gone.
 */
static void
stop_reaper_for_command(Oid dboid)
{
	TimestampTz deadline;
	Latch	   *latch = NULL;

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	database_pause(dboid, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  BROKER_PAUSE_MS));
	for (int i = 0; i < worker_shared->nslots; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid && slot->pid != 0)
		{
			slot->stop_requested = true;
			latch = slot->latch;
		}
	}
	LWLockRelease(worker_shared->lock);
	if (latch != NULL)
		SetLatch(latch);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   BROKER_STOP_WAIT_MS);
	while (database_has_reaper(dboid) && GetCurrentTimestamp() < deadline)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	/* The pause runs from now on, while the command takes its locks. */
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	database_pause(dboid, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  BROKER_PAUSE_MS));
	LWLockRelease(worker_shared->lock);
}

/*
 * A COPY into one of the segment tables (pg_restore, psql's restore of a
 * plain dump) inserts messages with old ids behind the low-water mark's
 * back: announce it as a mover (segment.c) for its transaction.
 */
static void
note_copy_into_segment(CopyStmt *stmt)
{
	const BrokerRels *rels;
	Oid			relid;

	if (!stmt->is_from || stmt->relation == NULL || !IsTransactionState() ||
		(rels = BrokerFindRels(true)) == NULL)
		return;
	relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	for (int i = 0; i < BROKER_SEGMENTS; i++)
	{
		if (relid == rels->segment[i])
		{
			BrokerSegmentBulkLoad();
			return;
		}
	}
}

/* ProcessUtility hook: stop a database's reaper before a command needing it. */
static void
worker_process_utility(PlannedStmt *pstmt, const char *queryString,
					   bool readOnlyTree, ProcessUtilityContext context,
					   ParamListInfo params, QueryEnvironment *queryEnv,
					   DestReceiver *dest, QueryCompletion *qc)
{
	const char *dbname = exclusive_database_of(pstmt->utilityStmt);

	if (IsA(pstmt->utilityStmt, CopyStmt))
		note_copy_into_segment((CopyStmt *) pstmt->utilityStmt);

	if (dbname != NULL && worker_shared != NULL)
	{
		Oid			dboid = get_database_oid(dbname, true);

		/* Only for whoever may run the command: others get its own error. */
		if (OidIsValid(dboid) && pg_database_ownercheck(dboid, GetUserId()))
			stop_reaper_for_command(dboid);
	}

	if (prev_ProcessUtility_hook)
		prev_ProcessUtility_hook(pstmt, queryString, readOnlyTree, context,
								 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* ------------------------------------------------------------------------
 * Reaping (shared by the reaper and broker.reap())
 * ------------------------------------------------------------------------
 */

/* qsort comparator of int32. */
static int
cmp_int32(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/* The kept plan of the reaping statement, for all queues or one, on a segment. */
static SPIPlanPtr
reap_plan(bool one_queue, int seg)
{
	int			i = one_queue ? 1 : 0;

	if (reap_plans[i][seg] == NULL)
	{
		Oid			argtypes[3] = {TIMESTAMPTZOID, INT8OID, INT4OID};
		SPIPlanPtr	plan;
		char	   *sql = psprintf(reap_sql[i], seg, seg);

		plan = SPI_prepare_cursor(sql, one_queue ? 3 : 2, argtypes,
								  CURSOR_OPT_CUSTOM_PLAN);
		if (plan == NULL)
			elog(ERROR, "broker: SPI_prepare failed for the reaping statement: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "broker: SPI_keepplan failed for the reaping statement");
		reap_plans[i][seg] = plan;
		pfree(sql);
	}
	return reap_plans[i][seg];
}

/*
 * Delete up to "limit" messages expired at "now" (of one queue if
 * queue_id > 0), skipping rows other transactions hold; count them per
 * queue for the commit to publish.  Caller is connected to SPI.
 */
static uint64
reap_segment(int seg, int32 queue_id, TimestampTz now, int limit)
{
	Datum		values[3];
	int			rc;
	uint64		n;
	int32	   *ids;

	values[0] = TimestampTzGetDatum(now);
	values[1] = Int64GetDatum((int64) limit);
	values[2] = Int32GetDatum(queue_id);
	rc = SPI_execute_plan(reap_plan(queue_id > 0, seg), values, NULL, false, 0);
	if (rc != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "broker: reaping failed: %s", SPI_result_code_string(rc));
	n = SPI_processed;
	if (n == 0)
		return 0;

	/* One counter update per queue: sort the queue ids, count the runs. */
	ids = palloc(n * sizeof(int32));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
	}
	qsort(ids, n, sizeof(int32), cmp_int32);
	for (uint64 i = 0, start = 0; i <= n; i++)
	{
		if (i == n || ids[i] != ids[start])
		{
			BrokerCount(ids[start], BROKER_COUNT_EXPIRED, (int64) (i - start));
			start = i;
		}
	}
	pfree(ids);
	BrokerNoteDeleted();
	return n;
}

/*
 * Delete up to "limit" expired messages in each segment (see
 * reap_segment); returns how many in all.
 */
static uint64
reap_batch(int32 queue_id, TimestampTz now, int limit)
{
	int			segs[BROKER_SEGMENTS];
	int			nsegs = BrokerSegmentScanOrder(segs);
	uint64		n = 0;

	for (int i = 0; i < nsegs; i++)
		n += reap_segment(segs[i], queue_id, now, limit);
	return n;
}

/* broker.reap(queue): one pass now, in the caller's transaction. */
Datum
broker_reap(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	int32		queue_id = 0;
	int64		total = 0;

	BrokerRequireWritable("reap expired messages");
	BrokerSPIConnect();
	if (!PG_ARGISNULL(0))
	{
		BrokerQueue q;

		/* 42602 for a malformed name, 42704 for a missing queue. */
		BrokerLookupQueue(PG_GETARG_TEXT_PP(0), false, &q);
		queue_id = q.queue_id;
	}
	for (;;)
	{
		uint64		n;

		CHECK_FOR_INTERRUPTS();
		n = reap_batch(queue_id, now, BROKER_REAP_BATCH);
		total += (int64) n;
		if (n < BROKER_REAP_BATCH)
			break;
	}
	BrokerSPIFinish();
	PG_RETURN_INT64(total);
}

/* ------------------------------------------------------------------------
 * The reaper
 * ------------------------------------------------------------------------
 */

/*
 * Lock this database's broker extension against DROP EXTENSION for the
 * transaction; false (and no lock) when it is not installed or is being
 * dropped.  DROP EXTENSION locks the extension object before any of its
 * relations, so a reaper that holds it first never deadlocks with one: the
 * drop waits for the reaper's transaction, and a reaper that finds the
 * drop under way skips its pass instead of waiting.
 */
static bool
lock_installation(void)
{
	const BrokerRels *rels = BrokerFindRels(true);
	Oid			extoid;

	if (rels == NULL)
		return false;
	extoid = rels->extension;
	if (!ConditionalLockDatabaseObject(ExtensionRelationId, extoid, 0,
									   AccessShareLock))
		return false;
	/* A drop that committed before we got the lock: look again. */
	AcceptInvalidationMessages();
	rels = BrokerFindRels(true);
	if (rels == NULL || rels->extension != extoid)
	{
		UnlockDatabaseObject(ExtensionRelationId, extoid, 0, AccessShareLock);
		return false;
	}
	return true;
}

/* Update this reaper's slot. */
static void
slot_set(BrokerReaperState state, TimestampTz pass_at, int64 pass_us,
		 uint64 removed)
{
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	my_slot->state = state;
	if (pass_at != 0)
	{
		my_slot->last_pass_at = pass_at;
		my_slot->last_pass_us = pass_us;
	}
	my_slot->removed_total += removed;
	LWLockRelease(worker_shared->lock);
}

/* True when a command asked this reaper to stop. */
static bool
stop_requested(void)
{
	bool		stop;

	LWLockAcquire(worker_shared->lock, LW_SHARED);
	stop = my_slot->stop_requested;
	LWLockRelease(worker_shared->lock);
	return stop;
}

/*
 * One batch in its own transaction: -1 when the extension is not
 * installed, else how many messages were removed.
 */
static int64
reaper_batch(MemoryContext pass_cxt)
{
	int64		n = -1;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	BrokerSPIConnect();
	PushActiveSnapshot(GetTransactionSnapshot());

	if (lock_installation())
		n = (int64) reap_batch(0, GetCurrentTimestamp(), BROKER_REAP_BATCH);

	BrokerSPIFinish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(pass_cxt);
	return n;
}

/* Segment maintenance (segment.c) in its own transaction. */
static void
reaper_maintain(MemoryContext pass_cxt)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	BrokerSPIConnect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (lock_installation())
	{
		BrokerSegmentsVerifyDrained();
		BrokerSegmentsMaintain();
	}
	BrokerSPIFinish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(pass_cxt);
}

/* One pass: batches until nothing expired is left; updates the slot. */
static void
reaper_pass(MemoryContext pass_cxt)
{
	TimestampTz start = GetCurrentTimestamp();
	bool		installed = true;

	pgstat_report_activity(STATE_RUNNING, "reaping expired messages");
	for (;;)
	{
		int64		n;

		CHECK_FOR_INTERRUPTS();
		if (stop_requested())
			break;
		n = reaper_batch(pass_cxt);
		if (n < 0)
		{
			installed = false;
			break;
		}
		/* The batch committed: it counts. */
		slot_set(REAPER_REAPING, 0, 0, (uint64) n);
		if (n < BROKER_REAP_BATCH)
			break;
	}
	if (installed && !stop_requested())
	{
		pgstat_report_activity(STATE_RUNNING, "maintaining message segments");
		reaper_maintain(pass_cxt);
	}
	slot_set(installed ? REAPER_IDLE : REAPER_NO_EXTENSION, start,
			 GetCurrentTimestamp() - start, 0);
	pgstat_report_stat(true);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* After an error in a pass: report it, clean up, carry on. */
static void
reaper_recover(MemoryContext pass_cxt, TimestampTz start)
{
	HOLD_INTERRUPTS();
	EmitErrorReport();
	AbortOutOfAnyTransaction();
	FlushErrorState();
	MemoryContextSwitchTo(pass_cxt);
	RESUME_INTERRUPTS();
	slot_set(REAPER_IDLE, start, GetCurrentTimestamp() - start, 0);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* A pass whose error is reported without ending the worker. */
static void
reaper_pass_guarded(MemoryContext pass_cxt, TimestampTz start)
{
	PG_TRY();
	{
		reaper_pass(pass_cxt);
	}
	PG_CATCH();
	{
		reaper_recover(pass_cxt, start);
	}
	PG_END_TRY();
}

/*
 * Take over the slot the launcher reserved (or a free one).  False when
 * this reaper must not run: the database is paused, or another reaper
 * serves it.
 */
static bool
reaper_claim_slot(Oid dboid)
{
	BrokerReaperSlot *mine = NULL;
	pid_t		other = 0;
	bool		paused;

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	paused = database_paused(dboid, GetCurrentTimestamp());
	for (int i = 0; i < worker_shared->nslots && !paused; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid)
		{
			if (slot->pid != 0)
				other = slot->pid;
			else if (mine == NULL)
				mine = slot;
		}
	}
	for (int i = 0; i < worker_shared->nslots && mine == NULL; i++)
	{
		if (!worker_shared->slots[i].in_use)
			mine = &worker_shared->slots[i];
	}
	if (!paused && other == 0 && mine != NULL)
	{
		memset(mine, 0, sizeof(*mine));
		mine->in_use = true;
		mine->dboid = dboid;
		mine->pid = MyProcPid;
		mine->latch = MyLatch;
		mine->state = REAPER_STARTING;
		my_slot = mine;
	}
	LWLockRelease(worker_shared->lock);

	if (other != 0)
		ereport(LOG,
				(errmsg("broker reaper for database \"%s\" is already running under PID %d",
						my_dbname, (int) other)));
	return my_slot != NULL;
}

/* on_shmem_exit callback: free this reaper's slot. */
static void
reaper_release_slot(int code, Datum arg)
{
	(void) code;
	(void) arg;
	if (my_slot == NULL)
		return;
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	memset(my_slot, 0, sizeof(*my_slot));
	LWLockRelease(worker_shared->lock);
	my_slot = NULL;
}

/* Main function of a reaper; main_arg is its database's OID. */
void
broker_reaper_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	MemoryContext pass_cxt;
	TimestampTz last_start = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	/*
	 * Whatever the database's default search_path: every name the reaper
	 * runs is qualified, and nothing in the database can put itself first.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET,
					PGC_S_OVERRIDE);

	/* The name, for messages outside transactions. */
	StartTransactionCommand();
	{
		char	   *name = get_database_name(dboid);

		snprintf(my_dbname, NAMEDATALEN, "%s", name ? name : "?");
	}
	CommitTransactionCommand();

	/* Connected, so visible to DROP DATABASE: now check for a pause. */
	if (worker_shared == NULL || !reaper_claim_slot(dboid))
		proc_exit(0);
	on_shmem_exit(reaper_release_slot, (Datum) 0);

	pass_cxt = AllocSetContextCreate(TopMemoryContext, "broker reaper pass",
									 ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(pass_cxt);
	pgstat_report_appname("broker reaper");
	ereport(DEBUG1,
			(errmsg_internal("broker reaper started for database %u", dboid)));

	for (;;)
	{
		TimestampTz now;
		TimestampTz next;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (stop_requested())
		{
			ereport(LOG,
					(errmsg("broker reaper for database \"%s\" stopping so that a command can have the database to itself",
							my_dbname)));
			proc_exit(0);
		}

		/* The interval is read each time: a reload applies at once. */
		now = GetCurrentTimestamp();
		next = TimestampTzPlusMilliseconds(last_start, broker_reaper_interval_ms);
		if (now >= next)
		{
			last_start = now;
			if (!RecoveryInProgress())
				reaper_pass_guarded(pass_cxt, now);
			MemoryContextReset(pass_cxt);
			next = TimestampTzPlusMilliseconds(last_start,
											   broker_reaper_interval_ms);
			now = GetCurrentTimestamp();
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(1L, TimestampDifferenceMilliseconds(now, next)),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ------------------------------------------------------------------------
 * The launcher
 * ------------------------------------------------------------------------
 */

/* Is the database selected by broker.databases (NIL: all)? */
static bool
database_selected(List *names, const char *dbname)
{
	ListCell   *lc;

	if (names == NIL)
		return true;
	foreach(lc, names)
	{
		if (strcmp((const char *) lfirst(lc), dbname) == 0)
			return true;
	}
	return false;
}

/*
 * Read pg_database and mark the databases to serve; with report, log the
 * names of broker.databases that match no servable database.
 */
static void
launcher_scan(MemoryContext loop_cxt, bool report)
{
	List	   *names = NIL;
	List	   *seen = NIL;
	char	   *raw;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	HASH_SEQ_STATUS status;
	LauncherDb *db;
	ListCell   *lc;

	/* The check hook accepted it, so this parses. */
	raw = pstrdup(broker_databases ? broker_databases : "");
	if (!SplitIdentifierString(raw, ',', &names))
		names = NIL;

	hash_seq_init(&status, launcher_dbs);
	while ((db = hash_seq_search(&status)) != NULL)
		db->wanted = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	pgstat_report_activity(STATE_RUNNING, "reading pg_database");

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database form = (Form_pg_database) GETSTRUCT(tup);
		bool		found;

		CHECK_FOR_INTERRUPTS();
		if (!form->datallowconn || form->datistemplate ||
			database_is_invalid_form(form) ||
			!database_selected(names, NameStr(form->datname)))
			continue;
		db = hash_search(launcher_dbs, &form->oid, HASH_ENTER, &found);
		if (!found)
		{
			db->handle = NULL;
			db->last_start = 0;
			db->warned = false;
		}
		strlcpy(db->name, NameStr(form->datname), NAMEDATALEN);
		db->wanted = true;
		if (report)
		{
			MemoryContext old = MemoryContextSwitchTo(loop_cxt);

			seen = lappend(seen, pstrdup(NameStr(form->datname)));
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);

	CommitTransactionCommand();
	MemoryContextSwitchTo(loop_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);

	foreach(lc, report ? names : NIL)
	{
		const char *name = lfirst(lc);
		ListCell   *lc2;
		bool		found = false;

		foreach(lc2, seen)
			found = found || strcmp(name, (const char *) lfirst(lc2)) == 0;
		if (!found)
			ereport(LOG,
					(errmsg("broker.databases names \"%s\", which is no database the broker can serve",
							name),
					 errdetail("Only existing databases that allow connections and are not templates are served.")));
	}
}

/*
 * Reserve a slot for a reaper of the database; false when it is paused or
 * a reaper (perhaps a previous launcher's, still exiting) is there.
 */
static bool
launcher_reserve_slot(Oid dboid, TimestampTz now)
{
	BrokerReaperSlot *free_slot = NULL;
	bool		ok = true;

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	if (database_paused(dboid, now))
		ok = false;
	for (int i = 0; i < worker_shared->nslots && ok; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid)
			ok = false;
		else if (!slot->in_use && free_slot == NULL)
			free_slot = slot;
	}
	if (ok && free_slot != NULL)
	{
		memset(free_slot, 0, sizeof(*free_slot));
		free_slot->in_use = true;
		free_slot->dboid = dboid;
		free_slot->state = REAPER_STARTING;
	}
	LWLockRelease(worker_shared->lock);
	return ok && free_slot != NULL;
}

/* Free a reservation no reaper took over (its start failed). */
static void
launcher_release_reservation(Oid dboid)
{
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < worker_shared->nslots; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid && slot->pid == 0)
			memset(slot, 0, sizeof(*slot));
	}
	LWLockRelease(worker_shared->lock);
}

/* Register the database's reaper and wait until it has started. */
static void
launcher_start_reaper(LauncherDb *db, TimestampTz now)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	MemoryContext old;
	BgwHandleStatus status;
	pid_t		pid;
	bool		ok;

	if (!launcher_reserve_slot(db->dboid, now))
		return;
	db->last_start = now;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "broker", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "broker_reaper_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "broker reaper for database %s",
			 db->name);
	strlcpy(worker.bgw_type, "broker reaper", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(db->dboid);
	worker.bgw_notify_pid = MyProcPid;

	/* The handle lives as long as the hash entry. */
	old = MemoryContextSwitchTo(TopMemoryContext);
	ok = RegisterDynamicBackgroundWorker(&worker, &handle);
	MemoryContextSwitchTo(old);
	if (!ok)
	{
		launcher_release_reservation(db->dboid);
		if (!db->warned)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start the broker reaper for database \"%s\"",
							db->name),
					 errdetail("All background worker slots are in use; expired messages there are removed only by broker.reap()."),
					 errhint("Raise max_worker_processes, or name the databases to serve in broker.databases.")));
		db->warned = true;
		return;
	}
	db->warned = false;

	status = WaitForBackgroundWorkerStartup(handle, &pid);
	if (status == BGWH_POSTMASTER_DIED)
		proc_exit(1);
	if (status == BGWH_STOPPED)
	{
		launcher_release_reservation(db->dboid);
		pfree(handle);
		return;
	}
	db->handle = handle;
}

/*
 * Start the reapers that are missing, stop the unwanted ones; return how
 * long (ms) the launcher may sleep before something is due.
 */
static long
launcher_reconcile(TimestampTz next_scan)
{
	HASH_SEQ_STATUS status;
	LauncherDb *db;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz wake = next_scan;
	TimestampTz retry;

	hash_seq_init(&status, launcher_dbs);
	while ((db = hash_seq_search(&status)) != NULL)
	{
		CHECK_FOR_INTERRUPTS();

		if (db->handle != NULL)
		{
			pid_t		pid;

			if (GetBackgroundWorkerPid(db->handle, &pid) == BGWH_STOPPED)
			{
				/* It died, or stopped for a command: start it again later. */
				pfree(db->handle);
				db->handle = NULL;
				launcher_release_reservation(db->dboid);
			}
			else if (!db->wanted)
				TerminateBackgroundWorker(db->handle);
		}

		if (!db->wanted)
		{
			/* Keep the entry while its reaper exits; then forget it. */
			if (db->handle == NULL)
				(void) hash_search(launcher_dbs, &db->dboid, HASH_REMOVE, NULL);
			continue;
		}
		if (db->handle != NULL)
			continue;

		/* Not again within BROKER_RESTART_DELAY_MS of the last attempt. */
		retry = TimestampTzPlusMilliseconds(db->last_start,
											BROKER_RESTART_DELAY_MS);
		if (now >= retry)
		{
			launcher_start_reaper(db, now);
			retry = TimestampTzPlusMilliseconds(now, BROKER_RESTART_DELAY_MS);
		}
		if (db->handle == NULL)
			wake = Min(wake, retry);
	}
	return Max(1L, TimestampDifferenceMilliseconds(GetCurrentTimestamp(), wake));
}

/* on_shmem_exit callback: stop the reapers, drop the single-instance guard. */
static void
launcher_exit(int code, Datum arg)
{
	(void) code;
	(void) arg;
	if (launcher_dbs != NULL)
	{
		HASH_SEQ_STATUS status;
		LauncherDb *db;

		hash_seq_init(&status, launcher_dbs);
		while ((db = hash_seq_search(&status)) != NULL)
		{
			if (db->handle != NULL)
				TerminateBackgroundWorker(db->handle);
		}
	}
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	if (worker_shared->launcher_pid == MyProcPid)
		worker_shared->launcher_pid = 0;
	LWLockRelease(worker_shared->lock);
}

/* Main function of the launcher. */
void
broker_launcher_main(Datum main_arg)
{
	HASHCTL		ctl;
	MemoryContext loop_cxt;
	TimestampTz next_scan = 0;
	bool		report = true;
	pid_t		other = 0;

	(void) main_arg;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* No database: only the shared catalogs, pg_database among them. */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	if (worker_shared == NULL)
		proc_exit(0);

	/* Single-instance guard; reservations of a previous launcher are void. */
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	if (worker_shared->launcher_pid != 0 &&
		worker_shared->launcher_pid != MyProcPid)
		other = worker_shared->launcher_pid;
	else
	{
		worker_shared->launcher_pid = MyProcPid;
		for (int i = 0; i < worker_shared->nslots; i++)
		{
			BrokerReaperSlot *slot = &worker_shared->slots[i];

			if (slot->in_use && slot->pid == 0)
				memset(slot, 0, sizeof(*slot));
		}
	}
	LWLockRelease(worker_shared->lock);
	if (other != 0)
	{
		ereport(LOG,
				(errmsg("broker launcher is already running under PID %d",
						(int) other)));
		proc_exit(0);
	}
	on_shmem_exit(launcher_exit, (Datum) 0);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(LauncherDb);
	launcher_dbs = hash_create("broker launcher databases", 64, &ctl,
							   HASH_ELEM | HASH_BLOBS);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "broker launcher loop",
									 ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(loop_cxt);

	for (;;)
	{
		long		timeout;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			next_scan = 0;		/* broker.databases may have changed */
			report = true;
		}

		if (GetCurrentTimestamp() >= next_scan)
		{
			launcher_scan(loop_cxt, report);
			report = false;
			next_scan = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													BROKER_LAUNCHER_NAPTIME_MS);
		}
		timeout = launcher_reconcile(next_scan);
		MemoryContextReset(loop_cxt);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ------------------------------------------------------------------------
 * broker.health()
 * ------------------------------------------------------------------------
 */

/* extversion of the broker extension in this database, or NULL. */
static char *
installed_extension_version(void)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("broker"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/* broker.health(): one row per running reaper, or one row of NULLs. */
Datum
broker_health(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *extversion = installed_extension_version();
	BrokerReaperSlot *copy = NULL;
	int			ncopy = 0;
	int			nrows = 0;
	Datum		values[9];
	bool		nulls[9];

	InitMaterializedSRF(fcinfo, 0);

	/* Copy the slots first: no catalog access under the LWLock. */
	if (worker_shared != NULL)
	{
		copy = palloc(worker_shared->nslots * sizeof(BrokerReaperSlot));
		LWLockAcquire(worker_shared->lock, LW_SHARED);
		for (int i = 0; i < worker_shared->nslots; i++)
		{
			if (worker_shared->slots[i].in_use && worker_shared->slots[i].pid != 0)
				copy[ncopy++] = worker_shared->slots[i];
		}
		LWLockRelease(worker_shared->lock);
	}

	for (int i = 0; i <= ncopy; i++)
	{
		memset(nulls, true, sizeof(nulls));
		values[6] = CStringGetTextDatum(BROKER_LIBRARY_VERSION);
		nulls[6] = false;
		if (extversion != NULL)
		{
			values[7] = CStringGetTextDatum(extversion);
			nulls[7] = false;
		}
		values[8] = BoolGetDatum(worker_shared != NULL);
		nulls[8] = false;

		if (i < ncopy)
		{
			BrokerReaperSlot *s = &copy[i];
			char	   *dbname = get_database_name(s->dboid);

			if (dbname != NULL)
			{
				NameData   *n = palloc(sizeof(NameData));

				namestrcpy(n, dbname);
				values[0] = NameGetDatum(n);
				nulls[0] = false;
			}
			values[1] = Int32GetDatum((int32) s->pid);
			nulls[1] = false;
			values[2] = CStringGetTextDatum(reaper_state_names[s->state]);
			nulls[2] = false;
			if (s->last_pass_at != 0)
			{
				Interval   *iv = palloc0(sizeof(Interval));

				iv->time = s->last_pass_us;
				values[3] = TimestampTzGetDatum(s->last_pass_at);
				values[4] = IntervalPGetDatum(iv);
				nulls[3] = nulls[4] = false;
			}
			values[5] = Int64GetDatum((int64) s->removed_total);
			nulls[5] = false;
		}
		else if (nrows > 0)
			break;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		nrows++;
	}
	return (Datum) 0;
}
