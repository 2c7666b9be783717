/*-------------------------------------------------------------------------
 *
 * segment.c
 *	  The message segments: which one takes new messages, which ones are
 *	  scanned, rotation, and emptying drained segments with TRUNCATE.
 *
 * Messages live in BROKER_SEGMENTS tables of the same shape,
 * broker.messages_0 .. _3.  Producers insert into the current segment.
 * When it has taken broker.segment_size ids, the background worker (or
 * broker.maintain_segments()) makes the next segment current, provided it
 * is drained.  A segment that is not current and holds no live message is
 * drained: the worker takes its AccessExclusiveLock (waiting at most
 * 50 ms, so producers and consumers stall no longer than that), checks
 * again that no row is left, and TRUNCATEs it.  TRUNCATE frees the space
 * of every dead row at once, without VACUUM and whatever old snapshot
 * another session holds (a REPEATABLE READ transaction that later reads
 * the segment sees it empty, as with PgQ's rotation).  A few live rows left
 * in the segment that must become current next (long leases, long delays;
 * at most a tenth of broker.segment_size, else the backlog is left to the
 * consumers and the rotation waits) are moved to the current segment,
 * with every column kept (their ids are then outside that segment's range;
 * lookups by id try every segment, the likely one first).
 *
 * Shared state per database installation: the current segment, each
 * segment's first id, and a "drained" bit per segment.  Drained segments
 * are skipped by dequeue and by lookups.  The bit is set by the maintaining
 * transaction while it holds the segment's AccessExclusiveLock, before it
 * commits, and cleared by any insert into the segment afterwards
 * (BrokerSegmentInserted): a producer that read the current segment just
 * before a rotation and inserts after the truncation waited for the lock,
 * so it sees the bit and clears it; its message is never hidden.
 * broker.segments keeps the current segment and first ids across restarts;
 * after a restart no segment is known to be drained until checked.
 *
 * Locking: an LWLock of the "broker" tranche protects the hash of states;
 * each state has a spinlock for its fields.
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
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "broker.h"

#define BROKER_MAX_INSTALLATIONS	256
#define BROKER_MOVE_BATCH			10000

int			broker_segment_size = 100000;

typedef struct SegKey
{
	Oid			dbid;
	Oid			defs_relid;
} SegKey;

typedef struct SegState
{
	SegKey		key;
	slock_t		mutex;
	bool		loaded;
	int			cur;
	int64		first_id[BROKER_SEGMENTS];
	uint32		drained;		/* bit per segment */
} SegState;

static LWLock *seg_lock = NULL;
static HTAB *seg_hash = NULL;

PG_FUNCTION_INFO_V1(broker_maintain_segments);

/* Shared memory for the segment states. */
Size
BrokerSegmentShmemSize(void)
{
	return hash_estimate_size(BROKER_MAX_INSTALLATIONS, sizeof(SegState));
}

/* Create or attach (caller holds AddinShmemInitLock). */
void
BrokerSegmentShmemInit(void)
{
	HASHCTL		info;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(SegKey);
	info.entrysize = sizeof(SegState);
	seg_hash = ShmemInitHash("broker segments", BROKER_MAX_INSTALLATIONS,
							 BROKER_MAX_INSTALLATIONS, &info,
							 HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	seg_lock = &(GetNamedLWLockTranche("broker"))[2].lock;
}

/* Read broker.segments into a state (caller is connected to SPI). */
static void
load_state(SegState *st)
{
	int			rc;
	int			cur = 0;
	int64		first[BROKER_SEGMENTS] = {0};

	rc = SPI_execute("SELECT s.segment, s.current, s.first_id FROM broker.segments s",
					 false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "broker: reading broker.segments failed: %s",
			 SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		HeapTuple	tup = SPI_tuptable->vals[i];
		int			seg = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));

		if (seg < 0 || seg >= BROKER_SEGMENTS)
			continue;
		if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
			cur = seg;
		first[seg] = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));
	}
	SpinLockAcquire(&st->mutex);
	if (!st->loaded)
	{
		st->cur = cur;
		memcpy(st->first_id, first, sizeof(first));
		st->drained = 0;
		st->loaded = true;
	}
	SpinLockRelease(&st->mutex);
}

/*
 * This installation's segment state, loaded (caller is connected to SPI).
 * Without shared memory (not preloaded) a backend-local copy read afresh
 * each time, with no segment known to be drained: every one is scanned.
 */
