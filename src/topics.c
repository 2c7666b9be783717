/*-------------------------------------------------------------------------
 *
 * topics.c
 *	  Publish/subscribe: broker.subscribe, broker.unsubscribe and
 *	  broker.publish, and the compiled subscriptions they share.
 *
 * A subscription is a row (queue, pattern) of broker.subscription_defs.
 * A pattern is words separated by '.', each word [a-z0-9_-]+, '*' (exactly
 * one word) or '#' (zero or more words), as in AMQP topic exchanges; a
 * topic is words without wildcards.
 *
 * Matching.  Each backend compiles every subscription of the installation
 * into a trie of words (children by exact word in a hash table, plus one
 * '*' child and one '#' child per node; the queues a pattern ends at on
 * its node) the first time it publishes, and keeps it until the
 * subscriptions change: subscribe, unsubscribe and drop_queue send a
 * relcache invalidation of broker.subscription_defs, which (catalog.c)
 * moves the generation every cache of the extension checks.  A publish
 * then walks the trie with the topic's words: the cost grows with the
 * topic's length and the matching patterns, not with the number of
 * subscriptions.  '#' nodes are walked at most once per position of the
 * topic (a visited set), so no pattern makes the walk exponential.  The
 * trie is read with the latest snapshot, as catalogs are, so a backend in
 * a REPEATABLE READ transaction never caches an old set of subscriptions.
 *
 * Publishing.  The matching queues are locked in queue id order (so two
 * publishes never deadlock), every copy's size is checked before any is
 * enqueued (54000, nothing enqueued), then each queue gets one copy with
 * its own rules (default ttl, dedup key), in the caller's transaction:
 * all copies or none.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "acl.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "produce.h"
#include "queuedef.h"
#include "sql.h"
#include "topics.h"
#include "util.h"

PG_FUNCTION_INFO_V1(broker_subscribe);
PG_FUNCTION_INFO_V1(broker_unsubscribe);
PG_FUNCTION_INFO_V1(broker_publish);

#define OP(x) "OPERATOR(pg_catalog." x ")"

/* Words of a topic or pattern: at most this many (each 1 byte and a dot). */
#define MAX_WORDS	((BROKER_MAX_TOPIC + 1) / 2)

static BrokerStmt insert_sub = {
	"INSERT INTO broker.subscription_defs AS s (queue_id, pattern)"
	" VALUES ($1, $2) ON CONFLICT DO NOTHING",
	2, {INT4OID, TEXTOID}, 0, {NULL}
};

static BrokerStmt delete_sub = {
	"DELETE FROM broker.subscription_defs s"
	" WHERE s.queue_id " OP("=") " $1 AND s.pattern " OP("=") " $2",
	2, {INT4OID, TEXTOID}, 0, {NULL}
};

static BrokerStmt delete_queue_subs = {
	"DELETE FROM broker.subscription_defs s WHERE s.queue_id " OP("=") " $1",
	1, {INT4OID}, 0, {NULL}
};

static BrokerStmt all_subs = {
	"SELECT s.queue_id, q.name, s.pattern FROM broker.subscription_defs s"
	"  JOIN broker.queue_defs q ON q.queue_id " OP("=") " s.queue_id"
	" WHERE q.kind " OP("=") " 'q'",
	0, {InvalidOid}, 0, {NULL}
};

/* A queue a pattern ends at. */
typedef struct TopicTarget
{
	int32		queue_id;
	char		name[BROKER_QUEUE_NAME_MAX + 1];
} TopicTarget;

/* A node of the trie. */
typedef struct TopicNode
{
	int			star;			/* child for '*', or -1 */
	int			hash;			/* child for '#', or -1 */
	int			hash_slot;		/* a '#' node: its row in the visited set */
	int			ntargets;
	TopicTarget *targets;
} TopicNode;

/* An edge by exact word: (parent, word) -> child. */
typedef struct TopicEdgeKey
{
	int32		parent;
	char		word[BROKER_MAX_TOPIC + 1];
} TopicEdgeKey;

typedef struct TopicEdge
{
	TopicEdgeKey key;
	int32		child;
} TopicEdge;

