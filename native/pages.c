/*
 * ksmreplay's native core for record (ksmreplay/record.py): reading another
 * process's pages and naming each one by the trace format's rule, a whole
 * list of runs of pages per call, where Python makes a hash call per page.
 *
 * A page that is one 8-byte little-endian value repeated is named by that
 * value (0: the page of zeros); any other page by the hash function the
 * caller gives (the trace format's xxh3_64, 0 taken as 1).  The bytes are
 * read into the caller's buffer, as many runs as fit at a time, with one
 * process_vm_readv, or with a preadv of /proc/PID/mem per run where the
 * caller gives that file instead; the buffer is small enough to stay in the
 * CPU's cache from the read to the hash.
 */

#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <sys/uio.h>

#include "ksmreplay.h"

#define READ_IOV 1024		/* remote ranges per process_vm_readv (the kernel's IOV_MAX) */

static inline uint64_t word(const uint8_t *p)
{
	uint64_t w;

	memcpy(&w, p, 8);
	return le64toh(w);
}

uint64_t ksr_fingerprint(const uint8_t *page, int64_t page_size, ksr_hash hash)
{
	uint64_t first = word(page), h;

	for (int64_t off = 8; off < page_size; off += 8)
		if (word(page + off) != first) {
			h = hash(page, (size_t)page_size);
			return h ? h : 1;
		}
	return first;
}

void ksr_fingerprint_pages(int64_t n, const uint8_t *data, int64_t page_size, ksr_hash hash,
			   uint64_t *fps)
{
	for (int64_t i = 0; i < n; i++)
		fps[i] = ksr_fingerprint(data + i * page_size, page_size, hash);
}

/* Bytes read by preadv of [addr, addr + len) of mem into buf: fewer on an error (its
 * errno in *error) or at end of file (*error -1). */
static int64_t read_mem(int mem, uint64_t addr, uint8_t *buf, int64_t len, int *error)
{
	int64_t done = 0;

	while (done < len) {
		struct iovec v = { buf + done, (size_t)(len - done) };
		ssize_t got = preadv(mem, &v, 1, (off_t)(addr + (uint64_t)done));

		if (got < 0) {
			if (errno == EINTR)
				continue;
			*error = errno;
			return done;
		}
		if (got == 0) {
			*error = -1;
			return done;
		}
		done += got;
	}
	return done;
}

int64_t ksr_read_pages(int32_t pid, int32_t mem, int64_t n, const uint64_t *runs,
		       int64_t page_size, uint8_t *buffer, int64_t room, ksr_hash hash,
		       uint64_t *fps, int32_t *error)
{
	struct iovec remote[READ_IOV];
	int64_t done = 0, run = 0, into = 0; /* pages fingerprinted; the run and page next */

	*error = 0;
	while (run < n) {
		int64_t want = 0, got = 0; /* pages */
		int k = 0, err = 0;

		while (run < n && want < room && k < READ_IOV) {
			int64_t take = (int64_t)runs[2 * run + 1] - into;

			if (take > room - want)
				take = room - want;
			remote[k].iov_base = (void *)(uintptr_t)(runs[2 * run] +
								 (uint64_t)(into * page_size));
			remote[k].iov_len = (size_t)(take * page_size);
			k++;
			want += take;
			into += take;
			if (into == (int64_t)runs[2 * run + 1]) {
				run++;
				into = 0;
			}
		}
		if (mem < 0) {
			struct iovec local = { buffer, (size_t)(want * page_size) };
			ssize_t bytes;

			do
				bytes = process_vm_readv(pid, &local, 1, remote, (unsigned long)k, 0);
			while (bytes < 0 && errno == EINTR);
			if (bytes < 0)
				err = errno;
			else if (bytes < want * page_size)
				err = EFAULT;
			got = bytes > 0 ? bytes / page_size : 0;
		} else {
			int64_t bytes = 0;

			for (int i = 0; i < k && !err; i++)
				bytes += read_mem(mem, (uint64_t)(uintptr_t)remote[i].iov_base,
						  buffer + bytes, (int64_t)remote[i].iov_len, &err);
			if (err == -1) /* an exiting process reads as nothing */
				err = bytes ? EIO : ESRCH;
			got = bytes / page_size;
		}
		ksr_fingerprint_pages(got, buffer, page_size, hash, fps + done);
		done += got;
		if (err) {
			*error = err;
			return done;
		}
	}
	return done;
}
