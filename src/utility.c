/*-------------------------------------------------------------------------
 *
 * utility.c
 *	  The hooks into PostgreSQL's commands: the ProcessUtility hook (a
 *	  database's reaper steps aside before a command that needs the
 *	  database to itself; a COPY into a message table is announced to the
 *	  store) and the object access hook (the shared state of a dropped
 *	  installation or database is forgotten when the drop commits).
 *
 * Forgetting: when the broker extension (DROP EXTENSION, DROP SCHEMA ...
 * CASCADE, DROP OWNED) or a whole database is dropped, OAT_DROP reports it
 * to this backend; its queue states, segment state and consumer history
 * are removed at the commit of that transaction, so their slots are free
 * for others.  An aborted drop forgets nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/copy.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/memutils.h"

#include "catalog.h"
#include "qstate.h"
#include "stats.h"
#include "store.h"
#include "utility.h"
#include "util.h"
#include "worker.h"

/* Installations dropped by this transaction: forgotten when it commits. */
typedef struct DroppedInstallation
{
	Oid			dbid;
	Oid			installation;	/* InvalidOid: every one of the database */
} DroppedInstallation;

static DroppedInstallation *dropped = NULL;	/* in TopTransactionContext */
static int	ndropped = 0;
static int	maxdropped = 0;

static ProcessUtility_hook_type prev_utility_hook = NULL;
static object_access_hook_type prev_object_access_hook = NULL;

static void utility_hook(PlannedStmt *pstmt, const char *queryString,
						 bool readOnlyTree, ProcessUtilityContext context,
						 ParamListInfo params, QueryEnvironment *queryEnv,
						 DestReceiver *dest, QueryCompletion *qc);
static void object_access(ObjectAccessType access, Oid classId, Oid objectId,
						  int subId, void *arg);

/* Install the hooks (from _PG_init, when preloaded). */
void
BrokerUtilityInit(void)
{
	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = utility_hook;
	prev_object_access_hook = object_access_hook;
	object_access_hook = object_access;
}

/*
 * The database that a utility statement needs with no other session
 * connected, or NULL.
 */
static const char *
exclusive_database_of(Node *stmt)
{
	ListCell   *lc;

	switch (nodeTag(stmt))
	{
		case T_DropdbStmt:
			return ((DropdbStmt *) stmt)->dbname;
		case T_RenameStmt:
			if (((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
				return ((RenameStmt *) stmt)->subname;
			return NULL;
		case T_AlterDatabaseStmt:
			foreach(lc, ((AlterDatabaseStmt *) stmt)->options)
			{
				DefElem    *def = lfirst_node(DefElem, lc);

				if (strcmp(def->defname, "tablespace") == 0)
					return ((AlterDatabaseStmt *) stmt)->dbname;
			}
			return NULL;
		case T_CreatedbStmt:
			foreach(lc, ((CreatedbStmt *) stmt)->options)
			{
				DefElem    *def = lfirst_node(DefElem, lc);

				if (strcmp(def->defname, "template") == 0 && def->arg != NULL)
					return defGetString(def);
			}
			return NULL;
		default:
			return NULL;
	}
}

/*
 * A COPY into one of the segment tables (pg_restore, psql's restore of a
 * plain dump) inserts messages with old ids behind the low-water mark's
 * back: announce it as a mover (segment.c) for its transaction.
 */
static void
note_copy_into_segment(CopyStmt *stmt)
{
	Oid			relid;

	if (!stmt->is_from || stmt->relation == NULL || !IsTransactionState() ||
		!BrokerSharedMemoryReady() || BrokerFindRels(true) == NULL)
		return;
	relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	if (OidIsValid(relid) && BrokerStoreIsPartition(relid))
		BrokerStoreBulkLoad();
}

/* ProcessUtility hook: stop a database's reaper before a command needing it. */
static void
utility_hook(PlannedStmt *pstmt, const char *queryString,
					   bool readOnlyTree, ProcessUtilityContext context,
					   ParamListInfo params, QueryEnvironment *queryEnv,
					   DestReceiver *dest, QueryCompletion *qc)
{
	const char *dbname = exclusive_database_of(pstmt->utilityStmt);

	if (IsA(pstmt->utilityStmt, CopyStmt))
		note_copy_into_segment((CopyStmt *) pstmt->utilityStmt);

	if (dbname != NULL && BrokerWorkersReady())
	{
		Oid			dboid = get_database_oid(dbname, true);

		/* Only for whoever may run the command: others get its own error. */
		if (OidIsValid(dboid) && pg_database_ownercheck(dboid, GetUserId()))
			BrokerStopReaperFor(dboid);
	}

	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context,
								 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}


/* Remember an installation (or a database) this transaction drops. */
static void
note_dropped(Oid dbid, Oid installation)
{
	BrokerXactTrack();
	if (ndropped == maxdropped)
	{
		int			newmax = maxdropped == 0 ? 4 : maxdropped * 2;

		if (dropped == NULL)
			dropped = MemoryContextAlloc(TopTransactionContext,
										 newmax * sizeof(DroppedInstallation));
		else
			dropped = repalloc(dropped, newmax * sizeof(DroppedInstallation));
		maxdropped = newmax;
	}
	dropped[ndropped].dbid = dbid;
	dropped[ndropped].installation = installation;
	ndropped++;
}

/* object_access_hook: note drops of the extension and of databases. */
static void
object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId,
			  void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access != OAT_DROP || !BrokerSharedMemoryReady())
		return;
	if (classId == DatabaseRelationId)
		note_dropped(objectId, InvalidOid);
	else if (classId == ExtensionRelationId &&
			 objectId == get_extension_oid("broker", true))
		note_dropped(MyDatabaseId, objectId);
}

/* A drop's effect on shared memory cannot wait in a prepared transaction. */
static void
utility_pre_prepare(void)
{
	if (ndropped > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that has dropped the broker extension"),
				 errdetail("Its shared state is forgotten when the transaction commits.")));
}

/* At commit, forget what the transaction dropped. */
static void
utility_xact_end(BrokerXactEnd how)
{
	if (how == BROKER_XACT_COMMITTED)
	{
		for (int i = 0; i < ndropped; i++)
		{
			BrokerQueueStatesForget(dropped[i].dbid, dropped[i].installation);
			BrokerStoreForget(dropped[i].dbid, dropped[i].installation);
			BrokerConsumerForget(dropped[i].dbid, dropped[i].installation);
		}
	}
	dropped = NULL;				/* freed with TopTransactionContext */
	ndropped = maxdropped = 0;
}

const BrokerXactHandler BrokerUtilityXact = {
	.pre_prepare = utility_pre_prepare,
	.end = utility_xact_end,
};
