/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  Queue metadata cache with invalidation, queue locks, validators and
 *	  the prepared statements of the whole extension.
 *
 * Queue definitions are read once per backend and kept in a hash table
 * until a relcache invalidation of broker.queue_defs (sent at commit by
 * create_queue and drop_queue, or by DROP EXTENSION) flushes it.
 *
 * Every statement is fully schema-qualified, operators included, so the
 * caller's search_path cannot change what runs.  Plans are prepared on
 * first use with SPI_prepare and kept with SPI_keepplan; the plan cache
 * re-plans them by itself if the extension is dropped and created again.
 *
 * Queue locks: an object lock on (broker.queue_defs, queue_id).  enqueue
 * and dequeue hold it in AccessShareLock, drop_queue and purge_queue in
 * AccessExclusiveLock, so a queue cannot vanish under a producer.  Lock
 * order everywhere: the queue's lock, then its dead-letter queue's lock,
 * then message rows in id order.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "lib/stringinfo.h"
#include "optimizer/cost.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "broker.h"

#define OP(x) "OPERATOR(pg_catalog." x ")"

/* Statement texts and parameter types, indexed by BrokerPlanId. */
typedef struct BrokerPlanDef
{
	const char *sql;
	int			nargs;
	Oid			argtypes[8];
	bool		custom;			/* planned at each call (else generic, kept) */
} BrokerPlanDef;

