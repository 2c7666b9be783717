/*-------------------------------------------------------------------------
 *
 * groups.h
 *	  Inside the message store: ordered message groups (groups.c) and the
 *	  locks of group and dedup keys.  Nothing outside the store includes
 *	  this file.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_GROUPS_H
#define BROKER_GROUPS_H

#include "postgres.h"

extern bool BrokerGroupLock(int32 queue_id, text *key, bool wait);
extern bool BrokerGroupHasHead(int32 queue_id, text *key);
extern bool BrokerGroupPromote(int32 queue_id, text *key, int64 *expired);
extern void BrokerGroupsHandOn(int32 queue_id, text **keys, int n);
extern int64 BrokerGroupsRepair(int32 only_queue);
extern void BrokerGroupLockMany(int32 queue_id, text **keys, int n);
extern void BrokerDedupLockMany(int32 queue_id, text **keys, int n);

#endif							/* BROKER_GROUPS_H */
