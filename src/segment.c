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
 * segment's first id, a "drained" bit per segment, and a count of open
 * transactions that move rows between segments (or bulk-load them).
 *
 * What is published when
 * ----------------------
 * The maintaining transaction changes the shared state only when it
 * commits (XACT_EVENT_COMMIT, after the transaction became visible and
 * while it still holds its locks): a rotation, and the drained bit of a
 * segment it truncated.  If it rolls back -- a statement_timeout, a
 * cancelled maintain_segments(), a rolled-back savepoint -- nothing of it
 * was ever published, so no segment holding rows is ever taken for
 * drained, and no producer starts on a segment whose truncation did not
 * happen.
 *
 * Drained bits are a hint that dequeue scans and the reaper use to skip
 * empty segments; nothing that could lose a message trusts them.  The
 * low-water-mark probe (store.c, for inflight.c) looks into every segment and clears the
 * bit of a segment in which it finds a row; lookups by id try drained
 * segments last; and every maintenance pass checks that each drained
 * segment is still empty.  So rows that reach a drained segment without
 * going through the extension (a restore's COPY, a superuser's INSERT) are
 * found, and a producer that read "current" just before a rotation and
 * inserts after the truncation clears the bit itself (BrokerSegmentInserted).
 *
 * Moved rows and the low-water mark
 * ---------------------------------
 * Moving a row to another segment is an uncommitted delete and insert of
 * a message whose id is far below the id sequence, which the in-flight
 * registry of enqueues (inflight.c) does not know.  A low-water-mark refresh
 * whose per-segment probes, each with its own snapshot, straddled the
 * mover's commit could see the row in neither segment and move the mark
 * past it for good.  So a mover announces itself: it increments "movers"
 * and "move_gen" before its first move, and decrements "movers" and
 * increments "move_gen" again when it ends (commit or abort).  A refresh
 * reads move_gen before it starts and gives up if a mover is open; it
 * reads move_gen again after its probes and discards its result if it
 * changed.  A refresh therefore only advances the mark when no move was
 * in progress at any time during it (BrokerStoreMovesBegin/Since).  The
 * same holds for a COPY into a segment (pg_restore), announced by the
 * utility hook.
 *
 * Locking: the BROKER_LOCK_SEGMENTS LWLock protects the hash of states;
 * each state has a spinlock for its fields; movers and move_gen are
 * atomics.  Two maintaining transactions are serialised by an
 * ExclusiveLock on broker.segments (taken with a 50 ms timeout; the second
 * one, or one that finds the table's rows locked, skips its pass).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "qstate.h"
#include "segment.h"
#include "sql.h"
#include "store.h"
#include "util.h"

#define BROKER_MAX_INSTALLATIONS	256

int			broker_segment_size = 100000;

typedef struct SegKey
{
	Oid			dbid;
	Oid			installation;
} SegKey;

struct SegState
{
	SegKey		key;
	slock_t		mutex;
	bool		loaded;
	int			cur;
	int64		first_id[BROKER_SEGMENTS];
	uint32		drained;		/* bit per segment: a hint, see above */
	pg_atomic_uint32 movers;	/* open transactions moving rows */
	pg_atomic_uint64 move_gen;	/* bumped when one begins and when it ends */
	BrokerTablePair pairs[BROKER_NUM_PAIRS];	/* under mutex (rotate.c) */
};

/* A change the maintaining transaction publishes when it commits. */
typedef struct SegChange
{
	SubTransactionId subid;
	int			drained_seg;	/* >= 0: set this segment's drained bit */
	int			new_cur;		/* >= 0: rotate to this segment ... */
	int64		first_id;		/* ... whose first id this is */
} SegChange;

static LWLock *seg_lock = NULL;
static HTAB *seg_hash = NULL;

/* Backend-local: this transaction's changes, and the state it moves in. */
static SegChange *changes = NULL;	/* in TopTransactionContext */
static int	nchanges = 0;
static int	maxchanges = 0;
static SegKey changes_key;		/* the installation they are for */
static SegState *moving_in = NULL;
static bool bulk_loaded = false;	/* the move was a COPY into a segment */


/* Define the setting of the segments (from _PG_init). */
void
BrokerSegmentInit(void)
{
	DefineCustomIntVariable("broker.segment_size",
							"Message ids a segment takes before the next segment becomes current.",
							"Drained segments are emptied with TRUNCATE; smaller segments "
							"give space back sooner, larger ones rotate less often.",
							&broker_segment_size,
							100000, 100, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
}

/* The relation of a segment. */
Oid
BrokerSegmentRelid(int seg)
{
	char		name[NAMEDATALEN];

	snprintf(name, sizeof(name), "messages_%d", seg);
	return BrokerRelid(name);
}

/*
 * True when a relation is one of the store's tables (the extension exists):
 * a segment, the segment table, a key or record table.
 */
bool
BrokerStoreIsPartition(Oid relid)
{
	static const char *const others[] = {"segments", "dedup_0", "dedup_1",
	"records_0", "records_1"};

	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		if (relid == BrokerSegmentRelid(seg))
			return true;
	}
	for (int i = 0; i < (int) lengthof(others); i++)
	{
		if (relid == BrokerRelid(others[i]))
			return true;
	}
	return false;
}

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
	seg_lock = &(GetNamedLWLockTranche("broker"))[BROKER_LOCK_SEGMENTS].lock;
}

