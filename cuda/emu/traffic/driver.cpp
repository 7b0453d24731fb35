// driver.cpp — the issue-15 workload (d=550, N=200, 1000 images scored) on a few
// patches, through the kernels of before (LEGACY: legacy_v1.cu) or now
// (cuda/padim_cuda.cu), with the emulator's counters on. Per stage it prints each
// kernel's counters and the bytes copied between host and device:
//   K <stage> <kernel> launches blocks threads read_B write_B read_sector_B write_sector_B flops fp64
//   C <stage> h2d_B d2h_B
// Built and run by run.sh.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#ifdef LEGACY
#include "legacy_v1.h"
#else
#include "padim_cuda.h"
#endif

extern "C" void padim_emu_set_counting(int on);
extern "C" int padim_emu_counters(char *buf, size_t len, int reset);
extern "C" void padim_emu_copied(unsigned long long *h2d, unsigned long long *d2h);

static char err[512];
#define OK(call)                                                     \
  do {                                                               \
    if ((call) != 0) {                                               \
      fprintf(stderr, "%s failed: %s\n", #call, err);                \
      exit(1);                                                       \
    }                                                                \
  } while (0)

static unsigned long long h0, d0;
static void begin() {
  padim_emu_counters(nullptr, 0, 1);
  padim_emu_copied(&h0, &d0);
}
static void end(const char *stage) {
  static std::vector<char> buf(1 << 16);
  padim_emu_counters(buf.data(), buf.size(), 1);
  for (char *line = strtok(buf.data(), "\n"); line; line = strtok(nullptr, "\n")) printf("K %s %s\n", stage, line);
  unsigned long long h, d;
  padim_emu_copied(&h, &d);
  printf("C %s %llu %llu\n", stage, h - h0, d - d0);
  fflush(stdout);
}

int main(int argc, char **argv) {
  const int P = argc > 1 ? atoi(argv[1]) : 4, D = 550, N = 200, NS = 1000, distinct = 32;
  const long long L = (long long)D * (D + 1) / 2;
  // 32 distinct images (a factor model), fed cyclically; 64 test images
  std::mt19937_64 rng(1);
  std::normal_distribution<float> g;
  auto make = [&](int n) {
    std::vector<float> fac((size_t)D * 8), x((size_t)n * P * D);
    for (auto &v : fac) v = g(rng);
    for (int b = 0; b < n; b++)
      for (int p = 0; p < P; p++) {
        float f[8];
        for (float &v : f) v = g(rng);
        for (int i = 0; i < D; i++) {
          float v = 0.03f * g(rng) + 1.f;
          for (int k = 0; k < 8; k++) v += fac[i * 8 + k] * f[k];
          x[((size_t)b * P + p) * D + i] = v;
        }
      }
    return x;
  };
  std::vector<float> train = make(distinct), test = make(64);
  std::vector<float> dist((size_t)64 * P);
  padim_ctx *c = nullptr;
  OK(padim_ctx_create(0, &c, err, sizeof err));
  padim_emu_set_counting(1);
#ifdef LEGACY
  const int batch = 32;  // the old Backend.MaxBatch
  padim_acc *acc = nullptr;
  OK(padim_acc_create(c, P, D, batch, &acc, err, sizeof err));
  begin();
  for (int i = 0; i < N; i += distinct) OK(padim_acc_add(acc, train.data(), distinct < N - i ? distinct : N - i, err, sizeof err));
  std::vector<double> mean((size_t)P * D), m2((size_t)P * L);
  int64_t count = 0;
  OK(padim_acc_stats(acc, mean.data(), m2.data(), &count, err, sizeof err));  // the old pipeline downloaded M2
  end("fit");
  std::vector<float> linv((size_t)P * L), meanf((size_t)P * D);
  for (size_t i = 0; i < meanf.size(); i++) meanf[i] = (float)mean[i];
  int bad = -1;
  begin();
  OK(padim_factorize(c, P, D, count, m2.data(), 0.01, linv.data(), &bad, err, sizeof err));
  end("factorize-fp64");
  for (int per_call : {1, 64}) {
    padim_scorer *s = nullptr;
    begin();
    OK(padim_scorer_create(c, P, D, batch, meanf.data(), linv.data(), &s, err, sizeof err));
    for (int done = 0; done < NS; done += per_call) {
      const int n = per_call < NS - done ? per_call : NS - done;
      OK(padim_scorer_score(s, test.data() + (size_t)(done % 64 + n <= 64 ? done % 64 : 0) * P * D, n, dist.data(), err, sizeof err));
    }
    end(per_call == 1 ? "score-1-per-call" : "score-64-per-call");
    padim_scorer_destroy(s);
  }
  padim_acc_destroy(acc);
#else
  padim_acc *acc = nullptr;
  OK(padim_acc_create(c, P, D, 128, &acc, err, sizeof err));
  begin();
  for (int i = 0; i < N; i += distinct) OK(padim_acc_add(acc, train.data(), distinct < N - i ? distinct : N - i, err, sizeof err));
  OK(padim_acc_flush(acc, err, sizeof err));
  end("fit");
  std::vector<float> linv((size_t)P * L), meanf((size_t)P * D);
  padim_model *m = nullptr;
  int bad = -1;
  padim_ctx_set_precision(c, PADIM_PREC_DF32);
  begin();
  OK(padim_acc_factorize(acc, 0.01, meanf.data(), linv.data(), nullptr, &bad, err, sizeof err));
  end("factorize-df32");
  padim_ctx_set_precision(c, PADIM_PREC_FP64);
  begin();
  OK(padim_acc_factorize(acc, 0.01, meanf.data(), linv.data(), &m, &bad, err, sizeof err));
  end("factorize-fp64");
  for (int per_call : {1, 64}) {
    padim_scorer *s = nullptr;
    begin();
    OK(padim_scorer_create(m, 256, &s, err, sizeof err));
    for (int done = 0; done < NS; done += per_call) {
      const int n = per_call < NS - done ? per_call : NS - done;
      OK(padim_scorer_score(s, test.data() + (size_t)(done % 64 + n <= 64 ? done % 64 : 0) * P * D, n, dist.data(), err, sizeof err));
    }
    end(per_call == 1 ? "score-1-per-call" : "score-64-per-call");
    padim_scorer_destroy(s);
  }
  padim_model_release(m);
  padim_acc_destroy(acc);
#endif
#ifdef LEGACY
  padim_ctx_destroy(c);
#else
  padim_ctx_release(c);
#endif
  return 0;
}
