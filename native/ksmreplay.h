/*
 * ksmreplay's native core: the one place its records and constants are
 * defined.  Python reads every one of them from the extension module
 * (ksmreplay._native, see module.c; ksmreplay/native.py gives them names),
 * so that the numpy columns and the C structs cannot drift apart.
 *
 * The core is the fast half of ksmd's scan and of the fault path; the scalar
 * Python ksmd (ksmreplay/ksm/ksmd.py) is the other, readable half, and the place
 * where a KSM rule is read first:
 *
 *   scan.c        decodes the common msgpack `write` events into columns;
 *   fault.c       applies an instant's page writes in order (Memory.write),
 *                 and walks the frames' list of freed rows;
 *   window.c      a scan window's step: the front (smart_scan, counting,
 *                 listing), its new and stale items, and the visits;
 *   walk.c        a batch's windows over one VMA, found and stepped one after
 *                 the other, until one needs Python;
 *   visit.c       the common visits of a window, handing the rare ones back;
 *   contentmap.c  batch lookups and inserts in the content hash tables, and
 *                 their growth in place;
 *   pages.c       record's reading of another process's pages, and their names.
 */

#ifndef KSMREPLAY_H
#define KSMREPLAY_H

#include <stdint.h>
#include <stddef.h>

/* -- page tables (vm/pagetable.py) --------------------------------------- */

/* A page-table entry is a frame row (>= 0) or one of these. */
#define PTE_NONE (-1)		/* no page */
#define PTE_ZERO (-2)		/* the shared zero page, mapped by a read fault */
#define PTE_KSM_ZERO (-3)	/* the shared zero page, placed by ksmd */

#define CHUNK_SHIFT 9		/* 512 entries per page-table chunk */

/*
 * A page-table entry, and an item-map entry (an item row, or -1 for none):
 * the element types of the page tables' and item maps' chunks, and of a scan
 * window's copies of them.  Python reads their sizes (PTE_BYTES, IROW_BYTES)
 * to make its arrays alike.  32 bits hold them: frame rows and item rows stay
 * below 2^31 - 1 (ksmreplay/arrays.py ROW_LIMIT, checked where a table grows,
 * more_rows()), and the PTE_* values are small negatives.
 */
typedef int32_t pte_t;
typedef int32_t irow_t;

/* -- rmap items (ksm/items.py ItemTable) --------------------------------- */

#define STATE_NONE 0		/* volatile: in no tree */
#define STATE_UNSTABLE 1	/* in the unstable tree */
#define STATE_STABLE 2		/* linked to a stable node */

#define AGE_MAX 255		/* smart_scan's age saturates here */
#define SEQNR_MASK 0xff		/* an item keeps the low bits of its pass */
#define ZERO_PAGE_FLAG 0x400	/* the v6 design's flag, beside 0x100 and 0x200 */

/*
 * One rmap item is two records, in two tables indexed alike.  smart_scan
 * reads and updates a few fields of every item a pass walks, most of them
 * never visited, and the stable node of a KSM page's: those are one small
 * record, so that a walk reads 8 bytes per page; the rest are in the other.
 */
struct item_hot {
	int32_t node;		/* stable node of a STABLE item, else -1 */
	uint8_t age;		/* smart_scan age */
	uint8_t skips;		/* smart_scan remaining_skips */
	int8_t state;		/* STATE_* */
	uint8_t seq;		/* low 8 bits of the pass of an unstable insert */
};

struct item_cold {
	uint64_t checksum;	/* content at the last non-KSM visit */
	uint64_t where;		/* page, mm slot and flags: ITEM_* below */
};

/*
 * An item's page, its mm slot and two flags share one word, so that the
 * cold record is 16 bytes:
 *
 *   bits  0-43  the virtual page number: below 2^44, which holds every user
 *               address Linux has (x86-64's 5-level paging: 2^56 bytes) in
 *               pages of 4 KiB, the least a trace has;
 *   bits 44-61  the id of the owning mm slot plus one, 0 for a free item:
 *               ids below ITEM_SLOT_LIMIT (an id is free again once its
 *               slot is gone, so this bounds the mms registered at once);
 *   bit  62     ITEM_CHECKED: a checksum was recorded;
 *   bit  63     ITEM_ZERO_FLAGGED: ZERO_PAGE_FLAG of the v6 design.
 *
 * The bounds are checked where the values are made: a page when its item
 * map chunk is made (ksm/items.py ITEM_PAGE_LIMIT), a slot id when ksmd
 * registers the mm.
 */
