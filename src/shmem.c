/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared state: per-queue low-water marks, counters and long-poll
 *	  condition variables; the per-backend registry of enqueues in flight;
 *	  the transaction callbacks that publish what a transaction did.
 *
 * Locking rules
 * -------------
 * - BrokerShared->lock (LWLock) protects the queue-state hash table: shared
 *	 to look an entry up, exclusive to add or remove one.  A pointer to an
 *	 entry stays valid while its queue's heavyweight lock is held in any
 *	 mode, because an entry is only removed by the commit of the
 *	 transaction that dropped the queue, which holds that lock exclusively.
 * - Each backend slot has a spinlock; its owner takes it to register or
 *	 clear an in-flight enqueue, a refreshing consumer to read it.
 * - BrokerQueueState.mutex (spinlock) protects refreshing/last_refresh;
 *	 lwm and counters are atomics.
 * No lock here is held while another is acquired, except the hash LWLock
 * around a condition-variable signal (a spinlock inside); so no deadlock.
 *
 * The low-water mark protocol
 * ---------------------------
 * Invariant: no live message of queue q, committed or in progress, has an
 * id below lwm(q).  Dequeue scans from lwm, so it never rewalks the dead
 * index entries of messages deleted long ago, even while an old snapshot
 * keeps them from being vacuumed.
 *
 * Ids come from a sequence and commit out of order, so a message that is
 * not yet visible must hold the mark back.  A producer therefore registers
 * "allocating" in its backend slot *before* it calls nextval for its first
 * message in q in a transaction, then records the id it got; the entry is
 * cleared by the transaction-end callback, which for a commit runs after
 * the transaction became visible (after ProcArrayEndTransaction).
 *
 * A backend registers at most BROKER_INFLIGHT_MAX - 1 queues by name in
 * a transaction; beyond that it registers one "several queues" entry whose
 * id is the first it allocated after running out (ids a session allocates
 * only grow) and whose 64-bit mask has bit (queue_id % 64) set for each
 * further queue, set before the first nextval for that queue as above.
 * It holds the marks of those queues (and of the few others that share
 * their bits) at that id: correct and bounded for any number of queues.
 *
 * A consumer advances lwm(q) as follows (BrokerMaybeRefreshLwm):
 *	 0. gen := the segments' move generation (segment.c); give up if a
 *		transaction that moves rows between segments is open.
 *	 1. fence := nextval(message_id_seq).  Any id allocated later is above
 *		fence; any allocated earlier is below it, and its producer's
 *		registration (made before its nextval) is visible to us now.
 *	 2. floor := min(fence, every registered in-flight id of q or of "any
 *		queue"); give up if such an entry is still "allocating".
 *	 3. M := the lowest id of q visible to a new snapshot in every segment
 *		(plain reads; rows locked, leased, delayed or being deleted by
 *		others are all seen; drained segments are probed too).
 *	 4. give up if the move generation is no longer gen; else
 *		lwm := max(lwm, min(floor, M)).
 * A message with id below the new mark was either allocated before the
 * fence and (by 2) committed before our snapshot, so step 3 would have seen
 * it, or it was deleted by a committed transaction.  Rows deleted by our
 * own open transaction are invisible to us yet may come back if it aborts,
 * so a transaction that deleted anything does not refresh; nor does one
 * under REPEATABLE READ, whose snapshot predates the fence.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "commands/sequence.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "broker.h"

/* Refresh a queue's low-water mark at most this often (microseconds). */
#define BROKER_LWM_REFRESH_US	10000

/* In-flight registrations per backend, the last one for "any queue". */
#define BROKER_INFLIGHT_MAX		8

/* queue_id of an in-flight entry that stands for the queues of its mask */
#define BROKER_ANY_QUEUE		0
#define QUEUE_BIT(queue_id)		(UINT64CONST(1) << ((uint32) (queue_id) % 64))

typedef struct BrokerInflight
{
	Oid			dbid;
	int32		queue_id;		/* or BROKER_ANY_QUEUE */
	uint64		mask;			/* BROKER_ANY_QUEUE: QUEUE_BIT of its queues */
	int64		min_id;			/* 0 while the first id is being allocated */
} BrokerInflight;

typedef struct BrokerBackendSlot
{
	slock_t		mutex;
	int			nentries;
	BrokerInflight e[BROKER_INFLIGHT_MAX];
} BrokerBackendSlot;

typedef struct BrokerShared
{
	LWLock	   *lock;
	int			nslots;
	BrokerBackendSlot slots[FLEXIBLE_ARRAY_MEMBER];
} BrokerShared;

/* What this transaction did to one queue, published at commit. */
typedef struct BrokerPending
{
	Oid			installation;
	int32		queue_id;
	SubTransactionId subid;
	bool		dropped;
	int64		counts[BROKER_NUM_COUNTERS];
	TimestampTz min_due;		/* earliest future vt written, or BROKER_NO_DUE */
} BrokerPending;

static BrokerShared *broker_shared = NULL;
static HTAB *broker_queue_hash = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Backend-local transaction state. */
static BrokerPending *pending = NULL;	/* in TopTransactionContext */
static int	npending = 0;
static int	maxpending = 0;
static int32 registered[BROKER_INFLIGHT_MAX];	/* mirror of my slot */
static int	nregistered = 0;
static bool registered_any = false; /* holds a BROKER_ANY_QUEUE entry ... */
static int	any_index = -1;		/* ... at this index of my slot */
static uint64 any_mask = 0;		/* mirror of its mask */
static bool xact_deleted = false;
static bool callbacks_registered = false;

/* Installations dropped by this transaction: forgotten when it commits. */
typedef struct BrokerDropped
{
	Oid			dbid;
	Oid			installation;	/* InvalidOid: every one of the database */
} BrokerDropped;

static BrokerDropped *dropped = NULL;	/* in TopTransactionContext */
static int	ndropped = 0;
static int	maxdropped = 0;
static object_access_hook_type prev_object_access_hook = NULL;

static void broker_shmem_request(void);
static void broker_shmem_startup(void);
static Size broker_shmem_size(void);
static void broker_xact_callback(XactEvent event, void *arg);
static void broker_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
									SubTransactionId parentSubid, void *arg);
