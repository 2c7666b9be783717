/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Consumer history: how many messages each consumer took and deleted
 *	  per queue, and when it was last seen.  broker.consumers shows it.
 *
 * A consumer is named by the setting broker.consumer, else the session's
 * application_name, else "(unnamed)".  The counts are published when the
 * consumer's transaction commits (qstate.c), so rolled-back work is not
 * counted.
 *
 * The table lives in shared memory and holds broker.max_consumers entries
 * for all databases.  When it is full, the entry seen longest ago is
 * recycled for the new consumer; the counts of recycled entries are added
 * up and shown as one row, consumer "(evicted, all databases)" with a NULL queue, so an
 * operator sees both that the table is too small and how much it forgot.
 * Protected by the BROKER_LOCK_CONSUMERS LWLock of the "broker" tranche.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_authid.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "stats.h"
#include "util.h"

char	   *broker_consumer_name = NULL;
int			broker_max_consumers = 1024;

typedef struct ConsumerKey
{
	Oid			dbid;
	Oid			installation;	/* BrokerRels.extension */
	int32		queue_id;
	Oid			role;			/* the role that consumed (who may see it) */
	char		name[NAMEDATALEN];
} ConsumerKey;

typedef struct ConsumerEntry
{
	ConsumerKey key;
	uint64		delivered;
	uint64		deleted;
	TimestampTz last_seen;
} ConsumerEntry;

typedef struct ConsumerShared
{
	LWLock	   *lock;
	uint64		evicted_delivered;	/* counts of recycled entries */
	uint64		evicted_deleted;
	bool		any_evicted;
} ConsumerShared;

static ConsumerShared *consumer_shared = NULL;
static HTAB *consumer_hash = NULL;

PG_FUNCTION_INFO_V1(broker_consumers);

/* Define the settings of the consumer history (from _PG_init). */
void
BrokerStatsInit(void)
{
	DefineCustomStringVariable("broker.consumer",
							   "Name this session's dequeues and deletes are attributed to.",
							   "Shown in broker.consumers; empty means application_name.",
							   &broker_consumer_name,
							   "",
							   PGC_USERSET,
							   0,
							   NULL, NULL, NULL);

	/*
	 * A PGC_POSTMASTER setting can only be defined while the postmaster
	 * loads us; loaded later (no preload), there is no shared memory to
	 * size anyway.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("broker.max_consumers",
								"Maximum number of (consumer, queue) pairs in the consumer history.",
								"When full, the pair seen longest ago is recycled.",
								&broker_max_consumers,
								1024, 16, 1000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
}

/* Shared memory for the consumer table. */
Size
BrokerStatsShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(ConsumerShared)),
					hash_estimate_size(broker_max_consumers, sizeof(ConsumerEntry)));
}