#define ITEM_PAGE_BITS 44
#define ITEM_PAGE_MASK ((1ULL << ITEM_PAGE_BITS) - 1)
#define ITEM_SLOT_SHIFT ITEM_PAGE_BITS
#define ITEM_SLOT_BITS 18
#define ITEM_SLOT_LIMIT ((1LL << ITEM_SLOT_BITS) - 1)
#define ITEM_SLOT_MASK (((1ULL << ITEM_SLOT_BITS) - 1) << ITEM_SLOT_SHIFT)
#define ITEM_CHECKED_BIT 62
#define ITEM_ZERO_FLAGGED_BIT 63
#define ITEM_CHECKED (1ULL << ITEM_CHECKED_BIT)
#define ITEM_ZERO_FLAGGED (1ULL << ITEM_ZERO_FLAGGED_BIT)

/* The page of an item. */
static inline int64_t item_page(const struct item_cold *c)
{
	return (int64_t)(c->where & ITEM_PAGE_MASK);
}

/* The mm slot of an item, -1 when it is free. */
static inline int64_t item_slot(const struct item_cold *c)
{
	return (int64_t)((c->where & ITEM_SLOT_MASK) >> ITEM_SLOT_SHIFT) - 1;
}

/* A fresh item's word: at page of slot, unchecked, not flagged. */
static inline uint64_t item_where(int64_t page, int64_t slot)
{
	return (uint64_t)page | ((uint64_t)(slot + 1) << ITEM_SLOT_SHIFT);
}

_Static_assert(sizeof(struct item_hot) == 8, "struct item_hot: 8 bytes");
_Static_assert(sizeof(struct item_cold) == 16, "struct item_cold: 16 bytes");

/* -- the trees (ksm/stable.py, ksm/contentmap.py) ------------------------ */

/*
 * The stable tree's value for a chain: CHAIN_ENTRY + the chain's id.  Node
 * ids and chain ids stay below it (ksm/stable.py checks where they are
 * made), so that every value of a table fits the slot's 32 bits.
 */
#define CHAIN_ENTRY (1LL << 30)

/*
 * One slot of a content hash table: key, value and generation side by side,
 * so that a probe reads one cache line.  Fibonacci hashing, linear probing; a
 * slot is occupied when its generation is the table's current one, and a
 * deleted entry is a tombstone until the next generation or growth.
 */
struct slot {
	uint64_t key;		/* the content */
	int32_t val;		/* its value (a row or an id, below 2^31), or SLOT_DELETED */
	uint32_t gen;		/* the generation that filled it */
};

_Static_assert(sizeof(struct slot) == 16, "struct slot: 16 bytes");

#define SLOT_ABSENT (-1)	/* a lookup found nothing */
#define SLOT_DELETED (-2)	/* a tombstone */

/* The first slot of key's probe sequence in a table of 1 << bits slots. */
static inline uint64_t slot_of(uint64_t key, int32_t bits)
{
	return (key * 0x9E3779B97F4A7C15ULL) >> (64 - bits);
}

/* The value of key, or SLOT_ABSENT. */
static inline int64_t slot_find(const struct slot *table, int32_t bits, uint32_t now,
				uint64_t key)
{
	uint64_t mask = (1ULL << bits) - 1, s = slot_of(key, bits);

	while (table[s].gen == now) {
		if (table[s].key == key && table[s].val >= 0)
			return table[s].val;
		s = (s + 1) & mask;
	}
	return SLOT_ABSENT;
}

/* The slot of key's live entry, or NULL (to change its value, or delete it: SLOT_DELETED). */
static inline struct slot *slot_live(struct slot *table, int32_t bits, uint32_t now,
				     uint64_t key)
{
	uint64_t mask = (1ULL << bits) - 1, s = slot_of(key, bits);

	while (table[s].gen == now) {
		if (table[s].key == key && table[s].val >= 0)
			return &table[s];
		s = (s + 1) & mask;
	}
	return NULL;
}

