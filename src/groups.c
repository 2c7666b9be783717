/*-------------------------------------------------------------------------
 *
 * groups.c
 *	  Inside the message store: ordered message groups.
 *
 * Within a queue, the messages that share a group key are delivered one
 * at a time, in id order.  Only one message of a group, its head, is
 * claimable: it has the queue's id in the queue_id column like any
 * message.  The others wait behind it with the queue id negated, a key
 * range no claim ever scans, so a claim never walks past waiting
 * messages however deep the groups are.  When the head leaves the queue
 * (deleted, dead-lettered, dropped after max_deliveries, expired), the
 * group's lowest waiting id becomes the head in the same transaction; a
 * head whose lease runs out or is released stays the head.
 *
 * One lock per group (an advisory-style lock on (queue, hash of the key);
 * keys share BROKER_KEY_STRIPES of them per queue), held to the end of the
 * transaction, orders the two decisions that must
 * not interleave: a producer, under it, looks for the group's head and
 * adds its message as the head or as waiting; whoever removed a head,
 * under it, looks for the next message to promote.  Both looks use the
 * latest snapshot, so a waiting message committed by a producer that held
 * the lock before is always seen, also under REPEATABLE READ.  A promoted
 * message keeps its id, which may be below the low-water mark of its
 * priority: the mark is lowered when the transaction commits (qstate.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "groups.h"
#include "qstate.h"
#include "segment.h"
#include "sql.h"
#include "store.h"
#include "util.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"
#define SEG "broker.messages_%d"

/* field4 of the lock tags of groups and of dedup keys (not pg_advisory's) */
#define LOCK_CLASS_GROUP	0x4247
#define LOCK_CLASS_DEDUP	0x4244

/*
 * Keys share BROKER_KEY_STRIPES locks per queue and class (by hash): a
 * transaction that adds thousands of keys (a batch, a loop) holds at most
 * that many locks, well within the lock table, at the price of waiting,
 * now and then, for a transaction that holds another key of the same
 * stripe.
 */
#define BROKER_KEY_STRIPES	256

/* A message of the group with the queue's id: the head. */
static BrokerStmt group_head = {
	"SELECT 1 FROM " SEG " m WHERE m.queue_id " OP("=") " $1"
	" AND m.group_key " OP("=") " $2 LIMIT 1",
	2, {INT4OID, TEXTOID}, BROKER_STMT_INDEX, {NULL}
};

/* The group's first waiting message ($1: the queue id negated). */
static BrokerStmt group_next = {
	"SELECT m.ctid, m.id, m.vt, m.priority, m.expires_at " OP("<=") " $3 FROM " SEG " m"
	" WHERE m.queue_id " OP("=") " $1 AND m.group_key " OP("=") " $2"
	" ORDER BY m.id LIMIT 1",
	3, {INT4OID, TEXTOID, TIMESTAMPTZOID}, BROKER_STMT_INDEX, {NULL}
};

static BrokerStmt group_promote = {
	"UPDATE " SEG " m SET queue_id = $1 WHERE m.ctid " OP("=") " $2",
	2, {INT4OID, TIDOID}, BROKER_STMT_INDEX, {NULL}
};

/*
 * An expired waiting message, removed instead of promoted, with its record
 * if the queue keeps them (records.c; variant = segment + 4 * records table).
 */
static BrokerStmt group_drop_expired = {
	"WITH d AS (DELETE FROM " SEG " m WHERE m.ctid " OP("=") " $1 RETURNING m.*),"
	" r AS (INSERT INTO broker.records_%r"
	"   (queue_id, id, state, delivery_count, enqueued_at, visible_at,"
	"    finished_at, payload, headers)"
	"   SELECT q.queue_id, d.id, 'expired', d.delivery_count, d.enqueued_at,"
	"          d.vt, d.expires_at, d.payload, d.headers"
	"     FROM d JOIN broker.queue_defs q"
	"       ON q.queue_id " OP("=") " pg_catalog.abs(d.queue_id)"
	"    WHERE q.retention IS NOT NULL)"
	" SELECT d.id FROM d",
	1, {TIDOID}, BROKER_STMT_INDEX, {NULL}
};

