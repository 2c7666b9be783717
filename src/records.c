/*-------------------------------------------------------------------------
 *
 * records.c
 *	  Inside the message store: the records of messages that left a queue
 *	  with a retention (jobs), and the lookups of a job by id.
 *
 * A record is a row of broker.records_0 or _1, keyed (queue_id, id), with
 * the message's outcome: done, failed, deleted, dead_lettered or expired,
 * when it left (finished_at), and a result.  The two tables rotate like
 * the dedup keys (rotate.c): one takes new records, the other is emptied
 * with TRUNCATE once every record in it is older than the longest
 * retention, so old records cost no VACUUM and their space comes back
 * under a held snapshot.  A record counts only while finished_at is within
 * its queue's retention: lookups leave older ones out, whether or not
 * maintenance has emptied their table yet.
 *
 * Records are written in the transaction that removes the message, so a
 * message is either in its queue or has its record, never both and never
 * neither (within the retention).  Consumers' removals (delete, complete,
 * fail, dead-lettering) write them from C (BrokerStoreRecord); expiry
 * writes them in the same statement that deletes (remove.c, groups.c).
 *
 * The time a record is written with is read before the current table is
 * looked up, as for dedup keys: so a record that lands in a table that has
 * just stopped taking rows is older than the moment it stopped.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "segment.h"
#include "sql.h"
#include "store.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"
#define RECORD_COLUMNS \
	"(queue_id, id, state, delivery_count, enqueued_at, visible_at, finished_at," \
	" payload, headers, result)"

static BrokerStmt insert_record = {
	"INSERT INTO broker.records_%d " RECORD_COLUMNS
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
	10, {INT4OID, INT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, JSONBOID, JSONBOID, JSONBOID}, 0, {NULL}
};

static BrokerStmt insert_records = {
	"INSERT INTO broker.records_%d " RECORD_COLUMNS
	" SELECT $1, u.* FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3),"
	"   pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6),"
	"   pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9),"
	"   pg_catalog.unnest($10)) AS u",
	10, {INT4OID, INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID,
	TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID, JSONBARRAYOID, JSONBARRAYOID,
	JSONBARRAYOID}, 0, {NULL}
};

/* Live messages of a queue by id: its claimable and its waiting ones. */
static BrokerStmt live_jobs = {
	"SELECT m.id, m.vt, m.receipt IS NOT NULL, m.expires_at, m.delivery_count,"
	"       m.enqueued_at, m.payload, m.headers, m.queue_id " OP("<") " 0"
	"  FROM broker.messages m"
	" WHERE m.queue_id " OP("=") " ANY (ARRAY[$1, " OP("-") " $1])"
	"   AND m.id " OP("=") " ANY ($2)",
	2, {INT4OID, INT8ARRAYOID}, BROKER_STMT_INDEX, {NULL}
};

#define RECORD_SELECT \
	"SELECT r.id, r.state, r.delivery_count, r.enqueued_at, r.visible_at," \
	"       r.finished_at, r.payload, r.headers, r.result" \
	"  FROM broker.records_%d r WHERE r.queue_id " OP("=") " $1"

static BrokerStmt records_by_id = {
	RECORD_SELECT " AND r.id " OP("=") " ANY ($2) AND r.finished_at " OP(">") " $3",
	3, {INT4OID, INT8ARRAYOID, TIMESTAMPTZOID}, BROKER_STMT_INDEX, {NULL}
};

static BrokerStmt records_after = {
	RECORD_SELECT " AND r.id " OP(">") " $2 AND r.finished_at " OP(">") " $3"
	" ORDER BY r.id LIMIT $4",
	4, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID}, BROKER_STMT_INDEX, {NULL}
};

static BrokerStmt forget_records = {
	"DELETE FROM broker.records_%d r WHERE r.queue_id " OP("=") " $1",
	1, {INT4OID}, 0, {NULL}
};

/*
 * The table of the pair that takes new records, and the time to write
 * them with (read first: see the file header).
 */
int
BrokerStoreRecordTable(TimestampTz *now)
{
	BrokerTablePair dt;

	if (now)
		*now = GetCurrentTimestamp();
	BrokerPairGet(BrokerSegmentState(), BROKER_PAIR_RECORDS, &dt);
	return dt.cur;
}

