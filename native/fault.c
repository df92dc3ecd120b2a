/*
 * ksmreplay's native core: many page writes in order.
 *
 * ksr_write_run() does for each page of an instant's writes what Memory.write
 * does (ksmreplay/vm/memory.py), one page after the other in the order given: a
 * private frame mapped once is written in place; a KSM page, a frame shared
 * copy-on-write, the zero page or no page at all gets a new frame.  New
 * frames come from the `fresh` rows the caller took from its free list;
 * frames whose last mapping goes are listed in `dead` for the caller to
 * free.  The numpy path in memory.py gives the same pages, counters and
 * reports (the tests run both).
 */

#include <stdint.h>

#include "ksmreplay.h"

#define AHEAD 8

/*
 * Page i's PTE is *ptes[i]; it belongs to process owner[i], whose counters
 * are stats[WRITE_STATS * owner[i]...].  Returns the fresh rows used, or -1 when
 * more were needed than n_fresh.
 */
static int64_t write_pages(int64_t n, pte_t *const *ptes, const int32_t *owner,
			   const uint64_t *fp, uint64_t *content, int32_t *mapcount,
			   const uint8_t *ksm, const int64_t *fresh, int64_t n_fresh, int64_t *dead,
			   int64_t *n_dead, int64_t *stats, int64_t *events)
{
	int64_t used = 0, nd = 0;
	for (int64_t i = 0; i < n; i++) {
		/* The pages are spread over memory: fetch ahead what the next ones read. */
		if (i + 2 * AHEAD < n)
			__builtin_prefetch(ptes[i + 2 * AHEAD], 1);
		if (i + AHEAD < n) {
			int64_t ahead = *ptes[i + AHEAD];
			if (ahead >= 0) {
				__builtin_prefetch(&content[ahead], 1);
				__builtin_prefetch(&mapcount[ahead], 1);
				__builtin_prefetch(&ksm[ahead], 0);
			}
		}
		pte_t *pte = ptes[i];
		int64_t *stat = stats + (int64_t)owner[i] * WRITE_STATS;
		int64_t old = *pte;
		if (old >= 0) {
			if (!ksm[old] && mapcount[old] == 1) {
				content[old] = fp[i];
				continue;
			}
			if (ksm[old])
				events[WRITE_COW_KSM]++;
			if (--mapcount[old] == 0)
				dead[nd++] = old;
		} else {
			if (old == PTE_KSM_ZERO) {
				stat[WRITE_KSM_ZERO]--;
				events[WRITE_COW_ZERO]++;
			} else if (old == PTE_ZERO) {
				stat[WRITE_FAULT_ZERO]--;
			}
			stat[WRITE_RSS]++;
		}
		if (used == n_fresh) {
			*n_dead = nd;
			return -1;
		}
		int64_t new = fresh[used++];
		content[new] = fp[i];
		mapcount[new] = 1;
		*pte = (pte_t)new;
	}
	*n_dead = nd;
	return used;
}

/*
 * One instant's writes, events [0, n_events): event e writes count[e] pages
 * of process ev_mm[e] from page first[e] on; the pages' fingerprints follow
 * one another in fp.  Process p's page table is described by dirs[4p..4p+3]:
 * the addresses of its sorted chunk keys and of their rows, their number, and
 * the address of an array of each row's chunk address.
 *
 * The PTE of every page is found first (ptes[], owner[]: room for every page)
 * and nothing is written until all are: where a chunk does not exist yet the
 * call returns -2, found[0] saying how many pages were found, found[1] and
 * found[2] the event and page within it to go on from; the caller makes the
 * chunks and calls again with the same found[] (a process's chunks never
 * move, so the PTEs found stay valid).  Then they are written in order
 * (write_pages(), whose result it returns).
 */
int64_t ksr_write_run(int64_t n_events, const int32_t *ev_mm, const int64_t *first,
		      const int64_t *count, const uint64_t *fp, const int64_t *dirs,
		      pte_t **ptes, int32_t *owner, int64_t *found, uint64_t *content,
		      int32_t *mapcount, const uint8_t *ksm, const int64_t *fresh,
		      int64_t n_fresh, int64_t *dead, int64_t *n_dead, int64_t *stats,
		      int64_t *events)
{
	int64_t k = found[0];

	for (int64_t e = found[1], j = found[2]; e < n_events; e++, j = 0) {
		const int64_t *d = dirs + 4 * (int64_t)ev_mm[e];
		const int64_t *keys = (const int64_t *)d[0], *rows = (const int64_t *)d[1];
		pte_t *const *chunks = (pte_t *const *)d[3];
		int64_t n_keys = d[2], at = -1;

		while (j < count[e]) {
			int64_t page = first[e] + j, key = page >> CHUNK_SHIFT, row;
			pte_t *chunk;
			int64_t end = ((key + 1) << CHUNK_SHIFT) - first[e];

			/* The pages of an event are consecutive: its next chunk is
			 * usually the next key. */
			if (at >= 0 && at + 1 < n_keys && keys[at + 1] == key) {
				at++;
			} else {
				int64_t lo = 0, hi = n_keys;
				while (lo < hi) {
					int64_t mid = lo + (hi - lo) / 2;
					if (keys[mid] < key)
						lo = mid + 1;
					else
						hi = mid;
				}
				if (lo == n_keys || keys[lo] != key) {
					found[0] = k;
					found[1] = e;
					found[2] = j;
					return WRITE_MISSING;
				}
				at = lo;
			}
			row = rows[at];
			chunk = chunks[row];
			for (; j < count[e] && j < end; j++, k++) {
				ptes[k] = chunk + ((first[e] + j) & ((1 << CHUNK_SHIFT) - 1));
				owner[k] = ev_mm[e];
			}
		}
	}
	found[0] = k;
	found[1] = n_events;
	found[2] = 0;
	return write_pages(k, ptes, owner, fp, content, mapcount, ksm, fresh, n_fresh, dead,
			   n_dead, stats, events);
}

/*
 * The frame table's freed rows are a list linked through the rows
 * themselves (vm/frames.py FreeList): a freed row's content holds the row
 * freed before it.  Write the n rows from head on into out[], in order, and
 * return the row after them (meaningless when the list has no more), or
 * FREE_BROKEN if a row of them lies outside the table of n_links rows.
 */
int64_t ksr_free_walk(const uint64_t *links, int64_t n_links, int64_t head, int64_t n,
		      int64_t *out)
{
	for (int64_t i = 0; i < n; i++) {
		if (head < 0 || head >= n_links)
			return FREE_BROKEN;
		out[i] = head;
		head = (int64_t)links[head];
	}
	return head;
}
