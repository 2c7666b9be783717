/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  broker.metrics: depth by state from the store, counters since server
 *	  start from shared memory; broker.waiters: the long-poll state.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "acl.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "qstate.h"
#include "queuedef.h"
#include "sql.h"
#include "store.h"
#include "util.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"

/* The queues, by name ($1: one queue or NULL for all). */
static BrokerStmt queue_list = {
	"SELECT q.queue_id, q.name FROM broker.queue_defs q"
	" WHERE q.kind " OP("=") " 'q' AND ($1 IS NULL OR q.queue_id " OP("=") " $1)"
	" ORDER BY q.name",
	1, {INT4OID}, 0, {NULL}
};

PG_FUNCTION_INFO_V1(broker_metrics);
PG_FUNCTION_INFO_V1(broker_waiters);

/* The queue named by argument 0, or 0 for every queue when it is NULL. */
static int32
queue_of_arg(FunctionCallInfo fcinfo)
{
	BrokerQueue q;

	if (PG_ARGISNULL(0))
		return 0;
	BrokerLookupQueue(BrokerQueueArg(fcinfo, 0), false, &q);
	if (!BrokerMaySeeQueue(q.queue_id))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for queue \"%s\"", q.name),
				 errdetail("Its figures are shown to roles with a privilege on it and to members of pg_read_all_stats.")));
	return q.queue_id;
}

/* broker.metrics(queue): one row per queue, or for the one named. */
Datum
broker_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		shmem = BrokerSharedMemoryReady();
	BrokerQueueCounts *counts;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	BrokerSPIConnect();
	n = BrokerStoreCounts(queue_of_arg(fcinfo), GetCurrentTimestamp(), &counts);
	for (int i = 0; i < n; i++)
	{
		BrokerQueueCounts *c = &counts[i];
		BrokerQueueState *state;
		Datum		out[12];
		bool		outnull[12];

		/* queues the caller has no privilege on are not shown */
		if (!BrokerMaySeeQueue(c->queue_id))
			continue;
		state = shmem ? BrokerQueueStateGet(c->queue_id, false) : NULL;

		memset(outnull, false, sizeof(outnull));
		out[0] = CStringGetTextDatum(c->name);
		out[1] = Int64GetDatum(c->ready);
		out[2] = Int64GetDatum(c->leased);
		out[3] = Int64GetDatum(c->delayed);
		out[4] = Int64GetDatum(c->total);
		out[5] = c->has_oldest ? IntervalPGetDatum(&c->oldest_ready_age) : (Datum) 0;
		outnull[5] = !c->has_oldest;
		/* A queue nobody has touched since server start: zeros. */
		out[6] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->enqueued_total) : 0);
		out[7] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->deleted_total) : 0);
		out[8] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->expired_total) : 0);
		out[9] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->dead_lettered_total) : 0);
		out[10] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->completed_total) : 0);
		out[11] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->failed_total) : 0);
		for (int k = 6; k < 12; k++)
			outnull[k] = !shmem;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnull);
	}
	BrokerSPIFinish();
	return (Datum) 0;
}

/*
 * broker.waiters(queue): long-polling backends now, and how often waiters
 * woke up (empty_wakeups: woke and found nothing, the cost of a herd).
 */
Datum
broker_waiters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[1];
	char		nulls[1];
	int			rc;
	uint64		n;
	int32	   *ids;
	Datum	   *names;

	BrokerRequireSharedMemory();
	InitMaterializedSRF(fcinfo, 0);
	BrokerSPIConnect();
	values[0] = Int32GetDatum(queue_of_arg(fcinfo));
	nulls[0] = DatumGetInt32(values[0]) > 0 ? ' ' : 'n';
	rc = BrokerStmtExecute(&queue_list, -1, values, nulls, 0);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "listing queues");
	/* copied out: the privilege checks below may run statements */
	n = SPI_processed;
	ids = palloc(sizeof(int32) * Max(n, 1));
	names = palloc(sizeof(Datum) * Max(n, 1));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
		names[i] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
	}
	for (uint64 i = 0; i < n; i++)
	{
		int32		queue_id = ids[i];
		BrokerQueueState *state;
		Datum		out[6];
		bool		outnull[6] = {false, false, false, false, false, false};

		if (!BrokerMaySeeQueue(queue_id))
			continue;
		state = BrokerQueueStateGet(queue_id, false);
		out[0] = names[i];
		out[1] = Int32GetDatum(state ? (int32) pg_atomic_read_u32(&state->waiters) : 0);
		out[2] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->wakeups) : 0);
		out[3] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->empty_wakeups) : 0);
		/* diagnostics: where dequeues start, and when a waiter next wakes */
		out[4] = Int64GetDatum(state ? BrokerQueueLowestMark(state) : 0);
		outnull[4] = state == NULL;
		out[5] = TimestampTzGetDatum(state ? (TimestampTz) pg_atomic_read_u64(&state->next_due) : 0);
		outnull[5] = state == NULL ||
			(TimestampTz) pg_atomic_read_u64(&state->next_due) == BROKER_NO_DUE;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnull);
	}
	BrokerSPIFinish();
	return (Datum) 0;
}
