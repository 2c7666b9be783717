/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  broker.enqueue and broker.enqueue_batch.
 *
 * A message is one INSERT into broker.messages, in the caller's
 * transaction: it is delivered if and only if that transaction commits.
 * Its id is allocated through the in-flight registry (shmem.c) so that
 * consumers' low-water marks never pass an id that has yet to commit.
 *
 * The size limit applies to what a message stores: the bytes of the
 * payload's and the headers' jsonb binary values, before any TOAST
 * compression (what pg_column_size reports for an uncompressed value, less
 * the 4-byte varlena header, added up).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "broker.h"

PG_FUNCTION_INFO_V1(broker_enqueue);
PG_FUNCTION_INFO_V1(broker_enqueue_batch);

/*
 * Refuse a message whose payload and headers together are larger than the
 * queue's max_message_size (54000).
 */
void
BrokerCheckMessageSize(const BrokerQueue *q, Jsonb *payload, Jsonb *headers,
					   int element)
{
	Size		size = VARSIZE_ANY_EXHDR(payload);
	Size		hsize = headers ? VARSIZE_ANY_EXHDR(headers) : 0;

	if (size + hsize > (Size) q->max_message_size)
	{
		if (element > 0)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("message too large: %zu bytes, queue \"%s\" accepts at most %d bytes",
							size + hsize, q->name, q->max_message_size),
					 errdetail("Element %d of payloads is %zu bytes and the headers %zu bytes; nothing was enqueued.",
							   element, size, hsize)));
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("message too large: %zu bytes, queue \"%s\" accepts at most %d bytes",
						size + hsize, q->name, q->max_message_size),
				 errdetail("The payload is %zu bytes and the headers %zu bytes, in their jsonb binary form.",
						   size, hsize)));
	}
}

/* Insert one message (caller holds the queue lock and an SPI connection). */
int64
BrokerEnqueueOne(const BrokerQueue *q, Jsonb *payload, Jsonb *headers,
				 TimestampTz now, TimestampTz vt, bool has_expiry,
				 TimestampTz expires_at)
{
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int64		id = BrokerAllocateMessageId(q->queue_id);
	int			seg = BrokerSegmentCurrent();
	int			rc;

	values[0] = Int32GetDatum(q->queue_id);
	values[1] = Int64GetDatum(id);
	values[2] = TimestampTzGetDatum(vt);
	values[3] = TimestampTzGetDatum(now);
	values[4] = TimestampTzGetDatum(expires_at);
	nulls[4] = has_expiry ? ' ' : 'n';
	values[5] = JsonbPGetDatum(payload);
	values[6] = headers ? JsonbPGetDatum(headers) : (Datum) 0;
	nulls[6] = headers ? ' ' : 'n';

	rc = BrokerExecute(BrokerPlanSeg(PLAN_ENQUEUE, seg), values, nulls, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "broker: enqueue failed: %s", SPI_result_code_string(rc));
	BrokerSegmentInserted(seg);
	BrokerCount(q->queue_id, BROKER_COUNT_ENQUEUED, 1);
	if (vt > now)
		BrokerNoteDue(q->queue_id, vt);
	else
		BrokerCount(q->queue_id, BROKER_COUNT_READY, 1);
	return id;
}

/* Settings shared by enqueue and enqueue_batch: delay, ttl, headers. */
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
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			rc;
	int			seg;

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

	values[0] = Int32GetDatum(q.queue_id);
	values[1] = PointerGetDatum(construct_array(ids, n, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = TimestampTzGetDatum(t.vt);
	values[3] = TimestampTzGetDatum(t.now);
	values[4] = TimestampTzGetDatum(t.expires_at);
	nulls[4] = t.has_expiry ? ' ' : 'n';
	values[5] = PointerGetDatum(arr);
	values[6] = headers ? JsonbPGetDatum(headers) : (Datum) 0;
	nulls[6] = headers ? ' ' : 'n';

	seg = BrokerSegmentCurrent();
	rc = BrokerExecute(BrokerPlanSeg(PLAN_ENQUEUE_BATCH, seg), values, nulls, 0);
	if (rc != SPI_OK_INSERT || SPI_processed != (uint64) n)
		elog(ERROR, "broker: batch enqueue failed: %s", SPI_result_code_string(rc));
	BrokerSegmentInserted(seg);
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
