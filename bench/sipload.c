/* sipload: a small SIP call generator (UAC) and answerer (UAS) for the nfsip benchmarks.
 *
 *   sipload uac LOCAL_IP LOCAL_PORT REMOTE_IP REMOTE_PORT [-n CALLS] [-w WINDOW] [-r RATE] [-t SECONDS]
 *               [-m MEDIA_BASE] [-s SPAN] [-T TIMEOUT_MS] [-p PREFIX] [-H] [-o SAMPLES_FILE] [-x tcp [-c CONNS]]
 *   sipload uas LOCAL_IP LOCAL_PORT [-k RTP_BEFORE] [-K RTP_AFTER] [-P RTP_SRC_PORT] [-t SECONDS]
 *               [-o SAMPLES_FILE] [-x tcp]
 *
 * Why not sipp: sipp costs far more CPU per message than the router path under test and shares the 2
 * vCPUs with it; this tool builds each message with one snprintf and sends it with one sendto, so the
 * numbers are about the router, not the generator. Every message is a complete, valid SIP message (an
 * INVITE and its 200 carry an SDP offer/answer), so nfsip runs its full parse/decide/rewrite path on it.
 *
 * UAC: call i is INVITE (SDP: c=LOCAL_IP, m=audio MEDIA_BASE + 2 * (i % SPAN)) -> 200 OK -> ACK, then
 *   - churn mode (default): BYE at once -> 200 OK; at most WINDOW calls in progress, at most RATE new
 *     calls per second (0: as fast as the window allows), until CALLS calls were started or SECONDS passed;
 *   - hold mode (-H): calls stay up; stdin commands drive it: "up N" establishes calls until N are up,
 *     "down N" sends BYEs until only N are up, "stop" abandons the running command (no new INVITE/BYE;
 *     it ends when the steps in flight are answered or failed), "quit" ends. Each up/down command is
 *     answered with one line "done <up> <failed> <seconds>" on stdout.
 *   A step not answered within TIMEOUT_MS fails the call (no retransmissions: the lab loses nothing, and a
 *   lost message must show up as a failure, not be hidden by a retry).
 * UAS: answers INVITE with 200 OK + SDP (c=LOCAL_IP m=audio RTP_SRC_PORT) and BYE with 200 OK, to the
 *   address the request came from (rport style). With -k/-K it sends that many 172-byte RTP packets from
 *   RTP_SRC_PORT to the address:port of the INVITE's SDP right before / right after its 200 OK: a far end
 *   that starts sending media the instant it has the SDP (nfsip must have the pinhole live by then).
 *   Runs until SIGTERM/SIGINT or SECONDS.
 *
 * Transport (-x): udp (default) or tcp. Over TCP the UAC opens CONNS persistent connections (default 4) to
 *   REMOTE_IP:REMOTE_PORT from LOCAL_IP (an ephemeral port; Via and Contact still name LOCAL_PORT, as a phone's
 *   do) before it starts, and sends call i's messages on connection i % CONNS; the UAS listens on LOCAL_IP:
 *   LOCAL_PORT and answers each request on the connection it came on. Both cut their streams into messages by
 *   Content-Length (CRLF keepalives between messages skipped) and set TCP_NODELAY, so that each message leaves
 *   when it is written: the generator adds no Nagle delay of its own. The UAC counts its connections that
 *   the other end closed ("conn_lost"); their calls fail by timeout.
 *
 * Latency: every message carries "X-Bench-T: <CLOCK_MONOTONIC ns at send>". The namespaces share the
 * machine's clock, so the receiver's now - T is the one-way time across the router (and the queue).
 * At exit each side prints one JSON object: messages sent/received per kind, latency percentiles per
 * kind, its own CPU time (getrusage) and, for the UAC, calls completed/failed. With -o it also writes
 * every latency sample as "<kind> <nanoseconds>" lines to SAMPLES_FILE (for percentiles over a mix).
 *
 * Compiled at run time by bench/common.py (gcc -O2).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CALLS 2000000
#define MAX_SAMPLES 4000000
#define BUF 4096
#define MAX_CONNS 256
#define IN_BUF 65536 /* a TCP connection's unread bytes: many messages, far more than one */

enum kind { K_INVITE, K_200_INVITE, K_ACK, K_BYE, K_200_BYE, K_OTHER, K_COUNT };
static const char *kind_name[K_COUNT] = {"INVITE", "200-INVITE", "ACK", "BYE", "200-BYE", "other"};

enum state { S_IDLE, S_INVITING, S_UP, S_BYEING, S_DONE, S_FAILED };

