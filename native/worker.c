/*
 * ksmreplay live worker: one process per trace pid.
 *
 * Built freestanding (no C library, static, no heap) so that the only
 * anonymous memory it owns is its stack and .bss.  After it turns
 * PR_SET_MEMORY_MERGE on, it marks every mapping outside the trace window
 * unmergeable again, so ksmd never sees its own pages.
 *
 * Channel: fd 0 is an AF_UNIX SOCK_SEQPACKET socket.  Every command is one
 * 40-byte record (struct cmd); some are followed by payload records of at most
 * BUF_SIZE bytes.  Every command is answered by one 16-byte record (struct
 * rep): ret = 0 or -errno, val = a result.  The fork command carries the
 * child's channel as an SCM_RIGHTS descriptor; the child answers on it with
 * its pid before it reads its first command.
 */
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>

#define PROT_READ 0x1
#define PROT_WRITE 0x2
#define MAP_PRIVATE 0x02
#define MAP_ANONYMOUS 0x20
#define MAP_FIXED_NOREPLACE 0x100000
#define MADV_NOHUGEPAGE 15
#define MADV_UNMERGEABLE 13
#define PR_SET_MEMORY_MERGE 67
#define SIGCHLD 17
#define SIG_IGN_HANDLER ((uint64_t)1)
#define SOL_SOCKET 1
#define SCM_RIGHTS 1
#define ENOMEM 12
#define EINVAL 22
#define EPROTO 71

#define BUF_SIZE 65536

enum {
	OP_INIT = 1,     /* a = page size, b = window start, c = window end, d = top */
	OP_MMAP = 2,     /* a = addr, b = len */
	OP_MUNMAP = 3,   /* a = addr, b = len */
	OP_FILL = 4,     /* a = addr, b = len, c = 8-byte value repeated */
	OP_FILL_LIST = 5, /* a = addr, b = len; payload: one u64 per page */
	OP_BYTES = 6,    /* a = addr, b = len; payload: the bytes */
	OP_READ = 7,     /* a = addr, b = len: load one byte per page */
	OP_MADVISE = 8,  /* a = addr, b = len, c = advice */
	OP_PRCTL = 9,    /* c = 0 or 1 */
	OP_FORK = 10,    /* SCM_RIGHTS: the child's channel */
	OP_EXIT = 11,
	OP_PING = 12,
};

struct cmd {
	uint64_t op;
	uint64_t a, b, c, d;
};

struct rep {
	int64_t ret;
	int64_t val;
};

struct iovec_k {
	void *base;
	size_t len;
};

struct msghdr_k {
	void *name;
	uint32_t namelen;
	struct iovec_k *iov;
	size_t iovlen;
	void *control;
	size_t controllen;
	int flags;
};

struct cmsghdr_k {
	size_t len;
	int level;
	int type;
	int fd;
};

struct sigaction_k {
	uint64_t handler;
	uint64_t flags;
	uint64_t restorer;
	uint64_t mask;
};

static unsigned char buf[BUF_SIZE] __attribute__((aligned(64)));
static uint64_t page_size = 4096;
static uint64_t window_lo, window_hi, top;

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret;
#if defined(__x86_64__)
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
#elif defined(__aarch64__)
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	register long x4 __asm__("x4") = e;
	register long x5 __asm__("x5") = f;
	__asm__ volatile("svc 0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
			 : "memory");
	ret = x0;
#else
#error "unsupported architecture"
#endif
	return ret;
}

#define SYS(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

