/*-------------------------------------------------------------------------
 *
 * dedup.c
 *	  Inside the message store: the deduplication keys a queue accepted.
 *
 * A key a queue accepted is a row (queue, key, id of the message it came
 * with, when) in one of two tables, broker.dedup_0 and _1.  One takes new
 * keys; the other only answers lookups until every key in it is older
 * than the longest dedup_window of the installation, and is then emptied
 * with TRUNCATE by maintenance (rotate.c), which gives its space back
 * whatever snapshot a session holds; after that the two swap.  A key is
 * looked up in both, and counts only within its queue's window from the
 * enqueue that recorded it.
 *
 * Waiting for an undecided duplicate: the producer takes a lock on (queue,
 * stripe of the key, groups.c) before it looks, held to the end of its transaction,
 * so a second producer of the same key waits for the first to commit or
 * roll back, as a unique index would make it wait; it then looks with the
 * latest snapshot (under REPEATABLE READ too), and finds the first one's
 * key, or nothing.  A batch takes its keys' locks in stripe order, so two
 * batches never deadlock on them.
 *
 * The enqueue time of a key is the producer's clock read before it looks
 * at which table is current: a key recorded in a table that maintenance
 * has just stopped is older than the moment it stopped, so the truncation
 * rule (stopped + longest window < now) holds for it too.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "groups.h"
#include "segment.h"
#include "sql.h"
#include "store.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"

/*
 * A key seen before whose window has passed is recorded anew: the row of
 * the table that takes new keys gets the new message's id and time.
 */
static BrokerStmt renew_key = {
	"UPDATE broker.dedup_%d d SET id = $3, enqueued_at = $4"
	" WHERE d.queue_id " OP("=") " $1 AND d.dedup_key " OP("=") " $2",
	4, {INT4OID, TEXTOID, INT8OID, TIMESTAMPTZOID}, BROKER_STMT_INDEX, {NULL}
};

static BrokerStmt forget_keys = {
	"DELETE FROM broker.dedup_%d d WHERE d.queue_id " OP("=") " $1",
	1, {INT4OID}, 0, {NULL}
};

/* Lock the keys of one enqueue (or batch) for this transaction. */
void
BrokerStoreDedupLock(int32 queue_id, text **keys, int n)
{
	BrokerDedupLockMany(queue_id, keys, n);
}

/*
 * Keys are looked up and recorded without a statement: one probe of a
 * table's primary key index, and a heap insert with its index entry, as
 * PostgreSQL's own catalogs are written.  What a statement would add is a
 * parse-free but still full executor start per call, and for the upsert
 * it replaced, a speculative insertion (an extra WAL record per key).  The
 * key's lock (held) keeps any other producer of the key out, so nothing
 * can come between the probe and the insert; the unique index still
 * checks.  The tables are the install script's: four columns in this
 * order, heap, no trigger.
 */
enum
{
	KEY_QUEUE_ID = 1, KEY_DEDUP_KEY, KEY_ID, KEY_ENQUEUED_AT, KEY_NATTS = 4
};

static Relation
open_keys(int table, LOCKMODE mode, Relation *index)
{
	char		name[NAMEDATALEN];
	Relation	rel;
	TupleDesc	desc;
	Oid			pk;

	snprintf(name, sizeof(name), "dedup_%d", table);
	rel = table_open(BrokerRelid(name), mode);
	desc = RelationGetDescr(rel);
	pk = RelationGetPrimaryKeyIndex(rel);
	if (desc->natts != KEY_NATTS || rel->rd_rel->relam != HEAP_TABLE_AM_OID ||
		!OidIsValid(pk) ||
		strcmp(NameStr(TupleDescAttr(desc, KEY_DEDUP_KEY - 1)->attname), "dedup_key") != 0 ||
		strcmp(NameStr(TupleDescAttr(desc, KEY_ENQUEUED_AT - 1)->attname), "enqueued_at") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("broker's table %s is not as the extension made it", name),
				 errhint("Reinstall the extension: DROP EXTENSION broker; CREATE EXTENSION broker.")));
	*index = index_open(pk, mode);
	return rel;
}

/*
 * The row a table has for the key, seen with the snapshot: true and its
 * id and enqueue time, or false.
 */
