/* Escape attempts that busybox cannot make: each subcommand tries one thing and prints
 * "OK" if the kernel allowed it, or "ERR <errno name>" if it refused. The tests decide
 * what counts as blocked. Built static by tests/integration/test_escape.py. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/un.h>
#include <grp.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <sys/wait.h>
#include <unistd.h>

static int report(int rc) {
    if (rc < 0) printf("ERR %s\n", strerrorname_np(errno));
    else printf("OK\n");
    return 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    const char *arg = argc > 2 ? argv[2] : "";
    if (!strcmp(cmd, "ptrace"))
        return report(ptrace(PTRACE_ATTACH, atoi(arg), 0, 0) < 0 ? -1 : 0);
    if (!strcmp(cmd, "capset")) { /* raise capability number `arg` */
        struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct d[2];
        syscall(SYS_capget, &h, d);
        int cap = atoi(arg);
        d[cap / 32].effective |= 1u << (cap % 32);
        d[cap / 32].permitted |= 1u << (cap % 32);
        return report(syscall(SYS_capset, &h, d));
    }
    if (!strcmp(cmd, "setuid0")) return report(setuid(0));
    if (!strcmp(cmd, "handle")) { /* "shocker": open a file by a guessed handle */
        struct { struct file_handle fh; unsigned char raw[8]; } h;
        h.fh.handle_bytes = 8; h.fh.handle_type = 1;
        memset(h.raw, 0, 8); h.raw[0] = 2; /* inode 2: an ext4 root */
        return report(open_by_handle_at(AT_FDCWD, &h.fh, O_RDONLY));
    }
    if (!strcmp(cmd, "rawsend")) { /* an ICMP echo to `arg` over a raw socket */
        int s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
        if (s < 0) return report(-1);
        struct icmphdr icmp = {.type = ICMP_ECHO};
        struct sockaddr_in a = {.sin_family = AF_INET};
        inet_pton(AF_INET, arg, &a.sin_addr);
        return report(sendto(s, &icmp, sizeof icmp, 0, (struct sockaddr *)&a, sizeof a) < 0
                      ? -1 : 0);
    }
    if (!strcmp(cmd, "connect")) { /* TCP to `arg`:`argv[3]` */
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, arg, &a.sin_addr);
        return report(connect(s, (struct sockaddr *)&a, sizeof a));
    }
    if (!strcmp(cmd, "abstract")) { /* a host abstract unix socket named `arg` */
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path + 1, arg, sizeof a.sun_path - 2);
        return report(connect(s, (struct sockaddr *)&a,
                              offsetof(struct sockaddr_un, sun_path) + 1 + strlen(arg)));
    }
    if (!strcmp(cmd, "userns-mount")) { /* new user+mount ns, then mount `arg` (proc|sysfs) */
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0) return report(-1);
        mkdir("/tmp/m", 0755);
        return report(mount(arg, "/tmp/m", arg, 0, NULL));
    }
    if (!strcmp(cmd, "chroot-escape")) { /* the classic: chroot below cwd, climb out */
        mkdir("/tmp/jail", 0755);
        if (chroot("/tmp/jail") < 0) return report(-1);
        for (int i = 0; i < 64; i++) chdir("..");
        chroot(".");
        return report(access(arg, F_OK)); /* a path that exists only on the host */
    }
    if (!strcmp(cmd, "mknod-block")) return report(mknod(arg, S_IFBLK | 0600, makedev(8, 0)));
    if (!strcmp(cmd, "module")) return report(syscall(SYS_finit_module, 0, "", 0));
    if (!strcmp(cmd, "settime")) { /* set the clock to what it is: harmless if allowed */
        struct timeval tv; gettimeofday(&tv, NULL);
        return report(settimeofday(&tv, NULL));
    }
    if (!strcmp(cmd, "setns")) { /* join the namespace file `arg` */
        int fd = open(arg, O_RDONLY);
        if (fd < 0) return report(-1);
        return report(setns(fd, 0));
    }
    if (!strcmp(cmd, "runas")) { /* become uid/gid `arg`, then exec argv[3...] */
        gid_t g = atoi(arg);
        if (setgroups(0, NULL) < 0 || setgid(g) < 0 || setuid(atoi(arg)) < 0) return report(-1);
        execv(argv[3], argv + 3);
        return report(-1);
    }
    if (!strcmp(cmd, "userns")) return report(unshare(CLONE_NEWUSER));
    if (!strcmp(cmd, "keyctl")) /* the session keyring's id */
        return report(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    if (!strcmp(cmd, "keyring-id")) { /* print it: is it the runner's? */
        long id = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
        if (id < 0) return report(-1);
        printf("OK %ld\n", id);
        return 0;
    }
    if (!strcmp(cmd, "add_key"))
        return report(syscall(SYS_add_key, "user", "cvbench-probe", "x", 1,
                              KEY_SPEC_SESSION_KEYRING));
    if (!strcmp(cmd, "bpf")) { /* the smallest map there is */
        union bpf_attr a;
        memset(&a, 0, sizeof a);
        a.map_type = BPF_MAP_TYPE_ARRAY; a.key_size = 4; a.value_size = 4; a.max_entries = 1;
        return report(syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a));
    }
    if (!strcmp(cmd, "perf_event_open")) { /* a software counter on ourselves */
        struct perf_event_attr a;
        memset(&a, 0, sizeof a);
        a.size = sizeof a; a.type = PERF_TYPE_SOFTWARE; a.config = PERF_COUNT_SW_CPU_CLOCK;
        a.exclude_kernel = 1; a.exclude_hv = 1;
        return report(syscall(SYS_perf_event_open, &a, 0, -1, -1, 0));
    }
    if (!strcmp(cmd, "userfaultfd")) /* user-mode faults only: what no privilege needs */
        return report(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
    if (!strcmp(cmd, "mknod-char")) { /* make /dev/mem's node at `arg`, then open it */
        if (mknod(arg, S_IFCHR | 0600, makedev(1, 1)) < 0) return report(-1);
        return report(open(arg, O_RDONLY));
    }
    if (!strcmp(cmd, "write")) { /* write a line into `arg` (a device node, say) */
        int fd = open(arg, O_WRONLY);
        if (fd < 0) return report(-1);
        return report(write(fd, "cvbench escape probe\n", 21) < 0 ? -1 : 0);
    }
    if (!strcmp(cmd, "readfd")) { /* read from descriptor `arg`, inherited or not */
        char c;
        return report(read(atoi(arg), &c, 1) < 0 ? -1 : 0);
    }
    if (!strcmp(cmd, "sweep")) { /* syscall NR with every argument -1: "NR OK|ERRNAME" */
        setvbuf(stdout, NULL, _IOLBF, 0); /* a call that kills us keeps what came before */
        for (int i = 2; i < argc; i++) {
            long nr = atol(argv[i]);
            long rc = syscall(nr, -1L, -1L, -1L, -1L, -1L, -1L);
            printf("%ld %s\n", nr, rc < 0 ? strerrorname_np(errno) : "OK");
        }
        return 0;
    }
    fprintf(stderr, "unknown probe %s\n", cmd);
    return 2;
}