static void broker_object_access(ObjectAccessType access, Oid classId,
								 Oid objectId, int subId, void *arg);

/* Install the shared-memory hooks; called from _PG_init when preloaded. */
void
BrokerShmemInit(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = broker_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = broker_shmem_startup;
	prev_object_access_hook = object_access_hook;
	object_access_hook = broker_object_access;
}

/* Space for the backend slots and the queue-state hash table. */
static Size
broker_shmem_size(void)
{
	Size		size;

	size = add_size(offsetof(BrokerShared, slots),
					mul_size(MaxBackends, sizeof(BrokerBackendSlot)));
	size = add_size(size, hash_estimate_size(broker_max_queues,
											 sizeof(BrokerQueueState)));
	size = add_size(size, BrokerStatsShmemSize());
	size = add_size(size, BrokerSegmentShmemSize());
	return size;
}

/* shmem_request_hook: ask for our space and one named LWLock. */
static void
broker_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(broker_shmem_size());
	RequestNamedLWLockTranche("broker", 3);	/* queue states, consumers,
												 * segments */
}

/* shmem_startup_hook: create or attach to the shared structures. */
static void
broker_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	broker_shared = ShmemInitStruct("broker shared state",
									add_size(offsetof(BrokerShared, slots),
											 mul_size(MaxBackends,
													  sizeof(BrokerBackendSlot))),
									&found);
	if (!found)
	{
		broker_shared->lock = &(GetNamedLWLockTranche("broker"))->lock;
		broker_shared->nslots = MaxBackends;
		for (int i = 0; i < MaxBackends; i++)
		{
			BrokerBackendSlot *slot = &broker_shared->slots[i];

			SpinLockInit(&slot->mutex);
			slot->nentries = 0;
		}
	}

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(BrokerQueueKey);
	info.entrysize = sizeof(BrokerQueueState);
	broker_queue_hash = ShmemInitHash("broker queue states",
									  broker_max_queues, broker_max_queues,
									  &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	BrokerStatsShmemInit();
	BrokerSegmentShmemInit();

	LWLockRelease(AddinShmemInitLock);
}

