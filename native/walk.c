/*
 * ksmreplay's native core: a batch's walk of one mapping, window after
 * window (Ksmd._scan_mm's loop, ksmreplay/ksm/ksmd.py, for the common
 * window).
 *
 * ksr_walk() finds the windows itself in the mm's page table and item map
 * (their directories, as PageTable.runs() and the item map's runs would give
 * them: the same chunks, gathered into one array), runs ksr_step() on each,
 * writes the window back, and takes in what the step did, until the mapping
 * ends, the budget runs out, or a window needs Python: one it does not
 * start (an item-map chunk missing where a page is present, items to free
 * before it, too little room on the free stack, in the unstable tree's
 * table or in dead[]), or one whose step did something Python must see to
 * (a visit handed back, STEP_ALLOC, new KSM pages, a KSM page freed, the
 * tracer, a stale item with the v6 design's flag).  Such a window is left to the caller with
 * everything it needs to go on with the code that exists: its place and
 * chunks, the visits before it, and the step's outputs where ksr_step() left
 * them.  The windows done here change only what their steps change; the
 * counts, the frames freed and the visit sums are summed for the caller.
 * The tests compare the outcome with the per-window path's.
 */

#include <string.h>

#include "ksmreplay.h"

#define CHUNK (1 << CHUNK_SHIFT)

