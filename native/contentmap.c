/*
 * ksmreplay's native core for ContentMap (ksmreplay/ksm/contentmap.py):
 * looking up and inserting a column of keys in the open-addressing table,
 * one probe sequence after the other, where numpy takes a round of a dozen
 * operations per probe step.  Same hash, same linear probing, same
 * generations and tombstones as the Python code; the map's contents are the
 * same either way (slots chosen by a batch insert may differ, which nothing
 * observes).  The tests run both.
 */

#include <stdint.h>

#include "ksmreplay.h"

/* out[i] = value of keys[i] in the table of 1 << bits slots, or -1. */
void ksr_map_find(int64_t n, const uint64_t *keys, int32_t bits, const struct slot *table,
		  uint32_t now, int64_t *out)
{
	for (int64_t i = 0; i < n; i++)
		out[i] = slot_find(table, bits, now, keys[i]);
}

/* Insert keys[i] -> vals[i]: keys distinct and absent, room reserved by the caller. */
void ksr_map_insert(int64_t n, const uint64_t *keys, const int64_t *vals, int32_t bits,
		    struct slot *table, uint32_t now)
{
	for (int64_t i = 0; i < n; i++)
		slot_insert(table, bits, now, keys[i], vals[i]);
}

/*
 * Grow a table in place to 1 << bits slots: the first 1 << old_bits hold its
 * entries (generation now), the slots above them are new and empty (a
 * generation below now).  Every live entry moves to its place in the larger
 * table under generation now + 1, which the caller makes the table's (now +
 * 1 must not wrap); tombstones and older entries are dropped.  A slot of the
 * new generation is never moved again, so an entry placed there is found by
 * a probe from its first slot; an entry of the old generation that lies in
 * the way of one is taken out and placed next.  Returns the live entries.
 */
int64_t ksr_map_grow(struct slot *table, int32_t old_bits, int32_t bits, uint32_t now)
{
	uint64_t mask = (1ULL << bits) - 1;
	uint32_t next = now + 1;
	int64_t live = 0;

	for (uint64_t i = 0; i < (1ULL << old_bits); i++) {
		struct slot cur = table[i];

		if (cur.gen != now)
			continue;	/* empty, or placed already */
		table[i].gen = 0;
		while (cur.val >= 0) {
			uint64_t s = slot_of(cur.key, bits);
			struct slot was;

			while (table[s].gen == next)
				s = (s + 1) & mask;
			was = table[s];
			table[s] = (struct slot){ .key = cur.key, .val = cur.val, .gen = next };
			live++;
			if (was.gen != now)
				break;
			cur = was;	/* an old entry in the way: placed next */
		}
	}
	return live;
}
