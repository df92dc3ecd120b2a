/*
 * ksmreplay's native core: the visits of one scan window.
 *
 * ksr_visit() walks a window's events in address order -- visits of pages
 * (cmp_and_merge_page()), and unlinks of skipped and stale items from their
 * trees (remove_rmap_item_from_tree()) -- and does the common outcomes
 * itself: unlinking an item
 * from the unstable tree of an earlier pass or from a live stable node,
 * recording a changed checksum, merging with the zero page, merging into a
 * stable node that has room (a plain node, or the dup of a stable node chain
 * that stable_node_dup() picks, pruning the chain when it is due, moving
 * the dup to the chain's head as it does), inserting into the unstable tree,
 * and merging with an unstable-tree partner of the same window into a new
 * KSM page (try_to_merge_two_pages(), stable_tree_insert(): a plain node, a
 * new dup of a chain, or a new chain of the node filed before and the new
 * one).  Both visit orders are done: Linux 6.11+'s (checksum, zero page,
 * stable tree, unstable tree) and 6.1's (the stable tree first, with the
 * item still linked where it was).  In the v6 design (args->flag_zero) a
 * zero-page merge also flags the item and a visit clears the flag.
 * Everything else (a stale node or dup, a chain that would collapse, a
 * partner outside the window, a new KSM page when tracing or without room
 * for its node, a KSM page not linked to its item, an unstable item of the
 * current pass) it leaves untouched and hands back: it returns that event's index and ksmd
 * (ksmreplay/ksm/ksmd.py) does it, then calls again from the next one.  Whether a
 * visit is handed back is decided before it changes anything.  The outcome
 * is the same as Ksmd._cmp_and_merge and Ksmd.unlink one event at a time,
 * which the tests check against the scalar walk and the reference model.
 *
 * Stable nodes' hlists are doubly linked lists through the items (next,
 * prev) from each node's head, with their lengths in node_size, as ksmd.py
 * keeps them; a chain's dups are a list through dup_next from its ch_head,
 * ch_count long, head first.  Frames whose last mapping goes are listed for
 * the caller to free (only ordinary pages lose mappings during a scan).
 * With traced[], every merge made here (into a KSM page or the zero page) is
 * recorded there too, for ksmd's tracepoints.
 */

#include <stdint.h>

#include "ksmreplay.h"

/* Events ahead whose item and frame, then whose tree slots, are fetched. */
#define AHEAD_ITEM 16
#define AHEAD_SLOT 8
/* Functions of nothing but prefetches must be inlined, or the compiler drops them. */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

struct scan {
	/* window */
	pte_t *ptes;
	const int64_t *when;
	/* frames, items, stable nodes, chains, trees (a copy of the caller's) */
	struct tables t;
	/* the window's runs of pages: (first page, end page, first position) each */
	const int64_t *segs;
	int64_t n_segs;
	/* knobs, pass, clock */
	const struct visit_args *a;
	/* outputs */
	int64_t *dead;
	struct traced *traced;	/* NULL: not tracing */
	int64_t *made;
	int64_t *sums;
};

ALWAYS_INLINE void map_prefetch(const struct map *m, uint64_t key)
{
	uint64_t s = slot_of(key, m->bits);

	/* (a slot may straddle two cache lines) */
	__builtin_prefetch(&m->slots[s], 0);
	__builtin_prefetch((const char *)&m->slots[s] + sizeof(struct slot) - 1, 0);
}

/*
 * The trees, items and frames are large and visited out of order: fetch what
 * the events a little ahead will read (their tree slots once their frame's
 * content is in cache).
 */
ALWAYS_INLINE void prefetch(const struct scan *k, const int64_t *pos, const int64_t *rows,
			    const uint8_t *kind, int64_t i, int64_t n)
{
	if (i + AHEAD_ITEM < n) {
		int64_t row = rows[i + AHEAD_ITEM], frame = k->ptes[pos[i + AHEAD_ITEM]];

		__builtin_prefetch(&k->t.items[row], 1);
		__builtin_prefetch(&k->t.cold[row], 1);
		if (kind[i + AHEAD_ITEM] == LISTED_VISIT && frame >= 0) {
			__builtin_prefetch(&k->t.fr_content[frame], 0);
			__builtin_prefetch(&k->t.fr_ksm[frame], 0);
		}
	}
	if (i + AHEAD_SLOT < n && kind[i + AHEAD_SLOT] == LISTED_VISIT) {
		int64_t frame = k->ptes[pos[i + AHEAD_SLOT]];

		if (frame >= 0) {
			uint64_t content = k->t.fr_content[frame];

			map_prefetch(&k->t.stable, content);
			map_prefetch(&k->t.unstable, content);
		}
	}
}

