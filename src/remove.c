/*-------------------------------------------------------------------------
 *
 * remove.c
 *	  The message store's statements that take messages out or change
 *	  their lease: delete (by receipt, by id, many, claimed), lease
 *	  updates, expiry, purge.
 *
 * A message that leaves the queue while it is the head of its ordered
 * group hands the group on to the next message (groups.c): every delete
 * here returns the queue id and the group key of what it removed, and the
 * groups whose head left are handed on before the call returns, their
 * locks taken in stripe order first (groups.c: so two transactions never
 * take group locks in opposite orders).  A message waiting behind its group's head (negated queue
 * id) can be deleted by id, expired or purged like any other; it was never
 * claimable, so nothing follows.
 *
 * Expiry takes rows FOR UPDATE SKIP LOCKED and never waits: the messages
 * of ordered groups are expired one by one, each only if its group's lock
 * can be had at once (else the next round does it), so that a head that
 * expires hands its group on under the same rule as any other removal.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "storage/lmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "groups.h"
#include "segment.h"
#include "sql.h"
#include "store.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"
#define SEG "broker.messages_%d"
#define PERSEG BROKER_STMT_INDEX

/* The queue's rows: claimable ones ($1) and those waiting in groups (-$1). */
#define EITHER(col) col " " OP("=") " ANY (ARRAY[$1, " OP("-") " $1])"

static BrokerStmt delete_tids = {
	"DELETE FROM " SEG " m WHERE m.ctid " OP("=") " ANY ($1)",
	1, {TIDARRAYOID}, PERSEG, {NULL}
};

/*
 * Deletes return the queue id and group key (is it a group's head?), and,
 * in their _full forms for queues that keep records, what the record needs.
 */
#define RETURN_KEY		" RETURNING m.queue_id, m.group_key, m.id"
#define RETURN_FULL \
	RETURN_KEY ", m.delivery_count, m.enqueued_at, m.vt, m.payload, m.headers," \
	" m.priority"
#define DELETE_ONE \
	"DELETE FROM " SEG " m WHERE " EITHER("m.queue_id") " AND m.id " OP("=") " $2"
#define DELETE_RECEIPT \
	"DELETE FROM " SEG " m WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " $2" \
	"   AND m.receipt " OP("=") " $3"
#define DELETE_MANY \
	"DELETE FROM " SEG " m WHERE " EITHER("m.queue_id") " AND m.id " OP("=") " ANY ($2)"

static BrokerStmt delete_one = {
	DELETE_ONE RETURN_KEY, 2, {INT4OID, INT8OID}, PERSEG, {NULL}
};

static BrokerStmt delete_one_full = {
	DELETE_ONE RETURN_FULL, 2, {INT4OID, INT8OID}, PERSEG, {NULL}
};

static BrokerStmt delete_receipt = {
	DELETE_RECEIPT RETURN_KEY, 3, {INT4OID, INT8OID, INT8OID}, PERSEG, {NULL}
};

static BrokerStmt delete_receipt_full = {
	DELETE_RECEIPT RETURN_FULL, 3, {INT4OID, INT8OID, INT8OID}, PERSEG, {NULL}
};

static BrokerStmt delete_many = {
	DELETE_MANY RETURN_KEY, 2, {INT4OID, INT8ARRAYOID}, PERSEG, {NULL}
};

static BrokerStmt delete_many_full = {
	DELETE_MANY RETURN_FULL, 2, {INT4OID, INT8ARRAYOID}, PERSEG, {NULL}
};

/* Rows this transaction holds, by where they are (its pending leases). */
static BrokerStmt delete_held = {
	"DELETE FROM " SEG " m WHERE m.ctid " OP("=") " ANY ($1)" RETURN_KEY,
	1, {TIDARRAYOID}, PERSEG, {NULL}
};

static BrokerStmt delete_held_full = {
	"DELETE FROM " SEG " m WHERE m.ctid " OP("=") " ANY ($1)" RETURN_FULL,
	1, {TIDARRAYOID}, PERSEG, {NULL}
};