/* Add key -> val: key absent, room reserved by the caller. */
static inline void slot_insert(struct slot *table, int32_t bits, uint32_t now, uint64_t key,
			       int64_t val)
{
	uint64_t mask = (1ULL << bits) - 1, s = slot_of(key, bits);

	while (table[s].gen == now)
		s = (s + 1) & mask;
	table[s].gen = now;
	table[s].key = key;
	table[s].val = (int32_t)val;
}

/* -- what the functions say ---------------------------------------------- */

/* Why ksr_scan() stopped: end of the buffer, an object of another shape, columns full. */
enum { SCAN_END = 0, SCAN_OTHER = 1, SCAN_FULL = 2 };

/* What a listed position of a window front is (ksr_window() for ksr_visit()). */
enum { LISTED_VISIT = 0, LISTED_SKIPPED = 1, LISTED_STALE = 2 };

/* ksr_window()'s summary. */
enum {
	FRONT_LISTED,		/* positions listed */
	FRONT_VISITS,		/* pages visited */
	FRONT_SKIPPED,		/* pages smart_scan skipped */
	FRONT_STALE,		/* stale positions */
	FRONT_LAST,		/* the last position handled, -1: none present */
	FRONT_STOPPED,		/* the budget stopped the walk */
	FRONT_UNSHARED,		/* skipped items that left an earlier pass's unstable tree */
	FRONT_HITS,		/* visits of a KSM page linked to its item (not listed) */
	FRONT_SUMS
};

/* What ksr_visit() did, summed. */
enum {
	VISIT_SHARED,		/* change of pages_shared */
	VISIT_SHARING,		/* change of pages_sharing */
	VISIT_UNSHARED,		/* change of pages_unshared */
	VISIT_MERGING,		/* change of the mm's merging_pages */
	VISIT_MERGES,		/* merges (PTEs pointed at a KSM page) */
	VISIT_ZERO,		/* zero pages merged: the mm's ksm_zero_ptes, -rss_anon */
	VISIT_INSERTED,		/* entries added to the unstable tree */
	VISIT_DEAD,		/* frames freed (listed in dead[]) */
	VISIT_PTES,		/* PTEs changed */
	/* The kinds of visit (ksmd's CPU model, timing.py Work): */
	VISIT_HITS,		/* visits of a KSM page linked to its item */
	VISIT_CHECKSUMS,	/* visits that stopped at a changed checksum */
	VISIT_SEARCHES,		/* visits that searched the unstable tree (all inserted here) */
	VISIT_TRACED,		/* merges recorded in traced[] (only when tracing) */
	VISIT_DUPS,		/* chain dups looked at (ksmd's CPU model) */
	/* New KSM pages (see made[]): */
	VISIT_PAIRS,		/* pages merged with an unstable-tree partner into a new KSM page */
	VISIT_MADE,		/* stable nodes made (ids next_node on), listed in made[] */
	VISIT_CHAINS,		/* change of stable_node_chains */
	VISIT_DUPS_MADE,	/* change of stable_node_dups */
	VISIT_STABLE_ADDED,	/* entries added to the stable tree's table */
	VISIT_UNSTABLE_DELETED,	/* entries deleted from the unstable tree's table */
	/* The v6 design (visit_args.flag_zero): */
	VISIT_UNFLAGGED,	/* flagged items visited with a normal page: flag cleared */
	VISIT_SUMS
};

/*
 * ksr_visit()'s record of a stable node it made (for a new KSM page), in
 * made[], MADE_FIELDS values per node, in the order of their ids: the chain
 * the node is a dup of (-1: filed in the stable tree as a plain node), and
 * whether that chain was made then (from the plain node filed before).
 */
enum { MADE_CHAIN, MADE_NEW_CHAIN, MADE_FIELDS };

/*
 * What ksr_visit() reads besides the tables: the knobs, the kernel version's
 * rules and ksmd's clock.  A visit's time is that of the batch it falls in:
 * `now` plus `period` for each `sub_budget` visits of the batch call before
 * it (`visits` of them before the window, then the window's own count), or
 * `now` throughout when `sub_budget` is 0.  The caller keeps the times below
 * 2^62 ns, or sets `chains` to 0.
 */
