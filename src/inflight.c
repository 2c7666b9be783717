/*-------------------------------------------------------------------------
 *
 * inflight.c
 *	  The per-backend registry of enqueues in flight, and the protocol that
 *	  advances each queue's low-water mark.
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
 *	 0. gen := the segments' move generation (store.h); give up if a
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
 * Priorities: each priority p in use has its own mark lwm_p(q), over the
 * claimable messages of q of priority p (store.c claims each priority
 * from its mark); steps 3 and 4 run per priority, with the same floor.
 * Messages waiting behind their ordered group's head are not claimable and
 * hold no mark; one that becomes its group's head keeps its id, which may
 * be below lwm_p: the promoting transaction lowers the mark when it
 * commits (qstate.c), counted as a reset, so a refresh that began before
 * does not write over it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/sequence.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "inflight.h"
#include "store.h"
#include "util.h"

/* Refresh a queue's low-water mark at most this often (microseconds). */
#define BROKER_LWM_REFRESH_US	10000

/* In-flight registrations per backend, the last one for "several queues". */
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

/* A backend's registrations; its owner and refreshing consumers take the spinlock. */
typedef struct BrokerBackendSlot
{
	slock_t		mutex;
	int			nentries;
	BrokerInflight e[BROKER_INFLIGHT_MAX];
} BrokerBackendSlot;

typedef struct BrokerInflightShared
{
	int			nslots;
	BrokerBackendSlot slots[FLEXIBLE_ARRAY_MEMBER];
} BrokerInflightShared;

static BrokerInflightShared *inflight = NULL;

/* Backend-local transaction state. */
static int32 registered[BROKER_INFLIGHT_MAX];	/* mirror of my slot */
static int	nregistered = 0;
static bool registered_any = false; /* holds a BROKER_ANY_QUEUE entry ... */
static int	any_index = -1;		/* ... at this index of my slot */
static uint64 any_mask = 0;		/* mirror of its mask */
static bool xact_deleted = false;

/* Space for one slot per backend. */
Size
BrokerInflightShmemSize(void)
{
	return add_size(offsetof(BrokerInflightShared, slots),
					mul_size(MaxBackends, sizeof(BrokerBackendSlot)));
}

/* Create or attach (caller holds AddinShmemInitLock). */
void
BrokerInflightShmemInit(void)
{
	bool		found;

	inflight = ShmemInitStruct("broker in-flight registry",
							   BrokerInflightShmemSize(), &found);
	if (!found)
	{
		inflight->nslots = MaxBackends;
		for (int i = 0; i < MaxBackends; i++)
		{
			SpinLockInit(&inflight->slots[i].mutex);
			inflight->slots[i].nentries = 0;
		}
	}
}

/* This backend's registry slot. */
static BrokerBackendSlot *
my_slot(void)
{
	Assert(MyBackendId >= 1 && MyBackendId <= inflight->nslots);
	return &inflight->slots[MyBackendId - 1];
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

	BrokerXactTrack();
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

	for (int i = 0; i < inflight->nslots; i++)
	{
		BrokerBackendSlot *slot = &inflight->slots[i];
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

/* Remember that this transaction deleted messages (see the file header). */
void
BrokerNoteDeleted(void)
{
	/* Without shared memory there is no mark to protect. */
	if (!BrokerSharedMemoryReady())
		return;
	BrokerXactTrack();			/* the end handler resets the flag */
	xact_deleted = true;
}

/*
 * Advance the queue's low-water mark if it was not refreshed recently.
 * Runs inside the caller's SPI connection and transaction.
 */
void
BrokerMaybeRefreshLwm(int32 queue_id, BrokerQueueState *state)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		floor;
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
		uint64		gen = BrokerStoreMovesBegin(&moving);
		uint32		used = pg_atomic_read_u32(&state->priorities);
		int64		marks[BROKER_PRIORITIES];

		floor = moving ? -1 :
			inflight_floor(queue_id,
						   nextval_internal(BrokerGetRels()->message_id_seq, false));

		/* Each priority in use has its own mark (store.c claims by them). */
		for (int p = 0; p < BROKER_PRIORITIES; p++)
		{
			int64		old = (int64) pg_atomic_read_u64(&state->lwm[p]);

			marks[p] = -1;
			if ((used & (1u << p)) == 0 || floor <= old)
				continue;
			marks[p] = BrokerStoreLowestId(queue_id, p, old, (used & ~1u) != 0);
			if (marks[p] < 0 || marks[p] > floor)
				marks[p] = floor;
		}

		/*
		 * A move began or ended during the probes: they may have missed it.
		 * Only ever move a mark up, and not at all if the marks were lowered
		 * meanwhile (BrokerLowerMarks, a promoted group message): other
		 * refreshes are excluded by the refreshing flag, lowerings by the
		 * mutex.
		 */
		if (!BrokerStoreMovesSince(gen))
		{
			SpinLockAcquire(&state->mutex);
			for (int p = 0; p < BROKER_PRIORITIES; p++)
			{
				if (state->mark_resets == resets &&
					marks[p] > (int64) pg_atomic_read_u64(&state->lwm[p]))
					pg_atomic_write_u64(&state->lwm[p], (uint64) marks[p]);
			}
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

/* A prepared enqueue would commit behind the mark: refuse the PREPARE. */
static void
inflight_pre_prepare(void)
{
	if (nregistered > 0 || registered_any)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that has enqueued broker messages"),
				 errdetail("A prepared enqueue would commit behind the queue's low-water mark.")));
}

/*
 * The transaction ended: its enqueues are visible (commit) or gone; clear
 * the registrations.
 */
static void
inflight_xact_end(BrokerXactEnd how)
{
	(void) how;
	if (inflight != NULL)
		clear_registrations();
	xact_deleted = false;
}

const BrokerXactHandler BrokerInflightXact = {
	.pre_prepare = inflight_pre_prepare,
	.end = inflight_xact_end,
};
