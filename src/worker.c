/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The shared state of the background workers: the launcher's pid, one
 *	  slot per possible reaper, and a short table of paused databases.
 *
 * Processes (launcher.c, reaper.c): the launcher is registered from
 * _PG_init when the library is preloaded (never under pg_upgrade), starts
 * once recovery has finished, and starts one reaper per served database;
 * each reaper removes expired messages and maintains the message segments
 * of its database every broker.reaper_interval.
 *
 * Locking: everything here is protected by the BROKER_LOCK_WORKERS LWLock,
 * held for a few instructions and never while another lock is taken or
 * catalogs are read.  A slot is reserved by the launcher before it
 * registers a reaper (pid 0), taken over by the reaper when it has
 * connected, and freed when the reaper exits.
 *
 * Commands that need a database to themselves: DROP DATABASE, ALTER
 * DATABASE RENAME / SET TABLESPACE and CREATE DATABASE ... TEMPLATE fail
 * while another process is connected to the database.  The utility hook
 * (utility.c) therefore pauses the database first: under the lock it
 * records the pause (no reaper starts there for BROKER_PAUSE_MS) and asks
 * the reaper to stop, then waits until the slot is free.  The launcher
 * checks the pause when it reserves a slot, and the reaper when it takes
 * the slot over, both under the same lock, so no reaper can slip in.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "util.h"
#include "worker.h"

/* How long a database stays paused after a command asked for it. */
#define BROKER_PAUSE_MS				5000
/* How long such a command waits for the reaper to go. */
#define BROKER_STOP_WAIT_MS			5000
/* Databases that can be paused at the same time. */
#define BROKER_MAX_PAUSES			16

static const char *const reaper_state_names[] = {
	[REAPER_STARTING] = "starting",
	[REAPER_IDLE] = "idle",
	[REAPER_REAPING] = "reaping",
	[REAPER_NO_EXTENSION] = "waiting for extension",
};

/* A database in which no reaper may start before "until". */
typedef struct BrokerPause
{
	Oid			dboid;
	TimestampTz until;
} BrokerPause;

typedef struct BrokerWorkerShared
{
	LWLock	   *lock;
	pid_t		launcher_pid;	/* 0: no launcher */
	BrokerPause pauses[BROKER_MAX_PAUSES];
	int			nslots;
	BrokerReaperSlot slots[FLEXIBLE_ARRAY_MEMBER];
} BrokerWorkerShared;

static BrokerWorkerShared *worker_shared = NULL;

/* Space for the shared state: one slot per possible background worker. */
Size
BrokerWorkerShmemSize(void)
{
	return add_size(offsetof(BrokerWorkerShared, slots),
					mul_size(max_worker_processes, sizeof(BrokerReaperSlot)));
}

/* Create or attach (caller holds AddinShmemInitLock). */
void
BrokerWorkerShmemInit(void)
{
	bool		found;

	worker_shared = ShmemInitStruct("broker worker state",
									BrokerWorkerShmemSize(), &found);
	if (!found)
	{
		memset(worker_shared, 0, BrokerWorkerShmemSize());
		worker_shared->lock = &(GetNamedLWLockTranche("broker"))[BROKER_LOCK_WORKERS].lock;
		worker_shared->nslots = max_worker_processes;
	}
}

/* True when the workers' shared state exists (preloaded). */
bool
BrokerWorkersReady(void)
{
	return worker_shared != NULL;
}

/* The name of a reaper state, for broker.health(). */
const char *
BrokerReaperStateName(BrokerReaperState state)
{
	return reaper_state_names[state];
}

/* True if no reaper may start in the database now (lock held). */
static bool
database_paused(Oid dboid, TimestampTz now)
{
	for (int i = 0; i < BROKER_MAX_PAUSES; i++)
	{
		BrokerPause *p = &worker_shared->pauses[i];

		if (p->dboid == dboid && now < p->until)
			return true;
	}
	return false;
}

/* Record (or extend) a pause of the database (lock held). */
static void
database_pause(Oid dboid, TimestampTz until)
{
	BrokerPause *victim = &worker_shared->pauses[0];

	for (int i = 0; i < BROKER_MAX_PAUSES; i++)
	{
		BrokerPause *p = &worker_shared->pauses[i];

		if (p->dboid == dboid)
		{
			victim = p;
			break;
		}
		/* Otherwise reuse the entry that ends first (expired ones first). */
		if (p->until < victim->until)
			victim = p;
	}
	victim->dboid = dboid;
	victim->until = until;
}

/* True if a reaper is reserved for or running in the database. */
static bool
database_has_reaper(Oid dboid)
{
	bool		found = false;

	LWLockAcquire(worker_shared->lock, LW_SHARED);
	for (int i = 0; i < worker_shared->nslots && !found; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		found = slot->in_use && slot->dboid == dboid;
	}
	LWLockRelease(worker_shared->lock);
	return found;
}

/*
 * Stop the database's reaper and keep the launcher from starting another
 * for a while; wait (boundedly) until it is gone.
 */
void
BrokerStopReaperFor(Oid dboid)
{
	TimestampTz deadline;
	Latch	   *latch = NULL;

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	database_pause(dboid, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  BROKER_PAUSE_MS));
	for (int i = 0; i < worker_shared->nslots; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid && slot->pid != 0)
		{
			slot->stop_requested = true;
			latch = slot->latch;
		}
	}
	LWLockRelease(worker_shared->lock);
	if (latch != NULL)
		SetLatch(latch);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   BROKER_STOP_WAIT_MS);
	while (database_has_reaper(dboid) && GetCurrentTimestamp() < deadline)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	/* The pause runs from now on, while the command takes its locks. */
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	database_pause(dboid, TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  BROKER_PAUSE_MS));
	LWLockRelease(worker_shared->lock);
}

