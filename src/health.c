/*-------------------------------------------------------------------------
 *
 * health.c
 *	  broker.health(): the background workers, the library's version and
 *	  the extension's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "util.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(broker_health);

/* extversion of the broker extension in this database, or NULL. */
static char *
installed_extension_version(void)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("broker"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/* broker.health(): one row per running reaper, or one row of NULLs. */
Datum
broker_health(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *extversion = installed_extension_version();
	BrokerReaperSlot *copy = NULL;
	int			ncopy = 0;
	int			nrows = 0;
	Datum		values[9];
	bool		nulls[9];

	bool		see_all = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);

	InitMaterializedSRF(fcinfo, 0);

	/* Copy the slots first: no catalog access under the LWLock. */
	if (BrokerWorkersReady())
		ncopy = BrokerSlotsCopy(&copy);

	for (int i = 0; i <= ncopy; i++)
	{
		memset(nulls, true, sizeof(nulls));
		values[6] = CStringGetTextDatum(BROKER_LIBRARY_VERSION);
		nulls[6] = false;
		if (extversion != NULL)
		{
			values[7] = CStringGetTextDatum(extversion);
			nulls[7] = false;
		}
		values[8] = BoolGetDatum(BrokerWorkersReady());
		nulls[8] = false;

		/*
		 * Other databases' workers, as pg_stat_activity shows other
		 * sessions: to superusers and members of pg_read_all_stats only.
		 */
		if (i < ncopy && copy[i].dboid != MyDatabaseId && !see_all)
			continue;
		if (i < ncopy)
		{
			BrokerReaperSlot *s = &copy[i];
			char	   *dbname = get_database_name(s->dboid);

			if (dbname != NULL)
			{
				NameData   *n = palloc(sizeof(NameData));

				namestrcpy(n, dbname);
				values[0] = NameGetDatum(n);
				nulls[0] = false;
			}
			values[1] = Int32GetDatum((int32) s->pid);
			nulls[1] = false;
			values[2] = CStringGetTextDatum(BrokerReaperStateName(s->state));
			nulls[2] = false;
			if (s->last_pass_at != 0)
			{
				Interval   *iv = palloc0(sizeof(Interval));

				iv->time = s->last_pass_us;
				values[3] = TimestampTzGetDatum(s->last_pass_at);
				values[4] = IntervalPGetDatum(iv);
				nulls[3] = nulls[4] = false;
			}
			values[5] = Int64GetDatum((int64) s->removed_total);
			nulls[5] = false;
		}
		else if (nrows > 0)
			break;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		nrows++;
	}
	return (Datum) 0;
}