/* This backend's compiled subscriptions. */
static MemoryContext trie_cxt = NULL;
static uint64 trie_generation = 0;
static TopicNode *nodes = NULL;
static int	nnodes = 0;
static int	maxnodes = 0;
static int	nhash_nodes = 0;
static HTAB *edges = NULL;

/*
 * Split a topic or pattern into words, checking it (22023 with the rule);
 * returns how many.  words[] point into buf, a copy of the text.
 */
static int
split_words(text *t, bool pattern, char *buf, char **words)
{
	int			len = VARSIZE_ANY_EXHDR(t);
	const char *what = pattern ? "pattern" : "topic";
	int			n = 0;
	char	   *w;

	if (len < 1 || len > BROKER_MAX_TOPIC)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be 1 to %d characters", what, BROKER_MAX_TOPIC),
				 errdetail("The value given is %d bytes long.", len)));
	memcpy(buf, VARDATA_ANY(t), len);
	buf[len] = '\0';
	w = buf;
	for (int i = 0; i <= len; i++)
	{
		char		c = buf[i];
		bool		wordchar = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '_' || c == '-';
		bool		wild = pattern && (c == '*' || c == '#');

		if (c == '.' || c == '\0')
		{
			buf[i] = '\0';
			if (*w == '\0')
				goto bad;
			/* a wildcard is a word of its own */
			if ((strchr(w, '*') || strchr(w, '#')) && strlen(w) != 1)
				goto bad;
			words[n++] = w;
			w = &buf[i + 1];
			continue;
		}
		if (!wordchar && !wild)
			goto bad;
	}
	return n;

bad:
	if (pattern)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid topic pattern \"%s\"",
						BrokerClipForMessage(VARDATA_ANY(t), len)),
				 errdetail("A pattern is words separated by \".\"; a word is one or more of a-z, 0-9, _ and -, or \"*\" (exactly one word), or \"#\" (zero or more words).")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid topic \"%s\"", BrokerClipForMessage(VARDATA_ANY(t), len)),
			 errdetail("A topic is words separated by \".\"; a word is one or more of a-z, 0-9, _ and -; no wildcards.")));
	return 0;					/* keep the compiler quiet */
}

/* A new node of the trie being built. */
static int
new_node(void)
{
	if (nnodes == maxnodes)
	{
		maxnodes = maxnodes == 0 ? 64 : maxnodes * 2;
		nodes = nodes == NULL ?
			MemoryContextAlloc(trie_cxt, sizeof(TopicNode) * maxnodes) :
			repalloc(nodes, sizeof(TopicNode) * maxnodes);
	}
	nodes[nnodes].star = -1;
	nodes[nnodes].hash = -1;
	nodes[nnodes].hash_slot = -1;
	nodes[nnodes].ntargets = 0;
	nodes[nnodes].targets = NULL;
	return nnodes++;
}

/* The child of a node by exact word, or -1 (create: make it). */
static int
word_child(int parent, const char *word, bool create)
{
	TopicEdgeKey key;
	TopicEdge  *e;
	bool		found;

	memset(&key, 0, sizeof(key));
	key.parent = parent;
	strlcpy(key.word, word, sizeof(key.word));
	e = hash_search(edges, &key, create ? HASH_ENTER : HASH_FIND, &found);
	if (e == NULL)
		return -1;
	if (!found)
		e->child = new_node();
	return e->child;
}

