// main.cpp — lethe from C++ through CMake's find_package(lethe): one chat
// turn with the model's chat template, owned by RAII handles. lethe.h is a
// C header with extern "C" inside, so it is included as is.
//
//   cmake -S . -B build -DCMAKE_PREFIX_PATH=<lethe prefix> && cmake --build build
//   ./build/lethe-chat MODEL.gguf "What is the capital of France?" 32
#include <lethe.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct ModelDeleter { void operator()(lethe_model *m) const { lethe_model_free(m); } };
struct ContextDeleter { void operator()(lethe_context *c) const { lethe_context_free(c); } };
struct SamplerDeleter { void operator()(lethe_sampler *s) const { lethe_sampler_free(s); } };
using Model = std::unique_ptr<lethe_model, ModelDeleter>;
using Context = std::unique_ptr<lethe_context, ContextDeleter>;
using Sampler = std::unique_ptr<lethe_sampler, SamplerDeleter>;

void check(lethe_status st, const char *what) {
    if (st != LETHE_OK)
        throw std::runtime_error(std::string(what) + ": " + lethe_strerror(st) + " (" + lethe_last_error() + ")");
}

std::string render_chat(const lethe_model *m, const std::string &user) {
    const lethe_chat_message msgs[] = {{"user", user.c_str()}};
    std::string out(256, '\0');
    for (;;) {
        int32_t n = lethe_chat_apply(m, msgs, 1, true, &out[0], (int32_t)out.size());
        if (n < 0) check((lethe_status)-n, "chat template");
        if (n < (int32_t)out.size()) { out.resize((size_t)n); return out; }
        out.resize((size_t)n + 1);   // too small: retry with the size it asked for
    }
}

std::vector<lethe_token> tokenize(const lethe_model *m, const std::string &text) {
    int32_t n = lethe_tokenize(m, text.data(), text.size(), nullptr, 0, true, true);
    if (n < 0) check((lethe_status)-n, "tokenize");
    std::vector<lethe_token> toks((size_t)n);
    lethe_tokenize(m, text.data(), text.size(), toks.data(), n, true, true);
    return toks;
}

}  // namespace

int main(int argc, char **argv) try {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [QUESTION] [N_TOKENS]\n", argv[0]);
        return 2;
    }
    const std::string question = argc > 2 ? argv[2] : "What is the capital of France?";
    const int n_predict = argc > 3 ? std::atoi(argv[3]) : 32;

    lethe_status st = LETHE_OK;
    Model model(lethe_model_load(argv[1], lethe_model_default_params(), &st));
    check(st, "load");
    lethe_context_params cp = lethe_context_default_params();
    cp.n_ctx = 512;
    Context ctx(lethe_context_new(model.get(), cp, &st));
    check(st, "context");
    lethe_sampler_params sp = lethe_sampler_default_params();
    sp.temperature = 0.0f;   // greedy: reproducible
    Sampler smp(lethe_sampler_new(sp, lethe_n_vocab(model.get())));

    std::vector<lethe_token> prompt = tokenize(model.get(), render_chat(model.get(), question));
    check(lethe_decode(ctx.get(), lethe_batch_one(prompt.data(), (int32_t)prompt.size())), "prefill");

    std::string reply;
    for (int i = 0; i < n_predict; i++) {
        lethe_token t = lethe_sampler_sample(smp.get(), lethe_get_logits(ctx.get(), -1));
        if (lethe_token_is_eog(model.get(), t)) break;
        char piece[256];
        int32_t k = lethe_token_to_piece(model.get(), t, piece, sizeof piece, false);
        if (k > 0 && k <= (int32_t)sizeof piece) reply.append(piece, (size_t)k);
        std::fwrite(piece, 1, k > 0 && k <= (int32_t)sizeof piece ? (size_t)k : 0, stdout);
        std::fflush(stdout);
        lethe_sampler_accept(smp.get(), t);
        check(lethe_decode(ctx.get(), lethe_batch_one(&t, 1)), "decode");
    }
    std::printf("\n");
    std::fprintf(stderr, "lethe %s: %zu prompt tokens, %zu reply bytes\n", lethe_version(), prompt.size(),
                 reply.size());
    return reply.empty() ? 1 : 0;
} catch (const std::exception &e) {
    std::fprintf(stderr, "lethe-chat: %s\n", e.what());
    return 1;
}
