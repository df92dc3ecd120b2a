/*
 * ksmreplay._native: the native core as a Python extension module.
 *
 * Each function takes numpy arrays (any object with the buffer protocol,
 * C-contiguous) and plain ints, checks every array's item size and kind, and
 * calls the C function of the same name without the ksr_ prefix.  The module
 * also exports the records and constants of ksmreplay.h, which the Python
 * side reads instead of restating them (ksmreplay/native.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>

#include "ksmreplay.h"

/* -- arrays ----------------------------------------------------------------- */

#define MAX_ARRAYS 32

struct held {
	Py_buffer view[MAX_ARRAYS];
	int n;
};

static void release(struct held *h)
{
	while (h->n > 0)
		PyBuffer_Release(&h->view[--h->n]);
}

/*
 * The data of array `o` (argument `name`), held until release(): `size`-byte
 * items of `kind`: 'i' signed integers, 'u' unsigned ones (and booleans for
 * size 1), 'r' records of any layout; writable if `writable`.  NULL with an
 * exception set when it is not such an array.
 */
static void *take(struct held *h, PyObject *o, const char *name, Py_ssize_t size, char kind,
		  int writable, Py_ssize_t *len)
{
	Py_buffer *b = &h->view[h->n];
	int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
	const char *fmt, *ok;
	char last;

	if (PyObject_GetBuffer(o, b, flags) < 0)
		return NULL;
	h->n++;
	if (b->itemsize != size) {
		PyErr_Format(PyExc_TypeError, "%s: items of %zd bytes expected, not %zd", name,
			     size, b->itemsize);
		return NULL;
	}
	if (kind != 'r') {
		fmt = b->format ? b->format : "B";
		last = fmt[strlen(fmt) - 1];
		ok = kind == 'i' ? "bhilq" : "BHILQ?";
		if (!strchr(ok, last)) {
			PyErr_Format(PyExc_TypeError, "%s: %s integers expected, not format %s", name,
				     kind == 'i' ? "signed" : "unsigned", fmt);
			return NULL;
		}
	}
	if (len)
		*len = b->len / size;
	return b->buf;
}

#define TAKE(var, type, obj, size, kind, writable)                                          \
	type var = take(&h, obj, #var, size, kind, writable, NULL);                          \
	if (!var)                                                                             \
		goto fail

#define TAKE_N(var, type, obj, size, kind, writable, n)                                     \
	type var = take(&h, obj, #var, size, kind, writable, &(n));                          \
	if (!var)                                                                             \
		goto fail

/* -- scan.c ------------------------------------------------------------------ */

PyDoc_STRVAR(scan_doc,
	     "scan(buf, pos, shift, max_items, max_fill_pages, max_event_bytes,\n"
	     "     t, pid, addr, len, fill, fp_end, fps) -> (events, pos, status)\n\n"
	     "Decode write events from buf[pos] on into the columns (ksr_scan).");

static PyObject *py_scan(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_buf, *o_t, *o_pid, *o_addr, *o_len, *o_fill, *o_fp_end, *o_fps, *out = NULL;
	long long pos, max_event_bytes;
	unsigned long long max_items, max_fill_pages;
	int shift;
	Py_ssize_t size, max_events, n_pid, n_addr, n_len, n_fill, n_fp_end, max_fps;
	int32_t status = SCAN_END;
	int64_t done, where;

	if (!PyArg_ParseTuple(args, "OLiKKLOOOOOOO", &o_buf, &pos, &shift, &max_items,
			      &max_fill_pages, &max_event_bytes, &o_t, &o_pid, &o_addr, &o_len,
			      &o_fill, &o_fp_end, &o_fps))
		return NULL;
	TAKE_N(buf, const uint8_t *, o_buf, 1, 'u', 0, size);
	TAKE_N(t, uint64_t *, o_t, 8, 'u', 1, max_events);
	TAKE_N(pid, int64_t *, o_pid, 8, 'i', 1, n_pid);
	TAKE_N(addr, uint64_t *, o_addr, 8, 'u', 1, n_addr);
	TAKE_N(len, uint64_t *, o_len, 8, 'u', 1, n_len);
	TAKE_N(fill, uint8_t *, o_fill, 1, 'u', 1, n_fill);
	TAKE_N(fp_end, int64_t *, o_fp_end, 8, 'i', 1, n_fp_end);
	TAKE_N(fps, uint64_t *, o_fps, 8, 'u', 1, max_fps);
	if (n_pid < max_events || n_addr < max_events || n_len < max_events ||
	    n_fill < max_events || n_fp_end < max_events || pos < 0 || pos > size) {
		PyErr_SetString(PyExc_ValueError, "scan: columns shorter than t, or pos outside buf");
		goto fail;
	}
	where = pos;
	Py_BEGIN_ALLOW_THREADS
	done = ksr_scan(buf, size, &where, shift, max_items, max_fill_pages, max_event_bytes,
			max_events, t, pid, addr, len, fill, fp_end, fps, max_fps, &status);
	Py_END_ALLOW_THREADS
	out = Py_BuildValue("LLi", (long long)done, (long long)where, (int)status);
fail:
	release(&h);
	return out;
}

PyDoc_STRVAR(skip_doc,
	     "skip(buf, pos) -> int\n\n"
	     "Where the msgpack object at buf[pos] ends; -1 if incomplete, -2 if not msgpack.");

static PyObject *py_skip(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_buf, *out = NULL;
	long long pos;
	Py_ssize_t size;

	if (!PyArg_ParseTuple(args, "OL", &o_buf, &pos))
		return NULL;
	TAKE_N(buf, const uint8_t *, o_buf, 1, 'u', 0, size);
	if (pos < 0 || pos > size) {
		PyErr_SetString(PyExc_ValueError, "skip: pos outside buf");
		goto fail;
	}
	out = PyLong_FromLongLong(ksr_skip(buf, size, pos));
fail:
	release(&h);
	return out;
}

/* -- fault.c ----------------------------------------------------------------- */

PyDoc_STRVAR(write_run_doc,
	     "write_run(mm, first, count, fps, dirs, ptes, owner, found, content, mapcount,\n"
	     "          ksm, fresh, dead, n_dead, stats, events) -> int\n\n"
	     "An instant's page writes in order (ksr_write_run): the fresh rows used, or\n"
	     "WRITE_MISSING when a chunk is missing (found[] says where to go on).");

static PyObject *py_write_run(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o[16], *out = NULL;
	Py_ssize_t n_events, n_first, n_count, n_fps, n_ptes, n_owner, n_found, n_fresh, n_dead;
	Py_ssize_t n_content, n_mapcount, n_ksm, n_dead_count, n_stats, n_ev;
	int64_t used;

	if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
			      &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13], &o[14],
			      &o[15]))
		return NULL;
	TAKE_N(mm, const int32_t *, o[0], 4, 'i', 0, n_events);
	TAKE_N(first, const int64_t *, o[1], 8, 'i', 0, n_first);
	TAKE_N(count, const int64_t *, o[2], 8, 'i', 0, n_count);
	TAKE_N(fps, const uint64_t *, o[3], 8, 'u', 0, n_fps);
	TAKE(dirs, const int64_t *, o[4], 8, 'i', 0);
	TAKE_N(ptes, pte_t **, o[5], sizeof(pte_t *), 'i', 1, n_ptes);
	TAKE_N(owner, int32_t *, o[6], 4, 'i', 1, n_owner);
	TAKE_N(found, int64_t *, o[7], 8, 'i', 1, n_found);
	TAKE_N(content, uint64_t *, o[8], 8, 'u', 1, n_content);
	TAKE_N(mapcount, int32_t *, o[9], 4, 'i', 1, n_mapcount);
	TAKE_N(ksm, const uint8_t *, o[10], 1, 'u', 0, n_ksm);
	TAKE_N(fresh, const int64_t *, o[11], 8, 'i', 0, n_fresh);
	TAKE_N(dead, int64_t *, o[12], 8, 'i', 1, n_dead);
	TAKE_N(n_dead_out, int64_t *, o[13], 8, 'i', 1, n_dead_count);
	TAKE_N(stats, int64_t *, o[14], 8, 'i', 1, n_stats);
	TAKE_N(events, int64_t *, o[15], 8, 'i', 1, n_ev);
	if (n_first < n_events || n_count < n_events || n_ptes < n_fps || n_owner < n_fps ||
	    n_found < 3 || n_dead < n_fps || n_dead_count < 1 || n_ev < WRITE_EVENTS ||
	    n_content != n_mapcount || n_content != n_ksm) {
		PyErr_SetString(PyExc_ValueError, "write_run: arrays of the wrong lengths");
		goto fail;
	}
	(void)n_stats;
	used = ksr_write_run(n_events, mm, first, count, fps, dirs, ptes, owner, found, content,
			     mapcount, ksm, fresh, n_fresh, dead, n_dead_out, stats, events);
	out = PyLong_FromLongLong(used);
