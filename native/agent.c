/*
 * ksmreplay guest agent: /init of the initramfs that `exec --kernel-image`
 * boots under qemu.
 *
 * It mounts proc, sysfs and devtmpfs, opens the second serial port
 * (/dev/ttyS1; the first is the kernel's console) in raw mode, says hello,
 * and then carries out the host's requests one at a time, in order: read,
 * write and list files (sysfs, proc), start live workers (/worker, the same
 * program as on the host) and pass records to and from them, and finally
 * power the machine off.  All the replay logic stays on the host; this
 * program only moves bytes.
 *
 * Framing, both ways: a 4-byte little-endian length, then that many bytes.
 * A request's body starts with one byte, the operation; a reply's body starts
 * with a 4-byte little-endian status (0, or a negative errno), then data.
 * The first frame the agent sends is the hello: status 0, then
 * "KSMREPLAY-AGENT 1\0", the kernel release, the machine and the page size
 * (decimal), each ending in a NUL byte.  Numbers in requests are little-endian.
 *
 * As PID 1 it also reaps every orphan (a worker's forked children outlive
 * their parent when the trace makes the parent exit first).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

enum {
	A_READ = 2,     /* path\0 -> the file's contents */
	A_PREAD = 3,    /* u64 offset, u32 length, path\0 -> bytes */
	A_WRITE = 4,    /* u32 path length, path, data -> status of one write() */
	A_LISTDIR = 5,  /* path\0 -> names, each ending in \0 */
	A_SPAWN = 6,    /* -> u32 channel id of a new worker */
	A_SEND = 7,     /* u32 id, record -> status */
	A_RECV = 8,     /* u32 id, u32 size -> one record (empty at end of file) */
	A_FORK = 9,     /* u32 id, record -> u32 id of the far end passed with it */
	A_KILL = 10,    /* u32 id, u64 pid -> SIGKILL pid, then wait for end of file */
	A_CLOSE = 11,   /* u32 id */
	A_POWEROFF = 12,
	A_ACCESS = 13,  /* u32 mode, path\0 -> status of access() */
	A_CALL = 14,    /* u32 id, u32 size, record -> send it, then one record back */
};

#define MAX_FRAME (1u << 22)
#define MAX_CHANNELS 4096

static int chan = -1;
static int channels[MAX_CHANNELS];
static unsigned char *req, *rep;

static void fatal(const char *what)
{
	fprintf(stderr, "ksmreplay agent: %s: %s\n", what, strerror(errno));
	sync();
	reboot(RB_POWER_OFF);
	_exit(1);
}

static void read_full(void *dst, size_t n)
{
	unsigned char *p = dst;
	while (n) {
		ssize_t r = read(chan, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			fatal("reading the host's channel");
		p += r;
		n -= (size_t)r;
	}
}

static void write_full(const void *src, size_t n)
{
	const unsigned char *p = src;
	while (n) {
		ssize_t r = write(chan, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			fatal("writing the host's channel");
		p += r;
		n -= (size_t)r;
	}
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* Send a reply whose data (len bytes) already sits at rep + 8. */
static void reply(int32_t status, uint32_t len)
{
	put32(rep, len + 4);
	put32(rep + 4, (uint32_t)status);
	write_full(rep, 8 + (size_t)len);
}

static void reap(void)
{
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static int new_channel(int fd)
{
	for (int i = 1; i < MAX_CHANNELS; i++) {
		if (channels[i] < 0) {
			channels[i] = fd;
			return i;
		}
	}
	return -1;
}

static int channel(uint32_t id)
{
	return id < MAX_CHANNELS ? channels[id] : -1;
}

static uint32_t do_read(const char *path, int32_t *status)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint32_t len = 0;
	if (fd < 0) {
		*status = -errno;
		return 0;
	}
	for (;;) {
		ssize_t r = read(fd, rep + 8 + len, MAX_FRAME - 8 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*status = -errno;
			break;
		}
		if (r == 0)
			break;
		len += (uint32_t)r;
		if (len >= MAX_FRAME - 8) {
			*status = -EFBIG;
			break;
		}
	}
	close(fd);
	return len;
}

static uint32_t do_pread(const char *path, uint64_t off, uint32_t want, int32_t *status)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint32_t len = 0;
	if (fd < 0) {
		*status = -errno;
		return 0;
	}
	if (want > MAX_FRAME - 8)
		want = MAX_FRAME - 8;
	while (len < want) {
		ssize_t r = pread(fd, rep + 8 + len, want - len, (off_t)(off + len));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*status = -errno;
			break;
		}
		if (r == 0)
			break;
		len += (uint32_t)r;
	}
	close(fd);
	return len;
}

static uint32_t do_listdir(const char *path, int32_t *status)
{
	DIR *d = opendir(path);
	struct dirent *e;
	uint32_t len = 0;
	if (!d) {
		*status = -errno;
		return 0;
	}
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name) + 1;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (len + n > MAX_FRAME - 8) {
			*status = -EFBIG;
			break;
		}
		memcpy(rep + 8 + len, e->d_name, n);
		len += (uint32_t)n;
	}
	closedir(d);
	return len;
}