static SegState *
seg_state(void)
{
	SegKey		key;
	SegState   *st;
	bool		found;
	static SegState local;

	if (!BrokerSharedMemoryReady())
	{
		SpinLockInit(&local.mutex);
		local.loaded = false;
		load_state(&local);
		return &local;
	}
	BrokerRequireSharedMemory();
	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.defs_relid = BrokerGetRels()->queue_defs;

	LWLockAcquire(seg_lock, LW_SHARED);
	st = hash_search(seg_hash, &key, HASH_FIND, NULL);
	LWLockRelease(seg_lock);
	if (st == NULL)
	{
		LWLockAcquire(seg_lock, LW_EXCLUSIVE);
		st = hash_search(seg_hash, &key, HASH_ENTER_NULL, &found);
		if (st == NULL)
		{
			LWLockRelease(seg_lock);
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("too many databases use broker"),
					 errdetail("Shared memory holds the segment state of at most %d installations.",
							   BROKER_MAX_INSTALLATIONS)));
		}
		if (!found)
		{
			SpinLockInit(&st->mutex);
			st->loaded = false;
		}
		LWLockRelease(seg_lock);
	}
	if (!st->loaded)
		load_state(st);
	return st;
}

/* The segment new messages go to. */
int
BrokerSegmentCurrent(void)
{
	SegState   *st = seg_state();
	int			cur;

	SpinLockAcquire(&st->mutex);
	cur = st->cur;
	SpinLockRelease(&st->mutex);
	return cur;
}

/* The segments to scan, oldest first, drained ones left out. */
int
BrokerSegmentScanOrder(int *segs)
{
	SegState   *st = seg_state();
	int			cur;
	uint32		drained;
	int			n = 0;

	SpinLockAcquire(&st->mutex);
	cur = st->cur;
	drained = st->drained;
	SpinLockRelease(&st->mutex);
	for (int i = 1; i <= BROKER_SEGMENTS; i++)
	{
		int			seg = (cur + i) % BROKER_SEGMENTS;

		if (seg == cur || (drained & (1u << seg)) == 0)
			segs[n++] = seg;
	}
	return n;
}

/*
 * The segments to look for one message in: the one whose id range holds
 * the id first, then the others (moved or late messages).
 */
int
BrokerSegmentLookupOrder(int64 id, int *segs)
{
	SegState   *st = seg_state();
	int			n = BrokerSegmentScanOrder(segs);
	int			best = -1;
	int64		best_first = -1;

	SpinLockAcquire(&st->mutex);
	for (int i = 0; i < n; i++)
	{
		int64		first = st->first_id[segs[i]];

		if (first <= id && first >= best_first)
		{
			best = i;
			best_first = first;
		}
	}
	SpinLockRelease(&st->mutex);
	if (best > 0)
	{
		int			tmp = segs[best];

		memmove(&segs[1], &segs[0], best * sizeof(int));
		segs[0] = tmp;
	}
	return n;
}

/* A message went into a segment: it is not drained (any more). */
void
BrokerSegmentInserted(int seg)
{
	SegState   *st = seg_state();

	if ((st->drained & (1u << seg)) == 0)
		return;
	SpinLockAcquire(&st->mutex);
	st->drained &= ~(1u << seg);
	SpinLockRelease(&st->mutex);
}

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

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != tolerated)
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
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
	run_on_segment("TRUNCATE broker.messages_%d", seg, SPI_OK_UTILITY);
}

/*
 * Take a lock on a segment, waiting at most 50 ms; false if it could not
 * be had now (someone is still using the segment).
 */
static bool
lock_segment(Oid relid, LOCKMODE mode)
{
	return try_step(lock_step, relid, -1, mode, ERRCODE_LOCK_NOT_AVAILABLE);
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

/*
 * Lock every segment in the given mode, in segment order, waiting at most
 * 50 ms for each; false if one could not be had.  The background worker
 * does this before it touches the segments, so that it never waits long
 * while holding other locks: DROP EXTENSION, which takes the same tables
 * in another order, then waits for it instead of deadlocking with it.
 */
bool
BrokerSegmentsLockAll(LOCKMODE mode)
{
	const BrokerRels *rels = BrokerGetRels();

	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		if (!lock_segment(rels->segment[seg], mode))
			return false;
	}
	return true;
}

