/*
 * ksmreplay's optional accelerator for ContentMap (ksmreplay/contentmap.py):
 * looking up and inserting a column of keys in the open-addressing table,
 * one probe sequence after the other, where numpy takes a round of a dozen
 * operations per probe step.  Same hash, same linear probing, same
 * generations and tombstones as the Python code; the map's contents are the
 * same either way (slots chosen by a batch insert may differ, which nothing
 * observes).  The tests run both.
 */

#include <stddef.h>
#include <stdint.h>

#include "slot.h"

#define MULT 0x9E3779B97F4A7C15ULL
#define ABSENT (-1)

static inline uint64_t slot_of(uint64_t key, int32_t bits)
{
	return (key * MULT) >> (64 - bits);
}

/* The offsets of struct slot's fields, in declaration order, and its size. */
void ksr_slot_layout(int64_t *out)
{
	out[0] = offsetof(struct slot, key);
	out[1] = offsetof(struct slot, val);
	out[2] = offsetof(struct slot, gen);
	out[3] = sizeof(struct slot);
}

/* out[i] = value of keys[i] in the table of 1 << bits slots, or ABSENT. */
void ksr_map_find(int64_t n, const uint64_t *keys, int32_t bits, const struct slot *table,
		  uint32_t now, int64_t *out)
{
	uint64_t mask = (1ULL << bits) - 1;

	for (int64_t i = 0; i < n; i++) {
		uint64_t s = slot_of(keys[i], bits);
		int64_t found = ABSENT;

		while (table[s].gen == now) {
			if (table[s].key == keys[i] && table[s].val >= 0) {
				found = table[s].val;
				break;
			}
			s = (s + 1) & mask;
		}
		out[i] = found;
	}
}

/* Insert keys[i] -> vals[i]: keys distinct and absent, room reserved by the caller. */
void ksr_map_insert(int64_t n, const uint64_t *keys, const int64_t *vals, int32_t bits,
		    struct slot *table, uint32_t now)
{
	uint64_t mask = (1ULL << bits) - 1;

	for (int64_t i = 0; i < n; i++) {
		uint64_t s = slot_of(keys[i], bits);

		while (table[s].gen == now)
			s = (s + 1) & mask;
		table[s].gen = now;
		table[s].key = keys[i];
		table[s].val = vals[i];
	}
}