static BrokerStmt release_vt = {
	"UPDATE " SEG " m SET vt = $4, receipt = NULL"
	" WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " $2"
	"   AND m.receipt " OP("=") " $3 RETURNING m.vt",
	4, {INT4OID, INT8OID, INT8OID, TIMESTAMPTZOID}, PERSEG, {NULL}
};

static BrokerStmt extend_vt = {
	"UPDATE " SEG " m SET vt = $4"
	" WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " $2"
	"   AND m.receipt " OP("=") " $3 RETURNING m.vt",
	4, {INT4OID, INT8OID, INT8OID, TIMESTAMPTZOID}, PERSEG, {NULL}
};

static BrokerStmt purge = {
	"DELETE FROM " SEG " m WHERE m.queue_id " OP("=") " $1 AND m.group_key IS NULL",
	1, {INT4OID}, PERSEG, {NULL}
};

/* Grouped messages: the heads' groups are handed on (see BrokerStorePurge). */
static BrokerStmt purge_grouped = {
	"DELETE FROM " SEG " m WHERE " EITHER("m.queue_id") " AND m.group_key IS NOT NULL"
	" RETURNING m.queue_id, m.group_key",
	1, {INT4OID}, PERSEG, {NULL}
};

/*
 * Expiry of messages outside ordered groups, of every queue and of one.
 * Unlike the others these are planned at each call: a generic plan made
 * while a segment is empty would scan the whole segment for as long as it
 * lives, while a custom plan sees the table's size and the cut-off and
 * picks the expiry index.  Rows other transactions hold are skipped, so
 * the reaper never waits on a consumer.  The same statement writes the
 * records of the queues that keep them (records.c): variant = segment + 4
 * * records table.
 */
#define EXPIRE_RECORDS(src) \
	" r AS (INSERT INTO broker.records_%r" \
	"   (queue_id, id, state, delivery_count, enqueued_at, visible_at," \
	"    finished_at, payload, headers)" \
	"   SELECT q.queue_id, d.id, 'expired', d.delivery_count, d.enqueued_at," \
	"          d.vt, d.expires_at, d.payload, d.headers" \
	"     FROM " src " d JOIN broker.queue_defs q" \
	"       ON q.queue_id " OP("=") " pg_catalog.abs(d.queue_id)" \
	"    WHERE q.retention IS NOT NULL)"

#define EXPIRE_SQL(cond) \
	"WITH d AS (DELETE FROM " SEG " m" \
	" WHERE m.ctid " OP("=") " ANY (ARRAY(" \
	"   SELECT x.ctid FROM " SEG " x" \
	"    WHERE " cond "x.expires_at " OP("<=") " $1 AND x.group_key IS NULL" \
	"    ORDER BY x.expires_at LIMIT $2 FOR UPDATE SKIP LOCKED))" \
	" RETURNING m.*)," EXPIRE_RECORDS("d") \
	" SELECT d.queue_id FROM d"

static BrokerStmt expire_all = {
	EXPIRE_SQL(""), 2, {TIMESTAMPTZOID, INT8OID}, BROKER_STMT_CUSTOM, {NULL}
};

static BrokerStmt expire_queue = {
	EXPIRE_SQL("x.queue_id " OP("=") " $3 AND "), 3,
	{TIMESTAMPTZOID, INT8OID, INT4OID}, BROKER_STMT_CUSTOM, {NULL}
};

/* Expired messages of ordered groups: candidates, then one at a time. */
#define EXPIRED_GROUPED_SQL(cond) \
	"SELECT x.ctid, x.queue_id, x.group_key FROM " SEG " x" \
	" WHERE " cond "x.expires_at " OP("<=") " $1 AND x.group_key IS NOT NULL" \
	" ORDER BY x.expires_at LIMIT $2"

static BrokerStmt expired_grouped_all = {
	EXPIRED_GROUPED_SQL(""), 2, {TIMESTAMPTZOID, INT8OID},
	BROKER_STMT_CUSTOM, {NULL}
};

static BrokerStmt expired_grouped_queue = {
	EXPIRED_GROUPED_SQL("x.queue_id " OP("=") " ANY (ARRAY[$3, " OP("-") " $3]) AND "),
	3, {TIMESTAMPTZOID, INT8OID, INT4OID}, BROKER_STMT_CUSTOM, {NULL}
};

