/*-------------------------------------------------------------------------
 *
 * xact.h
 *	  The transaction callbacks: one pair registered with PostgreSQL, which
 *	  hands each event to the subsystems' handlers in the order they were
 *	  registered (module init registers them bottom layer first).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_XACT_H
#define BROKER_XACT_H

#include "postgres.h"

#include "access/xact.h"

/* How a transaction ended. */
typedef enum BrokerXactEnd
{
	BROKER_XACT_COMMITTED,
	BROKER_XACT_ABORTED,
	BROKER_XACT_PREPARED		/* its fate is decided later, elsewhere */
} BrokerXactEnd;

typedef struct BrokerXactHandler
{
	/* XACT_EVENT_PRE_COMMIT: may raise an error (the commit fails) */
	void		(*pre_commit) (void);
	/* XACT_EVENT_PRE_PREPARE: may refuse the PREPARE */
	void		(*pre_prepare) (void);
	/* the transaction ended; must not fail */
	void		(*end) (BrokerXactEnd how);
	/* a subtransaction ended */
	void		(*subxact_end) (SubTransactionId mySubid,
								SubTransactionId parentSubid, bool committed);
} BrokerXactHandler;

extern void BrokerXactRegister(const BrokerXactHandler *handler);
extern void BrokerXactTrack(void);

#endif							/* BROKER_XACT_H */
