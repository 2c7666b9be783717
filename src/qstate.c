/*-------------------------------------------------------------------------
 *
 * qstate.c
 *	  Per-queue shared state and what a transaction did to each queue.
 *
 * Locking
 * -------
 * The BROKER_LOCK_QUEUES LWLock protects the hash table of queue states:
 * shared to look an entry up, exclusive to add or remove one.  A pointer to
 * an entry stays valid while the queue's heavyweight lock, or a lock on one
 * of the extension's tables, is held in any mode: an entry is only removed
 * at the commit of a transaction that dropped the queue (which holds the
 * queue's lock exclusively) or the extension (which holds every table
 * exclusively).  BrokerQueueState.mutex (a spinlock) protects the fields
 * that are not atomics.  No lock here is held while another is acquired,
 * except this LWLock around a condition-variable signal (a spinlock
 * inside); so no deadlock.
 *
 * Pending effects
 * ---------------
 * Counters (enqueued, deleted, expired, dead-lettered, delivered), the
 * number of messages made deliverable (each wakes one waiter) and the
 * earliest future visibility time written are kept per queue and per
 * subtransaction in backend memory, and published when the transaction
 * commits: rolled-back work is never counted, and a waiter is never woken
 * for a message it could not yet see.  A rolled-back dequeue wakes waiters
 * for the messages it gave back.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "qstate.h"
#include "stats.h"
#include "util.h"
#include "xact.h"

int			broker_max_queues = 4096;

/* What this transaction did to one queue, published at commit. */
typedef struct BrokerPending
{
	Oid			installation;
	int32		queue_id;
	SubTransactionId subid;
	bool		dropped;
	int64		counts[BROKER_NUM_COUNTERS];
	TimestampTz min_due;		/* earliest future vt written, or BROKER_NO_DUE */
	int64		mark_below[BROKER_PRIORITIES];	/* lower lwm[p] to this, or 0 */
	bool		orphans;		/* a group's head left without a hand-on */
} BrokerPending;

static LWLock *queues_lock = NULL;
static HTAB *queue_hash = NULL;

/* Backend-local transaction state. */
static BrokerPending *pending = NULL;	/* in TopTransactionContext */
static int	npending = 0;
static int	maxpending = 0;

