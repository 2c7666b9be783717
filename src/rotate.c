/*-------------------------------------------------------------------------
 *
 * rotate.c
 *	  The message store's rotation: truncating drained segments, moving the
 *	  last live rows out of the segment that is to become current next, and
 *	  making it current; broker.maintain_segments().
 *
 * See segment.c for the segment state and for what is published when.  A
 * maintaining transaction takes an ExclusiveLock on broker.segments first
 * (waiting at most 50 ms: a second maintainer, or a session holding rows of
 * the table, makes it skip its pass), then for each segment that is neither
 * current nor known drained: a cheap look without the lock, its
 * AccessExclusiveLock (at most 50 ms, so producers and consumers stall no
 * longer), a look again, the move of the last live rows if it is the next
 * segment and a rotation is due, and TRUNCATE.  What it did is recorded
 * with BrokerSegmentRecord and published at commit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "acl.h"
#include "catalog.h"
#include "segment.h"
#include "sql.h"
#include "store.h"
#include "util.h"

#define BROKER_MOVE_BATCH			10000

/* Maintenance statements, one segment (or two) formatted in. */
#define COUNT_ROWS_SQL \
	"SELECT pg_catalog.count(*) FROM" \
	" (SELECT 1 FROM broker.messages_%d LIMIT " INT64_FORMAT ") s"
#define MOVE_ROWS_SQL \
	"WITH m AS (DELETE FROM broker.messages_%d d" \
	"  WHERE d.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(" \
	"    SELECT s.ctid FROM broker.messages_%d s LIMIT %d))" \
	"  RETURNING d.*)" \
	" INSERT INTO broker.messages_%d SELECT m.* FROM m"
#define TRUNCATE_SQL "TRUNCATE broker.messages_%d"
#define BROKER_PAIR_MIN_TURN_US	USECS_PER_SEC

/* The pairs of rotated tables (segment.h), and how long each keeps rows. */
static const struct
{
	const char *truncate;		/* with %d for the table */
	const char *has_rows;
	const char *relname[BROKER_PAIR_TABLES];
	const char *longest;		/* the longest time a row must be kept */
}			pair_sql[BROKER_NUM_PAIRS] = {
	[BROKER_PAIR_DEDUP] = {
		"TRUNCATE broker.dedup_%d",
		"SELECT 1 FROM broker.dedup_%d LIMIT 1",
		{"dedup_0", "dedup_1"},
		"SELECT pg_catalog.max(q.dedup_window) FROM broker.queue_defs q"
	},
	[BROKER_PAIR_RECORDS] = {
		"TRUNCATE broker.records_%d",
		"SELECT 1 FROM broker.records_%d LIMIT 1",
		{"records_0", "records_1"},
		"SELECT pg_catalog.max(q.retention) FROM broker.queue_defs q"
	},
};
#define LAST_ID_SQL "SELECT s.last_value FROM broker.message_id_seq s"

/* Rotation: the table may have no rows yet (see load_state), so upsert. */
static BrokerStmt rotate = {
	"INSERT INTO broker.segments AS s (segment, current, first_id)"
	" SELECT g.i, g.i OPERATOR(pg_catalog.=) $1,"
	"        CASE WHEN g.i OPERATOR(pg_catalog.=) $1 THEN $2 ELSE 0 END"
	"   FROM pg_catalog.generate_series(0, 3) AS g(i)"
	" ON CONFLICT (segment) DO UPDATE"
	"   SET current = EXCLUDED.current,"
	"       first_id = CASE WHEN EXCLUDED.current"
	"                  THEN EXCLUDED.first_id ELSE s.first_id END",
	2, {INT4OID, INT8OID}, 0, {NULL}
};

PG_FUNCTION_INFO_V1(broker_maintain_segments);

/* A step that may fail with one tolerated error (see try_step). */
typedef void (*SegmentStep) (Oid relid, int seg, LOCKMODE mode);

/*
 * Run a step in a subtransaction: true if it succeeded, false if it failed
 * with the tolerated SQLSTATE (its effects rolled back); any other error
 * propagates.
 */
static bool
try_step(SegmentStep step, Oid relid, int seg, LOCKMODE mode, int tolerated)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool done = false;

	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		step(relid, seg, mode);
		ReleaseCurrentSubTransaction();
		done = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/*
		 * Whatever the error, the subtransaction is rolled back here: an
		 * error re-thrown from inside it (a timeout, a cancel, a full disk)
		 * would leave the caller's transaction in a state it cannot end.
		 */
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode != tolerated)
			ReThrowError(edata);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return done;
}

