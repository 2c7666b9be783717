/*-------------------------------------------------------------------------
 *
 * acl.c
 *	  Who may do what with a queue: broker.grant, broker.revoke, and the
 *	  check every function makes before it touches a queue.
 *
 * Privileges are granted per queue (or on '*', every queue present and
 * future, stored as queue id 0) to a role by name (or to PUBLIC, stored as
 * 'public': no role can have that name), so that a dump restored into
 * another cluster grants to the roles of the same names there:
 *   produce  enqueue and enqueue_batch into it, publish reaching it
 *   consume  dequeue, delete, complete, fail, release, extend_lease,
 *            status, archive
 *   admin    purge, drop, subscriptions, grants on it, reap, and both
 *            others
 * A grant to a role holds for the roles that have its privileges
 * (has_privs_of_role, as PostgreSQL checks membership).  Superusers and
 * the roles that have the privileges of the extension's owner may do
 * everything; nobody else may do anything not granted.  The functions run
 * as their caller (SECURITY INVOKER) and check it here, then run their
 * statements as the owner (sql.c).
 *
 * Checked on every call from a backend-local cache of (role, queue) ->
 * privileges, emptied when grants change anywhere (grant and revoke send a
 * relcache invalidation of broker.grant_defs, which catalog.c turns into a
 * new generation), when role memberships or roles change (syscache
 * callbacks on pg_auth_members and pg_authid), so a revoke takes effect in
 * every session at its next call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "acl.h"
#include "catalog.h"
#include "queuedef.h"
#include "sql.h"
#include "util.h"

PG_FUNCTION_INFO_V1(broker_grant);
PG_FUNCTION_INFO_V1(broker_revoke);

#define OP(x) "OPERATOR(pg_catalog." x ")"

static const char *const priv_names[] = {"produce", "consume", "admin"};

static BrokerStmt grants_of_queue = {
	"SELECT g.grantee, g.privilege FROM broker.grant_defs g"
	" WHERE g.queue_id " OP("=") " ANY (ARRAY[0, $1])",
	1, {INT4OID}, 0, {NULL}
};

static BrokerStmt insert_grant = {
	"INSERT INTO broker.grant_defs AS g (queue_id, grantee, privilege)"
	" VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
	3, {INT4OID, NAMEOID, TEXTOID}, 0, {NULL}
};

static BrokerStmt delete_grant = {
	"DELETE FROM broker.grant_defs g WHERE g.queue_id " OP("=") " $1"
	"   AND g.grantee " OP("=") " $2 AND g.privilege " OP("=") " $3",
	3, {INT4OID, NAMEOID, TEXTOID}, 0, {NULL}
};

static BrokerStmt delete_queue_grants = {
	"DELETE FROM broker.grant_defs g WHERE g.queue_id " OP("=") " $1",
	1, {INT4OID}, 0, {NULL}
};

/* The cache: (role, queue) -> privilege bits. */
typedef struct AclKey
{
	Oid			role;
	int32		queue_id;
} AclKey;

typedef struct AclEntry
{
	AclKey		key;
	uint32		privs;
} AclEntry;

static HTAB *acl_cache = NULL;
static uint64 acl_generation = 0;
static bool acl_stale = false;
static bool callbacks_registered = false;

/*
 * Roles or memberships changed: the cache is emptied the next time it is
 * used.  Only marked here: invalidations are processed wherever a lock is
 * taken or a catalog read, also between cache() returning the table and
 * the caller using it, so freeing it here left callers holding a freed
 * (or NULL) table (a crash on a hot standby, where replayed role changes
 * arrive at any moment).
 */
static void
roles_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	(void) arg;
	(void) cacheid;
	(void) hashvalue;
	acl_stale = true;
}

static HTAB *
cache(void)
{
	if (!callbacks_registered)
	{
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, roles_changed, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, roles_changed, (Datum) 0);
		callbacks_registered = true;
	}
	if (acl_cache != NULL && (acl_stale || acl_generation != BrokerRelsGeneration()))
	{
		hash_destroy(acl_cache);
		acl_cache = NULL;
	}
	if (acl_cache == NULL)
	{
		HASHCTL		ctl;

		/*
		 * Resolved so that its invalidation moves the generation
		 * (catalog.c); first, as resolving may process invalidations.
		 */
		(void) BrokerRelid("grant_defs");
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(AclKey);
		ctl.entrysize = sizeof(AclEntry);
		ctl.hcxt = CacheMemoryContext;
		acl_cache = hash_create("broker privileges", 64, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		acl_generation = BrokerRelsGeneration();
		acl_stale = false;
	}
	return acl_cache;
}

