/*-------------------------------------------------------------------------
 *
 * wait.c
 *	  Long-poll: a dequeue with a wait sleeps on the queue's condition
 *	  variable until a message may be deliverable or its deadline passes.
 *
 * A committing producer signals the queue once per message that became
 * deliverable (a one-message commit wakes one waiter, not all); a
 * rolled-back dequeue signals for the messages it gave back (qstate.c).
 * Messages that become deliverable by the clock -- a delay or a lease
 * running out -- are announced through the queue's next_due time: every
 * transaction that writes a future visibility time lowers it at commit,
 * and one waiter per queue, the timekeeper, sleeps no longer than it.  The
 * others sleep until their deadlines and are woken one at a time, by
 * commits or when next_due moves earlier than what the timekeeper sleeps
 * toward (the one woken then takes over).  A waiter that wakes at next_due
 * and finds nothing computes the next due time from the table.  The
 * backend prepares to sleep before it looks, so a commit between the look
 * and the sleep is not missed.  statement_timeout, pg_cancel_backend and
 * postmaster death end the wait.
 *
 * While it sleeps the backend does not hold the xmin horizon: it clears
 * MyProc->xmin (READ COMMITTED only; see docs/design.md, "Waiting", for
 * why this is safe for a dequeue and what a statement that waits must not
 * do afterwards).  Every look takes a new snapshot.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "store.h"
#include "wait.h"

/*
 * The longest single sleep: WaitLatch's timeout is an int of milliseconds
 * (24.8 days), and a waiter whose deadline is further away sleeps again.
 */
#define BROKER_MAX_SLEEP_MS		(3600 * 1000L)

/*
 * Nothing was deliverable at "now".  True when nothing is due before the
 * waiter's next look either (it should sleep); false when something is due
 * by now (look again at once).  When next_due said something would be due
 * and nothing was, the backend that claims the stale value finds the real
 * next due time in the table.
 */
bool
BrokerWaitNothingDue(int32 queue_id, BrokerQueueState *state, TimestampTz now)
{
	TimestampTz due = (TimestampTz) pg_atomic_read_u64(&state->next_due);
	uint64		expected = (uint64) due;

	if (due > now)
		return true;
	/* What was due has been taken, or is gone: find the next. */
	if (pg_atomic_compare_exchange_u64(&state->next_due, &expected,
									   (uint64) BROKER_NO_DUE))
	{
		TimestampTz next = BrokerStoreNextDue(queue_id,
											  BrokerQueueLowestMark(state),
											  now);

		if (next != DT_NOEND)
			BrokerLowerNextDue(state, next);
	}
	due = (TimestampTz) pg_atomic_read_u64(&state->next_due);
	return due > now;
}

/* Stop keeping time for the queue, if this backend does. */
static void
drop_keeper(BrokerWait *w)
{
	BrokerQueueState *state = w->state;

	if (!w->keeper)
		return;
	SpinLockAcquire(&state->mutex);
	if (state->timekeeper == MyProc->pgprocno)
	{
		state->timekeeper = -1;
		state->keeper_due = BROKER_NO_DUE;
	}
	SpinLockRelease(&state->mutex);
	w->keeper = false;
}

/*
 * What a waiter must undo however its wait ends, exactly once: by
 * BrokerWaitEnd, or by BrokerWaitAbandon when an error ends it (see
 * BrokerWaitBegin).
 */
static void
wait_uncount(BrokerWait *w)
{
	drop_keeper(w);
	pg_atomic_fetch_sub_u32(&w->state->waiters, 1);
}

/*
 * Before the first look: from now on a commit that makes a message
 * deliverable is not missed.  The backend joins the condition variable's
 * wait list and is counted as a waiter before it takes the snapshot of its
 * first look; a producer publishes its commit before it reads the count
 * (qstate.c).  The fetch-and-add is a full barrier, so either the look sees
 * the commit or the producer sees the count and signals.  (Counting only
 * when about to sleep, after the look, lost the wake-ups of commits that
 * fell between the two.)
 *
 * The caller must end the wait with BrokerWaitEnd, and call
 * BrokerWaitAbandon if an error ends it: a backend that stayed counted
 * would make every commit signal an empty queue, and one that stayed the
 * timekeeper would keep the others from being woken when something becomes
 * due.
 */
void
BrokerWaitBegin(BrokerWait *w, BrokerQueueState *state)
{
	w->state = state;
	w->keeper = false;
	w->woken = false;
	w->kept_time = false;
	ConditionVariablePrepareToSleep(&state->cv);
	pg_atomic_fetch_add_u32(&state->waiters, 1);
}

/* PG_ENSURE_ERROR_CLEANUP callback: an error or FATAL ended the wait. */
void
BrokerWaitAbandon(int code, Datum arg)
{
	(void) code;
	wait_uncount((BrokerWait *) DatumGetPointer(arg));
}

/*
 * Sleep on the queue until woken or the deadline (see the file header).
 * The waiter may keep time for the queue during this sleep.
 */
void
BrokerWaitSleep(BrokerWait *w, TimestampTz now, TimestampTz deadline)
{
	BrokerQueueState *state = w->state;
	long		timeout_ms;
	TimestampTz until = deadline;
	TimestampTz due = (TimestampTz) pg_atomic_read_u64(&state->next_due);

	SpinLockAcquire(&state->mutex);
	if (due != BROKER_NO_DUE &&
		(state->timekeeper < 0 || state->keeper_due > due))
	{
		state->timekeeper = MyProc->pgprocno;
		state->keeper_due = due;
		w->keeper = true;
		until = Min(deadline, due);
	}
	SpinLockRelease(&state->mutex);

	if (!IsolationUsesXactSnapshot())
	{
		InvalidateCatalogSnapshot();
		MyProc->xmin = InvalidTransactionId;
	}
	timeout_ms = until > now ?
		(long) Min(Max((until - now + 999) / 1000, 1), BROKER_MAX_SLEEP_MS) : 0;
	if (timeout_ms > 0)
		(void) ConditionVariableTimedSleep(&state->cv, timeout_ms,
										   PG_WAIT_EXTENSION);
	w->woken = true;
	w->kept_time = w->keeper;
	drop_keeper(w);				/* the next sleep decides again */
	pg_atomic_fetch_add_u64(&state->wakeups, 1);
}

/*
 * A waiting dequeue is done.  If it was woken, kept time and took a full
 * batch, more messages may have become due at once; if something is due
 * and nobody keeps time, someone must: wake one other waiter in either
 * case.  (Messages made deliverable by commits wake waiters themselves.)
 */
void
BrokerWaitEnd(BrokerWait *w, bool full_batch)
{
	BrokerQueueState *state = w->state;
	bool		keeperless;

	wait_uncount(w);
	if (w->woken && pg_atomic_read_u32(&state->waiters) > 0)
	{
		SpinLockAcquire(&state->mutex);
		keeperless = state->timekeeper < 0;
		SpinLockRelease(&state->mutex);
		if ((w->kept_time && full_batch) ||
			(keeperless &&
			 (TimestampTz) pg_atomic_read_u64(&state->next_due) != BROKER_NO_DUE))
			ConditionVariableSignal(&state->cv);
	}
	ConditionVariableCancelSleep();
}
