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

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "groups.h"
#include "segment.h"
#include "sql.h"
#include "store.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"
#define SEG "broker.messages_%d"
#define PERSEG BROKER_STMT_INDEX

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
 * goes on from there).  A queue with no priority above 0 in use reads one
 * row: the first row is then the answer, and were it of a higher priority
 * after all, its id + 1 is still a bound.
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
 * Inserting.  Rows go into the current segment without a statement: the
 * tuples are formed here and written with table_multi_insert (one WAL
 * record per page for a batch) or table_tuple_insert, then their index
 * entries are made with ExecInsertIndexTuples, as COPY does; no parse,
 * no plan and no executor start for each call.  The segments have no
 * trigger, no check constraint, no rule and no generated column (the
 * install script makes them so; the columns the install script declares
 * NOT NULL are always given here).
 */
typedef struct InsertRow
{
	int32		queue_id;		/* negated: waiting behind its group's head */
	int64		id;
	Datum		payload;
	text	   *group_key;		/* or NULL */
} InsertRow;

/* Attribute numbers of the segments' columns (all four have the same). */
enum
{
	COL_QUEUE_ID, COL_ID, COL_VT, COL_ENQUEUED_AT, COL_EXPIRES_AT,
	COL_DELIVERY_COUNT, COL_RECEIPT, COL_PAYLOAD, COL_HEADERS, COL_GROUP_KEY,
	COL_PRIORITY, NUM_COLS
};

static const char *const col_names[NUM_COLS] = {
	"queue_id", "id", "vt", "enqueued_at", "expires_at", "delivery_count",
	"receipt", "payload", "headers", "group_key", "priority"
};

static AttrNumber col_attnum[NUM_COLS];
static uint64 col_generation = 0;

static void
load_columns(Oid relid)
{
	if (col_generation == BrokerRelsGeneration() && col_attnum[0] != 0)
		return;
	for (int c = 0; c < NUM_COLS; c++)
	{
		col_attnum[c] = get_attnum(relid, col_names[c]);
		if (col_attnum[c] == InvalidAttrNumber)
			elog(ERROR, "broker: column \"%s\" of a message segment is missing",
				 col_names[c]);
	}
	col_generation = BrokerRelsGeneration();
}

/* Rows stored per table_multi_insert call, and slots kept for them. */
#define INSERT_CHUNK 1000

/* Put one row into a (virtual) slot. */
static void
fill_slot(TupleTableSlot *slot, TupleDesc desc, const BrokerNewMessage *common,
		  const InsertRow *row)
{
	Datum	   *v = slot->tts_values;
	bool	   *isnull = slot->tts_isnull;

	ExecClearTuple(slot);
	memset(isnull, true, sizeof(bool) * desc->natts);
	v[col_attnum[COL_QUEUE_ID] - 1] = Int32GetDatum(row->queue_id);
	v[col_attnum[COL_ID] - 1] = Int64GetDatum(row->id);
	v[col_attnum[COL_VT] - 1] = TimestampTzGetDatum(common->vt);
	v[col_attnum[COL_ENQUEUED_AT] - 1] = TimestampTzGetDatum(common->enqueued_at);
	v[col_attnum[COL_EXPIRES_AT] - 1] = TimestampTzGetDatum(common->expires_at);
	v[col_attnum[COL_DELIVERY_COUNT] - 1] = Int32GetDatum(0);
	v[col_attnum[COL_PAYLOAD] - 1] = row->payload;
	v[col_attnum[COL_HEADERS] - 1] = common->headers ? JsonbPGetDatum(common->headers) : (Datum) 0;
	v[col_attnum[COL_GROUP_KEY] - 1] = PointerGetDatum(row->group_key);
	v[col_attnum[COL_PRIORITY] - 1] = Int16GetDatum((int16) common->priority);
	isnull[col_attnum[COL_QUEUE_ID] - 1] = false;
	isnull[col_attnum[COL_ID] - 1] = false;
	isnull[col_attnum[COL_VT] - 1] = false;
	isnull[col_attnum[COL_ENQUEUED_AT] - 1] = false;
	isnull[col_attnum[COL_EXPIRES_AT] - 1] = !common->has_expiry;
	isnull[col_attnum[COL_DELIVERY_COUNT] - 1] = false;
	isnull[col_attnum[COL_PAYLOAD] - 1] = false;
	isnull[col_attnum[COL_HEADERS] - 1] = common->headers == NULL;
	isnull[col_attnum[COL_GROUP_KEY] - 1] = row->group_key == NULL;
	isnull[col_attnum[COL_PRIORITY] - 1] = false;
	ExecStoreVirtualTuple(slot);
}

