/*-------------------------------------------------------------------------
 *
 * store.c
 *	  The message store's statements that put messages in and take them:
 *	  insert, claim, lease writes, lowest id, next due, counts.  What
 *	  removes messages is in remove.c.
 *
 * Layout (sql/broker--0.2.0.sql): the messages of every queue are rows of
 * BROKER_SEGMENTS tables of the same shape, broker.messages_0 .. _3, keyed
 * (queue_id, id); the view broker.messages unites them for reading.  Which
 * segment takes new rows, and which hold none, is segment.c's business;
 * this file runs one statement per segment, in the order segment.c gives.
 * A message of an ordered group that waits behind its group's head has the
 * queue id negated (groups.c); a message of a priority above 0 is also in
 * a partial index by (queue, priority, id).
 *
 * Claiming.  A claim locks up to n rows of a queue, highest priority
 * first, from each priority's low-water mark on, with FOR UPDATE SKIP
 * LOCKED, oldest segment first, id order within one: concurrent consumers
 * never wait on each other and never take the same row.  It writes
 * nothing: the caller keeps the lease in backend memory (lease.c) and
 * writes it at commit with BrokerStoreWriteLeases, by ctid, unless the
 * transaction deletes the message first.  Rows the caller's own
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
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "groups.h"
#include "segment.h"
#include "sql.h"
#include "store.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"
#define SEG "broker.messages_%d"
#define PERSEG BROKER_STMT_INDEX

#define INSERT_COLUMNS \
	"INSERT INTO " SEG " (queue_id, id, vt, enqueued_at, expires_at, payload," \
	"                     headers, group_key, priority)"

static BrokerStmt insert_one = {
	INSERT_COLUMNS " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
	9, {INT4OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	JSONBOID, JSONBOID, TEXTOID, INT2OID}, PERSEG, {NULL}
};

static BrokerStmt insert_batch = {
	INSERT_COLUMNS
	" SELECT $1, u.i, $3, $4, $5, u.p, $7, NULL, $8"
	"   FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($6)) AS u(i, p)",
	8, {INT4OID, INT8ARRAYOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, JSONBARRAYOID, JSONBOID, INT2OID}, PERSEG, {NULL}
};

/* A batch with group keys: each row's queue id (head or waiting) and key. */
static BrokerStmt insert_batch_grouped = {
	INSERT_COLUMNS
	" SELECT u.q, u.i, $3, $4, $5, u.p, $7, u.g, $8"
	"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
	"                   pg_catalog.unnest($6), pg_catalog.unnest($9)) AS u(q, i, p, g)",
	9, {INT4ARRAYOID, INT8ARRAYOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, JSONBARRAYOID, JSONBOID, INT2OID, TEXTARRAYOID}, PERSEG, {NULL}
};

#define CLAIM_SELECT \
	"SELECT m.ctid, m.id, m.payload, m.headers, m.enqueued_at," \
	"       m.delivery_count, m.expires_at, m.group_key, m.priority, m.vt" \
	"  FROM " SEG " m" \
	" WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2" \
	"   AND m.vt " OP("<=") " $3" \
	"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " $3)"
#define CLAIM_P0	"   AND m.priority " OP("=") " 0"
#define CLAIM_P		"   AND m.priority " OP(">") " 0 AND m.priority " OP("=") " $6"
#define CLAIM_EXCL	"   AND m.id " OP("<>") " ALL ($5)"
#define CLAIM_END	" ORDER BY m.id LIMIT $4 FOR UPDATE SKIP LOCKED"

/*
 * Priority 0 through the primary key, the others through the partial
 * index of (queue_id, priority, id); each with its own low-water mark
 * ($2), and with the transaction's own leases left out ($5) or not.
 */
static BrokerStmt claim0 = {
	CLAIM_SELECT CLAIM_P0 CLAIM_END,
	4, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID}, PERSEG, {NULL}
};

