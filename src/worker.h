/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The broker's background workers: the launcher, the per-database
 *	  expiry reapers, their shared state, broker.reap() and broker.health().
 *
 * Everything is in worker.c; see its header comment.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_WORKER_H
#define BROKER_WORKER_H

#include "postgres.h"

#include "utils/guc.h"

/* The version compiled into the library (broker.health() reports it). */
#define BROKER_LIBRARY_VERSION	"0.1.0"

/* GUC broker.databases: the databases served; empty means all. */
extern char *broker_databases;

extern void BrokerWorkerInit(void);
extern bool BrokerCheckDatabases(char **newval, void **extra, GucSource source);

/* Entry points of the background workers, looked up by name. */
extern PGDLLEXPORT void broker_launcher_main(Datum main_arg)
			pg_attribute_noreturn();
extern PGDLLEXPORT void broker_reaper_main(Datum main_arg)
			pg_attribute_noreturn();

#endif							/* BROKER_WORKER_H */
