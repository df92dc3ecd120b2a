/*
 * One rmap item as ksmreplay/ksm.py keeps it (ksm.ITEM, ItemTable.records):
 * the fields a scan reads together, in one record, so that an item is one
 * cache line away.  The layouts must match field for field (the tests check).
 */

#include <stdint.h>

struct item {
	uint64_t checksum;	/* content at the last non-KSM visit */
	int64_t page;		/* virtual page number */
	int32_t slot;		/* owning mm slot, -1 when free */
	int32_t node;		/* stable node of a STABLE item, else -1 */
	uint16_t flags;		/* ZERO_PAGE_FLAG of the v6 design */
	uint8_t age;		/* smart_scan age */
	uint8_t skips;		/* smart_scan remaining_skips */
	int8_t state;		/* 0 volatile, 1 unstable, 2 stable */
	uint8_t seq;		/* low 8 bits of the pass of an unstable insert */
	uint8_t checked;	/* a checksum was recorded */
	uint8_t pad;
};

_Static_assert(sizeof(struct item) == 32, "struct item is ksm.ITEM: 32 bytes");