/* True when the library was preloaded and shared memory is attached. */
bool
BrokerSharedMemoryReady(void)
{
	return broker_shared != NULL && broker_queue_hash != NULL;
}

/* Fail with 55000 unless preloaded; register the transaction callbacks. */
void
BrokerRequireSharedMemory(void)
{
	if (!BrokerSharedMemoryReady())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("broker must be loaded via shared_preload_libraries"),
				 errdetail("This function needs the broker's shared memory."),
				 errhint("Add broker to shared_preload_libraries in postgresql.conf and restart the server.")));

	if (!callbacks_registered)
	{
		RegisterXactCallback(broker_xact_callback, NULL);
		RegisterSubXactCallback(broker_subxact_callback, NULL);
		callbacks_registered = true;
	}
}

/* This backend's registry slot. */
static BrokerBackendSlot *
my_slot(void)
{
	Assert(MyBackendId >= 1 && MyBackendId <= broker_shared->nslots);
	return &broker_shared->slots[MyBackendId - 1];
}

/* Find, and optionally create, the shared state of a queue of this db. */
BrokerQueueState *
BrokerQueueStateGet(int32 queue_id, bool create)
{
	BrokerQueueKey key;
	BrokerQueueState *state;
	bool		found;

	BrokerRequireSharedMemory();

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.installation = BrokerGetRels()->extension;
	key.queue_id = queue_id;

	LWLockAcquire(broker_shared->lock, LW_SHARED);
	state = hash_search(broker_queue_hash, &key, HASH_FIND, NULL);
	LWLockRelease(broker_shared->lock);
	if (state != NULL || !create)
		return state;

	LWLockAcquire(broker_shared->lock, LW_EXCLUSIVE);
	state = hash_search(broker_queue_hash, &key, HASH_ENTER_NULL, &found);
	if (state == NULL)
	{
		LWLockRelease(broker_shared->lock);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("too many broker queues in use"),
				 errdetail("Shared memory holds the state of at most %d queues.",
						   broker_max_queues),
				 errhint("Raise broker.max_queues and restart the server.")));
	}
	if (!found)
	{
		SpinLockInit(&state->mutex);
		state->refreshing = false;
		state->last_refresh = 0;
		state->mark_resets = 0;
		pg_atomic_init_u64(&state->lwm, 0);
		pg_atomic_init_u64(&state->enqueued_total, 0);
		pg_atomic_init_u64(&state->deleted_total, 0);
		pg_atomic_init_u64(&state->expired_total, 0);
		pg_atomic_init_u64(&state->dead_lettered_total, 0);
		ConditionVariableInit(&state->cv);
		pg_atomic_init_u64(&state->next_due, (uint64) BROKER_NO_DUE);
		state->timekeeper = -1;
		state->keeper_due = BROKER_NO_DUE;
		pg_atomic_init_u32(&state->waiters, 0);
		pg_atomic_init_u64(&state->wakeups, 0);
		pg_atomic_init_u64(&state->empty_wakeups, 0);
	}
	LWLockRelease(broker_shared->lock);
	return state;
}

/*
 * The pending entry of a queue in the current subtransaction; with
 * create_state, also make sure the queue has shared state for the commit
 * to publish to.
 */
