/* The kernels' own thread pool: parallel_for splits a loop over rows between the calling thread
 * and up to threads - 1 workers, statically (as OpenMP's schedule(static) did).
 *
 * Why not OpenMP: libgomp keeps a pool per calling thread and, once its worker threads outnumber
 * the CPUs, cuts every worker's spin-wait to ~100 iterations. In the app each Gradio worker
 * thread that ever ran a parallel torch op keeps such a pool, so the count is soon over two, and
 * each of a decoding step's ~150 parallel regions then waited on a futex wake: a reply decoded in
 * a Gradio thread ran at ~40 tok/s against ~100 on the main thread. This pool is one per process
 * (a mutex serializes callers), its workers spin ~0.1 ms between regions, then sleep.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <x86intrin.h>

#include "kernels.h"

#define MAX_WORKERS 63
#define SPIN_CYCLES 300000ULL /* time-stamp counter ticks a worker spins before it sleeps */

static pthread_mutex_t dispatch = PTHREAD_MUTEX_INITIALIZER; /* one region at a time */
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;
static int n_workers;
static atomic_ullong generation; /* bumped once per region: the workers' signal to start */
static atomic_int remaining;     /* workers yet to finish the current region */
static atomic_int sleepers;
static struct {
    range_fn fn;
    void *ctx;
    int64_t n;
    int parts;
} job;
static _Thread_local int in_worker;

typedef struct {
    int id;
    unsigned long long born; /* the generation when it was started: it waits for the next */
} Birth;

static void run_part(int part) {
    int64_t begin = job.n * part / job.parts, end = job.n * (part + 1) / job.parts;
    if (begin < end) job.fn(job.ctx, begin, end);
}

static void *worker(void *arg) {
    Birth birth = *(Birth *)arg;
    free(arg);
    in_worker = 1;
    unsigned long long seen = birth.born, g;
    for (;;) {
        unsigned long long start = __rdtsc();
        while ((g = atomic_load(&generation)) == seen) {
            if (__rdtsc() - start < SPIN_CYCLES) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&sleep_lock);
            atomic_fetch_add(&sleepers, 1);
            while ((g = atomic_load(&generation)) == seen) pthread_cond_wait(&wake, &sleep_lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&sleep_lock);
        }
        seen = g;
        if (birth.id + 1 < job.parts) run_part(birth.id + 1);
        atomic_fetch_sub(&remaining, 1);
    }
    return NULL;
}

/* A forked child has the parent's memory but none of its threads: start afresh. */
static void after_fork_in_child(void) {
    pthread_mutex_init(&dispatch, NULL);
    pthread_mutex_init(&sleep_lock, NULL);
    pthread_cond_init(&wake, NULL);
    n_workers = 0;
    atomic_store(&sleepers, 0);
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_in_child); }

void parallel_for(int64_t n, int threads, range_fn fn, void *ctx) {
    if (threads > MAX_WORKERS + 1) threads = MAX_WORKERS + 1;
    if (threads <= 1 || n <= 1 || in_worker) {
        if (n > 0) fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&dispatch);
    pthread_once(&fork_handler_once, register_fork_handler);
    while (n_workers < threads - 1) {
        Birth *birth = malloc(sizeof(Birth));
        pthread_t thread;
        if (!birth) break;
        *birth = (Birth){n_workers, atomic_load(&generation)};
        if (pthread_create(&thread, NULL, worker, birth)) {
            free(birth);
            break; /* fewer workers: the parts are split among those there are */
        }
        pthread_detach(thread);
        n_workers++;
    }
    job.fn = fn, job.ctx = ctx, job.n = n;
    job.parts = n_workers + 1 < threads ? n_workers + 1 : threads;
    atomic_store(&remaining, n_workers);
    atomic_fetch_add(&generation, 1);
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&sleep_lock);
    }
    run_part(0);
    while (atomic_load(&remaining) > 0) _mm_pause();
    pthread_mutex_unlock(&dispatch);
}