/*
 * The local transaction that took one of our key locks last: while it is
 * the current one, this transaction holds key locks (or held them in a
 * subtransaction that rolled back: then it only errs on the safe side).
 */
static LocalTransactionId key_locks_lxid = InvalidLocalTransactionId;

static void
note_key_locks(void)
{
	key_locks_lxid = MyProc->lxid;
}

/* True when this transaction has taken any group or dedup key lock. */
static bool
holds_key_locks(void)
{
	return key_locks_lxid != InvalidLocalTransactionId &&
		key_locks_lxid == MyProc->lxid;
}

/* Take (or try) a lock of one of our classes on (queue, stripe of key). */
static bool
key_lock(uint16 class, int32 queue_id, text *key, bool wait)
{
	LOCKTAG		tag;
	uint32		h = DatumGetUInt32(hash_any((const unsigned char *) VARDATA_ANY(key),
											VARSIZE_ANY_EXHDR(key)));

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) queue_id,
						 h % BROKER_KEY_STRIPES, class);
	if (LockAcquire(&tag, ExclusiveLock, false, !wait) == LOCKACQUIRE_NOT_AVAIL)
		return false;
	note_key_locks();
	return true;
}

static int
cmp_uint32(const void *a, const void *b)
{
	uint32		x = *(const uint32 *) a;
	uint32		y = *(const uint32 *) b;

	return (x > y) - (x < y);
}

/*
 * Lock the stripes of many keys (NULL entries skipped) in stripe order:
 * every transaction that takes more than one takes them in this order, so
 * two never wait for each other in a circle.
 */
static void
lock_many(uint16 class, int32 queue_id, text **keys, int n)
{
	uint32	   *stripes = palloc(sizeof(uint32) * Max(n, 1));
	int			k = 0;

	for (int i = 0; i < n; i++)
	{
		if (keys[i] == NULL)
			continue;
		stripes[k++] = DatumGetUInt32(hash_any((const unsigned char *) VARDATA_ANY(keys[i]),
											   VARSIZE_ANY_EXHDR(keys[i]))) % BROKER_KEY_STRIPES;
	}
	qsort(stripes, k, sizeof(uint32), cmp_uint32);
	for (int i = 0; i < k; i++)
	{
		LOCKTAG		tag;

		if (i > 0 && stripes[i] == stripes[i - 1])
			continue;
		CHECK_FOR_INTERRUPTS();
		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) queue_id, stripes[i], class);
		(void) LockAcquire(&tag, ExclusiveLock, false, false);
		note_key_locks();
	}
	pfree(stripes);
}

/* Lock the groups of many keys for this transaction, in stripe order. */
void
BrokerGroupLockMany(int32 queue_id, text **keys, int n)
{
	lock_many(LOCK_CLASS_GROUP, queue_id, keys, n);
}

/* Lock many dedup keys of a queue for this transaction, in stripe order. */
void
BrokerDedupLockMany(int32 queue_id, text **keys, int n)
{
	lock_many(LOCK_CLASS_DEDUP, queue_id, keys, n);
}

/* Lock a group for this transaction (see the file header). */
bool
BrokerGroupLock(int32 queue_id, text *key, bool wait)
{
	return key_lock(LOCK_CLASS_GROUP, queue_id, key, wait);
}

/*
 * The group lookups read the segments one after the other; segment
 * maintenance moves rows between segments (and truncates the one it
 * emptied) in one transaction, and a lookup that ran across such a move
 * could miss a row in both places.  So a lookup holds a lock on
 * broker.segments that conflicts with the maintainers' (RowShare against
 * Exclusive, see rotate.c) from before its snapshot to its last probe:
 * no move begins or commits meanwhile, and one committed before is seen.
 * It is released at once, not held to the transaction's end, so that
 * maintenance (which only tries its lock for 50 ms) is never starved.
 */
static bool promote(int32 queue_id, text *key, int64 *expired);

