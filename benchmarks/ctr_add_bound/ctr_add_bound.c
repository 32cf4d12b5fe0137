/*
 * The bound of any mask PRG built on OpenSSL's AES-256-CTR: how fast can a
 * compiled kernel add keystreams into an accumulator, against the same
 * cipher writing the keystream alone?  A measurement, not library code:
 * securefl's PRG stays in Python on `cryptography` (securefl/hazmat/prg.py);
 * this answers whether a compiled kernel over OpenSSL's EVP interface would
 * reach the ">= 0.9x OpenSSL" goal of issue 14 (docs/benchmarks.md, "The
 * mask PRG").
 *
 * Build and run (needs gcc and OpenSSL's headers, e.g. Debian's libssl-dev):
 *   gcc -O3 -march=native -o /tmp/ctr_add_bound benchmarks/ctr_add_bound/ctr_add_bound.c -lcrypto
 *   for b in 2048 4096 8192 16384 32768; do /tmp/ctr_add_bound $b; done
 *
 * For 8 keys (half subtracted, as a round's unmasking does) over 16 MiB of
 * uint32 words each, best of 5 in this thread's CPU time:
 *   raw       EVP_EncryptUpdate of zeros into one cached 16 KiB buffer
 *             (what `openssl speed -evp aes-256-ctr` measures);
 *   fused     chunk-major: per chunk of `blk` bytes, each key's keystream
 *             into one buffer, then added into the accumulator chunk;
 *   one-pass  per chunk, the 8 keys' keystreams into 8 buffers, then one
 *             pass over the accumulator chunk adding all 8 (the fewest
 *             accumulator loads and stores).
 * It prints the rates and fused/raw, one-pass/raw; the two sums are checked
 * equal to each other.
 */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEYS 8

static double cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void start(EVP_CIPHER_CTX **cs) {
    unsigned char key[32], iv[16] = {0};
    for (int k = 0; k < KEYS; k++) {
        memset(key, k + 1, sizeof key);
        cs[k] = EVP_CIPHER_CTX_new();
        if (!cs[k] || EVP_EncryptInit_ex(cs[k], EVP_aes_256_ctr(), NULL, key, iv) != 1) {
            fprintf(stderr, "EVP set-up failed\n");
            exit(1);
        }
    }
}

static void stop(EVP_CIPHER_CTX **cs) {
    for (int k = 0; k < KEYS; k++) EVP_CIPHER_CTX_free(cs[k]);
}

int main(int argc, char **argv) {
    size_t total = (size_t)16 << 20, blk = argc > 1 ? (size_t)atoi(argv[1]) : 4096;
    if (blk < 64 || blk > (1 << 16) || blk % 64) {
        fprintf(stderr, "blk must be a multiple of 64 in 64..65536\n");
        return 2;
    }
    uint32_t *acc = aligned_alloc(64, total), *acc2 = aligned_alloc(64, total);
    uint8_t *zeros = calloc(1, 1 << 16), *ks = aligned_alloc(64, KEYS << 16);
    memset(acc, 0, total);
    memset(acc2, 0, total);
    int outl;
    double best_raw = 1e9, best_fused = 1e9, best_one = 1e9;
    EVP_CIPHER_CTX *cs[KEYS];
    for (int round = 0; round < 5; round++) {
        start(cs);
        double t = cpu();
        for (int k = 0; k < KEYS; k++)
            for (size_t o = 0; o < total; o += 16384) EVP_EncryptUpdate(cs[k], ks, &outl, zeros, 16384);
        double raw = cpu() - t;
        stop(cs);

        start(cs);
        t = cpu();
        for (size_t o = 0; o < total; o += blk) {
            uint32_t *a = acc + o / 4;
            size_t n = blk / 4;
            for (int k = 0; k < KEYS; k++) {
                EVP_EncryptUpdate(cs[k], ks, &outl, zeros, (int)blk);
                const uint32_t *s = (const uint32_t *)ks;
                if (k & 1)
                    for (size_t i = 0; i < n; i++) a[i] -= s[i];
                else
                    for (size_t i = 0; i < n; i++) a[i] += s[i];
            }
        }
        double fused = cpu() - t;
        stop(cs);

        start(cs);
        t = cpu();
        for (size_t o = 0; o < total; o += blk) {
            uint32_t *a = acc2 + o / 4;
            size_t n = blk / 4;
            for (int k = 0; k < KEYS; k++) EVP_EncryptUpdate(cs[k], ks + k * blk, &outl, zeros, (int)blk);
            const uint32_t *s = (const uint32_t *)ks;
            for (size_t i = 0; i < n; i++)
                a[i] += s[i] - s[n + i] + s[2 * n + i] - s[3 * n + i] + s[4 * n + i] - s[5 * n + i]
                        + s[6 * n + i] - s[7 * n + i];
        }
        double one = cpu() - t;
        stop(cs);
        if (raw < best_raw) best_raw = raw;
        if (fused < best_fused) best_fused = fused;
        if (one < best_one) best_one = one;
    }
    if (memcmp(acc, acc2, total) != 0) {
        fprintf(stderr, "the two sums differ\n");
        return 1;
    }
    double bytes = (double)KEYS * total;
    printf("blk %6zu: raw %.2f GB/s, fused %.2f GB/s, one-pass %.2f GB/s;"
           " fused/raw %.3f, one-pass/raw %.3f\n", blk, bytes / best_raw / 1e9,
           bytes / best_fused / 1e9, bytes / best_one / 1e9, best_raw / best_fused,
           best_raw / best_one);
    return 0;
}
