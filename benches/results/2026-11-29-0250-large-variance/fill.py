import os, random, sys
mode = sys.argv[1]
files = [l.strip() for l in open("/work/prof/large-files.txt") if l.strip()]
for f in files:
    fd = os.open(f, os.O_RDONLY); n = os.fstat(fd).st_size
    if mode == "large":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while os.read(fd, 1 << 20): pass
    else:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        pages = list(range((n + 4095) // 4096)); random.shuffle(pages)
        for p in pages: os.pread(fd, 4096, p * 4096)
    os.close(fd)
