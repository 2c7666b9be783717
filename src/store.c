/*-------------------------------------------------------------------------
 *
 * store.c
 *	  The message store's statements: insert, claim, acknowledge, look up,
 *	  expire, purge and count messages, over the segment tables.
 *
 * Layout (sql/broker--0.1.0.sql): the messages of every queue are rows of
 * BROKER_SEGMENTS tables of the same shape, broker.messages_0 .. _3, keyed
 * (queue_id, id); the view broker.messages unites them for reading.  Which
 * segment takes new rows, and which hold none, is segment.c's business;
 * this file runs one statement per segment, in the order segment.c gives.
 *
 * Claiming.  A claim locks up to n rows of a queue from a low-water mark on
 * with FOR UPDATE SKIP LOCKED, oldest segment first, id order within one:
 * concurrent consumers never wait on each other and never take the same
 * row.  It writes nothing: the caller keeps the lease in backend memory
 * (lease.c) and writes it at commit with BrokerStoreWriteLeases, by ctid,
 * unless the transaction deletes the message first.  Rows the caller's own
 * transaction already leased are locked by it, so SKIP LOCKED would return
 * them again: the caller passes their ids to leave out, and that statement
 * is planned at each call so that "<> ALL" is a hash lookup.
 *
 * Plans: every per-segment statement is kept per segment and planned with
 * sequential and bitmap scans off (sql.c, BROKER_STMT_INDEX), so a plan made
 * on an empty segment never turns into a scan of the whole segment later.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "segment.h"
#include "sql.h"
#include "store.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"
#define SEG "broker.messages_%d"
#define PERSEG BROKER_STMT_INDEX

static BrokerStmt insert_one = {
	"INSERT INTO " SEG " (queue_id, id, vt, enqueued_at, expires_at, payload, headers)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7)",
	7, {INT4OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	JSONBOID, JSONBOID}, PERSEG, {NULL}
};

static BrokerStmt insert_batch = {
	"INSERT INTO " SEG " (queue_id, id, vt, enqueued_at, expires_at, payload, headers)"
	" SELECT $1, u.i, $3, $4, $5, u.p, $7"
	"   FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($6)) AS u(i, p)",
	7, {INT4OID, INT8ARRAYOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, JSONBARRAYOID, JSONBOID}, PERSEG, {NULL}
};

#define CLAIM_SELECT \
	"SELECT m.ctid, m.id, m.payload, m.headers, m.enqueued_at," \
	"       m.delivery_count, m.expires_at" \
	"  FROM " SEG " m" \
	" WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2" \
	"   AND m.vt " OP("<=") " $3" \
	"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " $3)"

static BrokerStmt claim = {
	CLAIM_SELECT " ORDER BY m.id LIMIT $4 FOR UPDATE SKIP LOCKED",
	4, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID}, PERSEG, {NULL}
};

static BrokerStmt claim_excluding = {
	CLAIM_SELECT "   AND m.id " OP("<>") " ALL ($5)"
	" ORDER BY m.id LIMIT $4 FOR UPDATE SKIP LOCKED",
	5, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID},
	PERSEG | BROKER_STMT_CUSTOM, {NULL}
};

static BrokerStmt delete_tids = {
	"DELETE FROM " SEG " m WHERE m.ctid " OP("=") " ANY ($1)",
	1, {TIDARRAYOID}, PERSEG, {NULL}
};

static BrokerStmt delete_one = {
	"DELETE FROM " SEG " m WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " $2",
	2, {INT4OID, INT8OID}, PERSEG, {NULL}
};

static BrokerStmt delete_receipt = {
	"DELETE FROM " SEG " m WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " $2"
	"   AND m.receipt " OP("=") " $3",
	3, {INT4OID, INT8OID, INT8OID}, PERSEG, {NULL}
};

static BrokerStmt delete_many = {
	"DELETE FROM " SEG " m WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " ANY ($2)"
	" RETURNING m.id",
	2, {INT4OID, INT8ARRAYOID}, PERSEG, {NULL}
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

static BrokerStmt write_leases = {
	"UPDATE " SEG " m SET vt = u.vt, delivery_count = u.dc, receipt = u.r"
	"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
	"                  pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(t, vt, dc, r)"
	" WHERE m.ctid " OP("=") " u.t",
	4, {TIDARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID, INT8ARRAYOID}, PERSEG, {NULL}
};

static BrokerStmt lowest_id = {
	"SELECT m.id FROM " SEG " m WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
	" ORDER BY m.id LIMIT 1",
	2, {INT4OID, INT8OID}, PERSEG, {NULL}
};

/* When does the next leased or delayed message become deliverable? */
static BrokerStmt next_due = {
	"SELECT pg_catalog.min(m.vt) FROM broker.messages m"
	" WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
	"   AND m.vt " OP(">") " $3"
	"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " m.vt)",
	3, {INT4OID, INT8OID, TIMESTAMPTZOID}, BROKER_STMT_INDEX, {NULL}
};