struct visit_args {
	int64_t max_page_sharing;
	int64_t now;		/* ns: the batch call's first batch */
	int64_t sub_budget;	/* visits per batch of the call; 0: one batch */
	int64_t period;		/* ns from one batch of the call to the next */
	int64_t visits;		/* visits of the call before the window */
	int64_t prune_ns;	/* stable_node_chains_prune_millisecs, in whole jiffies (ns) */
	int64_t jiffy_ns;	/* one jiffy (ns) */
	int64_t next_node;	/* the id of the next stable node made */
	int64_t next_chain;	/* the id of the next chain made */
	int64_t room;		/* most stable nodes to make (the columns' and tables' room) */
	int32_t seqnr;		/* the pass (low bits, SEQNR_MASK) */
	int32_t slot;		/* the mm slot of the window's items */
	uint8_t use_zero_pages;
	uint8_t checksum_first;	/* Linux 6.11+'s visit order, else 6.1's (stable tree first) */
	uint8_t collapse_any;	/* a chain of one dup collapses at any lookup (6.11+) */
	uint8_t chains;		/* do the visits that meet a chain (else hand them back) */
	uint8_t pairs;		/* make new KSM pages whose partner is in the window */
	uint8_t flag_zero;	/* the v6 design: a zero-page merge flags the item
				 * (ZERO_PAGE_FLAG), a visit with a normal page clears it */
};

_Static_assert(sizeof(struct visit_args) == 96, "struct visit_args: 96 bytes");

/*
 * ksr_visit()'s record of a merge it made, for the tracepoints (ksmreplay/
 * tracepoints.py): the event's index and the stable node the item joined,
 * or TRACED_ZERO for the zero page.  Recorded only when traced[] is given.
 */
struct traced {
	int64_t event;
	int64_t node;
};

#define TRACED_ZERO (-1)

/* ksr_write_run()'s per-process changes, and its events. */
enum { WRITE_RSS, WRITE_KSM_ZERO, WRITE_FAULT_ZERO, WRITE_STATS };
enum { WRITE_COW_KSM, WRITE_COW_ZERO, WRITE_EVENTS };

/* ksr_write_run(): a chunk is missing (see found[]). */
#define WRITE_MISSING (-2)

/* -- the scan's tables and a window's events ------------------------------ */

/* A content hash table (ksm/contentmap.py ContentMap.table()): its slots. */
struct map {
	struct slot *slots;
	int32_t bits;
	uint32_t now;		/* the current generation */
};

/*
 * The tables ksmd's scan reads and changes, gathered once and kept across
 * calls (native.Tables, made by Ksmd._tables): the Python side makes them
 * again when one of the arrays moves (a table grew) or a tree's generation
 * or size changed.
 */
struct tables {
	/* frames (vm/frames.py FrameTable) */
	const uint64_t *fr_content;
	int32_t *fr_mapcount;
	uint8_t *fr_ksm;
	int32_t *fr_node;
	/* items (ksm/items.py ItemTable): records, hlist links (item numbers
	 * are below 2^31), free rows */
	struct item_hot *items;
	struct item_cold *cold;
	int32_t *next;
	int32_t *prev;
	int32_t *free_rows;	/* the freed rows of the free stack (vm/frames.py
				 * FreeStack), the last freed on top */
	int64_t free_room;	/* its length: freed rows fit below it */
	int64_t n_items;	/* the item table's rows */
	struct item_hot blank_hot;	/* a fresh item's records (ItemTable.alloc) */
	struct item_cold blank_cold;
	/* stable nodes (ksm/stable.py NodeColumns) */
	int32_t *node_size;
	int64_t *node_frame;
	int64_t *head;
	int64_t *dup_next;
	/* chains (ksm/stable.py ChainColumns) */
	int64_t *ch_head;
	int32_t *ch_count;
	int64_t *ch_looked;
	int64_t *ch_prune;
	/* the trees */
	struct map stable, unstable;
};

