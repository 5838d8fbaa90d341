/* bench_stats.c — the statistics of `lethe bench` rows: mean and sample
 * standard deviation over the repetitions, as llama-bench reports them. */
#include "bench.h"

#include <math.h>

void bench_mean_sd(const double *x, int n, double *mean, double *sd) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += x[i];
    const double m = n > 0 ? sum / n : 0.0;
    /* two passes: the one-pass formula loses digits when sd << mean */
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (x[i] - m) * (x[i] - m);
    *mean = m;
    *sd = n > 1 ? sqrt(ss / (n - 1)) : 0.0;
}
