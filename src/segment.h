/*-------------------------------------------------------------------------
 *
 * segment.h
 *	  Inside the message store: the segment state (segment.c) that the
 *	  store's statements (store.c) and its rotation (rotate.c) consult.
 *	  Nothing outside the store includes this file.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_SEGMENT_H
#define BROKER_SEGMENT_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* Segment tables broker.messages_0 .. _3. */
#define BROKER_SEGMENTS			4

/*
 * Pairs of rotated tables: the dedup keys (broker.dedup_0, _1) and the job
 * records (broker.records_0, _1).  One of a pair takes new rows; the other
 * only answers lookups until maintenance empties it (rotate.c).
 */
#define BROKER_PAIR_TABLES		2
typedef enum BrokerPair
{
	BROKER_PAIR_DEDUP,
	BROKER_PAIR_RECORDS,
	BROKER_NUM_PAIRS
} BrokerPair;

/*
 * Which table of a pair takes new rows (cur), since when, when the other
 * one stopped taking them, and whether it was emptied since.
 */
typedef struct BrokerTablePair
{
	int			cur;
	TimestampTz since;
	TimestampTz stopped;
	bool		other_empty;
	bool		turned;			/* cur changed since the server started */
} BrokerTablePair;

/* One installation's segment state in shared memory. */
typedef struct SegState SegState;

extern SegState *BrokerSegmentState(void);
extern void BrokerSegmentView(SegState *st, int *cur, uint32 *drained,
							  int64 *first);
extern Oid	BrokerSegmentRelid(int seg);
extern int	BrokerSegmentCurrent(void);
extern int	BrokerSegmentScanOrder(int *segs);
extern int	BrokerSegmentLookupOrder(int64 id, int *segs);
extern void BrokerSegmentInserted(int seg);
extern void BrokerSegmentFound(int seg);
extern void BrokerSegmentClearDrained(SegState *st, int seg);
extern void BrokerSegmentAnnounceMove(SegState *st);
extern void BrokerSegmentRecord(SegState *st, int drained_seg, int new_cur,
								int64 first_id);
extern void BrokerPairGet(SegState *st, BrokerPair pair, BrokerTablePair *out);
extern void BrokerPairSet(SegState *st, BrokerPair pair, const BrokerTablePair *in);

#endif							/* BROKER_SEGMENT_H */
