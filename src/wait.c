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

/* Before the first look: a commit from now on is not missed. */
void
BrokerWaitPrepare(BrokerQueueState *state)
{
	ConditionVariablePrepareToSleep(&state->cv);
}

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

/* What a sleeping waiter must undo when it stops waiting. */
typedef struct WaitCleanup
{
	BrokerQueueState *state;
	bool		keeper;
} WaitCleanup;

static void
wait_cleanup(int code, Datum arg)
{
	WaitCleanup *wc = (WaitCleanup *) DatumGetPointer(arg);
	BrokerQueueState *state = wc->state;

	(void) code;
	pg_atomic_fetch_sub_u32(&state->waiters, 1);
	if (wc->keeper)
	{
		SpinLockAcquire(&state->mutex);
		if (state->timekeeper == MyProc->pgprocno)
		{
			state->timekeeper = -1;
			state->keeper_due = BROKER_NO_DUE;
		}
		SpinLockRelease(&state->mutex);
	}
}

/*
 * Sleep on the queue until woken or the deadline (see the file header).
 * Returns true if this waiter kept time.
 */
bool
BrokerWaitSleep(BrokerQueueState *state, TimestampTz now, TimestampTz deadline)
{
	volatile bool keeper = false;
	long		timeout_ms;
	WaitCleanup wc;
	TimestampTz until = deadline;
	TimestampTz due = (TimestampTz) pg_atomic_read_u64(&state->next_due);

	SpinLockAcquire(&state->mutex);
	if (due != BROKER_NO_DUE &&
		(state->timekeeper < 0 || state->keeper_due > due))
	{
		state->timekeeper = MyProc->pgprocno;
		state->keeper_due = due;
		keeper = true;
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
	wc.state = state;
	wc.keeper = keeper;
	pg_atomic_fetch_add_u32(&state->waiters, 1);

	/*
	 * Undo the count and the timekeeping however the sleep ends: normally,
	 * with an ERROR (statement_timeout, cancel) or with a FATAL that ends the
	 * backend (pg_terminate_backend, a client gone): a backend that stayed
	 * counted, or stayed the timekeeper, would keep the queue's other
	 * waiters from being woken when something becomes due.
	 */
	PG_ENSURE_ERROR_CLEANUP(wait_cleanup, PointerGetDatum(&wc));
	{
		if (timeout_ms > 0)
			(void) ConditionVariableTimedSleep(&state->cv, timeout_ms,
											   PG_WAIT_EXTENSION);
	}
	PG_END_ENSURE_ERROR_CLEANUP(wait_cleanup, PointerGetDatum(&wc));
	wait_cleanup(0, PointerGetDatum(&wc));
	pg_atomic_fetch_add_u64(&state->wakeups, 1);
	return keeper;
}

/*
 * A waiting dequeue is done.  If it was woken, kept time and took a full
 * batch, more messages may have become due at once; if something is due
 * and nobody keeps time, someone must: wake one other waiter in either
 * case.  (Messages made deliverable by commits wake waiters themselves.)
 */
void
BrokerWaitDone(BrokerQueueState *state, bool woken, bool kept_time,
			   bool full_batch)
{
	bool		keeperless;

	if (woken && pg_atomic_read_u32(&state->waiters) > 0)
	{
		SpinLockAcquire(&state->mutex);
		keeperless = state->timekeeper < 0;
		SpinLockRelease(&state->mutex);
		if ((kept_time && full_batch) ||
			(keeperless &&
			 (TimestampTz) pg_atomic_read_u64(&state->next_due) != BROKER_NO_DUE))
			ConditionVariableSignal(&state->cv);
	}
	ConditionVariableCancelSleep();
}
