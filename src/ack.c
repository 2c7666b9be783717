/*-------------------------------------------------------------------------
 *
 * ack.c
 *	  broker.delete (one, with an optional receipt; or many), broker.release
 *	  and broker.extend_lease.
 *
 * Each is one statement on the primary key.  A receipt is the value
 * dequeue wrote when it leased the message; if the message was delivered
 * again since, or released, the receipt no longer matches and the call
 * changes nothing.  A row locked by a consumer's open dequeue makes these
 * wait for that transaction (never the other way round: dequeue skips
 * locked rows), then re-check the receipt against the committed row.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "broker.h"

PG_FUNCTION_INFO_V1(broker_delete);
PG_FUNCTION_INFO_V1(broker_delete_text);
PG_FUNCTION_INFO_V1(broker_delete_many);
PG_FUNCTION_INFO_V1(broker_release);
PG_FUNCTION_INFO_V1(broker_extend_lease);

/* Look the queue up (no lock: these touch only existing rows). */
static void
ack_queue(FunctionCallInfo fcinfo, BrokerQueue *q)
{
	text	   *name = BrokerQueueArg(fcinfo, 0);

	BrokerRequireArg(fcinfo, 1, PG_NARGS() == 2 ? "ids" : "id");
	BrokerRequireWritable("acknowledge a message");
	BrokerSPIConnect();
	BrokerLookupQueue(name, false, q);
}

/*
 * Delete one message, with its receipt if has_receipt (caller is connected
 * to SPI); true if it was deleted.
 */
static bool
delete_one(const BrokerQueue *q, int64 id, bool has_receipt, int64 receipt)
{
	Datum		values[3];
	int			rc;
	bool		deleted;
	BrokerLeaseMatch match;
	BrokerPlanId plan;
	int			segs[BROKER_SEGMENTS];
	int			nsegs;

	values[0] = Int32GetDatum(q->queue_id);
	values[1] = Int64GetDatum(id);
	match = BrokerLeaseCheck(q->queue_id, id, has_receipt, receipt, &segs[0]);
	if (match == BROKER_LEASE_STALE)
		return false;
	if (match == BROKER_LEASE_HELD)
		nsegs = 1;				/* we know where the row we locked is */
	else
		nsegs = BrokerSegmentLookupOrder(id, segs);

	/* A lease of this transaction: its receipt is not in the row yet. */
	if (match == BROKER_LEASE_HELD || !has_receipt)
		plan = PLAN_DELETE;
	else
	{
		values[2] = Int64GetDatum(receipt);
		plan = PLAN_DELETE_RECEIPT;
	}
	deleted = false;
	for (int i = 0; i < nsegs && !deleted; i++)
	{
		rc = BrokerExecute(BrokerPlanSeg(plan, segs[i]), values, NULL, 0);
		if (rc != SPI_OK_DELETE)
			elog(ERROR, "broker: delete failed: %s", SPI_result_code_string(rc));
		deleted = SPI_processed > 0;
	}
	if (deleted)
	{
		BrokerNoteDeleted();
		BrokerCount(q->queue_id, BROKER_COUNT_DELETED, 1);
		BrokerLeaseDeleted(q->queue_id, id);
	}
	return deleted;
}

/* broker.delete(queue, id, receipt): true if it deleted the message. */
Datum
broker_delete(PG_FUNCTION_ARGS)
{
	BrokerQueue q;
	bool		deleted;

	ack_queue(fcinfo, &q);
	deleted = delete_one(&q, PG_GETARG_INT64(1), !PG_ARGISNULL(2),
						 PG_ARGISNULL(2) ? 0 : PG_GETARG_INT64(2));
	BrokerSPIFinish();
	PG_RETURN_BOOL(deleted);
}

/* A bigint given as text (22P02 when it is not one). */
static int64
text_to_int64(text *t)
{
	return DatumGetInt64(DirectFunctionCall1(int8in,
											 CStringGetDatum(text_to_cstring(t))));
}

/*
 * broker.delete(queue, id text, receipt text): the form that calls with
 * untyped parameters resolve to (PostgreSQL prefers text for an unknown
 * argument); the same as the bigint form.
 */
Datum
broker_delete_text(PG_FUNCTION_ARGS)
{
	BrokerQueue q;
	int64		id;
	int64		receipt = 0;
	bool		deleted;

	BrokerQueueArg(fcinfo, 0);
	BrokerRequireArg(fcinfo, 1, "id");
	id = text_to_int64(PG_GETARG_TEXT_PP(1));
	if (!PG_ARGISNULL(2))
		receipt = text_to_int64(PG_GETARG_TEXT_PP(2));
	ack_queue(fcinfo, &q);
	deleted = delete_one(&q, id, !PG_ARGISNULL(2), receipt);
	BrokerSPIFinish();
	PG_RETURN_BOOL(deleted);
}

