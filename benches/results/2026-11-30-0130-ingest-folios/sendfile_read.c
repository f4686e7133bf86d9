// Read side of the folio question: 1,000 files of 200,000 bytes written whole ('w') or as
// 3,850 + 196,150 bytes ('s'), then sendfile(2) of each to /dev/null (page-cache lookups and
// the splice, no network), passes alternated; CPU time from getrusage.
//   cc -O2 -o sendfile_read sendfile_read.c && taskset -c 0 ./sendfile_read DIR 1000 20
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>
static double cpu(void){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_utime.tv_sec+r.ru_stime.tv_sec+(r.ru_utime.tv_usec+r.ru_stime.tv_usec)/1e6;}
static char buf[200000];
int main(int argc,char**argv){
  int n=atoi(argv[2]), passes=atoi(argv[3]); char p[256];
  for(int i=0;i<200000;i++)buf[i]=rand();
  for(int m=0;m<2;m++)for(int i=0;i<n;i++){
    snprintf(p,sizeof p,"%s/%c%05d",argv[1],m?'s':'w',i);
    int fd=open(p,O_CREAT|O_WRONLY|O_TRUNC,0644);
    if(m==0)pwrite(fd,buf,200000,0); else {pwrite(fd,buf,3850,0);pwrite(fd,buf+3850,200000-3850,3850);}
    close(fd);
  }
  int null=open("/dev/null",O_WRONLY);
  double t[2]={0,0};
  for(int ps=0;ps<passes;ps++)for(int mm=0;mm<2;mm++){int m=(ps&1)?1-mm:mm; double c0=cpu();
    for(int i=0;i<n;i++){snprintf(p,sizeof p,"%s/%c%05d",argv[1],m?'s':'w',i);
      int fd=open(p,O_RDONLY); off_t off=0; size_t left=200000;
      while(left){ssize_t k=sendfile(null,fd,&off,left); if(k<=0){perror("sendfile");return 1;} left-=k;}
      close(fd);}
    t[m]+=cpu()-c0;}
  printf("sendfile to /dev/null per file: whole-written %.2f us, split-written %.2f us, ratio %.3f\n",t[0]/n/passes*1e6,t[1]/n/passes*1e6,t[1]/t[0]);
}