static BrokerStmt claim0_excluding = {
	CLAIM_SELECT CLAIM_P0 CLAIM_EXCL CLAIM_END,
	5, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID},
	PERSEG | BROKER_STMT_CUSTOM, {NULL}
};

static BrokerStmt claim_p = {
	CLAIM_SELECT CLAIM_P CLAIM_END,
	6, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID, INT2OID},
	PERSEG, {NULL}
};

static BrokerStmt claim_p_excluding = {
	CLAIM_SELECT CLAIM_P CLAIM_EXCL CLAIM_END,
	6, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID, INT2OID},
	PERSEG | BROKER_STMT_CUSTOM, {NULL}
};

static BrokerStmt write_leases = {
	"UPDATE " SEG " m SET vt = u.vt, delivery_count = u.dc, receipt = u.r"
	"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
	"                  pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(t, vt, dc, r)"
	" WHERE m.ctid " OP("=") " u.t",
	4, {TIDARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID, INT8ARRAYOID}, PERSEG, {NULL}
};

/*
 * Priority 0 has no index of its own: the primary key is read from the
 * mark on, and a segment that holds only messages of higher priorities
 * would be read to its end.  So a probe reads at most this many rows; when
 * none of them is of priority 0, the lowest one of priority 0 is above the
 * last one read, which is as good a bound for the mark (the next refresh
 * goes on from there).
 */
#define PROBE0_ROWS 1000

static BrokerStmt lowest_id0 = {
	"SELECT m.id, m.priority FROM " SEG " m"
	" WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
	" ORDER BY m.id LIMIT " CppAsString2(PROBE0_ROWS),
	2, {INT4OID, INT8OID}, PERSEG, {NULL}
};

static BrokerStmt lowest_id_p = {
	"SELECT m.id FROM " SEG " m WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
	" AND m.priority " OP(">") " 0 AND m.priority " OP("=") " $3 ORDER BY m.id LIMIT 1",
	3, {INT4OID, INT8OID, INT2OID}, PERSEG, {NULL}
};

static BrokerStmt has_priority = {
	"SELECT 1 FROM " SEG " m WHERE m.queue_id " OP("=") " $1"
	" AND m.priority " OP(">") " 0 AND m.priority " OP("=") " $2 LIMIT 1",
	2, {INT4OID, INT2OID}, PERSEG, {NULL}
};

/* When does the next leased or delayed claimable message become deliverable? */
static BrokerStmt next_due = {
	"SELECT pg_catalog.min(m.vt) FROM broker.messages m"
	" WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
	"   AND m.vt " OP(">") " $3"
	"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " m.vt)",
	3, {INT4OID, INT8OID, TIMESTAMPTZOID}, BROKER_STMT_INDEX, {NULL}
};

/*
 * Depth by state per queue ($1: one queue or NULL for all, $2: now);
 * messages waiting behind their group's head count as ready, whatever
 * their own delay.
 */
static BrokerStmt count_by_state = {
	"SELECT q.queue_id, q.name,"
	"  pg_catalog.count(m.id) FILTER (WHERE (m.vt " OP("<=") " $2 OR m.queue_id " OP("<") " 0)"
	"     AND m.delivery_count " OP("<") " COALESCE(q.max_deliveries, 2147483647)),"
	"  pg_catalog.count(m.id) FILTER (WHERE m.vt " OP(">") " $2 AND m.queue_id " OP(">") " 0"
	"     AND m.receipt IS NOT NULL),"
	"  pg_catalog.count(m.id) FILTER (WHERE m.vt " OP(">") " $2 AND m.queue_id " OP(">") " 0"
	"     AND m.receipt IS NULL),"
	"  pg_catalog.count(m.id),"
	"  $2 " OP("-") " pg_catalog.min(m.enqueued_at) FILTER (WHERE m.vt " OP("<=") " $2"
	"     AND m.delivery_count " OP("<") " COALESCE(q.max_deliveries, 2147483647))"
	"  FROM broker.queue_defs q"
	"  LEFT JOIN broker.messages m"
	"    ON m.queue_id " OP("=") " ANY (ARRAY[q.queue_id, " OP("-") " q.queue_id])"
	"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " $2)"
	" WHERE q.kind " OP("=") " 'q' AND ($1 IS NULL OR q.queue_id " OP("=") " $1)"
	" GROUP BY q.queue_id, q.name"
	" ORDER BY q.name",
	2, {INT4OID, TIMESTAMPTZOID}, 0, {NULL}
};