/*
 * A window's events for ksr_visit(): event i is of item rows[i] at window
 * position pos[i], of kind[i] (LISTED_*), when[i] the visits of the window
 * up to and including it.
 */
struct events {
	int64_t n;
	const int64_t *pos;
	const int64_t *rows;
	const uint8_t *kind;
	const int64_t *when;
	pte_t *ptes;		/* the window's PTEs, by position */
	const int64_t *segs;	/* the window's runs: (first page, end page, first position) */
	int64_t n_segs;
};

/* Where ksr_visit() writes: see VISIT_* and MADE_*. */
struct visit_out {
	int64_t *dead;		/* frames freed: room for the events */
	struct traced *traced;	/* merges made, room for the events; NULL: not tracing */
	int64_t *made;		/* nodes made: room for visit_args.room records */
	int64_t *sums;		/* VISIT_SUMS values, accumulated */
};

/*
 * One window for ksr_step(): its positions' PTEs and items, the budget, and
 * room for the front (n entries each), which the caller reads on when the
 * step stops before the end (STEP_ALLOC, STEP_HANDED).
 */
struct step {
	int64_t n;		/* positions */
	pte_t *ptes;
	irow_t *imap;		/* item of each position (-1: none), updated */
	const int64_t *segs;	/* as struct events */
	int64_t n_segs;
	int64_t budget;
	/* the items' free stack: freed rows popped first, the last freed first,
	 * then the rows never used, [fresh, end), in ascending order */
	int64_t free;		/* freed rows on the stack, updated */
	int64_t fresh;		/* the first row never used, updated */
	int64_t end;		/* the item table's rows */
	int32_t smart;
	int32_t pad;
	/* the front */
	int64_t *pos;
	int64_t *cum;
	uint8_t *kind;
	int64_t *stale;
	int64_t *rows;		/* the item of each listed position */
	int64_t *summary;	/* STEP_SUMS values */
};

/* How ksr_step() ended. */
enum {
	STEP_NONE,		/* no page present: nothing done */
	STEP_ALLOC,		/* the front only: fewer free rows than pages without an item */
	STEP_HANDED,		/* events before summary[STEP_STOP] done, the rest left */
	STEP_DONE		/* every event done, the stale items freed */
};

/* ksr_step()'s summary: the front's (FRONT_*), then these. */
enum {
	STEP_STOP = FRONT_SUMS,	/* the event handed back, or the number of events */
	STEP_ITEMS,		/* items made */
	STEP_FREED,		/* stale items freed */
	STEP_SUMS
};

/* -- a batch's walk of one mapping (walk.c) -------------------------------- */

/*
 * A page table's or an item map's directory (vm/pagetable.py
 * PageTable.directory()): the chunk keys (page >> CHUNK_SHIFT), ascending,
 * each key's row, how many, and each row's chunk (1 << CHUNK_SHIFT entries,
 * pte_t in a page table, irow_t in an item map).
 */
struct directory {
	const int64_t *keys;
	const int64_t *rows;
	int64_t n;
	void *const *chunks;
};

/* Most page-table chunks in one window (ksm/window.py WINDOW_CHUNKS). */
#define WINDOW_CHUNKS 64

/*
 * ksr_walk()'s state, one int64_t each (Ksmd._walk): read at the call,
 * written back at its end.
 */