static int64_t map_find(const struct map *m, uint64_t key)
{
	return slot_find(m->slots, m->bits, m->now, key);
}

static void map_insert(struct map *m, uint64_t key, int64_t val)
{
	slot_insert(m->slots, m->bits, m->now, key, val);
}

/* A node is live while its KSM page is: the frame still names it. */
static int node_alive(const struct scan *k, int64_t nid)
{
	int64_t frame = k->t.node_frame[nid];

	return k->t.fr_ksm[frame] && k->t.fr_node[frame] == nid;
}

/* Ksmd._unlink_from_live for one item (its node is live). */
static void unlink_stable(struct scan *k, int64_t row)
{
	int64_t nid = k->t.items[row].node, before = k->t.prev[row], after = k->t.next[row];

	if (before >= 0)
		k->t.next[before] = after;
	else
		k->t.head[nid] = after;
	if (after >= 0)
		k->t.prev[after] = before;
	if (--k->t.node_size[nid] == 0)
		k->sums[VISIT_SHARED]--;
	else
		k->sums[VISIT_SHARING]--;
	k->sums[VISIT_MERGING]--;
	k->t.items[row].state = STATE_NONE;
	k->t.items[row].node = -1;
}

/* Ksmd._append: stable_tree_append(). */
static void append(struct scan *k, int64_t row, int64_t nid)
{
	int64_t first = k->t.head[nid];

	k->t.next[row] = first;
	k->t.prev[row] = -1;
	if (first >= 0)
		k->t.prev[first] = row;
	k->t.head[nid] = row;
	if (++k->t.node_size[nid] > 1)
		k->sums[VISIT_SHARING]++;
	else
		k->sums[VISIT_SHARED]++;
	k->sums[VISIT_MERGING]++;
	k->t.items[row].state = STATE_STABLE;
	k->t.items[row].node = (int32_t)nid;
}

/* Whether remove_rmap_item_from_tree() of the item is one this file does. */
static int can_unlink(const struct scan *k, int64_t row)
{
	const struct item_hot *it = &k->t.items[row];

	switch (it->state) {
	case STATE_STABLE:
		return node_alive(k, it->node);
	case STATE_UNSTABLE:
		/* In this pass's tree: the caller deletes the entry. */
		return it->seq != (uint8_t)k->a->seqnr;
	default:
		return 1;
	}
}

static void unlink_item(struct scan *k, int64_t row)
{
	struct item_hot *it = &k->t.items[row];

	if (it->state == STATE_STABLE) {
		unlink_stable(k, row);
	} else if (it->state == STATE_UNSTABLE) {
		k->sums[VISIT_UNSHARED]--;
		it->state = STATE_NONE;
	}
}

/* A merge of event i into node (TRACED_ZERO: the zero page), when tracing. */
static void trace_merge(struct scan *k, int64_t i, int64_t node)
{
	struct traced *t = &k->traced[k->sums[VISIT_TRACED]++];

	t->event = i;
	t->node = node;
}

static void put_frame(struct scan *k, int64_t frame)
{
	if (--k->t.fr_mapcount[frame] == 0)
		k->dead[k->sums[VISIT_DEAD]++] = frame;
}

/* is_page_sharing_candidate() of a node of `size` items, with room for `more` besides. */
static int candidate(const struct scan *k, int64_t size, int64_t more)
{
	return size > 0 && size + more < k->a->max_page_sharing;
}

/*
 * A node's rmap_hlist_len as the stable-tree lookup of item `it`'s visit
 * sees it: in 6.11's order the item has left its node by then.
 */
static int64_t seen_size(const struct scan *k, int64_t nid, const struct item_hot *it)
{
	return k->t.node_size[nid] -
	       (k->a->checksum_first && it->state == STATE_STABLE && it->node == nid);
}

/* ksmd's clock at event i: the start of the batch its visit falls in (Ksmd._tick). */
static int64_t visit_time(const struct scan *k, int64_t i)
{
	const struct visit_args *a = k->a;
	int64_t visit = a->visits + k->when[i];

	if (!a->sub_budget)
		return a->now;
	return a->now + ((visit > 1 ? visit : 1) - 1) / a->sub_budget * a->period;
}

