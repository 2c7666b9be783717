/*-------------------------------------------------------------------------
 *
 * stats.h
 *	  Consumer history in shared memory: who took and deleted how many
 *	  messages of each queue (broker.consumers).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_STATS_H
#define BROKER_STATS_H

#include "postgres.h"

extern char *broker_consumer_name;
extern int	broker_max_consumers;

extern void BrokerStatsInit(void);
extern Size BrokerStatsShmemSize(void);
extern void BrokerStatsShmemInit(void);
extern void BrokerConsumerCount(Oid installation, int32 queue_id,
								int64 delivered, int64 deleted);
extern void BrokerConsumerForgetQueue(Oid installation, int32 queue_id);
extern void BrokerConsumerForget(Oid dbid, Oid installation);

#endif							/* BROKER_STATS_H */
