/*-------------------------------------------------------------------------
 *
 * util.h
 *	  The bottom layer: argument validators, error helpers and the flag that
 *	  says whether the library was preloaded.  Calls nothing of broker's.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_UTIL_H
#define BROKER_UTIL_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "fmgr.h"

/* The version compiled into the library (broker.health() reports it). */
#define BROKER_LIBRARY_VERSION	"0.2.0"

#define BROKER_QUEUE_NAME_MAX	48
#define BROKER_MAX_MESSAGE_SIZE_LIMIT	1048576
#define BROKER_MAX_BATCH		10000
#define BROKER_MAX_INTERVAL_YEARS	10000	/* leases, delays, ttls, waits */
#define BROKER_MAX_NEGATIVE_YEARS	1000	/* a negative part of one of them */
#define BROKER_MAX_KEY			255		/* group and dedup keys, in bytes */
#define BROKER_MAX_TOPIC		255		/* topics and patterns */
#define BROKER_PRIORITIES		10		/* priorities 0 .. 9 */

/*
 * The LWLocks of the "broker" tranche, one per subsystem that has shared
 * state (requested once by broker.c).
 */
#define BROKER_LOCK_QUEUES		0	/* qstate.c: the queue-state hash */
#define BROKER_LOCK_CONSUMERS	1	/* stats.c: the consumer history */
#define BROKER_LOCK_SEGMENTS	2	/* segment.c: the segment states */
#define BROKER_LOCK_WORKERS		3	/* worker.c: reaper slots and pauses */
#define BROKER_NUM_LOCKS		4

extern void BrokerSetSharedMemoryReady(void);
extern bool BrokerSharedMemoryReady(void);
extern void BrokerRequireSharedMemory(void);

extern bool BrokerIntervalIsPositive(const Interval *iv);
extern bool BrokerIntervalIsNegative(const Interval *iv);
extern int	BrokerIntervalCompare(const Interval *a, const Interval *b);
extern void BrokerCheckLease(const Interval *lease, const Interval *max_lease,
							 const char *queue);
extern void BrokerCheckIntervalMax(const Interval *iv, const char *argname);
extern TimestampTz BrokerTimestampPlus(TimestampTz ts, const Interval *iv);
extern TimestampTz BrokerWindowStart(TimestampTz ts, const Interval *iv);
extern void BrokerRequireArg(FunctionCallInfo fcinfo, int argno, const char *argname);
extern void BrokerRequireWritable(const char *action);
extern char *BrokerClipForMessage(const char *s, int len);
extern void BrokerCheckQueueName(text *name);
extern text *BrokerQueueArg(FunctionCallInfo fcinfo, int argno);
extern void BrokerCheckKey(text *key, const char *what, int element);
extern int	BrokerPriorityArg(FunctionCallInfo fcinfo, int argno);
extern void BrokerCheckDelayTtl(const Interval *delay, const Interval *ttl);
extern int	BrokerCompareKeys(const text *a, const text *b);
extern int	BrokerCompareKeyPtrs(const void *a, const void *b);

#endif							/* BROKER_UTIL_H */
