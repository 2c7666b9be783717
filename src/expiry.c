/*-------------------------------------------------------------------------
 *
 * expiry.c
 *	  Removing expired messages: one batch, counted per queue; and
 *	  broker.reap(), a whole pass in the caller's transaction.
 *
 * Expired messages are never delivered (dequeue filters them); this only
 * gives their space back.  A batch takes its rows FOR UPDATE SKIP LOCKED
 * (store.c), so it never waits on a consumer; what it removed is counted
 * in expired_total when its transaction commits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "acl.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

#include "expiry.h"
#include "inflight.h"
#include "qstate.h"
#include "queuedef.h"
#include "sql.h"
#include "store.h"
#include "util.h"

PG_FUNCTION_INFO_V1(broker_reap);

/* Count a queue's expired messages for the commit to publish. */
static void
count_expired(int32 queue_id, int64 n)
{
	BrokerCount(queue_id, BROKER_COUNT_EXPIRED, n);
}

/*
 * Delete up to "limit" messages (per segment) expired at "now", of one
 * queue if queue_id > 0; returns how many.  Caller is connected to SPI.
 */
uint64
BrokerExpireBatch(int32 queue_id, TimestampTz now, int limit)
{
	uint64		n = BrokerStoreExpire(queue_id, now, limit, count_expired);

	if (n > 0)
		BrokerNoteDeleted();
	return n;
}

/* broker.reap(queue): one pass now, in the caller's transaction. */
Datum
broker_reap(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	int32		queue_id = 0;
	int64		total = 0;

	BrokerRequireWritable("reap expired messages");
	BrokerSPIConnect();
	if (!PG_ARGISNULL(0))
	{
		BrokerQueue q;

		/* 42602 for a malformed name, 42704 for a missing queue. */
		BrokerLookupQueue(PG_GETARG_TEXT_PP(0), false, &q);
		BrokerCheckQueue(&q, BROKER_PRIV_ADMIN);
		queue_id = q.queue_id;
	}
	else
		BrokerRequireOwner("reap every queue");
	for (;;)
	{
		uint64		n;

		CHECK_FOR_INTERRUPTS();
		n = BrokerExpireBatch(queue_id, now, BROKER_REAP_BATCH);
		total += (int64) n;
		if (n < BROKER_REAP_BATCH)
			break;
	}
	/* and hand on the groups a remover could not (groups.c) */
	(void) BrokerStoreRepairGroups(queue_id);
	BrokerSPIFinish();
	PG_RETURN_INT64(total);
}
