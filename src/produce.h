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

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

#include "queuedef.h"
#include "store.h"

/* A dead-lettered message: what moves to the dead-letter queue. */
typedef struct BrokerDeadMessage
{
	Jsonb	   *payload;
	Jsonb	   *headers;		/* or NULL */
	int			priority;
} BrokerDeadMessage;

/* One message to put into a queue (BrokerEnqueueOne). */
typedef struct BrokerOutgoing
{
	Jsonb	   *payload;
	Jsonb	   *headers;		/* or NULL */
	TimestampTz now;			/* its enqueue time, read first */
	TimestampTz vt;
	bool		has_expiry;
	TimestampTz expires_at;
	text	   *group_key;		/* or NULL */
	text	   *dedup_key;		/* or NULL */
	int			priority;
} BrokerOutgoing;

extern void BrokerCheckMessageSize(const BrokerQueue *q, Jsonb *payload,
								   Jsonb *headers, int element);
extern int64 BrokerEnqueueOne(const BrokerQueue *q, const BrokerOutgoing *m,
							  bool *stored);
extern TimestampTz BrokerDedupSince(const BrokerQueue *q, TimestampTz now);
extern void BrokerNoteStored(const BrokerQueue *q, int64 n, int64 claimable,
							 TimestampTz now, TimestampTz vt);
extern void BrokerDeadLetter(const BrokerQueue *q, const BrokerDeadMessage *dead,
							 int ndead, int64 *new_ids);
extern void BrokerKeepRecords(const BrokerQueue *q, const BrokerRemoved *rem, int n,
							  const char *state, Jsonb *result,
							  const int64 *dead_ids);

#endif							/* BROKER_PRODUCE_H */