static const BrokerPlanDef plan_defs[BROKER_NUM_PLANS] = {
	[PLAN_QUEUE_BY_NAME] = {
		"SELECT q.queue_id, q.name, q.lease, q.max_message_size, q.default_ttl,"
		"       q.max_deliveries, q.dead_letter_id"
		"  FROM broker.queue_defs q"
		" WHERE q.name " OP("=") " $1 AND q.kind " OP("=") " 'q'",
		1, {TEXTOID}
	},
	[PLAN_QUEUE_BY_ID] = {
		"SELECT q.queue_id, q.name, q.lease, q.max_message_size, q.default_ttl,"
		"       q.max_deliveries, q.dead_letter_id"
		"  FROM broker.queue_defs q"
		" WHERE q.queue_id " OP("=") " $1",
		1, {INT4OID}
	},
	[PLAN_QUEUE_INSERT] = {
		"INSERT INTO broker.queue_defs AS q (queue_id, name, lease,"
		"       max_message_size, default_ttl, max_deliveries, dead_letter_id)"
		" VALUES (pg_catalog.nextval('broker.queue_id_seq'::pg_catalog.regclass),"
		"         $1, $2, $3, $4, $5, $6)"
		" ON CONFLICT (name) DO NOTHING RETURNING q.queue_id",
		6, {TEXTOID, INTERVALOID, INT4OID, INTERVALOID, INT4OID, INT4OID}
	},
	[PLAN_QUEUE_DLQ_USERS] = {
		"SELECT pg_catalog.string_agg(q.name, ', ' ORDER BY q.name)"
		"  FROM broker.queue_defs q"
		" WHERE q.dead_letter_id " OP("=") " $1",
		1, {INT4OID}
	},
	[PLAN_QUEUE_DELETE] = {
		"DELETE FROM broker.queue_defs q WHERE q.queue_id " OP("=") " $1",
		1, {INT4OID}
	},
	[PLAN_MESSAGES_PURGE] = {
		"DELETE FROM broker.messages m WHERE m.queue_id " OP("=") " $1",
		1, {INT4OID}
	},
	[PLAN_ENQUEUE] = {
		"INSERT INTO broker.messages (queue_id, id, vt, enqueued_at,"
		"       expires_at, payload, headers)"
		" VALUES ($1, $2, $3, $4, $5, $6, $7)",
		7, {INT4OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		JSONBOID, JSONBOID}
	},
	[PLAN_ENQUEUE_BATCH] = {
		"INSERT INTO broker.messages (queue_id, id, vt, enqueued_at,"
		"       expires_at, payload, headers)"
		" SELECT $1, u.i, $3, $4, $5, u.p, $7"
		"   FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($6)) AS u(i, p)",
		7, {INT4OID, INT8ARRAYOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		TIMESTAMPTZOID, JSONBARRAYOID, JSONBOID}
	},

	/*
	 * Take up to $4 messages from the low-water mark $2 on, skipping rows
	 * other consumers hold; lease the live ones, delete the exhausted ones
	 * (the caller moves those to the dead-letter queue).
	 */
	[PLAN_DEQUEUE] = {
		"WITH c AS ("
		"  SELECT m.ctid AS tid, m.delivery_count " OP(">=") " $7 AS dead"
		"    FROM broker.messages m"
		"   WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
		"     AND m.vt " OP("<=") " $3"
		"     AND (m.expires_at IS NULL OR m.expires_at " OP(">") " $3)"
		"   ORDER BY m.id"
		"   LIMIT $4"
		"   FOR UPDATE SKIP LOCKED),"
		" u AS ("
		"  UPDATE broker.messages m"
		"     SET vt = $5,"
		"         delivery_count = m.delivery_count " OP("+") " 1,"
		"         receipt = $6 " OP("#") " m.id"
		"    FROM c"
		"   WHERE m.ctid " OP("=") " c.tid AND NOT c.dead"
		"  RETURNING m.id, m.payload, m.headers, m.enqueued_at,"
		"            m.delivery_count, m.vt, m.expires_at, m.receipt),"
		" d AS ("
		"  DELETE FROM broker.messages m USING c"
		"   WHERE m.ctid " OP("=") " c.tid AND c.dead"
		"  RETURNING m.id, m.payload, m.headers, m.expires_at)"
		" SELECT false AS dead, u.id, u.payload, u.headers, u.enqueued_at,"
		"        u.delivery_count, u.vt, u.expires_at, u.receipt FROM u"
		" UNION ALL"
		" SELECT true, d.id, d.payload, d.headers, NULL, NULL, NULL,"
		"        d.expires_at, NULL FROM d"
		" ORDER BY 2",
		7, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID, TIMESTAMPTZOID, INT8OID,
		INT4OID}
	},
	[PLAN_LWM_PROBE] = {
		"SELECT m.id FROM broker.messages m"
		" WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
		" ORDER BY m.id LIMIT 1",
		2, {INT4OID, INT8OID}
	},
	/*
	 * Deferred leases (lease.c): lock up to $4 messages from the mark on,
	 * skipping rows other consumers hold; the lease is written at commit by
	 * PLAN_LEASE_WRITE.
	 */
	[PLAN_DEQUEUE_LOCK] = {
		"SELECT m.ctid, m.id, m.payload, m.headers, m.enqueued_at,"
		"       m.delivery_count, m.expires_at"
		"  FROM broker.messages m"
		" WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
		"   AND m.vt " OP("<=") " $3"
		"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " $3)"
		" ORDER BY m.id"
		" LIMIT $4"
		" FOR UPDATE SKIP LOCKED",
		4, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID}
	},

	/*
	 * The same when this transaction already leased messages of the queue:
	 * those ($5) are locked by us, so SKIP LOCKED would return them again.
	 * Planned at each call, so that $5 is a constant and "<> ALL" a hash
	 * lookup: a scan that passes n leased rows costs O(n), not O(n^2).
	 */
	[PLAN_DEQUEUE_LOCK_EXCL] = {
		"SELECT m.ctid, m.id, m.payload, m.headers, m.enqueued_at,"
		"       m.delivery_count, m.expires_at"
		"  FROM broker.messages m"
		" WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
		"   AND m.vt " OP("<=") " $3"
		"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " $3)"
		"   AND m.id " OP("<>") " ALL ($5)"
		" ORDER BY m.id"
		" LIMIT $4"
		" FOR UPDATE SKIP LOCKED",
		5, {INT4OID, INT8OID, TIMESTAMPTZOID, INT4OID, INT8ARRAYOID}, true
	},
	[PLAN_DELETE_TIDS] = {
		"DELETE FROM broker.messages m WHERE m.ctid " OP("=") " ANY ($1)"
		" RETURNING m.id, m.payload, m.headers",
		1, {TIDARRAYOID}
	},
	[PLAN_LEASE_WRITE] = {
		"UPDATE broker.messages m"
		"   SET vt = u.vt, delivery_count = u.dc, receipt = u.r"
		"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
		"                  pg_catalog.unnest($3), pg_catalog.unnest($4))"
		"       AS u(t, vt, dc, r)"
		" WHERE m.ctid " OP("=") " u.t",
		4, {TIDARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID, INT8ARRAYOID}
	},
	/* When does the next leased or delayed message become deliverable? */
	[PLAN_NEXT_DUE] = {
		"SELECT pg_catalog.min(m.vt) FROM broker.messages m"
		" WHERE m.queue_id " OP("=") " $1 AND m.id " OP(">=") " $2"
		"   AND m.vt " OP(">") " $3"
		"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " m.vt)",
		3, {INT4OID, INT8OID, TIMESTAMPTZOID}
	},
	[PLAN_DELETE] = {
		"DELETE FROM broker.messages m"
		" WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " $2",
		2, {INT4OID, INT8OID}
	},
	[PLAN_DELETE_RECEIPT] = {
		"DELETE FROM broker.messages m"
		" WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " $2"
		"   AND m.receipt " OP("=") " $3",
		3, {INT4OID, INT8OID, INT8OID}
	},
	[PLAN_DELETE_MANY] = {
		"DELETE FROM broker.messages m"
		" WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " ANY ($2)"
		" RETURNING m.id",
		2, {INT4OID, INT8ARRAYOID}
	},
	[PLAN_RELEASE] = {
		"UPDATE broker.messages m SET vt = $4, receipt = NULL"
		" WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " $2"
		"   AND m.receipt " OP("=") " $3"
		" RETURNING m.vt",
		4, {INT4OID, INT8OID, INT8OID, TIMESTAMPTZOID}
	},
	[PLAN_EXTEND] = {
		"UPDATE broker.messages m SET vt = $4"
		" WHERE m.queue_id " OP("=") " $1 AND m.id " OP("=") " $2"
		"   AND m.receipt " OP("=") " $3"
		" RETURNING m.vt",
		4, {INT4OID, INT8OID, INT8OID, TIMESTAMPTZOID}
	},
	/* $2 (now) is unused; it keeps the shape of PLAN_METRICS */
	[PLAN_QUEUE_LIST] = {
		"SELECT q.queue_id, q.name FROM broker.queue_defs q"
		" WHERE q.kind " OP("=") " 'q' AND ($1 IS NULL OR q.queue_id " OP("=") " $1)"
		"   AND $2 IS NOT NULL"
		" ORDER BY q.name",
		2, {INT4OID, TIMESTAMPTZOID}
	},
	[PLAN_METRICS] = {
		"SELECT q.queue_id, q.name,"
		"  pg_catalog.count(m.id) FILTER (WHERE m.vt " OP("<=") " $2"
		"     AND m.delivery_count " OP("<") " COALESCE(q.max_deliveries, 2147483647)),"
		"  pg_catalog.count(m.id) FILTER (WHERE m.vt " OP(">") " $2"
		"     AND m.receipt IS NOT NULL),"
		"  pg_catalog.count(m.id) FILTER (WHERE m.vt " OP(">") " $2"
		"     AND m.receipt IS NULL),"
		"  pg_catalog.count(m.id),"
		"  $2 " OP("-") " pg_catalog.min(m.enqueued_at) FILTER (WHERE m.vt " OP("<=") " $2"
		"     AND m.delivery_count " OP("<") " COALESCE(q.max_deliveries, 2147483647))"
		"  FROM broker.queue_defs q"
		"  LEFT JOIN broker.messages m"
		"    ON m.queue_id " OP("=") " q.queue_id"
		"   AND (m.expires_at IS NULL OR m.expires_at " OP(">") " $2)"
		" WHERE q.kind " OP("=") " 'q' AND ($1 IS NULL OR q.queue_id " OP("=") " $1)"
		" GROUP BY q.queue_id, q.name"
		" ORDER BY q.name",
		2, {INT4OID, TIMESTAMPTZOID}
	},
};

