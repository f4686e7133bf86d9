#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static double cpu(){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_utime.tv_sec+r.ru_utime.tv_usec/1e6+r.ru_stime.tv_sec+r.ru_stime.tv_usec/1e6;}
static long long sys_busy(){FILE*f=fopen("/proc/stat","r");long long a[10]={0};fscanf(f,"cpu %lld %lld %lld %lld %lld %lld %lld %lld",&a[0],&a[1],&a[2],&a[3],&a[4],&a[5],&a[6],&a[7]);fclose(f);return a[0]+a[1]+a[2]+a[5]+a[6]+a[7];}
int main(int argc,char**argv){
  int direct=atoi(argv[1]); int n=atoi(argv[2]); const char*dir=argv[3];
  size_t len=200000; char*buf; posix_memalign((void**)&buf,4096,262144); for(size_t i=0;i<262144;i++)buf[i]=rand();
  char tmp[512],fin[512];
  double c0=cpu(),t0=now(); long long s0=sys_busy();
  for(int i=0;i<n;i++){
    snprintf(tmp,sizeof tmp,"%s/.tmp%d",dir,i); snprintf(fin,sizeof fin,"%s/seg%d.ts",dir,i);
    int fd=open(tmp,O_CREAT|O_WRONLY|O_EXCL|O_CLOEXEC|(direct?O_DIRECT:0),0644);
    if(fd<0){perror("open");return 1;}
    if(direct){ size_t al=len&~4095UL; if(pwrite(fd,buf,al,0)!=(ssize_t)al){perror("pwrite");return 1;}
      int fl=fcntl(fd,F_GETFL); fcntl(fd,F_SETFL,fl&~O_DIRECT);
      if(pwrite(fd,buf+al,len-al,al)!=(ssize_t)(len-al)){perror("tail");return 1;}
    } else { if(pwrite(fd,buf,len,0)!=(ssize_t)len){perror("pwrite");return 1;} }
    close(fd); if(rename(tmp,fin)){perror("rename");return 1;}
  }
  double c1=cpu(),t1=now(); long long s1=sys_busy();
  // writeback of what is dirty, timed as system CPU
  sync(); long long s2=sys_busy(); double t2=now();
  long hz=sysconf(_SC_CLK_TCK);
  printf("%s: %d files, proc cpu %.1f us/file, wall %.1f us/file, system busy during %.1f us/file, sync adds %.1f us/file (%.0f ms)\n",
    direct?"direct":"buffered",n,(c1-c0)/n*1e6,(t1-t0)/n*1e6,(double)(s1-s0)/hz/n*1e6,(double)(s2-s1)/hz/n*1e6,(t2-t1)*1e3);
  return 0;
}