fail:
	release(&h);
	return out;
}

PyDoc_STRVAR(free_walk_doc,
	     "free_walk(links, head, out) -> int\n\n"
	     "out[i] = the i-th row of the list linked through links from head on; the row\n"
	     "after them (ksr_free_walk).");

static PyObject *py_free_walk(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_links, *o_out, *out = NULL;
	long long head;
	Py_ssize_t n_links, n;

	if (!PyArg_ParseTuple(args, "OLO", &o_links, &head, &o_out))
		return NULL;
	TAKE_N(links, const uint64_t *, o_links, 8, 'u', 0, n_links);
	TAKE_N(rows, int64_t *, o_out, 8, 'i', 1, n);
	head = ksr_free_walk(links, n_links, head, n, rows);
	if (head == FREE_BROKEN) {
		PyErr_SetString(PyExc_ValueError, "free_walk: the list leaves the table");
		goto fail;
	}
	out = PyLong_FromLongLong(head);
fail:
	release(&h);
	return out;
}

/* -- window.c ---------------------------------------------------------------- */

PyDoc_STRVAR(window_doc,
	     "window(ptes, imap, fr_ksm, fr_node, items, cold, smart, keep_flagged, seqnr, budget,\n"
	     "       out_pos, out_cum, out_kind, out_stale, summary) -> None\n\n"
	     "The front of a scan window (ksr_window); summary gets FRONT_SUMS values.");

static PyObject *py_window(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o[11], *out = NULL;
	int smart, keep_flagged, seqnr;
	long long budget;
	Py_ssize_t n, n_imap, n_pos, n_cum, n_kind, n_stale, n_summary;

	if (!PyArg_ParseTuple(args, "OOOOOOiiiLOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[10],
			      &smart, &keep_flagged, &seqnr, &budget, &o[5], &o[6], &o[7], &o[8],
			      &o[9]))
		return NULL;
	TAKE_N(ptes, const pte_t *, o[0], sizeof(pte_t), 'i', 0, n);
	TAKE_N(imap, const irow_t *, o[1], sizeof(irow_t), 'i', 0, n_imap);
	TAKE(fr_ksm, const uint8_t *, o[2], 1, 'u', 0);
	TAKE(fr_node, const int32_t *, o[3], 4, 'i', 0);
	TAKE(items, struct item_hot *, o[4], sizeof(struct item_hot), 'r', 1);
	TAKE(cold, const struct item_cold *, o[10], sizeof(struct item_cold), 'r', 0);
	TAKE_N(out_pos, int64_t *, o[5], 8, 'i', 1, n_pos);
	TAKE_N(out_cum, int64_t *, o[6], 8, 'i', 1, n_cum);
	TAKE_N(out_kind, uint8_t *, o[7], 1, 'u', 1, n_kind);
	TAKE_N(out_stale, int64_t *, o[8], 8, 'i', 1, n_stale);
	TAKE_N(summary, int64_t *, o[9], 8, 'i', 1, n_summary);
	if (n_imap != n || n_pos < n || n_cum < n || n_kind < n || n_stale < n ||
	    n_summary < FRONT_SUMS) {
		PyErr_SetString(PyExc_ValueError, "window: arrays of the wrong lengths");
		goto fail;
	}
	ksr_window(n, ptes, imap, fr_ksm, fr_node, items, cold, smart, keep_flagged, seqnr, budget,
		   out_pos, out_cum, out_kind, out_stale, summary);
	out = Py_NewRef(Py_None);
fail:
	release(&h);
	return out;
}

/* -- the scan's tables (struct tables) --------------------------------------- */

/*
 * native.Tables: one struct tables, and the arrays it points into, held for
 * as long as the object lives.  Made again by the Python side whenever an
 * array moves or a tree's bits or generation change (Ksmd._tables).
 */
typedef struct {
	PyObject_HEAD
	struct held h;
	struct tables t;
} TablesObject;

static void tables_dealloc(PyObject *self)
{
	release(&((TablesObject *)self)->h);
	Py_TYPE(self)->tp_free(self);
}

