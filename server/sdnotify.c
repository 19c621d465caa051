/*
 * server/sdnotify.c — systemd's readiness protocol (server/sdnotify.h) without libsystemd.
 *
 * Design. sd_notify(3) is one datagram of "KEY=value" lines sent to the AF_UNIX socket named by
 * $NOTIFY_SOCKET (a path, or '@' for the abstract namespace). The protocol is stable and small, so
 * it is spoken here directly rather than linking libsystemd: the daemon keeps its dependency list,
 * and runs unchanged where systemd is absent (no $NOTIFY_SOCKET: nothing is sent).
 *
 * Not done here: the watchdog (WATCHDOG=1), file-descriptor passing, socket activation.
 */
#include "server/sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/error.h"

int srv_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof sa.sun_path)
        return MA_EINVAL;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';   /* abstract namespace: the address length counts every byte */
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return MA_EIO;
    int rc = 0;
    ssize_t w;
    do
        w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    while (w < 0 && errno == EINTR);
    if (w < 0 || (size_t)w != strlen(state))
        rc = MA_EIO;
    close(fd);
    return rc;
}
