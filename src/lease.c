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

#include "broker.h"

bool		broker_defer_lease_write = true;

/* A lease taken in this transaction and not written yet. */
typedef struct PendingLease
{
	int32		queue_id;
	int64		id;
	int			seg;			/* segment table the row is in */
	ItemPointerData tid;
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
BrokerLeaseAdd(int32 queue_id, int64 id, int seg, ItemPointer tid,
			   int32 delivery_count, int64 receipt, TimestampTz vt)
{
	PendingLease *e;

	if (nleases == maxleases)
		leases = grow(leases, &maxleases, sizeof(PendingLease));
	e = &leases[nleases++];
	e->queue_id = queue_id;
	e->id = id;
	e->seg = seg;
	e->tid = *tid;
	e->delivery_count = delivery_count;
	e->receipt = receipt;
	e->vt = vt;
	e->deleted = false;
	e->subid = GetCurrentSubTransactionId();
	if (nleases > 1 && lease_cmp(&leases[nleases - 2], e) > 0)
		leases_sorted = false;
	BrokerRequireSharedMemory();	/* registers the transaction callbacks */
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
				 int *seg)
{
	PendingLease *e = find_lease(queue_id, id);

	if (e == NULL || e->deleted)
		return BROKER_LEASE_NONE;
	if (seg)
		*seg = e->seg;
	if (has_receipt && (e->receipt == 0 || e->receipt != receipt))
		return BROKER_LEASE_STALE;
	return BROKER_LEASE_HELD;
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

/* Write the leases of one segment's messages still alive: one UPDATE. */
static void
flush_segment(int seg)
{
	Datum	   *tids = palloc(nleases * sizeof(Datum));
	Datum	   *vts = palloc(nleases * sizeof(Datum));
	Datum	   *dcs = palloc(nleases * sizeof(Datum));
	Datum	   *rcs = palloc(nleases * sizeof(Datum));
	bool	   *rnulls = palloc(nleases * sizeof(bool));
	int			n = 0;
	int			dims[1];
	int			lbs[1] = {1};
	Datum		values[4];
	int			rc;

	for (int i = 0; i < nleases; i++)
	{
		PendingLease *e = &leases[i];

		if (e->deleted || e->seg != seg)
			continue;
		BrokerNoteDue(e->queue_id, e->vt);	/* waiters must wake when it runs out */
		tids[n] = PointerGetDatum(&e->tid);
		vts[n] = TimestampTzGetDatum(e->vt);
		dcs[n] = Int32GetDatum(e->delivery_count);
		rcs[n] = Int64GetDatum(e->receipt);
		rnulls[n] = e->receipt == 0;
		n++;
	}
	if (n == 0)
		return;
	dims[0] = n;
	values[0] = PointerGetDatum(construct_array(tids, n, TIDOID,
												sizeof(ItemPointerData),
												false, TYPALIGN_SHORT));
	values[1] = PointerGetDatum(construct_array(vts, n, TIMESTAMPTZOID,
												sizeof(TimestampTz),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_array(dcs, n, INT4OID, sizeof(int32),
												true, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_md_array(rcs, rnulls, 1, dims, lbs,
												   INT8OID, sizeof(int64),
												   FLOAT8PASSBYVAL,
												   TYPALIGN_DOUBLE));
	rc = BrokerExecute(BrokerPlanSeg(PLAN_LEASE_WRITE, seg), values, NULL, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "broker: writing leases failed: %s",
			 SPI_result_code_string(rc));
}

/* Write the leases of the messages still alive, one UPDATE per segment. */
void
BrokerLeaseFlush(void)
{
	Oid			save_userid;
	int			save_sec;
	bool		any = false;

	for (int i = 0; i < nleases && !any; i++)
		any = !leases[i].deleted;
	if (!any)
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
	BrokerSPIConnect();
	for (int seg = 0; seg < BROKER_SEGMENTS; seg++)
		flush_segment(seg);
	BrokerSPIFinish();
	PopActiveSnapshot();
	SetUserIdAndSecContext(save_userid, save_sec);

	/* Written: nothing is pending any more (a later flush does nothing). */
	nleases = 0;
}

/* Forget everything at the end of the transaction. */
void
BrokerLeaseReset(void)
{
	leases = NULL;				/* freed with TopTransactionContext */
	nleases = maxleases = 0;
	leases_sorted = true;
	undo = NULL;
	nundo = maxundo = 0;
}

/* A subtransaction ended: revert or keep what it did. */
void
BrokerLeaseSubXactEnd(SubTransactionId mySubid, SubTransactionId parentSubid,
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
