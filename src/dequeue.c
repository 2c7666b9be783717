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
 * Waiting: the backend sleeps on the queue's condition variable.  A
 * committing producer signals it once per message that became deliverable
 * (a one-message commit wakes one waiter, not all); a rolled-back dequeue
 * signals for the messages it gave back.  Messages that become deliverable
 * by the clock — a delay or a lease running out — are announced through
 * the queue's next_due time in shared memory: every transaction that
 * writes a future vt lowers it at commit (waking the waiters so they can
 * sleep less), and a waiter sleeps exactly until min(its deadline,
 * next_due).  A waiter that wakes at next_due and finds nothing computes
 * the next due time from the table.  The backend prepares to sleep before
 * it looks, so a commit between the look and the sleep is not missed.
 * statement_timeout, pg_cancel_backend and postmaster death end the wait.
 *
 * While it sleeps the backend does not hold the xmin horizon: it clears
 * MyProc->xmin (READ COMMITTED only; see docs/design.md, "Waiting", for
 * why this is safe for a dequeue and what a statement that waits must not
 * do afterwards).  Every look takes a new snapshot.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "access/xact.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/snapmgr.h"
#include "utils/builtins.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/datum.h"

#include "broker.h"


/* The longest single sleep of a waiting dequeue (it sleeps again). */
#define BROKER_MAX_SLEEP_MS		(3600 * 1000L)

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
take_messages(const BrokerQueue *q, BrokerQueueState *state, int seg, int limit,
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

	rc = BrokerExecute(BrokerPlanSeg(PLAN_DEQUEUE, seg), values, NULL, 0);
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

	if (delivered > 0)
	{
		BrokerCount(q->queue_id, BROKER_COUNT_DELIVERED, delivered);
		BrokerNoteDue(q->queue_id, DatumGetTimestampTz(values[4]));
	}
	if (ndead > 0)
		dead_letter(q, dead, ndead);
	*ndead_out = ndead;
	return delivered;
}

/*
 * The deferred form of take_messages (broker.defer_lease_write, the
 * default): lock the rows, keep their leases in backend memory (lease.c),
 * written at commit unless the transaction deletes the messages first.
 */
static int
take_messages_deferred(const BrokerQueue *q, BrokerQueueState *state, int seg,
					   int limit, const Interval *lease, ReturnSetInfo *rsinfo,
					   int *ndead_out)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz vt = BrokerTimestampPlus(now, lease);
	int64		nonce = (int64) (pg_prng_uint64(&pg_global_prng_state) >> 2);
	int32		maxdel = q->max_deliveries > 0 ? q->max_deliveries : PG_INT32_MAX;
	Datum		values[5];
	int			rc;
	int			delivered = 0;
	int			ndead = 0;
	Datum	   *dead_tids = NULL;
	SPITupleTable *tuptable;
	uint64		nrows;
	BrokerPlanId plan = PLAN_DEQUEUE_LOCK;

	values[0] = Int32GetDatum(q->queue_id);
	values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&state->lwm));
	values[2] = TimestampTzGetDatum(now);
	values[3] = Int32GetDatum(limit);
	/* Rows this transaction leased are locked by it: leave them out. */
	if (BrokerLeaseHasQueue(q->queue_id))
	{
		values[4] = PointerGetDatum(BrokerLeaseIds(q->queue_id));
		plan = PLAN_DEQUEUE_LOCK_EXCL;
	}

	rc = BrokerExecute(BrokerPlanSeg(plan, seg), values, NULL, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "broker: dequeue failed: %s", SPI_result_code_string(rc));

	tuptable = SPI_tuptable;
	nrows = SPI_processed;
	for (uint64 i = 0; i < nrows; i++)
	{
		HeapTuple	tup = tuptable->vals[i];
		TupleDesc	desc = tuptable->tupdesc;
		bool		isnull;
		ItemPointer tid = (ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 1, &isnull));
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		int32		count = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		Datum		out[8];
		bool		outnull[8] = {false, false, false, false, false, false, false, false};

		if (count >= maxdel)
		{
			if (dead_tids == NULL)
				dead_tids = palloc(sizeof(Datum) * nrows);
			dead_tids[ndead++] = PointerGetDatum(tid);
			continue;
		}
		out[0] = Int64GetDatum(id);
		out[1] = SPI_getbinval(tup, desc, 3, &outnull[1]);
		out[2] = SPI_getbinval(tup, desc, 4, &outnull[2]);
		out[3] = SPI_getbinval(tup, desc, 5, &outnull[3]);
		out[4] = Int32GetDatum(count + 1);
		out[5] = TimestampTzGetDatum(vt);
		out[6] = SPI_getbinval(tup, desc, 7, &outnull[6]);
		out[7] = Int64GetDatum(nonce ^ id);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnull);
		BrokerLeaseAdd(q->queue_id, id, seg, tid, count + 1, nonce ^ id, vt);
		delivered++;
	}

	/* The lease's due time is noted when it is written (lease.c). */
	if (delivered > 0)
		BrokerCount(q->queue_id, BROKER_COUNT_DELIVERED, delivered);
	if (ndead > 0)
	{
		DeadMessage *dead = palloc(sizeof(DeadMessage) * ndead);
		MemoryContext callcxt = CurrentMemoryContext;
		Datum		arg[1];

		arg[0] = PointerGetDatum(construct_array(dead_tids, ndead, TIDOID,
												 sizeof(ItemPointerData), false,
												 TYPALIGN_SHORT));
		rc = BrokerExecute(BrokerPlanSeg(PLAN_DELETE_TIDS, seg), arg, NULL, 0);
		if (rc != SPI_OK_DELETE_RETURNING)
			elog(ERROR, "broker: dead-lettering failed: %s", SPI_result_code_string(rc));
		ndead = (int) SPI_processed;
		for (int i = 0; i < ndead; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			bool		isnull;
			MemoryContext old = MemoryContextSwitchTo(callcxt);
			Datum		d = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);

			dead[i].payload = DatumGetJsonbPCopy(d);
			d = SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull);
			dead[i].headers = isnull ? NULL : DatumGetJsonbPCopy(d);
			MemoryContextSwitchTo(old);
		}
		if (ndead > 0)
			dead_letter(q, dead, ndead);
	}
	*ndead_out = ndead;
	return delivered;
}

