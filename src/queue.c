/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  broker.create_queue, broker.drop_queue, broker.purge_queue.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "acl.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/inval.h"

#include "catalog.h"
#include "inflight.h"
#include "qstate.h"
#include "queuedef.h"
#include "sql.h"
#include "store.h"
#include "topics.h"
#include "util.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"

static BrokerStmt insert_queue = {
	"INSERT INTO broker.queue_defs AS q (queue_id, name, lease,"
	"       max_message_size, default_ttl, max_deliveries, dead_letter_id,"
	"       dedup_window, retention, max_lease)"
	" VALUES (pg_catalog.nextval('broker.queue_id_seq'::pg_catalog.regclass),"
	"         $1, $2, $3, $4, $5, $6, $7, $8, $9)"
	" ON CONFLICT (name) DO NOTHING RETURNING q.queue_id",
	9, {TEXTOID, INTERVALOID, INT4OID, INTERVALOID, INT4OID, INT4OID, INTERVALOID,
	INTERVALOID, INTERVALOID}, 0, {NULL}
};

/* The queues that use $1 as their dead-letter queue. */
static BrokerStmt dead_letter_users = {
	"SELECT pg_catalog.string_agg(q.name, ', ' ORDER BY q.name)"
	"  FROM broker.queue_defs q"
	" WHERE q.dead_letter_id " OP("=") " $1",
	1, {INT4OID}, 0, {NULL}
};

static BrokerStmt delete_queue = {
	"DELETE FROM broker.queue_defs q WHERE q.queue_id " OP("=") " $1",
	1, {INT4OID}, 0, {NULL}
};

PG_FUNCTION_INFO_V1(broker_create_queue);
PG_FUNCTION_INFO_V1(broker_drop_queue);
PG_FUNCTION_INFO_V1(broker_purge_queue);

/* Validate the settings of create_queue; 22023 names the bad one. */
static void
check_queue_settings(Interval *lease, int32 max_message_size,
					 Interval *default_ttl, bool has_max_deliveries,
					 int32 max_deliveries)
{
	if (!BrokerIntervalIsPositive(lease))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be positive")));
	BrokerCheckIntervalMax(lease, "lease");
	if (max_message_size < 1 || max_message_size > BROKER_MAX_MESSAGE_SIZE_LIMIT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_message_size must be between 1 and %d bytes",
						BROKER_MAX_MESSAGE_SIZE_LIMIT),
				 errdetail("The value given was %d.", max_message_size)));
	if (default_ttl != NULL && !BrokerIntervalIsPositive(default_ttl))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("default_ttl must be positive")));
	if (default_ttl != NULL)
		BrokerCheckIntervalMax(default_ttl, "default_ttl");
	if (has_max_deliveries && max_deliveries < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_deliveries must be at least 1"),
				 errdetail("The value given was %d.", max_deliveries)));
}

/*
 * broker.create_queue(queue, lease, max_message_size, default_ttl,
 *					   max_deliveries, dead_letter_queue, if_not_exists,
 *					   dedup_window, retention, max_lease)
 */