#define TAKE_INTO(h, var, obj, size, kind, writable, n)                                     \
	var = take(h, obj, #var, size, kind, writable, n);                                    \
	if (!var)                                                                             \
		goto fail

PyDoc_STRVAR(tables_doc,
	     "Tables(fr_content, fr_mapcount, fr_ksm, fr_node, hot, cold, hnext, hprev,\n"
	     "       free_rows, blank_hot, blank_cold, node_size, node_frame, head, dup_next,\n"
	     "       ch_head, ch_count, ch_looked, ch_prune,\n"
	     "       st_slots, st_bits, st_now, un_slots, un_bits, un_now)\n\n"
	     "The tables of ksmd's scan (struct tables), for step() and visit().");

static PyObject *tables_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	PyObject *o[21];
	int st_bits, un_bits;
	unsigned int st_now, un_now;
	Py_ssize_t n_frames[4], n_items[4], n_nodes[4], n_chains[4], n_free;
	const struct item_hot *blank_hot;
	const struct item_cold *blank_cold;
	TablesObject *self;
	struct held *h;
	struct tables *t;

	if (kw && PyDict_Size(kw)) {
		PyErr_SetString(PyExc_TypeError, "Tables: no keyword arguments");
		return NULL;
	}
	if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOOOOOOiIOiI", &o[0], &o[1], &o[2], &o[3],
			      &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12],
			      &o[13], &o[14], &o[15], &o[16], &o[17], &o[18], &o[19], &st_bits,
			      &st_now, &o[20], &un_bits, &un_now))
		return NULL;
	self = (TablesObject *)type->tp_alloc(type, 0);
	if (!self)
		return NULL;
	h = &self->h;
	t = &self->t;
	TAKE_INTO(h, t->fr_content, o[0], 8, 'u', 0, &n_frames[0]);
	TAKE_INTO(h, t->fr_mapcount, o[1], 4, 'i', 1, &n_frames[1]);
	TAKE_INTO(h, t->fr_ksm, o[2], 1, 'u', 1, &n_frames[2]);
	TAKE_INTO(h, t->fr_node, o[3], 4, 'i', 1, &n_frames[3]);
	TAKE_INTO(h, t->items, o[4], sizeof(struct item_hot), 'r', 1, &n_items[0]);
	TAKE_INTO(h, t->cold, o[5], sizeof(struct item_cold), 'r', 1, &n_items[1]);
	TAKE_INTO(h, t->next, o[6], 4, 'i', 1, &n_items[2]);
	TAKE_INTO(h, t->prev, o[7], 4, 'i', 1, &n_items[3]);
	TAKE_INTO(h, t->free_rows, o[8], 4, 'i', 1, &n_free);
	TAKE_INTO(h, blank_hot, o[9], sizeof(struct item_hot), 'r', 0, NULL);
	TAKE_INTO(h, blank_cold, o[10], sizeof(struct item_cold), 'r', 0, NULL);
	TAKE_INTO(h, t->node_size, o[11], 4, 'i', 1, &n_nodes[0]);
	TAKE_INTO(h, t->node_frame, o[12], 8, 'i', 1, &n_nodes[1]);
	TAKE_INTO(h, t->head, o[13], 8, 'i', 1, &n_nodes[2]);
	TAKE_INTO(h, t->dup_next, o[14], 8, 'i', 1, &n_nodes[3]);
	TAKE_INTO(h, t->ch_head, o[15], 8, 'i', 1, &n_chains[0]);
	TAKE_INTO(h, t->ch_count, o[16], 4, 'i', 1, &n_chains[1]);
	TAKE_INTO(h, t->ch_looked, o[17], 8, 'i', 1, &n_chains[2]);
	TAKE_INTO(h, t->ch_prune, o[18], 8, 'i', 1, &n_chains[3]);
	TAKE_INTO(h, t->stable.slots, o[19], sizeof(struct slot), 'r', 1, NULL);
	TAKE_INTO(h, t->unstable.slots, o[20], sizeof(struct slot), 'r', 1, NULL);
	for (int i = 1; i < 4; i++) {
		if (n_frames[i] != n_frames[0] || n_items[i] != n_items[0] ||
		    n_nodes[i] != n_nodes[0] || n_chains[i] != n_chains[0]) {
			PyErr_SetString(PyExc_ValueError, "Tables: columns of unequal lengths");
			goto fail;
		}
	}
	t->free_room = n_free;
	t->n_items = n_items[0];
	t->blank_hot = *blank_hot;
	t->blank_cold = *blank_cold;
	t->stable.bits = st_bits;
	t->stable.now = st_now;
	t->unstable.bits = un_bits;
	t->unstable.now = un_now;
	return (PyObject *)self;
fail:
	Py_DECREF(self);
	return NULL;
}

static PyTypeObject tables_type = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "ksmreplay._native.Tables",
	.tp_basicsize = sizeof(TablesObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = tables_doc,
	.tp_new = tables_new,
	.tp_dealloc = tables_dealloc,
};

/* visit()'s and step()'s outputs: struct visit_out, and checks of their room for n events. */
static int take_out(struct held *hp, PyObject **o, Py_ssize_t n, const struct visit_args *a,
		    struct visit_out *out)
{
	Py_ssize_t n_dead, n_traced, n_made, n_sums;

	out->dead = take(hp, o[0], "dead", 8, 'i', 1, &n_dead);
	if (!out->dead)
		return -1;
	out->traced = take(hp, o[1], "traced", sizeof(struct traced), 'r', 1, &n_traced);
	if (!out->traced)
		return -1;
	out->made = take(hp, o[2], "made", 8, 'i', 1, &n_made);
	if (!out->made)
		return -1;
	out->sums = take(hp, o[3], "sums", 8, 'i', 1, &n_sums);
	if (!out->sums)
		return -1;
	if (n_traced == 0)
		out->traced = NULL;
	if (n_dead < n || (out->traced && n_traced < n) || n_sums < VISIT_SUMS || a->room < 0 ||
	    n_made < MADE_FIELDS * a->room) {
		PyErr_SetString(PyExc_ValueError, "outputs of the wrong lengths");
		return -1;
	}
	if (a->jiffy_ns <= 0 || a->sub_budget < 0) {
		PyErr_SetString(PyExc_ValueError, "args out of range");
		return -1;
	}
	return 0;
}

/* -- visit.c ----------------------------------------------------------------- */