/* Define the setting of the queue-state table (from _PG_init). */
void
BrokerQueueStateInit(void)
{
	/* PGC_POSTMASTER: only when the postmaster loads us (see stats.c). */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("broker.max_queues",
								"Maximum number of queues with shared state, in all databases.",
								"Each queue in use takes one slot of shared memory "
								"(its low-water mark, counters and long-poll waiters).",
								&broker_max_queues,
								4096, 16, 1000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
}

/* Shared memory for the queue states. */
Size
BrokerQueueStateShmemSize(void)
{
	return hash_estimate_size(broker_max_queues, sizeof(BrokerQueueState));
}

/* Create or attach (caller holds AddinShmemInitLock). */
void
BrokerQueueStateShmemInit(void)
{
	HASHCTL		info;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(BrokerQueueKey);
	info.entrysize = sizeof(BrokerQueueState);
	queue_hash = ShmemInitHash("broker queue states",
							   broker_max_queues, broker_max_queues,
							   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	queues_lock = &(GetNamedLWLockTranche("broker"))[BROKER_LOCK_QUEUES].lock;
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

	LWLockAcquire(queues_lock, LW_SHARED);
	state = hash_search(queue_hash, &key, HASH_FIND, NULL);
	LWLockRelease(queues_lock);
	if (state != NULL || !create)
		return state;

	LWLockAcquire(queues_lock, LW_EXCLUSIVE);
	state = hash_search(queue_hash, &key, HASH_ENTER_NULL, &found);
	if (state == NULL)
	{
		LWLockRelease(queues_lock);
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
		for (int p = 0; p < BROKER_PRIORITIES; p++)
			pg_atomic_init_u64(&state->lwm[p], 0);
		pg_atomic_init_u32(&state->priorities, 1);	/* priority 0 */
		state->priorities_known = false;
		pg_atomic_init_u64(&state->enqueued_total, 0);
		pg_atomic_init_u64(&state->deleted_total, 0);
		pg_atomic_init_u64(&state->expired_total, 0);
		pg_atomic_init_u64(&state->dead_lettered_total, 0);
		pg_atomic_init_u64(&state->completed_total, 0);
		pg_atomic_init_u64(&state->failed_total, 0);
		ConditionVariableInit(&state->cv);
		pg_atomic_init_u64(&state->next_due, (uint64) BROKER_NO_DUE);
		state->timekeeper = -1;
		state->keeper_due = BROKER_NO_DUE;
		pg_atomic_init_u32(&state->waiters, 0);
		pg_atomic_init_u64(&state->wakeups, 0);
		pg_atomic_init_u64(&state->empty_wakeups, 0);
		/* after a start (or a crash) the reaper looks once for orphans */
		pg_atomic_init_u32(&state->orphans, 1);
	}
	LWLockRelease(queues_lock);
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
	BrokerXactTrack();
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
	if (!BrokerSharedMemoryReady() || n == 0)
		return;
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
	p = pending_entry(queue_id, true);
	if (due < p->min_due)
		p->min_due = due;
}

/*
 * A message of the queue with an id that may be below the queue's mark of
 * its priority became claimable in this transaction (an ordered group's
 * next message, which kept its id): lower the mark at commit.
 */
void
BrokerNoteMarkBelow(int32 queue_id, int priority, int64 id)
{
	BrokerPending *p;

	if (!BrokerSharedMemoryReady())
		return;
	p = pending_entry(queue_id, true);
	if (p->mark_below[priority] == 0 || id < p->mark_below[priority])
		p->mark_below[priority] = id;
}

/*
 * A group of the queue lost its head in this transaction and its next
 * message could not be promoted now (groups.c): at commit, flag the queue
 * for the reaper to hand the group on.
 */
void
BrokerNoteOrphans(int32 queue_id)
{
	if (!BrokerSharedMemoryReady())
		return;
	pending_entry(queue_id, true)->orphans = true;
}

/*
 * The queues of this database's installation flagged for orphaned groups
 * (only that one if "only" is not 0; at most max, into queue_ids), their
 * flags cleared; returns how many.
 */
int
BrokerTakeOrphanQueues(int32 only, int32 *queue_ids, int max)
{
	HASH_SEQ_STATUS seq;
	BrokerQueueState *state;
	Oid			installation = BrokerGetRels()->extension;
	int			n = 0;

	if (queue_hash == NULL)
		return 0;
	LWLockAcquire(queues_lock, LW_SHARED);
	hash_seq_init(&seq, queue_hash);
	while ((state = hash_seq_search(&seq)) != NULL)
	{
		if (state->key.dbid != MyDatabaseId || state->key.installation != installation)
			continue;
		if (n == max || (only != 0 && state->key.queue_id != only) ||
			pg_atomic_read_u32(&state->orphans) == 0)
			continue;
		if (pg_atomic_exchange_u32(&state->orphans, 0) != 0)
			queue_ids[n++] = state->key.queue_id;
	}
	LWLockRelease(queues_lock);
	return n;
}

/* A message of this priority is about to exist: scans must cover it. */
void
BrokerNotePriority(BrokerQueueState *state, int priority)
{
	uint32		bit = 1u << priority;

	if ((pg_atomic_read_u32(&state->priorities) & bit) == 0)
		pg_atomic_fetch_or_u32(&state->priorities, bit);
}

/* The lowest mark of the priorities in use: no claimable message is below. */
int64
BrokerQueueLowestMark(BrokerQueueState *state)
{
	uint32		used = pg_atomic_read_u32(&state->priorities);
	int64		lowest = PG_INT64_MAX;

	for (int p = 0; p < BROKER_PRIORITIES; p++)
	{
		if ((used & (1u << p)) != 0)
			lowest = Min(lowest, (int64) pg_atomic_read_u64(&state->lwm[p]));
	}
	return lowest == PG_INT64_MAX ? 0 : lowest;
}

/* Remove the queue's shared state when this transaction commits. */
void
BrokerNoteDroppedQueue(int32 queue_id)
{
	if (!BrokerSharedMemoryReady())
		return;
	pending_entry(queue_id, false)->dropped = true;
}

/*
 * Lower a queue's next due time.  If it moved earlier, the waiter keeping
 * time may sleep too long: wake one waiter, which takes over keeping time
 * (wait.c).  Never more than one is woken.
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

/*
 * Rows were put into the message tables behind the marks' back (a COPY, as
 * a restore does; see segment.c): start every mark of the installation
 * from 0 again (a lower mark is always correct, only slower until the next
 * refresh), count the reset so that a refresh that began before it does
 * not write its result (inflight.c), look for the priorities in use again,
 * and wake a waiter to look.
 */
void
BrokerLowerMarks(Oid dbid, Oid installation)
{
	HASH_SEQ_STATUS seq;
	BrokerQueueState *state;
	TimestampTz now = GetCurrentTimestamp();

	if (queue_hash == NULL)
		return;
	LWLockAcquire(queues_lock, LW_SHARED);
	hash_seq_init(&seq, queue_hash);
	while ((state = hash_seq_search(&seq)) != NULL)
	{
		if (state->key.dbid != dbid || state->key.installation != installation)
			continue;
		SpinLockAcquire(&state->mutex);
		for (int p = 0; p < BROKER_PRIORITIES; p++)
			pg_atomic_write_u64(&state->lwm[p], 0);
		state->mark_resets++;
		state->priorities_known = false;
		SpinLockRelease(&state->mutex);
		BrokerLowerNextDue(state, now);
	}
	LWLockRelease(queues_lock);
}

/*
 * Remove the queue states of an installation (InvalidOid: of every
 * installation of the database), at the commit that dropped it.
 */
void
BrokerQueueStatesForget(Oid dbid, Oid installation)
{
	HASH_SEQ_STATUS seq;
	BrokerQueueState *state;

	if (queue_hash == NULL)
		return;
	LWLockAcquire(queues_lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, queue_hash);
	while ((state = hash_seq_search(&seq)) != NULL)
	{
		/* dynahash allows removing the entry just returned by a scan */
		if (state->key.dbid == dbid &&
			(!OidIsValid(installation) || state->key.installation == installation))
			hash_search(queue_hash, &state->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(queues_lock);
}

/* Wake up to n waiters of a queue: one each, or all for a big batch. */
static void
wake_waiters(BrokerQueueState *state, int64 n)
{
	if (n <= 0)
		return;
	/* The commit is published; only now read the count (wait.c). */
	pg_memory_barrier();
	if (pg_atomic_read_u32(&state->waiters) == 0)
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
	return hash_search(queue_hash, &key, HASH_FIND, NULL);
}

/*
 * Wake the waiters of messages that a rolled-back transaction (or
 * savepoint) had leased: they are deliverable again at once.
 */
static void
wake_for_rollback(BrokerPending *entries, int n)
{
	LWLockAcquire(queues_lock, LW_SHARED);
	for (int i = 0; i < n; i++)
	{
		BrokerQueueState *state;

		if (entries[i].counts[BROKER_COUNT_DELIVERED] == 0)
			continue;
		state = pending_state(&entries[i]);
		if (state != NULL)
			wake_waiters(state, entries[i].counts[BROKER_COUNT_DELIVERED]);
	}
	LWLockRelease(queues_lock);
}

/* Publish counters, wake waiters and forget dropped queues at commit. */
static void
publish_pending(void)
{
	LWLockAcquire(queues_lock, LW_SHARED);
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
		pg_atomic_fetch_add_u64(&state->completed_total,
								p->counts[BROKER_COUNT_COMPLETED]);
		pg_atomic_fetch_add_u64(&state->failed_total,
								p->counts[BROKER_COUNT_FAILED]);
		/* Lower marks below messages that kept an older id (see above). */
		for (int k = 0; k < BROKER_PRIORITIES; k++)
		{
			if (p->mark_below[k] == 0)
				continue;
			SpinLockAcquire(&state->mutex);
			if ((int64) pg_atomic_read_u64(&state->lwm[k]) > p->mark_below[k])
			{
				pg_atomic_write_u64(&state->lwm[k], (uint64) p->mark_below[k]);
				state->mark_resets++;
			}
			SpinLockRelease(&state->mutex);
		}
		if (p->orphans)
			pg_atomic_write_u32(&state->orphans, 1);
		/* One new message wakes one waiter; a big batch wakes them all. */
		wake_waiters(state, p->counts[BROKER_COUNT_READY]);
		if (p->min_due != BROKER_NO_DUE)
			BrokerLowerNextDue(state, p->min_due);
	}
	LWLockRelease(queues_lock);

	for (int i = 0; i < npending; i++)
	{
		BrokerPending *p = &pending[i];
		int64		removed;

		/* A consumer's removals: deletes, completions and failures. */
		removed = p->counts[BROKER_COUNT_DELETED] +
			p->counts[BROKER_COUNT_COMPLETED] + p->counts[BROKER_COUNT_FAILED];
		if (!p->dropped &&
			(p->counts[BROKER_COUNT_DELIVERED] > 0 || removed > 0))
			BrokerConsumerCount(p->installation, p->queue_id,
								p->counts[BROKER_COUNT_DELIVERED], removed);
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
		LWLockAcquire(queues_lock, LW_EXCLUSIVE);
		hash_search(queue_hash, &key, HASH_REMOVE, NULL);
		LWLockRelease(queues_lock);
		BrokerConsumerForgetQueue(pending[i].installation, pending[i].queue_id);
	}
}

/* End of transaction: publish at commit, wake for a rollback. */
static void
qstate_xact_end(BrokerXactEnd how)
{
	if (npending > 0 && queue_hash != NULL)
	{
		if (how == BROKER_XACT_COMMITTED)
			publish_pending();
		else if (how == BROKER_XACT_ABORTED)
			wake_for_rollback(pending, npending);
	}
	pending = NULL;				/* freed with TopTransactionContext */
	npending = 0;
	maxpending = 0;
}

/* A savepoint's counts never happened if it rolled back. */
static void
qstate_subxact_end(SubTransactionId mySubid, SubTransactionId parentSubid,
				   bool committed)
{
	int			j = 0;

	for (int i = 0; i < npending; i++)
	{
		if (pending[i].subid != mySubid)
			pending[j++] = pending[i];
		else if (committed)
		{
			pending[i].subid = parentSubid;
			pending[j++] = pending[i];
		}
		else
			wake_for_rollback(&pending[i], 1);
	}
	npending = j;
}

const BrokerXactHandler BrokerQueueStateXact = {
	.end = qstate_xact_end,
	.subxact_end = qstate_subxact_end,
};