/*
 * The launcher's single-instance guard: 0 when this process is now the
 * launcher (reservations of a previous launcher are void), else the pid
 * of the one already running.
 */
pid_t
BrokerLauncherClaim(void)
{
	pid_t		other = 0;

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	if (worker_shared->launcher_pid != 0 &&
		worker_shared->launcher_pid != MyProcPid)
		other = worker_shared->launcher_pid;
	else
	{
		worker_shared->launcher_pid = MyProcPid;
		for (int i = 0; i < worker_shared->nslots; i++)
		{
			BrokerReaperSlot *slot = &worker_shared->slots[i];

			if (slot->in_use && slot->pid == 0)
				memset(slot, 0, sizeof(*slot));
		}
	}
	LWLockRelease(worker_shared->lock);
	return other;
}

/* The launcher exits: drop the guard. */
void
BrokerLauncherRelease(void)
{
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	if (worker_shared->launcher_pid == MyProcPid)
		worker_shared->launcher_pid = 0;
	LWLockRelease(worker_shared->lock);
}

/*
 * Reserve a slot for a reaper of the database; false when it is paused or
 * a reaper (perhaps a previous launcher's, still exiting) is there.
 */
bool
BrokerSlotReserve(Oid dboid, TimestampTz now)
{
	BrokerReaperSlot *free_slot = NULL;
	bool		ok = true;

	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	if (database_paused(dboid, now))
		ok = false;
	for (int i = 0; i < worker_shared->nslots && ok; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid)
			ok = false;
		else if (!slot->in_use && free_slot == NULL)
			free_slot = slot;
	}
	if (ok && free_slot != NULL)
	{
		memset(free_slot, 0, sizeof(*free_slot));
		free_slot->in_use = true;
		free_slot->dboid = dboid;
		free_slot->state = REAPER_STARTING;
	}
	LWLockRelease(worker_shared->lock);
	return ok && free_slot != NULL;
}

/* Free a reservation no reaper took over (its start failed, or it exited). */
void
BrokerSlotReleaseReservation(Oid dboid)
{
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < worker_shared->nslots; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid && slot->pid == 0)
			memset(slot, 0, sizeof(*slot));
	}
	LWLockRelease(worker_shared->lock);
}

/*
 * Take over the slot the launcher reserved (or a free one).  NULL when
 * this reaper must not run: the database is paused, or another reaper
 * serves it (*other is its pid).
 */
BrokerReaperSlot *
BrokerSlotClaim(Oid dboid, pid_t *other)
{
	BrokerReaperSlot *mine = NULL;
	bool		paused;

	*other = 0;
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	paused = database_paused(dboid, GetCurrentTimestamp());
	for (int i = 0; i < worker_shared->nslots && !paused; i++)
	{
		BrokerReaperSlot *slot = &worker_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid)
		{
			if (slot->pid != 0)
				*other = slot->pid;
			else if (mine == NULL)
				mine = slot;
		}
	}
	for (int i = 0; i < worker_shared->nslots && mine == NULL; i++)
	{
		if (!worker_shared->slots[i].in_use)
			mine = &worker_shared->slots[i];
	}
	if (paused || *other != 0)
		mine = NULL;
	if (mine != NULL)
	{
		memset(mine, 0, sizeof(*mine));
		mine->in_use = true;
		mine->dboid = dboid;
		mine->pid = MyProcPid;
		mine->latch = MyLatch;
		mine->state = REAPER_STARTING;
	}
	LWLockRelease(worker_shared->lock);
	return mine;
}

/* Free a reaper's slot (it exits). */
void
BrokerSlotRelease(BrokerReaperSlot *slot)
{
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	memset(slot, 0, sizeof(*slot));
	LWLockRelease(worker_shared->lock);
}

/* Update a reaper's slot. */
void
BrokerSlotSet(BrokerReaperSlot *slot, BrokerReaperState state,
			  TimestampTz pass_at, int64 pass_us, uint64 removed)
{
	LWLockAcquire(worker_shared->lock, LW_EXCLUSIVE);
	slot->state = state;
	if (pass_at != 0)
	{
		slot->last_pass_at = pass_at;
		slot->last_pass_us = pass_us;
	}
	slot->removed_total += removed;
	LWLockRelease(worker_shared->lock);
}

/* True when a command asked this reaper to stop. */
bool
BrokerSlotStopRequested(BrokerReaperSlot *slot)
{
	bool		stop;

	LWLockAcquire(worker_shared->lock, LW_SHARED);
	stop = slot->stop_requested;
	LWLockRelease(worker_shared->lock);
	return stop;
}

/* Copy the running reapers' slots (for broker.health); returns how many. */
int
BrokerSlotsCopy(BrokerReaperSlot **copy)
{
	int			n = 0;

	*copy = palloc(worker_shared->nslots * sizeof(BrokerReaperSlot));
	LWLockAcquire(worker_shared->lock, LW_SHARED);
	for (int i = 0; i < worker_shared->nslots; i++)
	{
		if (worker_shared->slots[i].in_use && worker_shared->slots[i].pid != 0)
			(*copy)[n++] = worker_shared->slots[i];
	}
	LWLockRelease(worker_shared->lock);
	return n;
}
