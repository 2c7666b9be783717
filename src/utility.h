/*-------------------------------------------------------------------------
 *
 * utility.h
 *	  The hooks into PostgreSQL's commands (ProcessUtility, object access)
 *	  and what they do at commit.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_UTILITY_H
#define BROKER_UTILITY_H

#include "postgres.h"

#include "xact.h"

extern void BrokerUtilityInit(void);
extern const BrokerXactHandler BrokerUtilityXact;

#endif							/* BROKER_UTILITY_H */