static BrokerStmt purge = {
	"DELETE FROM " SEG " m WHERE m.queue_id " OP("=") " $1",
	1, {INT4OID}, PERSEG, {NULL}
};

/*
 * Expiry, of every queue and of one.  Unlike the others these are planned
 * at each call: a generic plan made while a segment is empty would scan
 * the whole segment for as long as it lives, while a custom plan sees the
 * table's size and the cut-off and picks the expiry index.  Rows other
 * transactions hold are skipped, so the reaper never waits on a consumer.
 */
#define EXPIRE_SQL(cond) \
	"DELETE FROM " SEG " m" \
	" WHERE m.ctid " OP("=") " ANY (ARRAY(" \
	"   SELECT x.ctid FROM " SEG " x" \
	"    WHERE " cond "x.expires_at " OP("<=") " $1" \
	"    ORDER BY x.expires_at LIMIT $2 FOR UPDATE SKIP LOCKED))" \
	" RETURNING m.queue_id"

static BrokerStmt expire_all = {
	EXPIRE_SQL(""), 2, {TIMESTAMPTZOID, INT8OID}, BROKER_STMT_CUSTOM, {NULL}
};

static BrokerStmt expire_queue = {
	EXPIRE_SQL("x.queue_id " OP("=") " $3 AND "), 3,
	{TIMESTAMPTZOID, INT8OID, INT4OID}, BROKER_STMT_CUSTOM, {NULL}
};

/* Depth by state per queue ($1: one queue or NULL for all, $2: now). */
static BrokerStmt count_by_state = {
	"SELECT q.queue_id, q.name,"
	"  pg_catalog.count(m.id) FILTER (WHERE m.vt " OP("<=") " $2"
	"     AND m.delivery_count " OP("<") " COALESCE(q.max_deliveries, 2147483647)),"
	"  pg_catalog.count(m.id) FILTER (WHERE m.vt " OP(">") " $2"
	"     AND m.receipt IS NOT NULL),"
	"  pg_catalog.count(m.id) FILTER (WHERE m.vt " OP(">") " $2"
	"     AND m.receipt IS NULL),"
	"  pg_catalog.count(m.id),"
	"  $2 " OP("-") " pg_catalog.min(m.enqueued_at) FILTER (WHERE m.vt " OP("<=") " $2"
	"     AND m.delivery_count " OP("<") " COALESCE(q.max_deliveries, 2147483647))"
	"  FROM broker.queue_defs q"
	"  LEFT JOIN broker.messages m"
	"    ON m.queue_id " OP("=") " q.queue_id"
	"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " $2)"
	" WHERE q.kind " OP("=") " 'q' AND ($1 IS NULL OR q.queue_id " OP("=") " $1)"
	" GROUP BY q.queue_id, q.name"
	" ORDER BY q.name",
	2, {INT4OID, TIMESTAMPTZOID}, 0, {NULL}
};

