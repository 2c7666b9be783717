/*-------------------------------------------------------------------------
 *
 * sql.c
 *	  Running the extension's statements: connect, prepare once and keep,
 *	  execute with the plan guard.
 *
 * Every statement is a BrokerStmt constant next to the code that runs it,
 * every name in it schema-qualified (relations, functions, operators), so
 * that no search_path can change what it means.  It is prepared on first
 * use with SPI_prepare_cursor and kept with SPI_keepplan; the plan cache
 * re-plans it by itself when a relation it uses changes (DROP and CREATE
 * EXTENSION).  Before a statement is prepared, the extension's relations
 * are checked (catalog.c), so no statement ever runs against objects that
 * are not the extension's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "optimizer/cost.h"
#include "utils/snapmgr.h"

#include "catalog.h"
#include "sql.h"

/*
 * The functions are SECURITY INVOKER: the caller's privileges are checked
 * per queue (acl.c) with the role that called, and the statements then run
 * as the owner of the extension's tables, switched to here for as long as
 * the SPI connection lasts (as PostgreSQL runs foreign-key checks as the
 * table owner).  SECURITY_LOCAL_USERID_CHANGE keeps SET ROLE out meanwhile.
 * An error unwinds the switch with the (sub)transaction; the stack below is
 * trimmed to match.
 */
#define MAX_SWITCHES	16

typedef struct UserSwitch
{
	Oid			user;			/* the caller: restored at the end */
	int			sec;
	SubTransactionId subid;
} UserSwitch;

static UserSwitch switches[MAX_SWITCHES];
static int	nswitches = 0;

/* The role that called the broker function running now. */
Oid
BrokerInvoker(void)
{
	return nswitches > 0 ? switches[nswitches - 1].user : GetUserId();
}

/* Connect to SPI, failing loudly, and run as the tables' owner. */
void
BrokerSPIConnect(void)
{
	int			rc = SPI_connect();
	const BrokerRels *rels;
	UserSwitch *sw;

	if (rc != SPI_OK_CONNECT)
		elog(ERROR, "broker: SPI_connect failed: %s", SPI_result_code_string(rc));
	if (nswitches >= MAX_SWITCHES)
		elog(ERROR, "broker: functions nested too deeply");
	/* Without the extension (a worker waiting for it) nothing to switch to. */
	rels = BrokerFindRels(true);
	BrokerXactTrack();
	sw = &switches[nswitches++];
	GetUserIdAndSecContext(&sw->user, &sw->sec);
	sw->subid = GetCurrentSubTransactionId();
	if (rels != NULL)
		SetUserIdAndSecContext(rels->owner, sw->sec | SECURITY_LOCAL_USERID_CHANGE);
}

/* Disconnect from SPI, failing loudly, and be the caller again. */
void
BrokerSPIFinish(void)
{
	int			rc = SPI_finish();

	if (rc != SPI_OK_FINISH)
		elog(ERROR, "broker: SPI_finish failed: %s", SPI_result_code_string(rc));
	if (nswitches > 0)
	{
		nswitches--;
		SetUserIdAndSecContext(switches[nswitches].user, switches[nswitches].sec);
	}
}

/* The transaction ended: PostgreSQL restored the user; so do we. */
static void
sql_xact_end(BrokerXactEnd how)
{
	(void) how;
	nswitches = 0;
}

/* A subtransaction aborted: drop the switches made inside it. */
static void
sql_subxact_end(SubTransactionId mySubid, SubTransactionId parentSubid,
				bool committed)
{
	(void) parentSubid;
	if (committed)
		return;
	while (nswitches > 0 && switches[nswitches - 1].subid >= mySubid)
		nswitches--;
}

const BrokerXactHandler BrokerSQLXact = {
	.end = sql_xact_end,
	.subxact_end = sql_subxact_end,
};

/*
 * The text of a statement's variant: every "%d" in it replaced by the
 * variant's number modulo 4 (its segment, or its table of a pair), every
 * "%r" by the variant divided by 4 (a statement that names a segment and a
 * table of a pair: variant = segment + 4 * table).  A statement may name
 * its segment more than once, as the expiry statement does.
 */