static BrokerStmt expire_grouped_one = {
	"WITH d AS (DELETE FROM " SEG " m"
	" WHERE m.ctid " OP("=") " ANY (ARRAY("
	"   SELECT x.ctid FROM " SEG " x WHERE x.ctid " OP("=") " $1"
	"      AND x.expires_at " OP("<=") " $2 FOR UPDATE SKIP LOCKED))"
	" RETURNING m.*)," EXPIRE_RECORDS("d")
	" SELECT d.queue_id FROM d",
	2, {TIDOID, TIMESTAMPTZOID}, PERSEG, {NULL}
};

/* Groups whose head left, collected while deleting, handed on at the end. */
typedef struct LeftHeads
{
	int32		queue_id;
	text	  **keys;
	int			n;
	int			cap;
} LeftHeads;

static void
left_init(LeftHeads *l, int32 queue_id)
{
	l->queue_id = queue_id;
	l->keys = NULL;
	l->n = 0;
	l->cap = 0;
}

/* Note a removed row: if it was a group's head, its group moves on. */
static void
left_note(LeftHeads *l, int32 row_queue_id, Datum key, bool key_null)
{
	if (key_null || row_queue_id < 0)
		return;
	if (l->n == l->cap)
	{
		l->cap = l->cap == 0 ? 8 : l->cap * 2;
		l->keys = l->keys == NULL ? palloc(sizeof(text *) * l->cap) :
			repalloc(l->keys, sizeof(text *) * l->cap);
	}
	/* out of the statement's tuple table, which the next one may replace */
	l->keys[l->n++] = DatumGetTextPCopy(key);
}

/* Hand on every group whose head left (groups.c: without a deadlock). */
static void
left_finish(LeftHeads *l)
{
	int			k = 0;

	if (l->n == 0)
		return;
	qsort(l->keys, l->n, sizeof(text *), BrokerCompareKeyPtrs);
	for (int i = 0; i < l->n; i++)
	{
		if (i > 0 && BrokerCompareKeys(l->keys[i - 1], l->keys[i]) == 0)
			continue;
		l->keys[k++] = l->keys[i];
	}
	BrokerGroupsHandOn(l->queue_id, l->keys, k);
}

/* Build a tid[] of the rows (where they are: refs) that are in one part. */
static ArrayType *
tids_of_part(const BrokerRowRef *refs, int n, int part, int *count)
{
	Datum	   *tids = palloc(sizeof(Datum) * Max(n, 1));
	int			k = 0;

	for (int i = 0; i < n; i++)
	{
		if (refs[i].part == part)
			tids[k++] = PointerGetDatum(&refs[i].tid);
	}
	*count = k;
	return construct_array(tids, k, TIDOID, sizeof(ItemPointerData), false,
						   TYPALIGN_SHORT);
}

/*
 * Delete claimed rows (locked by this transaction); the groups of those
 * that were heads move on.
 */
void
BrokerStoreDeleteClaimed(int32 queue_id, const BrokerClaimed *rows, int n)
{
	LeftHeads	left;
	BrokerRowRef *refs = palloc(sizeof(BrokerRowRef) * Max(n, 1));

	for (int i = 0; i < n; i++)
		refs[i] = rows[i].ref;
	left_init(&left, queue_id);
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		int			k;
		Datum		arg[1];
		int			rc;

		arg[0] = PointerGetDatum(tids_of_part(refs, n, seg, &k));
		if (k == 0)
			continue;
		rc = BrokerStmtExecute(&delete_tids, seg, arg, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_DELETE, "deleting claimed messages");
	}
	for (int i = 0; i < n; i++)
	{
		if (rows[i].group_key != NULL)
			left_note(&left, queue_id, PointerGetDatum(rows[i].group_key), false);
	}
	left_finish(&left);
}