/*
 * Read broker.segments into a state (caller is connected to SPI).  The
 * table may be empty (a new installation, or one restored by pg_dump
 * before its rows): segment 0 is then current and every first id is 0.
 */
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

/* Initialise a new state entry (its key is set). */
static void
init_state(SegState *st)
{
	SpinLockInit(&st->mutex);
	st->loaded = false;
	st->cur = 0;
	memset(st->first_id, 0, sizeof(st->first_id));
	st->drained = 0;
	pg_atomic_init_u32(&st->movers, 0);
	pg_atomic_init_u64(&st->move_gen, 0);

	/*
	 * Pairs of rotated tables: after a start, which one took rows last is
	 * not known; table 0 takes them now, and table 1 is emptied once the
	 * longest window (or retention) has passed: everything in it is older
	 * than now.
	 */
	for (int p = 0; p < BROKER_NUM_PAIRS; p++)
	{
		st->pairs[p].cur = 0;
		st->pairs[p].since = GetCurrentTimestamp();
		st->pairs[p].stopped = st->pairs[p].since;
		st->pairs[p].other_empty = false;
		st->pairs[p].turned = false;
	}
}

/* A pair of rotated tables' state of an installation. */
void
BrokerPairGet(SegState *st, BrokerPair pair, BrokerTablePair *out)
{
	SpinLockAcquire(&st->mutex);
	*out = st->pairs[pair];
	SpinLockRelease(&st->mutex);
}

/* Replace it (maintenance, rotate.c). */
void
BrokerPairSet(SegState *st, BrokerPair pair, const BrokerTablePair *in)
{
	SpinLockAcquire(&st->mutex);
	st->pairs[pair] = *in;
	SpinLockRelease(&st->mutex);
}

static SegState *state_entry(void);

/*
 * This installation's segment state, loaded (caller is connected to SPI).
 * Without shared memory (not preloaded) a backend-local copy read afresh
 * each time, with no segment known to be drained: every one is scanned.
 */
SegState *
BrokerSegmentState(void)
{
	SegState   *st;
	static SegState local;

	if (!BrokerSharedMemoryReady())
	{
		init_state(&local);
		load_state(&local);
		return &local;
	}
	st = state_entry();
	if (!st->loaded)
		load_state(st);
	return st;
}

/* This installation's entry in shared memory, created but not loaded. */
static SegState *
state_entry(void)
{
	SegKey		key;
	SegState   *st;
	bool		found;

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.installation = BrokerGetRels()->extension;

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
							   BROKER_MAX_INSTALLATIONS),
					 errhint("Drop the extension in databases that do not use it.")));
		}
		if (!found)
			init_state(st);
		LWLockRelease(seg_lock);
	}
	return st;
}

/*
 * The state as this backend sees it: the shared state, with the changes
 * its own transaction will publish at commit applied (it reads its own
 * writes: after its own rotation, its own enqueues go to the new current
 * segment, which nobody else can use before it commits).
 */
void
BrokerSegmentView(SegState *st, int *cur, uint32 *drained, int64 *first)
{
	SpinLockAcquire(&st->mutex);
	*cur = st->cur;
	*drained = st->drained;
	if (first)
		memcpy(first, st->first_id, sizeof(st->first_id));
	SpinLockRelease(&st->mutex);
	if (nchanges == 0 || memcmp(&changes_key, &st->key, sizeof(SegKey)) != 0)
		return;
	for (int i = 0; i < nchanges; i++)
	{
		if (changes[i].drained_seg >= 0)
			*drained |= 1u << changes[i].drained_seg;
		if (changes[i].new_cur >= 0)
		{
			*cur = changes[i].new_cur;
			*drained &= ~(1u << *cur);
			if (first)
				first[*cur] = changes[i].first_id;
		}
	}
}

