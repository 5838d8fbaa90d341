/* cmd_convert.c — `lethe convert DIR -o FILE.gguf [--type f16|q8_0|q4_0|bf16|f32]`:
 * a Hugging Face model directory as a GGUF file (core/hf_convert.c). */
#include "cli.h"
#include "hf_convert.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static void convert_help(FILE *f) {
    fprintf(f,
            "usage: lethe convert DIR -o FILE.gguf [--type TYPE]\n\n"
            "Write the Hugging Face model in DIR (config.json, safetensors, tokenizer.json)\n"
            "as a GGUF file that lethe and llama.cpp load.\n\n"
            "  -o, --output FILE   the GGUF file to write (required)\n"
            "  -t, --type TYPE     storage of the weight matrices: f16 (default), bf16, f32,\n"
            "                      q8_0, q4_0; norms and biases stay f32\n"
            "  -h, --help          this text\n");
}

int cli_cmd_convert(int argc, char **argv) {
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"type", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *out = NULL, *type_name = "f16";
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "o:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 't': type_name = optarg; break;
        case 'h': convert_help(stdout); return 0;
        default: convert_help(stderr); return CLI_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || !out) {
        cli_error("convert needs one model directory and -o FILE.gguf (see lethe convert --help)");
        return CLI_EXIT_USAGE;
    }
    static const struct { const char *name; lethe_dtype type; } types[] = {
        {"f16", LETHE_F16}, {"bf16", LETHE_BF16}, {"f32", LETHE_F32}, {"q8_0", LETHE_Q8_0}, {"q4_0", LETHE_Q4_0},
    };
    int ti = -1;
    for (int i = 0; i < (int)(sizeof types / sizeof types[0]); i++)
        if (!strcmp(type_name, types[i].name)) ti = i;
    if (ti < 0) {
        cli_error("--type %s: expected f16, bf16, f32, q8_0 or q4_0", type_name);
        return CLI_EXIT_USAGE;
    }
    lethe_status st = lethe_hf_convert(argv[optind], out, types[ti].type);
    if (st != LETHE_OK) return cli_error_status(st, "convert failed");
    fprintf(stderr, "lethe: wrote %s (%s)\n", out, type_name);
    return 0;
}
