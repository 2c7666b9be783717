/*-------------------------------------------------------------------------
 *
 * broker.h
 *	  Declarations shared by the files of the broker extension.
 *
 * The extension is split by concern: broker.c (module init and GUCs),
 * shmem.c (shared state, in-flight registry, low-water marks, counters,
 * transaction callbacks), catalog.c (queue metadata cache, validators,
 * prepared plans), queue.c (create/drop/purge), enqueue.c, dequeue.c,
 * ack.c (delete/release/extend_lease) and metrics.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_H
#define BROKER_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/lock.h"
#include "storage/spin.h"
#include "storage/itemptr.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#define BROKER_QUEUE_NAME_MAX	48
#define BROKER_MAX_MESSAGE_SIZE_LIMIT	1048576
#define BROKER_MAX_BATCH		10000
#define BROKER_SEGMENTS			4	/* segment tables broker.messages_<n> */

/* --- GUCs (broker.c) --- */
extern int	broker_reaper_interval_ms;
extern int	broker_max_queues;

/* --- queue metadata (catalog.c) --- */

/* A backend-local copy of one row of broker.queue_defs. */
typedef struct BrokerQueue
{
	int32		queue_id;
	char		name[BROKER_QUEUE_NAME_MAX + 1];
	Interval	lease;
	int32		max_message_size;
	bool		has_default_ttl;
	Interval	default_ttl;
	int32		max_deliveries;		/* 0: no limit */
	int32		dead_letter_id;		/* 0: none */
} BrokerQueue;

/*
 * Object ids of the extension's relations, resolved once per invalidation
 * through the extension itself (pg_extension and its members in
 * pg_depend), never by a name another role could supply.
 */
typedef struct BrokerRels
{
	Oid			extension;		/* pg_extension OID: names this installation */
	Oid			queue_defs;
	Oid			messages;
	Oid			message_id_seq;
	Oid			queue_id_seq;
	Oid			segment[BROKER_SEGMENTS];	/* broker.messages_<n> */
	Oid			segments;		/* broker.segments */
	Oid			owner;			/* of the tables: the functions run as it */
} BrokerRels;

/* Every statement the extension runs, each prepared once and kept. */
typedef enum BrokerPlanId
{
	PLAN_QUEUE_BY_NAME,
	PLAN_QUEUE_BY_ID,
	PLAN_QUEUE_INSERT,
	PLAN_QUEUE_DLQ_USERS,
	PLAN_QUEUE_DELETE,
	PLAN_MESSAGES_PURGE,
	PLAN_ENQUEUE,
	PLAN_ENQUEUE_BATCH,
	PLAN_DEQUEUE,
	PLAN_LWM_PROBE,
	PLAN_NEXT_DUE,
	PLAN_DEQUEUE_LOCK,
	PLAN_DEQUEUE_LOCK_EXCL,
	PLAN_DELETE_TIDS,
	PLAN_LEASE_WRITE,
	PLAN_DELETE,
	PLAN_DELETE_RECEIPT,
	PLAN_DELETE_MANY,
	PLAN_RELEASE,
	PLAN_EXTEND,
	PLAN_METRICS,
	PLAN_QUEUE_LIST,
	BROKER_NUM_PLANS
} BrokerPlanId;

extern const BrokerRels *BrokerGetRels(void);
extern const BrokerRels *BrokerFindRels(bool missing_ok);
extern void BrokerRequireWritable(const char *action);
extern char *BrokerClipForMessage(const char *s, int len);
extern void BrokerCheckQueueName(text *name);
extern bool BrokerLookupQueue(text *name, bool missing_ok, BrokerQueue *out);
extern bool BrokerLookupQueueById(int32 queue_id, BrokerQueue *out);
extern void BrokerLockQueue(text *name, LOCKMODE mode, BrokerQueue *out);
extern void BrokerInvalidateQueues(void);
extern SPIPlanPtr BrokerPlan(BrokerPlanId id);
extern SPIPlanPtr BrokerPlanSeg(BrokerPlanId id, int seg);
extern int	BrokerExecute(SPIPlanPtr plan, Datum *values, const char *nulls,
						  long count);
extern void BrokerSPIConnect(void);
extern void BrokerSPIFinish(void);

/* small validators shared by the entry points */
extern bool BrokerIntervalIsPositive(const Interval *iv);
extern bool BrokerIntervalIsNegative(const Interval *iv);
extern TimestampTz BrokerTimestampPlus(TimestampTz ts, const Interval *iv);
extern void BrokerRequireArg(FunctionCallInfo fcinfo, int argno, const char *argname);
extern text *BrokerQueueArg(FunctionCallInfo fcinfo, int argno);

/* --- shared memory (shmem.c) --- */

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
 * is dropped.  lwm: no live message of the queue has an id below it (see
 * shmem.c for the protocol that keeps this true).
 */
