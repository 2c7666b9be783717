/*-------------------------------------------------------------------------
 *
 * queuedef.c
 *	  Queue definitions: a backend-local cache of broker.queue_defs, and
 *	  the queue locks.
 *
 * Definitions are read once per backend and kept in a hash table until the
 * extension's relations are invalidated (catalog.c: a relcache
 * invalidation of broker.queue_defs, sent at commit by create_queue and
 * drop_queue, or by DROP EXTENSION).
 *
 * Queue locks: an object lock on (broker.queue_defs, queue_id).  enqueue
 * and dequeue hold it in AccessShareLock, drop_queue and purge_queue in
 * AccessExclusiveLock, so a queue cannot vanish under a producer.  Lock
 * order everywhere: the queue's lock, then its dead-letter queue's lock,
 * then message rows in id order (docs/design.md, "Locks").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "queuedef.h"
#include "sql.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"
#define QUEUE_COLUMNS \
	"SELECT q.queue_id, q.name, q.lease, q.max_message_size, q.default_ttl," \
	"       q.max_deliveries, q.dead_letter_id, q.dedup_window, q.retention," \
	"       q.max_lease" \
	"  FROM broker.queue_defs q"

static BrokerStmt queue_by_name = {
	QUEUE_COLUMNS " WHERE q.name " OP("=") " $1 AND q.kind " OP("=") " 'q'",
	1, {TEXTOID}, 0, {NULL}
};

static BrokerStmt queue_by_id = {
	QUEUE_COLUMNS " WHERE q.queue_id " OP("=") " $1",
	1, {INT4OID}, 0, {NULL}
};

typedef struct QueueCacheEntry
{
	char		name[BROKER_QUEUE_NAME_MAX + 1];	/* key */
	BrokerQueue q;
} QueueCacheEntry;

static HTAB *queue_cache = NULL;
static uint64 cache_generation = 0;

/* The cache, emptied when the extension's relations were invalidated. */
static HTAB *
cache(void)
{
	if (queue_cache != NULL && cache_generation != BrokerRelsGeneration())
	{
		hash_destroy(queue_cache);
		queue_cache = NULL;
	}
	if (queue_cache == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = BROKER_QUEUE_NAME_MAX + 1;
		ctl.entrysize = sizeof(QueueCacheEntry);
		ctl.hcxt = CacheMemoryContext;
		queue_cache = hash_create("broker queue cache", 64, &ctl,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		cache_generation = BrokerRelsGeneration();
	}
	return queue_cache;
}

/* Flush the queue cache now (after this backend changed a definition). */
void
BrokerInvalidateQueues(void)
{
	if (queue_cache != NULL)
	{
		hash_destroy(queue_cache);
		queue_cache = NULL;
	}
}

/* Copy one result row of queue_by_name/_by_id into a BrokerQueue. */
static void
queue_from_tuple(HeapTuple tup, TupleDesc desc, BrokerQueue *q)
{
	bool		isnull;
	Datum		d;

	memset(q, 0, sizeof(*q));
	q->queue_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	d = SPI_getbinval(tup, desc, 2, &isnull);
	text_to_cstring_buffer(DatumGetTextPP(d), q->name, sizeof(q->name));
	q->lease = *DatumGetIntervalP(SPI_getbinval(tup, desc, 3, &isnull));
	q->max_message_size = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	d = SPI_getbinval(tup, desc, 5, &isnull);
	q->has_default_ttl = !isnull;
	if (!isnull)
		q->default_ttl = *DatumGetIntervalP(d);
	d = SPI_getbinval(tup, desc, 6, &isnull);
	q->max_deliveries = isnull ? 0 : DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 7, &isnull);
	q->dead_letter_id = isnull ? 0 : DatumGetInt32(d);
	q->dedup_window = *DatumGetIntervalP(SPI_getbinval(tup, desc, 8, &isnull));
	d = SPI_getbinval(tup, desc, 9, &isnull);
	q->has_retention = !isnull;
	if (!isnull)
		q->retention = *DatumGetIntervalP(d);
	q->max_lease = *DatumGetIntervalP(SPI_getbinval(tup, desc, 10, &isnull));
}