enum {
	WALK_START,		/* the first page of the next window, updated */
	WALK_END,		/* the end of the mapping (a VMA) walked */
	WALK_BUDGET,		/* the batch call's visits */
	WALK_VISITS,		/* its visits so far, updated */
	WALK_PER_CHUNK,		/* visits per chunk of the last window, updated */
	WALK_ITEM_PAGE,		/* the item cursor (Ksmd.cursor_item_page), updated */
	WALK_FREE,		/* the free stack (struct step's free, fresh, end), */
	WALK_FRESH,		/* updated */
	WALK_ROWS,
	WALK_ROOM,		/* unstable-tree entries that fit before its table must
				 * grow (ContentMap.reserve), updated */
	WALK_SMART,		/* smart_scan */
	WALK_DEAD_ROOM,		/* room in dead[] */
	/* out: the window left to Python (WALKED_BEFORE, WALKED_AFTER) */
	WALK_CHUNKS,		/* its chunks (its first page is WALK_START) */
	WALK_WINDOW_VISITS,	/* the visits before it; else before the last window stepped */
	WALK_STEPPED,		/* windows whose step did something (not STEP_NONE) */
	WALK_STOP,		/* the page of the last visit when the budget ran out */
	WALK_STATUS,		/* the left window's step: STEP_*, and the free stack */
	WALK_STEP_FREE,		/* after it (WALK_FREE and WALK_FRESH are before it) */
	WALK_STEP_FRESH,
	/* out: what the windows done here did, summed (the caller zeroes them) */
	WALK_SKIPPED,		/* front: pages skipped */
	WALK_UNSHARED,		/* front: skipped items out of an earlier pass's tree */
	WALK_SCANNED,		/* front: visits */
	WALK_HITS,		/* front: visits of KSM pages linked to their items */
	WALK_MADE,		/* items made */
	WALK_FREED,		/* stale items freed */
	WALK_FIELDS
};

/* How ksr_walk() ended. */
enum {
	WALKED_END,		/* the mapping is done */
	WALKED_BUDGET,		/* the budget ran out (WALK_STOP) */
	WALKED_BEFORE,		/* before a window it does not start (WALK_CHUNKS) */
	WALKED_AFTER		/* after a window's step that needs Python (WALK_STATUS) */
};

/*
 * What ksr_walk() works in: a window's gathered entries and runs, and where
 * the windows done wholly in C leave their frames freed and visit sums.
 */
struct walk {
	pte_t *ptes;		/* room for WINDOW_CHUNKS chunks */
	irow_t *imap;		/* likewise */
	int64_t *segs;		/* room for WINDOW_CHUNKS runs */
	int64_t *dead;		/* frames freed, state[WALK_DEAD_ROOM] room */
	int64_t n_dead;		/* (the caller zeroes it and sums[]) */
	int64_t *sums;		/* VISIT_SUMS, accumulated */
};

/* -- several batches in one call (walk.c) --------------------------------- */

/* ksmd's work by kind, the fields of timing.Work in its order. */
enum {
	WORK_BATCHES,
	WORK_PASSES,
	WORK_SKIPS,
	WORK_HITS,
	WORK_CHECKSUMS,
	WORK_SEARCHES,
	WORK_PAIRS,
	WORK_MERGES,
	WORK_ZERO_MERGES,
	WORK_ALLOCS,
	WORK_FREES,
	WORK_DUPS,
	WORK_UNSTABLE_LEVELS,
	WORK_STABLE_LEVELS,
	WORK_FIELDS
};

/*
 * ksr_batches()'s clock, one int64_t each (Ksmd.batches): what prices a
 * batch and says when the next one starts (timing.batch_cost_ns and
 * timing.next_wake_ns, whose numbers Python passes in), and what the
 * batches run did.
 */
enum {
	CLOCK_PRICES,		/* ns per unit of each kind of work (WORK_*) */
	CLOCK_T = CLOCK_PRICES + WORK_FIELDS,	/* wake-ups before it run */
	CLOCK_SEARCHED,		/* the pass's unstable-tree searches before the call */
	CLOCK_SHARED_BITS,	/* bit length of pages_shared at the pass start */
	CLOCK_PRUNE_CLAMP,	/* chains and new KSM pages are left to Python from here (ns) */
	CLOCK_TIMEOUT,		/* ksmd's sleep in jiffies (as the timer wheel takes it); 0: none */
	CLOCK_SHIFT,		/* the wheel level's bucket shift for it */
	CLOCK_SHARE,		/* the CPU share ksmd gets, percent (batch_wall_ns) */
	CLOCK_JIFFY,		/* ns */
	CLOCK_WAKE,		/* in: the first batch's start (or the start of the batch in
				 * progress the call goes on with); out: the batch in
				 * progress's start, or the next one's */
	CLOCK_BATCHES,		/* out: batches run whole */
	CLOCK_CPU,		/* out: their CPU time (ns) */
	CLOCK_COST,		/* out: the last one's */
	CLOCK_LAST,		/* out: the last one's start */
	CLOCK_WORK,		/* out: their work, WORK_FIELDS, summed */
	CLOCK_SINCE = CLOCK_WORK + WORK_FIELDS,	/* in and out: the work of the
						 * batch in progress so far (its
						 * counts only; in, 0s unless the
						 * first batch goes on with one) */
	CLOCK_FIELDS = CLOCK_SINCE + WORK_FIELDS
};

