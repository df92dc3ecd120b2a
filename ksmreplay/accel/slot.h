/*
 * One slot of a content hash table as ksmreplay/contentmap.py keeps it
 * (contentmap.SLOT, ContentMap's table): key, value and generation side by
 * side, so that a probe reads one cache line where three columns took three.
 * The layouts must match field for field (the tests check).
 */

#include <stdint.h>

struct slot {
	uint64_t key;	/* the content */
	int64_t val;	/* its value, or DELETED (-2) for a tombstone */
	uint32_t gen;	/* the generation that filled it: occupied when current */
	uint32_t pad;
};

_Static_assert(sizeof(struct slot) == 24, "struct slot is contentmap.SLOT: 24 bytes");
