/*-------------------------------------------------------------------------
 *
 * ackcommit.c
 *	  broker.async_ack (off by default): a transaction whose only writes are
 *	  a consumer's -- leases, deletes, releases, lease extensions,
 *	  completions and failures of jobs, the dead-letter moves a dequeue
 *	  makes -- commits without waiting for its WAL to be flushed, as if
 *	  synchronous_commit were off for that commit alone.
 *
 * What a crash can do then: the last such transactions (those whose WAL
 * was not flushed yet; at most about three wal_writer_delay's worth) are
 * lost, as if they had rolled back.  Their messages are as before them:
 * delivered again -- deleted messages come back, leases and lease
 * extensions end early, a release's delay is undone, a job's completion
 * and result are gone and the job runs again, a delivery is not counted
 * towards max_deliveries.  Nothing a producer was told is stored is lost,
 * because a transaction that wrote anything else -- an enqueue, a publish,
 * a queue or privilege change, a row of any other table, a sequence --
 * waits for the flush as always.  On a failover the same holds for the
 * acknowledgements the standby had not received (the commit does not wait
 * for synchronous replication either).
 *
 * How "only a consumer's writes" is known: XactLastRecEnd, the end of the
 * last WAL record this backend wrote in the transaction (0 while it wrote
 * none).  Each consuming call checks when it starts that nothing was
 * written since the previous one ended (the first: nothing at all) and
 * notes the end of the WAL when it returns; the leases written at
 * pre-commit are bracketed the same way (lease.c).  At pre-commit, if all
 * of the transaction's WAL was written inside such brackets, synchronous
 * commit is switched off for this commit and restored when the
 * transaction ends.  A consuming call that fails leaves its bracket open,
 * so anything after it counts as a foreign write: the commit waits.  What
 * another extension writes in its own pre-commit callback after broker's
 * is not seen (documented in docs/operations.md).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "storage/proc.h"
#include "utils/guc.h"

#include "ackcommit.h"

static bool async_ack = false;

/* The state of the current top-level transaction (by its local id). */
static LocalTransactionId state_lxid = InvalidLocalTransactionId;
static bool only_consumed;		/* all WAL so far was written by consuming calls */
static bool consumed;			/* a consuming call returned */
static XLogRecPtr consumed_end; /* XactLastRecEnd when the last one returned */

/* synchronous_commit before this commit switched it off, if it did */
static bool switched = false;
static int	saved_synchronous_commit;

void
BrokerAckCommitInit(void)
{
	DefineCustomBoolVariable("broker.async_ack",
							 "Commits a transaction that only consumed messages without waiting for the WAL flush.",
							 "A crash can then lose the last acknowledgements and leases: their messages "
							 "are delivered again. A transaction that wrote anything else waits as usual.",
							 &async_ack,
							 false,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
}

/* A consuming call starts (dequeue, delete, release, ...). */
void
BrokerConsumeBegin(void)
{
	if (!async_ack)
		return;
	if (state_lxid != MyProc->lxid)
	{
		state_lxid = MyProc->lxid;
		only_consumed = true;
		consumed = false;
		consumed_end = InvalidXLogRecPtr;
	}
	if (XactLastRecEnd != consumed_end)
		only_consumed = false;	/* something else wrote since */
	BrokerXactTrack();
}

/* A consuming call returns. */
void
BrokerConsumeEnd(void)
{
	if (!async_ack || state_lxid != MyProc->lxid)
		return;
	consumed_end = XactLastRecEnd;
	consumed = true;
}

/*
 * XACT_EVENT_PRE_COMMIT, after the leases were written (this handler is
 * registered after lease.c's): switch synchronous commit off for this
 * commit if everything the transaction wrote was a consumer's.
 */
static void
ackcommit_pre_commit(void)
{
	if (!async_ack || state_lxid != MyProc->lxid || !only_consumed ||
		!consumed || XactLastRecEnd == InvalidXLogRecPtr ||
		XactLastRecEnd != consumed_end ||
		synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
		return;
	saved_synchronous_commit = synchronous_commit;
	synchronous_commit = SYNCHRONOUS_COMMIT_OFF;
	switched = true;
}

/* Undo the switch, if this transaction made it. */
static void
restore_synchronous_commit(void)
{
	if (switched)
	{
		synchronous_commit = saved_synchronous_commit;
		switched = false;
	}
}

/*
 * A PREPARE is not a commit: its record is flushed anyway, but with
 * synchronous commit off it would not wait for a synchronous standby.
 */
static void
ackcommit_pre_prepare(void)
{
	restore_synchronous_commit();
}

/* The transaction ended. */
static void
ackcommit_xact_end(BrokerXactEnd how)
{
	(void) how;
	restore_synchronous_commit();
	state_lxid = InvalidLocalTransactionId;
}

const BrokerXactHandler BrokerAckCommitXact = {
	.pre_commit = ackcommit_pre_commit,
	.pre_prepare = ackcommit_pre_prepare,
	.end = ackcommit_xact_end,
};