/*
 * Take up to limit messages from the queue's segments, oldest segment
 * first; *ndead_out says how many were dead-lettered instead.
 */
static int
take_from_segments(const BrokerQueue *q, BrokerQueueState *state, int limit,
				   const Interval *lease, ReturnSetInfo *rsinfo, int *ndead_out)
{
	int			segs[BROKER_SEGMENTS];
	int			nsegs = BrokerSegmentScanOrder(segs);
	int			delivered = 0;

	*ndead_out = 0;
	for (int i = 0; i < nsegs && delivered < limit; i++)
	{
		int			ndead = 0;

		if (broker_defer_lease_write)
			delivered += take_messages_deferred(q, state, segs[i], limit - delivered,
												lease, rsinfo, &ndead);
		else
			delivered += take_messages(q, state, segs[i], limit - delivered,
									   lease, rsinfo, &ndead);
		*ndead_out += ndead;
	}
	return delivered;
}

/*
 * Nothing was deliverable at "now" although next_due said something would
 * be: find the real next due time in the table (only the backend that
 * claims the stale value does it).
 */
static void
refresh_next_due(const BrokerQueue *q, BrokerQueueState *state,
				 TimestampTz stale, TimestampTz now)
{
	uint64		expected = (uint64) stale;
	Datum		values[3];
	int			rc;
	bool		isnull;
	Datum		d;

	if (!pg_atomic_compare_exchange_u64(&state->next_due, &expected,
										(uint64) BROKER_NO_DUE))
		return;
	values[0] = Int32GetDatum(q->queue_id);
	values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&state->lwm));
	values[2] = TimestampTzGetDatum(now);
	rc = BrokerExecute(BrokerPlan(PLAN_NEXT_DUE), values, NULL, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "broker: next-due lookup failed: %s", SPI_result_code_string(rc));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		BrokerLowerNextDue(state, DatumGetTimestampTz(d));
}

/*
 * Sleep on the queue until woken or the deadline.  One waiter per queue,
 * the timekeeper, sleeps no longer than next_due; the others sleep until
 * their deadlines and are woken one at a time, by commits or when
 * next_due moves earlier than what the timekeeper sleeps toward (the one
 * woken then takes over).  The backend does not hold back the xmin
 * horizon while it sleeps (READ COMMITTED).
 */
