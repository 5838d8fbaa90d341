/* cmd_synth.c — `lethe synth -o FILE.gguf [--shape S] [--type T] ...`: a
 * synthetic-weight model of a real shape written as GGUF (core/synth.c), so
 * a GPU benchmark needs no download and llama.cpp reads the same file.
 * Random weights: speed is real, text is not. */
#include "cli.h"
#include "synth.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct synth_shape {
    const char *name, *arch;
    int32_t n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    float rope_base;
    bool tied;
} synth_shape;

static const synth_shape k_shapes[] = {
    /* name          arch      L   E     Hq  Hkv  F      V       ctx     theta     tied */
    {"llama3-8b", "llama", 32, 4096, 32, 8, 14336, 128256, 131072, 500000.0f, false},
    {"qwen3-8b", "qwen3", 36, 4096, 32, 8, 12288, 151936, 40960, 1000000.0f, false},
    {"smollm2-135m", "llama", 30, 576, 9, 3, 1536, 49152, 8192, 100000.0f, true},
    {"tiny", "llama", 2, 256, 4, 2, 512, 512, 4096, 10000.0f, true},
};

static void synth_help(FILE *f) {
    fprintf(f,
            "usage: lethe synth -o FILE.gguf [options]\n\n"
            "Write a model with random weights and a real architecture's shape as GGUF\n"
            "(lethe and llama.cpp load it): for speed measurements without a download.\n\n"
            "  -o, --output FILE     the GGUF file to write (required)\n"
            "  -s, --shape NAME      llama3-8b, qwen3-8b, smollm2-135m, tiny (default)\n"
            "  -t, --type TYPE       weight matrices and embedding: f16 (default), bf16, f32,\n"
            "                        q8_0, q4_0, q4_1\n"
            "      --layers N        override the number of layers (quick runs)\n"
            "      --dms VARIANT     mark the model as DMS: neuron or adapter\n"
            "      --dms-window N    DMS sliding window (default 256)\n"
            "      --seed N          weight seed (default 1)\n"
            "  -h, --help            this text\n");
}

int cli_cmd_synth(int argc, char **argv) {
    enum { OPT_LAYERS = 256, OPT_DMS, OPT_DMS_WINDOW, OPT_SEED };
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},  {"shape", required_argument, NULL, 's'},
        {"type", required_argument, NULL, 't'},    {"layers", required_argument, NULL, OPT_LAYERS},
        {"dms", required_argument, NULL, OPT_DMS}, {"dms-window", required_argument, NULL, OPT_DMS_WINDOW},
        {"seed", required_argument, NULL, OPT_SEED}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *out = NULL, *shape_name = "tiny", *type_name = "f16", *dms = NULL;
    long layers = 0, window = 256;
    unsigned long long seed = 1;
    char *end;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "o:s:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 's': shape_name = optarg; break;
        case 't': type_name = optarg; break;
        case OPT_LAYERS:
            layers = strtol(optarg, &end, 10);
            if (*end || layers < 1 || layers > 1024) return cli_error("--layers %s: expected 1..1024", optarg), CLI_EXIT_USAGE;
            break;
        case OPT_DMS: dms = optarg; break;
        case OPT_DMS_WINDOW:
            window = strtol(optarg, &end, 10);
            if (*end || window < 1 || window > (1 << 20)) return cli_error("--dms-window %s: expected 1..1048576", optarg), CLI_EXIT_USAGE;
            break;
        case OPT_SEED:
            seed = strtoull(optarg, &end, 10);
            if (*end) return cli_error("--seed %s: expected a number", optarg), CLI_EXIT_USAGE;
            break;
        case 'h': synth_help(stdout); return 0;
        default: synth_help(stderr); return CLI_EXIT_USAGE;
        }
    }
    if (optind != argc || !out) {
        cli_error("synth needs -o FILE.gguf and no other arguments (see lethe synth --help)");
        return CLI_EXIT_USAGE;
    }
    const synth_shape *sh = NULL;
    for (size_t i = 0; i < sizeof k_shapes / sizeof k_shapes[0]; i++)
        if (!strcmp(shape_name, k_shapes[i].name)) sh = &k_shapes[i];
    if (!sh) return cli_error("--shape %s: expected llama3-8b, qwen3-8b, smollm2-135m or tiny", shape_name), CLI_EXIT_USAGE;
    static const struct { const char *name; lethe_dtype type; } types[] = {
        {"f16", LETHE_F16}, {"bf16", LETHE_BF16}, {"f32", LETHE_F32},
        {"q8_0", LETHE_Q8_0}, {"q4_0", LETHE_Q4_0}, {"q4_1", LETHE_Q4_1},
    };
    int ti = -1;
    for (int i = 0; i < (int)(sizeof types / sizeof types[0]); i++)
        if (!strcmp(type_name, types[i].name)) ti = i;
    if (ti < 0) return cli_error("--type %s: expected f16, bf16, f32, q8_0, q4_0 or q4_1", type_name), CLI_EXIT_USAGE;
    if (dms && strcmp(dms, "neuron") && strcmp(dms, "adapter"))
        return cli_error("--dms %s: expected neuron or adapter", dms), CLI_EXIT_USAGE;

    lethe_synth_params p = lethe_synth_default_params();
    p.arch = sh->arch;
    p.n_layer = layers ? (int32_t)layers : sh->n_layer;
    p.n_embd = sh->n_embd;
    p.n_head = sh->n_head;
    p.n_head_kv = sh->n_head_kv;
    p.n_ff = sh->n_ff;
    p.n_vocab = sh->n_vocab;
    p.n_ctx_train = sh->n_ctx;
    p.rope_base = sh->rope_base;
    p.tied_output = sh->tied;
    p.wtype = p.embd_type = types[ti].type;
    p.seed = seed;
    if (dms) {
        p.dms_variant = strcmp(dms, "adapter") ? 1 : 2;
        p.dms_window = (int32_t)window;
    }
    fprintf(stderr, "lethe: writing %s: %s shape (%d layers, E %d, %d/%d heads, F %d, V %d), %s weights...\n", out,
            sh->name, p.n_layer, p.n_embd, p.n_head, p.n_head_kv, p.n_ff, p.n_vocab, type_name);
    lethe_status st = lethe_synth_write(out, p);
    if (st != LETHE_OK) return cli_error_status(st, "synth failed");
    fprintf(stderr, "lethe: wrote %s\n", out);
    return 0;
}
