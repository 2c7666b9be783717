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

#include "acl.h"
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
	BrokerCheckDelayTtl(PG_ARGISNULL(2) ? NULL : PG_GETARG_INTERVAL_P(2),
						PG_ARGISNULL(3) ? NULL : PG_GETARG_INTERVAL_P(3));
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

/* A key argument (group_key, dedup_key): NULL or checked (22023). */
static text *
key_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	text	   *key;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	key = PG_GETARG_TEXT_PP(argno);
	BrokerCheckKey(key, what, 0);
	return key;
}

/*
 * broker.enqueue(queue, payload, delay, ttl, headers, group_key,
 * dedup_key, priority) returns the id (of the earlier message, for a
 * duplicate).
 */
Datum
broker_enqueue(PG_FUNCTION_ARGS)
{
	text	   *name = BrokerQueueArg(fcinfo, 0);
	BrokerOutgoing m;
	BrokerQueue q;
	EnqueueTimes t;
	int64		id;
	bool		stored;

	BrokerRequireArg(fcinfo, 1, "payload");
	memset(&m, 0, sizeof(m));
	m.payload = PG_GETARG_JSONB_P(1);
	m.headers = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	check_delay_ttl(fcinfo);
	m.group_key = key_arg(fcinfo, 5, "group_key");
	m.dedup_key = key_arg(fcinfo, 6, "dedup_key");
	m.priority = BrokerPriorityArg(fcinfo, 7);
	BrokerRequireSharedMemory();
	BrokerRequireWritable("enqueue");

	BrokerSPIConnect();
	BrokerLockQueue(name, AccessShareLock, &q);
	BrokerCheckQueue(&q, BROKER_PRIV_PRODUCE);
	BrokerCheckMessageSize(&q, m.payload, m.headers, 0);
	compute_times(fcinfo, &q, &t);
	m.now = t.now;
	m.vt = t.vt;
	m.has_expiry = t.has_expiry;
	m.expires_at = t.expires_at;
	id = BrokerEnqueueOne(&q, &m, &stored);
	BrokerSPIFinish();

	PG_RETURN_INT64(id);
}

/*
 * The keys of a batch (group_keys or dedup_keys): NULL when the argument
 * is NULL, else one per payload, each NULL or checked (22023).
 */
static text **
batch_keys(FunctionCallInfo fcinfo, int argno, int n, const char *what)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	text	  **keys;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a one-dimensional array", what)));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &nelems);
	if (nelems != n)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must have one element per payload", what),
				 errdetail("There are %d payloads and %d %s.", n, nelems, what),
				 errhint("Use a NULL element for a payload without a key.")));
	keys = palloc0(sizeof(text *) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			continue;
		keys[i] = DatumGetTextPP(elems[i]);
		BrokerCheckKey(keys[i], what, i + 1);
	}
	return keys;
}

/* A dedup key of a batch and the element it came with. */
typedef struct KeyRef
{
	text	   *key;
	int			element;
} KeyRef;

static int
cmp_keyref(const void *a, const void *b)
{
	const KeyRef *x = a;
	const KeyRef *y = b;
	int			c = BrokerCompareKeys(x->key, y->key);

	return c != 0 ? c : (x->element > y->element) - (x->element < y->element);
}

/*
 * The dedup keys of a batch, first step: lock them (in key order), and
 * mark an element whose key came earlier in the batch as not stored, the
 * same as that first occurrence (same_as[i]).  Returns the first
 * occurrences, sorted by key, for dedup_batch_claim.
 */
static KeyRef *
dedup_batch_lock(const BrokerQueue *q, text **keys, int n, bool *store,
				 int *same_as, int *nfirst)
{
	KeyRef	   *refs = palloc(sizeof(KeyRef) * Max(n, 1));
	text	  **lock = palloc(sizeof(text *) * Max(n, 1));
	int			nrefs = 0;
	int			k = 0;

	for (int i = 0; i < n; i++)
	{
		if (keys[i] == NULL)
			continue;
		refs[nrefs].key = keys[i];
		refs[nrefs].element = i;
		lock[nrefs] = keys[i];
		nrefs++;
	}
	BrokerStoreDedupLock(q->queue_id, lock, nrefs);
	qsort(refs, nrefs, sizeof(KeyRef), cmp_keyref);
	for (int r = 0; r < nrefs; r++)
	{
		if (k > 0 && BrokerCompareKeys(refs[k - 1].key, refs[r].key) == 0)
		{
			store[refs[r].element] = false;
			same_as[refs[r].element] = refs[k - 1].element;
			continue;
		}
		refs[k++] = refs[r];
	}
	*nfirst = k;
	return refs;
}

/*
 * Second step, once the ids are allocated: each first occurrence claims
 * its key; one the queue accepted within its window is not stored and gets
 * the earlier message's id (and so do its repeats, through same_as).
 */
