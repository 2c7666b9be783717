/*-------------------------------------------------------------------------
 *
 * jobs.c
 *	  broker.status (one id or many) and broker.archive: a job looked up by
 *	  id, live in its queue or as the record of its outcome (records.c).
 *
 * complete and fail are with the other acknowledgements (ack.c); what a
 * removal records is in produce.c.  A lookup is plain reads under the
 * caller's snapshot: it takes no lock and never waits on consumers, and an
 * enqueue not yet committed is unknown to it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "acl.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "queuedef.h"
#include "sql.h"
#include "store.h"
#include "util.h"

PG_FUNCTION_INFO_V1(broker_status);
PG_FUNCTION_INFO_V1(broker_status_many);
PG_FUNCTION_INFO_V1(broker_status_text);
PG_FUNCTION_INFO_V1(broker_archive);

#define BROKER_ARCHIVE_MAX_ROWS		10000

/* Put jobs into the result set (broker.job's columns). */
static void
put_jobs(ReturnSetInfo *rsinfo, const BrokerJob *jobs, int n)
{
	for (int i = 0; i < n; i++)
	{
		const BrokerJob *j = &jobs[i];
		Datum		out[9];
		bool		outnull[9] = {false, false, false, false, false, false,
		false, false, false};

		out[0] = Int64GetDatum(j->id);
		out[1] = CStringGetTextDatum(j->state);
		out[2] = Int32GetDatum(j->delivery_count);
		out[3] = TimestampTzGetDatum(j->enqueued_at);
		out[4] = TimestampTzGetDatum(j->visible_at);
		out[5] = TimestampTzGetDatum(j->finished_at);
		outnull[5] = !j->has_finished;
		out[6] = j->payload;
		out[7] = j->headers;
		outnull[7] = j->headers_null;
		out[8] = j->result;
		outnull[8] = j->result_null;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnull);
	}
}

/* The start of the queue's retention at "now" (false: it keeps none). */
static bool
retention_since(const BrokerQueue *q, TimestampTz now, TimestampTz *since)
{
	if (!q->has_retention)
		return false;
	*since = BrokerWindowStart(now, &q->retention);
	return true;
}

/* status for an array of ids (the one-id form builds one). */
static Datum
status_of(FunctionCallInfo fcinfo, ArrayType *ids)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *name = BrokerQueueArg(fcinfo, 0);
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz since = 0;
	BrokerQueue q;
	BrokerJob  *jobs;
	int			n;
	bool		keeps;

	InitMaterializedSRF(fcinfo, 0);
	BrokerSPIConnect();
	BrokerLookupQueue(name, false, &q);
	BrokerCheckQueue(&q, BROKER_PRIV_CONSUME);
	keeps = retention_since(&q, now, &since);
	n = BrokerStoreJobs(q.queue_id, ids, now, keeps, since, &jobs);
	put_jobs(rsinfo, jobs, n);
	BrokerSPIFinish();
	return (Datum) 0;
}

/* broker.status(queue, id): zero or one job. */
Datum
broker_status(PG_FUNCTION_ARGS)
{
	Datum		id;

	BrokerRequireArg(fcinfo, 1, "id");
	id = PG_GETARG_DATUM(1);
	return status_of(fcinfo, construct_array(&id, 1, INT8OID, sizeof(int64),
											 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * broker.status(queue, id text): the form that a call with an untyped
 * parameter resolves to (as for delete); the same as the bigint form.
 */
Datum
broker_status_text(PG_FUNCTION_ARGS)
{
	Datum		id;

	BrokerRequireArg(fcinfo, 1, "id");
	id = DirectFunctionCall1(int8in, CStringGetDatum(text_to_cstring(PG_GETARG_TEXT_PP(1))));
	return status_of(fcinfo, construct_array(&id, 1, INT8OID, sizeof(int64),
											 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* broker.status(queue, ids[]): the jobs known, in id order. */
Datum
broker_status_many(PG_FUNCTION_ARGS)
{
	BrokerRequireArg(fcinfo, 1, "ids");
	return status_of(fcinfo, PG_GETARG_ARRAYTYPE_P(1));
}

/*
 * broker.archive(queue, after_id, max_rows): the kept records, in id order
 * after after_id.
 */
Datum
broker_archive(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *name = BrokerQueueArg(fcinfo, 0);
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz since;
	int64		after_id;
	int32		max_rows;
	BrokerQueue q;

	BrokerRequireArg(fcinfo, 1, "after_id");
	BrokerRequireArg(fcinfo, 2, "max_rows");
	after_id = PG_GETARG_INT64(1);
	max_rows = PG_GETARG_INT32(2);
	if (max_rows < 1 || max_rows > BROKER_ARCHIVE_MAX_ROWS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_rows must be between 1 and %d", BROKER_ARCHIVE_MAX_ROWS),
				 errdetail("The value given was %d.", max_rows)));

	InitMaterializedSRF(fcinfo, 0);
	BrokerSPIConnect();
	BrokerLookupQueue(name, false, &q);
	BrokerCheckQueue(&q, BROKER_PRIV_CONSUME);
	if (retention_since(&q, now, &since))
	{
		BrokerJob  *jobs;
		int			n = BrokerStoreArchive(q.queue_id, after_id, since, max_rows, &jobs);

		put_jobs(rsinfo, jobs, n);
	}
	BrokerSPIFinish();
	return (Datum) 0;
}