Datum
broker_create_queue(PG_FUNCTION_ARGS)
{
	text	   *name = BrokerQueueArg(fcinfo, 0);
	Interval   *lease;
	int32		max_message_size;
	Interval   *default_ttl = PG_ARGISNULL(3) ? NULL : PG_GETARG_INTERVAL_P(3);
	bool		if_not_exists;
	Interval   *dedup_window;
	Interval   *retention = NULL;
	Interval   *max_lease;
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			rc;

	BrokerRequireArg(fcinfo, 1, "lease");
	BrokerRequireArg(fcinfo, 2, "max_message_size");
	BrokerRequireArg(fcinfo, 6, "if_not_exists");
	BrokerRequireWritable("create a queue");
	lease = PG_GETARG_INTERVAL_P(1);
	max_message_size = PG_GETARG_INT32(2);
	if_not_exists = PG_GETARG_BOOL(6);
	/* (0.1.0's declaration has no dedup_window: checked for its version later) */
	if (PG_NARGS() > 7)
	{
		BrokerRequireArg(fcinfo, 7, "dedup_window");
		dedup_window = PG_GETARG_INTERVAL_P(7);
	}
	else
	{
		dedup_window = palloc0(sizeof(Interval));
		dedup_window->time = 5 * 60 * USECS_PER_SEC;
	}
	if (!BrokerIntervalIsPositive(dedup_window))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("dedup_window must be positive")));
	BrokerCheckIntervalMax(dedup_window, "dedup_window");
	if (PG_NARGS() > 8 && !PG_ARGISNULL(8))
	{
		retention = PG_GETARG_INTERVAL_P(8);
		if (!BrokerIntervalIsPositive(retention))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("retention must be positive"),
					 errhint("Use NULL to keep no records.")));
		BrokerCheckIntervalMax(retention, "retention");
	}
	if (PG_NARGS() > 9)
	{
		BrokerRequireArg(fcinfo, 9, "max_lease");
		max_lease = PG_GETARG_INTERVAL_P(9);
	}
	else
	{
		max_lease = palloc0(sizeof(Interval));
		max_lease->time = 12 * USECS_PER_HOUR;
	}
	if (!BrokerIntervalIsPositive(max_lease))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_lease must be positive")));
	BrokerCheckIntervalMax(max_lease, "max_lease");

	check_queue_settings(lease, max_message_size, default_ttl,
						 !PG_ARGISNULL(4), PG_ARGISNULL(4) ? 0 : PG_GETARG_INT32(4));
	if (BrokerIntervalCompare(lease, max_lease) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must not be longer than max_lease"),
				 errdetail("The queue's default lease would be refused by its own maximum."),
				 errhint("Pass a longer max_lease, or a shorter lease.")));

	BrokerSPIConnect();

	values[0] = PointerGetDatum(name);
	values[1] = IntervalPGetDatum(lease);
	values[2] = Int32GetDatum(max_message_size);
	values[3] = default_ttl ? IntervalPGetDatum(default_ttl) : (Datum) 0;
	nulls[3] = default_ttl ? ' ' : 'n';
	values[4] = PG_ARGISNULL(4) ? (Datum) 0 : Int32GetDatum(PG_GETARG_INT32(4));
	nulls[4] = PG_ARGISNULL(4) ? 'n' : ' ';
	values[5] = (Datum) 0;
	nulls[5] = 'n';
	values[6] = IntervalPGetDatum(dedup_window);
	values[7] = retention ? IntervalPGetDatum(retention) : (Datum) 0;
	nulls[7] = retention ? ' ' : 'n';
	values[8] = IntervalPGetDatum(max_lease);

	if (!PG_ARGISNULL(5))
	{
		text	   *dlq_name = PG_GETARG_TEXT_PP(5);
		BrokerQueue dlq;

		if (VARSIZE_ANY_EXHDR(dlq_name) == VARSIZE_ANY_EXHDR(name) &&
			memcmp(VARDATA_ANY(dlq_name), VARDATA_ANY(name),
				   VARSIZE_ANY_EXHDR(name)) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a queue cannot be its own dead-letter queue")));
		BrokerCheckQueueName(dlq_name);
		if (!BrokerLookupQueue(dlq_name, true, &dlq))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("dead-letter queue \"%s\" does not exist",
							text_to_cstring(dlq_name)),
					 errhint("Create the dead-letter queue first.")));
		/* Keep the dead-letter queue from being dropped under us. */
		BrokerLockQueue(dlq_name, AccessShareLock, &dlq);
		/* messages will be produced into it */
		BrokerCheckQueue(&dlq, BROKER_PRIV_PRODUCE);
		values[5] = Int32GetDatum(dlq.queue_id);
		nulls[5] = ' ';
	}

	rc = BrokerStmtExecute(&insert_queue, -1, values, nulls, 1);
	BrokerStmtCheck(rc, SPI_OK_INSERT_RETURNING, "creating the queue");
	if (SPI_processed == 0)
	{
		if (!if_not_exists)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("queue \"%s\" already exists", text_to_cstring(name)),
					 errhint("Pass if_not_exists => true to ignore an existing queue.")));
		ereport(NOTICE,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("queue \"%s\" already exists, skipping",
						text_to_cstring(name))));
	}
	else
	{
		bool		isnull;

		/* its creator administers it (unless the owner, who has all) */
		BrokerGrantCreator(DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
													   SPI_tuptable->tupdesc,
													   1, &isnull)));
	}

	BrokerSPIFinish();
	PG_RETURN_VOID();
}

