/*-------------------------------------------------------------------------
 *
 * dequeue.c
 *	  broker.dequeue: take up to max_messages deliverable messages under a
 *	  lease, dead-lettering the ones that were delivered too often, and
 *	  optionally wait for new ones.
 *
 * The store claims the rows (FOR UPDATE SKIP LOCKED from the queue's
 * low-water mark, store.c); the lease -- visibility time, delivery count,
 * receipt -- is kept in backend memory and written at commit unless the
 * transaction deletes the message first (lease.c).  Rows delivered too
 * often are deleted by the same statement's transaction and moved to the
 * dead-letter queue (produce.c), so a rolled-back dequeue moves nothing.
 *
 * "Now" is the clock at the moment of the call (GetCurrentTimestamp), not
 * the transaction start: a lease runs for its full length from when it is
 * taken, and a long-polling call sees delays and leases run out (wait.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "ackcommit.h"
#include "acl.h"
#include "common/pg_prng.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/timestamp.h"

#include "inflight.h"
#include "lease.h"
#include "produce.h"
#include "qstate.h"
#include "queuedef.h"
#include "sql.h"
#include "store.h"
#include "util.h"
#include "wait.h"

PG_FUNCTION_INFO_V1(broker_dequeue);

/*
 * Claim up to limit messages and deliver them: the live ones into the
 * result set under a lease, the exhausted ones to the dead-letter queue.
 * Returns how many were delivered; *ndead_out says how many were
 * dead-lettered instead.
 */
static int
take_messages(const BrokerQueue *q, BrokerQueueState *state, int limit,
			  const Interval *lease, ReturnSetInfo *rsinfo, int *ndead_out)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz vt = BrokerTimestampPlus(now, lease);
	int64		nonce = (int64) (pg_prng_uint64(&pg_global_prng_state) >> 2);
	int32		maxdel = q->max_deliveries > 0 ? q->max_deliveries : PG_INT32_MAX;
	BrokerClaimSpec spec;
	BrokerClaimed *rows;
	BrokerClaimed *dead_rows = NULL;
	int			nrows;
	int			delivered = 0;
	int			ndead = 0;

	spec.queue_id = q->queue_id;
	spec.priorities = pg_atomic_read_u32(&state->priorities);
	for (int p = 0; p < BROKER_PRIORITIES; p++)
		spec.from_id[p] = (int64) pg_atomic_read_u64(&state->lwm[p]);
	spec.now = now;
	spec.limit = limit;
	/* Rows this transaction leased are locked by it: leave them out. */
	spec.exclude = BrokerLeaseHasQueue(q->queue_id) ?
		BrokerLeaseIds(q->queue_id) : NULL;
	nrows = BrokerStoreClaim(&spec, &rows);

	for (int i = 0; i < nrows; i++)
	{
		BrokerClaimed *c = &rows[i];
		Datum		out[8];
		bool		outnull[8] = {false, false, false, false, false, false, false, false};
		int64		receipt = nonce ^ c->id;	/* positive, new at each delivery */

		if (c->delivery_count >= maxdel)
		{
			if (dead_rows == NULL)
				dead_rows = palloc(sizeof(BrokerClaimed) * nrows);
			dead_rows[ndead++] = *c;
			continue;
		}
		out[0] = Int64GetDatum(c->id);
		out[1] = c->payload;
		out[2] = c->headers;
		outnull[2] = c->headers_null;
		out[3] = TimestampTzGetDatum(c->enqueued_at);
		out[4] = Int32GetDatum(c->delivery_count + 1);
		out[5] = TimestampTzGetDatum(vt);
		out[6] = c->expires_at;
		outnull[6] = c->expires_null;
		out[7] = Int64GetDatum(receipt);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnull);
		BrokerLeaseAdd(q->queue_id, c->id, &c->ref, c->delivery_count + 1,
					   receipt, vt);
		delivered++;
	}

	/* The lease's due time is noted when it is written (lease.c). */
	if (delivered > 0)
		BrokerCount(q->queue_id, BROKER_COUNT_DELIVERED, delivered);
	if (ndead > 0)
	{
		BrokerDeadMessage *dead = palloc(sizeof(BrokerDeadMessage) * ndead);

		int64	   *new_ids = palloc(sizeof(int64) * ndead);

		BrokerStoreDeleteClaimed(q->queue_id, dead_rows, ndead);
		for (int i = 0; i < ndead; i++)
		{
			dead[i].payload = DatumGetJsonbP(dead_rows[i].payload);
			dead[i].headers = dead_rows[i].headers_null ? NULL :
				DatumGetJsonbP(dead_rows[i].headers);
			dead[i].priority = dead_rows[i].priority;
		}
		BrokerDeadLetter(q, dead, ndead, new_ids);
		if (q->has_retention)
		{
			BrokerRemoved *rem = palloc(sizeof(BrokerRemoved) * ndead);

			for (int i = 0; i < ndead; i++)
			{
				rem[i].id = dead_rows[i].id;
				rem[i].delivery_count = dead_rows[i].delivery_count;
				rem[i].enqueued_at = dead_rows[i].enqueued_at;
				rem[i].vt = dead_rows[i].vt;
				rem[i].payload = dead_rows[i].payload;
				rem[i].headers = dead[i].headers;
				rem[i].priority = dead_rows[i].priority;
			}
			/* dropped after max_deliveries without a dead-letter queue: failed */
			BrokerKeepRecords(q, rem, ndead,
							  q->dead_letter_id != 0 ? "dead_lettered" : "failed",
							  NULL, new_ids);
		}
	}
	*ndead_out = ndead;
	return delivered;
}

