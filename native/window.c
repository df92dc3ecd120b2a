/*
 * ksmreplay's native core: the front of one scan window, and the window's
 * step (ksr_step(), at the end: the front, the window's items, visit.c's
 * visits).
 *
 * ksr_window() walks the present pages of a window of page-table entries in
 * address order as Ksmd._walk_window does (ksmreplay/ksm/ksmd.py), makes
 * smart_scan's decision for each (should_skip_rmap_item(): updating the
 * items' age and remaining skips), counts the visits until the budget, and
 * lists the positions that need more than counting, for visit.c: a page
 * without an item, a skipped item still in a tree, every visit other than
 * that of a KSM page already linked to its item, and the item-map entries at
 * pages no longer present (stale items) before the last page handled.  A
 * skipped item in an earlier pass's unstable tree leaves it here (its state
 * and pages_unshared are all that change, in any order), so it is not
 * listed.  Most pages of a settled workload need nothing more.  With
 * keep_flagged (the v6 design), an item flagged ZERO_PAGE_FLAG at a page
 * mapping the zero page is not stale: the pass keeps it.  The tests
 * compare the outcome with the scalar walk's.
 */

#include <stdint.h>

#include "ksmreplay.h"

#define AHEAD 32

/*
 * ptes[i], imap[i]: PTE and item row (-1: none) at window position i.
 * Frames: ksm flag and stable node; items: their hot records (age and skips
 * updated when smart, state when a skipped item leaves an unstable tree of a
 * pass other than seqnr), and their cold ones (the flags, read with
 * keep_flagged).  Outputs have room for n entries: listed positions,
 * the visit count up to and including each, and what each is (a visit, 1 for
 * a skip, LISTED_STALE for a stale item); the stale positions again on their
 * own.  Returns 0; the summary gets the counts, the last
 * position handled (-1: none present), whether the budget stopped the walk
 * and the items that left an unstable tree.
 */
int64_t ksr_window(int64_t n, const pte_t *ptes, const irow_t *imap, const uint8_t *fr_ksm,
		   const int32_t *fr_node, struct item_hot *items, const struct item_cold *cold,
		   int32_t smart, int32_t keep_flagged, int32_t seqnr, int64_t budget,
		   int64_t *out_pos, int64_t *out_cum, uint8_t *out_kind, int64_t *out_stale,
		   int64_t *summary)
{
	int64_t listed = 0, visits = 0, skipped = 0, stale = 0, last = -1, stopped = 0;
	int64_t unshared = 0, hits = 0;

	for (int64_t i = 0; i < n; i++) {
		int64_t pte = ptes[i], row = imap[i];
		struct item_hot *it = row >= 0 ? &items[row] : 0;
		int ksm, skip = 0, wanted;

		/* Frames and items are spread over memory: fetch ahead what the
		 * next pages read. */
		if (i + AHEAD < n && ptes[i + AHEAD] >= 0) {
			int64_t ahead = imap[i + AHEAD];

			__builtin_prefetch(&fr_ksm[ptes[i + AHEAD]], 0);
			__builtin_prefetch(&fr_node[ptes[i + AHEAD]], 0);
			if (ahead >= 0)
				__builtin_prefetch(&items[ahead], 1);
		}

		if (pte < 0) {
			if (row >= 0 && !(keep_flagged && pte != PTE_NONE &&
					  (cold[row].where & ITEM_ZERO_FLAGGED))) {
				out_stale[stale++] = i;
				out_pos[listed] = i;
				out_cum[listed] = visits;
				out_kind[listed++] = LISTED_STALE;
			}
			continue;
		}
		ksm = fr_ksm[pte];
		if (row >= 0 && smart && !ksm) {
			/* should_skip_rmap_item() and skip_age() */
			uint8_t a = it->age, left = it->skips;

			skip = a >= 3 && left > 0;
			it->age = a < AGE_MAX ? a + 1 : AGE_MAX;
			if (a >= 3 && left == 0)
				it->skips = a <= 3 ? 1 : a <= 5 ? 2 : a <= 8 ? 4 : 8;
			else if (skip)
				it->skips = left - 1;
		}
		last = i;
		if (skip) {
			skipped++;
			if (it->state == STATE_UNSTABLE && it->seq != (uint8_t)seqnr) {
				it->state = STATE_NONE;
				unshared++;
			}
			wanted = it->state != STATE_NONE;
		} else {
			visits++;
			wanted = row < 0 || !ksm || it->state != STATE_STABLE ||
				 it->node != fr_node[pte];
		}
		if (wanted) {
			out_pos[listed] = i;
			out_cum[listed] = visits;
			out_kind[listed] = skip ? LISTED_SKIPPED : LISTED_VISIT;
			listed++;
		} else if (!skip) {
			hits++;
		}
		if (!skip && visits == budget) {
			stopped = 1;
			break;
		}
	}
	/* Stale items count only before the last page handled. */
	while (stale > 0 && out_stale[stale - 1] > last)
		stale--;
	while (listed > 0 && out_kind[listed - 1] == LISTED_STALE && out_pos[listed - 1] > last)
		listed--;
	summary[FRONT_LISTED] = listed;
	summary[FRONT_VISITS] = visits;
	summary[FRONT_SKIPPED] = skipped;
	summary[FRONT_STALE] = stale;
	summary[FRONT_LAST] = last;
	summary[FRONT_STOPPED] = stopped;
	summary[FRONT_UNSHARED] = unshared;
	summary[FRONT_HITS] = hits;
	return 0;
}

