// folios FILE...: how each file's cached pages are grouped into folios (order histogram),
// from /proc/self/pagemap (PFNs of a read-only mapping) and /proc/kpageflags.
#include <stdio.h>
#include <stdint.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
  int pm = open("/proc/self/pagemap", O_RDONLY), kf = open("/proc/kpageflags", O_RDONLY);
  long total[12] = {0}; long pages = 0, missing = 0;
  for (int a = 1; a < argc; a++) {
    int fd = open(argv[a], O_RDONLY); struct stat st; if (fd < 0 || fstat(fd, &st)) continue;
    size_t n = st.st_size, np = (n + 4095) / 4096; if (!n) { close(fd); continue; }
    unsigned char *m = mmap(0, n, PROT_READ, MAP_SHARED, fd, 0);
    unsigned char *vec = malloc(np); mincore(m, n, vec);
    volatile unsigned s = 0;
    for (size_t i = 0; i < np; i++) if (vec[i] & 1) s += m[i * 4096];
    size_t i = 0;
    while (i < np) {
      if (!(vec[i] & 1)) { missing++; i++; continue; }
      uint64_t e; pread(pm, &e, 8, ((uintptr_t)m / 4096 + i) * 8);
      if (!(e >> 63)) { missing++; i++; continue; }
      uint64_t pfn = e & ((1ULL << 55) - 1), fl; pread(kf, &fl, 8, pfn * 8);
      // count the folio: a head followed by tails
      size_t len = 1;
      if (fl & (1ULL << 15)) {
        while (i + len < np) {
          uint64_t e2; pread(pm, &e2, 8, ((uintptr_t)m / 4096 + i + len) * 8);
          if (!(e2 >> 63)) break;
          uint64_t f2; pread(kf, &f2, 8, (e2 & ((1ULL << 55) - 1)) * 8);
          if (!(f2 & (1ULL << 16))) break;
          len++;
        }
      }
      int order = 0; while ((1UL << (order + 1)) <= len) order++;
      total[order] += len; pages += len; i += len;
    }
    munmap(m, n); close(fd); free(vec);
  }
  printf("pages %ld not cached %ld; share of cached pages by folio order:", pages, missing);
  for (int o = 0; o < 12; o++) if (total[o]) printf(" o%d(%dK)=%.1f%%", o, 4 << o, 100.0 * total[o] / pages);
  printf("\n");
  return 0;
}