PyDoc_STRVAR(visit_doc,
	     "visit(tables, start, pos, rows, kind, when, ptes, segs, args, dead, traced, made,\n"
	     "      sums) -> int\n\n"
	     "A window's events from start on (ksr_visit): the first handed back, or len(pos).\n"
	     "segs: the window's runs, (first page, end page, first position) each.\n"
	     "args: one struct visit_args, as bytes; made: room for args.room records.\n"
	     "traced: struct traced records, room for len(pos), or none (not tracing).");

static PyObject *py_visit(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_tables, *o[11], *out = NULL;
	long long start;
	Py_ssize_t n, n_rows, n_kind, n_when, n_segs, n_args;
	struct visit_out vo;
	struct events e;
	int64_t stop;

	if (!PyArg_ParseTuple(args, "O!LOOOOOOOOOOO", &tables_type, &o_tables, &start, &o[0],
			      &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9],
			      &o[10]))
		return NULL;
	TAKE_N(pos, const int64_t *, o[0], 8, 'i', 0, n);
	TAKE_N(rows, const int64_t *, o[1], 8, 'i', 0, n_rows);
	TAKE_N(kind, const uint8_t *, o[2], 1, 'u', 0, n_kind);
	TAKE_N(when, const int64_t *, o[3], 8, 'i', 0, n_when);
	TAKE(ptes, pte_t *, o[4], sizeof(pte_t), 'i', 1);
	TAKE_N(segs, const int64_t *, o[5], 8, 'i', 0, n_segs);
	/* (bytes, not a record: a record's buffer format is slow to make) */
	TAKE_N(vargs, const struct visit_args *, o[6], 1, 'u', 0, n_args);
	if (n_args != (Py_ssize_t)sizeof(struct visit_args)) {
		PyErr_SetString(PyExc_ValueError, "visit: args of the wrong length");
		goto fail;
	}
	if (take_out(&h, &o[7], n, vargs, &vo) < 0)
		goto fail;
	if (n_rows != n || n_kind != n || n_when != n || start < 0 || start > n || n_segs % 3) {
		PyErr_SetString(PyExc_ValueError, "visit: arrays of the wrong lengths");
		goto fail;
	}
	e = (struct events){ n, pos, rows, kind, when, ptes, segs, n_segs / 3 };
	stop = ksr_visit(&((TablesObject *)o_tables)->t, &e, start, vargs, &vo);
	out = PyLong_FromLongLong(stop);
fail:
	release(&h);
	return out;
}

/*
 * step()'s and walk()'s front and visit buffers, in this order: pos, cum, kind,
 * stale, rows, summary, args, then take_out()'s; room for n pages each.  Sets
 * the front's buffers in *s, the visit args and outputs; -1 with an exception.
 */
static int take_front(struct held *hp, PyObject **o, Py_ssize_t n, const char *who,
		      struct step *s, const struct visit_args **vargs, struct visit_out *vo)
{
	Py_ssize_t n_pos, n_cum, n_kind, n_stale, n_rows, n_summary, n_args;

	s->pos = take(hp, o[0], "pos", 8, 'i', 1, &n_pos);
	s->cum = s->pos ? take(hp, o[1], "cum", 8, 'i', 1, &n_cum) : NULL;
	s->kind = s->cum ? take(hp, o[2], "kind", 1, 'u', 1, &n_kind) : NULL;
	s->stale = s->kind ? take(hp, o[3], "stale", 8, 'i', 1, &n_stale) : NULL;
	s->rows = s->stale ? take(hp, o[4], "rows", 8, 'i', 1, &n_rows) : NULL;
	s->summary = s->rows ? take(hp, o[5], "summary", 8, 'i', 1, &n_summary) : NULL;
	*vargs = s->summary ? take(hp, o[6], "vargs", 1, 'u', 0, &n_args) : NULL;
	if (!*vargs)
		return -1;
	if (n_args != (Py_ssize_t)sizeof(struct visit_args)) {
		PyErr_Format(PyExc_ValueError, "%s: args of the wrong length", who);
		return -1;
	}
	if (n_pos < n || n_cum < n || n_kind < n || n_stale < n || n_rows < n ||
	    n_summary < STEP_SUMS) {
		PyErr_Format(PyExc_ValueError, "%s: front arrays of the wrong lengths", who);
		return -1;
	}
	return take_out(hp, &o[7], n, *vargs, vo);
}

PyDoc_STRVAR(step_doc,
	     "step(tables, ptes, imap, segs, budget, smart, free, fresh, end, pos, cum, kind,\n"
	     "     stale, rows, summary, args, dead, traced, made, sums) -> (status, free, fresh)\n\n"
	     "One step of the scan over a window (ksr_step): STEP_*, the freed rows left on the\n"
	     "free stack and the first item row never used after it.  The free stack holds\n"
	     "free freed rows and has room for len(ptes) more; the rows [fresh, end) were never\n"
	     "used.  pos, cum, kind, stale, rows, dead (and traced, unless empty): room for\n"
	     "len(ptes); summary: STEP_SUMS values.");

static PyObject *py_step(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_tables, *o[14], *out = NULL;
	long long budget, free, fresh, end;
	int smart;
	Py_ssize_t n, n_imap, n_segs;
	const struct tables *t;
	const struct visit_args *vargs;
	struct visit_out vo;
	struct step s = { 0 };
	int64_t status;

	if (!PyArg_ParseTuple(args, "O!OOOLiLLLOOOOOOOOOOO", &tables_type, &o_tables, &o[0],
			      &o[1], &o[2], &budget, &smart, &free, &fresh, &end, &o[3], &o[4],
			      &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13]))
		return NULL;
	t = &((TablesObject *)o_tables)->t;
	TAKE_N(ptes, pte_t *, o[0], sizeof(pte_t), 'i', 1, n);
	TAKE_N(imap, irow_t *, o[1], sizeof(irow_t), 'i', 1, n_imap);
	TAKE_N(segs, const int64_t *, o[2], 8, 'i', 0, n_segs);
	if (take_front(&h, &o[3], n, "step", &s, &vargs, &vo) < 0)
		goto fail;
	if (n_imap != n || n_segs % 3 || n_segs == 0 || free < 0 || free + n > t->free_room ||
	    fresh < 0 || fresh > end || end > t->n_items) {
		PyErr_SetString(PyExc_ValueError, "step: arrays of the wrong lengths");
		goto fail;
	}
	s.n = n;
	s.ptes = ptes;
	s.imap = imap;
	s.segs = segs;
	s.n_segs = n_segs / 3;
	s.budget = budget;
	s.free = free;
	s.fresh = fresh;
	s.end = end;
	s.smart = smart;
	status = ksr_step(t, &s, vargs, &vo);
	out = Py_BuildValue("LLL", (long long)status, (long long)s.free, (long long)s.fresh);