/* Add one subscription to the trie. */
static void
add_pattern(int32 queue_id, const char *name, text *pattern)
{
	char		buf[BROKER_MAX_TOPIC + 1];
	char	   *words[MAX_WORDS + 1];
	int			n = split_words(pattern, true, buf, words);
	int			node = 0;
	TopicNode  *t;

	for (int i = 0; i < n; i++)
	{
		int			next;

		/* "#.#" matches what "#" does: one '#' node for a run of them */
		if (strcmp(words[i], "#") == 0 && i > 0 && strcmp(words[i - 1], "#") == 0)
			continue;
		if (strcmp(words[i], "*") == 0)
		{
			if (nodes[node].star < 0)
			{
				next = new_node();
				nodes[node].star = next;
			}
			next = nodes[node].star;
		}
		else if (strcmp(words[i], "#") == 0)
		{
			if (nodes[node].hash < 0)
			{
				next = new_node();
				nodes[node].hash = next;
				nodes[next].hash_slot = nhash_nodes++;
			}
			next = nodes[node].hash;
		}
		else
			next = word_child(node, words[i], true);
		node = next;
	}
	t = &nodes[node];
	for (int i = 0; i < t->ntargets; i++)
		if (t->targets[i].queue_id == queue_id)
			return;
	t->targets = t->targets == NULL ?
		MemoryContextAlloc(trie_cxt, sizeof(TopicTarget)) :
		repalloc(t->targets, sizeof(TopicTarget) * (t->ntargets + 1));
	t->targets[t->ntargets].queue_id = queue_id;
	strlcpy(t->targets[t->ntargets].name, name, sizeof(t->targets[0].name));
	t->ntargets++;
}