/*
 * Lock the groups of messages about to be added (NULL keys skipped)
 * before their ids are allocated: so the ids of one group are allocated
 * one transaction after the other, and id order is the order in which
 * they joined the group.
 */
void
BrokerStoreLockGroups(int32 queue_id, text **keys, int n)
{
	BrokerGroupLockMany(queue_id, keys, n);
}

/*
 * Where a grouped message goes: it waits (negated queue id) when its group
 * has a head, after the lock of the group is taken; else it is the head.
 */
static bool
group_has_head(int32 queue_id, text *key)
{
	BrokerGroupLock(queue_id, key, true);
	return BrokerGroupHasHead(queue_id, key) ||
		BrokerGroupPromote(queue_id, key, NULL);
}

/*
 * Store one message, in the current segment.  Returns whether it can be
 * claimed (false: it waits behind the head of its group).
 */
bool
BrokerStoreInsert(const BrokerNewMessage *m)
{
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			seg;
	int			rc;
	bool		waits = m->group_key != NULL && group_has_head(m->queue_id, m->group_key);

	seg = BrokerSegmentCurrent();
	values[0] = Int32GetDatum(waits ? -m->queue_id : m->queue_id);
	values[1] = Int64GetDatum(m->id);
	values[2] = TimestampTzGetDatum(m->vt);
	values[3] = TimestampTzGetDatum(m->enqueued_at);
	values[4] = TimestampTzGetDatum(m->expires_at);
	nulls[4] = m->has_expiry ? ' ' : 'n';
	values[5] = JsonbPGetDatum(m->payload);
	values[6] = m->headers ? JsonbPGetDatum(m->headers) : (Datum) 0;
	nulls[6] = m->headers ? ' ' : 'n';
	values[7] = m->group_key ? PointerGetDatum(m->group_key) : (Datum) 0;
	nulls[7] = m->group_key ? ' ' : 'n';
	values[8] = Int16GetDatum((int16) m->priority);

	rc = BrokerStmtExecute(&insert_one, seg, values, nulls, 0);
	BrokerStmtCheck(rc, SPI_OK_INSERT, "enqueue");
	BrokerSegmentInserted(seg);
	return !waits;
}

/*
 * Store n messages in one statement: the ids, payloads and group keys
 * (NULL: none) from the arrays, everything else from "common".  claimable[i]
 * says whether message i can be claimed (not waiting behind its group).
 */