static void
dedup_batch_claim(const BrokerQueue *q, const KeyRef *firsts, int nfirst,
				  TimestampTz now, int64 *ids, bool *store)
{
	TimestampTz since = BrokerDedupSince(q, now);

	for (int r = 0; r < nfirst; r++)
	{
		int			e = firsts[r].element;
		int64		found;

		CHECK_FOR_INTERRUPTS();
		found = BrokerStoreDedupClaim(q->queue_id, firsts[r].key, ids[e], now, since);
		if (found != 0)
		{
			store[e] = false;
			ids[e] = found;
		}
	}
}

/*
 * broker.enqueue_batch(queue, payloads[], delay, ttl, headers, group_keys[],
 * dedup_keys[], priority): one INSERT for the messages stored; every
 * element is checked before anything is written.  Returns one id per
 * payload, in order.
 */
Datum
broker_enqueue_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *name = BrokerQueueArg(fcinfo, 0);
	ArrayType  *arr;
	Jsonb	   *headers = PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4);
	text	  **group_keys;
	text	  **dedup_keys;
	int			priority;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			n;
	int64	   *ids;
	bool	   *store;
	int		   *same_as;
	int			nstored = 0;
	KeyRef	   *firsts = NULL;
	int			nfirst = 0;
	BrokerQueue q;
	EnqueueTimes t;

	BrokerRequireArg(fcinfo, 1, "payloads");
	arr = PG_GETARG_ARRAYTYPE_P(1);
	check_delay_ttl(fcinfo);
	priority = BrokerPriorityArg(fcinfo, 7);
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
	group_keys = batch_keys(fcinfo, 5, n, "group_keys");
	dedup_keys = batch_keys(fcinfo, 6, n, "dedup_keys");

	/* The ids are read after SPI_finish: not in SPI's memory. */
	ids = palloc0(Max(n, 1) * sizeof(int64));
	store = palloc(Max(n, 1) * sizeof(bool));
	same_as = palloc(Max(n, 1) * sizeof(int));
	for (int i = 0; i < n; i++)
	{
		store[i] = true;
		same_as[i] = -1;
	}

	BrokerSPIConnect();
	BrokerLockQueue(name, AccessShareLock, &q);
	BrokerCheckQueue(&q, BROKER_PRIV_PRODUCE);
	/* the queue's shared state first: out of slots (53200) before any work */
	(void) BrokerQueueStateGet(q.queue_id, true);
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
	if (dedup_keys != NULL)
		firsts = dedup_batch_lock(&q, dedup_keys, n, store, same_as, &nfirst);
	if (group_keys != NULL)
	{
		text	  **lock = palloc(sizeof(text *) * n);

		memcpy(lock, group_keys, sizeof(text *) * n);
		BrokerStoreLockGroups(q.queue_id, lock, n);
	}
	if (priority > 0)
		BrokerNotePriority(BrokerQueueStateGet(q.queue_id, true), priority);

	/*
	 * Ids in element order, after the group locks (so a group's ids follow
	 * the order its messages joined it) and before the dedup keys are
	 * claimed with them.
	 */
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (store[i])
			ids[i] = BrokerAllocateMessageId(q.queue_id);
	}
	if (dedup_keys != NULL)
		dedup_batch_claim(&q, firsts, nfirst, t.now, ids, store);
	for (int i = 0; i < n; i++)
		nstored += store[i] ? 1 : 0;

	if (nstored > 0)
	{
		int64	   *sids = palloc(sizeof(int64) * nstored);
		Datum	   *spayloads = palloc(sizeof(Datum) * nstored);
		text	  **sgroups = group_keys ? palloc(sizeof(text *) * nstored) : NULL;
		bool	   *claimable = palloc(sizeof(bool) * nstored);
		int			k = 0;
		int64		nclaimable = 0;
		BrokerNewMessage common;

		for (int i = 0; i < n; i++)
		{
			if (!store[i])
				continue;
			sids[k] = ids[i];
			spayloads[k] = elems[i];
			if (sgroups)
				sgroups[k] = group_keys[i];
			k++;
		}
		memset(&common, 0, sizeof(common));
		common.queue_id = q.queue_id;
		common.vt = t.vt;
		common.enqueued_at = t.now;
		common.has_expiry = t.has_expiry;
		common.expires_at = t.expires_at;
		common.headers = headers;
		common.priority = priority;
		BrokerStoreInsertBatch(&common, sids, spayloads, sgroups, nstored, claimable);
		for (int i = 0; i < nstored; i++)
			nclaimable += claimable[i] ? 1 : 0;
		BrokerNoteStored(&q, nstored, nclaimable, t.now, t.vt);
	}
	BrokerSPIFinish();

	for (int i = 0; i < n; i++)
	{
		Datum		id = Int64GetDatum(same_as[i] >= 0 ? ids[same_as[i]] : ids[i]);
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &id, &isnull);
	}
	return (Datum) 0;
}
