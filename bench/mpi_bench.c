/*
 * mpi_bench: the Open MPI peer of gocollbench for bench/compare.
 *
 *   mpirun -np 2 mpi_bench -c allreduce|broadcast|allgather -t float32 \
 *          -b 8 -e 64M -f 4 -iters 20 -warmup 5 -budget 2 -root 0 [-sync 1] [-backend NAME]
 *
 * It times MPI_Allreduce (MPI_SUM), MPI_Bcast or MPI_Allgather the way
 * gocollbench times gocoll: for each size, warmup calls, then each timed
 * call alone with MPI_Wtime; the row's time is the median over the timed
 * calls on each rank, then the maximum over ranks. Sizes, bandwidths and
 * the per-size time budget follow bench/perf (nccl-tests' conventions); -sync 1
 * puts an untimed MPI_Barrier before every call (OSU style), and
 * rank 0 prints one JSON object in bench/perf's schema on stdout.
 *
 * MPI has no bfloat16 datatype (Open MPI 4.1 neither), so -t bfloat16
 * prints a result marked "unsupported" instead of timing something else.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <time.h>

static void die(const char *msg) {
    fprintf(stderr, "mpi_bench: %s\n", msg);
    MPI_Abort(MPI_COMM_WORLD, 2);
    exit(2);
}

/* parse_size reads 8, 64K, 64M, 1G (powers of 1024). */
static long long parse_size(const char *s) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || v < 0) die("bad size: want e.g. 8, 64K, 64M");
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    }
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'b' || *end == 'B') end++;
    if (*end != '\0') die("bad size suffix: want K, M or G");
    return v;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* median of n values; sorts v. */
