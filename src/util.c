/*-------------------------------------------------------------------------
 *
 * util.c
 *	  Argument validators and error helpers shared by the entry points, and
 *	  the flag that says whether shared memory is there.
 *
 * Every check raises its own SQLSTATE: 22004 for a NULL that is not
 * allowed, 42602 for a malformed queue name, 25006 for a change attempted
 * on a standby or in a read-only transaction, 55000 when the library was
 * not preloaded.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "util.h"

/* Set by the shared-memory startup hook (broker.c) when preloaded. */
static bool shmem_ready = false;

/* The shared-memory startup hook ran: every subsystem has its state. */
void
BrokerSetSharedMemoryReady(void)
{
	shmem_ready = true;
}

/* True when the library was preloaded and shared memory is attached. */
bool
BrokerSharedMemoryReady(void)
{
	return shmem_ready;
}

/* Fail with 55000 unless preloaded. */
void
BrokerRequireSharedMemory(void)
{
	if (!shmem_ready)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("broker must be loaded via shared_preload_libraries"),
				 errdetail("This function needs the broker's shared memory."),
				 errhint("Add broker to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* interval > 0, comparing as PostgreSQL does (a month is 30 days). */
bool
BrokerIntervalIsPositive(const Interval *iv)
{
	Interval	zero = {0, 0, 0};

	return DatumGetBool(DirectFunctionCall2(interval_gt,
											IntervalPGetDatum((Interval *) iv),
											IntervalPGetDatum(&zero)));
}

/* Compare two intervals as PostgreSQL does: <0, 0, >0. */
int
BrokerIntervalCompare(const Interval *a, const Interval *b)
{
	return DatumGetInt32(DirectFunctionCall2(interval_cmp,
											 IntervalPGetDatum((Interval *) a),
											 IntervalPGetDatum((Interval *) b)));
}

/*
 * A lease must not be longer than the queue's max_lease (22023): what
 * dequeue and extend_lease give is bounded, so that no consumer hides a
 * message for longer than the queue's admin allows.
 */
void
BrokerCheckLease(const Interval *lease, const Interval *max_lease,
				 const char *queue)
{
	if (BrokerIntervalCompare(lease, max_lease) <= 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("lease is longer than queue \"%s\" allows", queue),
			 errdetail("The queue's max_lease is %s.",
					   DatumGetCString(DirectFunctionCall1(interval_out,
														   IntervalPGetDatum((Interval *) max_lease)))),
			 errhint("Take a shorter lease and extend it with broker.extend_lease while the work goes on.")));
}

/* interval < 0. */
bool
BrokerIntervalIsNegative(const Interval *iv)
{
	Interval	zero = {0, 0, 0};

	return DatumGetBool(DirectFunctionCall2(interval_lt,
											IntervalPGetDatum((Interval *) iv),
											IntervalPGetDatum(&zero)));
}

/*
 * Refuse an interval longer than BROKER_MAX_INTERVAL_YEARS (22023): added
 * to now it must stay a timestamp, and a setting that cannot be (a queue's
 * lease or default_ttl) would make every later call of the queue fail.
 */
void
BrokerCheckIntervalMax(const Interval *iv, const char *argname)
{
	Interval	max = {0, 0, BROKER_MAX_INTERVAL_YEARS * MONTHS_PER_YEAR};
	const int64 max_days = (int64) BROKER_MAX_INTERVAL_YEARS * 366;
	const int64 min_days = -(int64) BROKER_MAX_NEGATIVE_YEARS * 366;

	if (DatumGetBool(DirectFunctionCall2(interval_gt,
										 IntervalPGetDatum((Interval *) iv),
										 IntervalPGetDatum(&max))))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at most %d years", argname,
						BROKER_MAX_INTERVAL_YEARS)));

	/*
	 * timestamptz + interval adds the months, then the days, then the time,
	 * and fails if a step leaves the range of timestamps: an interval of
	 * a short length made of huge parts of opposite signs would pass the
	 * check above and make every call that adds it to now fail with 22008
	 * (a queue's default_ttl: every enqueue).  So each part must stay within
	 * the same bound, and a negative part within a tenth of it.
	 */
	if (iv->month > BROKER_MAX_INTERVAL_YEARS * MONTHS_PER_YEAR ||
		iv->month < -BROKER_MAX_NEGATIVE_YEARS * MONTHS_PER_YEAR ||
		iv->day > max_days || iv->day < min_days ||
		iv->time > max_days * USECS_PER_DAY || iv->time < min_days * USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s has a part out of range", argname),
				 errdetail("Each of its months, days and time must be at most %d years, and a negative one at most %d years.",
						   BROKER_MAX_INTERVAL_YEARS, BROKER_MAX_NEGATIVE_YEARS)));
}