/* Store one message, in the current segment. */
void
BrokerStoreInsert(const BrokerNewMessage *m)
{
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			seg = BrokerSegmentCurrent();
	int			rc;

	values[0] = Int32GetDatum(m->queue_id);
	values[1] = Int64GetDatum(m->id);
	values[2] = TimestampTzGetDatum(m->vt);
	values[3] = TimestampTzGetDatum(m->enqueued_at);
	values[4] = TimestampTzGetDatum(m->expires_at);
	nulls[4] = m->has_expiry ? ' ' : 'n';
	values[5] = JsonbPGetDatum(m->payload);
	values[6] = m->headers ? JsonbPGetDatum(m->headers) : (Datum) 0;
	nulls[6] = m->headers ? ' ' : 'n';

	rc = BrokerStmtExecute(&insert_one, seg, values, nulls, 0);
	BrokerStmtCheck(rc, SPI_OK_INSERT, "enqueue");
	BrokerSegmentInserted(seg);
}

/*
 * Store n messages in one statement: the ids and payloads from the arrays,
 * everything else from "common".
 */
void
BrokerStoreInsertBatch(const BrokerNewMessage *common, ArrayType *ids,
					   ArrayType *payloads, int n)
{
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			seg = BrokerSegmentCurrent();
	int			rc;

	values[0] = Int32GetDatum(common->queue_id);
	values[1] = PointerGetDatum(ids);
	values[2] = TimestampTzGetDatum(common->vt);
	values[3] = TimestampTzGetDatum(common->enqueued_at);
	values[4] = TimestampTzGetDatum(common->expires_at);
	nulls[4] = common->has_expiry ? ' ' : 'n';
	values[5] = PointerGetDatum(payloads);
	values[6] = common->headers ? JsonbPGetDatum(common->headers) : (Datum) 0;
	nulls[6] = common->headers ? ' ' : 'n';

	rc = BrokerStmtExecute(&insert_batch, seg, values, nulls, 0);
	if (rc != SPI_OK_INSERT || SPI_processed != (uint64) n)
		elog(ERROR, "broker: batch enqueue failed: %s", SPI_result_code_string(rc));
	BrokerSegmentInserted(seg);
}

/*
 * Claim up to limit deliverable messages of a queue, from id from_id on,
 * oldest segment first, skipping rows other transactions hold and the ids
 * in "exclude" (this transaction's own leases; NULL: none).  Returns how
 * many, in *rows (allocated in the current memory context).
 */
int
BrokerStoreClaim(int32 queue_id, int64 from_id, TimestampTz now, int limit,
				 ArrayType *exclude, BrokerClaimed **rows)
{
	int			segs[BROKER_SEGMENTS];
	int			nsegs = BrokerSegmentScanOrder(segs);
	BrokerClaimed *out = palloc(sizeof(BrokerClaimed) * limit);
	int			n = 0;

	for (int s = 0; s < nsegs && n < limit; s++)
	{
		Datum		values[5];
		int			rc;

		values[0] = Int32GetDatum(queue_id);
		values[1] = Int64GetDatum(from_id);
		values[2] = TimestampTzGetDatum(now);
		values[3] = Int32GetDatum(limit - n);
		values[4] = PointerGetDatum(exclude);
		rc = BrokerStmtExecute(exclude ? &claim_excluding : &claim, segs[s],
							   values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_SELECT, "dequeue");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			BrokerClaimed *c = &out[n++];
			bool		isnull;

			c->ref.part = segs[s];
			c->ref.tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 1, &isnull));
			c->id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			c->payload = SPI_getbinval(tup, desc, 3, &isnull);
			c->headers = SPI_getbinval(tup, desc, 4, &c->headers_null);
			c->enqueued_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
			c->delivery_count = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
			c->expires_at = SPI_getbinval(tup, desc, 7, &c->expires_null);
		}
	}
	*rows = out;
	return n;
}

/* Build a tid[] of the given rows that are in one part. */
static ArrayType *
tids_of_part(const BrokerRowRef *const *refs, int n, int part, int *count)
{
	Datum	   *tids = palloc(sizeof(Datum) * Max(n, 1));
	int			k = 0;

	for (int i = 0; i < n; i++)
	{
		if (refs[i]->part == part)
			tids[k++] = PointerGetDatum(&refs[i]->tid);
	}
	*count = k;
	return construct_array(tids, k, TIDOID, sizeof(ItemPointerData), false,
						   TYPALIGN_SHORT);
}