static double median(double *v, int n) {
    if (n == 0) return 0;
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

enum coll { ALLREDUCE, BROADCAST, ALLGATHER };

int main(int argc, char **argv) {
    const char *cname = "allreduce", *dtype = "float32", *backend = "openmpi";
    long long minb = 8, maxb = 64LL << 20;
    double factor = 4, budget = 2;
    int iters = 20, warmup = 5, root = 0, sync = 0;

    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) die("flag without value");
        if (!strcmp(a, "-c")) cname = v;
        else if (!strcmp(a, "-t")) dtype = v;
        else if (!strcmp(a, "-b")) minb = parse_size(v);
        else if (!strcmp(a, "-e")) maxb = parse_size(v);
        else if (!strcmp(a, "-f")) factor = atof(v);
        else if (!strcmp(a, "-iters")) iters = atoi(v);
        else if (!strcmp(a, "-warmup")) warmup = atoi(v);
        else if (!strcmp(a, "-budget")) budget = atof(v);
        else if (!strcmp(a, "-root")) root = atoi(v);
        else if (!strcmp(a, "-sync")) sync = atoi(v);
        else if (!strcmp(a, "-backend")) backend = v; /* a name for the result: e.g. "tcp" under --mca btl self,tcp */
        else die("unknown flag: see the comment at the top of mpi_bench.c");
        i++;
    }
    if (iters < 1 || warmup < 0 || factor <= 1 || minb <= 0 || maxb < minb) die("bad -iters, -warmup, -f, -b or -e");

    enum coll c;
    int block = 1; /* per-rank blocks in a row's size, as bench/perf.BlockFactor */
    if (!strcmp(cname, "allreduce")) c = ALLREDUCE;
    else if (!strcmp(cname, "broadcast")) c = BROADCAST;
    else if (!strcmp(cname, "allgather")) { c = ALLGATHER; block = n; }
    else die("-c: want allreduce, broadcast or allgather");
    if (c != BROADCAST) root = -1;
    else if (root < 0 || root >= n) die("-root is not a rank");

    char host[256] = "";
    gethostname(host, sizeof host - 1);
    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    if (rank == 0) {
        printf("{\n  \"tool\": \"openmpi\",\n  \"backend\": \"%s\",\n  \"collective\": \"%s\",\n"
               "  \"dtype\": \"%s\",\n", backend, cname, dtype);
        if (c == ALLREDUCE) printf("  \"op\": \"sum\",\n");
        printf("  \"np\": %d,\n  \"root\": %d,\n  \"iters\": %d,\n  \"warmup\": %d,\n  \"host\": \"%s\",\n"
               "  \"date\": \"%s\",\n", n, root, iters, warmup, host, date);
        if (sync) printf("  \"sync\": true,\n");
    }
    if (strcmp(dtype, "float32") != 0) {
        if (rank == 0) {
            if (!strcasecmp(dtype, "bfloat16"))
                printf("  \"unsupported\": \"MPI has no bfloat16 datatype (Open MPI 4.1 neither)\",\n");
            else
                printf("  \"unsupported\": \"mpi_bench times float32 only\",\n");
            printf("  \"rows\": []\n}\n");
        }
        MPI_Finalize();
        return 0;
    }
    const int esz = 4;
    const long long align = (long long)esz * block;

    /* Buffers for the largest size, reused by every row. */
    long long maxa = maxb / align * align;
    if (maxa < align) maxa = align;
    float *sendbuf = malloc(maxa), *recvbuf = malloc(maxa);
    double *times = malloc(sizeof(double) * (iters > warmup ? iters : warmup + 1));
    if (!sendbuf || !recvbuf || !times) die("out of memory");
    for (long long i = 0; i < maxa / esz; i++) { sendbuf[i] = (float)(i % 11); recvbuf[i] = 0; }

    int first = 1;
    long long last = 0;
    if (rank == 0) printf("  \"rows\": [");
    for (long long s = minb;; ) {
        long long size;
        int final = 0;
        if (s <= maxb) {
            size = s / align * align;
            if (size < align) size = align;
            long long next = (long long)(s * factor);
            s = next > s ? next : s + 1;
        } else {
            /* End with max even where factor does not land on it. */
            size = maxb / align * align;
            final = 1;
            if (size < align || size <= last) break;
        }
        if (size == last) continue;
        last = size;
        int count = (int)(size / align);

        MPI_Barrier(MPI_COMM_WORLD);
        int total = warmup + iters;
        int timed = iters;
        for (int it = 0; it < total; it++) {
            if (it == warmup && budget > 0 && warmup > 0) {
                /* Agree on the slowest rank's warmup median, as gocollbench does. */
                double est = median(times, warmup) * 1e6, gest;
                MPI_Allreduce(&est, &gest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
                if (gest > 0 && budget * 1e6 / gest < iters) {
                    timed = (int)(budget * 1e6 / gest);
                    if (timed < 5) timed = 5;
                    if (timed > iters) timed = iters;
                    total = warmup + timed;
                }
            }
            if (sync) MPI_Barrier(MPI_COMM_WORLD); /* untimed, as OSU does */
            double t0 = MPI_Wtime();
            switch (c) {
            case ALLREDUCE: MPI_Allreduce(sendbuf, recvbuf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); break;
            case BROADCAST: MPI_Bcast(sendbuf, count, MPI_FLOAT, root, MPI_COMM_WORLD); break;
            case ALLGATHER: MPI_Allgather(sendbuf, count, MPI_FLOAT, recvbuf, count, MPI_FLOAT, MPI_COMM_WORLD); break;
            }
            double dt = MPI_Wtime() - t0;
            times[it < warmup ? it : it - warmup] = dt;
        }
        double med = median(times, timed) * 1e6, t;
        MPI_Allreduce(&med, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (rank == 0) {
            double alg = t > 0 ? (double)size / (t * 1e-6) / 1e9 : 0;
            double f = c == ALLREDUCE ? 2.0 * (n - 1) / n : c == ALLGATHER ? (double)(n - 1) / n : 1;
            printf("%s\n    {\"size\": %lld, \"count\": %lld, \"time_us\": %.4f, \"algbw\": %.6g, \"busbw\": %.6g, \"iters\": %d}",
                   first ? "" : ",", size, size / esz, t, alg, alg * f, timed);
            fflush(stdout);
            first = 0;
        }
        if (final) break;
    }
    if (rank == 0) printf("\n  ]\n}\n");
    free(sendbuf); free(recvbuf); free(times);
    MPI_Finalize();
    return 0;
}