/* broker.delete(queue, ids[]): deletes those that exist, returns them. */
Datum
broker_delete_many(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BrokerQueue q;
	Datum		values[2];
	int			rc;
	uint64		n = 0;

	ack_queue(fcinfo, &q);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	values[0] = Int32GetDatum(q.queue_id);
	values[1] = PG_GETARG_DATUM(1);
	/* every segment, drained ones too: they are only a hint (segment.c) */
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
	{
		rc = BrokerExecute(BrokerPlanSeg(PLAN_DELETE_MANY, seg), values,
						   NULL, 0);
		if (rc != SPI_OK_DELETE_RETURNING)
			elog(ERROR, "broker: delete failed: %s", SPI_result_code_string(rc));
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Datum		id = SPI_getbinval(SPI_tuptable->vals[i],
										   SPI_tuptable->tupdesc, 1, &isnull);

			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &id, &isnull);
			BrokerLeaseDeleted(q.queue_id, DatumGetInt64(id));
		}
		n += SPI_processed;
	}
	if (n > 0)
	{
		BrokerNoteDeleted();
		BrokerCount(q.queue_id, BROKER_COUNT_DELETED, (int64) n);
	}
	BrokerSPIFinish();
	return (Datum) 0;
}

/*
 * Run PLAN_RELEASE or PLAN_EXTEND: set vt to now + iv for the message if
 * the receipt matches.  Returns whether a row was updated.
 */
static bool
set_vt(FunctionCallInfo fcinfo, const BrokerQueue *q, BrokerPlanId plan,
	   const Interval *iv, TimestampTz *vt_out)
{
	Datum		values[4];
	int			rc;
	TimestampTz now = GetCurrentTimestamp();
	int			segs[BROKER_SEGMENTS];
	int			nsegs;
	int			i;

	values[0] = Int32GetDatum(q->queue_id);
	values[1] = PG_GETARG_DATUM(1);
	values[2] = PG_GETARG_DATUM(2);
	values[3] = TimestampTzGetDatum(iv ? BrokerTimestampPlus(now, iv) : now);
	nsegs = BrokerSegmentLookupOrder(PG_GETARG_INT64(1), segs);
	for (i = 0; i < nsegs; i++)
	{
		rc = BrokerExecute(BrokerPlanSeg(plan, segs[i]), values, NULL, 0);
		if (rc != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "broker: lease update failed: %s",
				 SPI_result_code_string(rc));
		if (SPI_processed > 0)
			break;
	}
	if (i == nsegs)
		return false;
	if (vt_out)
	{
		bool		isnull;

		*vt_out = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc,
													1, &isnull));
	}
	return true;
}

/* broker.release(queue, id, receipt, delay): give a lease back. */
Datum
broker_release(PG_FUNCTION_ARGS)
{
	BrokerQueue q;
	Interval   *delay = PG_ARGISNULL(3) ? NULL : PG_GETARG_INTERVAL_P(3);
	bool		done;
	TimestampTz vt = 0;

	BrokerRequireArg(fcinfo, 2, "receipt");
	BrokerRequireWritable("release a message");
	if (delay != NULL && BrokerIntervalIsNegative(delay))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delay must not be negative")));
	ack_queue(fcinfo, &q);
	if (BrokerLeaseCheck(q.queue_id, PG_GETARG_INT64(1), false, 0, NULL) != BROKER_LEASE_NONE)
	{
		/* leased by this transaction: change the lease it will write */
		TimestampTz now = GetCurrentTimestamp();

		vt = delay ? BrokerTimestampPlus(now, delay) : now;
		done = BrokerLeaseSetVt(q.queue_id, PG_GETARG_INT64(1),
								PG_GETARG_INT64(2), vt, true);
	}
	else
		done = set_vt(fcinfo, &q, PLAN_RELEASE, delay, &vt);
	if (done && delay != NULL && BrokerIntervalIsPositive(delay))
		BrokerNoteDue(q.queue_id, vt);
	else if (done)
		BrokerCount(q.queue_id, BROKER_COUNT_READY, 1);
	BrokerSPIFinish();
	PG_RETURN_BOOL(done);
}

/* broker.extend_lease(queue, id, receipt, lease): the new lease_until. */
Datum
broker_extend_lease(PG_FUNCTION_ARGS)
{
	BrokerQueue q;
	Interval   *lease;
	TimestampTz vt = 0;
	bool		done;

	BrokerRequireArg(fcinfo, 2, "receipt");
	BrokerRequireArg(fcinfo, 3, "lease");
	BrokerRequireWritable("extend a lease");
	lease = PG_GETARG_INTERVAL_P(3);
	if (!BrokerIntervalIsPositive(lease))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be positive")));
	ack_queue(fcinfo, &q);
	if (BrokerLeaseCheck(q.queue_id, PG_GETARG_INT64(1), false, 0, NULL) != BROKER_LEASE_NONE)
	{
		vt = BrokerTimestampPlus(GetCurrentTimestamp(), lease);
		done = BrokerLeaseSetVt(q.queue_id, PG_GETARG_INT64(1),
								PG_GETARG_INT64(2), vt, false);
	}
	else
		done = set_vt(fcinfo, &q, PLAN_EXTEND, lease, &vt);
	/* A shortened lease may run out before anything else a waiter knows. */
	if (done)
		BrokerNoteDue(q.queue_id, vt);
	BrokerSPIFinish();
	if (!done)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(vt);
}
