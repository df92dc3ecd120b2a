/*
 * ksmreplay's optional accelerator for ContentMap (ksmreplay/contentmap.py):
 * looking up and inserting a column of keys in the open-addressing table,
 * one probe sequence after the other, where numpy takes a round of a dozen
 * operations per probe step.  Same hash, same linear probing, same
 * generations and tombstones as the Python code; the map's contents are the
 * same either way (slots chosen by a batch insert may differ, which nothing
 * observes).  The tests run both.
 */

#include <stdint.h>

#define MULT 0x9E3779B97F4A7C15ULL
#define ABSENT (-1)

static inline uint64_t slot_of(uint64_t key, int32_t bits)
{
	return (key * MULT) >> (64 - bits);
}

/* out[i] = value of keys[i], or ABSENT. */
void ksr_map_find(int64_t n, const uint64_t *keys, int32_t bits, const uint64_t *tkeys,
		  const int64_t *tvals, const uint32_t *tgen, uint32_t now, int64_t *out)
{
	uint64_t mask = (1ULL << bits) - 1;

	for (int64_t i = 0; i < n; i++) {
		uint64_t s = slot_of(keys[i], bits);
		int64_t found = ABSENT;

		while (tgen[s] == now) {
			if (tkeys[s] == keys[i] && tvals[s] >= 0) {
				found = tvals[s];
				break;
			}
			s = (s + 1) & mask;
		}
		out[i] = found;
	}
}

/* Insert keys[i] -> vals[i]: keys distinct and absent, room reserved by the caller. */
void ksr_map_insert(int64_t n, const uint64_t *keys, const int64_t *vals, int32_t bits,
		    uint64_t *tkeys, int64_t *tvals, uint32_t *tgen, uint32_t now)
{
	uint64_t mask = (1ULL << bits) - 1;

	for (int64_t i = 0; i < n; i++) {
		uint64_t s = slot_of(keys[i], bits);

		while (tgen[s] == now)
			s = (s + 1) & mask;
		tgen[s] = now;
		tkeys[s] = keys[i];
		tvals[s] = vals[i];
	}
}
