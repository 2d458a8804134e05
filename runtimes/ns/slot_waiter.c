/* ns:pool's slot waiter (runtimes/ns/pool.py; built by pool.waiter(), run by
 * process.child_main).
 *
 * A slot's first process, set up and confined in Python (every protection of a cold ns
 * instance but the user's switch: process.confine, then the seccomp filter), execs
 * this small static program to wait: the interpreter's address space it was cloned
 * with (the fork server's) is torn down now, when the slot is made, and not by the
 * workload's exec on the request's path. The filter, no_new_privs, the bounding set,
 * rlimits, keyring, umask, cgroup and namespaces all carry over the exec.
 *
 * It writes "R" on the status pipe, then reads the go pipe to EOF: "G" and the
 * hand-over (process.handover: workdir, uid, gid, argc, the arguments, the
 * environment, NUL-separated); anything else (EOF alone: the slot removed) exits 0.
 * Then what process.become_user does for a cold instance (groups, gid, uid; root: the
 * instance's capability set and ambient ones) and the exec (the status pipe
 * close-on-exec: EOF tells the runner). The workdir is the slot's own (made and entered
 * by its set-up, rootfs.setup: a pool's slots are made for one workdir): any other is
 * refused.
 * A failed step writes "E<step>: <error>" on the status pipe and exits 127, as
 * process._fail does.
 *
 * argv: go_fd status_fd slot_workdir setgroups(1|0) groups caps inheritable ambient
 * (groups and ambient: comma-separated numbers, groups "" for the gid alone; caps and
 * inheritable: hexadecimal masks).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;
static int status_fd = -1;

static void fail(const char *step, const char *what, int err) {
    char msg[4096];
    int n = snprintf(msg, sizeof msg, "E%s %s: %s", step, what, strerror(err));
    if (n > (int)sizeof msg - 1)
        n = (int)sizeof msg - 1;
    if (status_fd >= 0 && n > 0 && write(status_fd, msg, (size_t)n) < 0)
        _exit(127);
    _exit(127);
}

static unsigned long number(const char *s, int base, const char *what) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, base);
    if (errno || end == s || *end)
        fail("argument", what, errno ? errno : EINVAL);
    return v;
}

/* The comma-separated numbers of `s` into `out` (at most `max`); how many. */
static size_t numbers(char *s, unsigned long *out, size_t max, const char *what) {
    size_t n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        if (n == max)
            fail("argument", what, E2BIG);
        out[n++] = number(tok, 10, what);
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc != 9)
        return 127;
    int go_fd = (int)number(argv[1], 10, "go_fd");
    status_fd = (int)number(argv[2], 10, "status_fd");
    const char *slot_workdir = argv[3];
    int do_setgroups = argv[4][0] == '1';
    unsigned long caps = number(argv[6], 16, "caps"), inh = number(argv[7], 16, "inheritable");
    unsigned long groups[64], ambient[64];
    size_t ngroups = numbers(argv[5], groups, 64, "groups");
    size_t nambient = numbers(argv[8], ambient, 64, "ambient");

    if (write(status_fd, "R", 1) != 1)
        _exit(127);
    size_t cap = 65536, len = 0;
    char *data = malloc(cap + 1);
    for (;;) {
        if (!data)
            fail("hand-over", "read", ENOMEM);
        ssize_t n = read(go_fd, data + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("hand-over", "read", errno);
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == cap)
            data = realloc(data, (cap *= 2) + 1);
    }
    if (len == 0 || data[0] != 'G')
        _exit(0); /* the runner went away, or removed the slot */
    data[len] = '\0';

    /* The fields: NUL-separated after the "G", the last one ended by the data's end. */
    size_t nfields = 1;
    for (size_t i = 1; i < len; i++)
        nfields += data[i] == '\0';
    char **field = calloc(nfields + 1, sizeof *field);
    if (!field)
        fail("hand-over", "fields", ENOMEM);
    field[0] = data + 1;
    for (size_t i = 1, f = 1; i < len; i++)
        if (data[i] == '\0')
            field[f++] = data + i + 1;
    if (nfields < 4)
        fail("hand-over", "fields", EINVAL);
    unsigned long uid = number(field[1], 10, "uid"), gid = number(field[2], 10, "gid");
    if (uid > 0xfffffffeUL || gid > 0xfffffffeUL) /* (uid_t is 32 bits, -1 is no id) */
        fail("hand-over", "uid/gid", ERANGE);
    unsigned long nargs = number(field[3], 10, "argc");
    if (nargs < 1 || nargs > nfields - 4)
        fail("hand-over", "argc", EINVAL);
    char **args = field + 4; /* each ends with the NUL that separated it */
    char **env = args + nargs;
    char *workdir = field[0];
    /* argv[] needs its NULL: the environment's first entry moves to a copy */
    char **envp = calloc(nfields - 4 - nargs + 1, sizeof *envp);
    if (!envp)
        fail("hand-over", "environment", ENOMEM);
    for (size_t i = 0; i < nfields - 4 - nargs; i++)
        envp[i] = env[i];
    env[0] = NULL; /* (field[] has one spare slot when the environment is empty) */

    if (strcmp(workdir, slot_workdir) != 0) /* (made and entered by the slot's set-up) */
        fail("workdir", workdir, EINVAL);
    if (do_setgroups) {
        gid_t list[64];
        size_t n = ngroups ? ngroups : 1;
        for (size_t i = 0; i < n; i++)
            list[i] = (gid_t)(ngroups ? groups[i] : gid);
        if (syscall(SYS_setgroups, n, list) < 0)
            fail("setgroups", "", errno);
    }
    if (gid && syscall(SYS_setgid, gid) < 0)
        fail("setgid", field[2], errno);
    if (uid) {
        if (syscall(SYS_setuid, uid) < 0) /* clears every capability of a non-root user */
            fail("setuid", field[1], errno);
    } else {
        struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct d[2];
        for (int i = 0; i < 2; i++) {
            d[i].effective = d[i].permitted = (__u32)(caps >> (32 * i));
            d[i].inheritable = (__u32)(inh >> (32 * i));
        }
        if (syscall(SYS_capset, &hdr, d) < 0)
            fail("capset", "", errno);
        for (size_t i = 0; i < nambient; i++)
            if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, ambient[i], 0, 0) < 0)
                fail("ambient", argv[8], errno);
    }
    close(go_fd);
    if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) < 0)
        fail("status pipe", "", errno);
    environ = envp; /* execvp searches this PATH, as os.execvpe does the env's */
    execvp(args[0], args);
    fail("exec", args[0], errno);
    return 127;
}