/* What a _full delete returned for row i (RETURN_FULL's columns). */
static void
removed_from(HeapTuple tup, TupleDesc desc, BrokerRemoved *r)
{
	bool		isnull;
	Datum		d;

	r->id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	r->delivery_count = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	r->enqueued_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	r->vt = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
	r->payload = SPI_getbinval(tup, desc, 7, &isnull);
	d = SPI_getbinval(tup, desc, 8, &isnull);
	r->headers = isnull ? NULL : DatumGetJsonbP(d);
	r->priority = DatumGetInt16(SPI_getbinval(tup, desc, 9, &isnull));
}

/*
 * Delete one message, only with that receipt if has_receipt; "where" (or
 * NULL) says where a row this transaction claimed is.  True if deleted;
 * *removed (if not NULL) gets what it was, for its record.
 */
bool
BrokerStoreDelete(int32 queue_id, int64 id, bool has_receipt, int64 receipt,
				  const BrokerRowRef *where, BrokerRemoved *removed)
{
	int			segs[BROKER_SEGMENTS];
	int			nsegs;
	Datum		values[3];
	BrokerStmt *stmt;

	if (where != NULL)
	{
		segs[0] = where->part;
		nsegs = 1;
	}
	else
		nsegs = BrokerSegmentLookupOrder(id, segs);

	if (has_receipt)
		stmt = removed ? &delete_receipt_full : &delete_receipt;
	else
		stmt = removed ? &delete_one_full : &delete_one;
	values[0] = Int32GetDatum(queue_id);
	values[1] = Int64GetDatum(id);
	values[2] = Int64GetDatum(receipt);
	for (int i = 0; i < nsegs; i++)
	{
		int			rc = BrokerStmtExecute(stmt, segs[i], values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_DELETE_RETURNING, "delete");
		if (SPI_processed > 0)
		{
			LeftHeads	left;
			bool		isnull;
			bool		key_null;
			HeapTuple	tup = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			int32		row_queue = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
			Datum		key = SPI_getbinval(tup, desc, 2, &key_null);

			if (removed)
				removed_from(tup, desc, removed);
			left_init(&left, queue_id);
			left_note(&left, row_queue, key, key_null);
			left_finish(&left);
			return true;
		}
	}
	return false;
}

/* What BrokerStoreDeleteMany collects of the rows its statements deleted. */
typedef struct DeletedRows
{
	int			n;
	int			cap;
	int64	   *ids;
	BrokerRemoved *removed;		/* NULL: not asked for */
	LeftHeads	left;
} DeletedRows;

/* Add the rows the last DELETE ... RETURNING returned. */
static void
collect_deleted(DeletedRows *d)
{
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		bool		key_null;
		Datum		key;

		if (d->n == d->cap)
		{
			d->cap *= 2;
			d->ids = repalloc(d->ids, sizeof(int64) * d->cap);
			if (d->removed)
				d->removed = repalloc(d->removed, sizeof(BrokerRemoved) * d->cap);
		}
		d->ids[d->n] = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		if (d->removed)
			removed_from(tup, desc, &d->removed[d->n]);
		d->n++;
		key = SPI_getbinval(tup, desc, 2, &key_null);
		left_note(&d->left, DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)),
				  key, key_null);
	}
}

/*
 * Delete messages of a queue: the rows this transaction holds (held: where
 * its pending leases say they are, nheld of them) and those with the ids in
 * "ids" (NULL: none; every segment is tried, drained ones are only a hint,
 * segment.c).  Returns how many were deleted, their ids in *deleted, and
 * (removed not NULL) what they were in *removed.  Deleting held rows by
 * where they are spares an index descent per id and segment: the usual
 * "dequeue n, then delete them" transaction names only held rows.
 */
