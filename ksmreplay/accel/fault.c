/*
 * ksmreplay's optional write-fault accelerator: many page writes in order.
 *
 * ksr_write_pages() does for each page what Memory.write does (ksmreplay/vm.py),
 * one page after the other in the order given: a private frame mapped once is
 * written in place; a KSM page, a frame shared copy-on-write, the zero page
 * or no page at all gets a new frame.  New frames come from the `fresh`
 * rows the caller took from its free list; frames whose last mapping goes are
 * listed in `dead` for the caller to free.  The pure-numpy path in vm.py
 * gives the same pages, counters and reports (the tests run both).
 */

#include <stdint.h>

#define PTE_ZERO (-2)
#define PTE_KSM_ZERO (-3)
#define CHUNK_SHIFT 9
#define BLOCK_SHIFT 9

enum { STAT_RSS, STAT_KSM_ZERO, STAT_FAULT_ZERO, STATS };
enum { EV_COW_KSM, EV_COW_ZERO };

#define AHEAD 8

static inline int64_t *pte_of(int64_t *const *const *blocks, const int32_t *mm,
			      const int64_t *row, const int64_t *off, int64_t i)
{
	int64_t r = row[i];
	return blocks[mm[i]][r >> BLOCK_SHIFT] + ((r & ((1 << BLOCK_SHIFT) - 1)) << CHUNK_SHIFT) +
	       off[i];
}

/*
 * Page i belongs to process mm[i]; its PTE is entry off[i] of chunk row[i] of
 * that process's page table, whose blocks (BLOCK rows of 1 << CHUNK_SHIFT
 * entries each) start at blocks[mm[i]][b].  Returns the fresh rows used, or
 * -1 when more were needed than n_fresh.
 */
int64_t ksr_write_pages(int64_t n, const int32_t *mm, const int64_t *row, const int64_t *off,
			const uint64_t *fp, int64_t *const *const *blocks, uint64_t *content,
			int32_t *mapcount, const uint8_t *ksm, const int64_t *fresh,
			int64_t n_fresh, int64_t *dead, int64_t *n_dead, int64_t *stats,
			int64_t *events)
{
	int64_t used = 0, nd = 0;
	for (int64_t i = 0; i < n; i++) {
		/* The pages are spread over memory: fetch ahead what the next ones read. */
		if (i + 2 * AHEAD < n)
			__builtin_prefetch(pte_of(blocks, mm, row, off, i + 2 * AHEAD), 1);
		if (i + AHEAD < n) {
			int64_t ahead = *pte_of(blocks, mm, row, off, i + AHEAD);
			if (ahead >= 0) {
				__builtin_prefetch(&content[ahead], 1);
				__builtin_prefetch(&mapcount[ahead], 1);
				__builtin_prefetch(&ksm[ahead], 0);
			}
		}
		int64_t *pte = pte_of(blocks, mm, row, off, i);
		int64_t *stat = stats + (int64_t)mm[i] * STATS;
		int64_t old = *pte;
		if (old >= 0) {
			if (!ksm[old] && mapcount[old] == 1) {
				content[old] = fp[i];
				continue;
			}
			if (ksm[old])
				events[EV_COW_KSM]++;
			if (--mapcount[old] == 0)
				dead[nd++] = old;
		} else {
			if (old == PTE_KSM_ZERO) {
				stat[STAT_KSM_ZERO]--;
				events[EV_COW_ZERO]++;
			} else if (old == PTE_ZERO) {
				stat[STAT_FAULT_ZERO]--;
			}
			stat[STAT_RSS]++;
		}
		if (used == n_fresh) {
			*n_dead = nd;
			return -1;
		}
		int64_t new = fresh[used++];
		content[new] = fp[i];
		mapcount[new] = 1;
		*pte = new;
	}
	*n_dead = nd;
	return used;
}

/*
 * The page-table chunk row of each page: chunk key keys[i] of process mm[i],
 * looked up in that process's sorted chunk keys (dirs[mm] holds the address
 * of its keys, of their rows, and their number).  rows[i] is -1 where the
 * chunk does not exist yet; returns how many those are.
 */
int64_t ksr_chunk_rows(int64_t n, const int32_t *mm, const int64_t *keys, const int64_t *dirs,
		       int64_t *rows)
{
	int64_t missing = 0;
	for (int64_t i = 0; i < n; i++) {
		const int64_t *d = dirs + 3 * (int64_t)mm[i];
		const int64_t *sorted = (const int64_t *)d[0], *found = (const int64_t *)d[1];
		int64_t lo = 0, hi = d[2], key = keys[i];
		while (lo < hi) {
			int64_t mid = lo + (hi - lo) / 2;
			if (sorted[mid] < key)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo < d[2] && sorted[lo] == key) {
			rows[i] = found[lo];
		} else {
			rows[i] = -1;
			missing++;
		}
	}
	return missing;
}