static int32_t do_spawn(uint32_t *id)
{
	int sv[2];
	pid_t pid;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		return -e;
	}
	if (pid == 0) {
		char *argv[] = {"/worker", NULL};
		char *envp[] = {NULL};
		dup2(sv[1], 0);
		execve("/worker", argv, envp);
		_exit(127);
	}
	close(sv[1]);
	int c = new_channel(sv[0]);
	if (c < 0) {
		close(sv[0]);
		kill(pid, SIGKILL);
		return -EMFILE;
	}
	*id = (uint32_t)c;
	return 0;
}

static int32_t send_record(int fd, const void *data, size_t len, int pass_fd)
{
	struct iovec iov = {(void *)data, len};
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(sizeof(int))];
	} cm;
	struct msghdr mh = {0};
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (pass_fd >= 0) {
		memset(&cm, 0, sizeof cm);
		mh.msg_control = cm.space;
		mh.msg_controllen = sizeof cm.space;
		struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(h), &pass_fd, sizeof(int));
	}
	for (;;) {
		ssize_t r = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		return r < 0 ? -errno : 0;
	}
}

static uint32_t recv_record(int fd, uint32_t size, int32_t *status)
{
	if (size > MAX_FRAME - 8)
		size = MAX_FRAME - 8;
	for (;;) {
		ssize_t r = recv(fd, rep + 8, size, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*status = -errno;
			return 0;
		}
		return (uint32_t)r;
	}
}

