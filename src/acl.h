/*-------------------------------------------------------------------------
 *
 * acl.h
 *	  Per-queue privileges (acl.c): the check every function makes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_ACL_H
#define BROKER_ACL_H

#include "postgres.h"

#include "queuedef.h"

typedef enum BrokerPrivilege
{
	BROKER_PRIV_PRODUCE,
	BROKER_PRIV_CONSUME,
	BROKER_PRIV_ADMIN,
	BROKER_NUM_PRIVILEGES
} BrokerPrivilege;

extern void BrokerCheckQueue(const BrokerQueue *q, BrokerPrivilege priv);
extern bool BrokerMaySeeQueue(int32 queue_id);
extern bool BrokerCallerIsOwner(void);
extern void BrokerRequireOwner(const char *action);
extern void BrokerGrantCreator(int32 queue_id);
extern void BrokerForgetGrants(int32 queue_id);

#endif							/* BROKER_ACL_H */
