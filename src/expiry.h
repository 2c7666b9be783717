/*-------------------------------------------------------------------------
 *
 * expiry.h
 *	  Removing expired messages: a batch (the reaper's unit of work) and
 *	  broker.reap().
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_EXPIRY_H
#define BROKER_EXPIRY_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* Messages deleted per batch (per segment of the store). */
#define BROKER_REAP_BATCH			1000

extern uint64 BrokerExpireBatch(int32 queue_id, TimestampTz now, int limit);

#endif							/* BROKER_EXPIRY_H */
