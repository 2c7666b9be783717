/*-------------------------------------------------------------------------
 *
 * ack.c
 *	  broker.delete (one, with an optional receipt; or many), broker.release
 *	  and broker.extend_lease.
 *
 * Each is one statement on the primary key (store.c).  A receipt is the
 * value dequeue handed out with the message; if the message was delivered
 * again since, or released, the receipt no longer matches and the call
 * changes nothing.  A row locked by a consumer's open dequeue makes these
 * wait for that transaction (never the other way round: dequeue skips
 * locked rows), then re-check the receipt against the committed row.  In
 * the transaction that leased the message, the receipt is checked against
 * the lease it holds in memory (lease.c), which is not in the row yet.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "ackcommit.h"
#include "acl.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "inflight.h"
#include "lease.h"
#include "produce.h"
#include "qstate.h"
#include "queuedef.h"
#include "sql.h"
#include "store.h"
#include "util.h"

PG_FUNCTION_INFO_V1(broker_delete);
PG_FUNCTION_INFO_V1(broker_delete_text);
PG_FUNCTION_INFO_V1(broker_delete_many);
PG_FUNCTION_INFO_V1(broker_release);
PG_FUNCTION_INFO_V1(broker_extend_lease);
PG_FUNCTION_INFO_V1(broker_complete);
PG_FUNCTION_INFO_V1(broker_fail);

/*
 * Look the queue up (no lock: these touch only existing rows).  What these
 * functions write is a consumer's (ackcommit.c): ack_done ends it.
 */
static void
ack_queue(FunctionCallInfo fcinfo, BrokerQueue *q)
{
	text	   *name = BrokerQueueArg(fcinfo, 0);

	BrokerRequireArg(fcinfo, 1, PG_NARGS() == 2 ? "ids" : "id");
	BrokerRequireWritable("acknowledge a message");
	BrokerConsumeBegin();
	BrokerSPIConnect();
	BrokerLookupQueue(name, false, q);
	BrokerCheckQueue(q, BROKER_PRIV_CONSUME);
}

/* The end of what ack_queue began. */
static void
ack_done(void)
{
	BrokerSPIFinish();
	BrokerConsumeEnd();
}

/*
 * Delete one message, with its receipt if has_receipt (caller is connected
 * to SPI); true if it was deleted.  *removed (if not NULL) gets what it
 * was: with this transaction's own lease, as the lease has it.
 */
static bool
remove_one(const BrokerQueue *q, int64 id, bool has_receipt, int64 receipt,
		   BrokerRemoved *removed)
{
	BrokerRowRef ref;
	BrokerLeaseMatch match;
	bool		deleted;

	match = BrokerLeaseCheck(q->queue_id, id, has_receipt, receipt, &ref);
	if (match == BROKER_LEASE_STALE)
		return false;
	/* A lease of this transaction: we know where the row is, no receipt in it. */
	if (match == BROKER_LEASE_HELD)
		deleted = BrokerStoreDelete(q->queue_id, id, false, 0, &ref, removed);
	else
		deleted = BrokerStoreDelete(q->queue_id, id, has_receipt, receipt, NULL,
									removed);
	if (deleted)
	{
		if (removed && match == BROKER_LEASE_HELD)
			(void) BrokerLeasePending(q->queue_id, id, &removed->delivery_count,
									  &removed->vt);
		BrokerNoteDeleted();
		BrokerLeaseDeleted(q->queue_id, id);
	}
	return deleted;
}

