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
 * tracer, the v6 design's flags).  Such a window is left to the caller with
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
static int plain(const struct tables *t, int64_t status, const struct visit_args *a,
		 const struct visit_out *o)
{
	const int64_t *sums = o->sums;

	if (status != STEP_DONE || o->traced || a->flag_zero || sums[VISIT_PAIRS] ||
	    sums[VISIT_MADE])
		return 0;
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
	state[WALK_STEPPED] = 0;
	for (int f = WALK_SKIPPED; f < WALK_FIELDS; f++)
		state[f] = 0;
	memset(w->sums, 0, VISIT_SUMS * sizeof(int64_t));
	w->n_dead = 0;
	while (start < end) {
		int64_t chunks = (budget - visits) / per_chunk + 1;
		int64_t i = lower(pt, start >> CHUNK_SHIFT), j, last = (end - 1) >> CHUNK_SHIFT;
		int64_t n = 0, n_segs = 0, present = 0, missing = 0, stop, status, free, fresh;
		int64_t *sum = s->summary;

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
			memcpy(w->ptes + n, p->pte, (size_t)(p->hi - p->lo) * sizeof(pte_t));
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
		if (missing) {
			for (int64_t p = 0; p < n && !present; p++)
				present = w->ptes[p] >= 0;
			if (present) {
				found = WALKED_BEFORE;
				break;
			}
			/* (no item map is made where no page is: nothing happens) */
			per_chunk = 1;
			start = pc[chunks - 1].hi;
			continue;
		}
		for (int64_t c = 0; c < chunks; c++)
			memcpy(w->imap + pc[c].at, pc[c].irow,
			       (size_t)(pc[c].hi - pc[c].lo) * sizeof(irow_t));
		if ((item_page < pc[0].lo && items_in(im, item_page, pc[0].lo)) ||
		    s->free + n > t->free_room || w->n_dead + n > state[WALK_DEAD_ROOM] ||
		    (n < budget - visits ? n : budget - visits) > room) {
			found = WALKED_BEFORE;
			break;
		}
		args.visits = visits;
		*s = (struct step){
			.n = n, .ptes = w->ptes, .imap = w->imap, .segs = w->segs, .n_segs = n_segs,
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
		state[WALK_STEPPED]++;
		state[WALK_WINDOW_VISITS] = visits;
		for (int64_t c = 0; c < chunks; c++) {
			memcpy(pc[c].pte, w->ptes + pc[c].at,
			       (size_t)(pc[c].hi - pc[c].lo) * sizeof(pte_t));
			memcpy(pc[c].irow, w->imap + pc[c].at,
			       (size_t)(pc[c].hi - pc[c].lo) * sizeof(irow_t));
		}
		if (!plain(t, status, a, o)) {
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
