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

extern void BrokerWaitPrepare(BrokerQueueState *state);
extern bool BrokerWaitSleep(BrokerQueueState *state, TimestampTz now,
							TimestampTz deadline);
extern bool BrokerWaitNothingDue(int32 queue_id, BrokerQueueState *state,
								 TimestampTz now);
extern void BrokerWaitDone(BrokerQueueState *state, bool woken, bool kept_time,
						   bool full_batch);

#endif							/* BROKER_WAIT_H */
