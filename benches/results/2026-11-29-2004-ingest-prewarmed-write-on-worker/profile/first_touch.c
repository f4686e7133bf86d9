#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int c,char**v){size_t n=(size_t)atol(v[1])<<20; int sleep_ms=atoi(v[2]);
for(int r=0;r<4;r++){char*p=mmap(0,n,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
double t=now(); for(size_t i=0;i<n;i+=4096)p[i]=1; double d=now()-t;
printf("round %d: %.1f us per MB (%.2f us/page)\n",r,d*1e6/(n>>20),d*1e6/(n/4096));
munmap(p,n); usleep(sleep_ms*1000);} }