/* Compile the subscriptions if they changed (caller connected to SPI). */
static void
build_trie(void)
{
	HASHCTL		ctl;
	MemoryContext old;
	int			rc;

	/* What committed since this backend last looked, inside a transaction too. */
	AcceptInvalidationMessages();
	if (trie_cxt != NULL && trie_generation == BrokerRelsGeneration())
		return;
	if (trie_cxt == NULL)
		trie_cxt = AllocSetContextCreate(CacheMemoryContext, "broker topics",
										 ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(trie_cxt);
	nodes = NULL;
	nnodes = maxnodes = nhash_nodes = 0;
	edges = NULL;
	trie_generation = 0;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(TopicEdgeKey);
	ctl.entrysize = sizeof(TopicEdge);
	ctl.hcxt = trie_cxt;
	edges = hash_create("broker topic edges", 64, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	(void) new_node();			/* the root */

	/*
	 * Resolve the table by name first: catalog.c moves the generation on an
	 * invalidation of a relation it resolved, so a later subscribe or
	 * unsubscribe anywhere makes this backend build again.  Then the
	 * generation before the read: a change during it builds again.
	 */
	(void) BrokerRelid("subscription_defs");
	trie_generation = BrokerRelsGeneration();
	rc = BrokerStmtExecuteLatest(&all_subs, -1, NULL, NULL, 0);
	BrokerStmtCheck(rc, SPI_OK_SELECT, "reading subscriptions");
	old = MemoryContextSwitchTo(trie_cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int32		queue_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *name = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		text	   *pattern = DatumGetTextPP(SPI_getbinval(tup, desc, 3, &isnull));

		add_pattern(queue_id, name, pattern);
	}
	MemoryContextSwitchTo(old);
}

/* The queues matched, collected by a walk. */
typedef struct TopicMatch
{
	TopicTarget *targets;
	int			n;
	int			cap;
	char	  **words;
	int			nwords;
	bool	   *visited;		/* '#' node slot x position */
} TopicMatch;

static void
collect(TopicMatch *m, const TopicNode *t)
{
	for (int i = 0; i < t->ntargets; i++)
	{
		if (m->n == m->cap)
		{
			m->cap = m->cap == 0 ? 8 : m->cap * 2;
			m->targets = m->targets == NULL ?
				palloc(sizeof(TopicTarget) * m->cap) :
				repalloc(m->targets, sizeof(TopicTarget) * m->cap);
		}
		m->targets[m->n++] = t->targets[i];
	}
}

/* Walk from a node with the topic's words from position pos on. */
static void
walk(TopicMatch *m, int node, int pos)
{
	const TopicNode *t = &nodes[node];

	check_stack_depth();
	CHECK_FOR_INTERRUPTS();
	if (t->hash_slot >= 0)
	{
		bool	   *seen = &m->visited[t->hash_slot * (m->nwords + 1) + pos];

		if (*seen)
			return;
		*seen = true;
	}
	if (pos == m->nwords)
		collect(m, t);
	/* '#' takes zero or more words */
	if (t->hash >= 0)
	{
		for (int k = pos; k <= m->nwords; k++)
			walk(m, t->hash, k);
	}
	if (pos == m->nwords)
		return;
	if (t->star >= 0)
		walk(m, t->star, pos + 1);
	{
		int			child = word_child(node, m->words[pos], false);

		if (child >= 0)
			walk(m, child, pos + 1);
	}
}

static int
cmp_target(const void *a, const void *b)
{
	int32		x = ((const TopicTarget *) a)->queue_id;
	int32		y = ((const TopicTarget *) b)->queue_id;

	return (x > y) - (x < y);
}

/*
 * The queues with a pattern that matches the topic, each once, in queue id
 * order; returns how many.
 */
static int
match_topic(char **words, int nwords, TopicTarget **out)
{
	TopicMatch	m;
	int			k = 0;

	build_trie();
	memset(&m, 0, sizeof(m));
	m.words = words;
	m.nwords = nwords;
	m.visited = palloc0(sizeof(bool) * Max(nhash_nodes, 1) * (nwords + 1));
	walk(&m, 0, 0);
	if (m.n > 1)
	{
		qsort(m.targets, m.n, sizeof(TopicTarget), cmp_target);
		for (int i = 0; i < m.n; i++)
			if (k == 0 || m.targets[k - 1].queue_id != m.targets[i].queue_id)
				m.targets[k++] = m.targets[i];
	}
	else
		k = m.n;
	*out = m.targets;
	return k;
}

/* Tell every backend that the subscriptions changed (at commit). */
static void
subscriptions_changed(void)
{
	CacheInvalidateRelcacheByRelid(BrokerRelid("subscription_defs"));
}

/* Subscribe or unsubscribe (the queue's lock keeps drop_queue out). */
static bool
change_subscription(FunctionCallInfo fcinfo, bool add)
{
	text	   *name = BrokerQueueArg(fcinfo, 0);
	text	   *pattern;
	char		buf[BROKER_MAX_TOPIC + 1];
	char	   *words[MAX_WORDS + 1];
	BrokerQueue q;
	Datum		values[2];
	int			rc;
	bool		changed;

	BrokerRequireArg(fcinfo, 1, "pattern");
	pattern = PG_GETARG_TEXT_PP(1);
	(void) split_words(pattern, true, buf, words);
	BrokerRequireWritable(add ? "subscribe" : "unsubscribe");

	BrokerSPIConnect();
	BrokerLockQueue(name, AccessShareLock, &q);
	BrokerCheckQueue(&q, BROKER_PRIV_ADMIN);
	values[0] = Int32GetDatum(q.queue_id);
	values[1] = PointerGetDatum(pattern);
	rc = BrokerStmtExecute(add ? &insert_sub : &delete_sub, -1, values, NULL, 0);
	BrokerStmtCheck(rc, add ? SPI_OK_INSERT : SPI_OK_DELETE,
					add ? "subscribing" : "unsubscribing");
	changed = SPI_processed > 0;
	if (changed)
		subscriptions_changed();
	BrokerSPIFinish();
	return changed;
}

/* broker.subscribe(queue, pattern): true when added. */
Datum
broker_subscribe(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(change_subscription(fcinfo, true));
}

/* broker.unsubscribe(queue, pattern): true when there was one. */
Datum
broker_unsubscribe(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(change_subscription(fcinfo, false));
}

/* A queue is dropped: its subscriptions go (caller connected to SPI). */
void
BrokerTopicsForgetQueue(int32 queue_id)
{
	Datum		values[1];
	int			rc;

	values[0] = Int32GetDatum(queue_id);
	rc = BrokerStmtExecuteLatest(&delete_queue_subs, -1, values, NULL, 0);
	BrokerStmtCheck(rc, SPI_OK_DELETE, "removing subscriptions");
	if (SPI_processed > 0)
		subscriptions_changed();
}

/* The headers of every copy: the given ones with "topic" set. */
static Jsonb *
topic_headers(Jsonb *headers, const char *topic)
{
	/* A topic is only [a-z0-9_.-]: nothing in it needs escaping. */
	char	   *json = psprintf("{\"topic\": \"%s\"}", topic);
	Datum		t = DirectFunctionCall1(jsonb_in, CStringGetDatum(json));

	if (headers == NULL)
		return DatumGetJsonbP(t);
	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers of a published message must be a JSON object"),
				 errdetail("publish sets the key \"topic\" in the headers of every copy.")));
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
											  JsonbPGetDatum(headers), t));
}