/*
 * What inserting into a segment needs of its indexes, made once per
 * segment and kept until one of the extension's relations changes
 * (BrokerRelsGeneration: a TRUNCATE at rotation, an ANALYZE, a new index).
 * ExecOpenIndices and ExecInsertIndexTuples, as COPY uses them, build each
 * index's IndexInfo and compile its partial-index predicate (three of the
 * four indexes are partial) again for every statement: for an enqueue of
 * one message that was about a tenth of its CPU.  The indexes themselves
 * are opened and locked per call, as the executor does.
 */
typedef struct SegIndex
{
	Oid			oid;
	IndexInfo  *info;
	ExprState  *predicate;		/* compiled, or NULL: not partial */
} SegIndex;

#define MAX_SEG_INDEXES 16

typedef struct SegIndexes
{
	uint64		generation;		/* 0: not made */
	Oid			relid;
	int			n;
	SegIndex	index[MAX_SEG_INDEXES];
	MemoryContext cxt;
} SegIndexes;

static SegIndexes seg_indexes[BROKER_SEGMENTS];

/* A segment's index list, made (again) when stale. */
static SegIndexes *
segment_indexes(int seg, Relation rel)
{
	SegIndexes *si = &seg_indexes[seg];
	List	   *oids;
	ListCell   *lc;
	MemoryContext old;

	if (si->generation == BrokerRelsGeneration() && si->relid == RelationGetRelid(rel))
		return si;
	if (si->cxt == NULL)
		si->cxt = AllocSetContextCreate(CacheMemoryContext, "broker segment indexes",
										ALLOCSET_SMALL_SIZES);
	MemoryContextReset(si->cxt);
	si->generation = 0;
	si->n = 0;
	oids = RelationGetIndexList(rel);
	old = MemoryContextSwitchTo(si->cxt);
	foreach(lc, oids)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);
		IndexInfo  *info = BuildIndexInfo(index);
		SegIndex   *e;

		if (si->n == MAX_SEG_INDEXES || info->ii_Expressions != NIL ||
			info->ii_ExclusionOps != NULL || !index->rd_index->indimmediate)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("an index of broker's table \"%s\" is not one the extension made",
							RelationGetRelationName(rel)),
					 errdetail("Index \"%s\" has expressions, an exclusion or a deferred constraint, or the table more than %d indexes.",
							   RelationGetRelationName(index), MAX_SEG_INDEXES),
					 errhint("Drop that index.")));
		e = &si->index[si->n++];
		e->oid = RelationGetRelid(index);
		e->info = info;
		e->predicate = info->ii_Predicate == NIL ? NULL :
			ExecInitQual((List *) expression_planner((Expr *) info->ii_Predicate), NULL);
		index_close(index, AccessShareLock);
	}
	MemoryContextSwitchTo(old);
	list_free(oids);
	si->relid = RelationGetRelid(rel);
	si->generation = BrokerRelsGeneration();
	return si;
}

/* Make the index entries of a row just stored from a slot. */
static void
insert_index_entries(Relation rel, SegIndexes *si, Relation *indexes,
					 TupleTableSlot *slot, ExprContext *econtext)
{
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];

	econtext->ecxt_scantuple = slot;
	for (int i = 0; i < si->n; i++)
	{
		SegIndex   *e = &si->index[i];

		if (!e->info->ii_ReadyForInserts)
			continue;
		if (e->predicate != NULL && !ExecQual(e->predicate, econtext))
			continue;
		FormIndexDatum(e->info, slot, NULL, values, isnull);
		index_insert(indexes[i], values, isnull, &slot->tts_tid, rel,
					 e->info->ii_Unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
					 false, e->info);
	}
	ResetExprContext(econtext);
}

