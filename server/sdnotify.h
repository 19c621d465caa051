/*
 * server/sdnotify.h — tell systemd (Type=notify units) that the daemon is ready or stopping.
 */
#ifndef SRV_SDNOTIFY_H
#define SRV_SDNOTIFY_H

/* Sends `state` (e.g. "READY=1", "STOPPING=1", "STATUS=...", newline-separated) to the socket named
 * by $NOTIFY_SOCKET. Returns 0 when sent or when $NOTIFY_SOCKET is unset (not under systemd),
 * MA_EINVAL for a malformed $NOTIFY_SOCKET, MA_EIO when the datagram cannot be sent. Blocking, one
 * syscall; safe from any thread. */
int srv_sd_notify(const char *state);

#endif