fail:
	release(&h);
	return out;
}

/* -- walk.c ------------------------------------------------------------------ */

/* A directory from PageTable.directory(): addresses and a count. */
static int take_directory(PyObject *o, struct directory *d)
{
	unsigned long long keys, rows, chunks;
	long long n;

	if (!PyArg_ParseTuple(o, "KKLK", &keys, &rows, &n, &chunks))
		return -1;
	if (n < 0 || (n && (!keys || !rows || !chunks))) {
		PyErr_SetString(PyExc_ValueError, "walk: a directory out of range");
		return -1;
	}
	*d = (struct directory){ (const int64_t *)(uintptr_t)keys, (const int64_t *)(uintptr_t)rows,
				 n, (void *const *)(uintptr_t)chunks };
	return 0;
}

PyDoc_STRVAR(walk_doc,
	     "walk(tables, pt, im, state, pos, cum, kind, stale, rows, summary, args, dead,\n"
	     "     traced, made, sums, w_ptes, w_imap, w_segs, w_dead, w_sums[, clock])\n"
	     "     -> (found, dead)\n\n"
	     "A batch's windows over one mapping (ksr_walk), or with clock batches one after\n"
	     "the other (ksr_batches): WALKED_*, and the frames the windows done freed, listed\n"
	     "in w_dead.  pt, im: PageTable.directory() of the mm's page table and item map;\n"
	     "state: WALK_FIELDS values, updated; pos, cum, kind, stale, rows, dead: room for\n"
	     "WINDOW_CHUNKS chunks; w_ptes, w_imap: as much room (PTE_BYTES and IROW_BYTES\n"
	     "items); w_segs: room for WINDOW_CHUNKS runs; w_dead: state[WALK_DEAD_ROOM] room;\n"
	     "w_sums: VISIT_SUMS values; clock: CLOCK_FIELDS values, updated.");

static PyObject *py_walk(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_tables, *o_pt, *o_im, *o[17], *o_clock = Py_None, *out = NULL;
	Py_ssize_t n_state, n_ptes, n_imap, n_segs, n_dead, n_sums, n_clock = CLOCK_FIELDS;
	int64_t *clock = NULL;
	const Py_ssize_t room = (Py_ssize_t)WINDOW_CHUNKS << CHUNK_SHIFT;
	struct directory pt, im;
	const struct tables *t;
	const struct visit_args *vargs;
	struct visit_out vo;
	struct step s = { 0 };
	struct walk w;
	int64_t found;

	if (!PyArg_ParseTuple(args, "O!O!O!OOOOOOOOOOOOOOOOO|O", &tables_type, &o_tables,
			      &PyTuple_Type, &o_pt, &PyTuple_Type, &o_im, &o[0], &o[1], &o[2],
			      &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11],
			      &o[12], &o[13], &o[14], &o[15], &o[16], &o_clock))
		return NULL;
	t = &((TablesObject *)o_tables)->t;
	if (take_directory(o_pt, &pt) < 0 || take_directory(o_im, &im) < 0)
		return NULL;
	TAKE_N(state, int64_t *, o[0], 8, 'i', 1, n_state);
	if (take_front(&h, &o[1], room, "walk", &s, &vargs, &vo) < 0)
		goto fail;
	TAKE_N(w_ptes, pte_t *, o[12], sizeof(pte_t), 'i', 1, n_ptes);
	TAKE_N(w_imap, irow_t *, o[13], sizeof(irow_t), 'i', 1, n_imap);
	TAKE_N(w_segs, int64_t *, o[14], 8, 'i', 1, n_segs);
	TAKE_N(w_dead, int64_t *, o[15], 8, 'i', 1, n_dead);
	TAKE_N(w_sums, int64_t *, o[16], 8, 'i', 1, n_sums);
	if (o_clock != Py_None) {
		clock = take(&h, o_clock, "clock", 8, 'i', 1, &n_clock);
		if (!clock)
			goto fail;
	}
	if (n_clock != CLOCK_FIELDS || (clock && (clock[CLOCK_SHARE] <= 0 ||
						  clock[CLOCK_JIFFY] <= 0 ||
						  clock[CLOCK_SHIFT] < 0 ||
						  clock[CLOCK_SHIFT] > 60)) ||
	    n_state != WALK_FIELDS || n_ptes < room || n_imap < room || n_segs < 3 * WINDOW_CHUNKS || n_dead < state[WALK_DEAD_ROOM] ||
	    n_sums < VISIT_SUMS || state[WALK_FREE] < 0 || state[WALK_FRESH] < 0 ||
	    state[WALK_FRESH] > state[WALK_ROWS] || state[WALK_ROWS] > t->n_items ||
	    state[WALK_FREE] > t->free_room || state[WALK_PER_CHUNK] < 1 ||
	    state[WALK_VISITS] >= state[WALK_BUDGET] || state[WALK_DEAD_ROOM] < 0) {
		PyErr_SetString(PyExc_ValueError, "walk: arrays or state out of range");
		goto fail;
	}
	w = (struct walk){ .ptes = w_ptes, .imap = w_imap, .segs = w_segs, .dead = w_dead,
			   .sums = w_sums };
	memset(w_sums, 0, VISIT_SUMS * sizeof(int64_t));
	state[WALK_STEPPED] = 0;
	for (int f = WALK_SKIPPED; f < WALK_FIELDS; f++)
		state[f] = 0;
	if (clock)
		found = ksr_batches(t, &pt, &im, state, &s, vargs, &vo, &w, clock);
	else
		found = ksr_walk(t, &pt, &im, state, &s, vargs, &vo, &w);
	out = Py_BuildValue("LL", (long long)found, (long long)w.n_dead);
fail:
	release(&h);
	return out;
}

PyDoc_STRVAR(clock_doc,
	     "clock(work, clock, start) -> (cost, wake)\n\n"
	     "What a batch of work (WORK_FIELDS values) costs and when the next one starts\n"
	     "after it started at start, by clock (CLOCK_FIELDS values): ksr_batch_cost and\n"
	     "ksr_next_wake, as ksr_batches uses them.");

