/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The broker's background workers: the launcher (launcher.c), one
 *	  expiry reaper per database (reaper.c), their shared state of slots
 *	  and pauses (worker.c), and broker.health() (health.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_WORKER_H
#define BROKER_WORKER_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "utils/guc.h"

/* What a reaper is doing (broker.health().state). */
typedef enum BrokerReaperState
{
	REAPER_STARTING,
	REAPER_IDLE,
	REAPER_REAPING,
	REAPER_NO_EXTENSION
} BrokerReaperState;

/* One reaper: reserved by the launcher, owned by the reaper once running. */
typedef struct BrokerReaperSlot
{
	bool		in_use;
	Oid			dboid;
	pid_t		pid;			/* 0 while reserved, before the reaper runs */
	Latch	   *latch;			/* the reaper's, to wake it */
	bool		stop_requested;
	BrokerReaperState state;
	TimestampTz last_pass_at;	/* 0: no pass yet */
	int64		last_pass_us;
	uint64		removed_total;
} BrokerReaperSlot;

/* worker.c: the shared state of the workers */
extern Size BrokerWorkerShmemSize(void);
extern void BrokerWorkerShmemInit(void);
extern bool BrokerWorkersReady(void);
extern const char *BrokerReaperStateName(BrokerReaperState state);
extern pid_t BrokerLauncherClaim(void);
extern void BrokerLauncherRelease(void);
extern bool BrokerSlotReserve(Oid dboid, TimestampTz now);
extern void BrokerSlotReleaseReservation(Oid dboid);
extern BrokerReaperSlot *BrokerSlotClaim(Oid dboid, pid_t *other);
extern void BrokerSlotRelease(BrokerReaperSlot *slot);
extern void BrokerSlotSet(BrokerReaperSlot *slot, BrokerReaperState state,
						  TimestampTz pass_at, int64 pass_us, uint64 removed);
extern bool BrokerSlotStopRequested(BrokerReaperSlot *slot);
extern int	BrokerSlotsCopy(BrokerReaperSlot **copy);
extern void BrokerStopReaperFor(Oid dboid);

/* launcher.c */
extern char *broker_databases;
extern void BrokerLauncherInit(void);

/* reaper.c */
extern int	broker_reaper_interval_ms;
extern void BrokerReaperInit(void);

/* Entry points of the background workers, looked up by name. */
extern PGDLLEXPORT void broker_launcher_main(Datum main_arg)
			pg_attribute_noreturn();
extern PGDLLEXPORT void broker_reaper_main(Datum main_arg)
			pg_attribute_noreturn();

#endif							/* BROKER_WORKER_H */
