/*
 * bench/delay-line.c: a link with latency, for kernels built without the netem qdisc.
 *
 *     delay-line IFACE_A IFACE_B DELAY_US
 *
 * Forwards every Ethernet frame that arrives on one interface out of the other, in both
 * directions, DELAY_US microseconds after it arrived. The delay is the same for every frame, so
 * each direction is a FIFO and the order is kept. bench/boot runs it in a namespace of its own,
 * between the server's namespace and the client's, when `tc qdisc add ... netem` is refused. It
 * runs until it is signalled. A frame that finds its direction's queue full is dropped, as a full
 * qdisc drops it; the counts go to stderr every time a drop happens, so a lossy run shows in the log.
 *
 * Frames are copied as they are: the ends must compute their checksums themselves (bench/boot turns
 * transmit checksum offload off on them), since a frame with a checksum left to the hardware is
 * accepted only as long as it stays inside the kernel.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 4096 /* frames in flight per direction: 0.25 ms of 10 Gbit/s fits */
#define FRAME 2048 /* a 1500-byte MTU plus the Ethernet header, rounded up */

struct slot {
    uint64_t due;
    size_t len;
    unsigned char data[FRAME];
};

struct direction {
    int in, out;
    struct slot *q;
    unsigned head, tail; /* head == tail: empty; the indexes run on and are taken mod SLOTS */
    unsigned long dropped;
    const char *name;
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int open_iface(const char *name)
{
    int one = 1;
    unsigned idx = if_nametoindex(name);
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)idx};
    if (idx == 0 || fd < 0) {
        fprintf(stderr, "delay-line: %s: %s\n", name, idx == 0 ? "no such interface" : "cannot open a packet socket");
        exit(1);
    }
    /* What we send out of this interface must not come back in as if it had arrived. */
    if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("delay-line: packet socket");
        exit(1);
    }
    return fd;
}

/* Sends every frame of D that is due at NOW. */
static void release(struct direction *d, uint64_t now)
{
    while (d->head != d->tail && d->q[d->head % SLOTS].due <= now) {
        struct slot *s = &d->q[d->head % SLOTS];
        if (send(d->out, s->data, s->len, 0) < 0 && errno != ENOBUFS && errno != EAGAIN) {
            perror("delay-line: send");
            exit(1);
        }
        d->head++;
    }
}

/* Queues every frame waiting on D's input, each due DELAY after now. */
static void take(struct direction *d, uint64_t delay)
{
    static unsigned char scratch[FRAME];
    for (;;) {
        int full = d->tail - d->head == SLOTS;
        struct slot *s = &d->q[d->tail % SLOTS];
        ssize_t n = recv(d->in, full ? scratch : s->data, FRAME, MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            perror("delay-line: recv");
            exit(1);
        }
        if (full || n > FRAME) {
            fprintf(stderr, "delay-line: %s: dropped %lu frames\n", d->name, ++d->dropped);
            continue;
        }
        s->len = (size_t)n;
        s->due = now_ns() + delay;
        d->tail++;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: delay-line IFACE_A IFACE_B DELAY_US\n");
        return 64;
    }
    uint64_t delay = strtoull(argv[3], NULL, 10) * 1000u;
    int a = open_iface(argv[1]), b = open_iface(argv[2]);
    struct direction dirs[2] = {
        {.in = a, .out = b, .q = calloc(SLOTS, sizeof(struct slot)), .name = argv[1]},
        {.in = b, .out = a, .q = calloc(SLOTS, sizeof(struct slot)), .name = argv[2]},
    };
    if (!dirs[0].q || !dirs[1].q) {
        fprintf(stderr, "delay-line: out of memory\n");
        return 1;
    }
    /* Timers may fire late by the thread's slack (50 µs by default): a fifth of the delay. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    fprintf(stderr, "delay-line: %s <-> %s, %s us each way\n", argv[1], argv[2], argv[3]);
    for (;;) {
        struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
        uint64_t now = now_ns(), next = UINT64_MAX;
        struct timespec wait;
        for (int i = 0; i < 2; i++) {
            release(&dirs[i], now);
            if (dirs[i].head != dirs[i].tail && dirs[i].q[dirs[i].head % SLOTS].due < next)
                next = dirs[i].q[dirs[i].head % SLOTS].due;
        }
        if (next != UINT64_MAX) {
            wait.tv_sec = (time_t)((next - now) / 1000000000u);
            wait.tv_nsec = (long)((next - now) % 1000000000u);
        }
        if (ppoll(p, 2, next == UINT64_MAX ? NULL : &wait, NULL) < 0 && errno != EINTR) {
            perror("delay-line: ppoll");
            return 1;
        }
        for (int i = 0; i < 2; i++)
            if (p[i].revents & POLLIN)
                take(&dirs[i], delay);
    }
}
