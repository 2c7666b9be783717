/*-------------------------------------------------------------------------
 *
 * lease.c
 *	  Leases taken in this transaction, kept in backend memory and written
 *	  to the message rows just before the transaction commits.
 *
 * dequeue locks the rows it returns (FOR UPDATE SKIP LOCKED) but does not
 * write their lease at once: the new vt, delivery_count and receipt are
 * kept here.  While the transaction is open the row lock alone keeps every
 * other consumer away, exactly as a written lease would (they skip locked
 * rows).  At XACT_EVENT_PRE_COMMIT (and PRE_PREPARE) the leases of the
 * messages still alive are written in one UPDATE by ctid; a message that
 * the same transaction deleted never gets a lease write at all — the
 * common "dequeue, work, delete, commit" consumer costs a row lock and a
 * delete, like a plain SKIP LOCKED queue.  If the transaction aborts, the
 * locks go and nothing was written: the message is deliverable at once,
 * its delivery_count unchanged, as the contract says.
 *
 * delete, release and extend_lease consult this store first: a receipt is
 * checked against the pending lease, release and extend_lease change the
 * pending values.  Savepoints: an entry made in a subtransaction that
 * rolls back is dropped (its row lock is gone too); a change made to an
 * older entry inside a subtransaction is recorded in an undo log and
 * reverted if that subtransaction rolls back.
 *
 * The ctid kept is that of the row version we locked.  Nobody else can
 * update or delete it while we hold the lock, and our own transaction only
 * changes it through the functions here (or deletes it: purge, drop), so
 * the final UPDATE by ctid finds it, or finds it deleted and does nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "ackcommit.h"
#include "catalog.h"
#include "lease.h"
#include "qstate.h"
#include "sql.h"
#include "store.h"
#include "util.h"

/* A lease taken in this transaction and not written yet. */
typedef struct PendingLease
{
	int32		queue_id;
	int64		id;
	BrokerRowRef ref;			/* where the row we locked is */
	int32		delivery_count;
	int64		receipt;		/* 0: released (receipt NULL) */
	TimestampTz vt;
	bool		deleted;
	SubTransactionId subid;		/* subtransaction that took it */
} PendingLease;

/* The state of an entry before a change made inside a subtransaction. */
typedef struct LeaseUndo
{
	SubTransactionId subid;
	PendingLease saved;
} LeaseUndo;

static PendingLease *leases = NULL;	/* in TopTransactionContext */
static int	nleases = 0;
static int	maxleases = 0;
static bool leases_sorted = true;
static LeaseUndo *undo = NULL;
static int	nundo = 0;
static int	maxundo = 0;

/* Order entries by (queue_id, id). */
static int
lease_cmp(const void *a, const void *b)
{
	const PendingLease *x = a;
	const PendingLease *y = b;

	if (x->queue_id != y->queue_id)
		return x->queue_id < y->queue_id ? -1 : 1;
	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return 0;
}

/* Grow an array kept in TopTransactionContext. */
static void *
grow(void *arr, int *max, Size elem)
{
	int			newmax = *max == 0 ? 16 : *max * 2;

	*max = newmax;
	if (arr == NULL)
		return MemoryContextAlloc(TopTransactionContext, newmax * elem);
	return repalloc(arr, newmax * elem);
}

/* Remember a lease taken by dequeue (the row is locked by us). */
void
BrokerLeaseAdd(int32 queue_id, int64 id, const BrokerRowRef *ref,
			   int32 delivery_count, int64 receipt, TimestampTz vt)
{
	PendingLease *e;

	BrokerXactTrack();

	if (nleases == maxleases)
		leases = grow(leases, &maxleases, sizeof(PendingLease));
	e = &leases[nleases++];
	e->queue_id = queue_id;
	e->id = id;
	e->ref = *ref;
	e->delivery_count = delivery_count;
	e->receipt = receipt;
	e->vt = vt;
	e->deleted = false;
	e->subid = GetCurrentSubTransactionId();
	if (nleases > 1 && lease_cmp(&leases[nleases - 2], e) > 0)
		leases_sorted = false;
}

/* The pending lease of a message, or NULL. */
static PendingLease *
find_lease(int32 queue_id, int64 id)
{
	PendingLease key;

	if (nleases == 0)
		return NULL;
	if (!leases_sorted)
	{
		qsort(leases, nleases, sizeof(PendingLease), lease_cmp);
		leases_sorted = true;
	}
	key.queue_id = queue_id;
	key.id = id;
	return bsearch(&key, leases, nleases, sizeof(PendingLease), lease_cmp);
}

/* Before changing an entry inside a subtransaction, save it for undo. */
static void
save_for_undo(PendingLease *e)
{
	if (GetCurrentTransactionNestLevel() <= 1)
		return;
	if (nundo == maxundo)
		undo = grow(undo, &maxundo, sizeof(LeaseUndo));
	undo[nundo].subid = GetCurrentSubTransactionId();
	undo[nundo].saved = *e;
	nundo++;
}

/*
 * What the store knows of a message: BROKER_LEASE_NONE (not leased in
 * this transaction), or the pending lease's receipt check result.
 */
BrokerLeaseMatch
BrokerLeaseCheck(int32 queue_id, int64 id, bool has_receipt, int64 receipt,
				 BrokerRowRef *ref)
{
	PendingLease *e = find_lease(queue_id, id);

	if (e == NULL || e->deleted)
		return BROKER_LEASE_NONE;
	if (ref)
		*ref = e->ref;
	if (has_receipt && (e->receipt == 0 || e->receipt != receipt))
		return BROKER_LEASE_STALE;
	return BROKER_LEASE_HELD;
}