struct call {
    uint64_t deadline_ns;
    uint8_t state;
};

struct samples {
    uint32_t *v; /* one-way latency in ns (capped at 4 s) */
    size_t n, cap;
};

static struct samples lat[K_COUNT];
static unsigned long long n_sent[K_COUNT], n_recv[K_COUNT], rtp_sent;
static unsigned long long conn_lost;
static volatile sig_atomic_t stop_flag;
static const char *sample_file;
static int use_tcp;

/* One TCP connection: what was read but not yet cut into messages, and what could not be written yet. */
struct conn {
    int fd;
    size_t have;
    char in[IN_BUF];
    char *out;
    size_t out_len, out_cap;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void add_sample(enum kind k, uint64_t ns) {
    struct samples *s = &lat[k];
    if (s->n >= MAX_SAMPLES) return;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        uint32_t *v = realloc(s->v, cap * sizeof *v);
        if (!v) return;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = ns > 4000000000ull ? 4000000000u : (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(struct samples *s, double p) {
    if (!s->n) return 0;
    size_t i = (size_t)(p * (double)(s->n - 1) + 0.5);
    return s->v[i] / 1000.0;
}

static void print_summary(const char *role, double elapsed, unsigned long long done, unsigned long long failed,
                          unsigned long long started) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (sample_file) {
        FILE *f = fopen(sample_file, "w");
        if (f) {
            for (int k = 0; k < K_COUNT; k++)
                for (size_t i = 0; i < lat[k].n; i++) fprintf(f, "%s %u\n", kind_name[k], lat[k].v[i]);
            fclose(f);
        }
    }
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("{\"role\": \"%s\", \"elapsed\": %.6f, \"cpu\": %.6f, \"calls_started\": %llu, \"calls_done\": %llu, "
           "\"calls_failed\": %llu, \"rtp_sent\": %llu, \"conn_lost\": %llu, \"sent\": {",
           role, elapsed, cpu, started, done, failed, rtp_sent, conn_lost);
    for (int k = 0; k < K_COUNT; k++) printf("%s\"%s\": %llu", k ? ", " : "", kind_name[k], n_sent[k]);
    printf("}, \"received\": {");
    for (int k = 0; k < K_COUNT; k++) printf("%s\"%s\": %llu", k ? ", " : "", kind_name[k], n_recv[k]);
    printf("}, \"latency_us\": {");
    int first = 1;
    for (int k = 0; k < K_COUNT; k++) {
        struct samples *s = &lat[k];
        if (!s->n) continue;
        qsort(s->v, s->n, sizeof *s->v, cmp_u32);
        double sum = 0;
        for (size_t i = 0; i < s->n; i++) sum += s->v[i];
        printf("%s\"%s\": {\"n\": %zu, \"mean\": %.1f, \"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"max\": %.1f}",
               first ? "" : ", ", kind_name[k], s->n, sum / (double)s->n / 1000.0, pct(s, 0.5), pct(s, 0.9),
               pct(s, 0.99), pct(s, 1.0));
        first = 0;
    }
    printf("}}\n");
    fflush(stdout);
}

static int open_socket(const char *ip, int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    int one = 1, big = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", ip); exit(2); }
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    return fd;
}

/* The value after "\r\n<name>" up to the end of line, or NULL. */
static const char *header(const char *msg, const char *name, size_t *len) {
    const char *p = strstr(msg, name);
    if (!p) return NULL;
    p += strlen(name);
    while (*p == ' ') p++;
    const char *e = strstr(p, "\r\n");
    if (!e) return NULL;
    *len = (size_t)(e - p);
    return p;
}

/* ------------------------------------------------------------------------------------------------ TCP */
static void tcp_options(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int parse_transport(const char *name) {
    if (strcmp(name, "tcp") == 0) return 1;
    if (strcmp(name, "udp") == 0) return 0;
    return -1;
}

static void conn_close(struct conn *c) {
    if (c->fd < 0) return;
    close(c->fd);
    c->fd = -1;
    c->have = c->out_len = 0;
}

/* Write what the connection has waiting; 0, or -1 when it failed (the connection is closed). */
static int conn_flush(struct conn *c) {
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n <= 0) { conn_close(c); return -1; }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    return 0;
}

/* Send one message, or keep what the socket does not take now for conn_flush(); 0 or -1. */
static int conn_send(struct conn *c, const char *msg, size_t len) {
    if (c->fd < 0) return -1;
    if (!c->out_len) {
        ssize_t n = send(c->fd, msg, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { conn_close(c); return -1; }
        if (n > 0) { msg += n; len -= (size_t)n; }
        if (!len) return 0;
    }
    if (c->out_len + len > c->out_cap) {
        size_t cap = (c->out_len + len) * 2;
        char *out = realloc(c->out, cap);
        if (!out) { conn_close(c); return -1; }
        c->out = out;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, msg, len);
    c->out_len += len;
    return 0;
}

/* The length of the whole message at the start of buf (after *skip line ends: keepalives), 0 when it is not
 * all there yet, -1 when it cannot be framed (no Content-Length, or larger than a connection's buffer). */
static long frame_length(const char *buf, size_t have, size_t *skip) {
    size_t s = 0;
    while (s < have && (buf[s] == '\r' || buf[s] == '\n')) s++;
    *skip = s;
    const char *start = buf + s, *end = memmem(start, have - s, "\r\n\r\n", 4);
    if (!end) return have - s >= IN_BUF / 2 ? -1 : 0;
    size_t head = (size_t)(end - start) + 4;
    long body = -1;
    for (const char *line = start; line < end;) {
        const char *eol = memmem(line, (size_t)(end - line) + 2, "\r\n", 2);
        if (strncasecmp(line, "Content-Length:", 15) == 0) body = strtol(line + 15, NULL, 10);
        else if (strncasecmp(line, "l:", 2) == 0) body = strtol(line + 2, NULL, 10);
        line = eol + 2;
    }
    if (body < 0 || head + (size_t)body >= IN_BUF / 2) return -1;
    return have - s >= head + (size_t)body ? (long)(head + (size_t)body) : 0;
}

/* Read what the peer sent and hand each whole message to handle(), NUL-terminated; -1 when the connection
 * ended or cannot be framed (it is closed then). */
static int conn_read(struct conn *c, void (*handle)(void *ctx, struct conn *c, char *msg), void *ctx) {
    char msg[IN_BUF / 2 + 1];
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->have, IN_BUF - c->have, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n <= 0) { conn_close(c); return -1; }
        c->have += (size_t)n;
        size_t used = 0;
        for (;;) {
            size_t skip;
            long len = frame_length(c->in + used, c->have - used, &skip);
            if (len < 0) {
                fprintf(stderr, "sipload: a message on a TCP connection cannot be framed\n");
                conn_close(c);
                return -1;
            }
            used += skip;
            if (len == 0) break;
            memcpy(msg, c->in + used, (size_t)len);
            msg[len] = 0;
            used += (size_t)len;
            handle(ctx, c, msg);
            if (c->fd < 0) return -1;
        }
        memmove(c->in, c->in + used, c->have - used);
        c->have -= used;
    }
}

static void record_latency(const char *msg, enum kind k) {
    size_t len;
    const char *t = header(msg, "\r\nX-Bench-T:", &len);
    n_recv[k]++;
    if (t) {
        uint64_t sent = strtoull(t, NULL, 10), now = now_ns();
        if (sent && now >= sent) add_sample(k, now - sent);
    }
}

/* ------------------------------------------------------------------------------------------------ UAC */
struct uac {
    int fd;              /* UDP */
    struct conn *conns;  /* TCP: call i on conns[i % nconns] */
    int nconns;
    struct sockaddr_in remote;
    const char *lip, *rip;
    int lport, rport;
    const char *prefix;
    int media_base, span;
    struct call *calls;
    unsigned long long ncalls, started, up, done, failed, inflight, low;
    uint64_t timeout_ns;
};

static void uac_send(struct uac *u, enum kind k, unsigned long long i) {
    char buf[BUF], sdp[512];
    int n;
    unsigned long long t = now_ns();
    const char *method = k == K_INVITE ? "INVITE" : k == K_ACK ? "ACK" : "BYE";
    const char *via = use_tcp ? "TCP" : "UDP", *contact = use_tcp ? ";transport=tcp" : "";
    int cseq = k == K_BYE ? 2 : 1;
    const char *totag = k == K_INVITE ? "" : ";tag=uas";
    if (k == K_INVITE) {
        int port = u->media_base + 2 * (int)(i % (unsigned long long)u->span);
        int sl = snprintf(sdp, sizeof sdp,
                          "v=0\r\no=bench %llu 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
                          "m=audio %d RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
                          "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n",
                          i, u->lip, u->lip, port);
        n = snprintf(buf, sizeof buf,
                     "INVITE sip:bench@%s:%d SIP/2.0\r\n"
                     "Via: SIP/2.0/%s %s:%d;branch=z9hG4bK%s%lluI;rport\r\n"
                     "Max-Forwards: 70\r\n"
                     "From: \"bench\" <sip:caller@%s:%d>;tag=%s%llu\r\n"
                     "To: <sip:bench@%s:%d>\r\n"
                     "Call-ID: %llu-%s@%s\r\n"
                     "CSeq: 1 INVITE\r\n"
                     "Contact: <sip:caller@%s:%d%s>\r\n"
                     "User-Agent: nfsip-sipload/1\r\n"
                     "X-Bench-T: %llu\r\n"
                     "Content-Type: application/sdp\r\n"
                     "Content-Length: %d\r\n\r\n%s",
                     u->rip, u->rport, via, u->lip, u->lport, u->prefix, i, u->lip, u->lport, u->prefix, i, u->rip,
                     u->rport, i, u->prefix, u->lip, u->lip, u->lport, contact, t, sl, sdp);
    } else {
        n = snprintf(buf, sizeof buf,
                     "%s sip:bench@%s:%d SIP/2.0\r\n"
                     "Via: SIP/2.0/%s %s:%d;branch=z9hG4bK%s%llu%c;rport\r\n"
                     "Max-Forwards: 70\r\n"
                     "From: \"bench\" <sip:caller@%s:%d>;tag=%s%llu\r\n"
                     "To: <sip:bench@%s:%d>%s\r\n"
                     "Call-ID: %llu-%s@%s\r\n"
                     "CSeq: %d %s\r\n"
                     "Contact: <sip:caller@%s:%d%s>\r\n"
                     "User-Agent: nfsip-sipload/1\r\n"
                     "X-Bench-T: %llu\r\n"
                     "Content-Length: 0\r\n\r\n",
                     method, u->rip, u->rport, via, u->lip, u->lport, u->prefix, i, method[0], u->lip, u->lport,
                     u->prefix, i, u->rip, u->rport, totag, i, u->prefix, u->lip, cseq, method, u->lip, u->lport,
                     contact, t);
    }
    if (use_tcp) {
        if (conn_send(&u->conns[i % (unsigned long long)u->nconns], buf, (size_t)n) == 0) n_sent[k]++;
    } else if (sendto(u->fd, buf, (size_t)n, 0, (struct sockaddr *)&u->remote, sizeof u->remote) == n) {
        n_sent[k]++;
    }
}

static void uac_start(struct uac *u) {
    unsigned long long i = u->started++;
    u->calls[i].state = S_INVITING;
    u->calls[i].deadline_ns = now_ns() + u->timeout_ns;
    u->inflight++;
    uac_send(u, K_INVITE, i);
}

static void uac_fail(struct uac *u, unsigned long long i) {
    if (u->calls[i].state == S_UP || u->calls[i].state == S_BYEING) u->up--;
    u->calls[i].state = S_FAILED;
    u->failed++;
    u->inflight--;
}

/* One response (NUL-terminated). hold: keep established calls up; churn: BYE at once. */
static void uac_response(struct uac *u, const char *buf, int hold) {
    if (strncmp(buf, "SIP/2.0 ", 8) != 0) { n_recv[K_OTHER]++; return; }
    int status = atoi(buf + 8);
    size_t len;
    const char *cid = header(buf, "\r\nCall-ID:", &len);
    const char *cseq = header(buf, "\r\nCSeq:", &len);
    if (!cid || !cseq) { n_recv[K_OTHER]++; return; }
    unsigned long long i = strtoull(cid, NULL, 10);
    int is_bye = strstr(cseq, "BYE") != NULL && strstr(cseq, "BYE") < cseq + len;
    record_latency(buf, is_bye ? K_200_BYE : K_200_INVITE);
    if (status < 200 || i >= u->started) return;
    struct call *c = &u->calls[i];
    if (!is_bye && c->state == S_INVITING) {
        if (status >= 300) { uac_fail(u, i); return; }
        uac_send(u, K_ACK, i);
        u->up++;
        if (hold) {
            c->state = S_UP;
            u->inflight--;
        } else {
            c->state = S_BYEING;
            c->deadline_ns = now_ns() + u->timeout_ns;
            uac_send(u, K_BYE, i);
        }
    } else if (is_bye && c->state == S_BYEING) {
        c->state = S_DONE;
        u->up--;
        u->done++;
        u->inflight--;
    }
}

struct uac_read {
    struct uac *u;
    int hold;
};

static void uac_tcp_message(void *ctx, struct conn *c, char *msg) {
    (void)c;
    struct uac_read *r = ctx;
    uac_response(r->u, msg, r->hold);
}

/* Wait up to timeout_ms for the UAC's socket(s) and `extra` (stdin in hold mode: its revents are set), then
 * handle every response that arrived and write what TCP connections have waiting. */
static void uac_poll(struct uac *u, int timeout_ms, int hold, struct pollfd *extra) {
    struct pollfd p[MAX_CONNS + 1];
    int n = 0;
    if (use_tcp) {
        for (int j = 0; j < u->nconns; j++)
            p[n++] = (struct pollfd){.fd = u->conns[j].fd, .events = POLLIN | (u->conns[j].out_len ? POLLOUT : 0)};
    } else {
        p[n++] = (struct pollfd){.fd = u->fd, .events = POLLIN};
    }
    if (extra) p[n++] = *extra;
    poll(p, (nfds_t)n, timeout_ms);
    if (extra) extra->revents = p[n - 1].revents;
    if (!use_tcp) {
        char buf[BUF + 1];
        ssize_t got;
        while ((got = recv(u->fd, buf, BUF, 0)) > 0) {
            buf[got] = 0;
            uac_response(u, buf, hold);
        }
        return;
    }
    struct uac_read r = {u, hold};
    for (int j = 0; j < u->nconns; j++) {
        struct conn *c = &u->conns[j];
        if (c->fd < 0) continue;
        if (p[j].revents & (POLLIN | POLLHUP | POLLERR)) conn_read(c, uac_tcp_message, &r);
        if (c->fd >= 0 && c->out_len) conn_flush(c);
    }
}

/* The UAC's TCP connections that ended before it did (the relay or the server closed them). */
static void uac_count_lost(struct uac *u) {
    for (int j = 0; use_tcp && j < u->nconns; j++) conn_lost += u->conns[j].fd < 0;
}

/* The UAC's TCP connections, made before the clock starts. */
static void uac_connect(struct uac *u) {
    u->conns = calloc((size_t)u->nconns, sizeof *u->conns);
    if (!u->conns) { perror("calloc"); exit(1); }
    for (int j = 0; j < u->nconns; j++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { perror("socket"); exit(1); }
        struct sockaddr_in a = {.sin_family = AF_INET};
        inet_pton(AF_INET, u->lip, &a.sin_addr);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
        tcp_options(fd);
        if (connect(fd, (struct sockaddr *)&u->remote, sizeof u->remote) < 0) { perror("connect"); exit(1); }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        u->conns[j].fd = fd;
    }
}

static void uac_expire(struct uac *u) {
    uint64_t t = now_ns();
    while (u->low < u->started && (u->calls[u->low].state == S_DONE || u->calls[u->low].state == S_FAILED)) u->low++;
    for (unsigned long long i = u->low; i < u->started; i++) {
        struct call *c = &u->calls[i];
        if ((c->state == S_INVITING || c->state == S_BYEING) && c->deadline_ns < t) uac_fail(u, i);
    }
}

static int usage(void) {
    fprintf(stderr,
            "usage: sipload uac LOCAL_IP LOCAL_PORT REMOTE_IP REMOTE_PORT [-n CALLS] [-w WINDOW] [-r RATE]\n"
            "                   [-t SECONDS] [-m MEDIA_BASE] [-s SPAN] [-T TIMEOUT_MS] [-p PREFIX] [-H] [-o FILE]\n"
            "                   [-x udp|tcp] [-c CONNS]\n"
            "       sipload uas LOCAL_IP LOCAL_PORT [-k RTP_BEFORE] [-K RTP_AFTER] [-P RTP_SRC_PORT] [-t SECONDS]\n"
            "                   [-o FILE] [-x udp|tcp]\n");
    return 2;
}

static int run_uac(int argc, char **argv) {
    if (argc < 6) return usage();
    struct uac u = {0};
    u.lip = argv[2];
    u.lport = atoi(argv[3]);
    u.rip = argv[4];
    u.rport = atoi(argv[5]);
    u.prefix = "b";
    u.media_base = 10000;
    u.span = 20000;
    u.nconns = 4;
    unsigned long long window = 16, ncalls = 1000;
    double rate = 0, seconds = 1e9, timeout_ms = 2000;
    int hold = 0, opt;
    optind = 6;
    while ((opt = getopt(argc, argv, "n:w:r:t:m:s:T:p:Ho:x:c:")) != -1) {
        switch (opt) {
        case 'n': ncalls = strtoull(optarg, NULL, 10); break;
        case 'w': window = strtoull(optarg, NULL, 10); break;
        case 'r': rate = atof(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'm': u.media_base = atoi(optarg); break;
        case 's': u.span = atoi(optarg); break;
        case 'T': timeout_ms = atof(optarg); break;
        case 'p': u.prefix = optarg; break;
        case 'H': hold = 1; break;
        case 'o': sample_file = optarg; break;
        case 'x': use_tcp = parse_transport(optarg); break;
        case 'c': u.nconns = atoi(optarg); break;
        default: return usage();
        }
    }
    if (ncalls == 0 || ncalls > MAX_CALLS || window == 0 || u.span <= 0 || u.media_base < 1024 ||
        u.media_base + 2 * u.span > 65536 || strchr(u.prefix, '-') || strlen(u.prefix) > 32 || use_tcp < 0 ||
        u.nconns < 1 || u.nconns > MAX_CONNS)
        return usage();
    u.ncalls = ncalls;
    u.timeout_ns = (uint64_t)(timeout_ms * 1e6);
    u.calls = calloc(ncalls, sizeof *u.calls);
    if (!u.calls) { perror("calloc"); return 1; }
    u.remote.sin_family = AF_INET;
    u.remote.sin_port = htons((uint16_t)u.rport);
    if (inet_pton(AF_INET, u.rip, &u.remote.sin_addr) != 1) return usage();
    if (use_tcp) uac_connect(&u);
    else u.fd = open_socket(u.lip, u.lport);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    uint64_t t0 = now_ns(), last_expire = t0;
    if (!hold) {
        uint64_t end = t0 + (uint64_t)(seconds * 1e9);
        while (!stop_flag) {
            uint64_t t = now_ns();
            int starting = t < end && u.started < u.ncalls;
            while (starting && u.inflight < window && u.started < u.ncalls &&
                   (rate <= 0 || (double)u.started < (double)(t - t0) / 1e9 * rate))
                uac_start(&u);
            if (!starting && u.inflight == 0) break;
            uac_poll(&u, 1, 0, NULL);
            t = now_ns();
            if (t - last_expire > 50000000ull) { uac_expire(&u); last_expire = t; }
        }
        uac_count_lost(&u);
        print_summary("uac", (double)(now_ns() - t0) / 1e9, u.done, u.failed, u.started);
        return 0;
    }

    /* hold mode: commands on stdin, one at a time; "stop" abandons the running one */
    char line[128];
    size_t have = 0;
    long long target = -1; /* calls wanted up; -1: no command running */
    int going_up = 0, stopping = 0, quit = 0;
    uint64_t cmd_start = 0;
    unsigned long long bye_cursor = 0;
    while (!stop_flag && !quit) {
        struct pollfd input = {.fd = 0, .events = POLLIN};
        uac_poll(&u, target < 0 ? 100 : 1, 1, &input);
        uint64_t t = now_ns();
        if (t - last_expire > 50000000ull) { uac_expire(&u); last_expire = t; }
        if (input.revents & (POLLIN | POLLHUP)) {
            ssize_t n = read(0, line + have, sizeof line - 1 - have);
            if (n <= 0) break;
            have += (size_t)n;
            line[have] = 0;
        }
        char *nl = strchr(line, '\n');
        if (nl && (target < 0 || strncmp(line, "stop", 4) == 0)) {
            *nl = 0;
            long long arg = 0;
            if (strncmp(line, "quit", 4) == 0) quit = 1;
            else if (strncmp(line, "stop", 4) == 0) stopping = target >= 0;
            else if (sscanf(line, "up %lld", &arg) == 1) { target = arg; going_up = 1; cmd_start = now_ns(); }
            else if (sscanf(line, "down %lld", &arg) == 1) { target = arg; going_up = 0; cmd_start = now_ns(); }
            else { printf("error unknown command\n"); fflush(stdout); }
            size_t rest = have - (size_t)(nl + 1 - line);
            memmove(line, nl + 1, rest);
            have = rest;
            line[have] = 0;
        } else if (!nl && have >= sizeof line - 1) {
            have = 0;
        }
        if (target < 0) continue;
        int finished;
        if (going_up) {
            while (!stopping && (long long)(u.up + u.inflight) < target && u.inflight < window && u.started < u.ncalls)
                uac_start(&u);
            finished = ((long long)u.up >= target || u.started >= u.ncalls || stopping) && u.inflight == 0;
        } else {
            while (!stopping && (long long)u.up - (long long)u.inflight > target && u.inflight < window &&
                   bye_cursor < u.started) {
                struct call *c = &u.calls[bye_cursor];
                if (c->state == S_UP) {
                    c->state = S_BYEING;
                    c->deadline_ns = now_ns() + u.timeout_ns;
                    u.inflight++;
                    uac_send(&u, K_BYE, bye_cursor);
                }
                bye_cursor++;
            }
            finished = ((long long)u.up <= target || bye_cursor >= u.started || stopping) && u.inflight == 0;
        }
        if (finished) {
            printf("done %llu %llu %.6f\n", u.up, u.failed, (double)(now_ns() - cmd_start) / 1e9);
            fflush(stdout);
            target = -1;
            stopping = 0;
        }
    }
    uac_count_lost(&u);
    print_summary("uac", (double)(now_ns() - t0) / 1e9, u.done, u.failed, u.started);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ UAS */
static int copy_header(char *out, size_t room, const char *msg, const char *name, const char *suffix) {
    size_t len;
    char key[64];
    snprintf(key, sizeof key, "\r\n%s:", name);
    const char *v = header(msg, key, &len);
    if (!v) return -1;
    return snprintf(out, room, "%s: %.*s%s\r\n", name, (int)len, v, suffix);
}

static unsigned char rtp[172]; /* the RTP packet of -k/-K: 0x80, PCMA, then 0xd5 (A-law silence) */

struct uas {
    const char *lip;
    int lport, fd, rtp_fd, rtp_before, rtp_after, rtp_port;
    unsigned long long answered;
};

/* One request (NUL-terminated): its latency, and for INVITE and BYE a 200 OK sent back on `conn` (TCP) or to
 * `from` (UDP), between the RTP packets asked for by -k/-K. */
static void uas_request(struct uas *s, const char *buf, struct conn *conn, struct sockaddr_in *from,
                        socklen_t flen) {
    char out[BUF];
    enum kind k = strncmp(buf, "INVITE ", 7) == 0 ? K_INVITE
                  : strncmp(buf, "ACK ", 4) == 0  ? K_ACK
                  : strncmp(buf, "BYE ", 4) == 0  ? K_BYE
                                                  : K_OTHER;
    record_latency(buf, k);
    if (k != K_INVITE && k != K_BYE) return;
    struct sockaddr_in media = {.sin_family = AF_INET};
    int have_media = 0;
    if (k == K_INVITE && s->rtp_fd >= 0) {
        const char *c = strstr(buf, "\r\nc=IN IP4 "), *m = strstr(buf, "\r\nm=audio ");
        if (c && m) {
            char ip[64];
            if (sscanf(c + 11, "%63[0-9.]", ip) == 1 && inet_pton(AF_INET, ip, &media.sin_addr) == 1) {
                media.sin_port = htons((uint16_t)atoi(m + 10));
                have_media = 1;
            }
        }
    }
    for (int j = 0; have_media && j < s->rtp_before; j++)
        if (sendto(s->rtp_fd, rtp, sizeof rtp, 0, (struct sockaddr *)&media, sizeof media) > 0) rtp_sent++;
    int o = 0;
    o += snprintf(out + o, sizeof out - o, "SIP/2.0 200 OK\r\n");
    int r = copy_header(out + o, sizeof out - o, buf, "Via", "");
    if (r < 0) return;
    o += r;
    if ((r = copy_header(out + o, sizeof out - o, buf, "From", "")) < 0) return;
    o += r;
    if ((r = copy_header(out + o, sizeof out - o, buf, "To", k == K_INVITE ? ";tag=uas" : "")) < 0) return;
    o += r;
    if ((r = copy_header(out + o, sizeof out - o, buf, "Call-ID", "")) < 0) return;
    o += r;
    if ((r = copy_header(out + o, sizeof out - o, buf, "CSeq", "")) < 0) return;
    o += r;
    unsigned long long t = now_ns();
    if (k == K_INVITE) {
        char sdp[512];
        int sl = snprintf(sdp, sizeof sdp,
                          "v=0\r\no=uas 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
                          "m=audio %d RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
                          "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
                          "a=sendrecv\r\n",
                          s->lip, s->lip, s->rtp_port);
        o += snprintf(out + o, sizeof out - o,
                      "Contact: <sip:bench@%s:%d%s>\r\nX-Bench-T: %llu\r\nContent-Type: application/sdp\r\n"
                      "Content-Length: %d\r\n\r\n%s",
                      s->lip, s->lport, conn ? ";transport=tcp" : "", t, sl, sdp);
    } else {
        o += snprintf(out + o, sizeof out - o, "X-Bench-T: %llu\r\nContent-Length: 0\r\n\r\n", t);
    }
    if (o >= (int)sizeof out) return;
    int sent = conn ? conn_send(conn, out, (size_t)o) == 0
                    : sendto(s->fd, out, (size_t)o, 0, (struct sockaddr *)from, flen) == o;
    if (sent) {
        n_sent[k == K_INVITE ? K_200_INVITE : K_200_BYE]++;
        s->answered++;
    }
    for (int j = 0; have_media && j < s->rtp_after; j++)
        if (sendto(s->rtp_fd, rtp, sizeof rtp, 0, (struct sockaddr *)&media, sizeof media) > 0) rtp_sent++;
}

static void uas_tcp_message(void *ctx, struct conn *c, char *msg) { uas_request(ctx, msg, c, NULL, 0); }

static int tcp_listen(const char *ip, int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", ip); exit(2); }
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    if (listen(fd, 128) < 0) { perror("listen"); exit(1); }
    return fd;
}

/* TCP: accept connections on s->fd and answer the requests of each; until SIGTERM/SIGINT or `end`. */
static void uas_serve_tcp(struct uas *s, uint64_t end) {
    static struct conn conns[MAX_CONNS];
    int nconns = 0;
    while (!stop_flag && now_ns() < end) {
        struct pollfd p[MAX_CONNS + 1];
        p[0] = (struct pollfd){.fd = s->fd, .events = POLLIN};
        for (int j = 0; j < nconns; j++)
            p[j + 1] = (struct pollfd){.fd = conns[j].fd, .events = POLLIN | (conns[j].out_len ? POLLOUT : 0)};
        poll(p, (nfds_t)nconns + 1, 100);
        for (int j = 0; j < nconns; j++) {
            struct conn *c = &conns[j];
            if (c->fd >= 0 && p[j + 1].revents & (POLLIN | POLLHUP | POLLERR)) conn_read(c, uas_tcp_message, s);
            if (c->fd >= 0 && c->out_len) conn_flush(c);
        }
        for (int j = 0; j < nconns;) { /* drop the closed ones; a peer that closes is no loss for a UAS */
            if (conns[j].fd >= 0) { j++; continue; }
            free(conns[j].out);
            conns[j] = conns[--nconns];
        }
        if (p[0].revents & POLLIN) {
            int fd;
            while ((fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                if (nconns == MAX_CONNS) { close(fd); continue; }
                tcp_options(fd);
                struct conn *c = &conns[nconns++];
                c->fd = fd;
                c->have = c->out_len = c->out_cap = 0;
                c->out = NULL;
            }
        }
    }
}

static void uas_serve_udp(struct uas *s, uint64_t end) {
    char buf[BUF + 1];
    while (!stop_flag && now_ns() < end) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        poll(&p, 1, 100);
        for (;;) {
            struct sockaddr_in from;
            socklen_t flen = sizeof from;
            ssize_t n = recvfrom(s->fd, buf, BUF, 0, (struct sockaddr *)&from, &flen);
            if (n <= 0) break;
            buf[n] = 0;
            uas_request(s, buf, NULL, &from, flen);
        }
    }
}

static int run_uas(int argc, char **argv) {
    if (argc < 4) return usage();
    struct uas s = {.lip = argv[2], .lport = atoi(argv[3]), .rtp_port = 7000, .rtp_fd = -1};
    double seconds = 1e9;
    int opt;
    optind = 4;
    while ((opt = getopt(argc, argv, "k:K:P:t:o:x:")) != -1) {
        switch (opt) {
        case 'k': s.rtp_before = atoi(optarg); break;
        case 'K': s.rtp_after = atoi(optarg); break;
        case 'P': s.rtp_port = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'o': sample_file = optarg; break;
        case 'x': use_tcp = parse_transport(optarg); break;
        default: return usage();
        }
    }
    if (s.rtp_before < 0 || s.rtp_after < 0 || s.rtp_before + s.rtp_after > 1000 || use_tcp < 0) return usage();
    s.fd = use_tcp ? tcp_listen(s.lip, s.lport) : open_socket(s.lip, s.lport);
    if (s.rtp_before + s.rtp_after > 0) s.rtp_fd = open_socket(s.lip, s.rtp_port);
    memset(rtp, 0xd5, sizeof rtp);
    rtp[0] = 0x80;
    rtp[1] = 8;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    if (use_tcp) uas_serve_tcp(&s, end);
    else uas_serve_udp(&s, end);
    /* for the UAS, calls_done counts the requests it answered */
    print_summary("uas", (double)(now_ns() - t0) / 1e9, s.answered, 0, 0);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "uac") == 0) return run_uac(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "uas") == 0) return run_uas(argc, argv);
    return usage();
}