/* -- the functions (each file says more) --------------------------------- */

int64_t ksr_scan(const uint8_t *buf, int64_t size, int64_t *pos, int shift, uint64_t max_items,
		 uint64_t max_fill_pages, int64_t max_event_bytes, int64_t max_events,
		 uint64_t *t, int64_t *pid, uint64_t *addr, uint64_t *len, uint8_t *fill,
		 int64_t *fp_end, uint64_t *fps, int64_t max_fps, int32_t *status);
int64_t ksr_skip(const uint8_t *buf, int64_t size, int64_t pos);

int64_t ksr_write_run(int64_t n_events, const int32_t *ev_mm, const int64_t *first,
		      const int64_t *count, const uint64_t *fp, const int64_t *dirs,
		      pte_t **ptes, int32_t *owner, int64_t *found, uint64_t *content,
		      int32_t *mapcount, const uint8_t *ksm, const int64_t *fresh,
		      int64_t n_fresh, int64_t *dead, int64_t *n_dead, int64_t *stats,
		      int64_t *events);

/* ksr_free_walk(): the list leaves the table. */
#define FREE_BROKEN (-2)

int64_t ksr_free_walk(const uint64_t *links, int64_t n_links, int64_t head, int64_t n,
		      int64_t *out);

int64_t ksr_window(int64_t n, const pte_t *ptes, const irow_t *imap, const uint8_t *fr_ksm,
		   const int32_t *fr_node, struct item_hot *items, const struct item_cold *cold,
		   int32_t smart, int32_t keep_flagged, int32_t seqnr, int64_t budget,
		   int64_t *out_pos, int64_t *out_cum, uint8_t *out_kind,
		   int64_t *out_stale, int64_t *summary);

int64_t ksr_visit(const struct tables *t, const struct events *e, int64_t start,
		  const struct visit_args *a, const struct visit_out *o);

int64_t ksr_step(const struct tables *t, struct step *s, const struct visit_args *a,
		 const struct visit_out *o);

int64_t ksr_walk(const struct tables *t, const struct directory *pt, const struct directory *im,
		 int64_t *state, struct step *s, const struct visit_args *a,
		 const struct visit_out *o, struct walk *w);
int64_t ksr_batches(const struct tables *t, const struct directory *pt,
		    const struct directory *im, int64_t *state, struct step *s,
		    const struct visit_args *a, const struct visit_out *o, struct walk *w,
		    int64_t *clock);
int64_t ksr_batch_cost(const int64_t *work, const int64_t *clock);
int64_t ksr_next_wake(int64_t start, int64_t cost, const int64_t *clock);

void ksr_map_find(int64_t n, const uint64_t *keys, int32_t bits, const struct slot *table,
		  uint32_t now, int64_t *out);
void ksr_map_insert(int64_t n, const uint64_t *keys, const int64_t *vals, int32_t bits,
		    struct slot *table, uint32_t now);
int64_t ksr_map_grow(struct slot *table, int32_t old_bits, int32_t bits, uint32_t now);

/* -- recorded pages (record.py, vm/content.py) --------------------------- */

/* The hash of a page that is not one value repeated: the trace format's xxh3_64. */
typedef uint64_t (*ksr_hash)(const void *data, size_t len);

uint64_t ksr_fingerprint(const uint8_t *page, int64_t page_size, ksr_hash hash);
void ksr_fingerprint_pages(int64_t n, const uint8_t *data, int64_t page_size, ksr_hash hash,
			   uint64_t *fps);
int64_t ksr_read_pages(int32_t pid, int32_t mem, int64_t n, const uint64_t *runs,
		       int64_t page_size, uint8_t *buffer, int64_t room, ksr_hash hash,
		       uint64_t *fps, int32_t *error);

#endif
