// Page-cache cost of writing a 200,000-byte file whole, or in two writes (HEAD bytes at offset
// 0, then the rest; with HEAD = 0: the rest first, at its offset, then 3,850 bytes at 0).
// Files stay (no unlink), as uploads do. Modes alternate in blocks; CPU time from getrusage.
//   cc -O2 -o folios folios.c && taskset -c 0 ./folios DIR 500 8 HEAD
// Run on a fresh ext4 after: sync; echo 3 > /proc/sys/vm/drop_caches;
// echo 1 > /proc/sys/vm/compact_memory; and touching 8 GiB (MADV_POPULATE_WRITE) and freeing it
// (see benches/ingest.py settle_memory: the VM's host charges the first touch of a page).
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static char buf[200000];

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DIR FILES_PER_BLOCK BLOCKS HEAD\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[2]), blocks = atoi(argv[3]), head = atoi(argv[4]);
    for (int i = 0; i < 200000; i++) buf[i] = rand();
    double t[2] = {0, 0};
    int cnt[2] = {0, 0}, seq = 0;
    char p[512];
    for (int b = 0; b < blocks; b++)
        for (int mode = 0; mode < 2; mode++) {
            int m = (b & 1) ? 1 - mode : mode;
            double c0 = cpu();
            for (int i = 0; i < n; i++, seq++) {
                snprintf(p, sizeof p, "%s/f%07d", argv[1], seq);
                int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
                if (fd < 0) { perror(p); return 1; }
                ssize_t w = 0;
                if (m == 0) {
                    w = pwrite(fd, buf, 200000, 0);
                } else if (head > 0) {
                    w = pwrite(fd, buf, head, 0);
                    w += pwrite(fd, buf + head, 200000 - head, head);
                } else {
                    w = pwrite(fd, buf + 3850, 200000 - 3850, 3850);
                    w += pwrite(fd, buf, 3850, 0);
                }
                if (w != 200000) { perror("pwrite"); return 1; }
                close(fd);
            }
            t[m] += cpu() - c0;
            cnt[m] += n;
        }
    printf("whole: %.1f us  split: %.1f us  split/whole %.3f\n", t[0] / cnt[0] * 1e6,
           t[1] / cnt[1] * 1e6, (t[1] / cnt[1]) / (t[0] / cnt[0]));
    return 0;
}