static PyObject *py_clock(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_work, *o_clock, *out = NULL;
	Py_ssize_t n_work, n_clock;
	long long start;
	int64_t cost;

	if (!PyArg_ParseTuple(args, "OOL", &o_work, &o_clock, &start))
		return NULL;
	TAKE_N(work, const int64_t *, o_work, 8, 'i', 0, n_work);
	TAKE_N(clock, const int64_t *, o_clock, 8, 'i', 0, n_clock);
	if (n_work != WORK_FIELDS || n_clock != CLOCK_FIELDS || clock[CLOCK_SHARE] <= 0 ||
	    clock[CLOCK_JIFFY] <= 0 || clock[CLOCK_SHIFT] < 0 || clock[CLOCK_SHIFT] > 60) {
		PyErr_SetString(PyExc_ValueError, "clock: arrays or clock out of range");
		goto fail;
	}
	cost = ksr_batch_cost(work, clock);
	out = Py_BuildValue("LL", (long long)cost, (long long)ksr_next_wake(start, cost, clock));
fail:
	release(&h);
	return out;
}

/* -- contentmap.c ------------------------------------------------------------ */

PyDoc_STRVAR(map_find_doc,
	     "map_find(keys, bits, table, now, out) -> None\n\n"
	     "out[i] = the value of keys[i] in the table, or SLOT_ABSENT (ksr_map_find).");

static PyObject *py_map_find(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_keys, *o_table, *o_out, *out = NULL;
	int bits;
	unsigned int now;
	Py_ssize_t n, n_table, n_out;

	if (!PyArg_ParseTuple(args, "OiOIO", &o_keys, &bits, &o_table, &now, &o_out))
		return NULL;
	TAKE_N(keys, const uint64_t *, o_keys, 8, 'u', 0, n);
	TAKE_N(table, const struct slot *, o_table, sizeof(struct slot), 'r', 0, n_table);
	TAKE_N(result, int64_t *, o_out, 8, 'i', 1, n_out);
	if (n_out < n || bits < 1 || bits > 62 || n_table != ((Py_ssize_t)1 << bits)) {
		PyErr_SetString(PyExc_ValueError, "map_find: arrays of the wrong lengths");
		goto fail;
	}
	ksr_map_find(n, keys, bits, table, now, result);
	out = Py_NewRef(Py_None);
fail:
	release(&h);
	return out;
}

PyDoc_STRVAR(map_insert_doc,
	     "map_insert(keys, vals, bits, table, now) -> None\n\n"
	     "Insert keys[i] -> vals[i], keys distinct and absent, room made (ksr_map_insert).");

static PyObject *py_map_insert(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_keys, *o_vals, *o_table, *out = NULL;
	int bits;
	unsigned int now;
	Py_ssize_t n, n_vals, n_table;

	if (!PyArg_ParseTuple(args, "OOiOI", &o_keys, &o_vals, &bits, &o_table, &now))
		return NULL;
	TAKE_N(keys, const uint64_t *, o_keys, 8, 'u', 0, n);
	TAKE_N(vals, const int64_t *, o_vals, 8, 'i', 0, n_vals);
	TAKE_N(table, struct slot *, o_table, sizeof(struct slot), 'r', 1, n_table);
	if (n_vals != n || bits < 1 || bits > 62 || n_table != ((Py_ssize_t)1 << bits)) {
		PyErr_SetString(PyExc_ValueError, "map_insert: arrays of the wrong lengths");
		goto fail;
	}
	ksr_map_insert(n, keys, vals, bits, table, now);
	out = Py_NewRef(Py_None);
fail:
	release(&h);
	return out;
}

PyDoc_STRVAR(map_grow_doc,
	     "map_grow(table, old_bits, bits, now) -> int\n\n"
	     "Move the entries of a table grown in place from 1 << old_bits slots to\n"
	     "1 << bits (the new ones empty) to their places under generation now + 1;\n"
	     "the live entries (ksr_map_grow).");

static PyObject *py_map_grow(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_table, *out = NULL;
	int old_bits, bits;
	unsigned int now;
	Py_ssize_t n_table;

	if (!PyArg_ParseTuple(args, "OiiI", &o_table, &old_bits, &bits, &now))
		return NULL;
	TAKE_N(table, struct slot *, o_table, sizeof(struct slot), 'r', 1, n_table);
	if (old_bits < 1 || old_bits > bits || bits > 62 || n_table != ((Py_ssize_t)1 << bits) ||
	    now == UINT32_MAX) {
		PyErr_SetString(PyExc_ValueError, "map_grow: a table of the wrong length");
		goto fail;
	}
	out = PyLong_FromLongLong(ksr_map_grow(table, old_bits, bits, now));
fail:
	release(&h);
	return out;
}

/* -- pages.c ----------------------------------------------------------------- */

/* The hash function at address `a` (an int), or NULL with an exception set. */
static ksr_hash hash_at(unsigned long long a)
{
	if (!a) {
		PyErr_SetString(PyExc_ValueError, "no hash function");
		return NULL;
	}
	return (ksr_hash)(uintptr_t)a;
}

PyDoc_STRVAR(fingerprint_pages_doc,
	     "fingerprint_pages(data, page_size, hash, out) -> None\n\n"
	     "out[i] = the fingerprint of page i of data; hash: the address of the\n"
	     "hash function (ksr_fingerprint_pages).");

static PyObject *py_fingerprint_pages(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_data, *o_out, *out = NULL;
	long long page_size;
	unsigned long long address;
	Py_ssize_t size, n_out;
	ksr_hash hash;

	if (!PyArg_ParseTuple(args, "OLKO", &o_data, &page_size, &address, &o_out))
		return NULL;
	TAKE_N(data, const uint8_t *, o_data, 1, 'u', 0, size);
	TAKE_N(fps, uint64_t *, o_out, 8, 'u', 1, n_out);
	if (!(hash = hash_at(address)))
		goto fail;
	if (page_size < 8 || page_size % 8 || size % page_size || n_out < size / page_size) {
		PyErr_SetString(PyExc_ValueError, "fingerprint_pages: not whole pages, or out short");
		goto fail;
	}
	Py_BEGIN_ALLOW_THREADS
	ksr_fingerprint_pages(size / page_size, data, page_size, hash, fps);
	Py_END_ALLOW_THREADS
	out = Py_NewRef(Py_None);
fail:
	release(&h);
	return out;
}

PyDoc_STRVAR(read_pages_doc,
	     "read_pages(pid, mem, runs, page_size, buffer, hash, out) -> (pages, errno)\n\n"
	     "Read the runs (address, pages) of process pid (through the file mem when\n"
	     "mem >= 0) into buffer, and fingerprint each page into out: the pages done,\n"
	     "and 0 or the errno of the read that stopped (ksr_read_pages).");

