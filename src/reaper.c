/*-------------------------------------------------------------------------
 *
 * reaper.c
 *	  The "broker reaper" background worker: in its database, every
 *	  broker.reaper_interval, removes expired messages and maintains the
 *	  message store's segments.
 *
 * A reaper is started by the launcher (launcher.c) and connects to its
 * database.  Each pass deletes expired messages in batches of
 * BROKER_REAP_BATCH (expiry.c), each batch in its own transaction with its
 * own snapshot, then runs one maintenance step of the store in another
 * (segment rotation).  Each of those transactions first locks the
 * extension object itself in AccessShareLock, without waiting: DROP
 * EXTENSION takes that lock first, before any of the extension's
 * relations, so a reaper never deadlocks with it -- the drop waits for the
 * reaper's short transaction, or the reaper, finding the drop under way,
 * skips its pass.  An error in a pass is reported and the worker carries on
 * with the next pass (as autovacuum does per table).  Whatever the
 * database's default search_path, the reaper runs with pg_catalog, pg_temp.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "expiry.h"
#include "sql.h"
#include "store.h"
#include "worker.h"

int			broker_reaper_interval_ms = 1000;

/* Reaper-local state. */
static BrokerReaperSlot *my_slot = NULL;
static char my_dbname[NAMEDATALEN];

/* Define broker.reaper_interval (from _PG_init). */
void
BrokerReaperInit(void)
{
	DefineCustomIntVariable("broker.reaper_interval",
							"Time between two passes of the expiry reaper.",
							"Expired messages are never delivered; the reaper "
							"removes them from disk within about this interval.",
							&broker_reaper_interval_ms,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

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
	BrokerSlotSet(my_slot, state, pass_at, pass_us, removed);
}

/* True when a command asked this reaper to stop. */
static bool
stop_requested(void)
{
	return BrokerSlotStopRequested(my_slot);
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
		n = (int64) BrokerExpireBatch(0, GetCurrentTimestamp(), BROKER_REAP_BATCH);

	BrokerSPIFinish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(pass_cxt);
	return n;
}

/*
 * One maintenance step of the store in its own transaction: ordered groups
 * left without a head are handed on (groups.c), then segments (rotate.c).
 */
static void
reaper_maintain(MemoryContext pass_cxt)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	BrokerSPIConnect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (lock_installation())
	{
		(void) BrokerStoreRepairGroups(0);
		BrokerStoreMaintain();
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

/* on_shmem_exit callback: free this reaper's slot. */
static void
reaper_release_slot(int code, Datum arg)
{
	(void) code;
	(void) arg;
	if (my_slot == NULL)
		return;
	BrokerSlotRelease(my_slot);
	my_slot = NULL;
}

/* Main function of a reaper; main_arg is its database's OID. */
void
broker_reaper_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	MemoryContext pass_cxt;
	TimestampTz last_start = 0;
	pid_t		other;

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
	if (!BrokerWorkersReady())
		proc_exit(0);
	my_slot = BrokerSlotClaim(dboid, &other);
	if (other != 0)
		ereport(LOG,
				(errmsg("broker reaper for database \"%s\" is already running under PID %d",
						my_dbname, (int) other)));
	if (my_slot == NULL)
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
			/*
			 * Not on a standby, and not while the server is read-only
			 * (default_transaction_read_only: pg_auto_failover keeps a node
			 * being promoted read-only until it is the primary, and every
			 * pass would fail with 25006 meanwhile).
			 */
			if (!RecoveryInProgress() && !DefaultXactReadOnly)
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