/* [plan][0]: as written; [plan][1 + s]: on segment table s. */
static SPIPlanPtr plans[BROKER_NUM_PLANS][BROKER_SEGMENTS + 1];

/* Backend-local caches and their validity. */
static BrokerRels rels;
static bool rels_valid = false;
static HTAB *queue_cache = NULL;
static uint64 cache_generation = 0;
static bool callback_registered = false;

typedef struct QueueCacheEntry
{
	char		name[BROKER_QUEUE_NAME_MAX + 1];	/* key */
	BrokerQueue q;
} QueueCacheEntry;

/* Forget the resolved relations and the queue cache. */
static void
invalidate_all(void)
{
	rels_valid = false;
	cache_generation++;
	if (queue_cache != NULL)
	{
		hash_destroy(queue_cache);
		queue_cache = NULL;
	}
}

/* Relcache callback: drop our caches when the extension's tables change. */
static void
broker_relcache_callback(Datum arg, Oid relid)
{
	bool		ours = relid == InvalidOid || !rels_valid ||
		relid == rels.queue_defs || relid == rels.messages ||
		relid == rels.message_id_seq || relid == rels.queue_id_seq ||
		relid == rels.segments;

	(void) arg;
	for (int i = 0; i < BROKER_SEGMENTS && !ours; i++)
		ours = relid == rels.segment[i];
	if (ours)
		invalidate_all();
}

