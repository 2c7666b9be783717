/*-------------------------------------------------------------------------
 *
 * qstate.h
 *	  Per-queue shared state: the low-water mark, counters, the condition
 *	  variable long-poll waiters sleep on and the next time something
 *	  becomes due; and what a transaction did to a queue, published when it
 *	  commits.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_QSTATE_H
#define BROKER_QSTATE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/spin.h"

#include "util.h"
#include "xact.h"

/* No event due: the value of BrokerQueueState.next_due. */
#define BROKER_NO_DUE	PG_INT64_MAX

/*
 * Hash key of a queue's shared state.  Queues live in one database, and
 * queue ids restart when the extension is dropped and created again, so
 * the key also holds the OID of that installation's pg_extension row.
 */
typedef struct BrokerQueueKey
{
	Oid			dbid;
	Oid			installation;	/* BrokerRels.extension */
	int32		queue_id;
} BrokerQueueKey;

/*
 * Shared state of one queue, created on first use, removed when the queue
 * or its installation is dropped.  lwm[p]: no live claimable message of
 * the queue of priority p has an id below it (inflight.c keeps this true).
 * priorities: bit p set once a message of priority p may exist (set by
 * producers before they insert, found in the table after a restart).
 */
typedef struct BrokerQueueState
{
	BrokerQueueKey key;
	slock_t		mutex;			/* protects refreshing, last_refresh,
								 * mark_resets, timekeeper, and lwm's
								 * writes */
	bool		refreshing;
	TimestampTz last_refresh;
	uint64		mark_resets;	/* times BrokerLowerMarks lowered lwm */
	int			timekeeper;		/* pgprocno of the waiter that sleeps until
								 * next_due, or -1 */
	TimestampTz keeper_due;		/* the next_due it sleeps toward */
	pg_atomic_uint64 lwm[BROKER_PRIORITIES];
	pg_atomic_uint32 priorities;	/* bit per priority in use */
	bool		priorities_known;	/* the table was looked at since start */
	pg_atomic_uint64 enqueued_total;
	pg_atomic_uint64 deleted_total;
	pg_atomic_uint64 expired_total;
	pg_atomic_uint64 dead_lettered_total;
	pg_atomic_uint64 completed_total;
	pg_atomic_uint64 failed_total;
	ConditionVariable cv;		/* long-poll waiters sleep here */
	pg_atomic_uint64 next_due;	/* earliest known future vt, or BROKER_NO_DUE */
	pg_atomic_uint32 waiters;	/* backends in a waiting dequeue now */
	pg_atomic_uint64 wakeups;	/* times a waiter woke up */
	pg_atomic_uint64 empty_wakeups; /* ... and found nothing to take */
	pg_atomic_uint32 orphans;	/* a group may have waiting messages and no
								 * head: the reaper hands it on (groups.c) */
} BrokerQueueState;

/* What a transaction did to a queue, made public when it commits. */
typedef enum BrokerCounter
{
	BROKER_COUNT_ENQUEUED,
	BROKER_COUNT_DELETED,
	BROKER_COUNT_EXPIRED,
	BROKER_COUNT_DEAD_LETTERED,
	BROKER_COUNT_COMPLETED,		/* complete() removed it */
	BROKER_COUNT_FAILED,		/* fail() removed it */
	BROKER_COUNT_DELIVERED,		/* leases taken (consumer history) */
	BROKER_COUNT_READY,			/* made deliverable now: wake waiters */
	BROKER_NUM_COUNTERS
} BrokerCounter;

extern int	broker_max_queues;
extern const BrokerXactHandler BrokerQueueStateXact;

extern void BrokerQueueStateInit(void);
extern Size BrokerQueueStateShmemSize(void);
extern void BrokerQueueStateShmemInit(void);
extern BrokerQueueState *BrokerQueueStateGet(int32 queue_id, bool create);
extern void BrokerCount(int32 queue_id, BrokerCounter counter, int64 n);
extern void BrokerNoteDue(int32 queue_id, TimestampTz due);
extern void BrokerLowerNextDue(BrokerQueueState *state, TimestampTz due);
extern void BrokerNoteDroppedQueue(int32 queue_id);
extern void BrokerLowerMarks(Oid dbid, Oid installation);
extern void BrokerNoteMarkBelow(int32 queue_id, int priority, int64 id);
extern void BrokerNoteOrphans(int32 queue_id);
extern int	BrokerTakeOrphanQueues(int32 only, int32 *queue_ids, int max);
extern void BrokerNotePriority(BrokerQueueState *state, int priority);
extern int64 BrokerQueueLowestMark(BrokerQueueState *state);
extern void BrokerQueueStatesForget(Oid dbid, Oid installation);

#endif							/* BROKER_QSTATE_H */
