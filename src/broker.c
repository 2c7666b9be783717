/*-------------------------------------------------------------------------
 *
 * broker.c
 *	  Module initialisation: GUCs and the shared-memory hooks.
 *
 * _PG_init only defines the GUCs and dispatches to each subsystem's init.
 * Loaded without shared_preload_libraries, the SQL functions that need
 * shared memory fail with SQLSTATE 55000 (see BrokerRequireSharedMemory).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "broker.h"
#include "worker.h"

PG_MODULE_MAGIC;

int			broker_reaper_interval_ms = 1000;
int			broker_max_queues = 4096;

void		_PG_init(void);

/* Define the GUCs and, when preloaded, request shared memory. */
void
_PG_init(void)
{
	DefineCustomIntVariable("broker.reaper_interval",
							"Time between two passes of the expiry reaper.",
							"Expired messages are never delivered; the reaper "
							"removes them from disk within about this interval.",
							&broker_reaper_interval_ms,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("broker.defer_lease_write",
							 "Write a dequeued message's lease at commit, and not at all if the transaction deletes it.",
							 "Off: write the lease in the dequeue statement itself (for comparison).",
							 &broker_defer_lease_write,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("broker.segment_size",
							"Message ids a segment takes before the next segment becomes current.",
							"Drained segments are emptied with TRUNCATE; smaller segments "
							"give space back sooner, larger ones rotate less often.",
							&broker_segment_size,
							100000, 100, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("broker.consumer",
							   "Name this session's dequeues and deletes are attributed to.",
							   "Shown in broker.consumers; empty means application_name.",
							   &broker_consumer_name,
							   "",
							   PGC_USERSET,
							   0,
							   NULL, NULL, NULL);

	/*
	 * A PGC_POSTMASTER setting can only be defined while the postmaster
	 * loads us; loaded later (no preload), there is no shared memory to
	 * size anyway.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("broker.max_queues",
								"Maximum number of queues with shared state, in all databases.",
								"Each queue in use takes one slot of shared memory "
								"(its low-water mark, counters and long-poll waiters).",
								&broker_max_queues,
								4096, 16, 1000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("broker.max_consumers",
								"Maximum number of (consumer, queue) pairs in the consumer history.",
								"When full, the pair seen longest ago is recycled.",
								&broker_max_consumers,
								1024, 16, 1000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

	DefineCustomStringVariable("broker.databases",
							   "Databases whose expired messages the background worker removes.",
							   "A comma-separated list of database names; empty means every "
							   "database that allows connections and is not a template.",
							   &broker_databases,
							   "",
							   PGC_SIGHUP,
							   GUC_LIST_INPUT,
							   BrokerCheckDatabases, NULL, NULL);

	MarkGUCPrefixReserved("broker");

	if (!process_shared_preload_libraries_in_progress)
		return;

	BrokerShmemInit();
	BrokerWorkerInit();
}