/* Syscache callback of pg_namespace: a schema was renamed or dropped. */
static void
broker_namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	(void) arg;
	(void) cacheid;
	(void) hashvalue;
	invalidate_all();
}

/* Flush the queue cache now (after this backend changed a definition). */
void
BrokerInvalidateQueues(void)
{
	broker_relcache_callback((Datum) 0, InvalidOid);
}

/* The extension's objects are not what it created: refuse to use them. */
static void
tampered(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the broker extension's %s is not what the extension created", what),
			 errdetail("broker only uses objects that are members of the extension, in the schema it was installed in."),
			 errhint("Drop the extension and create it again.")));
}

/*
 * A relation of the extension: in its schema, and a member of it (so no
 * other role can have created it).
 */
static Oid
member_relid(Oid nsp, Oid extoid, const char *relname)
{
	Oid			relid = get_relname_relid(relname, nsp);

	if (!OidIsValid(relid) ||
		getExtensionOfObject(RelationRelationId, relid) != extoid)
	{
		char	   *what = psprintf("relation broker.%s", relname);

		tampered(what);
	}
	return relid;
}

/* The schema recorded for the extension in pg_extension. */
static Oid
extension_schema(Oid extoid)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/* The owner of a relation. */
static Oid
broker_rel_owner(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/* The owner of a schema. */
static Oid
namespace_owner(Oid nsp)
{
	HeapTuple	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for schema %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Resolve the extension's relations in this database.  The statements the
 * extension runs name "broker.<relation>", so the schema that name finds
 * must be the one the extension was installed in, owned by a superuser
 * (so no other role can rename it or create objects in it), and every
 * relation must be a member of the extension.  Returns NULL when the
 * extension is not installed and missing_ok.
 */
const BrokerRels *
BrokerFindRels(bool missing_ok)
{
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(broker_relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, broker_namespace_callback,
									  (Datum) 0);
		callback_registered = true;
	}
	if (!rels_valid)
	{
		Oid			extoid = get_extension_oid("broker", true);
		Oid			nsp;

		if (!OidIsValid(extoid))
		{
			if (missing_ok)
				return NULL;
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"broker\" is not installed in this database"),
					 errhint("Run CREATE EXTENSION broker in this database.")));
		}
		nsp = extension_schema(extoid);
		if (!OidIsValid(nsp) || get_namespace_oid("broker", true) != nsp ||
			!superuser_arg(namespace_owner(nsp)))
			tampered("schema \"broker\"");
		rels.extension = extoid;
		rels.queue_defs = member_relid(nsp, extoid, "queue_defs");
		rels.messages = member_relid(nsp, extoid, "messages");
		for (int i = 0; i < BROKER_SEGMENTS; i++)
		{
			char		name[NAMEDATALEN];

			snprintf(name, sizeof(name), "messages_%d", i);
			rels.segment[i] = member_relid(nsp, extoid, name);
		}
		rels.segments = member_relid(nsp, extoid, "segments");
		rels.message_id_seq = member_relid(nsp, extoid, "message_id_seq");
		rels.queue_id_seq = member_relid(nsp, extoid, "queue_id_seq");
		rels.owner = broker_rel_owner(rels.segment[0]);
		rels_valid = true;
	}
	return &rels;
}