/* The segment new messages go to. */
int
BrokerSegmentCurrent(void)
{
	int			cur;
	uint32		drained;

	BrokerSegmentView(BrokerSegmentState(), &cur, &drained, NULL);
	return cur;
}

/* The segments a dequeue scans, oldest first, drained ones left out. */
int
BrokerSegmentScanOrder(int *segs)
{
	int			cur;
	uint32		drained;
	int			n = 0;

	BrokerSegmentView(BrokerSegmentState(), &cur, &drained, NULL);
	for (int i = 1; i <= BROKER_SEGMENTS; i++)
	{
		int			seg = (cur + i) % BROKER_SEGMENTS;

		if (seg == cur || (drained & (1u << seg)) == 0)
			segs[n++] = seg;
	}
	return n;
}

/*
 * The segments to look for one message in, every one: first the one whose
 * id range holds the id, then the other undrained ones (moved or late
 * messages), then the drained ones (rows loaded behind the extension's
 * back; see the file header).
 */
int
BrokerSegmentLookupOrder(int64 id, int *segs)
{
	int			cur;
	uint32		drained;
	int			best = -1;
	int64		best_first = -1;
	int64		first[BROKER_SEGMENTS];
	int			n = 0;

	BrokerSegmentView(BrokerSegmentState(), &cur, &drained, first);

	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		if ((seg == cur || (drained & (1u << seg)) == 0) &&
			first[seg] <= id && first[seg] >= best_first)
		{
			best = seg;
			best_first = first[seg];
		}
	}
	if (best >= 0)
		segs[n++] = best;
	for (int pass = 0; pass < 2; pass++)
	{
		for (int i = 1; i <= BROKER_SEGMENTS; i++)
		{
			int			seg = (cur + i) % BROKER_SEGMENTS;
			bool		is_drained = seg != cur && (drained & (1u << seg)) != 0;

			if (seg != best && is_drained == (pass == 1))
				segs[n++] = seg;
		}
	}
	return n;
}

/* Clear a segment's drained bit, the published one and a pending one. */
void
BrokerSegmentClearDrained(SegState *st, int seg)
{
	for (int i = 0; i < nchanges; i++)
	{
		if (changes[i].drained_seg == seg)
			changes[i].drained_seg = -1;
	}
	if ((st->drained & (1u << seg)) == 0)
		return;
	SpinLockAcquire(&st->mutex);
	st->drained &= ~(1u << seg);
	SpinLockRelease(&st->mutex);
}

/* A message went into a segment: it is not drained (any more). */
void
BrokerSegmentInserted(int seg)
{
	BrokerSegmentClearDrained(BrokerSegmentState(), seg);
}

/* A live row was seen in a segment: it is not drained. */
void
BrokerSegmentFound(int seg)
{
	BrokerSegmentClearDrained(BrokerSegmentState(), seg);
}

/*
 * Before a low-water-mark refresh: the move generation to compare with
 * afterwards; *moving is set when a mover is open (no refresh now).
 */
uint64
BrokerStoreMovesBegin(bool *moving)
{
	SegState   *st = BrokerSegmentState();
	uint64		gen;

	gen = pg_atomic_read_u64(&st->move_gen);
	pg_memory_barrier();
	*moving = pg_atomic_read_u32(&st->movers) > 0;
	return gen;
}

/* After the refresh's probes: did a move begin or end meanwhile? */
bool
BrokerStoreMovesSince(uint64 gen)
{
	SegState   *st = BrokerSegmentState();

	pg_memory_barrier();
	return pg_atomic_read_u64(&st->move_gen) != gen;
}

/*
 * This transaction is about to put rows with old ids into a segment
 * (moving them, or a COPY): announce it until the transaction ends.
 */
void
BrokerSegmentAnnounceMove(SegState *st)
{
	if (moving_in != NULL)
		return;
	pg_atomic_fetch_add_u32(&st->movers, 1);
	pg_atomic_fetch_add_u64(&st->move_gen, 1);
	moving_in = st;
}

/* A COPY into a segment table (utility hook): it is a mover. */
void
BrokerStoreBulkLoad(void)
{
	if (!BrokerSharedMemoryReady() || BrokerFindRels(true) == NULL)
		return;
	BrokerXactTrack();
	/* Not loaded now: broker.segments itself may be what is being restored. */
	BrokerSegmentAnnounceMove(state_entry());
	bulk_loaded = true;
}