static char *
stmt_text(const char *sql, int variant)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (const char *p = sql; *p != '\0'; p++)
	{
		if (p[0] == '%' && (p[1] == 'd' || p[1] == 'r'))
		{
			appendStringInfo(&buf, "%d", p[1] == 'd' ? variant % 4 : variant / 4);
			p++;
		}
		else
			appendStringInfoChar(&buf, *p);
	}
	return buf.data;
}

/* The kept plan of a statement (variant -1: no variants). */
static pg_noinline SPIPlanPtr
stmt_plan(BrokerStmt *stmt, int variant)
{
	int			slot = variant < 0 ? 0 : variant;
	SPIPlanPtr	plan;
	char	   *text;

	Assert(slot < BROKER_STMT_VARIANTS);
	/* Every statement names the extension's relations: check them first. */
	(void) BrokerGetRels();
	if (stmt->plans[slot] != NULL)
		return stmt->plans[slot];

	text = variant < 0 ? (char *) stmt->sql : stmt_text(stmt->sql, variant);

	/*
	 * The generic plan, but for the few statements that need their
	 * parameters as constants: statements are driven by the primary key,
	 * and a custom plan per call would re-plan on every call.
	 */
	plan = SPI_prepare_cursor(text, stmt->nargs, stmt->argtypes,
							  (stmt->options & BROKER_STMT_CUSTOM) ?
							  CURSOR_OPT_CUSTOM_PLAN : CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		elog(ERROR, "broker: SPI_prepare failed: %s: %s",
			 SPI_result_code_string(SPI_result), text);
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "broker: SPI_keepplan failed: %s", text);
	stmt->plans[slot] = plan;
	if (text != stmt->sql)
		pfree(text);
	return plan;
}

/*
 * Execute a statement (SPI connected).  With BROKER_STMT_INDEX, planning
 * happens with sequential and bitmap scans disabled: a generic plan is
 * made, or made again after an invalidation, with the statistics of that
 * moment, and planned while a segment is empty or just truncated, "seq scan
 * and sort" looks cheapest and would then be kept while the segment fills
 * up, making every call read the whole segment.  The settings are restored
 * at once, also on error.
 */
static int
execute(BrokerStmt *stmt, int variant, Datum *values, const char *nulls,
		long count, Snapshot snapshot)
{
	SPIPlanPtr	plan = stmt_plan(stmt, variant);
	bool		save_seqscan = enable_seqscan;
	bool		save_bitmapscan = enable_bitmapscan;
	volatile int rc = 0;

	if ((stmt->options & BROKER_STMT_INDEX) == 0 && snapshot == NULL)
		return SPI_execute_plan(plan, values, nulls, false, count);

	if ((stmt->options & BROKER_STMT_INDEX) != 0)
	{
		enable_seqscan = false;
		enable_bitmapscan = false;
	}
	PG_TRY();
	{
		if (snapshot != NULL)
			rc = SPI_execute_snapshot(plan, values, nulls, snapshot,
									  InvalidSnapshot, false, false, count);
		else
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

int
BrokerStmtExecute(BrokerStmt *stmt, int variant, Datum *values,
				  const char *nulls, long count)
{
	return execute(stmt, variant, values, nulls, count, NULL);
}

/*
 * Execute a statement with the latest snapshot instead of the transaction's
 * (SPI connected), as PostgreSQL's foreign-key checks do: a decision that
 * must see what committed since the transaction began, also under
 * REPEATABLE READ (the key or group locks taken before it make sure what it
 * sees stays true).  The plan guard applies as in BrokerStmtExecute.
 */
int
BrokerStmtExecuteLatest(BrokerStmt *stmt, int variant, Datum *values,
						const char *nulls, long count)
{
	return execute(stmt, variant, values, nulls, count, GetLatestSnapshot());
}

/*
 * Execute a statement with a given snapshot (SPI connected): several
 * statements that must see one state (a status lookup reads the queue and
 * then the records) read with one snapshot.
 */
int
BrokerStmtExecuteSnapshot(BrokerStmt *stmt, int variant, Datum *values,
						  const char *nulls, long count, Snapshot snapshot)
{
	return execute(stmt, variant, values, nulls, count, snapshot);
}

/* Fail loudly when a statement did not return what it must. */
void
BrokerStmtCheck(int rc, int expected, const char *what)
{
	if (rc != expected)
		elog(ERROR, "broker: %s failed: %s", what, SPI_result_code_string(rc));
}
