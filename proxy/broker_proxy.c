/*-------------------------------------------------------------------------
 *
 * broker_proxy.c
 *	  The one thing broker_proxy cannot say in SQL: whether the caller's
 *	  transaction is a transaction block, or has already written.
 *
 * A proxied call (PL/Proxy) runs on the queue's node in a transaction of
 * its own there, which commits when the call returns, whatever the proxy's
 * transaction does afterwards.  Inside BEGIN ... COMMIT, or in a
 * transaction that has already changed data on the proxy, such a call would
 * look transactional and is not: broker_proxy refuses it (25001) unless the
 * session says it knows (broker_proxy.allow_transaction_block).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static bool allow_transaction_block = false;

void
_PG_init(void)
{
	DefineCustomBoolVariable("broker_proxy.allow_transaction_block",
							 "Lets calls that change messages run through the proxy inside a transaction block.",
							 "Each proxied call commits on its node by itself: with this on, a ROLLBACK "
							 "of the proxy's transaction does not undo it.",
							 &allow_transaction_block,
							 false,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
}

PG_FUNCTION_INFO_V1(broker_proxy_check_autocommit);

/*
 * broker_proxy._check_autocommit(fn text, queue text, writes boolean): raise
 * 25001 when the call "broker.<fn>" would run inside a transaction block,
 * or (writes) in a transaction that has already written; queue (may be
 * NULL) is named in the hint.
 *
 * Called by broker's functions on the proxy before their exception block:
 * inside one (a subtransaction) IsTransactionBlock() is always true.
 */
Datum
broker_proxy_check_autocommit(PG_FUNCTION_ARGS)
{
	const char *fn;
	const char *queue;
	bool		in_block;

	if (allow_transaction_block)
		PG_RETURN_VOID();
	in_block = IsTransactionBlock();
	if (!in_block &&
		(PG_ARGISNULL(2) || !PG_GETARG_BOOL(2) ||
		 !TransactionIdIsValid(GetTopTransactionIdIfAny())))
		PG_RETURN_VOID();

	fn = PG_ARGISNULL(0) ? "call" : text_to_cstring(PG_GETARG_TEXT_PP(0));
	queue = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	ereport(ERROR,
			(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
			 in_block ?
			 errmsg("broker.%s through broker_proxy cannot run inside a transaction block", fn) :
			 errmsg("broker.%s through broker_proxy cannot run in a transaction that has already written data", fn),
			 errdetail("A proxied call commits on the queue's node by itself when it returns; "
					   "a rollback of this transaction would not undo it."),
			 queue != NULL ?
			 errhint("Call it outside a transaction block.  To make it part of a transaction with your "
					 "own data, run that transaction on the queue's node: "
					 "SELECT * FROM broker_proxy.node_for('%s').", queue) :
			 errhint("Call it outside a transaction block.")));
	PG_RETURN_VOID();			/* not reached */
}
