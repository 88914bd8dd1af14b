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

    # ---- Wrong variants that only the stricter checks catch.
    # A 0-d tensor where the task says "as a Python float".
    "ppl_returns_a_tensor": {
        "cell": "ppl_impl",
        "replace": [("    return math.exp(total_nll / n)", "    return torch.exp(torch.tensor(total_nll / n, dtype=torch.float64))")],
        "breaks": ["test_perplexity"],
    },
    # encode returns a tensor instead of a list of ints.
    "vocab_encode_returns_a_tensor": {
        "cell": "vocab_impl",
        "replace": [("        return [self.token_to_id(tok) for tok in tokens]",
                     "        return torch.tensor([self.token_to_id(tok) for tok in tokens], dtype=torch.long)")],
        "breaks": ["test_vocab"],
    },
    # Looking up an unknown token records it (setdefault), and get_itos lists the dict's keys.
    "vocab_lookup_records_unknown_tokens": {
        "cell": "vocab_impl",
        "replace": [("        return self.stoi.get(token, 0)", "        return self.stoi.setdefault(token, 0)"),
                    ("        return list(self.itos)", "        return list(self.stoi)")],
        "breaks": ["test_vocab"],
    },
    # The IndexError does not say which id or which range.
    "vocab_index_error_without_details": {
        "cell": "vocab_impl",
        "replace": [('raise IndexError(f"id {idx} is out of range: valid ids are 0 .. {len(self.itos) - 1}")',
                     'raise IndexError("id out of range")')],
        "breaks": ["test_vocab"],
    },
    # A mutable default argument: the counts of every call accumulate.
    "ngrams_shared_default_counter": {
        "cell": "ngram_impl",
        "replace": [("def ngram_counts(tokens, n):", "def ngram_counts(tokens, n, _counts=collections.Counter()):"),
                    ("    counts = collections.Counter()\n", "    counts = _counts\n")],
        "breaks": ["test_ngram_counts"],
    },
    # \w instead of ASCII letters: keeps accented letters and underscores.
    "tokenize_word_backslash_w": {
        "cell": "tokenize_impl",
        "replace": [('return re.findall(r"[a-z0-9\']+", text)', 'return re.findall(r"[\\w\']+", text)')],
        "breaks": ["test_tokenize"],
    },
    # zh_word keeps whitespace tokens (it only drops punctuation).
    "tokenize_zh_word_keeps_whitespace_tokens": {
        "cell": "tokenize_impl",
        "replace": [("if tok.strip() and not all(is_punct(ch) for ch in tok.strip())", "if not all(is_punct(ch) for ch in tok)")],
        "breaks": ["test_tokenize"],
    },
    # zh_word drops every token that contains a punctuation character, such as "3.14".
    "tokenize_zh_word_drops_tokens_with_any_punctuation": {
        "cell": "tokenize_impl",
        "replace": [("if tok.strip() and not all(is_punct(ch) for ch in tok.strip())",
                     "if tok.strip() and not any(is_punct(ch) for ch in tok)")],
        "breaks": ["test_tokenize"],
    },
    # No guard for short texts: an empty training text crashes (torch.ones(-1)).
    "bigram_empty_text_crashes": {
        "cell": "bigram_impl",
        "replace": [("    if token_ids.numel() > 1:\n        ones = torch.ones(token_ids.numel() - 1, dtype=torch.float64, device=token_ids.device)\n"
                     "        counts.index_put_((token_ids[:-1], token_ids[1:]), ones, accumulate=True)\n",
                     "    ones = torch.ones(token_ids.numel() - 1, dtype=torch.float64, device=token_ids.device)\n"
                     "    counts.index_put_((token_ids[:-1], token_ids[1:]), ones, accumulate=True)\n")],
        "breaks": ["test_bigram_probs"],
    },

    # ---- Correct variants: other code for the same specification; they keep full marks.
    # zh_word: segment the original text, then lower-case each token (the other reading).
    "correct_zh_word_segment_then_lower": {
        "cell": "tokenize_impl",
        "replace": [("    text = text.lower()\n", "    raw, text = text, text.lower()\n"),
                    ("jieba.lcut(text)", "jieba.lcut(raw)")],
        "breaks": [],
    },
    # Perplexity with a plain Python loop over the predictions.
    "correct_ppl_python_loop": {
        "cell": "ppl_impl",
        "replace": [("        p = probs[seq[:-1], seq[1:]]  # (L - 1,)\n        if bool((p == 0).any()):\n            return math.inf\n"
                     "        total_nll -= torch.log(p).sum().item()\n",
                     "        for a, b in zip(seq[:-1].tolist(), seq[1:].tolist()):\n            q = float(probs[a, b])\n"
                     "            if q == 0.0:\n                return math.inf\n            total_nll -= math.log(q)\n")],
        "breaks": [],
    },
    # Counting bigrams with a Python dict, then filling the table row by row.
    "correct_bigram_python_counts": {
        "cell": "bigram_impl",
        "replace": [("    if token_ids.numel() > 1:\n        ones = torch.ones(token_ids.numel() - 1, dtype=torch.float64, device=token_ids.device)\n"
                     "        counts.index_put_((token_ids[:-1], token_ids[1:]), ones, accumulate=True)\n",
                     "    ids = token_ids.tolist()\n    for a, b in zip(ids[:-1], ids[1:]):\n        counts[a, b] += 1\n")],
        "breaks": [],
    },
}