static void
hold_segments(bool hold)
{
	Oid			relid = BrokerRelid("segments");

	if (hold)
		LockRelationOid(relid, RowShareLock);
	else
		UnlockRelationOid(relid, RowShareLock);
}

/* True when the group has a head (the group's lock is held). */
bool
BrokerGroupHasHead(int32 queue_id, text *key)
{
	Datum		values[2];
	bool		found = false;

	values[0] = Int32GetDatum(queue_id);
	values[1] = PointerGetDatum(key);
	hold_segments(true);
	for (int seg = 0; seg < BROKER_SEGMENTS && !found; seg++)
	{
		int			rc = BrokerStmtExecuteLatest(&group_head, seg, values, NULL, 1);

		BrokerStmtCheck(rc, SPI_OK_SELECT, "looking for a group's head");
		found = SPI_processed > 0;
	}
	hold_segments(false);
	return found;
}

/*
 * The group has no head (it left, or never was): make its first waiting
 * message the head, if it has one.  Waiting messages that have expired on
 * the way are removed and counted as expired (*expired, if not NULL, is
 * increased by how many), so a run of them never holds the group up for
 * more than one call.  The group's lock is held.  Returns whether a
 * message was promoted.
 */
bool
BrokerGroupPromote(int32 queue_id, text *key, int64 *expired)
{
	bool		promoted;

	hold_segments(true);
	promoted = promote(queue_id, key, expired);
	hold_segments(false);
	return promoted;
}

/* BrokerGroupPromote, under the segments' lock. */
static bool
promote(int32 queue_id, text *key, int64 *expired)
{
	TimestampTz now = GetCurrentTimestamp();

	for (;;)
	{
		Datum		values[3];
		int			best = -1;
		ItemPointerData best_tid;
		int64		best_id = 0;
		TimestampTz best_vt = 0;
		int			best_priority = 0;
		bool		best_expired = false;
		Datum		upd[2];
		int			rc;

		CHECK_FOR_INTERRUPTS();
		values[0] = Int32GetDatum(-queue_id);
		values[1] = PointerGetDatum(key);
		values[2] = TimestampTzGetDatum(now);
		for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
		{
			HeapTuple	tup;
			TupleDesc	desc;
			bool		isnull;
			int64		id;

			rc = BrokerStmtExecuteLatest(&group_next, seg, values, NULL, 1);
			BrokerStmtCheck(rc, SPI_OK_SELECT, "looking for a group's next message");
			if (SPI_processed == 0)
				continue;
			tup = SPI_tuptable->vals[0];
			desc = SPI_tuptable->tupdesc;
			id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			if (best >= 0 && id >= best_id)
				continue;
			best = seg;
			best_id = id;
			best_tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 1, &isnull));
			best_vt = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
			best_priority = DatumGetInt16(SPI_getbinval(tup, desc, 4, &isnull));
			best_expired = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull)) && !isnull;
		}
		if (best < 0)
			return false;

		if (best_expired)
		{
			upd[0] = PointerGetDatum(&best_tid);
			rc = BrokerStmtExecuteLatest(&group_drop_expired,
										 best + 4 * BrokerStoreRecordTable(NULL),
										 upd, NULL, 0);
			BrokerStmtCheck(rc, SPI_OK_SELECT, "removing a group's expired message");
			if (SPI_processed == 1)
			{
				if (expired)
					(*expired)++;
				BrokerCount(queue_id, BROKER_COUNT_EXPIRED, 1);
			}
			continue;
		}

		upd[0] = Int32GetDatum(queue_id);
		upd[1] = PointerGetDatum(&best_tid);
		rc = BrokerStmtExecuteLatest(&group_promote, best, upd, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_UPDATE, "promoting a group's next message");
		/* Removed meanwhile (a purge that committed): look again. */
		if (SPI_processed != 1)
			continue;

		/* It is claimable now, with an id that may be below the mark. */
		if (BrokerSharedMemoryReady())
		{
			BrokerQueueState *state = BrokerQueueStateGet(queue_id, true);

			BrokerNotePriority(state, best_priority);
			BrokerNoteMarkBelow(queue_id, best_priority, best_id);
			if (best_vt > now)
				BrokerNoteDue(queue_id, best_vt);
			else
				BrokerCount(queue_id, BROKER_COUNT_READY, 1);
		}
		return true;
	}
}

