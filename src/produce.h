/*-------------------------------------------------------------------------
 *
 * produce.h
 *	  Putting messages into a queue: the size rule, one message (id, row,
 *	  counters, wake-ups), and dead-lettering.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_PRODUCE_H
#define BROKER_PRODUCE_H

#include "postgres.h"

#include "utils/jsonb.h"

#include "queuedef.h"

/* A dead-lettered message: what moves to the dead-letter queue. */
typedef struct BrokerDeadMessage
{
	Jsonb	   *payload;
	Jsonb	   *headers;		/* or NULL */
} BrokerDeadMessage;

extern void BrokerCheckMessageSize(const BrokerQueue *q, Jsonb *payload,
								   Jsonb *headers, int element);
extern int64 BrokerEnqueueOne(const BrokerQueue *q, Jsonb *payload,
							  Jsonb *headers, TimestampTz now,
							  TimestampTz vt, bool has_expiry,
							  TimestampTz expires_at);
extern void BrokerDeadLetter(const BrokerQueue *q, const BrokerDeadMessage *dead,
							 int ndead);

#endif							/* BROKER_PRODUCE_H */
