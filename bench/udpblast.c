/* udpblast: send RTP-sized UDP datagrams as fast as possible for a fixed time.
 *
 *   udpblast DST_IP DST_PORT SRC_PORT SIZE SECONDS [RATE]
 *
 * Binds SRC_PORT (SO_REUSEPORT, so several blasters can share one 5-tuple), connects to
 * DST_IP:DST_PORT and sends SIZE-byte payloads (a 12-byte RTP header + filler) in sendmmsg()
 * batches until SECONDS have passed. Prints "<sent> <elapsed_seconds>" on stdout. Datagrams the
 * kernel refused (ENOBUFS, EAGAIN, ECONNREFUSED after an ICMP error) are not counted as sent.
 * With RATE (packets/s, > 0) the sender is paced instead: it sleeps whenever it is ahead of
 * RATE * elapsed and sends the difference in batches of up to 64 (used by bench/media.py for
 * receivers that must not be flooded, e.g. rtpengine, which discards packets after its socket
 * backlog overflowed a few times).
 *
 * Compiled at run time by bench/media_forwarding.py (gcc -O2); Python's socket module has no
 * sendmmsg() and a Python sendto() loop would measure the interpreter, not the router.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SIZE 1472

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s DST_IP DST_PORT SRC_PORT SIZE SECONDS [RATE]\n", argv[0]);
        return 2;
    }
    const char *dst_ip = argv[1];
    int dst_port = atoi(argv[2]);
    int src_port = atoi(argv[3]);
    int size = atoi(argv[4]);
    double seconds = atof(argv[5]);
    double rate = argc == 7 ? atof(argv[6]) : 0.0;
    if (size < 12 || size > MAX_SIZE || dst_port <= 0 || src_port <= 0 || seconds <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = htons((uint16_t)src_port)};
    src.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) { perror("bind"); return 1; }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)dst_port)};
    if (inet_pton(AF_INET, dst_ip, &dst.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) { perror("connect"); return 1; }

    static unsigned char payload[MAX_SIZE];
    memset(payload, 0xd5, sizeof payload);          /* G.711 A-law silence */
    payload[0] = 0x80;                              /* RTP v2 */
    payload[1] = 8;                                 /* PT 8 (PCMA) */

    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = payload;
        iov[i].iov_len = (size_t)size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    unsigned long long sent = 0;
    double start = now(), end = start + seconds, t = start;
    while (t < end) {
        int batch = BATCH;
        if (rate > 0) {
            long long due = (long long)((t - start) * rate) - (long long)sent;
            if (due <= 0) {
                struct timespec pause = {0, 50000};
                nanosleep(&pause, NULL);
                t = now();
                continue;
            }
            batch = due < BATCH ? (int)due : BATCH;
        }
        int n = sendmmsg(fd, msgs, (unsigned int)batch, 0);
        if (n > 0) {
            sent += (unsigned long long)n;
        } else if (n < 0 && errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED && errno != EINTR) {
            perror("sendmmsg");
            return 1;
        }
        t = now();
    }
    printf("%llu %.6f\n", sent, t - start);
    return 0;
}