/* Write records of messages that left their queue (one queue). */
void
BrokerStoreRecord(int32 queue_id, const BrokerRecord *recs, int n)
{
	int			table = BrokerStoreRecordTable(NULL);
	Datum		values[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			rc;

	if (n == 0)
		return;
	values[0] = Int32GetDatum(queue_id);
	if (n == 1)
	{
		const BrokerRecord *r = &recs[0];

		values[1] = Int64GetDatum(r->id);
		values[2] = CStringGetTextDatum(r->state);
		values[3] = Int32GetDatum(r->delivery_count);
		values[4] = TimestampTzGetDatum(r->enqueued_at);
		values[5] = TimestampTzGetDatum(r->visible_at);
		values[6] = TimestampTzGetDatum(r->finished_at);
		values[7] = r->payload;
		values[8] = r->headers ? JsonbPGetDatum(r->headers) : (Datum) 0;
		nulls[8] = r->headers ? ' ' : 'n';
		values[9] = r->result ? JsonbPGetDatum(r->result) : (Datum) 0;
		nulls[9] = r->result ? ' ' : 'n';
		rc = BrokerStmtExecute(&insert_record, table, values, nulls, 0);
	}
	else
	{
		Datum	   *cols[9];
		bool	   *hnull = palloc(sizeof(bool) * n);
		bool	   *rnull = palloc(sizeof(bool) * n);
		int			dims[1] = {n};
		int			lbs[1] = {1};

		for (int c = 0; c < 9; c++)
			cols[c] = palloc(sizeof(Datum) * n);
		for (int i = 0; i < n; i++)
		{
			const BrokerRecord *r = &recs[i];

			cols[0][i] = Int64GetDatum(r->id);
			cols[1][i] = CStringGetTextDatum(r->state);
			cols[2][i] = Int32GetDatum(r->delivery_count);
			cols[3][i] = TimestampTzGetDatum(r->enqueued_at);
			cols[4][i] = TimestampTzGetDatum(r->visible_at);
			cols[5][i] = TimestampTzGetDatum(r->finished_at);
			cols[6][i] = r->payload;
			cols[7][i] = r->headers ? JsonbPGetDatum(r->headers) : (Datum) 0;
			hnull[i] = r->headers == NULL;
			cols[8][i] = r->result ? JsonbPGetDatum(r->result) : (Datum) 0;
			rnull[i] = r->result == NULL;
		}
		values[1] = PointerGetDatum(construct_array(cols[0], n, INT8OID, 8,
													FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[2] = PointerGetDatum(construct_array(cols[1], n, TEXTOID, -1,
													false, TYPALIGN_INT));
		values[3] = PointerGetDatum(construct_array(cols[2], n, INT4OID, 4,
													true, TYPALIGN_INT));
		for (int c = 3; c < 6; c++)
			values[c + 1] = PointerGetDatum(construct_array(cols[c], n, TIMESTAMPTZOID,
															8, FLOAT8PASSBYVAL,
															TYPALIGN_DOUBLE));
		values[7] = PointerGetDatum(construct_array(cols[6], n, JSONBOID, -1,
													false, TYPALIGN_INT));
		values[8] = PointerGetDatum(construct_md_array(cols[7], hnull, 1, dims, lbs,
													   JSONBOID, -1, false,
													   TYPALIGN_INT));
		values[9] = PointerGetDatum(construct_md_array(cols[8], rnull, 1, dims, lbs,
													   JSONBOID, -1, false,
													   TYPALIGN_INT));
		rc = BrokerStmtExecute(&insert_records, table, values, nulls, 0);
	}
	BrokerStmtCheck(rc, SPI_OK_INSERT, "writing job records");
}

/* Fill a job from a record row (RECORD_SELECT's columns). */
static void
job_from_record(HeapTuple tup, TupleDesc desc, BrokerJob *j)
{
	bool		isnull;
	Datum		d;

	j->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	j->state = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
	j->delivery_count = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	j->enqueued_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
	j->visible_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	j->has_finished = true;
	j->finished_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
	j->payload = SPI_getbinval(tup, desc, 7, &isnull);
	j->headers = SPI_getbinval(tup, desc, 8, &j->headers_null);
	d = SPI_getbinval(tup, desc, 9, &j->result_null);
	j->result = d;
}

/* Which tables of the pair may hold records (the other may be emptied). */
static int
record_tables(int *tables)
{
	BrokerTablePair dt;
	int			n = 0;

	BrokerPairGet(BrokerSegmentState(), BROKER_PAIR_RECORDS, &dt);
	tables[n++] = dt.cur;
	if (!dt.other_empty)
		tables[n++] = (dt.cur + 1) % BROKER_PAIR_TABLES;
	return n;
}

static int
cmp_job(const void *a, const void *b)
{
	int64		x = ((const BrokerJob *) a)->id;
	int64		y = ((const BrokerJob *) b)->id;

	return (x > y) - (x < y);
}

/*
 * The jobs of a queue with these ids, in id order: the live messages (their
 * state as of "now"), and the records of the others that finished after
 * "since" (has_since false: the queue keeps none).  Returns how many.
 */
int
BrokerStoreJobs(int32 queue_id, ArrayType *ids, TimestampTz now,
				bool has_since, TimestampTz since, BrokerJob **jobs)
{
	Datum		values[3];
	int			rc;
	int			cap = 8;
	int			n = 0;
	BrokerJob  *out = palloc0(sizeof(BrokerJob) * cap);
	Snapshot	snap;

	/* One snapshot for both looks: a removal in between is seen once. */
	snap = RegisterSnapshot(GetTransactionSnapshot());
	values[0] = Int32GetDatum(queue_id);
	values[1] = PointerGetDatum(ids);
	rc = BrokerStmtExecuteSnapshot(&live_jobs, -1, values, NULL, 0, snap);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "looking up jobs");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		BrokerJob  *j;
		bool		isnull;
		bool		leased;
		bool		waiting;
		Datum		exp;
		bool		exp_null;

		if (n == cap)
		{
			cap *= 2;
			out = repalloc(out, sizeof(BrokerJob) * cap);
		}
		j = &out[n++];
		memset(j, 0, sizeof(*j));
		j->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		j->visible_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
		leased = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		exp = SPI_getbinval(tup, desc, 4, &exp_null);
		j->delivery_count = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		j->enqueued_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
		j->payload = SPI_getbinval(tup, desc, 7, &isnull);
		j->headers = SPI_getbinval(tup, desc, 8, &j->headers_null);
		j->result_null = true;
		waiting = DatumGetBool(SPI_getbinval(tup, desc, 9, &isnull));
		if (!exp_null && DatumGetTimestampTz(exp) <= now)
		{
			j->state = "expired";
			j->has_finished = true;
			j->finished_at = DatumGetTimestampTz(exp);
		}
		else if (waiting)
			j->state = "ready";		/* behind its ordered group's head */
		else if (j->visible_at > now)
			j->state = leased ? "leased" : "delayed";
		else
			j->state = "ready";
		/* neither delayed nor leased now, nor a lease ran out: enqueue time */
		if (!leased && j->visible_at <= now)
			j->visible_at = j->enqueued_at;
	}

	if (has_since)
	{
		int			tables[BROKER_PAIR_TABLES];
		int			ntables = record_tables(tables);

		values[2] = TimestampTzGetDatum(since);
		for (int t = 0; t < ntables; t++)
		{
			rc = BrokerStmtExecuteSnapshot(&records_by_id, tables[t], values, NULL, 0,
										   snap);
			BrokerStmtCheck(rc, SPI_OK_SELECT, "looking up job records");
			for (uint64 i = 0; i < SPI_processed; i++)
			{
				if (n == cap)
				{
					cap *= 2;
					out = repalloc(out, sizeof(BrokerJob) * cap);
				}
				job_from_record(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &out[n++]);
			}
		}
	}
	UnregisterSnapshot(snap);
	qsort(out, n, sizeof(BrokerJob), cmp_job);
	*jobs = out;
	return n;
}

/*
 * The records of a queue after after_id that finished after "since", in
 * id order, at most max_rows.  Returns how many.
 */
int
BrokerStoreArchive(int32 queue_id, int64 after_id, TimestampTz since,
				   int max_rows, BrokerJob **jobs)
{
	int			tables[BROKER_PAIR_TABLES];
	int			ntables = record_tables(tables);
	BrokerJob  *out = palloc0(sizeof(BrokerJob) * Max(max_rows, 1) * ntables);
	int			n = 0;
	Datum		values[4];

	values[0] = Int32GetDatum(queue_id);
	values[1] = Int64GetDatum(after_id);
	values[2] = TimestampTzGetDatum(since);
	values[3] = Int32GetDatum(max_rows);
	for (int t = 0; t < ntables; t++)
	{
		int			rc = BrokerStmtExecute(&records_after, tables[t], values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_SELECT, "reading the archive");
		for (uint64 i = 0; i < SPI_processed; i++)
			job_from_record(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &out[n++]);
	}
	qsort(out, n, sizeof(BrokerJob), cmp_job);
	*jobs = out;
	return Min(n, max_rows);
}

/* A queue is dropped or purged: forget its records, in both tables. */
void
BrokerStoreForgetRecords(int32 queue_id)
{
	Datum		values[1];

	values[0] = Int32GetDatum(queue_id);
	for (int t = 0; t < BROKER_PAIR_TABLES; t++)
	{
		int			rc = BrokerStmtExecuteLatest(&forget_records, t, values, NULL, 0);

		BrokerStmtCheck(rc, SPI_OK_DELETE, "forgetting job records");
	}
}