/*
 * The start of a window of length iv that ends at ts (a dedup window, a
 * retention): ts - iv, as timestamptz - interval does, except that a window
 * reaching back before the earliest timestamp (4714 BC; a window of more
 * than about 6,700 years, which BrokerCheckIntervalMax allows) starts at
 * -infinity instead of failing every call with 22008: nothing stored is
 * older than either.  An interval whose components are so large, with mixed
 * signs, that stepping through them would leave the range of timestamps
 * (refused by BrokerCheckIntervalMax now, but a queue created before may
 * hold one) is taken at its length as intervals compare (a month as 30 days).
 */
TimestampTz
BrokerWindowStart(TimestampTz ts, const Interval *iv)
{
	const double day = (double) USECS_PER_DAY;
	/* How far back and how far forward the steps can go, at most. */
	double		back = Max(iv->month, 0) * 31.0 * day + Max(iv->day, 0) * day +
		(double) Max(iv->time, 0);
	double		fwd = Max(-(double) iv->month, 0) * 31.0 * day +
		Max(-(double) iv->day, 0) * day + Max(-(double) iv->time, 0);
	double		start;

	if ((double) ts - back > (double) MIN_TIMESTAMP + 2 * day &&
		(double) ts + fwd < (double) END_TIMESTAMP - 2 * day)
		return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
													   TimestampTzGetDatum(ts),
													   IntervalPGetDatum((Interval *) iv)));
	start = (double) ts - ((double) iv->month * 30.0 * day +
						   (double) iv->day * day + (double) iv->time);
	if (start <= (double) MIN_TIMESTAMP)
		return DT_NOBEGIN;
	if (start >= (double) END_TIMESTAMP)
		return DT_NOEND;
	return (TimestampTz) start;
}

/* ts + iv, as timestamptz + interval does. */
TimestampTz
BrokerTimestampPlus(TimestampTz ts, const Interval *iv)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(ts),
												   IntervalPGetDatum((Interval *) iv)));
}

/* Fail with 22004 when a required argument is NULL. */
void
BrokerRequireArg(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	/* SQL declarations of another version: never read past the arguments. */
	if (argno >= PG_NARGS())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("broker function called without its argument %s", argname),
				 errdetail("The extension's SQL declarations are not those of the library loaded."),
				 errhint("Run ALTER EXTENSION broker UPDATE in this database.")));
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", argname)));
}

/*
 * Refuse to change data in a read-only transaction or on a standby, with
 * 25006 and a message that says why, before anything is attempted.
 */
void
BrokerRequireWritable(const char *action)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s on a standby", action),
				 errdetail("A standby is read-only: producing and consuming change the queue."),
				 errhint("Connect to the primary (for example with target_session_attrs=read-write); "
						 "a standby can run broker.metrics() and read broker.queues.")));
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s in a read-only transaction", action)));
}

/*
 * A copy of a user-supplied string fit for an error message: at most 64
 * bytes, cut on a character boundary, with "..." when it was cut.
 */