/* delete: remove, count, keep a "deleted" record if the queue keeps them. */
static bool
delete_one(const BrokerQueue *q, int64 id, bool has_receipt, int64 receipt)
{
	BrokerRemoved removed;
	bool		deleted = remove_one(q, id, has_receipt, receipt,
									 q->has_retention ? &removed : NULL);

	if (deleted)
	{
		BrokerCount(q->queue_id, BROKER_COUNT_DELETED, 1);
		if (q->has_retention)
			BrokerKeepRecords(q, &removed, 1, "deleted", NULL, NULL);
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
	ack_done();
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
	ack_done();
	PG_RETURN_BOOL(deleted);
}

/*
 * Split the ids of a delete: those of messages this transaction leased (and
 * has not deleted), with where their rows are, and the others (NULL if
 * there are none).
 */
static void
held_or_not(int32 queue_id, ArrayType *ids, BrokerRowRef **held, int *nheld,
			ArrayType **others)
{
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int			nothers = 0;

	deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &nulls, &nelems);
	*held = palloc(sizeof(BrokerRowRef) * Max(nelems, 1));
	*nheld = 0;
	for (int i = 0; i < nelems; i++)
	{
		if (nulls[i])
			continue;			/* matches no message, as = ANY says */
		if (BrokerLeaseCheck(queue_id, DatumGetInt64(elems[i]), false, 0,
							 &(*held)[*nheld]) == BROKER_LEASE_HELD)
			(*nheld)++;
		else
			elems[nothers++] = elems[i];
	}
	*others = nothers == 0 ? NULL :
		construct_array(elems, nothers, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
						TYPALIGN_DOUBLE);
}

/* broker.delete(queue, ids[]): deletes those that exist, returns them. */
Datum
broker_delete_many(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BrokerQueue q;
	int64	   *deleted;
	BrokerRemoved *removed = NULL;
	BrokerRowRef *held;
	int			nheld;
	ArrayType  *others;
	int			n;

	ack_queue(fcinfo, &q);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	held_or_not(q.queue_id, PG_GETARG_ARRAYTYPE_P(1), &held, &nheld, &others);
	n = BrokerStoreDeleteMany(q.queue_id, others, held, nheld, &deleted,
							  q.has_retention ? &removed : NULL);
	for (int i = 0; i < n; i++)
	{
		Datum		id = Int64GetDatum(deleted[i]);
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &id, &isnull);
		if (removed)
			(void) BrokerLeasePending(q.queue_id, deleted[i],
									  &removed[i].delivery_count, &removed[i].vt);
		BrokerLeaseDeleted(q.queue_id, deleted[i]);
	}
	if (n > 0)
	{
		BrokerNoteDeleted();
		BrokerCount(q.queue_id, BROKER_COUNT_DELETED, (int64) n);
		BrokerKeepRecords(&q, removed, n, "deleted", NULL, NULL);
	}
	ack_done();
	return (Datum) 0;
}

/*
 * A result or error for a job's record: no larger than the queue's
 * max_message_size (54000, nothing changed), with or without retention.
 */
static Jsonb *
outcome_arg(FunctionCallInfo fcinfo, int argno, const BrokerQueue *q,
			const char *what)
{
	Jsonb	   *j;
	Size		size;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	j = PG_GETARG_JSONB_P(argno);
	size = VARSIZE_ANY_EXHDR(j);
	if (size > (Size) q->max_message_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s too large: %zu bytes, queue \"%s\" accepts at most %d bytes",
						what, size, q->name, q->max_message_size),
				 errdetail("The %s is measured like a payload, in its jsonb binary form; nothing was changed.",
						   what)));
	return j;
}

/*
 * broker.complete(queue, id, receipt, result): remove the message as delete
 * does and record it done, with the result.
 */
Datum
broker_complete(PG_FUNCTION_ARGS)
{
	BrokerQueue q;
	BrokerRemoved removed;
	Jsonb	   *result;
	bool		done;

	ack_queue(fcinfo, &q);
	result = outcome_arg(fcinfo, 3, &q, "result");
	done = remove_one(&q, PG_GETARG_INT64(1), !PG_ARGISNULL(2),
					  PG_ARGISNULL(2) ? 0 : PG_GETARG_INT64(2),
					  q.has_retention ? &removed : NULL);
	if (done)
	{
		BrokerCount(q.queue_id, BROKER_COUNT_COMPLETED, 1);
		BrokerKeepRecords(&q, &removed, 1, "done", result, NULL);
	}
	ack_done();
	PG_RETURN_BOOL(done);
}

/*
 * broker.fail(queue, id, receipt, error): the job is not retried: the
 * message leaves the queue, to the dead-letter queue if there is one
 * (record dead_lettered), else for good (record failed).
 */