void
BrokerStoreInsertBatch(const BrokerNewMessage *common, ArrayType *ids,
					   ArrayType *payloads, text **group_keys, int n,
					   bool *claimable)
{
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			seg;
	int			rc;

	values[1] = PointerGetDatum(ids);
	values[2] = TimestampTzGetDatum(common->vt);
	values[3] = TimestampTzGetDatum(common->enqueued_at);
	values[4] = TimestampTzGetDatum(common->expires_at);
	nulls[4] = common->has_expiry ? ' ' : 'n';
	values[5] = PointerGetDatum(payloads);
	values[6] = common->headers ? JsonbPGetDatum(common->headers) : (Datum) 0;
	nulls[6] = common->headers ? ' ' : 'n';
	values[7] = Int16GetDatum((int16) common->priority);

	for (int i = 0; i < n; i++)
		claimable[i] = true;

	if (group_keys == NULL)
	{
		values[0] = Int32GetDatum(common->queue_id);
		seg = BrokerSegmentCurrent();
		rc = BrokerStmtExecute(&insert_batch, seg, values, nulls, 0);
	}
	else
	{
		Datum	   *qids = palloc(sizeof(Datum) * n);
		Datum	   *keys = palloc(sizeof(Datum) * n);
		bool	   *knulls = palloc(sizeof(bool) * n);
		text	  **sorted = palloc(sizeof(text *) * n);
		bool	   *headed = palloc0(sizeof(bool) * n);	/* per sorted key */
		int			nkeys = 0;
		int			dims[1] = {n};
		int			lbs[1] = {1};

		/* The groups' locks, in stripe order (usually held already). */
		BrokerGroupLockMany(common->queue_id, group_keys, n);
		for (int i = 0; i < n; i++)
			if (group_keys[i] != NULL)
				sorted[nkeys++] = group_keys[i];
		qsort(sorted, nkeys, sizeof(text *), BrokerCompareKeyPtrs);
		for (int k = 0; k < nkeys; k++)
		{
			if (k > 0 && BrokerCompareKeyPtrs(&sorted[k - 1], &sorted[k]) == 0)
			{
				headed[k] = headed[k - 1];
				continue;
			}
			headed[k] = group_has_head(common->queue_id, sorted[k]);
		}
		/* In batch order: the first of a group without a head becomes it. */
		for (int i = 0; i < n; i++)
		{
			text	  **found;
			int			k;

			knulls[i] = group_keys[i] == NULL;
			keys[i] = knulls[i] ? (Datum) 0 : PointerGetDatum(group_keys[i]);
			qids[i] = Int32GetDatum(common->queue_id);
			if (knulls[i])
				continue;
			found = bsearch(&group_keys[i], sorted, nkeys, sizeof(text *), BrokerCompareKeyPtrs);
			k = found - sorted;
			while (k > 0 && BrokerCompareKeyPtrs(&sorted[k - 1], &sorted[k]) == 0)
				k--;
			if (headed[k])
			{
				qids[i] = Int32GetDatum(-common->queue_id);
				claimable[i] = false;
			}
			/* every copy of the key in sorted[] says the group has a head now */
			for (int j = k; j < nkeys && BrokerCompareKeyPtrs(&sorted[j], &sorted[k]) == 0; j++)
				headed[j] = true;
		}
		values[0] = PointerGetDatum(construct_array(qids, n, INT4OID, sizeof(int32),
													true, TYPALIGN_INT));
		values[8] = PointerGetDatum(construct_md_array(keys, knulls, 1, dims, lbs,
													   TEXTOID, -1, false,
													   TYPALIGN_INT));
		seg = BrokerSegmentCurrent();
		rc = BrokerStmtExecute(&insert_batch_grouped, seg, values, nulls, 0);
	}
	if (rc != SPI_OK_INSERT || SPI_processed != (uint64) n)
		elog(ERROR, "broker: batch enqueue failed: %s", SPI_result_code_string(rc));
	BrokerSegmentInserted(seg);
}

/* Claim rows of one priority into out[*n..]; returns how many. */
static void
claim_priority(const BrokerClaimSpec *spec, int priority, BrokerClaimed *out,
			   int *n)
{
	int			segs[BROKER_SEGMENTS];
	int			nsegs = BrokerSegmentScanOrder(segs);
	BrokerStmt *stmt;

	if (priority == 0)
		stmt = spec->exclude ? &claim0_excluding : &claim0;
	else
		stmt = spec->exclude ? &claim_p_excluding : &claim_p;

	for (int s = 0; s < nsegs && *n < spec->limit; s++)
	{
		Datum		values[6];
		int			rc;

		values[0] = Int32GetDatum(spec->queue_id);
		values[1] = Int64GetDatum(spec->from_id[priority]);
		values[2] = TimestampTzGetDatum(spec->now);
		values[3] = Int32GetDatum(spec->limit - *n);
		values[4] = PointerGetDatum(spec->exclude);
		values[5] = Int16GetDatum((int16) priority);
		rc = BrokerStmtExecute(stmt, segs[s], values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_SELECT, "dequeue");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			BrokerClaimed *c = &out[(*n)++];
			bool		isnull;
			Datum		d;

			c->ref.part = segs[s];
			c->ref.tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 1, &isnull));
			c->id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			c->payload = SPI_getbinval(tup, desc, 3, &isnull);
			c->headers = SPI_getbinval(tup, desc, 4, &c->headers_null);
			c->enqueued_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
			c->delivery_count = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
			c->expires_at = SPI_getbinval(tup, desc, 7, &c->expires_null);
			d = SPI_getbinval(tup, desc, 8, &isnull);
			c->group_key = isnull ? NULL : DatumGetTextPP(d);
			c->priority = DatumGetInt16(SPI_getbinval(tup, desc, 9, &isnull));
			c->vt = DatumGetTimestampTz(SPI_getbinval(tup, desc, 10, &isnull));
		}
	}
}

