/*-------------------------------------------------------------------------
 *
 * produce.c
 *	  Putting messages into a queue, for enqueue and for dead-lettering.
 *
 * A message is one row, in the caller's transaction: it is delivered if
 * and only if that transaction commits.  Its id is allocated through the
 * in-flight registry (inflight.c) so that consumers' low-water marks never
 * pass an id that has yet to commit; its counters and the wake-up of one
 * waiter are published at commit (qstate.c).
 *
 * The size limit applies to what a message stores: the bytes of the
 * payload's and the headers' jsonb binary values, before any TOAST
 * compression (what pg_column_size reports for an uncompressed value, less
 * the 4-byte varlena header, added up).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/fmgrprotos.h"
#include "utils/timestamp.h"

#include "inflight.h"
#include "produce.h"
#include "qstate.h"
#include "store.h"

/*
 * Refuse a message whose payload and headers together are larger than the
 * queue's max_message_size (54000); element > 0 names a batch element.
 */
void
BrokerCheckMessageSize(const BrokerQueue *q, Jsonb *payload, Jsonb *headers,
					   int element)
{
	Size		size = VARSIZE_ANY_EXHDR(payload);
	Size		hsize = headers ? VARSIZE_ANY_EXHDR(headers) : 0;

	if (size + hsize <= (Size) q->max_message_size)
		return;
	if (element > 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("message too large: %zu bytes, queue \"%s\" accepts at most %d bytes",
						size + hsize, q->name, q->max_message_size),
				 errdetail("Element %d of payloads is %zu bytes and the headers %zu bytes; nothing was enqueued.",
						   element, size, hsize)));
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("message too large: %zu bytes, queue \"%s\" accepts at most %d bytes",
					size + hsize, q->name, q->max_message_size),
			 errdetail("The payload is %zu bytes and the headers %zu bytes, in their jsonb binary form.",
					   size, hsize)));
}

/* The start of a queue's dedup window for an enqueue at "now". */
TimestampTz
BrokerDedupSince(const BrokerQueue *q, TimestampTz now)
{
	return BrokerWindowStart(now, &q->dedup_window);
}

/*
 * Count n stored messages of which "claimable" can be taken (the others
 * wait behind their group's head) for the commit to publish.
 */
void
BrokerNoteStored(const BrokerQueue *q, int64 n, int64 claimable,
				 TimestampTz now, TimestampTz vt)
{
	BrokerCount(q->queue_id, BROKER_COUNT_ENQUEUED, n);
	if (claimable == 0)
		return;
	if (vt > now)
		BrokerNoteDue(q->queue_id, vt);
	else
		BrokerCount(q->queue_id, BROKER_COUNT_READY, claimable);
}

/*
 * Put one message into a queue (caller holds the queue's lock and an SPI
 * connection); returns its id.  With a dedup key the queue accepted within
 * its window, nothing is stored (*stored false) and the id is that of the
 * message the key came with.
 */
int64
BrokerEnqueueOne(const BrokerQueue *q, const BrokerOutgoing *out, bool *stored)
{
	BrokerNewMessage m;
	bool		claimable;

	*stored = false;

	/*
	 * The dedup key's lock, then the group's (every producer takes them in
	 * this order), then the id: see BrokerStoreLockGroups.
	 */
	if (out->dedup_key != NULL)
	{
		text	   *key = out->dedup_key;

		BrokerStoreDedupLock(q->queue_id, &key, 1);
	}
	if (out->group_key != NULL)
	{
		text	   *key = out->group_key;

		BrokerStoreLockGroups(q->queue_id, &key, 1);
	}
	m.id = BrokerAllocateMessageId(q->queue_id);
	if (out->dedup_key != NULL)
	{
		/* a duplicate leaves its id unused: ids have gaps anyway */
		int64		found = BrokerStoreDedupClaim(q->queue_id, out->dedup_key, m.id,
												  out->now,
												  BrokerDedupSince(q, out->now));

		if (found != 0)
			return found;
	}
	if (out->priority > 0)
		BrokerNotePriority(BrokerQueueStateGet(q->queue_id, true), out->priority);

	m.queue_id = q->queue_id;
	m.vt = out->vt;
	m.enqueued_at = out->now;
	m.has_expiry = out->has_expiry;
	m.expires_at = out->expires_at;
	m.payload = out->payload;
	m.headers = out->headers;
	m.group_key = out->group_key;
	m.priority = out->priority;
	claimable = BrokerStoreInsert(&m);
	BrokerNoteStored(q, 1, claimable ? 1 : 0, out->now, out->vt);
	*stored = true;
	return m.id;
}