/* Privilege bit of a name, 22023 for anything else. */
static BrokerPrivilege
privilege_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *name;

	BrokerRequireArg(fcinfo, argno, "privilege");
	name = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	for (int p = 0; p < BROKER_NUM_PRIVILEGES; p++)
		if (strcmp(name, priv_names[p]) == 0)
			return (BrokerPrivilege) p;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown queue privilege \"%s\"",
					BrokerClipForMessage(name, strlen(name))),
			 errhint("A queue privilege is produce, consume or admin.")));
	return BROKER_PRIV_PRODUCE;	/* keep the compiler quiet */
}

/* Does the role have everything (superuser, or the owner's privileges)? */
static bool
all_powerful(Oid role)
{
	return superuser_arg(role) || has_privs_of_role(role, BrokerGetRels()->owner);
}

/* The privileges a role has on a queue (0: every queue), cached. */
static uint32
privileges(Oid role, int32 queue_id)
{
	AclKey		key;
	AclEntry   *e;
	bool		found;
	uint32		privs = 0;
	int			rc;
	Datum		values[1];

	memset(&key, 0, sizeof(key));
	key.role = role;
	key.queue_id = queue_id;
	e = hash_search(cache(), &key, HASH_FIND, NULL);
	if (e != NULL)
		return e->privs;

	if (all_powerful(role))
		privs = (1u << BROKER_NUM_PRIVILEGES) - 1;
	else
	{
		values[0] = Int32GetDatum(queue_id);
		/* the latest grants, as catalogs are read, under REPEATABLE READ too */
		rc = BrokerStmtExecuteLatest(&grants_of_queue, -1, values, NULL, 0);
		BrokerStmtCheck(rc, SPI_OK_SELECT, "reading queue privileges");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			char	   *gname = NameStr(*DatumGetName(SPI_getbinval(SPI_tuptable->vals[i],
																	SPI_tuptable->tupdesc,
																	1, &isnull)));
			bool		is_public = strcmp(gname, "public") == 0;
			Oid			grantee = is_public ? InvalidOid : get_role_oid(gname, true);
			char	   *priv = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc,
																 2, &isnull));

			/* a role of that name (a dropped one counts for nobody) */
			if (!is_public &&
				(!OidIsValid(grantee) || !has_privs_of_role(role, grantee)))
				continue;
			for (int p = 0; p < BROKER_NUM_PRIVILEGES; p++)
				if (strcmp(priv, priv_names[p]) == 0)
					privs |= 1u << p;
		}
		/* admin includes the others */
		if (privs & (1u << BROKER_PRIV_ADMIN))
			privs = (1u << BROKER_NUM_PRIVILEGES) - 1;
	}
	/* the query may have made the cache stale (an invalidation): cache() renews it */
	e = hash_search(cache(), &key, HASH_ENTER, &found);
	e->privs = privs;
	return privs;
}

/*
 * The caller must have the privilege on the queue (caller connected to
 * SPI, the queue looked up): 42501 naming both otherwise.
 */
void
BrokerCheckQueue(const BrokerQueue *q, BrokerPrivilege priv)
{
	Oid			role = BrokerInvoker();

	if ((privileges(role, q->queue_id) & (1u << priv)) != 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for queue \"%s\"", q->name),
			 errdetail("Role \"%s\" needs the %s privilege on it.",
					   GetUserNameFromId(role, false), priv_names[priv]),
			 errhint("A queue's admin grants it with broker.grant('%s', role, '%s').",
					 q->name, priv_names[priv])));
}

/*
 * May the caller see a queue's figures (broker.metrics)?  With any
 * privilege on it, or as a member of pg_read_all_stats.
 */
bool
BrokerMaySeeQueue(int32 queue_id)
{
	Oid			role = BrokerInvoker();

	return privileges(role, queue_id) != 0 ||
		has_privs_of_role(role, ROLE_PG_READ_ALL_STATS);
}