/*
 * After a start (or a restore), which priorities a queue's messages have
 * is not known: look once.  Producers set their priority's bit before they
 * insert, so a look that misses a message in progress is made up for by
 * its producer.
 */
static void
discover_priorities(int32 queue_id, BrokerQueueState *state)
{
	uint32		used;
	uint64		resets;

	SpinLockAcquire(&state->mutex);
	resets = state->mark_resets;
	SpinLockRelease(&state->mutex);
	if (state->priorities_known)
		return;
	used = BrokerStorePrioritiesInUse(queue_id);
	pg_atomic_fetch_or_u32(&state->priorities, used);
	/* Not if the marks were reset meanwhile (rows loaded): look again. */
	SpinLockAcquire(&state->mutex);
	if (state->mark_resets == resets)
		state->priorities_known = true;
	SpinLockRelease(&state->mutex);
}

/*
 * Take up to max_messages; with a wait (w not NULL), sleep on the queue
 * until some are taken or the deadline passes.  Returns how many were
 * delivered.
 */
static int
take_or_wait(const BrokerQueue *q, BrokerQueueState *state, int max_messages,
			 const Interval *lease, ReturnSetInfo *rsinfo, BrokerWait *w,
			 TimestampTz deadline)
{
	int			delivered = 0;

	for (;;)
	{
		int			ndead;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		delivered += take_messages(q, state, max_messages - delivered,
								   lease, rsinfo, &ndead);
		/* Dead-lettered rows took places in the batch: look again. */
		if (ndead > 0 && delivered < max_messages)
			continue;
		if (delivered > 0 || w == NULL)
			break;
		if (w->woken)
			pg_atomic_fetch_add_u64(&state->empty_wakeups, 1);
		now = GetCurrentTimestamp();
		if (now >= deadline)
			break;
		if (!BrokerWaitNothingDue(q->queue_id, state, now))
			continue;
		BrokerWaitSleep(w, now, deadline);
	}
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
	bool		waiting;
	int			delivered;

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
	if (lease != NULL)
		BrokerCheckIntervalMax(lease, "lease");
	if (wait != NULL)
		BrokerCheckIntervalMax(wait, "wait");
	waiting = wait != NULL && BrokerIntervalIsPositive(wait);

	BrokerRequireSharedMemory();
	BrokerRequireWritable("dequeue");
	InitMaterializedSRF(fcinfo, 0);

	BrokerConsumeBegin();		/* its writes are a consumer's (ackcommit.c) */
	BrokerSPIConnect();
	BrokerLockQueue(name, AccessShareLock, &q);
	BrokerCheckQueue(&q, BROKER_PRIV_CONSUME);
	state = BrokerQueueStateGet(q.queue_id, true);
	discover_priorities(q.queue_id, state);
	if (lease == NULL)
		lease = &q.lease;
	BrokerCheckLease(lease, &q.max_lease, q.name);
	if (!waiting)
	{
		BrokerMaybeRefreshLwm(q.queue_id, state);
		delivered = take_or_wait(&q, state, max_messages, lease, rsinfo,
								 NULL, 0);
	}
	else
	{
		BrokerWait	w;
		TimestampTz deadline;

		/*
		 * The refresh may assign this transaction an xid (nextval logs every
		 * 32 calls); a waiter must not hold one while it sleeps, so it
		 * refreshes after its wait.
		 */
		deadline = BrokerTimestampPlus(GetCurrentTimestamp(), wait);
		BrokerWaitBegin(&w, state);
		PG_ENSURE_ERROR_CLEANUP(BrokerWaitAbandon, PointerGetDatum(&w));
		{
			delivered = take_or_wait(&q, state, max_messages, lease, rsinfo,
									 &w, deadline);
		}
		PG_END_ENSURE_ERROR_CLEANUP(BrokerWaitAbandon, PointerGetDatum(&w));
		BrokerWaitEnd(&w, delivered == max_messages);
		BrokerMaybeRefreshLwm(q.queue_id, state);
	}

	BrokerSPIFinish();
	BrokerConsumeEnd();
	return (Datum) 0;
}