/*
 * broker.publish(topic, payload, delay, ttl, headers, group_key, dedup_key,
 * priority): one copy into every queue with a matching pattern; returns
 * how many queues got one.
 */
Datum
broker_publish(PG_FUNCTION_ARGS)
{
	text	   *topic_arg;
	char		buf[BROKER_MAX_TOPIC + 1];
	char	   *words[MAX_WORDS + 1];
	int			nwords;
	char	   *topic;
	Interval   *delay = PG_ARGISNULL(2) ? NULL : PG_GETARG_INTERVAL_P(2);
	Interval   *ttl = PG_ARGISNULL(3) ? NULL : PG_GETARG_INTERVAL_P(3);
	BrokerOutgoing m;
	TopicTarget *targets;
	int			ntargets;
	BrokerQueue *queues;
	bool	   *locked;
	int			copies = 0;

	BrokerRequireArg(fcinfo, 0, "topic");
	topic_arg = PG_GETARG_TEXT_PP(0);
	topic = text_to_cstring(topic_arg);
	nwords = split_words(topic_arg, false, buf, words);
	BrokerRequireArg(fcinfo, 1, "payload");
	memset(&m, 0, sizeof(m));
	m.payload = PG_GETARG_JSONB_P(1);
	BrokerCheckDelayTtl(delay, ttl);
	m.headers = topic_headers(PG_ARGISNULL(4) ? NULL : PG_GETARG_JSONB_P(4), topic);
	if (!PG_ARGISNULL(5))
	{
		m.group_key = PG_GETARG_TEXT_PP(5);
		BrokerCheckKey(m.group_key, "group_key", 0);
	}
	if (!PG_ARGISNULL(6))
	{
		m.dedup_key = PG_GETARG_TEXT_PP(6);
		BrokerCheckKey(m.dedup_key, "dedup_key", 0);
	}
	m.priority = BrokerPriorityArg(fcinfo, 7);
	BrokerRequireSharedMemory();
	BrokerRequireWritable("publish");

	BrokerSPIConnect();
	ntargets = match_topic(words, nwords, &targets);
	queues = palloc(sizeof(BrokerQueue) * Max(ntargets, 1));
	locked = palloc0(sizeof(bool) * Max(ntargets, 1));

	/* Lock in queue id order; a queue dropped (and made again) meanwhile is skipped. */
	for (int i = 0; i < ntargets; i++)
	{
		text	   *name = cstring_to_text(targets[i].name);

		if (!BrokerLookupQueue(name, true, &queues[i]) ||
			queues[i].queue_id != targets[i].queue_id)
			continue;
		BrokerLockQueueById(targets[i].queue_id, AccessShareLock);
		locked[i] = BrokerLookupQueue(name, true, &queues[i]) &&
			queues[i].queue_id == targets[i].queue_id;
	}

	/*
	 * produce on every queue it reaches, or nothing at all; then every
	 * copy's size: one too large and nothing is enqueued.
	 */
	for (int i = 0; i < ntargets; i++)
		if (locked[i])
			BrokerCheckQueue(&queues[i], BROKER_PRIV_PRODUCE);
	for (int i = 0; i < ntargets; i++)
		if (locked[i])
			BrokerCheckMessageSize(&queues[i], m.payload, m.headers, 0);

	m.now = GetCurrentTimestamp();
	m.vt = delay ? BrokerTimestampPlus(m.now, delay) : m.now;
	for (int i = 0; i < ntargets; i++)
	{
		bool		stored;

		CHECK_FOR_INTERRUPTS();
		if (!locked[i])
			continue;
		m.has_expiry = ttl != NULL || queues[i].has_default_ttl;
		m.expires_at = ttl ? BrokerTimestampPlus(m.now, ttl) :
			queues[i].has_default_ttl ?
			BrokerTimestampPlus(m.now, &queues[i].default_ttl) : 0;
		(void) BrokerEnqueueOne(&queues[i], &m, &stored);
		if (stored)
			copies++;
	}
	BrokerSPIFinish();
	PG_RETURN_INT32(copies);
}
