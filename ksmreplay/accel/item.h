/*
 * One rmap item as ksmreplay/ksm.py keeps it (ItemTable): two records, in
 * two tables indexed alike.  smart_scan reads and updates a few fields of
 * every item a pass walks, most of them never visited, and the stable
 * node of a KSM page's (ksm.ITEM_HOT, ItemTable.hot): those are one small
 * record, so that a walk reads 8 bytes
 * per page rather than a whole item; the rest are in the other record
 * (ksm.ITEM_COLD, ItemTable.cold).  The layouts must match field for field
 * (the tests check).
 */

#include <stdint.h>

struct item_hot {
	int32_t node;		/* stable node of a STABLE item, else -1 */
	uint8_t age;		/* smart_scan age */
	uint8_t skips;		/* smart_scan remaining_skips */
	int8_t state;		/* 0 volatile, 1 unstable, 2 stable */
	uint8_t seq;		/* low 8 bits of the pass of an unstable insert */
};

struct item_cold {
	uint64_t checksum;	/* content at the last non-KSM visit */
	int64_t page;		/* virtual page number */
	int32_t slot;		/* owning mm slot, -1 when free */
	uint16_t flags;		/* ZERO_PAGE_FLAG of the v6 design */
	uint8_t checked;	/* a checksum was recorded */
	uint8_t pad;
};

_Static_assert(sizeof(struct item_hot) == 8, "struct item_hot is ksm.ITEM_HOT: 8 bytes");
_Static_assert(sizeof(struct item_cold) == 24, "struct item_cold is ksm.ITEM_COLD: 24 bytes");
