/*-------------------------------------------------------------------------
 *
 * dequeue.c
 *	  broker.dequeue: take up to max_messages deliverable messages under a
 *	  lease, dead-lettering the ones that were delivered too often, and
 *	  optionally wait for new ones.
 *
 * One statement (PLAN_DEQUEUE) does the work: it picks rows from the
 * queue's low-water mark on with FOR UPDATE SKIP LOCKED, so concurrent
 * consumers never wait on each other and never take the same row; it
 * writes the lease (vt, delivery_count, receipt: none indexed, so a HOT
 * update) and deletes exhausted rows, returning them so that they can be
 * moved to the dead-letter queue in the same transaction.
 *
 * "Now" is the clock at the moment of the call (GetCurrentTimestamp), not
 * the transaction start: a lease runs for its full length from when it is
 * taken, and a long-polling call sees delays and leases run out.
 *
 * Waiting: the backend sleeps on the queue's condition variable, which a
 * committing producer signals once per message it enqueued (shmem.c).  It
 * prepares to sleep before it looks, so a commit between the look and the
 * sleep is not missed.  The sleep is bounded by the remaining wait and by
 * BROKER_POLL_MS, so messages whose delay or lease runs out during the
 * wait are found too; statement_timeout and pg_cancel_backend interrupt it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/datum.h"

#include "broker.h"

/* Longest single sleep of a waiting dequeue (ms). */
#define BROKER_POLL_MS	250

PG_FUNCTION_INFO_V1(broker_dequeue);

/* A dead-lettered message, copied out of the SPI result. */
typedef struct DeadMessage
{
	Jsonb	   *payload;
	Jsonb	   *headers;
} DeadMessage;

/* Move exhausted messages to the dead-letter queue, or drop them. */
static void
dead_letter(const BrokerQueue *q, DeadMessage *dead, int ndead)
{
	BrokerQueue dlq;
	TimestampTz now;

	BrokerNoteDeleted();
	BrokerCount(q->queue_id, BROKER_COUNT_DEAD_LETTERED, ndead);
	if (q->dead_letter_id == 0)
		return;

	/* Lock order: the queue (held), then its dead-letter queue. */
	LockDatabaseObject(BrokerGetRels()->queue_defs, q->dead_letter_id, 0,
					   AccessShareLock);
	if (!BrokerLookupQueueById(q->dead_letter_id, &dlq))
		elog(ERROR, "broker: dead-letter queue %d of queue \"%s\" vanished",
			 q->dead_letter_id, q->name);

	now = GetCurrentTimestamp();
	for (int i = 0; i < ndead; i++)
		BrokerEnqueueOne(&dlq, dead[i].payload, dead[i].headers, now, now,
						 dlq.has_default_ttl,
						 dlq.has_default_ttl ?
						 BrokerTimestampPlus(now, &dlq.default_ttl) : 0);
}

/*
 * Run PLAN_DEQUEUE once for up to limit messages; put the delivered ones
 * in the result set.  Returns how many were delivered; *ndead_out says how
 * many were dead-lettered instead.
 */
