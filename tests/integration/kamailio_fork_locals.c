/*
 * Preloaded into the test Kamailio when it listens on TLS.
 *
 * Kamailio 5.6 (Debian 12's) initialises OpenSSL 3 in its main process,
 * with OpenSSL's allocations in shared memory; OpenSSL keeps per-thread
 * state (the error stack) behind pthread keys, so every forked worker
 * inherits a pointer to the same shared block and the workers corrupt it
 * under concurrent TLS connections ("qm_free(): BUG: freeing already freed
 * pointer ... tls_init.c: ser_free", then a worker dies of SIGSEGV and
 * Kamailio shuts down: kamailio/kamailio#3791).  Kamailio 5.8 fixes it
 * with an at-fork handler that clears those thread-locals in each child
 * (tls_threads_mode=2); this library installs the same handler into 5.6,
 * so each worker's OpenSSL allocates state of its own.
 */
#include <pthread.h>
#include <stddef.h>

/* Kamailio's 5.6 backport cleared keys 0-15; OpenSSL 3 uses six. */
#define CLEARED_KEYS 32

static void clear_thread_locals(void)
{
	for (pthread_key_t key = 0; key < CLEARED_KEYS; key++) {
		if (pthread_getspecific(key) != NULL) {
			pthread_setspecific(key, NULL);
		}
	}
}

__attribute__((constructor)) static void install_fork_handler(void)
{
	pthread_atfork(NULL, NULL, clear_thread_locals);
}