typedef struct BrokerQueueState
{
	BrokerQueueKey key;
	slock_t		mutex;			/* protects refreshing, last_refresh,
								 * mark_resets, timekeeper, and lwm's
								 * writes */
	bool		refreshing;
	TimestampTz last_refresh;
	uint64		mark_resets;	/* times BrokerResetMarks lowered lwm */
	int			timekeeper;		/* pgprocno of the waiter that sleeps until
								 * next_due, or -1 */
	TimestampTz keeper_due;		/* the next_due it sleeps toward */
	pg_atomic_uint64 lwm;
	pg_atomic_uint64 enqueued_total;
	pg_atomic_uint64 deleted_total;
	pg_atomic_uint64 expired_total;
	pg_atomic_uint64 dead_lettered_total;
	ConditionVariable cv;		/* long-poll waiters sleep here */
	pg_atomic_uint64 next_due;	/* earliest known future vt, or PG_INT64_MAX */
	pg_atomic_uint32 waiters;	/* backends sleeping on cv now */
	pg_atomic_uint64 wakeups;	/* times a waiter woke up */
	pg_atomic_uint64 empty_wakeups; /* ... and found nothing to take */
} BrokerQueueState;

/* What a transaction did to a queue, made public when it commits. */
typedef enum BrokerCounter
{
	BROKER_COUNT_ENQUEUED,
	BROKER_COUNT_DELETED,
	BROKER_COUNT_EXPIRED,
	BROKER_COUNT_DEAD_LETTERED,
	BROKER_COUNT_DELIVERED,		/* leases taken (consumer history) */
	BROKER_COUNT_READY,			/* made deliverable now: wake waiters */
	BROKER_NUM_COUNTERS
} BrokerCounter;

/* No event due: the value of BrokerQueueState.next_due. */
#define BROKER_NO_DUE	PG_INT64_MAX

extern void BrokerShmemInit(void);
extern void BrokerRequireSharedMemory(void);
extern bool BrokerSharedMemoryReady(void);
extern BrokerQueueState *BrokerQueueStateGet(int32 queue_id, bool create);
extern int64 BrokerAllocateMessageId(int32 queue_id);
extern void BrokerCount(int32 queue_id, BrokerCounter counter, int64 n);
extern void BrokerNoteDeleted(void);
extern void BrokerMaybeRefreshLwm(int32 queue_id, BrokerQueueState *state);
extern void BrokerNoteDroppedQueue(int32 queue_id);
extern void BrokerNoteDue(int32 queue_id, TimestampTz due);
extern void BrokerLowerNextDue(BrokerQueueState *state, TimestampTz due);
extern void BrokerForgetInstallations(Oid dbid, Oid installation);
extern void BrokerResetMarks(Oid dbid, Oid installation);

/* --- segments (segment.c) --- */
extern int	broker_segment_size;
extern Size BrokerSegmentShmemSize(void);
extern void BrokerSegmentShmemInit(void);
extern int	BrokerSegmentCurrent(void);
extern int	BrokerSegmentScanOrder(int *segs);
extern int	BrokerSegmentLookupOrder(int64 id, int *segs);
extern void BrokerSegmentInserted(int seg);
extern void BrokerSegmentFound(int seg);
extern uint64 BrokerSegmentMovesBegin(bool *moving);
extern bool BrokerSegmentMovesSince(uint64 gen);
extern void BrokerSegmentBulkLoad(void);
extern void BrokerSegmentsMaintain(void);
extern void BrokerSegmentsVerifyDrained(void);
extern void BrokerSegmentXactEnd(bool commit);
extern void BrokerSegmentSubXactEnd(SubTransactionId mySubid,
									SubTransactionId parentSubid, bool commit);
extern bool BrokerSegmentPending(void);
extern void BrokerSegmentForget(Oid dbid, Oid installation);

/* --- consumer history (stats.c) --- */
extern char *broker_consumer_name;
extern int	broker_max_consumers;
extern Size BrokerStatsShmemSize(void);
extern void BrokerStatsShmemInit(void);
extern void BrokerConsumerCount(Oid installation, int32 queue_id,
								int64 delivered, int64 deleted);
extern void BrokerConsumerForgetQueue(Oid installation, int32 queue_id);
extern void BrokerConsumerForget(Oid dbid, Oid installation);

/* --- leases pending until commit (lease.c) --- */
typedef enum BrokerLeaseMatch
{
	BROKER_LEASE_NONE,			/* not leased by this transaction */
	BROKER_LEASE_HELD,			/* leased by it; the receipt matches */
	BROKER_LEASE_STALE			/* leased by it; the receipt does not match */
} BrokerLeaseMatch;

extern bool broker_defer_lease_write;
extern void BrokerLeaseAdd(int32 queue_id, int64 id, int seg, ItemPointer tid,
						   int32 delivery_count, int64 receipt, TimestampTz vt);
extern BrokerLeaseMatch BrokerLeaseCheck(int32 queue_id, int64 id,
										 bool has_receipt, int64 receipt,
										 int *seg);
extern void BrokerLeaseDeleted(int32 queue_id, int64 id);
extern bool BrokerLeaseSetVt(int32 queue_id, int64 id, int64 receipt,
							 TimestampTz vt, bool release);
extern ArrayType *BrokerLeaseIds(int32 queue_id);
extern bool BrokerLeaseHasQueue(int32 queue_id);
extern void BrokerLeaseFlush(void);
extern void BrokerLeaseReset(void);
extern void BrokerLeaseSubXactEnd(SubTransactionId mySubid,
								  SubTransactionId parentSubid, bool commit);

/* --- enqueue.c --- */
extern int64 BrokerEnqueueOne(const BrokerQueue *q, Jsonb *payload,
							  Jsonb *headers, TimestampTz now,
							  TimestampTz vt, bool has_expiry,
							  TimestampTz expires_at);
extern void BrokerCheckMessageSize(const BrokerQueue *q, Jsonb *payload,
								   Jsonb *headers, int element);

#endif							/* BROKER_H */
