/*
 * ksmreplay's native core: decoding traces.
 *
 * Two functions, called on a buffer of msgpack bytes:
 *
 *   ksr_scan()  decodes consecutive `write` events of the common shape
 *               [t, "write", pid, addr, len, content] with every number a
 *               non-negative integer and content a fingerprint (an int) or an
 *               array of them, into columns.  It stops at the first object of
 *               any other shape, at the end of the buffer, or when a column is
 *               full.  It never judges whether a write is valid (mapped,
 *               aligned, in time order): the caller does, on the columns.
 *   ksr_skip()  finds where the next msgpack object ends, so the caller can
 *               decode that one object with the msgpack library.
 *
 * Anything these functions do not recognise is left to the pure-Python
 * reader, which also words every error; so with or without this file the
 * same trace gives the same events and the same messages.
 */

#include <stdint.h>
#include <string.h>

#include "ksmreplay.h"

enum { OK = 1, NO = 0, SHORT = -1 };

static uint64_t be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* A non-negative integer in any msgpack int encoding. */
static int get_uint(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
	const uint8_t *p = *pp;
	if (p >= end)
		return SHORT;
	uint8_t b = *p;
	int n;
	int is_signed = 0;
	if (b <= 0x7f) {
		*out = b;
		*pp = p + 1;
		return OK;
	}
	switch (b) {
	case 0xcc: n = 1; break;
	case 0xcd: n = 2; break;
	case 0xce: n = 4; break;
	case 0xcf: n = 8; break;
	case 0xd0: n = 1; is_signed = 1; break;
	case 0xd1: n = 2; is_signed = 1; break;
	case 0xd2: n = 4; is_signed = 1; break;
	case 0xd3: n = 8; is_signed = 1; break;
	default: return NO;
	}
	if (end - p < 1 + n)
		return SHORT;
	uint64_t v = be(p + 1, n);
	if (is_signed && (v >> (8 * n - 1)) & 1)
		return NO; /* negative */
	*out = v;
	*pp = p + 1 + n;
	return OK;
}

/* An array header; *count gets the number of items. */
static int get_array(const uint8_t **pp, const uint8_t *end, uint64_t *count)
{
	const uint8_t *p = *pp;
	if (p >= end)
		return SHORT;
	uint8_t b = *p;
	if ((b & 0xf0) == 0x90) {
		*count = b & 0x0f;
		*pp = p + 1;
		return OK;
	}
	int n = b == 0xdc ? 2 : b == 0xdd ? 4 : 0;
	if (!n)
		return NO;
	if (end - p < 1 + n)
		return SHORT;
	*count = be(p + 1, n);
	*pp = p + 1 + n;
	return OK;
}

/* The str "write" in any str encoding. */
static int get_write(const uint8_t **pp, const uint8_t *end)
{
	const uint8_t *p = *pp;
	if (p >= end)
		return SHORT;
	uint8_t b = *p;
	int n;
	uint64_t len;
	if ((b & 0xe0) == 0xa0) {
		n = 0;
		len = b & 0x1f;
	} else {
		n = b == 0xd9 ? 1 : b == 0xda ? 2 : b == 0xdb ? 4 : -1;
		if (n < 0)
			return NO;
		if (end - p < 1 + n)
			return SHORT;
		len = be(p + 1, n);
	}
	if (len != 5)
		return NO;
	if (end - p < 1 + n + 5)
		return SHORT;
	if (memcmp(p + 1 + n, "write", 5) != 0)
		return NO;
	*pp = p + 1 + n + 5;
	return OK;
}

#define TRY(call)                       \
	do {                                \
		int r_ = (call);                \
		if (r_ != OK)                   \
			return r_;                  \
	} while (0)

/*
 * One write event at *pp: its fields into the row `row` of the columns and its
 * fingerprints from fps[nfp] on.  NO for another shape, SHORT when the buffer
 * ends first, SCAN_FULL (as 2) when the fingerprints do not fit.
 */
static int get_event(const uint8_t **pp, const uint8_t *end, int shift, uint64_t max_items,
		     uint64_t max_fill_pages, uint64_t *t, int64_t *pid, uint64_t *addr,
		     uint64_t *len, uint8_t *fill, uint64_t *fps, int64_t nfp, int64_t max_fps,
		     int64_t *used)
{
	const uint8_t *p = *pp;
	uint64_t items, count;
	TRY(get_array(&p, end, &items));
	if (items != 6)
		return NO;
	TRY(get_uint(&p, end, t));
	TRY(get_write(&p, end));
	uint64_t id;
	TRY(get_uint(&p, end, &id));
	if (id == 0 || id > INT64_MAX)
		return NO;
	*pid = (int64_t)id;
	TRY(get_uint(&p, end, addr));
	TRY(get_uint(&p, end, len));
	uint64_t mask = ((uint64_t)1 << shift) - 1;
	uint64_t value;
	int r = get_uint(&p, end, &value);
	if (r == SHORT)
		return SHORT;
	if (r == OK) {
		/* One fingerprint for the whole range: expand it, if the range is sane. */
		if ((*addr | *len) & mask || *len == 0 || (*len >> shift) > max_fill_pages)
			return NO;
		count = *len >> shift;
		if (nfp + (int64_t)count > max_fps)
			return 2;
		for (uint64_t i = 0; i < count; i++)
			fps[nfp + i] = value;
		*fill = 1;
	} else {
		TRY(get_array(&p, end, &count));
		if (count > max_items || count == 0)
			return NO;
		if (nfp + (int64_t)count > max_fps)
			return 2;
		for (uint64_t i = 0; i < count; i++)
			TRY(get_uint(&p, end, &fps[nfp + i]));
		*fill = 0;
	}
	*used = (int64_t)count;
	*pp = p;
	return OK;
}