/* Delete claimed rows (they are locked by this transaction). */
void
BrokerStoreDeleteClaimed(const BrokerClaimed *rows, int n)
{
	const BrokerRowRef **refs = palloc(sizeof(BrokerRowRef *) * Max(n, 1));

	for (int i = 0; i < n; i++)
		refs[i] = &rows[i].ref;
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
}

/*
 * Delete one message, only with that receipt if has_receipt; "where" (or
 * NULL) says where a row this transaction claimed is.  True if deleted.
 */
bool
BrokerStoreDelete(int32 queue_id, int64 id, bool has_receipt, int64 receipt,
				  const BrokerRowRef *where)
{
	int			segs[BROKER_SEGMENTS];
	int			nsegs;
	Datum		values[3];

	if (where != NULL)
	{
		segs[0] = where->part;
		nsegs = 1;
	}
	else
		nsegs = BrokerSegmentLookupOrder(id, segs);
	values[0] = Int32GetDatum(queue_id);
	values[1] = Int64GetDatum(id);
	values[2] = Int64GetDatum(receipt);
	for (int i = 0; i < nsegs; i++)
	{
		int			rc = BrokerStmtExecute(has_receipt ? &delete_receipt : &delete_one,
										   segs[i], values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_DELETE, "delete");
		if (SPI_processed > 0)
			return true;
	}
	return false;
}

/*
 * Delete the messages of a queue with the given ids; returns how many were
 * deleted, their ids in *deleted.  Every segment is tried: drained ones are
 * only a hint (segment.c).
 */
int
BrokerStoreDeleteMany(int32 queue_id, ArrayType *ids, int64 **deleted)
{
	int			cap = 16;
	int64	   *out = palloc(sizeof(int64) * cap);
	int			n = 0;
	Datum		values[2];

	values[0] = Int32GetDatum(queue_id);
	values[1] = PointerGetDatum(ids);
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		int			rc = BrokerStmtExecute(&delete_many, seg, values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_DELETE_RETURNING, "delete");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;

			if (n == cap)
			{
				cap *= 2;
				out = repalloc(out, sizeof(int64) * cap);
			}
			out[n++] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
												   SPI_tuptable->tupdesc, 1, &isnull));
		}
	}
	*deleted = out;
	return n;
}

/*
 * Set a leased message's visibility time if the receipt is its current
 * one: extend the lease, or give it back (release: receipt cleared).  True
 * if a row was changed; *vt_out gets the new time.
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

/* Write leases into claimed rows: one UPDATE per segment that has some. */
void
BrokerStoreWriteLeases(const BrokerLeaseWrite *leases, int n)
{
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		Datum	   *tids = palloc(sizeof(Datum) * Max(n, 1));
		Datum	   *vts = palloc(sizeof(Datum) * Max(n, 1));
		Datum	   *dcs = palloc(sizeof(Datum) * Max(n, 1));
		Datum	   *rcs = palloc(sizeof(Datum) * Max(n, 1));
		bool	   *rnulls = palloc(sizeof(bool) * Max(n, 1));
		int			k = 0;
		int			dims[1];
		int			lbs[1] = {1};
		Datum		values[4];
		int			rc;

		for (int i = 0; i < n; i++)
		{
			const BrokerLeaseWrite *l = &leases[i];

			if (l->ref.part != seg)
				continue;
			tids[k] = PointerGetDatum(&l->ref.tid);
			vts[k] = TimestampTzGetDatum(l->vt);
			dcs[k] = Int32GetDatum(l->delivery_count);
			rcs[k] = Int64GetDatum(l->receipt);
			rnulls[k] = l->receipt == 0;
			k++;
		}
		if (k == 0)
			continue;
		dims[0] = k;
		values[0] = PointerGetDatum(construct_array(tids, k, TIDOID,
													sizeof(ItemPointerData),
													false, TYPALIGN_SHORT));
		values[1] = PointerGetDatum(construct_array(vts, k, TIMESTAMPTZOID,
													sizeof(TimestampTz),
													FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[2] = PointerGetDatum(construct_array(dcs, k, INT4OID, sizeof(int32),
													true, TYPALIGN_INT));
		values[3] = PointerGetDatum(construct_md_array(rcs, rnulls, 1, dims, lbs,
													   INT8OID, sizeof(int64),
													   FLOAT8PASSBYVAL,
													   TYPALIGN_DOUBLE));
		rc = BrokerStmtExecute(&write_leases, seg, values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_UPDATE, "writing leases");
	}
}

/*
 * The lowest id of a live message of the queue at or above from_id, in
 * every segment (drained ones too, whose hint a row found clears), each
 * probe with its own snapshot; -1 when there is none.
 */
int64
BrokerStoreLowestId(int32 queue_id, int64 from_id)
{
	int64		lowest = -1;
	Datum		values[2];

	values[0] = Int32GetDatum(queue_id);
	values[1] = Int64GetDatum(from_id);
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		int			rc = BrokerStmtExecute(&lowest_id, seg, values, NULL, 1);

		BrokerStmtCheck(rc, SPI_OK_SELECT, "low-water mark probe");
		if (SPI_processed == 1)
		{
			bool		isnull;
			int64		m = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc,
														1, &isnull));

			if (lowest < 0 || m < lowest)
				lowest = m;
			BrokerSegmentFound(seg);
		}
	}
	return lowest;
}