/* The object ids of the extension's relations in this database. */
const BrokerRels *
BrokerGetRels(void)
{
	return BrokerFindRels(false);
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

/* Connect to SPI, failing loudly. */
void
BrokerSPIConnect(void)
{
	int			rc = SPI_connect();

	if (rc != SPI_OK_CONNECT)
		elog(ERROR, "broker: SPI_connect failed: %s", SPI_result_code_string(rc));
}

/* Disconnect from SPI, failing loudly. */
void
BrokerSPIFinish(void)
{
	int			rc = SPI_finish();

	if (rc != SPI_OK_FINISH)
		elog(ERROR, "broker: SPI_finish failed: %s", SPI_result_code_string(rc));
}

/* Prepare and keep one statement. */
static SPIPlanPtr
prepare_kept(const char *sql, const BrokerPlanDef *def, int id)
{
	SPIPlanPtr	plan;

	/*
	 * The generic plan, but for the few statements that need their
	 * parameters as constants: every statement is driven by the primary
	 * key, and a custom plan per call would re-plan on every call.
	 */
	plan = SPI_prepare_cursor(sql, def->nargs, (Oid *) def->argtypes,
							  def->custom ? CURSOR_OPT_CUSTOM_PLAN :
							  CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		elog(ERROR, "broker: SPI_prepare failed for plan %d: %s",
			 id, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "broker: SPI_keepplan failed for plan %d", id);
	return plan;
}

/* The kept generic plan of a statement, prepared on first use. */
SPIPlanPtr
BrokerPlan(BrokerPlanId id)
{
	/* Every statement names the extension's relations: check them first. */
	(void) BrokerGetRels();
	if (plans[id][0] == NULL)
		plans[id][0] = prepare_kept(plan_defs[id].sql, &plan_defs[id], (int) id);
	return plans[id][0];
}

/*
 * The kept plan of a statement on one segment table: every
 * "broker.messages " of its text becomes "broker.messages_<seg> ".
 */
SPIPlanPtr
BrokerPlanSeg(BrokerPlanId id, int seg)
{
	Assert(seg >= 0 && seg < BROKER_SEGMENTS);
	(void) BrokerGetRels();
	if (plans[id][seg + 1] == NULL)
	{
		const char *src = plan_defs[id].sql;
		StringInfoData buf;
		const char *hit;

		initStringInfo(&buf);
		while ((hit = strstr(src, "broker.messages ")) != NULL)
		{
			appendBinaryStringInfo(&buf, src, hit - src);
			appendStringInfo(&buf, "broker.messages_%d ", seg);
			src = hit + strlen("broker.messages ");
		}
		appendStringInfoString(&buf, src);
		plans[id][seg + 1] = prepare_kept(buf.data, &plan_defs[id], (int) id);
		pfree(buf.data);
	}
	return plans[id][seg + 1];
}

/*
 * Execute a kept plan that must use the primary key (every per-segment
 * statement).  A generic plan is made, or made again after an
 * invalidation, with the statistics of that moment: planned while a
 * segment is empty or just truncated, "seq scan and sort" looks cheapest
 * and would then be kept while the segment fills up, making every call
 * read the whole segment.  Planning with sequential and bitmap scans
 * disabled keeps every plan on the index, whatever the statistics; the
 * settings are restored at once, also on error.
 */
int
BrokerExecute(SPIPlanPtr plan, Datum *values, const char *nulls, long count)
{
	bool		save_seqscan = enable_seqscan;
	bool		save_bitmapscan = enable_bitmapscan;
	volatile int rc = 0;

	enable_seqscan = false;
	enable_bitmapscan = false;
	PG_TRY();
	{
		rc = SPI_execute_plan(plan, values, nulls, false, count);
	}
	PG_FINALLY();
	{
		enable_seqscan = save_seqscan;
		enable_bitmapscan = save_bitmapscan;
	}
	PG_END_TRY();
	return rc;
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

/* Fail with 22004 when a required argument is NULL. */
void
BrokerRequireArg(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", argname)));
}

/* Copy one result row of PLAN_QUEUE_BY_NAME/_BY_ID into a BrokerQueue. */
static void
queue_from_tuple(HeapTuple tup, TupleDesc desc, BrokerQueue *q)
{
	bool		isnull;
	Datum		d;

	memset(q, 0, sizeof(*q));
	q->queue_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	d = SPI_getbinval(tup, desc, 2, &isnull);
	text_to_cstring_buffer(DatumGetTextPP(d), q->name, sizeof(q->name));
	q->lease = *DatumGetIntervalP(SPI_getbinval(tup, desc, 3, &isnull));
	q->max_message_size = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	d = SPI_getbinval(tup, desc, 5, &isnull);
	q->has_default_ttl = !isnull;
	if (!isnull)
		q->default_ttl = *DatumGetIntervalP(d);
	d = SPI_getbinval(tup, desc, 6, &isnull);
	q->max_deliveries = isnull ? 0 : DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 7, &isnull);
	q->dead_letter_id = isnull ? 0 : DatumGetInt32(d);
}

/* Raise the standard "queue does not exist" error. */
static void
queue_missing(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("queue \"%s\" does not exist", name),
			 errhint("Create it with broker.create_queue('%s').", name)));
}