int
BrokerStoreDeleteMany(int32 queue_id, ArrayType *ids, const BrokerRowRef *held,
					  int nheld, int64 **deleted, BrokerRemoved **removed)
{
	DeletedRows d;

	d.n = 0;
	d.cap = Max(nheld, 16);
	d.ids = palloc(sizeof(int64) * d.cap);
	d.removed = removed ? palloc(sizeof(BrokerRemoved) * d.cap) : NULL;
	left_init(&d.left, queue_id);
	for (int seg = 0; seg < BROKER_SEGMENTS && nheld > 0; seg++)
	{
		int			k;
		Datum		values[1];
		int			rc;

		values[0] = PointerGetDatum(tids_of_part(held, nheld, seg, &k));
		if (k == 0)
			continue;
		rc = BrokerStmtExecute(removed ? &delete_held_full : &delete_held,
							   seg, values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_DELETE_RETURNING, "delete");
		collect_deleted(&d);
	}
	for (int seg = 0; seg < BROKER_SEGMENTS && ids != NULL; seg++)
	{
		Datum		values[2];
		int			rc;

		values[0] = Int32GetDatum(queue_id);
		values[1] = PointerGetDatum(ids);
		rc = BrokerStmtExecute(removed ? &delete_many_full : &delete_many,
							   seg, values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_DELETE_RETURNING, "delete");
		collect_deleted(&d);
	}
	left_finish(&d.left);
	*deleted = d.ids;
	if (removed)
		*removed = d.removed;
	return d.n;
}

/*
 * Set a leased message's visibility time if the receipt is its current
 * one: extend the lease, or give it back (release: receipt cleared).  True
 * if a row was changed; *vt_out gets the new time.  A released head stays
 * its group's head: it is the group's next delivery.
 */
bool
BrokerStoreSetVt(int32 queue_id, int64 id, int64 receipt, TimestampTz vt,
				 bool release, TimestampTz *vt_out)
{
	int			segs[BROKER_SEGMENTS];
	int			nsegs = BrokerSegmentLookupOrder(id, segs);
	Datum		values[4];

	values[0] = Int32GetDatum(queue_id);
	values[1] = Int64GetDatum(id);
	values[2] = Int64GetDatum(receipt);
	values[3] = TimestampTzGetDatum(vt);
	for (int i = 0; i < nsegs; i++)
	{
		int			rc = BrokerStmtExecute(release ? &release_vt : &extend_vt,
										   segs[i], values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_UPDATE_RETURNING, "lease update");
		if (SPI_processed > 0)
		{
			bool		isnull;

			if (vt_out)
				*vt_out = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
															SPI_tuptable->tupdesc,
															1, &isnull));
			return true;
		}
	}
	return false;
}

/* qsort comparator of int32. */
static int
cmp_int32(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/* Count removed rows per queue: sort the queue ids, count the runs. */
static void
count_runs(int32 *ids, uint64 n, BrokerExpiredFn counted)
{
	qsort(ids, n, sizeof(int32), cmp_int32);
	for (uint64 i = 0, start = 0; i <= n; i++)
	{
		if (i == n || ids[i] != ids[start])
		{
			counted(ids[start], (int64) (i - start));
			start = i;
		}
	}
}

/*
 * Expire up to "limit" messages of ordered groups in one segment, each
 * under its group's lock if it can be had at once; returns how many.
 */
static uint64
expire_grouped(int seg, int32 queue_id, TimestampTz now, int limit,
			   BrokerExpiredFn counted)
{
	Datum		values[3];
	int			rc;
	uint64		ncand;
	ItemPointerData *tids;
	int32	   *queues;
	text	  **keys;
	int32	   *done;
	uint64		n = 0;
	int64		more = 0;		/* expired ones met while promoting */
	int			rec = BrokerStoreRecordTable(NULL);

	values[0] = TimestampTzGetDatum(now);
	values[1] = Int64GetDatum((int64) limit);
	values[2] = Int32GetDatum(queue_id);
	rc = BrokerStmtExecute(queue_id > 0 ? &expired_grouped_queue : &expired_grouped_all,
						   seg, values, NULL, 0);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "reaping");
	ncand = SPI_processed;
	if (ncand == 0)
		return 0;
	tids = palloc(sizeof(ItemPointerData) * ncand);
	queues = palloc(sizeof(int32) * ncand);
	keys = palloc(sizeof(text *) * ncand);
	done = palloc(sizeof(int32) * ncand);
	for (uint64 i = 0; i < ncand; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		tids[i] = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 1, &isnull));
		queues[i] = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		keys[i] = DatumGetTextPCopy(SPI_getbinval(tup, desc, 3, &isnull));
	}
	for (uint64 i = 0; i < ncand; i++)
	{
		int32		q = queues[i] < 0 ? -queues[i] : queues[i];
		Datum		del[2];

		CHECK_FOR_INTERRUPTS();
		if (!BrokerGroupLock(q, keys[i], false))
			continue;			/* a producer or consumer has the group: later */
		del[0] = PointerGetDatum(&tids[i]);
		del[1] = TimestampTzGetDatum(now);
		rc = BrokerStmtExecute(&expire_grouped_one, seg + 4 * rec, del, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_SELECT, "reaping");
		if (SPI_processed == 0)
			continue;			/* taken, or gone, meanwhile */
		done[n++] = q;
		if (queues[i] > 0)
			(void) BrokerGroupPromote(q, keys[i], &more);
	}
	if (n > 0)
		count_runs(done, n, counted);
	return n + (uint64) more;
}