static BrokerPending *
pending_entry(int32 queue_id, bool create_state)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	BrokerPending *p;

	for (int i = 0; i < npending; i++)
	{
		if (pending[i].queue_id == queue_id && pending[i].subid == subid)
			return &pending[i];
	}
	if (npending == maxpending)
	{
		int			newmax = maxpending == 0 ? 8 : maxpending * 2;

		if (pending == NULL)
			pending = MemoryContextAlloc(TopTransactionContext,
										 newmax * sizeof(BrokerPending));
		else
			pending = repalloc(pending, newmax * sizeof(BrokerPending));
		maxpending = newmax;
	}
	if (create_state)
		(void) BrokerQueueStateGet(queue_id, true);
	p = &pending[npending++];
	memset(p, 0, sizeof(*p));
	p->installation = BrokerGetRels()->extension;
	p->queue_id = queue_id;
	p->subid = subid;
	p->min_due = BROKER_NO_DUE;
	return p;
}

/* Add n to a queue's counter when (and if) this transaction commits. */
void
BrokerCount(int32 queue_id, BrokerCounter counter, int64 n)
{
	/* Without shared memory there is nowhere to count; nothing to do. */
	if (!BrokerSharedMemoryReady())
		return;
	BrokerRequireSharedMemory();
	if (n != 0)
		pending_entry(queue_id, true)->counts[counter] += n;
}

/*
 * Remember that this transaction wrote a message that becomes deliverable
 * at "due" (a delay or a lease): waiters must wake then.
 */
void
BrokerNoteDue(int32 queue_id, TimestampTz due)
{
	BrokerPending *p;

	if (!BrokerSharedMemoryReady())
		return;
	BrokerRequireSharedMemory();
	p = pending_entry(queue_id, true);
	if (due < p->min_due)
		p->min_due = due;
}

/*
 * Lower a queue's next due time.  If it moved earlier, the waiter keeping
 * time may sleep too long: wake one waiter, which takes over keeping time
 * (see sleep_on_queue in dequeue.c).  Never more than one is woken.
 */
void
BrokerLowerNextDue(BrokerQueueState *state, TimestampTz due)
{
	uint64		cur = pg_atomic_read_u64(&state->next_due);

	while ((int64) cur > due)
	{
		if (pg_atomic_compare_exchange_u64(&state->next_due, &cur, (uint64) due))
		{
			if (pg_atomic_read_u32(&state->waiters) > 0)
				ConditionVariableSignal(&state->cv);
			break;
		}
	}
}

/* Remember that this transaction deleted messages (see the lwm protocol). */
void
BrokerNoteDeleted(void)
{
	/* Without shared memory there is no mark to protect. */
	if (!BrokerSharedMemoryReady())
		return;
	BrokerRequireSharedMemory();	/* the callback resets the flag */
	xact_deleted = true;
}

/* Remove the queue's shared state when this transaction commits. */
void
BrokerNoteDroppedQueue(int32 queue_id)
{
	if (!BrokerSharedMemoryReady())
		return;
	BrokerRequireSharedMemory();
	pending_entry(queue_id, false)->dropped = true;
}

/*
 * Register a queue in my slot before the first id allocated for it in this
 * transaction: an entry of its own while there is room for two more, else
 * its bit in the BROKER_ANY_QUEUE entry.  Returns the index of a new entry
 * whose min_id must be set once the id is allocated, else -1.
 */
