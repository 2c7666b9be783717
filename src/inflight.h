/*-------------------------------------------------------------------------
 *
 * inflight.h
 *	  The in-flight registry of enqueues and the low-water-mark protocol
 *	  built on it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_INFLIGHT_H
#define BROKER_INFLIGHT_H

#include "postgres.h"

#include "qstate.h"
#include "xact.h"

extern Size BrokerInflightShmemSize(void);
extern void BrokerInflightShmemInit(void);
extern int64 BrokerAllocateMessageId(int32 queue_id);
extern void BrokerNoteDeleted(void);
extern void BrokerMaybeRefreshLwm(int32 queue_id, BrokerQueueState *state);
extern const BrokerXactHandler BrokerInflightXact;

#endif							/* BROKER_INFLIGHT_H */
