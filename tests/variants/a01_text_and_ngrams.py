"""Realistic wrong answers to a01_text_and_ngrams (see tests/variants/__init__.py)."""

VARIANTS = {
    # Forgets to lower-case: "The" and "the" become different tokens.
    "tokenize_no_lowercase": {
        "cell": "tokenize_impl",
        "replace": [("    text = text.lower()\n", "")],
        "breaks": ["test_tokenize"],
    },
    # Splits words on whitespace only, so punctuation sticks to the words.
    "tokenize_word_split_on_spaces": {
        "cell": "tokenize_impl",
        "replace": [('return re.findall(r"[a-z0-9\']+", text)', "return text.split()")],
        "breaks": ["test_tokenize"],
    },
    # Reserved tokens first and <unk> after them: every id is shifted.
    "vocab_unk_not_at_zero": {
        "cell": "vocab_impl",
        "replace": [('self.itos = ["<unk>"]\n        for tok in reserved_tokens or []:\n'
                     '            if tok not in self.itos:\n                self.itos.append(tok)',
                     'self.itos = [t for t in dict.fromkeys(reserved_tokens or []) if t != "<unk>"] + ["<unk>"]')],
        "breaks": ["test_vocab"],
    },
    # min_freq compared with > instead of >=: tokens seen exactly min_freq times are lost.
    "vocab_min_freq_strict": {
        "cell": "vocab_impl",
        "replace": [("count >= min_freq", "count > min_freq")],
        "breaks": ["test_vocab"],
    },
    # Relies on list indexing: id -1 silently returns the last token.
    "vocab_negative_ids_wrap_around": {
        "cell": "vocab_impl",
        "replace": [("if not 0 <= idx < len(self.itos):", "if idx >= len(self.itos):")],
        "breaks": ["test_vocab"],
    },
    # Off-by-one in the loop bound: the last n-gram is never counted.
    "ngrams_drop_last": {
        "cell": "ngram_impl",
        "replace": [("range(len(tokens) - n + 1)", "range(len(tokens) - n)")],
        "breaks": ["test_ngram_counts"],
    },
    # Adds k to the numerator only: rows no longer sum to one.
    "addk_denominator_without_kV": {
        "cell": "bigram_impl",
        "replace": [("denom = context + k * V", "denom = context + k")],
        "breaks": ["test_bigram_probs"],
    },
    # Counts (next, previous) instead of (previous, next): rows are the wrong conditional.
    "bigram_counts_transposed": {
        "cell": "bigram_impl",
        "replace": [("counts.index_put_((token_ids[:-1], token_ids[1:])", "counts.index_put_((token_ids[1:], token_ids[:-1])")],
        "breaks": ["test_bigram_probs"],
    },
    # Mixes bases: exp of a mean of log2-probabilities.
    "ppl_log2": {
        "cell": "ppl_impl",
        "replace": [("torch.log(p)", "torch.log2(p)")],
        "breaks": ["test_perplexity"],
    },
    # Averages the per-sequence mean log-likelihoods instead of pooling the tokens.
    "ppl_mean_over_sequences": {
        "cell": "ppl_impl",
        "replace": [("total_nll -= torch.log(p).sum().item()\n        n += seq.numel() - 1",
                     "total_nll -= torch.log(p).mean().item()\n        n += 1")],
        "breaks": ["test_perplexity"],
    },
}