static int
register_inflight(int32 queue_id)
{
	BrokerBackendSlot *slot = my_slot();
	int			idx = -1;

	SpinLockAcquire(&slot->mutex);
	if (slot->nentries < BROKER_INFLIGHT_MAX - 1)
	{
		idx = slot->nentries++;
		slot->e[idx].dbid = MyDatabaseId;
		slot->e[idx].queue_id = queue_id;
		slot->e[idx].mask = 0;
		slot->e[idx].min_id = 0;
	}
	else if (any_index < 0)
	{
		idx = slot->nentries++;
		slot->e[idx].dbid = MyDatabaseId;
		slot->e[idx].queue_id = BROKER_ANY_QUEUE;
		slot->e[idx].mask = QUEUE_BIT(queue_id);
		slot->e[idx].min_id = 0;
		any_index = idx;
	}
	else
		slot->e[any_index].mask |= QUEUE_BIT(queue_id);
	SpinLockRelease(&slot->mutex);

	if (idx >= 0 && idx == any_index)
		registered_any = true;
	else if (idx >= 0)
		registered[nregistered++] = queue_id;
	if (any_index >= 0)
		any_mask |= QUEUE_BIT(queue_id);
	return idx;
}

/*
 * Allocate the id of a new message in a queue, registering the enqueue as
 * in flight first (see the file header).
 */
int64
BrokerAllocateMessageId(int32 queue_id)
{
	BrokerBackendSlot *slot;
	int			idx = -1;
	int64		id;
	bool		known = false;

	BrokerRequireSharedMemory();

	for (int i = 0; i < nregistered && !known; i++)
		known = registered[i] == queue_id;
	if (!known && registered_any && (any_mask & QUEUE_BIT(queue_id)) != 0)
		known = true;
	if (!known)
		idx = register_inflight(queue_id);
	id = nextval_internal(BrokerGetRels()->message_id_seq, false);
	if (idx >= 0)
	{
		slot = my_slot();
		SpinLockAcquire(&slot->mutex);
		slot->e[idx].min_id = id;
		SpinLockRelease(&slot->mutex);
	}
	return id;
}

/* Clear this backend's in-flight registrations. */
static void
clear_registrations(void)
{
	BrokerBackendSlot *slot;

	if (nregistered == 0 && !registered_any)
		return;
	slot = my_slot();
	SpinLockAcquire(&slot->mutex);
	slot->nentries = 0;
	SpinLockRelease(&slot->mutex);
	nregistered = 0;
	registered_any = false;
	any_index = -1;
	any_mask = 0;
}

/*
 * Lowest id that an in-flight enqueue into the queue may commit, or -1
 * when a producer is still allocating (no advance possible now).
 */
static int64
inflight_floor(int32 queue_id, int64 fence)
{
	int64		floor = fence;

	for (int i = 0; i < broker_shared->nslots; i++)
	{
		BrokerBackendSlot *slot = &broker_shared->slots[i];
		bool		blocked = false;

		SpinLockAcquire(&slot->mutex);
		for (int j = 0; j < slot->nentries && !blocked; j++)
		{
			BrokerInflight *e = &slot->e[j];

			if (e->dbid != MyDatabaseId ||
				(e->queue_id != queue_id &&
				 (e->queue_id != BROKER_ANY_QUEUE ||
				  (e->mask & QUEUE_BIT(queue_id)) == 0)))
				continue;
			if (e->min_id == 0)
				blocked = true;
			else if (e->min_id < floor)
				floor = e->min_id;
		}
		SpinLockRelease(&slot->mutex);
		if (blocked)
			return -1;
	}
	return floor;
}

/*
 * Advance the queue's low-water mark if it was not refreshed recently.
 * Runs inside the caller's SPI connection and transaction.
 */
