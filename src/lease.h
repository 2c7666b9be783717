/*-------------------------------------------------------------------------
 *
 * lease.h
 *	  Leases taken in this transaction, kept in backend memory and written
 *	  to the message rows just before the transaction commits.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_LEASE_H
#define BROKER_LEASE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/array.h"

#include "store.h"
#include "xact.h"

typedef enum BrokerLeaseMatch
{
	BROKER_LEASE_NONE,			/* not leased by this transaction */
	BROKER_LEASE_HELD,			/* leased by it; the receipt matches */
	BROKER_LEASE_STALE			/* leased by it; the receipt does not match */
} BrokerLeaseMatch;

extern void BrokerLeaseAdd(int32 queue_id, int64 id, const BrokerRowRef *ref,
						   int32 delivery_count, int64 receipt, TimestampTz vt);
extern BrokerLeaseMatch BrokerLeaseCheck(int32 queue_id, int64 id,
										 bool has_receipt, int64 receipt,
										 BrokerRowRef *ref);
extern bool BrokerLeasePending(int32 queue_id, int64 id, int32 *delivery_count,
							   TimestampTz *vt);
extern void BrokerLeaseDeleted(int32 queue_id, int64 id);
extern bool BrokerLeaseSetVt(int32 queue_id, int64 id, int64 receipt,
							 TimestampTz vt, bool release);
extern bool BrokerLeaseHasQueue(int32 queue_id);
extern ArrayType *BrokerLeaseIds(int32 queue_id);
extern const BrokerXactHandler BrokerLeaseXact;

#endif							/* BROKER_LEASE_H */