/* Raise the standard "queue does not exist" error (42704). */
void
BrokerQueueMissing(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("queue \"%s\" does not exist", name),
			 errhint("Create it with broker.create_queue('%s').", name)));
}

/*
 * Look a queue up by name (caller is connected to SPI).  Returns false
 * when it does not exist and missing_ok, else raises 42704.
 */
bool
BrokerLookupQueue(text *name, bool missing_ok, BrokerQueue *out)
{
	char		key[BROKER_QUEUE_NAME_MAX + 1];
	QueueCacheEntry *entry;
	bool		found;
	Datum		values[1];
	int			rc;
	uint64		gen;

	BrokerCheckQueueName(name);
	text_to_cstring_buffer(name, key, sizeof(key));

	AcceptInvalidationMessages();
	(void) BrokerGetRels();

	entry = hash_search(cache(), key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		*out = entry->q;
		return true;
	}

	gen = BrokerRelsGeneration();
	values[0] = PointerGetDatum(name);
	rc = BrokerStmtExecute(&queue_by_name, -1, values, NULL, 1);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "queue lookup");
	if (SPI_processed == 0)
	{
		if (missing_ok)
			return false;
		BrokerQueueMissing(key);
	}
	queue_from_tuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, out);

	/*
	 * An invalidation during the query (a drop or create that committed
	 * meanwhile) means the row read may be out of date: use it for this
	 * call (BrokerLockQueue looks again once it holds the lock) but do not
	 * keep it.
	 */
	if (gen != BrokerRelsGeneration())
		return true;
	entry = hash_search(cache(), key, HASH_ENTER, &found);
	entry->q = *out;
	return true;
}

/* Look a queue up by id, uncached (dead-letter targets, rare). */
bool
BrokerLookupQueueById(int32 queue_id, BrokerQueue *out)
{
	Datum		values[1];
	int			rc;

	values[0] = Int32GetDatum(queue_id);
	rc = BrokerStmtExecute(&queue_by_id, -1, values, NULL, 1);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "queue lookup");
	if (SPI_processed == 0)
		return false;
	queue_from_tuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, out);
	return true;
}

/*
 * Look a queue up and take its lock in the given mode.  If the definition
 * changed while we waited for the lock (dropped, or dropped and created
 * again), look again: the caller always gets the queue as it is now.
 */
void
BrokerLockQueue(text *name, LOCKMODE mode, BrokerQueue *out)
{
	for (;;)
	{
		uint64		gen;
		BrokerQueue again;
		int32		locked_id;

		CHECK_FOR_INTERRUPTS();
		BrokerLookupQueue(name, false, out);
		gen = BrokerRelsGeneration();
		locked_id = out->queue_id;
		BrokerLockQueueById(locked_id, mode);
		/* Taking the lock has processed invalidations. */
		if (gen == BrokerRelsGeneration())
			return;
		if (BrokerLookupQueue(name, true, &again) &&
			again.queue_id == locked_id)
		{
			*out = again;
			return;
		}
		UnlockDatabaseObject(BrokerGetRels()->queue_defs, locked_id, 0, mode);
		if (!BrokerLookupQueue(name, true, &again))
		{
			char		key[BROKER_QUEUE_NAME_MAX + 1];

			text_to_cstring_buffer(name, key, sizeof(key));
			BrokerQueueMissing(key);
		}
	}
}

/* Take a queue's lock by id (a dead-letter queue, after its queue's). */
void
BrokerLockQueueById(int32 queue_id, LOCKMODE mode)
{
	LockDatabaseObject(BrokerGetRels()->queue_defs, queue_id, 0, mode);
}
