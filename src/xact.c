/*-------------------------------------------------------------------------
 *
 * xact.c
 *	  One transaction callback and one subtransaction callback, registered
 *	  with PostgreSQL the first time a backend does anything whose effect
 *	  waits for the end of its transaction (BrokerXactTrack); they hand each
 *	  event to the handlers of the subsystems.
 *
 * What happens when:
 *	 - PRE_COMMIT and PRE_PREPARE (may fail, and then the transaction
 *	   aborts): pending leases are written (lease.c); a PREPARE of a
 *	   transaction whose effects are published at commit is refused.
 *	 - COMMIT, after the transaction became visible to new snapshots
 *	   (ProcArrayEndTransaction) and before its locks are released:
 *	   counters, wake-ups, segment changes and forgotten installations are
 *	   published; the in-flight registry is cleared.
 *	 - ABORT: waiters are woken for what the transaction gave back; nothing
 *	   is published.
 * Handlers run in the order they were registered, which module init makes
 * the order of the layers, bottom first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "xact.h"

#define MAX_HANDLERS	12

static const BrokerXactHandler *handlers[MAX_HANDLERS];
static int	nhandlers = 0;
static bool tracking = false;

/* Add a subsystem's handler (from module init). */
void
BrokerXactRegister(const BrokerXactHandler *handler)
{
	if (nhandlers >= MAX_HANDLERS)
		elog(ERROR, "broker: too many transaction handlers");
	handlers[nhandlers++] = handler;
}

/* Transaction callback: dispatch to the handlers. */
static void
xact_callback(XactEvent event, void *arg)
{
	(void) arg;
	for (int i = 0; i < nhandlers; i++)
	{
		const BrokerXactHandler *h = handlers[i];

		switch (event)
		{
			case XACT_EVENT_PRE_COMMIT:
			case XACT_EVENT_PARALLEL_PRE_COMMIT:
				if (h->pre_commit)
					h->pre_commit();
				break;
			case XACT_EVENT_PRE_PREPARE:
				if (h->pre_commit)
					h->pre_commit();
				if (h->pre_prepare)
					h->pre_prepare();
				break;
			case XACT_EVENT_COMMIT:
			case XACT_EVENT_PARALLEL_COMMIT:
				if (h->end)
					h->end(BROKER_XACT_COMMITTED);
				break;
			case XACT_EVENT_ABORT:
			case XACT_EVENT_PARALLEL_ABORT:
				if (h->end)
					h->end(BROKER_XACT_ABORTED);
				break;
			case XACT_EVENT_PREPARE:
				if (h->end)
					h->end(BROKER_XACT_PREPARED);
				break;
			default:
				break;
		}
	}
}

/* Subtransaction callback: dispatch to the handlers. */
static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	bool		committed;

	(void) arg;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
		committed = true;
	else if (event == SUBXACT_EVENT_ABORT_SUB)
		committed = false;
	else
		return;
	for (int i = 0; i < nhandlers; i++)
	{
		if (handlers[i]->subxact_end)
			handlers[i]->subxact_end(mySubid, parentSubid, committed);
	}
}

/*
 * Make sure the callbacks are registered in this backend: called by every
 * subsystem before it records something for the end of the transaction.
 */
void
BrokerXactTrack(void)
{
	if (tracking)
		return;
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
	tracking = true;
}
