/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The "broker launcher" background worker: starts and stops one
 *	  "broker reaper" per served database.
 *
 * The launcher is registered from _PG_init when the library is preloaded
 * (never under pg_upgrade).  It starts once recovery has finished, so it
 * never runs on a standby and starts after a promotion, and the postmaster
 * restarts it 5 s after it exits with an error, and at once after a crash
 * restart.  It connects to no database and reads pg_database (a shared
 * catalog) every BROKER_LAUNCHER_NAPTIME_MS; for every database that
 * allows connections and is no template (narrowed by broker.databases) it
 * starts a dynamic worker, the reaper (reaper.c), and keeps its handle.
 * When a reaper exits, the postmaster wakes the launcher (bgw_notify_pid),
 * which starts it again at most once per BROKER_RESTART_DELAY_MS.  When
 * the launcher exits, it terminates its reapers, so a restarted launcher
 * starts afresh.  The slots and pauses it consults are in worker.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "worker.h"

/* How often the launcher reads pg_database. */
#define BROKER_LAUNCHER_NAPTIME_MS	2000
/* Minimum time between two starts of one database's reaper. */
#define BROKER_RESTART_DELAY_MS		1000

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

static HTAB *launcher_dbs = NULL;

static bool check_databases(char **newval, void **extra, GucSource source);

/*
 * Define broker.databases and register the launcher (from _PG_init, when
 * preloaded).
 */
void
BrokerLauncherInit(void)
{
	BackgroundWorker worker;

	DefineCustomStringVariable("broker.databases",
							   "Databases whose expired messages the background worker removes.",
							   "A comma-separated list of database names; empty means every "
							   "database that allows connections and is not a template.",
							   &broker_databases,
							   "",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   check_databases, NULL, NULL);

	/* pg_upgrade's server must not change any data: no worker at all. */
	if (IsBinaryUpgrade || !process_shared_preload_libraries_in_progress)
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

/* GUC check hook of broker.databases: a list of names. */
static bool
check_databases(char **newval, void **extra, GucSource source)
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

	if (!BrokerSlotReserve(db->dboid, now))
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
		BrokerSlotReleaseReservation(db->dboid);
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
		BrokerSlotReleaseReservation(db->dboid);
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
				BrokerSlotReleaseReservation(db->dboid);
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
	BrokerLauncherRelease();
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

	if (!BrokerWorkersReady())
		proc_exit(0);

	/* Single-instance guard; reservations of a previous launcher are void. */
	other = BrokerLauncherClaim();
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

