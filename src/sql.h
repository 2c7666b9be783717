/*-------------------------------------------------------------------------
 *
 * sql.h
 *	  Statements: each a named constant in the file that runs it, prepared
 *	  once with SPI_prepare and kept, and executed through one helper.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_SQL_H
#define BROKER_SQL_H

#include "postgres.h"

#include "executor/spi.h"
#include "utils/snapshot.h"

#include "xact.h"

#define BROKER_STMT_MAXARGS		10
#define BROKER_STMT_VARIANTS	8

/* Options of a statement. */
#define BROKER_STMT_CUSTOM		0x01	/* plan at each call (parameters as
										 * constants), else a kept generic plan */
#define BROKER_STMT_INDEX		0x02	/* planned with sequential and bitmap
										 * scans off (see BrokerStmtExecute) */

/*
 * A statement.  With variants, its text has one "%d" (for example a
 * segment number) and each variant is prepared and kept on its own.
 */
typedef struct BrokerStmt
{
	const char *sql;
	int			nargs;
	Oid			argtypes[BROKER_STMT_MAXARGS];
	int			options;
	SPIPlanPtr	plans[BROKER_STMT_VARIANTS];	/* [0] without variants */
} BrokerStmt;

extern void BrokerSPIConnect(void);
extern Oid	BrokerInvoker(void);
extern const BrokerXactHandler BrokerSQLXact;
extern void BrokerSPIFinish(void);
extern int	BrokerStmtExecute(BrokerStmt *stmt, int variant, Datum *values,
							  const char *nulls, long count);
extern int	BrokerStmtExecuteLatest(BrokerStmt *stmt, int variant, Datum *values,
									const char *nulls, long count);
extern int	BrokerStmtExecuteSnapshot(BrokerStmt *stmt, int variant, Datum *values,
									  const char *nulls, long count,
									  Snapshot snapshot);
extern void BrokerStmtCheck(int rc, int expected, const char *what);

#endif							/* BROKER_SQL_H */