static PyObject *py_read_pages(PyObject *self, PyObject *args)
{
	struct held h = { .n = 0 };
	PyObject *o_runs, *o_buffer, *o_out, *out = NULL;
	int pid, mem;
	long long page_size;
	unsigned long long address;
	Py_ssize_t n_runs, size, n_out;
	int64_t want = 0, done;
	int32_t error;
	ksr_hash hash;

	if (!PyArg_ParseTuple(args, "iiOLOKO", &pid, &mem, &o_runs, &page_size, &o_buffer,
			      &address, &o_out))
		return NULL;
	TAKE_N(runs, const uint64_t *, o_runs, 8, 'u', 0, n_runs);
	TAKE_N(buffer, uint8_t *, o_buffer, 1, 'u', 1, size);
	TAKE_N(fps, uint64_t *, o_out, 8, 'u', 1, n_out);
	if (!(hash = hash_at(address)))
		goto fail;
	for (Py_ssize_t i = 1; i < n_runs; i += 2)
		want += (int64_t)runs[i];
	if (n_runs % 2 || page_size < 8 || page_size % 8 || size < page_size || n_out < want) {
		PyErr_SetString(PyExc_ValueError, "read_pages: runs not pairs, or buffer or out short");
		goto fail;
	}
	Py_BEGIN_ALLOW_THREADS
	done = ksr_read_pages(pid, mem, n_runs / 2, runs, page_size, buffer, size / page_size, hash,
			      fps, &error);
	Py_END_ALLOW_THREADS
	out = Py_BuildValue("Li", (long long)done, (int)error);
fail:
	release(&h);
	return out;
}

/* -- the module -------------------------------------------------------------- */

static PyMethodDef methods[] = {
	{ "scan", py_scan, METH_VARARGS, scan_doc },
	{ "skip", py_skip, METH_VARARGS, skip_doc },
	{ "write_run", py_write_run, METH_VARARGS, write_run_doc },
	{ "window", py_window, METH_VARARGS, window_doc },
	{ "visit", py_visit, METH_VARARGS, visit_doc },
	{ "step", py_step, METH_VARARGS, step_doc },
	{ "walk", py_walk, METH_VARARGS, walk_doc },
	{ "clock", py_clock, METH_VARARGS, clock_doc },
	{ "map_find", py_map_find, METH_VARARGS, map_find_doc },
	{ "map_insert", py_map_insert, METH_VARARGS, map_insert_doc },
	{ "map_grow", py_map_grow, METH_VARARGS, map_grow_doc },
	{ "free_walk", py_free_walk, METH_VARARGS, free_walk_doc },
	{ "fingerprint_pages", py_fingerprint_pages, METH_VARARGS, fingerprint_pages_doc },
	{ "read_pages", py_read_pages, METH_VARARGS, read_pages_doc },
	{ NULL, NULL, 0, NULL },
};

/* A record's layout as numpy.dtype() takes it: names, formats, offsets, itemsize. */
struct field {
	const char *name;
	const char *format;
	Py_ssize_t offset;
};

static PyObject *layout(const struct field *fields, Py_ssize_t size)
{
	PyObject *names = PyList_New(0), *formats = PyList_New(0), *offsets = PyList_New(0);
	PyObject *out = NULL;

	if (!names || !formats || !offsets)
		goto done;
	for (const struct field *f = fields; f->name; f++) {
		PyObject *name = PyUnicode_FromString(f->name);
		PyObject *format = PyUnicode_FromString(f->format);
		PyObject *offset = PyLong_FromSsize_t(f->offset);
		int bad = !name || !format || !offset || PyList_Append(names, name) ||
			  PyList_Append(formats, format) || PyList_Append(offsets, offset);

		Py_XDECREF(name);
		Py_XDECREF(format);
		Py_XDECREF(offset);
		if (bad)
			goto done;
	}
	out = Py_BuildValue("{sOsOsOsn}", "names", names, "formats", formats, "offsets", offsets,
			    "itemsize", size);
done:
	Py_XDECREF(names);
	Py_XDECREF(formats);
	Py_XDECREF(offsets);
	return out;
}

#define FIELD(type, name, format) { #name, format, offsetof(struct type, name) }

static const struct field item_hot_fields[] = {
	FIELD(item_hot, node, "<i4"),  FIELD(item_hot, age, "u1"), FIELD(item_hot, skips, "u1"),
	FIELD(item_hot, state, "i1"),  FIELD(item_hot, seq, "u1"), { NULL, NULL, 0 },
};

static const struct field item_cold_fields[] = {
	FIELD(item_cold, checksum, "<u8"),
	FIELD(item_cold, where, "<u8"),
	{ NULL, NULL, 0 },
};

static const struct field traced_fields[] = {
	FIELD(traced, event, "<i8"),
	FIELD(traced, node, "<i8"),
	{ NULL, NULL, 0 },
};

static const struct field visit_args_fields[] = {
	FIELD(visit_args, max_page_sharing, "<i8"),
	FIELD(visit_args, now, "<i8"),
	FIELD(visit_args, sub_budget, "<i8"),
	FIELD(visit_args, period, "<i8"),
	FIELD(visit_args, visits, "<i8"),
	FIELD(visit_args, prune_ns, "<i8"),
	FIELD(visit_args, jiffy_ns, "<i8"),
	FIELD(visit_args, next_node, "<i8"),
	FIELD(visit_args, next_chain, "<i8"),
	FIELD(visit_args, room, "<i8"),
	FIELD(visit_args, seqnr, "<i4"),
	FIELD(visit_args, slot, "<i4"),
	FIELD(visit_args, use_zero_pages, "u1"),
	FIELD(visit_args, checksum_first, "u1"),
	FIELD(visit_args, collapse_any, "u1"),
	FIELD(visit_args, chains, "u1"),
	FIELD(visit_args, pairs, "u1"),
	FIELD(visit_args, flag_zero, "u1"),
	{ NULL, NULL, 0 },
};

static const struct field slot_fields[] = {
	FIELD(slot, key, "<u8"),
	FIELD(slot, val, "<i4"),
	FIELD(slot, gen, "<u4"),
	{ NULL, NULL, 0 },
};

/* PyModule_AddObject(), which steals the reference only when it succeeds. */
static int add(PyObject *m, const char *name, PyObject *value)
{
	if (!value)
		return -1;
	if (PyModule_AddObject(m, name, value) < 0) {
		Py_DECREF(value);
		return -1;
	}
	return 0;
}