void *memset(void *d, int c, size_t n)
{
	volatile unsigned char *p = d;
	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	volatile unsigned char *p = d;
	const unsigned char *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

static __attribute__((noreturn)) void die(int status)
{
	for (;;)
		SYS(SYS_exit_group, status, 0, 0);
}

static void reply(long ret, long val)
{
	struct rep r = {ret, val};
	if (SYS(SYS_write, 0, &r, sizeof r) != (long)sizeof r)
		die(3);
}

/* One record from the channel; 0 at end of file.  *fd gets a passed descriptor or -1. */
static long recv_record(void *dst, size_t len, int *fd)
{
	struct iovec_k iov = {dst, len};
	struct cmsghdr_k cm;
	struct msghdr_k mh = {0, 0, &iov, 1, &cm, sizeof cm, 0};
	long n;
	cm.len = 0;
	cm.fd = -1;
	do
		n = sys6(SYS_recvmsg, 0, (long)&mh, 0, 0, 0, 0);
	while (n == -4);
	if (n < 0)
		die(4);
	if (fd)
		*fd = -1;
	if (mh.controllen >= sizeof cm && cm.level == SOL_SOCKET && cm.type == SCM_RIGHTS) {
		if (fd)
			*fd = cm.fd;
		else
			SYS(SYS_close, cm.fd, 0, 0);
	}
	return n;
}

static void fill_page(uint64_t addr, uint64_t value)
{
	volatile uint64_t *p = (volatile uint64_t *)addr;
	for (uint64_t i = 0; i < page_size / 8; i++)
		p[i] = value;
}

static long do_fill_list(uint64_t addr, uint64_t len)
{
	uint64_t pages = len / page_size, done = 0;
	while (done < pages) {
		long n = recv_record(buf, BUF_SIZE, NULL);
		if (n <= 0 || n % 8)
			die(5);
		for (long i = 0; i < n / 8 && done < pages; i++, done++)
			fill_page(addr + done * page_size, ((uint64_t *)buf)[i]);
	}
	return 0;
}

static long do_bytes(uint64_t addr, uint64_t len)
{
	uint64_t done = 0;
	while (done < len) {
		long n = recv_record(buf, BUF_SIZE, NULL);
		if (n <= 0)
			die(5);
		memcpy((void *)(addr + done), buf, (size_t)n);
		done += (uint64_t)n;
	}
	return 0;
}

static long unmerge_outside_window(void)
{
	long r1 = 0, r2 = 0;
	if (window_lo > 0)
		r1 = SYS(SYS_madvise, 0, window_lo, MADV_UNMERGEABLE);
	if (top > window_hi)
		r2 = SYS(SYS_madvise, window_hi, top - window_hi, MADV_UNMERGEABLE);
	if (r1 == -ENOMEM)
		r1 = 0;
	if (r2 == -ENOMEM)
		r2 = 0;
	return r1 ? r1 : r2;
}

static long do_fork(int fd)
{
	long pid;
	if (fd < 0)
		return -EPROTO;
#if defined(__x86_64__)
	pid = SYS(SYS_fork, 0, 0, 0);
#else
	pid = sys6(SYS_clone, SIGCHLD, 0, 0, 0, 0, 0);
#endif
	if (pid == 0) {
		SYS(SYS_dup3, fd, 0, 0);
		SYS(SYS_close, fd, 0, 0);
		reply(0, SYS(SYS_getpid, 0, 0, 0));
		return -1; /* child: no reply on the old channel */
	}
	SYS(SYS_close, fd, 0, 0);
	return pid;
}

void worker_main(void)
{
	struct sigaction_k sa = {SIG_IGN_HANDLER, 0, 0, 0};
	/* Children are reaped by the kernel; the driver sees their exit as end of file. */
	sys6(SYS_rt_sigaction, SIGCHLD, (long)&sa, 0, 8, 0, 0);
	reply(0, SYS(SYS_getpid, 0, 0, 0));
	for (;;) {
		struct cmd c;
		int fd = -1;
		long n = recv_record(&c, sizeof c, &fd), ret = 0, val = 0;
		if (n == 0)
			die(0);
		if (n != (long)sizeof c)
			die(6);
		if (fd >= 0 && c.op != OP_FORK) {
			SYS(SYS_close, fd, 0, 0);
			fd = -1;
		}
		switch (c.op) {
		case OP_INIT:
			page_size = c.a;
			window_lo = c.b;
			window_hi = c.c;
			top = c.d;
			break;
		case OP_MMAP:
			val = sys6(SYS_mmap, (long)c.a, (long)c.b, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
			if (val < 0 && val > -4096) {
				ret = val;
			} else if ((uint64_t)val != c.a) {
				SYS(SYS_munmap, val, c.b, 0);
				ret = -17; /* EEXIST: an old kernel ignored the flag */
			} else {
				ret = SYS(SYS_madvise, c.a, c.b, MADV_NOHUGEPAGE);
			}
			break;
		case OP_MUNMAP:
			ret = SYS(SYS_munmap, c.a, c.b, 0);
			break;
		case OP_FILL:
			for (uint64_t off = 0; off < c.b; off += page_size)
				fill_page(c.a + off, c.c);
			break;
		case OP_FILL_LIST:
			ret = do_fill_list(c.a, c.b);
			break;
		case OP_BYTES:
			ret = do_bytes(c.a, c.b);
			break;
		case OP_READ:
			for (uint64_t off = 0; off < c.b; off += page_size)
				val += *(volatile unsigned char *)(c.a + off);
			val = 0;
			break;
		case OP_MADVISE:
			ret = SYS(SYS_madvise, c.a, c.b, c.c);
			break;
		case OP_PRCTL:
			ret = sys6(SYS_prctl, PR_SET_MEMORY_MERGE, (long)c.c, 0, 0, 0, 0);
			if (ret == 0 && c.c)
				ret = unmerge_outside_window();
			break;
		case OP_FORK:
			val = do_fork(fd);
			if (val == -1)
				continue;
			if (val < 0) {
				ret = val;
				val = 0;
			}
			break;
		case OP_EXIT:
			die(0);
		case OP_PING:
			val = SYS(SYS_getpid, 0, 0, 0);
			break;
		default:
			ret = -EINVAL;
		}
		reply(ret, val);
	}
}

#if defined(__x86_64__)
__asm__(".text\n.global _start\n_start:\n\txor %rbp, %rbp\n\tand $-16, %rsp\n"
	"\tcall worker_main\n\thlt\n");
#elif defined(__aarch64__)
__asm__(".text\n.global _start\n_start:\n\tmov x29, #0\n\tmov x0, sp\n\tand x0, x0, #-16\n"
	"\tmov sp, x0\n\tbl worker_main\n\tbrk #0\n");
#endif