static bool
sleep_on_queue(BrokerQueueState *state, TimestampTz now, TimestampTz deadline)
{
	volatile bool keeper = false;
	volatile long timeout_ms;
	TimestampTz until = deadline;
	TimestampTz due = (TimestampTz) pg_atomic_read_u64(&state->next_due);

	SpinLockAcquire(&state->mutex);
	if (due != BROKER_NO_DUE &&
		(state->timekeeper < 0 || state->keeper_due > due))
	{
		state->timekeeper = MyProc->pgprocno;
		state->keeper_due = due;
		keeper = true;
		until = Min(deadline, due);
	}
	SpinLockRelease(&state->mutex);

	if (!IsolationUsesXactSnapshot())
	{
		InvalidateCatalogSnapshot();
		MyProc->xmin = InvalidTransactionId;
	}
	/*
	 * At most BROKER_MAX_SLEEP_MS at a time: WaitLatch's timeout is an int
	 * of milliseconds (24.8 days), and the caller's loop sleeps again.
	 */
	timeout_ms = until > now ?
		(long) Min(Max((until - now + 999) / 1000, 1), BROKER_MAX_SLEEP_MS) : 0;
	pg_atomic_fetch_add_u32(&state->waiters, 1);
	PG_TRY();
	{
		if (timeout_ms > 0)
			(void) ConditionVariableTimedSleep(&state->cv, timeout_ms,
											   PG_WAIT_EXTENSION);
	}
	PG_FINALLY();
	{
		pg_atomic_fetch_sub_u32(&state->waiters, 1);
		if (keeper)
		{
			SpinLockAcquire(&state->mutex);
			if (state->timekeeper == MyProc->pgprocno)
			{
				state->timekeeper = -1;
				state->keeper_due = BROKER_NO_DUE;
			}
			SpinLockRelease(&state->mutex);
		}
	}
	PG_END_TRY();
	pg_atomic_fetch_add_u64(&state->wakeups, 1);
	return keeper;
}

/*
 * A waiter is leaving with messages.  If it kept time and took a full
 * batch, more messages may have become due at once; if something is due
 * and nobody keeps time, someone must: wake one other waiter in either
 * case.  (Messages made deliverable by commits wake waiters themselves.)
 */
static void
hand_over(BrokerQueueState *state, bool full_batch)
{
	bool		keeperless;

	if (pg_atomic_read_u32(&state->waiters) == 0)
		return;
	SpinLockAcquire(&state->mutex);
	keeperless = state->timekeeper < 0;
	SpinLockRelease(&state->mutex);
	if (full_batch ||
		(keeperless &&
		 (TimestampTz) pg_atomic_read_u64(&state->next_due) != BROKER_NO_DUE))
		ConditionVariableSignal(&state->cv);
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
	bool		woken = false;
	bool		was_keeper = false;
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
	BrokerRequireWritable("dequeue");
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

	/*
	 * The refresh may assign this transaction an xid (nextval logs every
	 * 32 calls); a waiter must not hold one while it sleeps, so it
	 * refreshes after its wait.
	 */
	if (!waiting)
		BrokerMaybeRefreshLwm(q.queue_id, state);

	for (;;)
	{
		int			ndead;
		TimestampTz now;
		TimestampTz due;

		CHECK_FOR_INTERRUPTS();
		delivered += take_from_segments(&q, state, max_messages - delivered,
										lease, rsinfo, &ndead);
		/* Dead-lettered rows took places in the batch: look again. */
		if (ndead > 0 && delivered < max_messages)
			continue;
		if (delivered > 0 || !waiting)
			break;
		if (woken)
			pg_atomic_fetch_add_u64(&state->empty_wakeups, 1);
		now = GetCurrentTimestamp();
		if (now >= deadline)
			break;
		due = (TimestampTz) pg_atomic_read_u64(&state->next_due);
		if (due <= now)
		{
			/* What was due has been taken, or is gone: find the next. */
			refresh_next_due(&q, state, due, now);
			due = (TimestampTz) pg_atomic_read_u64(&state->next_due);
			if (due <= now)
				continue;
		}
		was_keeper = sleep_on_queue(state, now, deadline);
		woken = true;
	}
	if (woken)
		hand_over(state, was_keeper && delivered == max_messages);
	if (waiting)
	{
		ConditionVariableCancelSleep();
		BrokerMaybeRefreshLwm(q.queue_id, state);
	}

	BrokerSPIFinish();
	return (Datum) 0;
}