/*
 * Decode write events from buf[*pos] on, at most max_events of them and
 * max_fps fingerprints in all.  Returns the number decoded; *pos moves past
 * them; *status says why it stopped: SCAN_END (the buffer ends, maybe inside
 * an object), SCAN_OTHER (the object at *pos has another shape), SCAN_FULL.
 * fp_end[i] is the end of event i's fingerprints in fps.
 */
int64_t ksr_scan(const uint8_t *buf, int64_t size, int64_t *pos, int shift, uint64_t max_items,
		 uint64_t max_fill_pages, int64_t max_event_bytes, int64_t max_events,
		 uint64_t *t, int64_t *pid, uint64_t *addr, uint64_t *len, uint8_t *fill,
		 int64_t *fp_end, uint64_t *fps, int64_t max_fps, int32_t *status)
{
	const uint8_t *end = buf + size;
	const uint8_t *p = buf + *pos;
	int64_t n = 0, nfp = 0;
	*status = SCAN_END;
	while (p < end) {
		if (n == max_events) {
			*status = SCAN_FULL;
			break;
		}
		const uint8_t *q = p;
		int64_t used = 0;
		int r = get_event(&q, end, shift, max_items, max_fill_pages, &t[n], &pid[n], &addr[n],
				  &len[n], &fill[n], fps, nfp, max_fps, &used);
		if (r == OK && q - p > max_event_bytes)
			r = NO;
		if (r != OK) {
			*status = r == SHORT ? SCAN_END : r == 2 ? SCAN_FULL : SCAN_OTHER;
			break;
		}
		nfp += used;
		fp_end[n++] = nfp;
		p = q;
	}
	*pos = p - buf;
	return n;
}

/*
 * Where the msgpack object at buf[pos] ends: its end offset, -1 if the
 * buffer ends first, -2 for a byte that starts no msgpack object.
 */
int64_t ksr_skip(const uint8_t *buf, int64_t size, int64_t pos)
{
	const uint8_t *p = buf + pos, *end = buf + size;
	uint64_t pending = 1; /* objects still to skip */
	while (pending) {
		if (p >= end)
			return -1;
		uint8_t b = *p;
		uint64_t body = 0, items = 0;
		int head = 1, n = 0;
		pending--;
		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
		} else if ((b & 0xe0) == 0xa0) {
			body = b & 0x1f;
		} else if ((b & 0xf0) == 0x90) {
			items = b & 0x0f;
		} else if ((b & 0xf0) == 0x80) {
			items = 2 * (uint64_t)(b & 0x0f);
		} else {
			switch (b) {
			case 0xcc: case 0xd0: body = 1; break;
			case 0xcd: case 0xd1: body = 2; break;
			case 0xca: case 0xce: case 0xd2: body = 4; break;
			case 0xcb: case 0xcf: case 0xd3: body = 8; break;
			case 0xd4: body = 2; break;
			case 0xd5: body = 3; break;
			case 0xd6: body = 5; break;
			case 0xd7: body = 9; break;
			case 0xd8: body = 17; break;
			case 0xc4: case 0xd9: n = 1; break;
			case 0xc5: case 0xda: n = 2; break;
			case 0xc6: case 0xdb: n = 4; break;
			case 0xc7: n = 1; body = 1; break; /* ext 8: length, then a type byte */
			case 0xc8: n = 2; body = 1; break;
			case 0xc9: n = 4; body = 1; break;
			case 0xdc: n = 2; items = 1; break;
			case 0xdd: n = 4; items = 1; break;
			case 0xde: n = 2; items = 2; break;
			case 0xdf: n = 4; items = 2; break;
			default: return -2; /* 0xc1 is never used */
			}
			if (n) {
				if (end - p < 1 + n)
					return -1;
				uint64_t v = be(p + 1, n);
				head += n;
				if (items)
					items *= v; /* array or map: items (or key-value pairs) follow */
				else
					body += v;
			}
		}
		if ((uint64_t)(end - p) < head + body)
			return -1;
		p += head + body;
		pending += items;
	}
	return p - buf;
}
