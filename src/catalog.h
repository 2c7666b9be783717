/*-------------------------------------------------------------------------
 *
 * catalog.h
 *	  The extension's relations in this database, found through the
 *	  extension itself and never by a name another role could supply.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_CATALOG_H
#define BROKER_CATALOG_H

#include "postgres.h"

/*
 * Object ids of the extension's relations, resolved once per invalidation
 * through the extension (pg_extension and its members in pg_depend).
 */
typedef struct BrokerRels
{
	Oid			extension;		/* pg_extension OID: names this installation */
	Oid			queue_defs;
	Oid			message_id_seq;
	Oid			queue_id_seq;
	Oid			owner;			/* of the tables: the functions run as it */
} BrokerRels;

extern const BrokerRels *BrokerGetRels(void);
extern const BrokerRels *BrokerFindRels(bool missing_ok);
extern Oid	BrokerRelid(const char *relname);
extern uint64 BrokerRelsGeneration(void);

#endif							/* BROKER_CATALOG_H */
