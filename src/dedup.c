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

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "groups.h"
#include "segment.h"
#include "sql.h"
#include "store.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"

static BrokerStmt find_key = {
	"SELECT d.id, d.enqueued_at FROM broker.dedup_%d d"
	" WHERE d.queue_id " OP("=") " $1 AND d.dedup_key " OP("=") " $2"
	"   AND d.enqueued_at " OP(">") " $3",
	3, {INT4OID, TEXTOID, TIMESTAMPTZOID}, BROKER_STMT_INDEX, {NULL}
};

/*
 * Record a key in the table that takes new keys, unless that table has it
 * within the window ($5: the window's start): then nothing is returned.  A
 * key seen before, whose window has passed, is recorded anew.
 */
static BrokerStmt claim_key = {
	"INSERT INTO broker.dedup_%d AS d (queue_id, dedup_key, id, enqueued_at)"
	" VALUES ($1, $2, $3, $4)"
	" ON CONFLICT (queue_id, dedup_key)"
	" DO UPDATE SET id = EXCLUDED.id, enqueued_at = EXCLUDED.enqueued_at"
	"   WHERE d.enqueued_at " OP("<=") " $5"
	" RETURNING d.id",
	5, {INT4OID, TEXTOID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID}, 0, {NULL}
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

/* The id a table has for the key within the window, or 0. */
static int64
find_in(int table, int32 queue_id, text *key, TimestampTz since)
{
	Datum		values[3];
	bool		isnull;
	int			rc;

	values[0] = Int32GetDatum(queue_id);
	values[1] = PointerGetDatum(key);
	values[2] = TimestampTzGetDatum(since);
	rc = BrokerStmtExecuteLatest(&find_key, table, values, NULL, 1);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "looking up a dedup key");
	if (SPI_processed == 0)
		return 0;
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The queue accepts a message with this key (whose lock is held): if it
 * accepted one with the key after "since" (the start of the window),
 * returns that message's id; else records the key with the new message's
 * id and enqueue time, and returns 0.  One statement when the other table
 * is empty: the insert into the current table finds a key there itself.
 */
int64
BrokerStoreDedupClaim(int32 queue_id, text *key, int64 id,
					  TimestampTz enqueued_at, TimestampTz since)
{
	BrokerTablePair dt;
	Datum		values[5];
	int64		found;
	int			rc;

	BrokerPairGet(BrokerSegmentState(), BROKER_PAIR_DEDUP, &dt);

	/* An emptied table holds nothing within any window. */
	if (!dt.other_empty)
	{
		found = find_in((dt.cur + 1) % BROKER_PAIR_TABLES, queue_id, key, since);
		if (found != 0)
			return found;
	}

	values[0] = Int32GetDatum(queue_id);
	values[1] = PointerGetDatum(key);
	values[2] = Int64GetDatum(id);
	values[3] = TimestampTzGetDatum(enqueued_at);
	values[4] = TimestampTzGetDatum(since);
	rc = BrokerStmtExecuteLatest(&claim_key, dt.cur, values, NULL, 0);
	BrokerStmtCheck(rc, SPI_OK_INSERT_RETURNING, "recording a dedup key");
	if (SPI_processed == 1)
		return 0;
	found = find_in(dt.cur, queue_id, key, since);
	if (found == 0)
		elog(ERROR, "broker: dedup key of queue %d neither recorded nor found", queue_id);
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