/*
 * Delete up to "limit" messages per segment that have expired at "now" (of
 * one queue if queue_id > 0); "counted" gets how many per queue.  Returns
 * how many in all.
 */
uint64
BrokerStoreExpire(int32 queue_id, TimestampTz now, int limit,
				  BrokerExpiredFn counted)
{
	int			segs[BROKER_SEGMENTS];
	int			nsegs = BrokerSegmentScanOrder(segs);
	uint64		total = 0;
	Datum		values[3];
	int			rec = BrokerStoreRecordTable(NULL);

	values[0] = TimestampTzGetDatum(now);
	values[1] = Int64GetDatum((int64) limit);
	values[2] = Int32GetDatum(queue_id);
	for (int s = 0; s < nsegs; s++)
	{
		uint64		n;
		int32	   *ids;
		int			rc;

		CHECK_FOR_INTERRUPTS();
		rc = BrokerStmtExecute(queue_id > 0 ? &expire_queue : &expire_all,
							   segs[s] + 4 * rec, values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_SELECT, "reaping");
		n = SPI_processed;
		if (n > 0)
		{
			ids = palloc(n * sizeof(int32));
			for (uint64 i = 0; i < n; i++)
			{
				bool		isnull;

				ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1, &isnull));
			}
			count_runs(ids, n, counted);
			pfree(ids);
			total += n;
		}
		total += expire_grouped(segs[s], queue_id, now, limit, counted);
	}
	return total;
}

/*
 * Delete every message of a queue, in every segment; returns how many.  A
 * producer may be adding a message behind a head this removes: the groups
 * of the removed heads are handed on, which waits for such a producer and
 * promotes its message.
 *
 * Read with the latest snapshot, not the transaction's: the caller holds
 * the queue's lock, so every producer that added to the queue has ended,
 * and under REPEATABLE READ a snapshot taken before one of them committed
 * would not see its messages and leave them behind (of a dropped queue:
 * for ever).  The same holds for the keys, records, subscriptions and
 * grants a drop forgets.
 */
uint64
BrokerStorePurge(int32 queue_id)
{
	Datum		values[1];
	uint64		n = 0;
	LeftHeads	left;

	/*
	 * No segment maintenance may move a message of the queue from a segment
	 * not yet purged into one already purged: hold a lock that conflicts
	 * with the maintainers' until the transaction ends (groups.c).
	 */
	LockRelationOid(BrokerRelid("segments"), RowShareLock);
	left_init(&left, queue_id);
	values[0] = Int32GetDatum(queue_id);
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		int			rc = BrokerStmtExecuteLatest(&purge, seg, values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_DELETE, "deleting messages");
		n += SPI_processed;
		CHECK_FOR_INTERRUPTS();
		rc = BrokerStmtExecuteLatest(&purge_grouped, seg, values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_DELETE_RETURNING, "deleting messages");
		n += SPI_processed;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			bool		key_null;
			Datum		key = SPI_getbinval(SPI_tuptable->vals[i],
											SPI_tuptable->tupdesc, 2, &key_null);

			left_note(&left, DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc,
														 1, &isnull)),
					  key, key_null);
		}
	}
	left_finish(&left);
	return n;
}