/*
 * Claim up to spec->limit deliverable messages of a queue: the highest
 * priority in use first, from each priority's mark on, skipping rows other
 * transactions hold and the ids in spec->exclude.  Returns how many, in
 * *rows (allocated in the current memory context).
 */
int
BrokerStoreClaim(const BrokerClaimSpec *spec, BrokerClaimed **rows)
{
	BrokerClaimed *out = palloc(sizeof(BrokerClaimed) * spec->limit);
	int			n = 0;

	for (int p = BROKER_PRIORITIES - 1; p >= 0 && n < spec->limit; p--)
	{
		if ((spec->priorities & (1u << p)) != 0)
			claim_priority(spec, p, out, &n);
	}
	*rows = out;
	return n;
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
 * The lowest id of a claimable message of the queue and priority at or
 * above from_id, in every segment (drained ones too, whose hint a row
 * found clears), each probe with its own snapshot; -1 when there is none.
 */
int64
BrokerStoreLowestId(int32 queue_id, int priority, int64 from_id)
{
	int64		lowest = -1;
	Datum		values[3];

	values[0] = Int32GetDatum(queue_id);
	values[1] = Int64GetDatum(from_id);
	values[2] = Int16GetDatum((int16) priority);
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		int			rc = BrokerStmtExecute(priority == 0 ? &lowest_id0 : &lowest_id_p,
										   seg, values, NULL,
										   priority == 0 ? PROBE0_ROWS : 1);
		int64		m = -1;
		bool		isnull;

		BrokerStmtCheck(rc, SPI_OK_SELECT, "low-water mark probe");
		if (SPI_processed == 0)
			continue;
		BrokerSegmentFound(seg);
		if (priority != 0)
			m = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
		else
		{
			for (uint64 i = 0; i < SPI_processed && m < 0; i++)
			{
				if (DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[i],
												SPI_tuptable->tupdesc, 2, &isnull)) == 0)
					m = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 1, &isnull));
			}
			/* none of priority 0 among a full read: above the last one */
			if (m < 0 && SPI_processed == PROBE0_ROWS)
				m = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[PROBE0_ROWS - 1],
												SPI_tuptable->tupdesc, 1, &isnull)) + 1;
		}
		if (m >= 0 && (lowest < 0 || m < lowest))
			lowest = m;
	}
	return lowest;
}

/* The priorities above 0 of which the queue has messages: a bit each. */
uint32
BrokerStorePrioritiesInUse(int32 queue_id)
{
	uint32		used = 0;
	Datum		values[2];

	values[0] = Int32GetDatum(queue_id);
	for (int p = 1; p < BROKER_PRIORITIES; p++)
	{
		values[1] = Int16GetDatum((int16) p);
		for (int seg = 0; seg < BROKER_SEGMENTS && (used & (1u << p)) == 0; seg++)
		{
			int			rc = BrokerStmtExecute(&has_priority, seg, values, NULL, 1);

			BrokerStmtCheck(rc, SPI_OK_SELECT, "looking for priorities");
			if (SPI_processed > 0)
				used |= 1u << p;
		}
	}
	return used;
}

/*
 * The earliest future visibility time (a delay or a lease running out) of
 * the queue's claimable messages from from_id on that will not have
 * expired by then; DT_NOEND when there is none.
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