/* Record a change of a state to publish at commit. */
void
BrokerSegmentRecord(SegState *st, int drained_seg, int new_cur, int64 first_id)
{
	SegChange  *c;

	changes_key = st->key;
	BrokerXactTrack();

	if (nchanges == maxchanges)
	{
		int			newmax = maxchanges == 0 ? 8 : maxchanges * 2;

		if (changes == NULL)
			changes = MemoryContextAlloc(TopTransactionContext,
										 newmax * sizeof(SegChange));
		else
			changes = repalloc(changes, newmax * sizeof(SegChange));
		maxchanges = newmax;
	}
	c = &changes[nchanges++];
	c->subid = GetCurrentSubTransactionId();
	c->drained_seg = drained_seg;
	c->new_cur = new_cur;
	c->first_id = first_id;
}

/* A PREPARE cannot take segment changes or a move along: refuse it. */
static void
segment_pre_prepare(void)
{
	if (nchanges > 0 || moving_in != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that has maintained broker segments"),
				 errdetail("Their effects on shared state are published when the transaction commits.")));
}

/*
 * The transaction ends: on commit publish its changes (it is visible now
 * and still holds its locks); in any case end its move.
 */
static void
segment_xact_end(BrokerXactEnd how)
{
	bool		commit = how == BROKER_XACT_COMMITTED;

	if (commit && nchanges > 0 && seg_hash != NULL)
	{
		SegState   *st;

		/* No catalog access here: the key was noted with the changes. */
		LWLockAcquire(seg_lock, LW_SHARED);
		st = hash_search(seg_hash, &changes_key, HASH_FIND, NULL);
		if (st != NULL)
		{
			SpinLockAcquire(&st->mutex);
			for (int i = 0; i < nchanges; i++)
			{
				SegChange  *c = &changes[i];

				if (c->drained_seg >= 0)
					st->drained |= 1u << c->drained_seg;
				if (c->new_cur >= 0)
				{
					st->cur = c->new_cur;
					st->first_id[c->new_cur] = c->first_id;
					st->drained &= ~(1u << c->new_cur);
				}
			}
			SpinLockRelease(&st->mutex);
		}
		LWLockRelease(seg_lock);
	}
	if (moving_in != NULL)
	{
		SegKey		key = moving_in->key;

		pg_atomic_fetch_sub_u32(&moving_in->movers, 1);
		pg_atomic_fetch_add_u64(&moving_in->move_gen, 1);
		moving_in = NULL;

		/*
		 * Moved rows were live, so no mark was past them before the move,
		 * and the move generation kept refreshes from passing them since.
		 * Rows a COPY loaded may be below marks that passed their ids long
		 * ago: those marks start again from 0.
		 */
		if (commit && bulk_loaded)
		{
			SegState   *st;

			BrokerLowerMarks(key.dbid, key.installation);

			/*
			 * What was loaded may be the segment table, the key tables, the
			 * records: read the segments again at the next use, and look in
			 * both tables of every pair (nothing is known empty any more).
			 */
			LWLockAcquire(seg_lock, LW_SHARED);
			st = hash_search(seg_hash, &key, HASH_FIND, NULL);
			if (st != NULL)
			{
				SpinLockAcquire(&st->mutex);
				st->loaded = false;
				st->drained = 0;
				for (int p = 0; p < BROKER_NUM_PAIRS; p++)
				{
					st->pairs[p].other_empty = false;
					st->pairs[p].turned = true;
				}
				SpinLockRelease(&st->mutex);
			}
			LWLockRelease(seg_lock);
		}
	}
	bulk_loaded = false;
	changes = NULL;				/* freed with TopTransactionContext */
	nchanges = maxchanges = 0;
}

/* A subtransaction ended: forget its changes if it rolled back. */
static void
segment_subxact_end(SubTransactionId mySubid, SubTransactionId parentSubid,
					bool commit)
{
	int			j = 0;

	for (int i = 0; i < nchanges; i++)
	{
		if (changes[i].subid != mySubid)
			changes[j++] = changes[i];
		else if (commit)
		{
			changes[i].subid = parentSubid;
			changes[j++] = changes[i];
		}
	}
	nchanges = j;
}

const BrokerXactHandler BrokerSegmentXact = {
	.pre_prepare = segment_pre_prepare,
	.end = segment_xact_end,
	.subxact_end = segment_subxact_end,
};

/* Remove the segment state of an installation, or of every one of a database. */
void
BrokerStoreForget(Oid dbid, Oid installation)
{
	HASH_SEQ_STATUS seq;
	SegState   *st;

	if (seg_hash == NULL)
		return;
	LWLockAcquire(seg_lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, seg_hash);
	while ((st = hash_seq_search(&seq)) != NULL)
	{
		if (st->key.dbid == dbid &&
			(!OidIsValid(installation) || st->key.installation == installation))
			hash_search(seg_hash, &st->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(seg_lock);
}