/*
 * Fresh items for the listed positions without one (s->rows[i] < 0), in
 * address order, as ItemTable.alloc() makes them: rows taken as FreeStack.pop()
 * hands them out (the freed rows from the top of the stack, then the rows
 * never used, lowest first), blank records for the mm slot `slot` and the position's
 * page, and skip_age()'s first age when smart_scan is on and the page is not
 * a KSM page.
 */
static void alloc_items(const struct tables *t, struct step *s, int32_t slot, int64_t listed)
{
	const int64_t *seg = s->segs;

	for (int64_t i = 0; i < listed; i++) {
		int64_t p = s->pos[i], row;

		if (s->rows[i] >= 0)
			continue;
		while (p >= seg[2] + seg[1] - seg[0])
			seg += 3;
		row = s->free > 0 ? t->free_rows[--s->free] : s->fresh++;
		t->items[row] = t->blank_hot;
		t->cold[row] = t->blank_cold;
		t->next[row] = -1;
		t->prev[row] = -1;
		t->cold[row].where = item_where(seg[0] + p - seg[2], slot);
		if (s->smart && !t->fr_ksm[s->ptes[p]])
			t->items[row].age = 1;
		s->imap[p] = (irow_t)row;
		s->rows[i] = row;
	}
}

/*
 * One step of ksmd's scan over a window (Ksmd._scan_window with the native
 * core): the front (ksr_window() above), the item of each listed position,
 * fresh items for the pages without one, the stale positions' map entries
 * cleared, then the events in address order (ksr_visit()); when every event
 * was done, the stale items are freed (ItemTable.release(): off their mm
 * slot, pushed on the free stack in address order), unless one of them
 * carries the v6 design's flag (a->flag_zero), whose freeing changes its
 * mm's counters: the caller then frees them all.  The front's outputs and
 * s->rows stay for the caller, who goes on from where the step stopped: with
 * STEP_ALLOC (too few free rows) nothing but the front was done; with
 * STEP_HANDED the events before summary[STEP_STOP] were.  The caller leaves
 * room on the free stack for s->n freed rows.
 */
int64_t ksr_step(const struct tables *t, struct step *s, const struct visit_args *a,
		 const struct visit_out *o)
{
	int64_t *sum = s->summary, listed, made = 0, freed = 0, stop;
	struct events e;

	ksr_window(s->n, s->ptes, s->imap, t->fr_ksm, t->fr_node, t->items, t->cold, s->smart,
		   a->flag_zero, a->seqnr, s->budget, s->pos, s->cum, s->kind, s->stale, sum);
	sum[STEP_STOP] = 0;
	sum[STEP_ITEMS] = 0;
	sum[STEP_FREED] = 0;
	if (sum[FRONT_LAST] < 0)
		return STEP_NONE;
	listed = sum[FRONT_LISTED];
	for (int64_t i = 0; i < listed; i++) {
		s->rows[i] = s->imap[s->pos[i]];
		made += s->rows[i] < 0;
	}
	if (made > s->free + s->end - s->fresh)
		return STEP_ALLOC;
	for (int64_t j = 0; j < sum[FRONT_STALE]; j++)
		s->imap[s->stale[j]] = -1;
	if (made)
		alloc_items(t, s, a->slot, listed);
	sum[STEP_ITEMS] = made;
	e = (struct events){ listed, s->pos, s->rows, s->kind, s->cum, s->ptes, s->segs, s->n_segs };
	stop = ksr_visit(t, &e, 0, a, o);
	sum[STEP_STOP] = stop;
	if (stop < listed)
		return STEP_HANDED;
	if (a->flag_zero)
		for (int64_t i = 0; i < listed; i++)
			if (s->kind[i] == LISTED_STALE &&
			    (t->cold[s->rows[i]].where & ITEM_ZERO_FLAGGED))
				return STEP_DONE;	/* (the caller's to free) */
	for (int64_t i = 0; i < listed; i++) {
		if (s->kind[i] != LISTED_STALE)
			continue;
		t->cold[s->rows[i]].where = 0;
		t->free_rows[s->free++] = (int32_t)s->rows[i];
		freed++;
	}
	sum[STEP_FREED] = freed;
	return STEP_DONE;
}
