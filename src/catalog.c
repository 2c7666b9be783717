/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  The extension's relations in this database.
 *
 * The statements the extension runs name "broker.<relation>".  They are
 * only run once the schema that name finds is known to be the extension's
 * own: the one recorded in its pg_extension row, owned by a superuser (so
 * no other role can rename it or create objects in it), with every
 * relation a member of the extension (pg_depend).  The result is cached per
 * backend and checked again after any relcache invalidation of one of the
 * relations (CREATE/DROP EXTENSION, create_queue and drop_queue) or any
 * change to pg_namespace.  Each invalidation bumps a generation that the
 * caches built on these relations (queuedef.c) compare with theirs.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "util.h"

#define MAX_RELS	32

static BrokerRels rels;
static bool rels_valid = false;
static Oid	extension_nsp;
static int	nresolved = 0;		/* relations resolved by name, below */
static char resolved_name[MAX_RELS][NAMEDATALEN];
static Oid	resolved_relid[MAX_RELS];
static uint64 generation = 0;
static bool callbacks_registered = false;

/* Forget the resolved relations; the caches built on them follow. */
static void
invalidate_all(void)
{
	rels_valid = false;
	nresolved = 0;
	generation++;
}

/* Relcache callback: one of our relations (or all) changed. */
static void
relcache_callback(Datum arg, Oid relid)
{
	bool		ours = relid == InvalidOid || !rels_valid;

	(void) arg;
	for (int i = 0; i < nresolved && !ours; i++)
		ours = relid == resolved_relid[i];
	if (ours)
		invalidate_all();
}

/* Syscache callback of pg_namespace: a schema was renamed or dropped. */
static void
namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	(void) arg;
	(void) cacheid;
	(void) hashvalue;
	invalidate_all();
}

/*
 * The generation of the resolved relations: it changes whenever they may
 * have changed (a cache built on them is stale when it does).
 */
uint64
BrokerRelsGeneration(void)
{
	return generation;
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

/* The schema and the version recorded for the extension in pg_extension. */
static Oid
extension_schema(Oid extoid, char **version)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	*version = NULL;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
		if (!isnull)
			*version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/* The owner of a relation. */
static Oid
relation_owner(Oid relid)
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
 * Resolve the extension's relations in this database (see the file
 * header).  Returns NULL when the extension is not installed, or is
 * installed at another version than the library's (waiting for ALTER
 * EXTENSION ... UPDATE), and missing_ok.
 */
const BrokerRels *
BrokerFindRels(bool missing_ok)
{
	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, namespace_callback, (Datum) 0);
		callbacks_registered = true;
	}
	if (!rels_valid)
	{
		Oid			extoid = get_extension_oid("broker", true);
		Oid			nsp;
		char	   *version;

		if (!OidIsValid(extoid))
		{
			if (missing_ok)
				return NULL;
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"broker\" is not installed in this database"),
					 errhint("Run CREATE EXTENSION broker in this database.")));
		}
		nsp = extension_schema(extoid, &version);
		if (!OidIsValid(nsp) || get_namespace_oid("broker", true) != nsp ||
			!superuser_arg(namespace_owner(nsp)))
			tampered("schema \"broker\"");
		if (version == NULL || strcmp(version, BROKER_LIBRARY_VERSION) != 0)
		{
			/* hooks and workers: an installation to update is not ours yet */
			if (missing_ok)
				return NULL;
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"broker\" is at version %s, the library loaded is %s",
							version ? version : "?", BROKER_LIBRARY_VERSION),
					 errhint("Run ALTER EXTENSION broker UPDATE in this database.")));
		}
		rels.extension = extoid;
		extension_nsp = nsp;
		nresolved = 0;
		rels_valid = true;
		rels.queue_defs = BrokerRelid("queue_defs");
		rels.message_id_seq = BrokerRelid("message_id_seq");
		rels.queue_id_seq = BrokerRelid("queue_id_seq");
		rels.owner = relation_owner(rels.queue_defs);
	}
	return &rels;
}

/*
 * A relation of the extension by name (a member of it, in its schema),
 * resolved once per invalidation.
 */
Oid
BrokerRelid(const char *relname)
{
	Oid			relid;

	(void) BrokerGetRels();
	for (int i = 0; i < nresolved; i++)
	{
		if (strcmp(resolved_name[i], relname) == 0)
			return resolved_relid[i];
	}
	relid = member_relid(extension_nsp, rels.extension, relname);
	if (nresolved < MAX_RELS)
	{
		strlcpy(resolved_name[nresolved], relname, NAMEDATALEN);
		resolved_relid[nresolved] = relid;
		nresolved++;
	}
	return relid;
}

/* The extension's relations; 55000 when it is not installed. */
const BrokerRels *
BrokerGetRels(void)
{
	return BrokerFindRels(false);
}