/* The index of the first key of `d` not below `key`. */
static int64_t lower(const struct directory *d, int64_t key)
{
	int64_t lo = 0, hi = d->n;

	while (lo < hi) {
		int64_t mid = lo + (hi - lo) / 2;

		if (d->keys[mid] < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Whether the item map has an item at a page of [lo, hi). */
static int items_in(const struct directory *im, int64_t lo, int64_t hi)
{
	for (int64_t i = lower(im, lo >> CHUNK_SHIFT); i < im->n; i++) {
		int64_t key = im->keys[i], base = key << CHUNK_SHIFT;
		const irow_t *c = im->chunks[im->rows[i]];

		if (base >= hi)
			break;
		for (int64_t p = lo > base ? lo : base; p < hi && p < base + CHUNK; p++)
			if (c[p - base] >= 0)
				return 1;
	}
	return 0;
}

/* One chunk's piece of a window: pages [lo, hi) at position at. */
struct piece {
	int64_t key, lo, hi, at;
	pte_t *pte;
	irow_t *irow;
};

/* The page at window position p. */
static int64_t page_at(const struct piece *pc, int64_t n, int64_t p)
{
	for (int64_t i = 0; i < n; i++)
		if (p < pc[i].at + pc[i].hi - pc[i].lo)
			return pc[i].lo + p - pc[i].at;
	return -1;
}

/* Whether a window's step left nothing for Python but counting. */
static int plain(const struct tables *t, int64_t status, const int64_t *summary,
		 const struct visit_out *o)
{
	const int64_t *sums = o->sums;

	if (status != STEP_DONE || o->traced || sums[VISIT_PAIRS] || sums[VISIT_MADE])
		return 0;
	if (summary[FRONT_STALE] && !summary[STEP_FREED])
		return 0;	/* (v6: a flagged stale item, for Ksmd._free_rows) */
	for (int64_t i = 0; i < sums[VISIT_DEAD]; i++)
		if (t->fr_ksm[o->dead[i]])
			return 0;	/* (ksmd forgets its node: Memory.free_frames) */
	return 1;
}

/*
 * The windows of pages [state[WALK_START], state[WALK_END]) of one mm, with
 * page table `pt` and item map `im`, as Ksmd._scan_mm makes them: see
 * WALK_* and WALKED_*.  `s` holds the front's outputs (room for
 * WINDOW_CHUNKS chunks) and `o` the step's (dead[] with as much room); `w`
 * is where a window is gathered and what the windows done here did is
 * summed.  Returns WALKED_*.
 */
int64_t ksr_walk(const struct tables *t, const struct directory *pt, const struct directory *im,
		 int64_t *state, struct step *s, const struct visit_args *a,
		 const struct visit_out *o, struct walk *w)
{
	struct visit_args args = *a;
	struct piece pc[WINDOW_CHUNKS];
	int64_t start = state[WALK_START], end = state[WALK_END], budget = state[WALK_BUDGET];
	int64_t visits = state[WALK_VISITS], per_chunk = state[WALK_PER_CHUNK];
	int64_t item_page = state[WALK_ITEM_PAGE], room = state[WALK_ROOM];
	int64_t found = WALKED_END;

	s->free = state[WALK_FREE];
	s->fresh = state[WALK_FRESH];
	s->end = state[WALK_ROWS];
	s->smart = (int32_t)state[WALK_SMART];
	while (start < end) {
		int64_t chunks = (budget - visits) / per_chunk + 1;
		int64_t i = lower(pt, start >> CHUNK_SHIFT), j, last = (end - 1) >> CHUNK_SHIFT;
		int64_t n = 0, n_segs = 0, present = 0, missing = 0, stop, status, free, fresh;
		int64_t *sum = s->summary;
		pte_t *ptes;
		irow_t *imap;

		if (chunks > WINDOW_CHUNKS)
			chunks = WINDOW_CHUNKS;
		if (i >= pt->n || pt->keys[i] > last)
			break;	/* no chunk in the rest of the mapping */
		if (chunks > pt->n - i)
			chunks = pt->n - i;
		j = lower(im, pt->keys[i]);
		for (int64_t c = 0; c < chunks; c++, i++) {
			int64_t key = pt->keys[i], base = key << CHUNK_SHIFT;
			struct piece *p = &pc[c];

			if (key > last) {
				chunks = c;
				break;
			}
			p->key = key;
			p->lo = start > base ? start : base;
			p->hi = end < base + CHUNK ? end : base + CHUNK;
			p->at = n;
			p->pte = (pte_t *)pt->chunks[pt->rows[i]] + (p->lo - base);
			/* the item map's chunk of the same key */
			while (j < im->n && im->keys[j] < key)
				j++;
			p->irow = NULL;
			if (j < im->n && im->keys[j] == key)
				p->irow = (irow_t *)im->chunks[im->rows[j]] + (p->lo - base);
			else
				missing = 1;
			if (n_segs && w->segs[3 * n_segs - 2] == p->lo) {
				w->segs[3 * n_segs - 2] = p->hi;
			} else {
				w->segs[3 * n_segs] = p->lo;
				w->segs[3 * n_segs + 1] = p->hi;
				w->segs[3 * n_segs + 2] = n;
				n_segs++;
			}
			n += p->hi - p->lo;
		}
		state[WALK_CHUNKS] = chunks;
		/* Chunks side by side in memory (rows of one block, mostly) are
		 * stepped in place; others are gathered, and written back. */
		ptes = pc[0].pte;
		imap = pc[0].irow;
		for (int64_t c = 1; c < chunks && ptes; c++)
			if (pc[c].pte != pc[c - 1].pte + (pc[c - 1].hi - pc[c - 1].lo))
				ptes = NULL;
		for (int64_t c = 1; c < chunks && imap; c++)
			if (!pc[c].irow || pc[c].irow != pc[c - 1].irow + (pc[c - 1].hi - pc[c - 1].lo))
				imap = NULL;
		if (!ptes) {
			ptes = w->ptes;
			for (int64_t c = 0; c < chunks; c++)
				memcpy(ptes + pc[c].at, pc[c].pte,
				       (size_t)(pc[c].hi - pc[c].lo) * sizeof(pte_t));
		}
		if (missing) {
			for (int64_t p = 0; p < n && !present; p++)
				present = ptes[p] >= 0;
			if (present) {
				found = WALKED_BEFORE;
				break;
			}
			/* (no item map is made where no page is: nothing happens) */
			per_chunk = 1;
			start = pc[chunks - 1].hi;
			continue;
		}
		if (!imap) {
			imap = w->imap;
			for (int64_t c = 0; c < chunks; c++)
				memcpy(imap + pc[c].at, pc[c].irow,
				       (size_t)(pc[c].hi - pc[c].lo) * sizeof(irow_t));
		}
		if ((item_page < pc[0].lo && items_in(im, item_page, pc[0].lo)) ||
		    s->free + n > t->free_room || w->n_dead + n > state[WALK_DEAD_ROOM] ||
		    (n < budget - visits ? n : budget - visits) > room) {
			found = WALKED_BEFORE;
			break;
		}
		args.visits = visits;
		*s = (struct step){
			.n = n, .ptes = ptes, .imap = imap, .segs = w->segs, .n_segs = n_segs,
			.budget = budget - visits, .free = s->free, .fresh = s->fresh, .end = s->end,
			.smart = s->smart, .pos = s->pos, .cum = s->cum, .kind = s->kind,
			.stale = s->stale, .rows = s->rows, .summary = s->summary,
		};
		memset(o->sums, 0, VISIT_SUMS * sizeof(int64_t));
		free = s->free;
		fresh = s->fresh;
		status = ksr_step(t, s, &args, o);
		if (status == STEP_NONE) {
			per_chunk = 1;
			start = pc[chunks - 1].hi;
			continue;
		}
		state[WALK_STEPPED]++;	/* (summed, as the counts) */
		state[WALK_WINDOW_VISITS] = visits;
		for (int64_t c = 0; c < chunks; c++) {
			if (ptes == w->ptes && o->sums[VISIT_PTES])
				memcpy(pc[c].pte, ptes + pc[c].at,
				       (size_t)(pc[c].hi - pc[c].lo) * sizeof(pte_t));
			if (imap == w->imap && (sum[STEP_ITEMS] || sum[FRONT_STALE]))
				memcpy(pc[c].irow, imap + pc[c].at,
				       (size_t)(pc[c].hi - pc[c].lo) * sizeof(irow_t));
		}
		if (!plain(t, status, sum, o)) {
			state[WALK_STATUS] = status;
			state[WALK_STEP_FREE] = s->free;
			state[WALK_STEP_FRESH] = s->fresh;
			s->free = free;
			s->fresh = fresh;
			found = WALKED_AFTER;
			break;
		}
		state[WALK_SKIPPED] += sum[FRONT_SKIPPED];
		state[WALK_UNSHARED] += sum[FRONT_UNSHARED];
		state[WALK_SCANNED] += sum[FRONT_VISITS];
		state[WALK_HITS] += sum[FRONT_HITS];
		state[WALK_MADE] += sum[STEP_ITEMS];
		state[WALK_FREED] += sum[STEP_FREED];
		for (int v = 0; v < VISIT_SUMS; v++)
			w->sums[v] += o->sums[v];
		memcpy(w->dead + w->n_dead, o->dead, (size_t)o->sums[VISIT_DEAD] * sizeof(int64_t));
		w->n_dead += o->sums[VISIT_DEAD];
		room -= o->sums[VISIT_INSERTED];
		stop = page_at(pc, chunks, sum[FRONT_LAST]);
		item_page = stop + 1;
		visits += sum[FRONT_VISITS];
		{
			/* the chunks the visits came from: up to the last visit's when cut short */
			int64_t used = 0;

			for (int64_t c = 0; c < chunks; c++)
				used += !sum[FRONT_STOPPED] || pc[c].key <= stop >> CHUNK_SHIFT;
			per_chunk = sum[FRONT_VISITS] / used > 1 ? sum[FRONT_VISITS] / used : 1;
		}
		if (sum[FRONT_STOPPED]) {
			state[WALK_STOP] = stop;
			found = WALKED_BUDGET;
			break;
		}
		start = pc[chunks - 1].hi;
	}
	state[WALK_START] = start;
	state[WALK_VISITS] = visits;
	state[WALK_PER_CHUNK] = per_chunk;
	state[WALK_ITEM_PAGE] = item_page;
	state[WALK_FREE] = s->free;
	state[WALK_FRESH] = s->fresh;
	state[WALK_ROOM] = room;
	return found;
}

/* sum(i.bit_length() for i in range(1, m + 1)) (timing._levels) */
static int64_t levels(int64_t m)
{
	int64_t n;

	if (m <= 0)
		return 0;
	n = 64 - __builtin_clzll((unsigned long long)m);
	return (n - 2) * ((int64_t)1 << (n - 1)) + 1 + n * (m - ((int64_t)1 << (n - 1)) + 1);
}

/* timing.batch_cost_ns: work[] priced at clock[CLOCK_PRICES...] */
int64_t ksr_batch_cost(const int64_t *work, const int64_t *clock)
{
	int64_t cost = 0;

	for (int k = 0; k < WORK_FIELDS; k++)
		cost += work[k] * clock[CLOCK_PRICES + k];
	return cost;
}

/*
 * timing.next_wake_ns: the batch lasts its cost at ksmd's share of a CPU;
 * without a sleep the next one starts where it ends (a jiffy later if it
 * cost nothing), else on the tick the timer armed in the jiffy it ends in
 * fires (its expiry rounded up to the next bucket of its wheel level).
 */
int64_t ksr_next_wake(int64_t start, int64_t cost, const int64_t *clock)
{
	int64_t end = start + cost * 100 / clock[CLOCK_SHARE], jiffy = clock[CLOCK_JIFFY];
	int64_t expires, shift = clock[CLOCK_SHIFT];

	if (clock[CLOCK_TIMEOUT] == 0)
		return end > start ? end : start + jiffy;
	expires = end / jiffy + clock[CLOCK_TIMEOUT];
	return (((expires >> shift) + 1) << shift) * jiffy;
}

/* What ksmd did so far, by kind (Ksmd._marks): the counts of timing.Work. */
static void counts(const int64_t *state, const struct walk *w, int64_t *c)
{
	c[WORK_BATCHES] = c[WORK_PASSES] = 0;
	c[WORK_SKIPS] = state[WALK_SKIPPED];
	c[WORK_HITS] = state[WALK_HITS] + w->sums[VISIT_HITS];
	c[WORK_CHECKSUMS] = w->sums[VISIT_CHECKSUMS];
	c[WORK_SEARCHES] = w->sums[VISIT_SEARCHES];
	c[WORK_PAIRS] = w->sums[VISIT_PAIRS];
	c[WORK_MERGES] = w->sums[VISIT_MERGES];
	c[WORK_ZERO_MERGES] = w->sums[VISIT_ZERO];
	c[WORK_ALLOCS] = state[WALK_MADE];
	c[WORK_FREES] = state[WALK_FREED];
	c[WORK_DUPS] = w->sums[VISIT_DUPS];
	c[WORK_UNSTABLE_LEVELS] = c[WORK_STABLE_LEVELS] = 0;
}

/*
 * Wake-ups of ksmd one after the other (Engine._advance, Ksmd.batch), each a
 * batch of state[WALK_BUDGET] visits over the same mapping with ksr_walk(),
 * priced and followed by the next wake-up as Python would, from
 * clock[CLOCK_WAKE] on, until the next wake-up is clock[CLOCK_T] or later
 * (WALKED_BUDGET: every batch ran whole) or a batch stops before its budget
 * (the mapping ends, or a window needs Python: WALKED_END, _BEFORE, _AFTER as
 * ksr_walk() says; that batch is in progress, clock[CLOCK_SINCE] its work so
 * far).  The first batch may be one in progress that an earlier call stopped
 * in (at the end of its mapping: Ksmd.batches goes on in the next): it starts
 * at state[WALK_VISITS] visits, clock[CLOCK_SINCE] its work before the call
 * (0s for a new one); the others at 0.  Chains and new KSM pages are done in
 * C only at times below the clamp, as Ksmd._batch_args says.  The caller
 * zeroes the sums as for ksr_walk().
 */
int64_t ksr_batches(const struct tables *t, const struct directory *pt,
		    const struct directory *im, int64_t *state, struct step *s,
		    const struct visit_args *a, const struct visit_out *o, struct walk *w,
		    int64_t *clock)
{
	struct visit_args args = *a;
	int64_t wake = clock[CLOCK_WAKE], before[WORK_FIELDS], after[WORK_FIELDS];
	int64_t *work = clock + CLOCK_WORK, searched = clock[CLOCK_SEARCHED];

	clock[CLOCK_BATCHES] = clock[CLOCK_CPU] = clock[CLOCK_COST] = clock[CLOCK_LAST] = 0;
	counts(state, w, after);
	for (int k = 0; k < WORK_FIELDS; k++) {
		work[k] = 0;
		after[k] -= clock[CLOCK_SINCE + k];	/* (the first batch's work so far) */
	}
	for (;;) {
		int64_t in_range = wake < clock[CLOCK_PRUNE_CLAMP], found, cost;
		int64_t batch[WORK_FIELDS];

		memcpy(before, after, sizeof(before));
		args.now = in_range ? wake : 0;
		args.chains = args.pairs = (uint8_t)in_range;
		found = ksr_walk(t, pt, im, state, s, &args, o, w);
		counts(state, w, after);
		if (found != WALKED_BUDGET) {
			for (int k = 0; k < WORK_FIELDS; k++)
				clock[CLOCK_SINCE + k] = after[k] - before[k];
			clock[CLOCK_WAKE] = wake;
			return found;
		}
		for (int k = 0; k < WORK_FIELDS; k++)
			batch[k] = after[k] - before[k];
		batch[WORK_BATCHES] = 1;
		batch[WORK_UNSTABLE_LEVELS] =
			levels(searched + after[WORK_SEARCHES]) -
			levels(searched + before[WORK_SEARCHES] > 0 ? searched + before[WORK_SEARCHES]
								    : 0);
		batch[WORK_STABLE_LEVELS] = (batch[WORK_SEARCHES] + batch[WORK_MERGES]) *
					    clock[CLOCK_SHARED_BITS];
		cost = ksr_batch_cost(batch, clock);
		for (int k = 0; k < WORK_FIELDS; k++)
			work[k] += batch[k];
		clock[CLOCK_BATCHES]++;
		clock[CLOCK_CPU] += cost;
		clock[CLOCK_COST] = cost;
		clock[CLOCK_LAST] = wake;
		wake = ksr_next_wake(wake, cost, clock);
		state[WALK_START] = state[WALK_STOP] + 1;
		if (wake >= clock[CLOCK_T]) {
			clock[CLOCK_WAKE] = wake;
			return WALKED_BUDGET;
		}
		state[WALK_VISITS] = 0;
	}
}
