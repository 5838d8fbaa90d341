/* main.c — `lethe <subcommand> [options]`: dispatch and top-level help. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

typedef struct cli_cmd {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} cli_cmd;

static const cli_cmd k_cmds[] = {
    {"chat", cli_cmd_chat, "interactive chat with the model's chat template (/reset, /quit)"},
    {"generate", cli_cmd_generate, "continue a prompt; prints only the continuation"},
    {"tokenize", cli_cmd_tokenize, "print the token ids of a text"},
    {"logits", cli_cmd_logits, "write float32 logits of every position to a file"},
    {"perplexity", cli_cmd_perplexity, "perplexity of a text file (llama-perplexity method)"},
    {"bench", cli_cmd_bench, "prompt-processing and generation speed (llama-bench style)"},
    {"info", cli_cmd_info, "model metadata"},
    {"eval", cli_cmd_eval, "what forgetting costs: KL, greedy agreement, perplexity, passkey per KV policy"},
    {"convert", cli_cmd_convert, "write a Hugging Face model directory as a GGUF file"},
    {"synth", cli_cmd_synth, "write a random-weight model of a real shape (llama3-8b, qwen3-8b) as GGUF"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: lethe <command> [options]    (lethe <command> --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        fprintf(f, "  %-12s %s\n", k_cmds[i].name, k_cmds[i].summary);
    fprintf(f, "\nlethe %s\n", lethe_version());
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (!strcmp(name, "-h") || !strcmp(name, "--help") || !strcmp(name, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(name, "--version") || !strcmp(name, "version")) {
        printf("lethe %s\n", lethe_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        if (!strcmp(name, k_cmds[i].name)) return k_cmds[i].run(argc - 1, argv + 1);
    cli_error("unknown command '%s' (commands: chat generate tokenize logits perplexity bench info eval convert synth)", name);
    return CLI_EXIT_USAGE;
}