static int
take_messages(const BrokerQueue *q, BrokerQueueState *state, int limit,
			  const Interval *lease, ReturnSetInfo *rsinfo, int *ndead_out)
{
	TimestampTz now = GetCurrentTimestamp();
	Datum		values[7];
	int			rc;
	int			delivered = 0;
	int			ndead = 0;
	DeadMessage *dead = NULL;
	SPITupleTable *tuptable;
	MemoryContext callcxt = CurrentMemoryContext;

	values[0] = Int32GetDatum(q->queue_id);
	values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&state->lwm));
	values[2] = TimestampTzGetDatum(now);
	values[3] = Int32GetDatum(limit);
	values[4] = TimestampTzGetDatum(BrokerTimestampPlus(now, lease));
	/* receipt = nonce # id: positive, new at every delivery, unguessable */
	values[5] = Int64GetDatum((int64) (pg_prng_uint64(&pg_global_prng_state) >> 2));
	values[6] = Int32GetDatum(q->max_deliveries > 0 ? q->max_deliveries : PG_INT32_MAX);

	rc = SPI_execute_plan(BrokerPlan(PLAN_DEQUEUE), values, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "broker: dequeue failed: %s", SPI_result_code_string(rc));

	tuptable = SPI_tuptable;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = tuptable->vals[i];
		TupleDesc	desc = tuptable->tupdesc;
		bool		isnull;
		Datum		out[8];
		bool		outnull[8];

		if (DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull)))
		{
			MemoryContext old = MemoryContextSwitchTo(callcxt);
			Datum		d;

			if (dead == NULL)
				dead = palloc(sizeof(DeadMessage) * SPI_processed);
			d = SPI_getbinval(tup, desc, 3, &isnull);
			dead[ndead].payload = DatumGetJsonbPCopy(d);
			d = SPI_getbinval(tup, desc, 4, &isnull);
			dead[ndead].headers = isnull ? NULL : DatumGetJsonbPCopy(d);
			ndead++;
			MemoryContextSwitchTo(old);
			continue;
		}
		for (int c = 0; c < 8; c++)
			out[c] = SPI_getbinval(tup, desc, c + 2, &outnull[c]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnull);
		delivered++;
	}

	if (ndead > 0)
		dead_letter(q, dead, ndead);
	*ndead_out = ndead;
	return delivered;
}

/* broker.dequeue(queue, max_messages, lease, wait) */
Datum
broker_dequeue(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *name = BrokerQueueArg(fcinfo, 0);
	int32		max_messages;
	Interval   *lease = PG_ARGISNULL(2) ? NULL : PG_GETARG_INTERVAL_P(2);
	Interval   *wait = PG_ARGISNULL(3) ? NULL : PG_GETARG_INTERVAL_P(3);
	BrokerQueue q;
	BrokerQueueState *state;
	TimestampTz deadline = 0;
	bool		waiting;
	int			delivered = 0;

	BrokerRequireArg(fcinfo, 1, "max_messages");
	max_messages = PG_GETARG_INT32(1);
	if (max_messages < 1 || max_messages > BROKER_MAX_BATCH)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_messages must be between 1 and %d", BROKER_MAX_BATCH),
				 errdetail("The value given was %d.", max_messages)));
	if (lease != NULL && !BrokerIntervalIsPositive(lease))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be positive")));
	if (wait != NULL && BrokerIntervalIsNegative(wait))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("wait must not be negative")));
	waiting = wait != NULL && BrokerIntervalIsPositive(wait);

	BrokerRequireSharedMemory();
	InitMaterializedSRF(fcinfo, 0);

	BrokerSPIConnect();
	BrokerLockQueue(name, AccessShareLock, &q);
	state = BrokerQueueStateGet(q.queue_id, true);
	if (lease == NULL)
		lease = &q.lease;
	if (waiting)
	{
		deadline = BrokerTimestampPlus(GetCurrentTimestamp(), wait);
		ConditionVariablePrepareToSleep(&state->cv);
	}

	BrokerMaybeRefreshLwm(q.queue_id, state);

	for (;;)
	{
		int			ndead;
		long		timeout_ms;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		delivered += take_messages(&q, state, max_messages - delivered, lease,
								   rsinfo, &ndead);
		/* Dead-lettered rows took places in the batch: look again. */
		if (ndead > 0 && delivered < max_messages)
			continue;
		if (delivered > 0 || !waiting)
			break;
		now = GetCurrentTimestamp();
		if (now >= deadline)
			break;
		timeout_ms = (long) ((deadline - now + 999) / 1000);
		if (timeout_ms > BROKER_POLL_MS)
			timeout_ms = BROKER_POLL_MS;
		(void) ConditionVariableTimedSleep(&state->cv, timeout_ms,
										   PG_WAIT_EXTENSION);
	}
	if (waiting)
		ConditionVariableCancelSleep();

	BrokerSPIFinish();
	return (Datum) 0;
}