static int exec_module(PyObject *m)
{
	const struct {
		const char *name;
		long long value;
	} constants[] = {
#define C(name) { #name, name }
		C(PTE_NONE),	  C(PTE_ZERO),	    C(PTE_KSM_ZERO),  C(CHUNK_SHIFT),
		C(STATE_NONE),	  C(STATE_UNSTABLE), C(STATE_STABLE), C(AGE_MAX),
		C(SEQNR_MASK),	  C(ZERO_PAGE_FLAG), C(CHAIN_ENTRY),  C(SLOT_ABSENT),
		C(SLOT_DELETED),  C(SCAN_END),	    C(SCAN_OTHER),    C(SCAN_FULL),
		C(LISTED_VISIT),  C(LISTED_SKIPPED), C(LISTED_STALE), C(FRONT_LISTED),
		C(FRONT_VISITS),  C(FRONT_SKIPPED), C(FRONT_STALE),   C(FRONT_LAST),
		C(FRONT_STOPPED), C(FRONT_UNSHARED), C(FRONT_HITS),   C(FRONT_SUMS),
		C(VISIT_SHARED),  C(VISIT_SHARING), C(VISIT_UNSHARED), C(VISIT_MERGING),
		C(VISIT_MERGES),  C(VISIT_ZERO),    C(VISIT_INSERTED), C(VISIT_DEAD),
		C(VISIT_PTES),	  C(VISIT_HITS),    C(VISIT_CHECKSUMS), C(VISIT_SEARCHES),
		C(VISIT_TRACED),  C(VISIT_DUPS),    C(TRACED_ZERO),
		C(VISIT_PAIRS),	  C(VISIT_MADE),    C(VISIT_CHAINS),  C(VISIT_DUPS_MADE),
		C(VISIT_STABLE_ADDED), C(VISIT_UNSTABLE_DELETED), C(VISIT_UNFLAGGED),
		C(MADE_CHAIN),
		C(MADE_NEW_CHAIN), C(MADE_FIELDS),
		C(VISIT_SUMS),	  C(WRITE_RSS),	    C(WRITE_KSM_ZERO), C(WRITE_FAULT_ZERO),
		C(WRITE_STATS),	  C(WRITE_COW_KSM), C(WRITE_COW_ZERO), C(WRITE_EVENTS),
		C(WRITE_MISSING),  C(STEP_NONE),    C(STEP_ALLOC),    C(STEP_HANDED),
		C(STEP_DONE),	  C(STEP_STOP),	    C(STEP_ITEMS),    C(STEP_FREED),
		C(STEP_SUMS),	  C(WINDOW_CHUNKS),
		C(WALK_START),	  C(WALK_END),	    C(WALK_BUDGET),   C(WALK_VISITS),
		C(WALK_PER_CHUNK), C(WALK_ITEM_PAGE), C(WALK_FREE),   C(WALK_FRESH),
		C(WALK_ROWS),	  C(WALK_ROOM),	    C(WALK_SMART),    C(WALK_DEAD_ROOM),
		C(WALK_CHUNKS),	  C(WALK_WINDOW_VISITS), C(WALK_STEPPED), C(WALK_STOP),
		C(WALK_STATUS),	  C(WALK_STEP_FREE), C(WALK_STEP_FRESH), C(WALK_SKIPPED),
		C(WALK_UNSHARED), C(WALK_SCANNED),  C(WALK_HITS),     C(WALK_MADE),
		C(WALK_FREED),	  C(WALK_FIELDS),
		C(WALKED_END),	  C(WALKED_BUDGET), C(WALKED_BEFORE), C(WALKED_AFTER),
		C(WORK_BATCHES),  C(WORK_PASSES),   C(WORK_SKIPS),    C(WORK_HITS),
		C(WORK_CHECKSUMS), C(WORK_SEARCHES), C(WORK_PAIRS),   C(WORK_MERGES),
		C(WORK_ZERO_MERGES), C(WORK_ALLOCS), C(WORK_FREES),   C(WORK_DUPS),
		C(WORK_UNSTABLE_LEVELS), C(WORK_STABLE_LEVELS),
		C(WORK_FIELDS),	  C(CLOCK_PRICES),  C(CLOCK_T),
		C(CLOCK_SEARCHED), C(CLOCK_SHARED_BITS), C(CLOCK_PRUNE_CLAMP), C(CLOCK_TIMEOUT),
		C(CLOCK_SHIFT),	  C(CLOCK_SHARE),   C(CLOCK_JIFFY),   C(CLOCK_WAKE),
		C(CLOCK_BATCHES), C(CLOCK_CPU),	    C(CLOCK_COST),    C(CLOCK_LAST),
		C(CLOCK_WORK),
		C(CLOCK_SINCE),	  C(CLOCK_FIELDS),
		{ "PTE_BYTES", sizeof(pte_t) }, { "IROW_BYTES", sizeof(irow_t) },
		C(ITEM_PAGE_BITS), C(ITEM_SLOT_BITS), C(ITEM_SLOT_LIMIT), C(ITEM_CHECKED_BIT),
		C(ITEM_ZERO_FLAGGED_BIT),
#undef C
	};

	for (size_t i = 0; i < sizeof(constants) / sizeof(constants[0]); i++)
		if (add(m, constants[i].name, PyLong_FromLongLong(constants[i].value)) < 0)
			return -1;
	if (add(m, "ITEM_HOT", layout(item_hot_fields, sizeof(struct item_hot))) < 0 ||
	    add(m, "ITEM_COLD", layout(item_cold_fields, sizeof(struct item_cold))) < 0 ||
	    add(m, "SLOT", layout(slot_fields, sizeof(struct slot))) < 0 ||
	    add(m, "TRACED", layout(traced_fields, sizeof(struct traced))) < 0 ||
	    add(m, "VISIT_ARGS", layout(visit_args_fields, sizeof(struct visit_args))) < 0)
		return -1;
	if (PyType_Ready(&tables_type) < 0)
		return -1;
	Py_INCREF(&tables_type);
	if (add(m, "Tables", (PyObject *)&tables_type) < 0)
		return -1;
	return 0;
}

static PyModuleDef_Slot slots[] = {
	{ Py_mod_exec, exec_module },
	{ 0, NULL },
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "ksmreplay._native",
	.m_doc = "ksmreplay's native core (see ksmreplay/native.py).",
	.m_size = 0,
	.m_methods = methods,
	.m_slots = slots,
};

PyMODINIT_FUNC PyInit__native(void)
{
	return PyModuleDef_Init(&module);
}