/* What stable_node_dup() picks from a chain, found before anything changes. */
struct pick {
	int64_t dup;	/* the dup chosen, -1: none */
	int64_t size;	/* its length as the lookup sees it */
	int64_t walked;	/* dups looked at */
	int64_t prune;	/* the time of a lookup that prunes the chain, -1: none */
};

/*
 * Ksmd._choose_dup() of chain cid for the visit of item `it` at time `now`
 * (prune: a lookup that may prune the chain), without changing anything: 0
 * to hand the visit back (a stale dup on the way, a chain that is empty or
 * would collapse).  Without pruning the walk stops at the first dup with
 * room; pruning, every dup is looked at and the fullest with room wins.
 * With none, 6.11+ settles for the first dup and 6.1 for nothing.
 */
static int chain_pick(const struct scan *k, int64_t cid, const struct item_hot *it, int64_t now,
		      int prune, struct pick *p)
{
	const struct visit_args *a = k->a;
	int64_t count = k->t.ch_count[cid], fsize = 0;
	int fcand = 0;

	if (!a->chains || count == 0)
		return 0;
	prune = prune && now / a->jiffy_ns >= (k->t.ch_prune[cid] + a->prune_ns) / a->jiffy_ns;
	if (count == 1 && (prune || a->collapse_any))
		return 0;
	p->dup = -1;
	p->walked = 0;
	p->prune = prune ? now : -1;
	for (int64_t d = k->t.ch_head[cid]; d >= 0; d = k->t.dup_next[d]) {
		int64_t size;
		int cand;

		p->walked++;
		if (!node_alive(k, d))
			return 0;
		size = seen_size(k, d, it);
		cand = candidate(k, size, 0);
		if (a->collapse_any ? p->dup < 0 || (cand && (!fcand || size > fsize))
				    : cand && (p->dup < 0 || size > fsize)) {
			p->dup = d;
			fsize = size;
			fcand = cand;
		}
		if (!prune && fcand)
			break;
	}
	p->size = fsize;
	return 1;
}

/* The rest of the pick's lookup: counted, pruned, the dup chosen to the head if it has room. */
static void chain_use(struct scan *k, int64_t cid, const struct pick *p)
{
	int64_t d = k->t.ch_head[cid];

	k->t.ch_looked[cid]++;
	k->sums[VISIT_DUPS] += p->walked;
	if (p->prune >= 0)
		k->t.ch_prune[cid] = p->prune;
	if (p->dup < 0 || d == p->dup || !candidate(k, p->size, 1))
		return;
	while (k->t.dup_next[d] != p->dup)
		d = k->t.dup_next[d];
	k->t.dup_next[d] = k->t.dup_next[p->dup];
	k->t.dup_next[p->dup] = k->t.ch_head[cid];
	k->t.ch_head[cid] = p->dup;
}

/* The window position of the item `row` of this window's mm, or -1 if it is outside the window. */
static int64_t window_pos(const struct scan *k, int64_t row)
{
	int64_t page = item_page(&k->t.cold[row]);

	if (item_slot(&k->t.cold[row]) != k->a->slot)
		return -1;
	for (int64_t s = 0; s < k->n_segs; s++) {
		const int64_t *seg = &k->segs[3 * s];

		if (page >= seg[0] && page < seg[1])
			return seg[2] + page - seg[0];
	}
	return -1;
}

/* Ksmd._unlink_unstable for an item of this pass's tree, found there under `content`. */
static void unlink_partner(struct scan *k, int64_t row, uint64_t content)
{
	struct slot *entry = slot_live(k->t.unstable.slots, k->t.unstable.bits, k->t.unstable.now, content);

	k->sums[VISIT_UNSHARED]--;
	k->t.items[row].state = STATE_NONE;
	if (entry && entry->val == row) {
		entry->val = SLOT_DELETED;
		k->sums[VISIT_UNSTABLE_DELETED]++;
	}
}

/*
 * try_to_merge_two_pages() of the page of event i (item row, frame, content) with item partner at window position q, then
 * stable_tree_insert() (cid: content's chain, else entry is its plain node
 * or SLOT_ABSENT) and the two stable_tree_append()s (Ksmd._cmp_and_merge
 * after an unstable-tree hit).  Returns 0 if the hit aborts (the partner's
 * page is gone, changed or a KSM page, or is this very frame).
 */
