/*-------------------------------------------------------------------------
 *
 * ackcommit.h
 *	  broker.async_ack: a consumer's transaction commits without waiting
 *	  for its WAL flush when the session asks and it wrote nothing else.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_ACKCOMMIT_H
#define BROKER_ACKCOMMIT_H

#include "postgres.h"

#include "xact.h"

extern void BrokerAckCommitInit(void);
extern void BrokerConsumeBegin(void);
extern void BrokerConsumeEnd(void);

extern const BrokerXactHandler BrokerAckCommitXact;

#endif							/* BROKER_ACKCOMMIT_H */
