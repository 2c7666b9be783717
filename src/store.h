/*-------------------------------------------------------------------------
 *
 * store.h
 *	  The message store: the only code that knows the message tables and
 *	  their segments (store.c: the statements; segment.c: which segment is
 *	  current, rotation, emptying drained segments).
 *
 * Callers see queues and message ids, never a table or a segment.  Every
 * function runs in the caller's transaction and SPI connection; Datums
 * and rows it returns point into SPI memory, valid until SPI_finish.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_STORE_H
#define BROKER_STORE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "storage/itemptr.h"
#include "utils/array.h"
#include "utils/jsonb.h"

#include "util.h"
#include "xact.h"

/* A message to store. */
typedef struct BrokerNewMessage
{
	int32		queue_id;
	int64		id;
	TimestampTz vt;				/* deliverable from then on */
	TimestampTz enqueued_at;
	bool		has_expiry;
	TimestampTz expires_at;
	Jsonb	   *payload;
	Jsonb	   *headers;		/* or NULL */
	text	   *group_key;		/* ordered group, or NULL */
	int			priority;		/* 0 .. BROKER_PRIORITIES - 1 */
} BrokerNewMessage;

/* Where a message taken by BrokerStoreClaim is: opaque to callers. */
typedef struct BrokerRowRef
{
	int			part;
	ItemPointerData tid;
} BrokerRowRef;

/* A deliverable message, locked by this transaction (BrokerStoreClaim). */
typedef struct BrokerClaimed
{
	BrokerRowRef ref;
	int64		id;
	Datum		payload;
	Datum		headers;
	bool		headers_null;
	TimestampTz enqueued_at;
	int32		delivery_count;
	Datum		expires_at;
	bool		expires_null;
	text	   *group_key;		/* ordered group (it is the head), or NULL */
	int			priority;
	TimestampTz vt;				/* its visibility time before this claim */
} BrokerClaimed;

/* What to claim: a queue's deliverable messages, highest priority first. */
typedef struct BrokerClaimSpec
{
	int32		queue_id;
	int64		from_id[BROKER_PRIORITIES];	/* each priority's low-water mark */
	uint32		priorities;		/* bit per priority to look at */
	TimestampTz now;
	int			limit;
	ArrayType  *exclude;		/* ids this transaction leased, or NULL */
} BrokerClaimSpec;

/* A lease to write into a message that a claim locked (lease.c). */
typedef struct BrokerLeaseWrite
{
	BrokerRowRef ref;
	TimestampTz vt;
	int32		delivery_count;
	int64		receipt;		/* 0: none (released) */
} BrokerLeaseWrite;

/* What a queue holds now (broker.metrics). */
typedef struct BrokerQueueCounts
{
	int32		queue_id;
	char	   *name;
	int64		ready;
	int64		leased;
	int64		delayed;
	int64		total;
	bool		has_oldest;
	Interval	oldest_ready_age;
} BrokerQueueCounts;

/* A message a delete took out, as it was (for its job record). */
typedef struct BrokerRemoved
{
	int64		id;
	int32		delivery_count;
	TimestampTz enqueued_at;
	TimestampTz vt;
	Datum		payload;
	Jsonb	   *headers;		/* or NULL */
	int			priority;
} BrokerRemoved;

/* The record of a message that left a queue with a retention. */
typedef struct BrokerRecord
{
	int64		id;
	const char *state;			/* done, failed, deleted, dead_lettered, expired */
	int32		delivery_count;
	TimestampTz enqueued_at;
	TimestampTz visible_at;
	TimestampTz finished_at;
	Datum		payload;
	Jsonb	   *headers;		/* or NULL */
	Jsonb	   *result;			/* or NULL */
} BrokerRecord;

