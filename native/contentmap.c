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