static int merge_pair(struct scan *k, int64_t i, int64_t row, int64_t frame, uint64_t content,
		      int64_t partner, int64_t q, int64_t entry, int64_t cid)
{
	int64_t other = k->ptes[q], nid = k->a->next_node + k->sums[VISIT_MADE];
	int64_t *made = &k->made[MADE_FIELDS * k->sums[VISIT_MADE]];
	struct pick pick;

	if (other < 0 || k->t.fr_ksm[other] || k->t.fr_content[other] != content || other == frame)
		return 0;
	k->sums[VISIT_PAIRS]++;
	/* this page becomes the KSM page in place; the partner's PTE points at it */
	k->t.fr_ksm[frame] = 1;
	k->ptes[q] = (pte_t)frame;
	k->t.fr_mapcount[frame]++;
	k->sums[VISIT_PTES]++;
	put_frame(k, other);
	unlink_partner(k, partner, content);
	/* stable_tree_insert(): a node for the new KSM page */
	k->sums[VISIT_MADE]++;
	k->t.node_frame[nid] = frame;
	k->t.node_size[nid] = 0;
	k->t.head[nid] = -1;
	k->t.dup_next[nid] = -1;
	k->t.fr_node[frame] = (int32_t)nid;
	made[MADE_CHAIN] = -1;
	made[MADE_NEW_CHAIN] = 0;
	if (cid >= 0) {
		/* chain(): a lookup that does not prune; it cannot hand back here */
		if (chain_pick(k, cid, &k->t.items[row], 0, 0, &pick))
			chain_use(k, cid, &pick);
	} else if (entry >= 0) {
		/* the plain node becomes the first dup of a new chain */
		cid = k->a->next_chain + k->sums[VISIT_CHAINS]++;
		k->t.ch_head[cid] = entry;
		k->t.dup_next[entry] = -1;
		k->t.ch_count[cid] = 1;
		k->t.ch_looked[cid] = 0;
		k->t.ch_prune[cid] = visit_time(k, i);
		k->sums[VISIT_DUPS_MADE]++;
		slot_live(k->t.stable.slots, k->t.stable.bits, k->t.stable.now, content)->val =
			CHAIN_ENTRY + cid;
		made[MADE_NEW_CHAIN] = 1;
	} else {
		map_insert(&k->t.stable, content, nid);
		k->sums[VISIT_STABLE_ADDED]++;
	}
	if (cid >= 0) {
		k->t.dup_next[nid] = k->t.ch_head[cid];
		k->t.ch_head[cid] = nid;
		k->t.ch_count[cid]++;
		k->sums[VISIT_DUPS_MADE]++;
		made[MADE_CHAIN] = cid;
	}
	append(k, partner, nid);
	append(k, row, nid);
	return 1;
}

/* v6: an item visited with a normal page at its address loses its zero-page flag. */
static void unflag(struct scan *k, struct item_cold *c)
{
	if (k->a->flag_zero && (c->where & ITEM_ZERO_FLAGGED)) {
		c->where &= ~ITEM_ZERO_FLAGGED;
		k->sums[VISIT_UNFLAGGED]++;
	}
}

