/* udpflood: a small-packet UDP sender/receiver for benches/dataplane_vs_kernel.py.
 *
 *   udpflood send DST PORT SECONDS PAYLOAD   sendmmsg batches of 64 datagrams
 *   udpflood recv ADDR PORT SECONDS          prints datagrams received per second
 *
 * iperf3 tops out at a few tens of kpps with 18-byte payloads on this VM, which measures
 * the sender, not the path; this one batches 64 datagrams per syscall on both ends. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int address(const char *text, int port, struct sockaddr_storage *out, socklen_t *len) {
    memset(out, 0, sizeof *out);
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        *len = sizeof *v4;
        return AF_INET;
    }
    if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        *len = sizeof *v6;
        return AF_INET6;
    }
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: udpflood send DST PORT SECONDS PAYLOAD | recv ADDR PORT SECONDS\n");
        return 2;
    }
    struct sockaddr_storage peer;
    socklen_t peer_len;
    int family = address(argv[2], atoi(argv[3]), &peer, &peer_len);
    double seconds = atof(argv[4]);
    if (family < 0) return 2;
    int fd = socket(family, SOCK_DGRAM, 0);
    if (fd < 0) return 1;
    int size = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
    static char buffers[BATCH][2048];
    struct mmsghdr messages[BATCH];
    struct iovec iovecs[BATCH];
    memset(messages, 0, sizeof messages);
    if (strcmp(argv[1], "send") == 0) {
        int payload = argc > 5 ? atoi(argv[5]) : 18;
        for (int i = 0; i < BATCH; i++) {
            iovecs[i].iov_base = buffers[i];
            iovecs[i].iov_len = payload;
            messages[i].msg_hdr.msg_iov = &iovecs[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_name = &peer;
            messages[i].msg_hdr.msg_namelen = peer_len;
        }
        long sent = 0;
        double end = now() + seconds;
        while (now() < end) {
            int n = sendmmsg(fd, messages, BATCH, 0);
            if (n > 0) sent += n;
        }
        printf("%ld\n", sent);
        return 0;
    }
    if (bind(fd, (struct sockaddr *)&peer, peer_len) < 0) return 1;
    struct timeval tick = {0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof tick);
    for (int i = 0; i < BATCH; i++) {
        iovecs[i].iov_base = buffers[i];
        iovecs[i].iov_len = sizeof buffers[i];
        messages[i].msg_hdr.msg_iov = &iovecs[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    printf("ready\n");
    fflush(stdout);
    long received = 0;
    double first = 0, last = 0, end = now() + seconds + 30;
    while (now() < end) {
        int n = recvmmsg(fd, messages, BATCH, 0, NULL);
        if (n > 0) {
            if (!received) first = now();
            received += n;
            last = now();
            if (last - first >= seconds) break;
        } else if (received && now() - last > 1.0) {
            break;
        }
    }
    printf("%ld %.6f\n", received, last - first);
    return 0;
}