Datum
broker_fail(PG_FUNCTION_ARGS)
{
	BrokerQueue q;
	BrokerRemoved removed;
	Jsonb	   *error;
	bool		done;
	int64		new_id = 0;

	ack_queue(fcinfo, &q);
	error = outcome_arg(fcinfo, 3, &q, "error");
	done = remove_one(&q, PG_GETARG_INT64(1), !PG_ARGISNULL(2),
					  PG_ARGISNULL(2) ? 0 : PG_GETARG_INT64(2), &removed);
	if (done)
	{
		BrokerCount(q.queue_id, BROKER_COUNT_FAILED, 1);
		if (q.dead_letter_id != 0)
		{
			BrokerDeadMessage dead;

			dead.payload = DatumGetJsonbP(removed.payload);
			dead.headers = removed.headers;
			dead.priority = removed.priority;
			BrokerDeadLetter(&q, &dead, 1, &new_id);
		}
		BrokerKeepRecords(&q, &removed, 1,
						  q.dead_letter_id != 0 ? "dead_lettered" : "failed",
						  error, &new_id);
	}
	ack_done();
	PG_RETURN_BOOL(done);
}

/*
 * Set a message's visibility time to vt if the receipt matches: through
 * the pending lease when this transaction leased it, else in the row.
 * release also clears the receipt.  True if done; *vt_out is the new time.
 */
static bool
set_vt(const BrokerQueue *q, int64 id, int64 receipt, TimestampTz vt,
	   bool release, TimestampTz *vt_out)
{
	*vt_out = vt;
	if (BrokerLeaseCheck(q->queue_id, id, false, 0, NULL) != BROKER_LEASE_NONE)
		return BrokerLeaseSetVt(q->queue_id, id, receipt, vt, release);
	return BrokerStoreSetVt(q->queue_id, id, receipt, vt, release, vt_out);
}

/* broker.release(queue, id, receipt, delay): give a lease back. */
Datum
broker_release(PG_FUNCTION_ARGS)
{
	BrokerQueue q;
	Interval   *delay = PG_ARGISNULL(3) ? NULL : PG_GETARG_INTERVAL_P(3);
	TimestampTz now;
	TimestampTz vt;
	bool		done;

	BrokerRequireArg(fcinfo, 2, "receipt");
	BrokerRequireWritable("release a message");
	if (delay != NULL && BrokerIntervalIsNegative(delay))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delay must not be negative")));
	if (delay != NULL)
		BrokerCheckIntervalMax(delay, "delay");
	ack_queue(fcinfo, &q);
	now = GetCurrentTimestamp();
	done = set_vt(&q, PG_GETARG_INT64(1), PG_GETARG_INT64(2),
				  delay ? BrokerTimestampPlus(now, delay) : now, true, &vt);
	if (done && delay != NULL && BrokerIntervalIsPositive(delay))
		BrokerNoteDue(q.queue_id, vt);
	else if (done)
		BrokerCount(q.queue_id, BROKER_COUNT_READY, 1);
	ack_done();
	PG_RETURN_BOOL(done);
}

/* broker.extend_lease(queue, id, receipt, lease): the new lease_until. */
Datum
broker_extend_lease(PG_FUNCTION_ARGS)
{
	BrokerQueue q;
	Interval   *lease;
	TimestampTz vt;
	bool		done;

	BrokerRequireArg(fcinfo, 2, "receipt");
	BrokerRequireArg(fcinfo, 3, "lease");
	BrokerRequireWritable("extend a lease");
	lease = PG_GETARG_INTERVAL_P(3);
	if (!BrokerIntervalIsPositive(lease))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be positive")));
	BrokerCheckIntervalMax(lease, "lease");
	ack_queue(fcinfo, &q);
	BrokerCheckLease(lease, &q.max_lease, q.name);
	done = set_vt(&q, PG_GETARG_INT64(1), PG_GETARG_INT64(2),
				  BrokerTimestampPlus(GetCurrentTimestamp(), lease), false, &vt);
	/* A shortened lease may run out before anything else a waiter knows. */
	if (done)
		BrokerNoteDue(q.queue_id, vt);
	ack_done();
	if (!done)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(vt);
}