static void serve(uint32_t n)
{
	unsigned char op = req[0];
	const unsigned char *a = req + 1;
	int32_t status = 0;
	uint32_t len = 0;
	req[n] = 0; /* paths end in a NUL byte anyway; this keeps a bad one bounded */
	switch (op) {
	case A_READ:
		len = do_read((const char *)a, &status);
		break;
	case A_PREAD:
		len = do_pread((const char *)a + 12, get64(a), get32(a + 8), &status);
		break;
	case A_WRITE: {
		uint32_t plen = get32(a);
		char path[4096];
		if (plen >= sizeof path || 5 + plen > n) {
			status = -EINVAL;
			break;
		}
		memcpy(path, a + 4, plen);
		path[plen] = 0;
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0) {
			status = -errno;
			break;
		}
		ssize_t r;
		do
			r = write(fd, a + 4 + plen, n - 5 - plen);
		while (r < 0 && errno == EINTR);
		if (r < 0)
			status = -errno;
		close(fd);
		break;
	}
	case A_LISTDIR:
		len = do_listdir((const char *)a, &status);
		break;
	case A_ACCESS:
		if (access((const char *)a + 4, (int)get32(a)) < 0)
			status = -errno;
		break;
	case A_SPAWN: {
		uint32_t id = 0;
		status = do_spawn(&id);
		put32(rep + 8, id);
		len = 4;
		break;
	}
	case A_SEND:
	case A_CALL: {
		int fd = channel(get32(a));
		uint32_t skip = op == A_CALL ? 8 : 4;
		if (fd < 0) {
			status = -EBADF;
			break;
		}
		status = send_record(fd, a + skip, n - 1 - skip, -1);
		if (status == 0 && op == A_CALL)
			len = recv_record(fd, get32(a + 4), &status);
		break;
	}
	case A_RECV: {
		int fd = channel(get32(a));
		if (fd < 0) {
			status = -EBADF;
			break;
		}
		len = recv_record(fd, get32(a + 4), &status);
		break;
	}
	case A_FORK: {
		int fd = channel(get32(a)), sv[2];
		if (fd < 0) {
			status = -EBADF;
			break;
		}
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
			status = -errno;
			break;
		}
		status = send_record(fd, a + 4, n - 5, sv[1]);
		close(sv[1]);
		int c = status == 0 ? new_channel(sv[0]) : -1;
		if (c < 0) {
			close(sv[0]);
			if (status == 0)
				status = -EMFILE;
			break;
		}
		put32(rep + 8, (uint32_t)c);
		len = 4;
		break;
	}
	case A_KILL: {
		uint32_t id = get32(a);
		int fd = channel(id);
		uint64_t pid = get64(a + 4);
		if (pid > 1)
			kill((pid_t)pid, SIGKILL);
		if (fd >= 0) {
			char sink[64];
			for (;;) {
				ssize_t r = recv(fd, sink, sizeof sink, 0);
				if (r > 0 || (r < 0 && errno == EINTR))
					continue;
				break;
			}
			close(fd);
			channels[id] = -1;
		}
		break;
	}
	case A_CLOSE: {
		uint32_t id = get32(a);
		if (channel(id) >= 0) {
			close(channels[id]);
			channels[id] = -1;
		}
		break;
	}
	case A_POWEROFF:
		reply(0, 0);
		sync();
		reboot(RB_POWER_OFF);
		_exit(0);
	default:
		status = -ENOSYS;
	}
	reap();
	reply(status, status < 0 && op != A_RECV && op != A_CALL ? 0 : len);
}

int main(void)
{
	struct termios t;
	struct utsname u;
	static const char magic[] = "KSMREPLAY-AGENT 1";
	uint32_t len = 0;

	for (int i = 0; i < MAX_CHANNELS; i++)
		channels[i] = -1;
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	signal(SIGPIPE, SIG_IGN);
	req = malloc(MAX_FRAME + 1);
	rep = malloc(MAX_FRAME);
	if (!req || !rep)
		fatal("allocating buffers");
	chan = open("/dev/ttyS1", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (chan < 0)
		fatal("opening /dev/ttyS1");
	if (tcgetattr(chan, &t) == 0) {
		cfmakeraw(&t);
		t.c_cflag |= CLOCAL | CREAD;
		t.c_cflag &= ~(unsigned)CRTSCTS;
		cfsetispeed(&t, B115200);
		cfsetospeed(&t, B115200);
		t.c_cc[VMIN] = 1;
		t.c_cc[VTIME] = 0;
		tcsetattr(chan, TCSANOW, &t);
	}
	uname(&u);
	memcpy(rep + 8 + len, magic, sizeof magic);
	len += sizeof magic;
	memcpy(rep + 8 + len, u.release, strlen(u.release) + 1);
	len += (uint32_t)strlen(u.release) + 1;
	memcpy(rep + 8 + len, u.machine, strlen(u.machine) + 1);
	len += (uint32_t)strlen(u.machine) + 1;
	len += (uint32_t)sprintf((char *)rep + 8 + len, "%ld", sysconf(_SC_PAGESIZE)) + 1;
	reply(0, len);
	for (;;) {
		unsigned char hdr[4];
		read_full(hdr, 4);
		uint32_t n = get32(hdr);
		if (n == 0 || n > MAX_FRAME)
			fatal("a malformed request");
		read_full(req, n);
		serve(n);
	}
}