/* Write n rows (the rest of each from common) into a segment. */
static void
insert_rows(int seg, const BrokerNewMessage *common, const InsertRow *rows, int n)
{
	Oid			relid = BrokerSegmentRelid(seg);
	Relation	rel;
	SegIndexes *si;
	Relation	indexes[MAX_SEG_INDEXES];
	ExprContext *econtext;
	TupleTableSlot **slots;
	TupleDesc	desc;
	CommandId	cid = GetCurrentCommandId(true);
	MemoryContext chunk_cxt;
	int			nslots;

	load_columns(relid);
	rel = table_open(relid, RowExclusiveLock);
	desc = RelationGetDescr(rel);
	si = segment_indexes(seg, rel);
	for (int i = 0; i < si->n; i++)
		indexes[i] = index_open(si->index[i].oid, RowExclusiveLock);
	econtext = CreateStandaloneExprContext();

	nslots = Min(n, INSERT_CHUNK);
	slots = palloc(sizeof(TupleTableSlot *) * nslots);
	for (int i = 0; i < nslots; i++)
		slots[i] = MakeSingleTupleTableSlot(desc, &TTSOpsVirtual);
	/* one row (enqueue) needs no context of its own */
	chunk_cxt = n == 1 ? CurrentMemoryContext :
		AllocSetContextCreate(CurrentMemoryContext, "broker insert chunk",
							  ALLOCSET_DEFAULT_SIZES);

	/*
	 * A bounded set of slots, filled again for each chunk (as COPY does):
	 * a slot per row would pin the tuple descriptor once per row in the
	 * resource owner, whose lookups degrade with that many pins of one
	 * descriptor.
	 */
	for (int done = 0; done < n; done += nslots)
	{
		int			k = Min(nslots, n - done);
		MemoryContext prev;

		CHECK_FOR_INTERRUPTS();
		prev = MemoryContextSwitchTo(chunk_cxt);
		for (int j = 0; j < k; j++)
			fill_slot(slots[j], desc, common, &rows[done + j]);
		if (k == 1)
			table_tuple_insert(rel, slots[0], cid, 0, NULL);
		else
			table_multi_insert(rel, slots, k, cid, 0, NULL);
		for (int j = 0; j < k; j++)
			insert_index_entries(rel, si, indexes, slots[j], econtext);
		MemoryContextSwitchTo(prev);
		if (n > 1)
			MemoryContextReset(chunk_cxt);
	}

	for (int i = 0; i < nslots; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	FreeExprContext(econtext, true);
	for (int i = 0; i < si->n; i++)
		index_close(indexes[i], NoLock);
	table_close(rel, NoLock);
}

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
	InsertRow	row;
	int			seg;
	bool		waits = m->group_key != NULL && group_has_head(m->queue_id, m->group_key);

	seg = BrokerSegmentCurrent();
	row.queue_id = waits ? -m->queue_id : m->queue_id;
	row.id = m->id;
	row.payload = JsonbPGetDatum(m->payload);
	row.group_key = m->group_key;
	insert_rows(seg, m, &row, 1);
	BrokerSegmentInserted(seg);
	return !waits;
}

/*
 * Store n messages at once: the ids, payloads and group keys (NULL: none)
 * from the arrays, everything else from "common".  claimable[i] says
 * whether message i can be claimed (not waiting behind its group).
 */
void
BrokerStoreInsertBatch(const BrokerNewMessage *common, const int64 *ids,
					   const Datum *payloads, text **group_keys, int n,
					   bool *claimable)
{
	InsertRow  *rows = palloc(sizeof(InsertRow) * Max(n, 1));
	int			seg;

	for (int i = 0; i < n; i++)
	{
		claimable[i] = true;
		rows[i].queue_id = common->queue_id;
		rows[i].id = ids[i];
		rows[i].payload = payloads[i];
		rows[i].group_key = group_keys ? group_keys[i] : NULL;
	}

	if (group_keys != NULL)
	{
		text	  **sorted = palloc(sizeof(text *) * n);
		bool	   *headed = palloc0(sizeof(bool) * n);	/* per sorted key */
		int			nkeys = 0;

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

			if (group_keys[i] == NULL)
				continue;
			found = bsearch(&group_keys[i], sorted, nkeys, sizeof(text *),
							BrokerCompareKeyPtrs);
			k = found - sorted;
			while (k > 0 && BrokerCompareKeyPtrs(&sorted[k - 1], &sorted[k]) == 0)
				k--;
			if (headed[k])
			{
				rows[i].queue_id = -common->queue_id;
				claimable[i] = false;
			}
			/* every copy of the key in sorted[] says the group has a head now */
			for (int j = k; j < nkeys && BrokerCompareKeyPtrs(&sorted[j], &sorted[k]) == 0; j++)
				headed[j] = true;
		}
	}
	seg = BrokerSegmentCurrent();
	insert_rows(seg, common, rows, n);
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
 * higher_in_use: the queue has messages of priorities above 0 (for
 * priority 0, how far a probe reads).
 */
int64
BrokerStoreLowestId(int32 queue_id, int priority, int64 from_id,
					bool higher_in_use)
{
	int64		lowest = -1;
	Datum		values[3];
	int			rows = priority == 0 && higher_in_use ? PROBE0_ROWS : 1;

	values[0] = Int32GetDatum(queue_id);
	values[1] = Int64GetDatum(from_id);
	values[2] = Int16GetDatum((int16) priority);
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		int			rc = BrokerStmtExecute(priority == 0 ? &lowest_id0 : &lowest_id_p,
										   seg, values, NULL, rows);
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
			if (m < 0 && SPI_processed == (uint64) rows)
				m = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[rows - 1],
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

/*
 * Hand on the ordered groups whose head left without a hand-on (groups.c):
 * the reaper's, once per pass, and broker.reap's (of one queue, or all:
 * queue_id 0).  Returns how many groups moved on.
 */
int64
BrokerStoreRepairGroups(int32 queue_id)
{
	return BrokerGroupsRepair(queue_id);
}