/* Create or attach to the consumer table (caller holds AddinShmemInitLock). */
void
BrokerStatsShmemInit(void)
{
	bool		found;
	HASHCTL		info;

	consumer_shared = ShmemInitStruct("broker consumers", sizeof(ConsumerShared),
									  &found);
	if (!found)
	{
		consumer_shared->lock = &(GetNamedLWLockTranche("broker"))[BROKER_LOCK_CONSUMERS].lock;
		consumer_shared->evicted_delivered = 0;
		consumer_shared->evicted_deleted = 0;
		consumer_shared->any_evicted = false;
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ConsumerKey);
	info.entrysize = sizeof(ConsumerEntry);
	consumer_hash = ShmemInitHash("broker consumer history",
								  broker_max_consumers, broker_max_consumers,
								  &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
}

/* Recycle the entry seen longest ago (caller holds the lock exclusively). */
static void
evict_oldest(void)
{
	HASH_SEQ_STATUS seq;
	ConsumerEntry *e;
	ConsumerEntry *oldest = NULL;

	hash_seq_init(&seq, consumer_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (oldest == NULL || e->last_seen < oldest->last_seen)
			oldest = e;
	}
	if (oldest != NULL)
	{
		ConsumerKey key = oldest->key;

		consumer_shared->evicted_delivered += oldest->delivered;
		consumer_shared->evicted_deleted += oldest->deleted;
		consumer_shared->any_evicted = true;
		hash_search(consumer_hash, &key, HASH_REMOVE, NULL);
	}
}

/*
 * Add a committed transaction's work to its consumer's entry.  Called from
 * the commit callback: it must not fail, so a full table recycles an entry
 * instead of raising an error.
 */
void
BrokerConsumerCount(Oid installation, int32 queue_id, int64 delivered,
					int64 deleted)
{
	ConsumerKey key;
	ConsumerEntry *e;
	bool		found;
	const char *name;

	if (consumer_hash == NULL)
		return;
	if (broker_consumer_name != NULL && broker_consumer_name[0] != '\0')
		name = broker_consumer_name;
	else if (application_name != NULL && application_name[0] != '\0')
		name = application_name;
	else
		name = "(unnamed)";

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.installation = installation;
	key.queue_id = queue_id;
	key.role = GetUserId();
	/* at most NAMEDATALEN - 1 bytes, cut on a character boundary */
	memcpy(key.name, name, pg_mbcliplen(name, strlen(name), NAMEDATALEN - 1));

	LWLockAcquire(consumer_shared->lock, LW_EXCLUSIVE);
	e = hash_search(consumer_hash, &key, HASH_ENTER_NULL, &found);
	if (e == NULL)
	{
		evict_oldest();
		e = hash_search(consumer_hash, &key, HASH_ENTER_NULL, &found);
	}
	if (e != NULL)
	{
		if (!found)
		{
			e->delivered = 0;
			e->deleted = 0;
		}
		e->delivered += delivered;
		e->deleted += deleted;
		e->last_seen = GetCurrentTimestamp();
	}
	LWLockRelease(consumer_shared->lock);
}

/* Forget the history of a dropped queue (from the commit callback). */
void
BrokerConsumerForgetQueue(Oid installation, int32 queue_id)
{
	HASH_SEQ_STATUS seq;
	ConsumerEntry *e;

	if (consumer_hash == NULL)
		return;
	LWLockAcquire(consumer_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, consumer_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		/* dynahash allows removing the entry just returned by a scan */
		if (e->key.dbid == MyDatabaseId && e->key.installation == installation &&
			e->key.queue_id == queue_id)
			hash_search(consumer_hash, &e->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(consumer_shared->lock);
}

/*
 * Forget the history of a dropped installation, or of every installation
 * of a dropped database (InvalidOid), from the commit callback.
 */
void
BrokerConsumerForget(Oid dbid, Oid installation)
{
	HASH_SEQ_STATUS seq;
	ConsumerEntry *e;

	if (consumer_hash == NULL)
		return;
	LWLockAcquire(consumer_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, consumer_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.dbid == dbid &&
			(!OidIsValid(installation) || e->key.installation == installation))
			hash_search(consumer_hash, &e->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(consumer_shared->lock);
}

/*
 * broker._consumers(): this installation's entries, by queue id; the view
 * broker.consumers adds the queue names.
 */
Datum
broker_consumers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	ConsumerEntry *e;
	Oid			installation;
	bool		any_evicted;
	uint64		evicted_delivered;
	uint64		evicted_deleted;
	Oid			viewer;
	bool		see_all;

	InitMaterializedSRF(fcinfo, 0);
	if (consumer_hash == NULL)
		return (Datum) 0;
	installation = BrokerGetRels()->extension;
	viewer = GetUserId();
	see_all = has_privs_of_role(viewer, ROLE_PG_READ_ALL_STATS);

	LWLockAcquire(consumer_shared->lock, LW_SHARED);
	hash_seq_init(&seq, consumer_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		if (e->key.dbid != MyDatabaseId || e->key.installation != installation)
			continue;
		/* other roles' consumers, as pg_stat_activity shows other sessions */
		if (!see_all && !has_privs_of_role(viewer, e->key.role))
			continue;
		values[0] = CStringGetTextDatum(e->key.name);
		values[1] = Int32GetDatum(e->key.queue_id);
		values[2] = Int64GetDatum((int64) e->delivered);
		values[3] = Int64GetDatum((int64) e->deleted);
		values[4] = TimestampTzGetDatum(e->last_seen);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	any_evicted = consumer_shared->any_evicted;
	evicted_delivered = consumer_shared->evicted_delivered;
	evicted_deleted = consumer_shared->evicted_deleted;
	LWLockRelease(consumer_shared->lock);

	if (any_evicted)
	{
		Datum		values[5];
		bool		nulls[5] = {false, true, false, false, true};

		values[0] = CStringGetTextDatum("(evicted, all databases)");
		values[1] = (Datum) 0;
		values[2] = Int64GetDatum((int64) evicted_delivered);
		values[3] = Int64GetDatum((int64) evicted_deleted);
		values[4] = (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
