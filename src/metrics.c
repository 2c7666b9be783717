/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  broker.metrics: depth by state from the table, counters since server
 *	  start from shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"

#include "broker.h"

PG_FUNCTION_INFO_V1(broker_metrics);
PG_FUNCTION_INFO_V1(broker_waiters);

/*
 * Run a per-queue statement ($1 queue id or NULL for all, $2 now) for the
 * queue named by argument 0, or every queue when it is NULL; the rows are
 * in SPI_tuptable, the queue id first and the name second.
 */
static void
run_per_queue(FunctionCallInfo fcinfo, BrokerPlanId plan)
{
	Datum		values[2];
	char		nulls[2] = {'n', ' '};
	int			rc;

	if (!PG_ARGISNULL(0))
	{
		BrokerQueue q;

		BrokerLookupQueue(BrokerQueueArg(fcinfo, 0), false, &q);
		values[0] = Int32GetDatum(q.queue_id);
		nulls[0] = ' ';
	}
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	rc = SPI_execute_plan(BrokerPlan(plan), values, nulls, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "broker: per-queue statement failed: %s",
			 SPI_result_code_string(rc));
}

/* broker.metrics(queue): one row per queue, or for the one named. */
Datum
broker_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		shmem = BrokerSharedMemoryReady();

	InitMaterializedSRF(fcinfo, 0);
	BrokerSPIConnect();
	run_per_queue(fcinfo, PLAN_METRICS);

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum		out[10];
		bool		outnull[10];
		bool		isnull;
		int32		queue_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		BrokerQueueState *state = NULL;

		for (int c = 0; c < 6; c++)
			out[c] = SPI_getbinval(tup, desc, c + 2, &outnull[c]);

		if (shmem)
		{
			BrokerRequireSharedMemory();
			state = BrokerQueueStateGet(queue_id, false);
		}
		for (int c = 6; c < 10; c++)
			outnull[c] = !shmem;
		/* A queue nobody has touched since server start: zeros. */
		out[6] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->enqueued_total) : 0);
		out[7] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->deleted_total) : 0);
		out[8] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->expired_total) : 0);
		out[9] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->dead_lettered_total) : 0);
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

	BrokerRequireSharedMemory();
	InitMaterializedSRF(fcinfo, 0);
	BrokerSPIConnect();
	run_per_queue(fcinfo, PLAN_QUEUE_LIST);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		int32		queue_id = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc,
														   1, &isnull));
		BrokerQueueState *state = BrokerQueueStateGet(queue_id, false);
		Datum		out[6];
		bool		outnull[6] = {false, false, false, false, false, false};

		out[0] = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);
		out[1] = Int32GetDatum(state ? (int32) pg_atomic_read_u32(&state->waiters) : 0);
		out[2] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->wakeups) : 0);
		out[3] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->empty_wakeups) : 0);
		/* diagnostics: where dequeues start, and when a waiter next wakes */
		out[4] = Int64GetDatum(state ? (int64) pg_atomic_read_u64(&state->lwm) : 0);
		outnull[4] = state == NULL;
		out[5] = TimestampTzGetDatum(state ? (TimestampTz) pg_atomic_read_u64(&state->next_due) : 0);
		outnull[5] = state == NULL ||
			(TimestampTz) pg_atomic_read_u64(&state->next_due) == BROKER_NO_DUE;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnull);
	}
	BrokerSPIFinish();
	return (Datum) 0;
}
