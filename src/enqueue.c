/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  broker.enqueue and broker.enqueue_batch.
 *
 * Each message is a row in the caller's transaction (produce.c): it is
 * delivered if and only if that transaction commits.  A batch is one
 * statement for the whole array, every element checked before anything
 * is written.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "inflight.h"
#include "produce.h"
#include "qstate.h"
#include "queuedef.h"
#include "sql.h"
#include "store.h"
#include "util.h"

PG_FUNCTION_INFO_V1(broker_enqueue);
PG_FUNCTION_INFO_V1(broker_enqueue_batch);

/* When a message becomes deliverable and when it expires. */
typedef struct EnqueueTimes
{
	TimestampTz now;
	TimestampTz vt;
	bool		has_expiry;
	TimestampTz expires_at;
} EnqueueTimes;

/* Validate delay (arg 2) and ttl (arg 3); 22023 when out of range. */
static void
check_delay_ttl(FunctionCallInfo fcinfo)
{
	if (!PG_ARGISNULL(2) && BrokerIntervalIsNegative(PG_GETARG_INTERVAL_P(2)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delay must not be negative")));
	if (!PG_ARGISNULL(3) && !BrokerIntervalIsPositive(PG_GETARG_INTERVAL_P(3)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ttl must be positive")));
	if (!PG_ARGISNULL(2))
		BrokerCheckIntervalMax(PG_GETARG_INTERVAL_P(2), "delay");
	if (!PG_ARGISNULL(3))
		BrokerCheckIntervalMax(PG_GETARG_INTERVAL_P(3), "ttl");
}

/* When the message becomes deliverable and when it expires. */
static void
compute_times(FunctionCallInfo fcinfo, const BrokerQueue *q, EnqueueTimes *t)
{
	t->now = GetCurrentTimestamp();
	t->vt = PG_ARGISNULL(2) ? t->now :
		BrokerTimestampPlus(t->now, PG_GETARG_INTERVAL_P(2));
	t->has_expiry = true;
	if (!PG_ARGISNULL(3))
		t->expires_at = BrokerTimestampPlus(t->now, PG_GETARG_INTERVAL_P(3));
	else if (q->has_default_ttl)
		t->expires_at = BrokerTimestampPlus(t->now, &q->default_ttl);
	else
	{
		t->has_expiry = false;
		t->expires_at = 0;
	}
}

/* broker.enqueue(queue, payload, delay, ttl, headers) returns the id. */
Datum
broker_enqueue(PG_FUNCTION_ARGS)
{
	text	   *name = BrokerQueueArg(fcinfo, 0);
	Jsonb	   *payload;
	Jsonb	   *headers = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	BrokerQueue q;
	EnqueueTimes t;
	int64		id;

	BrokerRequireArg(fcinfo, 1, "payload");
	payload = PG_GETARG_JSONB_P(1);
	check_delay_ttl(fcinfo);
	BrokerRequireSharedMemory();
	BrokerRequireWritable("enqueue");

	BrokerSPIConnect();
	BrokerLockQueue(name, AccessShareLock, &q);
	BrokerCheckMessageSize(&q, payload, headers, 0);
	compute_times(fcinfo, &q, &t);
	id = BrokerEnqueueOne(&q, payload, headers, t.now, t.vt, t.has_expiry,
						  t.expires_at);
	BrokerSPIFinish();

	PG_RETURN_INT64(id);
}

/*
 * broker.enqueue_batch(queue, payloads[], delay, ttl, headers): one INSERT
 * for the whole array; every element is checked before anything is written.
 */
Datum
broker_enqueue_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *name = BrokerQueueArg(fcinfo, 0);
	ArrayType  *arr;
	Jsonb	   *headers = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	Datum	   *elems;
	bool	   *elem_nulls;
	int			n;
	Datum	   *ids;
	BrokerQueue q;
	EnqueueTimes t;
	BrokerNewMessage common;

	BrokerRequireArg(fcinfo, 1, "payloads");
	arr = PG_GETARG_ARRAYTYPE_P(1);
	check_delay_ttl(fcinfo);
	BrokerRequireSharedMemory();
	BrokerRequireWritable("enqueue");

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	deconstruct_array(arr, JSONBOID, -1, false, TYPALIGN_INT,
					  &elems, &elem_nulls, &n);
	for (int i = 0; i < n; i++)
	{
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("payload must not be null"),
					 errdetail("Element %d of payloads is null; nothing was enqueued.",
							   i + 1)));
	}

	/* The ids are read after SPI_finish: not in SPI's memory. */
	ids = palloc(Max(n, 1) * sizeof(Datum));

	BrokerSPIConnect();
	BrokerLockQueue(name, AccessShareLock, &q);
	if (n == 0)
	{
		BrokerSPIFinish();
		return (Datum) 0;
	}
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		BrokerCheckMessageSize(&q, (Jsonb *) DatumGetPointer(elems[i]), headers,
							   i + 1);
	}
	compute_times(fcinfo, &q, &t);

	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		ids[i] = Int64GetDatum(BrokerAllocateMessageId(q.queue_id));
	}

	common.queue_id = q.queue_id;
	common.id = 0;
	common.vt = t.vt;
	common.enqueued_at = t.now;
	common.has_expiry = t.has_expiry;
	common.expires_at = t.expires_at;
	common.payload = NULL;
	common.headers = headers;
	BrokerStoreInsertBatch(&common,
						   construct_array(ids, n, INT8OID, sizeof(int64),
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE),
						   arr, n);
	BrokerCount(q.queue_id, BROKER_COUNT_ENQUEUED, n);
	if (t.vt > t.now)
		BrokerNoteDue(q.queue_id, t.vt);
	else
		BrokerCount(q.queue_id, BROKER_COUNT_READY, n);
	BrokerSPIFinish();

	for (int i = 0; i < n; i++)
	{
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &ids[i], &isnull);
	}
	return (Datum) 0;
}