/* Step: lock a relation, waiting at most 50 ms. */
static void
lock_step(Oid relid, int seg, LOCKMODE mode)
{
	int			nest = NewGUCNestLevel();

	(void) seg;
	(void) set_config_option("lock_timeout", "50", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	LockRelationOid(relid, mode);
	AtEOXact_GUC(true, nest);
}

static uint64 run_on_segment(const char *fmt, int seg, int expect);

/* Step: TRUNCATE a segment. */
static void
truncate_step(Oid relid, int seg, LOCKMODE mode)
{
	(void) relid;
	(void) mode;
	run_on_segment(TRUNCATE_SQL, seg, SPI_OK_UTILITY);
}

/*
 * Take a lock on a relation, waiting at most 50 ms; false if it could not
 * be had now (someone is still using it).
 */
static bool
lock_briefly(Oid relid, LOCKMODE mode)
{
	return try_step(lock_step, relid, -1, mode, ERRCODE_LOCK_NOT_AVAILABLE);
}

/* Step: TRUNCATE a table of a pair (relid: which pair, as a number). */
static void
truncate_pair_step(Oid relid, int table, LOCKMODE mode)
{
	(void) mode;
	run_on_segment(pair_sql[relid].truncate, table, SPI_OK_UTILITY);
}

/*
 * TRUNCATE a segment (its lock is held); false, and nothing done, if this
 * very session still has it open in a running query (55006), as when
 * maintain_segments() is called from a query that reads broker.messages.
 */
static bool
truncate_segment(int seg)
{
	return try_step(truncate_step, InvalidOid, seg, NoLock, ERRCODE_OBJECT_IN_USE);
}

/* Run a statement on one segment (text with %d for the segment). */
static uint64
run_on_segment(const char *fmt, int seg, int expect)
{
	char	   *sql = psprintf(fmt, seg);
	int			rc = SPI_execute(sql, false, 0);

	if (rc != expect)
		elog(ERROR, "broker: segment maintenance failed: %s: %s",
			 sql, SPI_result_code_string(rc));
	pfree(sql);
	return SPI_processed;
}

/* Live rows of a segment, counted up to "upto". */
static int64
count_rows(int seg, int64 upto)
{
	char	   *sql = psprintf(COUNT_ROWS_SQL, seg, upto);
	int			rc = SPI_execute(sql, false, 1);
	bool		isnull;

	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "broker: counting a segment's rows failed: %s",
			 SPI_result_code_string(rc));
	pfree(sql);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

/* Move up to BROKER_MOVE_BATCH rows, every column kept, to another segment. */
static void
move_rows(SegState *st, int from, int to)
{
	char	   *sql = psprintf(MOVE_ROWS_SQL, from, from, BROKER_MOVE_BATCH, to);
	int			rc;

	BrokerSegmentAnnounceMove(st);
	rc = SPI_execute(sql, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "broker: moving messages between segments failed: %s",
			 SPI_result_code_string(rc));
	pfree(sql);
}

/*
 * A pair of rotated tables (dedup.c, records.c): empty the one that
 * stopped taking rows once the longest time its rows must be kept has
 * passed since; swap when it is empty and the current one has taken rows
 * for that long.  The maintainers' lock is held.
 */
static void
maintain_pair(SegState *st, BrokerPair pair)
{
	BrokerTablePair dt;
	TimestampTz now = GetCurrentTimestamp();
	Interval	longest;
	int			other;
	bool		isnull;
	Datum		d;
	int			rc;

	BrokerPairGet(st, pair, &dt);
	other = (dt.cur + 1) % BROKER_PAIR_TABLES;

	rc = SPI_execute(pair_sql[pair].longest, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "broker: reading the queues' settings failed");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		memset(&longest, 0, sizeof(longest));
	else
		longest = *DatumGetIntervalP(d);

	/*
	 * Since the start no producer has written to the other table (they all
	 * found the first one current): if it has no rows, lookups may skip it
	 * now rather than a window later.
	 */
	if (!dt.other_empty && !dt.turned &&
		run_on_segment(pair_sql[pair].has_rows, other, SPI_OK_SELECT) == 0)
	{
		dt.other_empty = true;
		BrokerPairSet(st, pair, &dt);
	}

	if (!dt.other_empty && BrokerTimestampPlus(dt.stopped, &longest) < now)
	{
		Oid			relid = BrokerRelid(pair_sql[pair].relname[other]);

		/* An empty table is not truncated (a new file each time). */
		if (run_on_segment(pair_sql[pair].has_rows, other, SPI_OK_SELECT) > 0 &&
			(!lock_briefly(relid, AccessExclusiveLock) ||
			 !try_step(truncate_pair_step, (Oid) pair, other, NoLock,
					   ERRCODE_OBJECT_IN_USE)))
			return;
		/* Safe at once: every row in it was older than it must be kept. */
		dt.other_empty = true;
		BrokerPairSet(st, pair, &dt);
	}

	/* Not more often than once a second, however short the windows. */
	if (dt.other_empty && BrokerTimestampPlus(dt.since, &longest) <= now &&
		now - dt.since >= BROKER_PAIR_MIN_TURN_US)
	{
		dt.cur = other;
		dt.since = now;
		dt.other_empty = false;
		dt.turned = true;
		BrokerPairSet(st, pair, &dt);

		/*
		 * A producer that still saw the old table read its clock before
		 * that (dedup.c): so every row it adds there is older than this.
		 */
		dt.stopped = GetCurrentTimestamp();
		BrokerPairSet(st, pair, &dt);
	}
}

/*
 * One maintenance step in the caller's transaction (SPI connected):
 * truncate drained segments, move the last live rows out of the segment
 * that is to become current next, rotate when the current segment is full.
 * Nothing of it is published before the transaction commits.
 */
static void
maintain(void)
{
	SegState   *st = BrokerSegmentState();
	int			cur;
	int			next;
	uint32		drained;
	int64		last_id;
	int64		first_cur;
	bool		rotate_due;
	bool		next_drained = false;
	bool		isnull;
	int			rc;

	/*
	 * One maintainer at a time (a second one has nothing to do), and never
	 * one that waits: ExclusiveLock also conflicts with a session that
	 * holds rows of broker.segments FOR UPDATE.
	 */
	if (!lock_briefly(BrokerRelid("segments"), ExclusiveLock))
		return;

	/* A previous maintainer has committed and published: fresh state. */
	{
		int64		first[BROKER_SEGMENTS];

		BrokerSegmentView(st, &cur, &drained, first);
		first_cur = first[cur];
	}
	next = (cur + 1) % BROKER_SEGMENTS;

	rc = SPI_execute(LAST_ID_SQL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "broker: reading the message id sequence failed");
	last_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 1, &isnull));
	rotate_due = last_id - first_cur >= broker_segment_size;

	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		CHECK_FOR_INTERRUPTS();
		if (seg == cur)
			continue;
		if ((drained & (1u << seg)) != 0)
		{
			if (seg == next)
				next_drained = true;
			continue;
		}

		/*
		 * Cheap look first, without the lock: live rows left, nothing to do
		 * yet.  Only the segment that must become current next has its last
		 * rows moved out, and only a few: a real backlog there is the head
		 * of the queues, soon consumed, and is left to the consumers.
		 */
		if (seg == next && rotate_due)
		{
			if (count_rows(seg, broker_segment_size / 10 + 1) > broker_segment_size / 10)
				continue;
		}
		else if (count_rows(seg, 1) > 0)
			continue;
		if (!lock_briefly(BrokerSegmentRelid(seg), AccessExclusiveLock))
			continue;
		/* With the lock, every writer of the segment has finished. */
		if (seg == next && rotate_due && count_rows(seg, 1) > 0)
			move_rows(st, seg, cur);
		if (count_rows(seg, 1) > 0)
			continue;
		if (!truncate_segment(seg))
			continue;
		BrokerSegmentRecord(st, seg, -1, 0);
		if (seg == next)
			next_drained = true;
	}

	for (int pair = 0; pair < BROKER_NUM_PAIRS; pair++)
		maintain_pair(st, (BrokerPair) pair);

	if (rotate_due && next_drained)
	{
		Datum		values[2];

		values[0] = Int32GetDatum(next);
		values[1] = Int64GetDatum(last_id + 1);
		rc = BrokerStmtExecute(&rotate, -1, values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_INSERT, "rotating segments");
		/* Producers may start on it once this transaction has committed. */
		BrokerSegmentRecord(st, -1, next, last_id + 1);
	}
}