/*
 * The earliest future visibility time (a delay or a lease running out) of
 * the queue's messages from from_id on that will not have expired by then;
 * DT_NOEND when there is none.
 */
TimestampTz
BrokerStoreNextDue(int32 queue_id, int64 from_id, TimestampTz now)
{
	Datum		values[3];
	bool		isnull;
	Datum		d;
	int			rc;

	values[0] = Int32GetDatum(queue_id);
	values[1] = Int64GetDatum(from_id);
	values[2] = TimestampTzGetDatum(now);
	rc = BrokerStmtExecute(&next_due, -1, values, NULL, 1);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "next-due lookup");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? DT_NOEND : DatumGetTimestampTz(d);
}

/* qsort comparator of int32. */
static int
cmp_int32(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
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
							   segs[s], values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_DELETE_RETURNING, "reaping");
		n = SPI_processed;
		if (n == 0)
			continue;
		/* One count per queue: sort the queue ids, count the runs. */
		ids = palloc(n * sizeof(int32));
		for (uint64 i = 0; i < n; i++)
		{
			bool		isnull;

			ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
												 SPI_tuptable->tupdesc, 1, &isnull));
		}
		qsort(ids, n, sizeof(int32), cmp_int32);
		for (uint64 i = 0, start = 0; i <= n; i++)
		{
			if (i == n || ids[i] != ids[start])
			{
				counted(ids[start], (int64) (i - start));
				start = i;
			}
		}
		pfree(ids);
		total += n;
	}
	return total;
}

/* Delete every message of a queue, in every segment; returns how many. */
uint64
BrokerStorePurge(int32 queue_id)
{
	Datum		values[1];
	uint64		n = 0;

	values[0] = Int32GetDatum(queue_id);
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		int			rc = BrokerStmtExecute(&purge, seg, values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_DELETE, "deleting messages");
		n += SPI_processed;
	}
	return n;
}

/*
 * What each queue holds now (queue_id 0: every queue, by name), in
 * *counts; returns how many queues.
 */
int
BrokerStoreCounts(int32 queue_id, TimestampTz now, BrokerQueueCounts **counts)
{
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	BrokerQueueCounts *out;
	int			rc;

	values[0] = Int32GetDatum(queue_id);
	nulls[0] = queue_id > 0 ? ' ' : 'n';
	values[1] = TimestampTzGetDatum(now);
	rc = BrokerStmtExecute(&count_by_state, -1, values, nulls, 0);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "counting messages");
	out = palloc0(sizeof(BrokerQueueCounts) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		BrokerQueueCounts *c = &out[i];
		bool		isnull;
		Datum		d;

		c->queue_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		c->name = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		c->ready = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		c->leased = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
		c->delayed = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
		c->total = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
		d = SPI_getbinval(tup, desc, 7, &isnull);
		c->has_oldest = !isnull;
		if (!isnull)
			c->oldest_ready_age = *DatumGetIntervalP(d);
	}
	*counts = out;
	return (int) SPI_processed;
}
