/*-------------------------------------------------------------------------
 *
 * broker.c
 *	  Module initialisation: each subsystem's init, the transaction
 *	  handlers in the order of the layers, and the one pair of
 *	  shared-memory hooks.
 *
 * The code is in layers; a file calls only into layers below it
 * (docs/design.md, "Map of the code"):
 *
 *	 module init ........ broker.c
 *	 workers ............ launcher.c reaper.c health.c utility.c worker.c
 *	 SQL entry points ... queue.c enqueue.c dequeue.c ack.c metrics.c expiry.c
 *	 producing .......... produce.c
 *	 per transaction .... inflight.c (registry, low-water mark) lease.c wait.c
 *	 message store ...... store.c segment.c rotate.c
 *	 shared state ....... qstate.c stats.c queuedef.c
 *	 infrastructure ..... xact.c sql.c catalog.c util.c
 *
 * Loaded without shared_preload_libraries, the SQL functions that need
 * shared memory fail with SQLSTATE 55000 (util.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "ackcommit.h"
#include "inflight.h"
#include "lease.h"
#include "qstate.h"
#include "sql.h"
#include "stats.h"
#include "store.h"
#include "util.h"
#include "utility.h"
#include "worker.h"
#include "xact.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* The shared memory of every subsystem. */
static Size
shmem_size(void)
{
	Size		size = BrokerQueueStateShmemSize();

	size = add_size(size, BrokerStatsShmemSize());
	size = add_size(size, BrokerSegmentShmemSize());
	size = add_size(size, BrokerInflightShmemSize());
	size = add_size(size, BrokerWorkerShmemSize());
	return size;
}

/* shmem_request_hook: ask for our space and the "broker" LWLocks. */
static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shmem_size());
	RequestNamedLWLockTranche("broker", BROKER_NUM_LOCKS);
}

/* shmem_startup_hook: each subsystem creates or attaches to its state. */
static void
shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	BrokerQueueStateShmemInit();
	BrokerStatsShmemInit();
	BrokerSegmentShmemInit();
	BrokerInflightShmemInit();
	BrokerWorkerShmemInit();
	LWLockRelease(AddinShmemInitLock);
	BrokerSetSharedMemoryReady();
}

/* Each subsystem's settings and hooks; shared memory when preloaded. */
void
_PG_init(void)
{
	BrokerQueueStateInit();
	BrokerStatsInit();
	BrokerSegmentInit();
	BrokerReaperInit();
	BrokerLauncherInit();
	BrokerAckCommitInit();
	MarkGUCPrefixReserved("broker");

	/* Bottom layer first: the order in which they act at commit. */
	BrokerXactRegister(&BrokerSQLXact);
	BrokerXactRegister(&BrokerQueueStateXact);
	BrokerXactRegister(&BrokerSegmentXact);
	BrokerXactRegister(&BrokerInflightXact);
	BrokerXactRegister(&BrokerLeaseXact);
	BrokerXactRegister(&BrokerAckCommitXact);	/* after the leases are written */
	BrokerXactRegister(&BrokerUtilityXact);

	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
	BrokerUtilityInit();
}