/*
 * Look a queue up by name (caller is connected to SPI).  Returns false
 * when it does not exist and missing_ok, else raises 42704.
 */
bool
BrokerLookupQueue(text *name, bool missing_ok, BrokerQueue *out)
{
	char		key[BROKER_QUEUE_NAME_MAX + 1];
	QueueCacheEntry *entry;
	bool		found;
	Datum		values[1];
	int			rc;

	BrokerCheckQueueName(name);
	text_to_cstring_buffer(name, key, sizeof(key));

	AcceptInvalidationMessages();
	(void) BrokerGetRels();

	if (queue_cache == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(key);
		ctl.entrysize = sizeof(QueueCacheEntry);
		ctl.hcxt = CacheMemoryContext;
		queue_cache = hash_create("broker queue cache", 64, &ctl,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}

	entry = hash_search(queue_cache, key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		*out = entry->q;
		return true;
	}

	values[0] = PointerGetDatum(name);
	rc = SPI_execute_plan(BrokerPlan(PLAN_QUEUE_BY_NAME), values, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "broker: queue lookup failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
	{
		if (missing_ok)
			return false;
		queue_missing(key);
	}
	queue_from_tuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, out);

	/* A relcache flush during the query may have destroyed the table. */
	if (queue_cache != NULL)
	{
		entry = hash_search(queue_cache, key, HASH_ENTER, &found);
		entry->q = *out;
	}
	return true;
}

/* Look a queue up by id, uncached (dead-letter targets, rare). */
bool
BrokerLookupQueueById(int32 queue_id, BrokerQueue *out)
{
	Datum		values[1];
	int			rc;

	values[0] = Int32GetDatum(queue_id);
	rc = SPI_execute_plan(BrokerPlan(PLAN_QUEUE_BY_ID), values, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "broker: queue lookup failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return false;
	queue_from_tuple(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, out);
	return true;
}

/*
 * Look a queue up and take its lock in the given mode.  If the definition
 * changed while we waited for the lock (dropped, or dropped and created
 * again), look again: the caller always gets the queue as it is now.
 */
void
BrokerLockQueue(text *name, LOCKMODE mode, BrokerQueue *out)
{
	for (;;)
	{
		uint64		gen;
		BrokerQueue again;
		int32		locked_id;

		CHECK_FOR_INTERRUPTS();
		BrokerLookupQueue(name, false, out);
		gen = cache_generation;
		locked_id = out->queue_id;
		LockDatabaseObject(BrokerGetRels()->queue_defs, locked_id, 0, mode);
		/* LockDatabaseObject has processed invalidations. */
		if (gen == cache_generation)
			return;
		if (BrokerLookupQueue(name, true, &again) &&
			again.queue_id == locked_id)
		{
			*out = again;
			return;
		}
		UnlockDatabaseObject(BrokerGetRels()->queue_defs, locked_id, 0, mode);
		if (!BrokerLookupQueue(name, true, &again))
		{
			char		key[BROKER_QUEUE_NAME_MAX + 1];

			text_to_cstring_buffer(name, key, sizeof(key));
			queue_missing(key);
		}
	}
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

/* interval < 0. */
bool
BrokerIntervalIsNegative(const Interval *iv)
{
	Interval	zero = {0, 0, 0};

	return DatumGetBool(DirectFunctionCall2(interval_lt,
											IntervalPGetDatum((Interval *) iv),
											IntervalPGetDatum(&zero)));
}

/* ts + iv, as timestamptz + interval does. */
TimestampTz
BrokerTimestampPlus(TimestampTz ts, const Interval *iv)
{
	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												   TimestampTzGetDatum(ts),
												   IntervalPGetDatum((Interval *) iv)));
}
