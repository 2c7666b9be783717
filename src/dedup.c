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
 * hash of the key) before it looks, held to the end of its transaction,
 * so a second producer of the same key waits for the first to commit or
 * roll back, as a unique index would make it wait; it then looks with the
 * latest snapshot (under REPEATABLE READ too), and finds the first one's
 * key, or nothing.  A batch takes its keys' locks in key order, so two
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

/* A key seen before, whose window has passed, is recorded anew. */
static BrokerStmt record_keys = {
	"INSERT INTO broker.dedup_%d AS d (queue_id, dedup_key, id, enqueued_at)"
	" SELECT $1, u.k, u.i, $4"
	"   FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) AS u(k, i)"
	" ON CONFLICT (queue_id, dedup_key)"
	" DO UPDATE SET id = EXCLUDED.id, enqueued_at = EXCLUDED.enqueued_at",
	4, {INT4OID, TEXTARRAYOID, INT8ARRAYOID, TIMESTAMPTZOID}, 0, {NULL}
};

static BrokerStmt forget_keys = {
	"DELETE FROM broker.dedup_%d d WHERE d.queue_id " OP("=") " $1",
	1, {INT4OID}, 0, {NULL}
};

/*
 * Lock the keys of one enqueue (or batch) for this transaction, in key
 * order; keys[] is sorted in place and may hold repeats.
 */
void
BrokerStoreDedupLock(int32 queue_id, text **keys, int n)
{
	qsort(keys, n, sizeof(text *), BrokerCompareKeyPtrs);
	for (int i = 0; i < n; i++)
	{
		if (i > 0 && BrokerCompareKeys(keys[i - 1], keys[i]) == 0)
			continue;
		BrokerDedupKeyLock(queue_id, keys[i]);
	}
}

/*
 * The id of the message the queue accepted with this key after "since"
 * (the start of the window), or 0.  The key's lock is held.
 */
int64
BrokerStoreDedupFind(int32 queue_id, text *key, TimestampTz since)
{
	BrokerDedupTables dt;
	Datum		values[3];
	int64		id = 0;
	TimestampTz newest = DT_NOBEGIN;

	BrokerDedupGet(BrokerSegmentState(), &dt);
	values[0] = Int32GetDatum(queue_id);
	values[1] = PointerGetDatum(key);
	values[2] = TimestampTzGetDatum(since);
	for (int i = 0; i < BROKER_DEDUP_TABLES; i++)
	{
		int			t = (dt.cur + i) % BROKER_DEDUP_TABLES;
		int			rc;

		/* An emptied table holds nothing within any window. */
		if (t != dt.cur && dt.other_empty)
			continue;
		rc = BrokerStmtExecuteLatest(&find_key, t, values, NULL, 1);
		BrokerStmtCheck(rc, SPI_OK_SELECT, "looking up a dedup key");
		if (SPI_processed == 1)
		{
			bool		isnull;
			TimestampTz at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
															   SPI_tuptable->tupdesc,
															   2, &isnull));

			if (at > newest)
			{
				newest = at;
				id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
			}
		}
	}
	return id;
}

/*
 * Record that the queue accepted these keys (distinct, locked) with these
 * messages, at enqueued_at, in the table that takes new keys.
 */
void
BrokerStoreDedupRecord(int32 queue_id, text **keys, const int64 *ids, int n,
					   TimestampTz enqueued_at)
{
	BrokerDedupTables dt;
	Datum	   *kd = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *id = palloc(sizeof(Datum) * Max(n, 1));
	Datum		values[4];
	int			rc;

	if (n == 0)
		return;
	for (int i = 0; i < n; i++)
	{
		kd[i] = PointerGetDatum(keys[i]);
		id[i] = Int64GetDatum(ids[i]);
	}
	BrokerDedupGet(BrokerSegmentState(), &dt);
	values[0] = Int32GetDatum(queue_id);
	values[1] = PointerGetDatum(construct_array(kd, n, TEXTOID, -1, false,
												TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(id, n, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = TimestampTzGetDatum(enqueued_at);
	rc = BrokerStmtExecuteLatest(&record_keys, dt.cur, values, NULL, 0);
	BrokerStmtCheck(rc, SPI_OK_INSERT, "recording dedup keys");
}

/* A queue is dropped: forget its keys, in both tables. */
void
BrokerStoreForgetKeys(int32 queue_id)
{
	Datum		values[1];

	values[0] = Int32GetDatum(queue_id);
	for (int t = 0; t < BROKER_DEDUP_TABLES; t++)
	{
		int			rc = BrokerStmtExecute(&forget_keys, t, values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_DELETE, "forgetting dedup keys");
	}
}