/* broker.drop_queue(queue, if_exists): the queue and all its messages. */
Datum
broker_drop_queue(PG_FUNCTION_ARGS)
{
	text	   *name = BrokerQueueArg(fcinfo, 0);
	bool		if_exists;
	BrokerQueue q;
	Datum		values[1];
	int			rc;
	bool		isnull;
	Datum		users;

	BrokerRequireArg(fcinfo, 1, "if_exists");
	if_exists = PG_GETARG_BOOL(1);
	BrokerRequireWritable("drop a queue");

	BrokerSPIConnect();
	if (!BrokerLookupQueue(name, if_exists, &q))
	{
		ereport(NOTICE,
				(errmsg("queue \"%s\" does not exist, skipping",
						text_to_cstring(name))));
		BrokerSPIFinish();
		PG_RETURN_BOOL(false);
	}
	/* checked before the lock too: no one without admin queues behind it */
	BrokerCheckQueue(&q, BROKER_PRIV_ADMIN);
	BrokerLockQueue(name, AccessExclusiveLock, &q);
	BrokerCheckQueue(&q, BROKER_PRIV_ADMIN);

	values[0] = Int32GetDatum(q.queue_id);
	rc = BrokerStmtExecuteLatest(&dead_letter_users, -1, values, NULL, 1);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "dead-letter check");
	users = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop queue \"%s\" because other queues use it as their dead-letter queue",
						q.name),
				 errdetail("Dead-letter queue of: %s.", TextDatumGetCString(users)),
				 errhint("Drop those queues first.")));

	(void) BrokerStorePurge(q.queue_id);
	BrokerStoreForgetKeys(q.queue_id);
	BrokerStoreForgetRecords(q.queue_id);
	BrokerTopicsForgetQueue(q.queue_id);
	BrokerForgetGrants(q.queue_id);
	rc = BrokerStmtExecuteLatest(&delete_queue, -1, values, NULL, 0);
	BrokerStmtCheck(rc, SPI_OK_DELETE, "dropping the queue");

	/* Other backends flush their cached definitions when we commit. */
	CacheInvalidateRelcacheByRelid(BrokerGetRels()->queue_defs);
	BrokerInvalidateQueues();
	BrokerNoteDeleted();
	BrokerNoteDroppedQueue(q.queue_id);

	BrokerSPIFinish();
	PG_RETURN_BOOL(true);
}

/* broker.purge_queue(queue): delete every message, return how many. */
Datum
broker_purge_queue(PG_FUNCTION_ARGS)
{
	text	   *name = BrokerQueueArg(fcinfo, 0);
	BrokerQueue q;
	uint64		n;

	BrokerRequireWritable("purge a queue");
	BrokerSPIConnect();
	/* checked before the lock too: no one without admin queues behind it */
	BrokerLookupQueue(name, false, &q);
	BrokerCheckQueue(&q, BROKER_PRIV_ADMIN);
	BrokerLockQueue(name, AccessExclusiveLock, &q);
	BrokerCheckQueue(&q, BROKER_PRIV_ADMIN);
	n = BrokerStorePurge(q.queue_id);
	BrokerStoreForgetRecords(q.queue_id);
	BrokerNoteDeleted();
	BrokerSPIFinish();
	PG_RETURN_INT64((int64) n);
}