/* May the caller do everything (owner, superuser)? */
bool
BrokerCallerIsOwner(void)
{
	return all_powerful(BrokerInvoker());
}

/* The caller must be the owner or a superuser (42501). */
void
BrokerRequireOwner(const char *action)
{
	if (BrokerCallerIsOwner())
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to %s", action),
			 errdetail("Only the owner of the broker extension and superusers may."),
			 errhint("The extension's owner is \"%s\".",
					 GetUserNameFromId(BrokerGetRels()->owner, false))));
}

/* A new queue: its creator, if not all-powerful, is its admin. */
void
BrokerGrantCreator(int32 queue_id)
{
	Oid			role = BrokerInvoker();
	Datum		values[3];
	int			rc;

	if (all_powerful(role))
		return;
	values[0] = Int32GetDatum(queue_id);
	values[1] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(role, false)));
	values[2] = CStringGetTextDatum("admin");
	rc = BrokerStmtExecute(&insert_grant, -1, values, NULL, 0);
	BrokerStmtCheck(rc, SPI_OK_INSERT, "granting the creator admin");
	CacheInvalidateRelcacheByRelid(BrokerRelid("grant_defs"));
}

/* A queue is dropped: its grants go. */
void
BrokerForgetGrants(int32 queue_id)
{
	Datum		values[1];
	int			rc;

	values[0] = Int32GetDatum(queue_id);
	rc = BrokerStmtExecuteLatest(&delete_queue_grants, -1, values, NULL, 0);
	BrokerStmtCheck(rc, SPI_OK_DELETE, "removing the queue's grants");
	if (SPI_processed > 0)
		CacheInvalidateRelcacheByRelid(BrokerRelid("grant_defs"));
}

/* grant or revoke: (queue or '*', role or 'public', privilege). */
static bool
change_grant(FunctionCallInfo fcinfo, bool grant)
{
	text	   *qname;
	char	   *rolename;
	BrokerPrivilege priv = privilege_arg(fcinfo, 2);
	int32		queue_id = 0;
	Datum		values[3];
	int			rc;
	bool		changed;

	BrokerRequireArg(fcinfo, 0, "queue");
	BrokerRequireArg(fcinfo, 1, "role");
	BrokerRequireWritable(grant ? "grant a queue privilege" : "revoke a queue privilege");
	qname = PG_GETARG_TEXT_PP(0);
	rolename = NameStr(*PG_GETARG_NAME(1));
	/* granted to an existing role (42704 otherwise), or to public */
	if (strcmp(rolename, "public") != 0 && grant)
		(void) get_role_oid(rolename, false);

	BrokerSPIConnect();
	if (VARSIZE_ANY_EXHDR(qname) == 1 && *VARDATA_ANY(qname) == '*')
	{
		/* every queue: an admin of every queue, or the owner */
		if ((privileges(BrokerInvoker(), 0) & (1u << BROKER_PRIV_ADMIN)) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to %s privileges on every queue",
							grant ? "grant" : "revoke"),
					 errdetail("That needs the admin privilege on '*', or to be the extension's owner.")));
	}
	else
	{
		BrokerQueue q;

		BrokerCheckQueueName(qname);
		BrokerLockQueue(qname, AccessShareLock, &q);
		BrokerCheckQueue(&q, BROKER_PRIV_ADMIN);
		queue_id = q.queue_id;
	}
	values[0] = Int32GetDatum(queue_id);
	values[1] = NameGetDatum(PG_GETARG_NAME(1));
	values[2] = CStringGetTextDatum(priv_names[priv]);
	rc = BrokerStmtExecute(grant ? &insert_grant : &delete_grant, -1, values, NULL, 0);
	BrokerStmtCheck(rc, grant ? SPI_OK_INSERT : SPI_OK_DELETE, "changing a grant");
	changed = SPI_processed > 0;
	if (changed)
		CacheInvalidateRelcacheByRelid(BrokerRelid("grant_defs"));
	BrokerSPIFinish();
	return changed;
}

/* broker.grant(queue, role, privilege): true when added. */
Datum
broker_grant(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(change_grant(fcinfo, true));
}

/* broker.revoke(queue, role, privilege): true when there was one. */
Datum
broker_revoke(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(change_grant(fcinfo, false));
}