/* cmp_and_merge_page() of event i: the page at window position p, item row; 0 to hand it back. */
static int visit(struct scan *k, int64_t i, int64_t p, int64_t row)
{
	const struct visit_args *a = k->a;
	struct item_hot *it = &k->t.items[row];
	struct item_cold *c = &k->t.cold[row];
	int64_t frame = k->ptes[p], entry = SLOT_ABSENT, cid = -1, node = -1, partner = -1, q = -1;
	struct pick pick;
	uint64_t content;
	int changed, zero;

	if (k->t.fr_ksm[frame]) {
		/* Only a KSM page already linked to its item is done here. */
		if (it->state != STATE_STABLE || it->node != k->t.fr_node[frame])
			return 0;
		unflag(k, c);
		k->sums[VISIT_HITS]++;
		return 1;
	}
	if (!can_unlink(k, row))
		return 0;
	content = k->t.fr_content[frame];
	changed = !(c->where & ITEM_CHECKED) || c->checksum != content;
	zero = !changed && content == 0 && a->use_zero_pages;
	if (!a->checksum_first || (!changed && !zero)) {
		/* stable_tree_search(): a node with room to merge into */
		entry = map_find(&k->t.stable, content);
		if (entry >= CHAIN_ENTRY) {
			cid = entry - CHAIN_ENTRY;
			if (!chain_pick(k, cid, it, visit_time(k, i), 1, &pick))
				return 0;
			if (pick.dup >= 0 && candidate(k, pick.size, 0))
				node = pick.dup;
		} else if (entry >= 0) {
			if (!node_alive(k, entry))
				return 0;
			if (candidate(k, seen_size(k, entry, it), 0))
				node = entry;
		}
	}
	if (node < 0 && !changed && !zero) {
		/* unstable_tree_search_insert(): a partner makes a new KSM page */
		partner = map_find(&k->t.unstable, content);
		if (partner >= 0) {
			q = window_pos(k, partner);
			if (q < 0 || k->traced || !a->pairs || k->sums[VISIT_MADE] >= a->room ||
			    (cid < 0 && entry >= 0 && k->sums[VISIT_CHAINS] >= a->room))
				return 0;
		}
	}
	if (cid >= 0)
		chain_use(k, cid, &pick);
	unflag(k, c);
	unlink_item(k, row);
	if (node >= 0) {
		/* replace_page() into the node's KSM page, stable_tree_append() */
		int64_t kframe = k->t.node_frame[node];

		k->ptes[p] = (pte_t)kframe;
		k->t.fr_mapcount[kframe]++;
		k->sums[VISIT_MERGES]++;
		k->sums[VISIT_PTES]++;
		put_frame(k, frame);
		append(k, row, node);
		if (k->traced)
			trace_merge(k, i, node);
	} else if (changed) {
		c->checksum = content;
		c->where |= ITEM_CHECKED;
		k->sums[VISIT_CHECKSUMS]++;
	} else if (zero) {
		/* try_to_merge_with_zero_page() */
		k->ptes[p] = PTE_KSM_ZERO;
		if (a->flag_zero)
			c->where |= ITEM_ZERO_FLAGGED;
		k->sums[VISIT_ZERO]++;
		k->sums[VISIT_PTES]++;
		put_frame(k, frame);
		if (k->traced)
			trace_merge(k, i, TRACED_ZERO);
	} else if (partner >= 0) {
		k->sums[VISIT_SEARCHES]++;
		merge_pair(k, i, row, frame, content, partner, q, entry, cid);
	} else {
		/* unstable_tree_search_insert(): no partner, insert */
		map_insert(&k->t.unstable, content, row);
		it->state = STATE_UNSTABLE;
		it->seq = (uint8_t)a->seqnr;
		k->sums[VISIT_UNSHARED]++;
		k->sums[VISIT_INSERTED]++;
		k->sums[VISIT_SEARCHES]++;
	}
	return 1;
}

/*
 * Events start on of e (see struct events): a visit (kind LISTED_VISIT) of the
 * page at position pos[i], the when[i]-th of the window, or an unlink of a
 * skipped or a stale item.  Returns the first event handed back, or e->n.
 * o->sums accumulates (see VISIT_*); o->dead needs room for e->n entries, and
 * so does o->traced unless it is NULL (no tracing); o->made for a->room
 * records, and the node columns for as many nodes from a->next_node on, the
 * chain columns for as many chains from a->next_chain on, the stable tree's
 * table for as many entries.
 */
int64_t ksr_visit(const struct tables *t, const struct events *e, int64_t start,
		  const struct visit_args *a, const struct visit_out *o)
{
	struct scan k = {
		.ptes = e->ptes, .when = e->when, .t = *t,
		.segs = e->segs, .n_segs = e->n_segs, .a = a,
		.dead = o->dead, .traced = o->traced, .made = o->made, .sums = o->sums,
	};
	const int64_t *pos = e->pos, *rows = e->rows;
	const uint8_t *kind = e->kind;
	int64_t n = e->n;

	for (int64_t i = start; i < n; i++) {
		prefetch(&k, pos, rows, kind, i, n);
		if (kind[i] == LISTED_VISIT) {
			if (!visit(&k, i, pos[i], rows[i]))
				return i;
		} else {
			if (!can_unlink(&k, rows[i]))
				return i;
			unlink_item(&k, rows[i]);
		}
	}
	return n;
}
