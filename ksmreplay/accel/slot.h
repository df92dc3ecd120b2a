/*
 * One slot of a content hash table as ksmreplay/contentmap.py keeps it
 * (contentmap.SLOT, ContentMap's table): key, value and generation side by
 * side, so that a probe reads one cache line where three columns took three.
 * The layouts must match field for field (the tests check).  The probes
 * below are contentmap.py's: Fibonacci hashing, linear probing, a slot
 * occupied when its generation is the current one, tombstones skipped.
 */

#include <stdint.h>

struct slot {
	uint64_t key;	/* the content */
	int64_t val;	/* its value, or DELETED (-2) for a tombstone */
	uint32_t gen;	/* the generation that filled it: occupied when current */
	uint32_t pad;
};

_Static_assert(sizeof(struct slot) == 24, "struct slot is contentmap.SLOT: 24 bytes");

#define SLOT_ABSENT (-1)

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

/* Add key -> val: key absent, room reserved by the caller. */
static inline void slot_insert(struct slot *table, int32_t bits, uint32_t now, uint64_t key,
			       int64_t val)
{
	uint64_t mask = (1ULL << bits) - 1, s = slot_of(key, bits);

	while (table[s].gen == now)
		s = (s + 1) & mask;
	table[s].gen = now;
	table[s].key = key;
	table[s].val = val;
}