/*
 * Move messages taken out of a queue to its dead-letter queue, or drop them
 * when it has none; counted as dead-lettered.  The queue's lock is held.
 * new_ids (if not NULL) gets each copy's id in the dead-letter queue, or 0
 * when there is none.
 */
void
BrokerDeadLetter(const BrokerQueue *q, const BrokerDeadMessage *dead, int ndead,
				 int64 *new_ids)
{
	BrokerQueue dlq;
	TimestampTz now;

	BrokerNoteDeleted();
	BrokerCount(q->queue_id, BROKER_COUNT_DEAD_LETTERED, ndead);
	if (q->dead_letter_id == 0)
	{
		if (new_ids)
			memset(new_ids, 0, sizeof(int64) * ndead);
		return;
	}
	/* Lock order: the queue (held), then its dead-letter queue. */
	BrokerLockQueueById(q->dead_letter_id, AccessShareLock);
	if (!BrokerLookupQueueById(q->dead_letter_id, &dlq))
		elog(ERROR, "broker: dead-letter queue %d of queue \"%s\" vanished",
			 q->dead_letter_id, q->name);
	now = GetCurrentTimestamp();
	for (int i = 0; i < ndead; i++)
	{
		BrokerOutgoing m;
		bool		stored;
		int64		id;

		/* Its priority goes with it; its group and dedup key do not. */
		memset(&m, 0, sizeof(m));
		m.payload = dead[i].payload;
		m.headers = dead[i].headers;
		m.now = now;
		m.vt = now;
		m.has_expiry = dlq.has_default_ttl;
		m.expires_at = dlq.has_default_ttl ?
			BrokerTimestampPlus(now, &dlq.default_ttl) : 0;
		m.priority = dead[i].priority;
		id = BrokerEnqueueOne(&dlq, &m, &stored);
		if (new_ids)
			new_ids[i] = id;
	}
}

/*
 * Keep the records of messages that left a queue with a retention (no-op
 * without one): state, the same result for all, and for dead-lettered
 * ones their id in the dead-letter queue in the headers ("dead_letter_id").
 */
void
BrokerKeepRecords(const BrokerQueue *q, const BrokerRemoved *rem, int n,
				  const char *state, Jsonb *result, const int64 *dead_ids)
{
	BrokerRecord *recs;
	TimestampTz now;

	if (!q->has_retention || n == 0)
		return;
	(void) BrokerStoreRecordTable(&now);
	recs = palloc(sizeof(BrokerRecord) * n);
	for (int i = 0; i < n; i++)
	{
		BrokerRecord *r = &recs[i];

		r->id = rem[i].id;
		r->state = state;
		r->delivery_count = rem[i].delivery_count;
		r->enqueued_at = rem[i].enqueued_at;
		r->visible_at = rem[i].vt;
		r->finished_at = now;
		r->payload = rem[i].payload;
		r->headers = rem[i].headers;
		r->result = result;
		if (dead_ids && dead_ids[i] != 0)
		{
			char	   *json = psprintf("{\"dead_letter_id\": " INT64_FORMAT "}",
										dead_ids[i]);
			Datum		extra = DirectFunctionCall1(jsonb_in, CStringGetDatum(json));

			r->headers = r->headers == NULL ? DatumGetJsonbP(extra) :
				DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
												   JsonbPGetDatum(r->headers),
												   extra));
		}
	}
	BrokerStoreRecord(q->queue_id, recs, n);
}