/*
 * The heads of these groups (keys sorted, no repeats) left the queue in
 * this transaction: lock each group and promote its next message.
 *
 * A remover waits for a group's lock only while its transaction holds no
 * key lock: consumers that remove heads of several groups in one
 * transaction, in separate calls and in any order, would otherwise wait
 * for each other in a circle (keys share lock stripes, so this is not
 * rare).  A group whose lock it cannot have at once is not handed on now:
 * the queue is flagged, and at commit the reaper's next pass (or the
 * group's next producer, which promotes a waiting message when it finds
 * no head) hands it on.  So a remover never waits while holding a key
 * lock, and never takes part in a deadlock.
 */
void
BrokerGroupsHandOn(int32 queue_id, text **keys, int n)
{
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (BrokerGroupLock(queue_id, keys[i], !holds_key_locks()))
			(void) BrokerGroupPromote(queue_id, keys[i], NULL);
		else
			BrokerNoteOrphans(queue_id);
	}
}

/* The keys of a queue's waiting messages, some of them ($1 negated). */
static BrokerStmt group_waiting_keys = {
	"SELECT DISTINCT m.group_key FROM " SEG " m WHERE m.queue_id " OP("=") " $1"
	" LIMIT 1000",
	1, {INT4OID}, BROKER_STMT_INDEX, {NULL}
};

/*
 * The reaper's repair of groups whose head left without a hand-on (see
 * BrokerGroupsHandOn), in the queues flagged for it: every group with
 * waiting messages and no head gets its next message promoted.  Never
 * waits for a lock: a queue with a group it could not lock, or with more
 * groups than one look returns, stays flagged for the next pass.  Only
 * the queue only_queue, if it is not 0.
 * Returns how many groups were handed on.
 */
int64
BrokerGroupsRepair(int32 only_queue)
{
	int32		queues[64];
	int			nq = BrokerTakeOrphanQueues(only_queue, queues, lengthof(queues));
	int64		promoted = 0;

	for (int qi = 0; qi < nq; qi++)
	{
		int32		q = queues[qi];
		Datum		values[1];
		text	  **keys = NULL;
		int			n = 0,
					cap = 0;
		bool		again = false;

		values[0] = Int32GetDatum(-q);
		hold_segments(true);
		for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
		{
			int			rc = BrokerStmtExecuteLatest(&group_waiting_keys, seg, values, NULL, 0);

			BrokerStmtCheck(rc, SPI_OK_SELECT, "looking for orphaned groups");
			if (SPI_processed >= 1000)
				again = true;
			for (uint64 r = 0; r < SPI_processed; r++)
			{
				bool		isnull;
				Datum		k = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
											  1, &isnull);

				if (isnull)
					continue;
				if (n == cap)
				{
					cap = cap == 0 ? 64 : cap * 2;
					keys = keys == NULL ? palloc(sizeof(text *) * cap) :
						repalloc(keys, sizeof(text *) * cap);
				}
				keys[n++] = DatumGetTextPCopy(k);
			}
		}
		hold_segments(false);
		if (n > 1)
			qsort(keys, n, sizeof(text *), BrokerCompareKeyPtrs);
		for (int i = 0; i < n; i++)
		{
			CHECK_FOR_INTERRUPTS();
			if (i > 0 && BrokerCompareKeys(keys[i - 1], keys[i]) == 0)
				continue;
			if (!BrokerGroupLock(q, keys[i], false))
			{
				again = true;	/* a producer or consumer has it: later */
				continue;
			}
			if (!BrokerGroupHasHead(q, keys[i]) &&
				BrokerGroupPromote(q, keys[i], NULL))
				promoted++;
		}
		if (again)
			BrokerNoteOrphans(q);
	}
	return promoted;
}
