/*-------------------------------------------------------------------------
 *
 * queuedef.h
 *	  Queue definitions: a backend-local cache of broker.queue_defs, and
 *	  the queue locks.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_QUEUEDEF_H
#define BROKER_QUEUEDEF_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "storage/lockdefs.h"

#include "util.h"

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
	Interval	dedup_window;
	bool		has_retention;	/* keep a record of each message that leaves */
	Interval	retention;
	Interval	max_lease;		/* the longest lease dequeue or extend_lease give */
} BrokerQueue;

extern bool BrokerLookupQueue(text *name, bool missing_ok, BrokerQueue *out);
extern bool BrokerLookupQueueById(int32 queue_id, BrokerQueue *out);
extern void BrokerLockQueue(text *name, LOCKMODE mode, BrokerQueue *out);
extern void BrokerLockQueueById(int32 queue_id, LOCKMODE mode);
extern void BrokerInvalidateQueues(void);
extern void BrokerQueueMissing(const char *name) pg_attribute_noreturn();

#endif							/* BROKER_QUEUEDEF_H */