static bool
probe(Relation rel, Relation index, Snapshot snapshot, int32 queue_id,
	  text *key, int64 *id, TimestampTz *enqueued_at)
{
	ScanKeyData skey[2];
	IndexScanDesc scan;
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	bool		found;

	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(queue_id));
	ScanKeyEntryInitialize(&skey[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   C_COLLATION_OID, F_TEXTEQ, PointerGetDatum(key));
	scan = index_beginscan(rel, index, snapshot, 2, 0);
	index_rescan(scan, skey, 2, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	if (found)
	{
		bool		isnull;

		*id = DatumGetInt64(slot_getattr(slot, KEY_ID, &isnull));
		*enqueued_at = DatumGetTimestampTz(slot_getattr(slot, KEY_ENQUEUED_AT, &isnull));
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return found;
}

/* The id a table has for the key within the window (after since), or 0. */
static int64
find_in(int table, Snapshot snapshot, int32 queue_id, text *key,
		TimestampTz since)
{
	Relation	index;
	Relation	rel = open_keys(table, AccessShareLock, &index);
	int64		id = 0;
	TimestampTz at;

	if (!probe(rel, index, snapshot, queue_id, key, &id, &at) || at <= since)
		id = 0;
	index_close(index, NoLock);
	table_close(rel, NoLock);
	return id;
}

/* Record a key the table that takes new keys does not have. */
static void
insert_key(Relation rel, Relation index, int32 queue_id, text *key,
		   int64 id, TimestampTz enqueued_at)
{
	Datum		values[KEY_NATTS];
	bool		isnull[KEY_NATTS] = {false, false, false, false};
	HeapTuple	tuple;
	IndexInfo  *info = BuildIndexInfo(index);

	values[KEY_QUEUE_ID - 1] = Int32GetDatum(queue_id);
	values[KEY_DEDUP_KEY - 1] = PointerGetDatum(key);
	values[KEY_ID - 1] = Int64GetDatum(id);
	values[KEY_ENQUEUED_AT - 1] = TimestampTzGetDatum(enqueued_at);
	tuple = heap_form_tuple(RelationGetDescr(rel), values, isnull);
	simple_heap_insert(rel, tuple);
	/* the index's two columns are the table's first two */
	index_insert(index, values, isnull, &tuple->t_self, rel,
				 UNIQUE_CHECK_YES, false, info);
	heap_freetuple(tuple);
	pfree(info);
}

/*
 * The queue accepts a message with this key (whose lock is held): if it
 * accepted one with the key after "since" (the start of the window),
 * returns that message's id; else records the key with the new message's
 * id and enqueue time, and returns 0.
 *
 * It looks with the latest snapshot, after a command counter increment so
 * that a key this transaction recorded earlier in the same statement is
 * seen too (as a statement run through SPI would see it).
 */
int64
BrokerStoreDedupClaim(int32 queue_id, text *key, int64 id,
					  TimestampTz enqueued_at, TimestampTz since)
{
	BrokerTablePair dt;
	Snapshot	snapshot;
	Relation	rel;
	Relation	index;
	int64		found = 0;
	int64		old_id;
	TimestampTz old_at;

	BrokerPairGet(BrokerSegmentState(), BROKER_PAIR_DEDUP, &dt);
	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetLatestSnapshot());

	/* An emptied table holds nothing within any window. */
	if (!dt.other_empty)
		found = find_in((dt.cur + 1) % BROKER_PAIR_TABLES, snapshot, queue_id,
						key, since);
	if (found != 0)
	{
		UnregisterSnapshot(snapshot);
		return found;
	}

	rel = open_keys(dt.cur, RowExclusiveLock, &index);
	if (!probe(rel, index, snapshot, queue_id, key, &old_id, &old_at))
		insert_key(rel, index, queue_id, key, id, enqueued_at);
	else if (old_at > since)
		found = old_id;
	else
	{
		Datum		values[4];
		int			rc;

		values[0] = Int32GetDatum(queue_id);
		values[1] = PointerGetDatum(key);
		values[2] = Int64GetDatum(id);
		values[3] = TimestampTzGetDatum(enqueued_at);
		rc = BrokerStmtExecuteLatest(&renew_key, dt.cur, values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_UPDATE, "recording a dedup key anew");
		if (SPI_processed != 1)
			elog(ERROR, "broker: dedup key of queue %d vanished while held", queue_id);
	}
	index_close(index, NoLock);
	table_close(rel, NoLock);
	UnregisterSnapshot(snapshot);
	return found;
}

/* A queue is dropped: forget its keys, in both tables. */
void
BrokerStoreForgetKeys(int32 queue_id)
{
	Datum		values[1];

	values[0] = Int32GetDatum(queue_id);
	for (int t = 0; t < BROKER_PAIR_TABLES; t++)
	{
		int			rc = BrokerStmtExecuteLatest(&forget_keys, t, values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_DELETE, "forgetting dedup keys");
	}
}
