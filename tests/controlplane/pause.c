/*
 * The sandbox process of every pod on the test node (the image containerd's CRI
 * plugin starts first, holding the pod's namespaces). It must:
 *   - run forever without using CPU,
 *   - exit promptly on SIGINT/SIGTERM (the kubelet stops sandboxes with TERM),
 *   - reap zombies: with a shared PID namespace it is PID 1 of the pod.
 * Built statically by build-node.sh so the image needs nothing but this file.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
	(void)sig;
	_exit(0);
}

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		static const char v[] = "janus-pause 1\n";
		return write(1, v, sizeof v - 1) == (ssize_t)(sizeof v - 1) ? 0 : 1;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = stop;
	if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
		return 1;
	sa.sa_handler = reap;
	sa.sa_flags = SA_NOCLDSTOP;
	if (sigaction(SIGCHLD, &sa, NULL) < 0)
		return 2;
	for (;;)
		pause();
}