void
BrokerMaybeRefreshLwm(int32 queue_id, BrokerQueueState *state)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		fence;
	int64		floor;
	int64		old;
	uint64		resets;

	if (xact_deleted || IsolationUsesXactSnapshot())
		return;

	SpinLockAcquire(&state->mutex);
	if (state->refreshing ||
		now - state->last_refresh < BROKER_LWM_REFRESH_US)
	{
		SpinLockRelease(&state->mutex);
		return;
	}
	state->refreshing = true;
	resets = state->mark_resets;
	SpinLockRelease(&state->mutex);

	PG_TRY();
	{
		bool		moving;
		uint64		gen = BrokerSegmentMovesBegin(&moving);

		old = (int64) pg_atomic_read_u64(&state->lwm);
		fence = moving ? -1 : nextval_internal(BrokerGetRels()->message_id_seq, false);
		floor = moving ? -1 : inflight_floor(queue_id, fence);
		if (floor > old)
		{
			Datum		values[2];
			char		nulls[2] = {' ', ' '};
			int			rc;

			values[0] = Int32GetDatum(queue_id);
			values[1] = Int64GetDatum(old);

			/*
			 * One index probe per segment, every segment: a drained one is
			 * only a hint, and rows found there clear it (segment.c).
			 */
			for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
			{
				rc = BrokerExecute(BrokerPlanSeg(PLAN_LWM_PROBE, seg),
								   values, nulls, 1);
				if (rc != SPI_OK_SELECT)
					elog(ERROR, "broker: low-water mark probe failed: %s",
						 SPI_result_code_string(rc));
				if (SPI_processed == 1)
				{
					bool		isnull;
					int64		m = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
																SPI_tuptable->tupdesc,
																1, &isnull));

					if (m < floor)
						floor = m;
					BrokerSegmentFound(seg);
				}
			}
			/* A move began or ended during the probes: they may miss it. */
			if (BrokerSegmentMovesSince(gen))
				floor = -1;

			/*
			 * Only ever move the mark up, and not at all if it was reset
			 * meanwhile (BrokerResetMarks): other refreshes are excluded by
			 * the refreshing flag, resets by the mutex.
			 */
			SpinLockAcquire(&state->mutex);
			if (state->mark_resets == resets &&
				floor > (int64) pg_atomic_read_u64(&state->lwm))
				pg_atomic_write_u64(&state->lwm, (uint64) floor);
			SpinLockRelease(&state->mutex);
		}
	}
	PG_FINALLY();
	{
		SpinLockAcquire(&state->mutex);
		state->refreshing = false;
		state->last_refresh = now;
		SpinLockRelease(&state->mutex);
	}
	PG_END_TRY();
}

/* Wake up to n waiters of a queue: one each, or all for a big batch. */
static void
wake_waiters(BrokerQueueState *state, int64 n)
{
	if (n <= 0 || pg_atomic_read_u32(&state->waiters) == 0)
		return;
	if (n >= 16)
		ConditionVariableBroadcast(&state->cv);
	else
		for (int64 i = 0; i < n; i++)
			ConditionVariableSignal(&state->cv);
}

/* The shared state of a pending entry's queue (caller holds the LWLock). */
static BrokerQueueState *
pending_state(BrokerPending *p)
{
	BrokerQueueKey key;

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.installation = p->installation;
	key.queue_id = p->queue_id;
	return hash_search(broker_queue_hash, &key, HASH_FIND, NULL);
}

/*
 * Wake the waiters of messages that a rolled-back transaction (or
 * savepoint) had leased: they are deliverable again at once.
 */
static void
wake_for_rollback(BrokerPending *entries, int n)
{
	LWLockAcquire(broker_shared->lock, LW_SHARED);
	for (int i = 0; i < n; i++)
	{
		BrokerQueueState *state;

		if (entries[i].counts[BROKER_COUNT_DELIVERED] == 0)
			continue;
		state = pending_state(&entries[i]);
		if (state != NULL)
			wake_waiters(state, entries[i].counts[BROKER_COUNT_DELIVERED]);
	}
	LWLockRelease(broker_shared->lock);
}

