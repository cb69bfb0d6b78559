/* Static /init for guest-kernel/tests/boot-smoke.sh: exercises the capsa.pvm syscall
 * trampoline (register preservation, ENOSYS, fork/wait, SA_RESTART restart through the
 * trampoline, EINTR, restart_syscall after SIGSTOP/SIGCONT, exec of a busybox script), then
 * prints "capsa-init: N failures" and reboots (reboot=k ends the VM).
 * Cmdline words: dumpkmsg (print /dev/kmsg with timestamps), x87test (pending x87 exception). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <sys/mount.h>
#include <fcntl.h>
#include <sched.h>

static int fails;
#define CHECK(c, ...) do { if (c) printf("ok   " __VA_ARGS__); else { fails++; printf("FAIL " __VA_ARGS__); } printf("\n"); fflush(stdout); } while (0)

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static volatile int alarms;
static void on_alarm(int s) { (void)s; alarms++; }

static int regs_preserved(void)
{
	unsigned long out[9];
	long ret;
	__asm__ volatile(
		"mov $0x1111, %%rbx\n mov $0x2222, %%rdx\n mov $0x3333, %%rsi\n mov $0x4444, %%rdi\n"
		"mov $0x5555, %%r8\n mov $0x6666, %%r9\n mov $0x7777, %%r10\n mov $0x8888, %%r12\n mov $0x9999, %%r15\n"
		"mov %[nr], %%eax\n syscall\n"
		"mov %%rbx, 0(%[o])\n mov %%rdx, 8(%[o])\n mov %%rsi, 16(%[o])\n mov %%rdi, 24(%[o])\n"
		"mov %%r8, 32(%[o])\n mov %%r9, 40(%[o])\n mov %%r10, 48(%[o])\n mov %%r12, 56(%[o])\n mov %%r15, 64(%[o])\n"
		: "=a"(ret) : [nr] "i"(SYS_getppid), [o] "r"(out)
		: "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r15", "memory");
	unsigned long want[9] = {0x1111, 0x2222, 0x3333, 0x4444, 0x5555, 0x6666, 0x7777, 0x8888, 0x9999};
	return ret == 0 && memcmp(out, want, sizeof out) == 0;
}

int main(void)
{
	double t0 = now();
	printf("capsa-init: hello from user space (pid %d)\n", getpid());
	fflush(stdout);

	{
		unsigned a, b, c2, d;
		__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c2), "=d"(d) : "a"(1), "c"(0));
		printf("capsa-init: cpuid(1).ecx=%08x xsave=%u osxsave=%u cx16=%u popcnt=%u\n", c2, (c2 >> 26) & 1, (c2 >> 27) & 1, (c2 >> 13) & 1, (c2 >> 23) & 1);
	}
	CHECK(getpid() == 1, "getpid == 1");
	CHECK(regs_preserved(), "callee registers preserved across syscall");
	CHECK(syscall(100000) == -1 && errno == ENOSYS, "bad syscall nr -> ENOSYS");
	CHECK(mount("proc", "/proc", "proc", 0, NULL) == 0 || errno == EBUSY, "mount /proc");

	/* fork + wait */
	pid_t c = fork();
	if (c == 0) _exit(42);
	int st = 0;
	CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 42, "fork/wait exit status");

	/* SA_RESTART: read() on a pipe interrupted by SIGALRM is restarted. */
	int p[2];
	pipe(p);
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	sigaction(SIGALRM, &sa, NULL);
	c = fork();
	if (c == 0) { usleep(600000); write(p[1], "x", 1); _exit(0); }
	struct itimerval it = { .it_value = { 0, 200000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	char b = 0;
	ssize_t n = read(p[0], &b, 1);
	CHECK(n == 1 && b == 'x' && alarms == 1, "SA_RESTART read restarted after handler (n=%zd alarms=%d)", n, alarms);
	waitpid(c, NULL, 0);

	/* No SA_RESTART: EINTR. */
	sa.sa_flags = 0;
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	errno = 0;
	n = read(p[0], &b, 1);
	CHECK(n == -1 && errno == EINTR && alarms == 2, "read without SA_RESTART -> EINTR");

	/* restart_syscall: nanosleep stopped and continued resumes via restart_block. */
	pid_t me = getpid();
	c = fork();
	if (c == 0) { usleep(200000); kill(me, SIGSTOP); usleep(200000); kill(me, SIGCONT); _exit(0); }
	double s0 = now();
	struct timespec ts = { 1, 0 };
	int r = nanosleep(&ts, NULL);
	double slept = now() - s0;
	CHECK(r == 0 && slept >= 0.99, "nanosleep across SIGSTOP/SIGCONT (r=%d slept=%.3f s)", r, slept);
	waitpid(c, NULL, 0);

	/* Exec a script via binfmt_script if busybox is there. */
	if (access("/bin/sh", X_OK) == 0) {
		c = fork();
		if (c == 0) { execl("/bin/sh", "sh", "-c", "echo capsa-init: busybox sh works; uname -a; cat /proc/cpuinfo | grep -m1 'model name'", NULL); _exit(127); }
		waitpid(c, &st, 0);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exec /bin/sh");
	}

	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	char cl[1024] = "";
	FILE *cf = fopen("/proc/cmdline", "r");
	if (cf) { fgets(cl, sizeof cl, cf); fclose(cf); }
	if (strstr(cl, "dumpkmsg")) {
		int kfd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
		char rec[2048];
		ssize_t k;
		while (kfd >= 0 && (k = read(kfd, rec, sizeof rec - 1)) > 0) {
			rec[k] = 0;
			/* "prio,seq,usec,flags;msg\n" */
			char *semi = strchr(rec, ';');
			unsigned long long us = 0; int pr, sq;
			sscanf(rec, "%d,%d,%llu", &pr, &sq, &us);
			printf("KMSG %llu.%06llu %s", us / 1000000, us % 1000000, semi ? semi + 1 : rec);
		}
		fflush(stdout);
	}
	if (strstr(cl, "x87test")) {
		/* Leave an unmasked x87 exception pending, then make the kernel save
		 * the FPU state (context switch) and exit (fpu__drop). */
		c = fork();
		if (c == 0) {
			unsigned short cw = 0x037f & ~0x4; /* unmask zero-divide */
			__asm__ volatile("fldcw %0" :: "m"(cw));
			__asm__ volatile("fldz; fld1; fdivp %%st, %%st(1)" ::: "st");  /* 1/0 -> pending #MF */
			sched_yield(); usleep(1000); sched_yield();
			_exit(7);
		}
		waitpid(c, &st, 0);
		CHECK(1, "x87 pending exception survived (status 0x%x)", st);
	}
	printf("capsa-init: %d failures, tests took %.3f s; uptime: ", fails, now() - t0);
	fflush(stdout);
	FILE *f = fopen("/proc/uptime", "r");
	if (f) { char l[64]; if (fgets(l, sizeof l, f)) fputs(l, stdout); fclose(f); }
	printf("capsa-init: rebooting (reboot=k ends the VM)\n");
	fflush(stdout);
	sync();
	reboot(RB_AUTOBOOT);
	return 0;
}
