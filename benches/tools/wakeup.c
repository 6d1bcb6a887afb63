/* Thread-to-thread wakeup latency through eventfd + epoll: the floor under every
 * handoff between a sandbox and the keelnet switch thread (BENCHMARKS.md, issue 4).
 *
 *   cc -O2 -pthread -o wakeup benches/tools/wakeup.c && ./wakeup [rounds]
 *
 * Two threads ping-pong: each writes the other's eventfd, then waits on its own in
 * epoll_wait. The waker stamps CLOCK_MONOTONIC just before its write; the woken thread
 * stamps when epoll_wait returns: the difference is one wakeup (write syscall included).
 * Modes: both threads on CPU 0 (the waker then blocks, so it is a context switch), on
 * CPUs 0 and 1 (the woken CPU is idle: with no cpuidle driver it halted, so a wakeup
 * is an IPI plus a VM exit and re-entry under KVM), unpinned, and a waiter that polls
 * with epoll_wait(0) instead of sleeping (with and without sched_yield between polls):
 * what a wakeup costs when nobody sleeps. Last, the same with a CPU-bound task on the
 * switch's CPU: a sleeper's wakeup preempts it, a yielding poller has to wait its turn.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

enum wait_mode { SLEEP, POLL, POLL_YIELD };

struct side {
    int eventfd, epoll;
    int cpu; /* -1: unpinned */
    enum wait_mode wait;
    double *latencies; /* ns, one per wakeup of this side */
};

struct run {
    struct side side[2];
    int rounds;
    volatile int64_t stamp; /* ns at the waker's write */
};

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void wait_for(struct side *self) {
    struct epoll_event event;
    for (;;) {
        int timeout = self->wait == SLEEP ? -1 : 0;
        if (epoll_wait(self->epoll, &event, 1, timeout) == 1) break;
        if (self->wait == POLL_YIELD) sched_yield();
    }
    uint64_t value;
    if (read(self->eventfd, &value, sizeof value) != sizeof value) abort();
}

static void wake(struct run *run, int to) {
    uint64_t one = 1;
    run->stamp = now_ns();
    if (write(run->side[to].eventfd, &one, sizeof one) != sizeof one) abort();
}

struct thread_arg {
    struct run *run;
    int me;
};

static void *player(void *opaque) {
    struct thread_arg *arg = opaque;
    struct run *run = arg->run;
    struct side *self = &run->side[arg->me];
    pin(self->cpu);
    for (int round = 0; round < run->rounds; round++) {
        if (arg->me == 0) wake(run, 1);
        wait_for(self);
        self->latencies[round] = (double)(now_ns() - run->stamp);
        if (arg->me == 1) wake(run, 0);
    }
    return NULL;
}

/* A CPU-bound task (another tenant's job) on one CPU while a measurement runs. */
static volatile int hog_stop;
static void *hog(void *opaque) {
    pin(*(int *)opaque);
    while (!hog_stop) {
    }
    return NULL;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void measure(const char *label, int cpu0, int cpu1, enum wait_mode wait, int rounds,
                    int busy_cpu) {
    struct run run = {.rounds = rounds};
    pthread_t hog_thread;
    hog_stop = 0;
    if (busy_cpu >= 0) pthread_create(&hog_thread, NULL, hog, &busy_cpu);
    int cpus[2] = {cpu0, cpu1};
    for (int i = 0; i < 2; i++) {
        struct side *side = &run.side[i];
        side->eventfd = eventfd(0, EFD_NONBLOCK);
        side->epoll = epoll_create1(0);
        struct epoll_event event = {.events = EPOLLIN};
        epoll_ctl(side->epoll, EPOLL_CTL_ADD, side->eventfd, &event);
        side->cpu = cpus[i];
        /* Only the switch side (1) polls; the other side always sleeps, as a sandbox would. */
        side->wait = i == 1 ? wait : SLEEP;
        side->latencies = calloc(rounds, sizeof(double));
    }
    pthread_t threads[2];
    struct thread_arg args[2] = {{&run, 0}, {&run, 1}};
    pthread_create(&threads[1], NULL, player, &args[1]);
    usleep(10000);
    pthread_create(&threads[0], NULL, player, &args[0]);
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    if (busy_cpu >= 0) {
        hog_stop = 1;
        pthread_join(hog_thread, NULL);
    }
    /* Wakeups of the sleeping side 0 (the first 100 rounds are warm-up). */
    double *l = run.side[0].latencies + 100;
    int n = rounds - 100;
    qsort(l, n, sizeof(double), by_value);
    double *m = run.side[1].latencies + 100;
    qsort(m, n, sizeof(double), by_value);
    printf("%-34s sleeper woken: p50 %6.1f p99 %7.1f us | switch side: p50 %6.1f p99 %7.1f us\n",
           label, l[n / 2] / 1e3, l[n * 99 / 100] / 1e3, m[n / 2] / 1e3, m[n * 99 / 100] / 1e3);
    for (int i = 0; i < 2; i++) {
        close(run.side[i].eventfd);
        close(run.side[i].epoll);
        free(run.side[i].latencies);
    }
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20000;
    if (rounds < 200) rounds = 200;
    measure("same CPU (0, 0)", 0, 0, SLEEP, rounds, -1);
    measure("other CPU (0, 1)", 0, 1, SLEEP, rounds, -1);
    measure("unpinned", -1, -1, SLEEP, rounds, -1);
    measure("other CPU, switch polls", 0, 1, POLL, rounds, -1);
    measure("other CPU, switch polls+yield", 0, 1, POLL_YIELD, rounds, -1);
    measure("same CPU, switch polls+yield", 0, 0, POLL_YIELD, rounds, -1);
    /* Another task keeps CPU 1 busy: a wakeup preempts it; a yielding poller waits. */
    measure("other CPU busy, switch sleeps", 0, 1, SLEEP, rounds / 10, 1);
    measure("other CPU busy, switch polls+yield", 0, 1, POLL_YIELD, rounds / 10, 1);
    return 0;
}