/* Publish counters, wake waiters and forget dropped queues at commit. */
static void
publish_pending(void)
{
	LWLockAcquire(broker_shared->lock, LW_SHARED);
	for (int i = 0; i < npending; i++)
	{
		BrokerPending *p = &pending[i];
		BrokerQueueState *state;

		if (p->dropped)
			continue;
		state = pending_state(p);
		if (state == NULL)
			continue;
		pg_atomic_fetch_add_u64(&state->enqueued_total,
								p->counts[BROKER_COUNT_ENQUEUED]);
		pg_atomic_fetch_add_u64(&state->deleted_total,
								p->counts[BROKER_COUNT_DELETED]);
		pg_atomic_fetch_add_u64(&state->expired_total,
								p->counts[BROKER_COUNT_EXPIRED]);
		pg_atomic_fetch_add_u64(&state->dead_lettered_total,
								p->counts[BROKER_COUNT_DEAD_LETTERED]);
		/* One new message wakes one waiter; a big batch wakes them all. */
		wake_waiters(state, p->counts[BROKER_COUNT_READY]);
		if (p->min_due != BROKER_NO_DUE)
			BrokerLowerNextDue(state, p->min_due);
	}
	LWLockRelease(broker_shared->lock);

	for (int i = 0; i < npending; i++)
	{
		BrokerPending *p = &pending[i];

		if (!p->dropped &&
			(p->counts[BROKER_COUNT_DELIVERED] > 0 ||
			 p->counts[BROKER_COUNT_DELETED] > 0))
			BrokerConsumerCount(p->installation, p->queue_id,
								p->counts[BROKER_COUNT_DELIVERED],
								p->counts[BROKER_COUNT_DELETED]);
	}

	for (int i = 0; i < npending; i++)
	{
		BrokerQueueKey key;

		if (!pending[i].dropped)
			continue;
		memset(&key, 0, sizeof(key));
		key.dbid = MyDatabaseId;
		key.installation = pending[i].installation;
		key.queue_id = pending[i].queue_id;
		LWLockAcquire(broker_shared->lock, LW_EXCLUSIVE);
		hash_search(broker_queue_hash, &key, HASH_REMOVE, NULL);
		LWLockRelease(broker_shared->lock);
		BrokerConsumerForgetQueue(pending[i].installation, pending[i].queue_id);
	}
}

/*
 * Remove the shared state of an installation (InvalidOid: of every
 * installation of the database): queue states, segment state, consumer
 * history.  Called at the commit of the transaction that dropped it.
 */