/* A job as broker.status shows it: a live message or a record. */
typedef struct BrokerJob
{
	int64		id;
	const char *state;
	int32		delivery_count;
	TimestampTz enqueued_at;
	TimestampTz visible_at;
	bool		has_finished;
	TimestampTz finished_at;
	Datum		payload;
	Datum		headers;
	bool		headers_null;
	Datum		result;
	bool		result_null;
} BrokerJob;

/* Called with the expired messages a batch removed, per queue. */
typedef void (*BrokerExpiredFn) (int32 queue_id, int64 n);

/* store.c */
extern void BrokerStoreLockGroups(int32 queue_id, text **keys, int n);
extern bool BrokerStoreInsert(const BrokerNewMessage *m);
extern void BrokerStoreInsertBatch(const BrokerNewMessage *common,
								   const int64 *ids, const Datum *payloads,
								   text **group_keys, int n, bool *claimable);
extern int	BrokerStoreClaim(const BrokerClaimSpec *spec, BrokerClaimed **rows);
extern void BrokerStoreWriteLeases(const BrokerLeaseWrite *leases, int n);
extern int64 BrokerStoreLowestId(int32 queue_id, int priority, int64 from_id,
								 bool higher_in_use);
extern uint32 BrokerStorePrioritiesInUse(int32 queue_id);
extern TimestampTz BrokerStoreNextDue(int32 queue_id, int64 from_id,
									  TimestampTz now);
extern int	BrokerStoreCounts(int32 queue_id, TimestampTz now,
							  BrokerQueueCounts **counts);

/* remove.c */
extern void BrokerStoreDeleteClaimed(int32 queue_id, const BrokerClaimed *rows,
									 int n);
extern bool BrokerStoreDelete(int32 queue_id, int64 id, bool has_receipt,
							  int64 receipt, const BrokerRowRef *where,
							  BrokerRemoved *removed);
extern int	BrokerStoreDeleteMany(int32 queue_id, ArrayType *ids,
								  const BrokerRowRef *held, int nheld,
								  int64 **deleted, BrokerRemoved **removed);
extern bool BrokerStoreSetVt(int32 queue_id, int64 id, int64 receipt,
							 TimestampTz vt, bool release, TimestampTz *vt_out);
extern uint64 BrokerStoreExpire(int32 queue_id, TimestampTz now, int limit,
								BrokerExpiredFn counted);
extern uint64 BrokerStorePurge(int32 queue_id);

/* records.c */
extern int	BrokerStoreRecordTable(TimestampTz *now);
extern void BrokerStoreRecord(int32 queue_id, const BrokerRecord *recs, int n);
extern int	BrokerStoreJobs(int32 queue_id, ArrayType *ids, TimestampTz now,
							bool has_since, TimestampTz since, BrokerJob **jobs);
extern int	BrokerStoreArchive(int32 queue_id, int64 after_id, TimestampTz since,
							   int max_rows, BrokerJob **jobs);
extern void BrokerStoreForgetRecords(int32 queue_id);

/* dedup.c */
extern void BrokerStoreDedupLock(int32 queue_id, text **keys, int n);
extern int64 BrokerStoreDedupClaim(int32 queue_id, text *key, int64 id,
								   TimestampTz enqueued_at, TimestampTz since);
extern void BrokerStoreForgetKeys(int32 queue_id);

/* segment.c */
extern int	broker_segment_size;
extern void BrokerSegmentInit(void);
extern Size BrokerSegmentShmemSize(void);
extern void BrokerSegmentShmemInit(void);
extern uint64 BrokerStoreMovesBegin(bool *moving);
extern bool BrokerStoreMovesSince(uint64 gen);
extern bool BrokerStoreIsPartition(Oid relid);
extern void BrokerStoreBulkLoad(void);
extern void BrokerStoreMaintain(void);
extern int64 BrokerStoreRepairGroups(int32 only_queue);
extern void BrokerStoreForget(Oid dbid, Oid installation);
extern const BrokerXactHandler BrokerSegmentXact;

#endif							/* BROKER_STORE_H */