char *
BrokerClipForMessage(const char *s, int len)
{
	int			clip = pg_mbcliplen(s, len, 64);

	if (clip >= len)
		return pnstrdup(s, len);
	return psprintf("%.*s...", clip, s);
}

/* Refuse a name that is not 1-48 of [a-z0-9_] not starting with a digit. */
void
BrokerCheckQueueName(text *name)
{
	const char *s = VARDATA_ANY(name);
	int			len = VARSIZE_ANY_EXHDR(name);
	bool		ok = len >= 1 && len <= BROKER_QUEUE_NAME_MAX &&
		!(s[0] >= '0' && s[0] <= '9');

	for (int i = 0; ok && i < len; i++)
		ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
			s[i] == '_';
	if (!ok && len > BROKER_QUEUE_NAME_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid queue name \"%s\"", BrokerClipForMessage(s, len)),
				 errdetail("A queue name is 1 to %d characters of a-z, 0-9 and _, and does not start with a digit; the name given is %d bytes long.",
						   BROKER_QUEUE_NAME_MAX, len)));
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid queue name \"%s\"", BrokerClipForMessage(s, len)),
				 errdetail("A queue name is 1 to %d characters of a-z, 0-9 and _, and does not start with a digit.",
						   BROKER_QUEUE_NAME_MAX)));
}

/* The queue-name argument, which may be neither NULL nor malformed. */
text *
BrokerQueueArg(FunctionCallInfo fcinfo, int argno)
{
	text	   *name;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("queue name must not be null"),
				 errdetail("A queue name is 1 to %d characters of a-z, 0-9 and _, and does not start with a digit.",
						   BROKER_QUEUE_NAME_MAX)));
	name = PG_GETARG_TEXT_PP(argno);
	BrokerCheckQueueName(name);
	return name;
}

/*
 * Refuse a group or dedup key that is empty or longer than BROKER_MAX_KEY
 * bytes (22023); element > 0 names a batch element.
 */
void
BrokerCheckKey(text *key, const char *what, int element)
{
	int			len = VARSIZE_ANY_EXHDR(key);

	if (len >= 1 && len <= BROKER_MAX_KEY)
		return;
	if (element > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be 1 to %d bytes", what, BROKER_MAX_KEY),
				 errdetail("Element %d is %d bytes long; nothing was enqueued.",
						   element, len)));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s must be 1 to %d bytes", what, BROKER_MAX_KEY),
			 errdetail("The value given is %d bytes long.", len)));
}

/* The priority argument: 0 when NULL or absent, else 0 to 9 (22023). */
int
BrokerPriorityArg(FunctionCallInfo fcinfo, int argno)
{
	int32		p;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return 0;
	p = PG_GETARG_INT32(argno);
	if (p < 0 || p >= BROKER_PRIORITIES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("priority must be between 0 and %d", BROKER_PRIORITIES - 1),
				 errdetail("The value given was %d.", p)));
	return p;
}

/* Order of keys (by bytes): group and dedup locks are taken in it. */
int
BrokerCompareKeys(const text *a, const text *b)
{
	int			la = VARSIZE_ANY_EXHDR(a);
	int			lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

/* qsort and bsearch comparator of text pointers, by BrokerCompareKeys. */
int
BrokerCompareKeyPtrs(const void *a, const void *b)
{
	return BrokerCompareKeys(*(text *const *) a, *(text *const *) b);
}

/* Validate a delay and a ttl (either NULL: not given); 22023 when out of range. */
void
BrokerCheckDelayTtl(const Interval *delay, const Interval *ttl)
{
	if (delay != NULL && BrokerIntervalIsNegative(delay))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delay must not be negative")));
	if (ttl != NULL && !BrokerIntervalIsPositive(ttl))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ttl must be positive")));
	if (delay != NULL)
		BrokerCheckIntervalMax(delay, "delay");
	if (ttl != NULL)
		BrokerCheckIntervalMax(ttl, "ttl");
}