void
BrokerForgetInstallations(Oid dbid, Oid installation)
{
	HASH_SEQ_STATUS seq;
	BrokerQueueState *state;

	if (broker_shared == NULL)
		return;
	LWLockAcquire(broker_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, broker_queue_hash);
	while ((state = hash_seq_search(&seq)) != NULL)
	{
		/* dynahash allows removing the entry just returned by a scan */
		if (state->key.dbid == dbid &&
			(!OidIsValid(installation) || state->key.installation == installation))
			hash_search(broker_queue_hash, &state->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(broker_shared->lock);
	BrokerSegmentForget(dbid, installation);
	BrokerConsumerForget(dbid, installation);
}

/*
 * Rows were loaded into the segments behind the marks' back (a COPY, as a
 * restore does): start every mark of the installation from 0 again (a
 * lower mark is always correct, only slower until the next refresh), and
 * wake a waiter to look for what became due.
 */
void
BrokerResetMarks(Oid dbid, Oid installation)
{
	HASH_SEQ_STATUS seq;
	BrokerQueueState *state;
	TimestampTz now = GetCurrentTimestamp();

	if (broker_shared == NULL)
		return;
	LWLockAcquire(broker_shared->lock, LW_SHARED);
	hash_seq_init(&seq, broker_queue_hash);
	while ((state = hash_seq_search(&seq)) != NULL)
	{
		if (state->key.dbid != dbid || state->key.installation != installation)
			continue;
		SpinLockAcquire(&state->mutex);
		pg_atomic_write_u64(&state->lwm, 0);
		state->mark_resets++;
		SpinLockRelease(&state->mutex);
		BrokerLowerNextDue(state, now);
	}
	LWLockRelease(broker_shared->lock);
}

/* Remember an installation (or a database) this transaction drops. */
static void
note_dropped(Oid dbid, Oid installation)
{
	if (ndropped == maxdropped)
	{
		int			newmax = maxdropped == 0 ? 4 : maxdropped * 2;

		if (dropped == NULL)
			dropped = MemoryContextAlloc(TopTransactionContext,
										 newmax * sizeof(BrokerDropped));
		else
			dropped = repalloc(dropped, newmax * sizeof(BrokerDropped));
		maxdropped = newmax;
	}
	dropped[ndropped].dbid = dbid;
	dropped[ndropped].installation = installation;
	ndropped++;
	if (!callbacks_registered)
	{
		RegisterXactCallback(broker_xact_callback, NULL);
		RegisterSubXactCallback(broker_subxact_callback, NULL);
		callbacks_registered = true;
	}
}

/*
 * object_access_hook: when the broker extension or a whole database is
 * dropped, its shared state is forgotten at commit (DROP EXTENSION, DROP
 * SCHEMA ... CASCADE, DROP OWNED, DROP DATABASE), so that its slots are
 * free for others.  An aborted drop forgets nothing.
 */
static void
broker_object_access(ObjectAccessType access, Oid classId, Oid objectId,
					 int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access != OAT_DROP || broker_shared == NULL)
		return;
	if (classId == DatabaseRelationId)
		note_dropped(objectId, InvalidOid);
	else if (classId == ExtensionRelationId &&
			 objectId == get_extension_oid("broker", true))
		note_dropped(MyDatabaseId, objectId);
}

/* Reset the backend-local transaction state. */
static void
reset_xact_state(void)
{
	BrokerLeaseReset();
	pending = NULL;				/* freed with TopTransactionContext */
	npending = 0;
	maxpending = 0;
	xact_deleted = false;
	dropped = NULL;
	ndropped = maxdropped = 0;
}

/* Transaction callback: see the file header for why COMMIT is the point. */
static void
broker_xact_callback(XactEvent event, void *arg)
{
	(void) arg;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			BrokerLeaseFlush();
			break;
		case XACT_EVENT_PRE_PREPARE:
			BrokerLeaseFlush();
			if (nregistered > 0 || registered_any)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has enqueued broker messages"),
						 errdetail("A prepared enqueue would commit behind the queue's low-water mark.")));
			if (BrokerSegmentPending() || ndropped > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has maintained broker segments or dropped the extension"),
						 errdetail("Their effects on shared state are published when the transaction commits.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (npending > 0)
				publish_pending();
			BrokerSegmentXactEnd(true);
			for (int i = 0; i < ndropped; i++)
				BrokerForgetInstallations(dropped[i].dbid, dropped[i].installation);
			clear_registrations();
			reset_xact_state();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			if (npending > 0 && broker_shared != NULL)
				wake_for_rollback(pending, npending);
			BrokerSegmentXactEnd(false);
			clear_registrations();
			reset_xact_state();
			break;
		case XACT_EVENT_PREPARE:
			BrokerSegmentXactEnd(false);
			clear_registrations();
			reset_xact_state();
			break;
		default:
			break;
	}
}

/* Subtransaction callback: an aborted savepoint's counts never happened. */
static void
broker_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			j = 0;

	(void) arg;

	switch (event)
	{
		case SUBXACT_EVENT_ABORT_SUB:
			BrokerLeaseSubXactEnd(mySubid, parentSubid, false);
			BrokerSegmentSubXactEnd(mySubid, parentSubid, false);
			for (int i = 0; i < npending; i++)
			{
				if (pending[i].subid != mySubid)
					pending[j++] = pending[i];
				else
					wake_for_rollback(&pending[i], 1);
			}
			npending = j;
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			BrokerLeaseSubXactEnd(mySubid, parentSubid, true);
			BrokerSegmentSubXactEnd(mySubid, parentSubid, true);
			for (int i = 0; i < npending; i++)
			{
				if (pending[i].subid == mySubid)
					pending[i].subid = parentSubid;
			}
			break;
		default:
			break;
	}
}