/*
 * The lease this transaction holds on a message, if any: its delivery
 * count and visibility time (not in the row until commit).
 */
bool
BrokerLeasePending(int32 queue_id, int64 id, int32 *delivery_count,
				   TimestampTz *vt)
{
	PendingLease *e = find_lease(queue_id, id);

	if (e == NULL || e->deleted)
		return false;
	*delivery_count = e->delivery_count;
	*vt = e->vt;
	return true;
}

/* The message was deleted by this transaction: no lease to write. */
void
BrokerLeaseDeleted(int32 queue_id, int64 id)
{
	PendingLease *e = find_lease(queue_id, id);

	if (e == NULL || e->deleted)
		return;
	save_for_undo(e);
	e->deleted = true;
}

/*
 * Change a pending lease's vt (extend_lease) or give it back (release:
 * receipt becomes NULL).  Returns false if the receipt does not match.
 */
bool
BrokerLeaseSetVt(int32 queue_id, int64 id, int64 receipt, TimestampTz vt,
				 bool release)
{
	PendingLease *e = find_lease(queue_id, id);

	if (e == NULL || e->deleted || e->receipt == 0 || e->receipt != receipt)
		return false;
	save_for_undo(e);
	e->vt = vt;
	if (release)
		e->receipt = 0;
	return true;
}

/* True when this transaction holds a live pending lease in the queue. */
bool
BrokerLeaseHasQueue(int32 queue_id)
{
	for (int i = 0; i < nleases; i++)
	{
		if (leases[i].queue_id == queue_id && !leases[i].deleted)
			return true;
	}
	return false;
}

/* Ids of this transaction's live pending leases in a queue (for dequeue). */
ArrayType *
BrokerLeaseIds(int32 queue_id)
{
	Datum	   *ids;
	int			n = 0;

	if (nleases == 0)
		return construct_empty_array(INT8OID);
	ids = palloc(nleases * sizeof(Datum));
	for (int i = 0; i < nleases; i++)
	{
		if (leases[i].queue_id == queue_id && !leases[i].deleted)
			ids[n++] = Int64GetDatum(leases[i].id);
	}
	return construct_array(ids, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
						   TYPALIGN_DOUBLE);
}

/*
 * Write the leases of the messages still alive (XACT_EVENT_PRE_COMMIT and
 * PRE_PREPARE): one UPDATE per table part that has some.
 */
static void
lease_flush(void)
{
	BrokerLeaseWrite *writes;
	Oid			save_userid;
	int			save_sec;
	int			n = 0;

	for (int i = 0; i < nleases && n == 0; i++)
		n = leases[i].deleted ? 0 : 1;
	if (n == 0)
	{
		nleases = 0;
		return;
	}

	/*
	 * At pre-commit no portal is left: bring our own snapshot.  The session
	 * user may not touch the tables; the functions that took the leases ran
	 * as their owner, and so does this (an error aborts the transaction,
	 * which restores the user).
	 */
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(BrokerGetRels()->owner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	PushActiveSnapshot(GetTransactionSnapshot());
	BrokerConsumeBegin();		/* leases are a consumer's writes (ackcommit.c) */
	BrokerSPIConnect();
	writes = palloc(sizeof(BrokerLeaseWrite) * nleases);
	n = 0;
	for (int i = 0; i < nleases; i++)
	{
		PendingLease *e = &leases[i];

		if (e->deleted)
			continue;
		BrokerNoteDue(e->queue_id, e->vt);	/* waiters must wake when it runs out */
		writes[n].ref = e->ref;
		writes[n].vt = e->vt;
		writes[n].delivery_count = e->delivery_count;
		writes[n].receipt = e->receipt;
		n++;
	}
	BrokerStoreWriteLeases(writes, n);
	BrokerSPIFinish();
	BrokerConsumeEnd();
	PopActiveSnapshot();
	SetUserIdAndSecContext(save_userid, save_sec);

	/* Written: nothing is pending any more (a later flush does nothing). */
	nleases = 0;
}

/* Forget everything at the end of the transaction. */
static void
lease_xact_end(BrokerXactEnd how)
{
	(void) how;
	leases = NULL;				/* freed with TopTransactionContext */
	nleases = maxleases = 0;
	leases_sorted = true;
	undo = NULL;
	nundo = maxundo = 0;
}

/* A subtransaction ended: revert or keep what it did. */
static void
lease_subxact_end(SubTransactionId mySubid, SubTransactionId parentSubid,
				  bool commit)
{
	int			j = 0;

	if (commit)
	{
		for (int i = 0; i < nleases; i++)
			if (leases[i].subid == mySubid)
				leases[i].subid = parentSubid;
		for (int i = 0; i < nundo; i++)
			if (undo[i].subid == mySubid)
				undo[i].subid = parentSubid;
		return;
	}

	/* Revert changes to older entries, newest first. */
	for (int i = nundo - 1; i >= 0; i--)
	{
		if (undo[i].subid == mySubid)
		{
			PendingLease *e = find_lease(undo[i].saved.queue_id, undo[i].saved.id);

			if (e != NULL)
				*e = undo[i].saved;
		}
	}
	for (int i = 0; i < nundo; i++)
		if (undo[i].subid != mySubid)
			undo[j++] = undo[i];
	nundo = j;

	/* Drop the entries it made: their row locks are gone. */
	j = 0;
	for (int i = 0; i < nleases; i++)
		if (leases[i].subid != mySubid)
			leases[j++] = leases[i];
	nleases = j;
}

const BrokerXactHandler BrokerLeaseXact = {
	.pre_commit = lease_flush,
	.end = lease_xact_end,
	.subxact_end = lease_subxact_end,
};