/* Live rows of a segment, counted up to "upto". */
static int64
count_rows(int seg, int64 upto)
{
	char	   *sql = psprintf("SELECT count(*) FROM (SELECT 1 FROM broker.messages_%d"
							   " LIMIT " INT64_FORMAT ") s", seg, upto);
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
move_rows(int from, int to)
{
	char	   *sql = psprintf("WITH m AS (DELETE FROM broker.messages_%d"
							   "  WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
							   "    SELECT ctid FROM broker.messages_%d LIMIT %d))"
							   "  RETURNING *)"
							   " INSERT INTO broker.messages_%d SELECT * FROM m",
							   from, from, BROKER_MOVE_BATCH, to);
	int			rc = SPI_execute(sql, false, 0);

	if (rc != SPI_OK_INSERT)
		elog(ERROR, "broker: moving messages between segments failed: %s",
			 SPI_result_code_string(rc));
	pfree(sql);
}

/*
 * One maintenance step in the caller's transaction (SPI connected):
 * truncate drained segments, move the last live rows out of the segment
 * that is to become current next, rotate when the current segment is full.
 */
void
BrokerSegmentsMaintain(void)
{
	SegState   *st = seg_state();
	const BrokerRels *rels = BrokerGetRels();
	int			cur;
	int			next;
	int64		last_id;
	bool		rotate_due;
	bool		isnull;
	int			rc;

	SpinLockAcquire(&st->mutex);
	cur = st->cur;
	SpinLockRelease(&st->mutex);
	next = (cur + 1) % BROKER_SEGMENTS;

	rc = SPI_execute("SELECT s.last_value FROM broker.message_id_seq s", false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "broker: reading the message id sequence failed");
	last_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 1, &isnull));
	rotate_due = last_id - st->first_id[cur] >= broker_segment_size;

	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		CHECK_FOR_INTERRUPTS();
		if (seg == cur || (st->drained & (1u << seg)) != 0)
			continue;
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
		if (!lock_segment(rels->segment[seg], AccessExclusiveLock))
			continue;
		/* With the lock, every writer of the segment has finished. */
		if (seg == next && rotate_due)
			move_rows(seg, cur);
		if (count_rows(seg, 1) > 0)
			continue;
		SpinLockAcquire(&st->mutex);
		st->drained |= 1u << seg;
		SpinLockRelease(&st->mutex);
		if (!truncate_segment(seg))
		{
			SpinLockAcquire(&st->mutex);
			st->drained &= ~(1u << seg);
			SpinLockRelease(&st->mutex);
		}
	}

	if (rotate_due && (st->drained & (1u << next)) != 0)
	{
		Datum		values[2];
		Oid			types[2] = {INT4OID, INT8OID};

		values[0] = Int32GetDatum(next);
		values[1] = Int64GetDatum(last_id + 1);
		rc = SPI_execute_with_args("UPDATE broker.segments s"
								   "   SET current = (s.segment OPERATOR(pg_catalog.=) $1),"
								   "       first_id = CASE WHEN s.segment OPERATOR(pg_catalog.=) $1"
								   "                  THEN $2 ELSE s.first_id END",
								   2, types, values, NULL, false, 0);
		if (rc != SPI_OK_UPDATE)
			elog(ERROR, "broker: rotating segments failed: %s",
				 SPI_result_code_string(rc));
		/* Producers may start on it now; an abort leaves a harmless mix. */
		SpinLockAcquire(&st->mutex);
		st->cur = next;
		st->first_id[next] = last_id + 1;
		st->drained &= ~(1u << next);
		SpinLockRelease(&st->mutex);
	}
}

/*
 * broker.maintain_segments(): one maintenance step now (what the worker
 * does every broker.reaper_interval), then the state of every segment.
 */
Datum
broker_maintain_segments(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SegState   *st;

	BrokerRequireSharedMemory();
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("broker.maintain_segments() must run in a READ COMMITTED transaction"),
				 errdetail("It checks that a segment is empty with a new snapshot; an older one could miss a message committed since.")));
	InitMaterializedSRF(fcinfo, 0);
	BrokerSPIConnect();
	BrokerSegmentsMaintain();
	st = seg_state();
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		values[0] = Int32GetDatum(seg);
		values[1] = BoolGetDatum(st->cur == seg);
		values[2] = Int64GetDatum(st->first_id[seg]);
		values[3] = BoolGetDatum((st->drained & (1u << seg)) != 0);
		values[4] = Int64GetDatum(DatumGetInt64(DirectFunctionCall1(pg_total_relation_size,
																	ObjectIdGetDatum(BrokerGetRels()->segment[seg]))));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	BrokerSPIFinish();
	return (Datum) 0;
}
