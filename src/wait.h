/*-------------------------------------------------------------------------
 *
 * wait.h
 *	  Long-poll: sleeping on a queue until a commit or the clock makes a
 *	  message deliverable, one waiter keeping time for the others.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_WAIT_H
#define BROKER_WAIT_H

#include "postgres.h"

#include "qstate.h"

/* One waiting dequeue (on the caller's stack). */
typedef struct BrokerWait
{
	BrokerQueueState *state;
	bool		keeper;			/* keeping time for the queue now */
	bool		woken;			/* has slept at least once */
	bool		kept_time;		/* its last sleep kept time */
} BrokerWait;

extern void BrokerWaitBegin(BrokerWait *w, BrokerQueueState *state);
extern void BrokerWaitAbandon(int code, Datum arg);
extern bool BrokerWaitNothingDue(int32 queue_id, BrokerQueueState *state,
								 TimestampTz now);
extern void BrokerWaitSleep(BrokerWait *w, TimestampTz now,
							TimestampTz deadline);
extern void BrokerWaitEnd(BrokerWait *w, bool full_batch);

#endif							/* BROKER_WAIT_H */