/*
 * Check every drained segment for rows (a restore's COPY, a superuser's
 * INSERT): a segment with rows loses its drained bit.  Caller is connected
 * to SPI; a few index-less probes of empty tables.
 */
static void
verify_drained(void)
{
	SegState   *st = BrokerSegmentState();
	int			cur;
	uint32		drained;

	BrokerSegmentView(st, &cur, &drained, NULL);
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		if ((drained & (1u << seg)) != 0 && count_rows(seg, 1) > 0)
			BrokerSegmentClearDrained(st, seg);
	}
}

/*
 * One maintenance pass (the reaper's, every broker.reaper_interval):
 * check the drained segments, then maintain.
 */
void
BrokerStoreMaintain(void)
{
	verify_drained();
	maintain();
}

/*
 * broker.maintain_segments(): one maintenance step now (what the worker
 * does every broker.reaper_interval), then the state of every segment as
 * this transaction will publish it.
 */
Datum
broker_maintain_segments(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SegState   *st;
	int			cur;
	int64		first[BROKER_SEGMENTS];
	uint32		drained;

	BrokerRequireSharedMemory();
	BrokerRequireWritable("maintain segments");
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("broker.maintain_segments() must run in a READ COMMITTED transaction"),
				 errdetail("It checks that a segment is empty with a new snapshot; an older one could miss a message committed since.")));
	InitMaterializedSRF(fcinfo, 0);
	BrokerSPIConnect();
	BrokerRequireOwner("maintain the message store");
	BrokerStoreMaintain();
	st = BrokerSegmentState();
	BrokerSegmentView(st, &cur, &drained, first);
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		values[0] = Int32GetDatum(seg);
		values[1] = BoolGetDatum(cur == seg);
		values[2] = Int64GetDatum(first[seg]);
		values[3] = BoolGetDatum((drained & (1u << seg)) != 0);
		values[4] = Int64GetDatum(DatumGetInt64(DirectFunctionCall1(pg_total_relation_size,
																	ObjectIdGetDatum(BrokerSegmentRelid(seg)))));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	BrokerSPIFinish();
	return (Datum) 0;
}
