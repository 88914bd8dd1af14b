"""Realistic wrong solutions of a04_attention_seq2seq (see tests/variants/__init__.py).

train_date_model trains the student's own decoder: the process test compares its first
update with the gradient of the task's model, so a wrong decoder step costs that part too.
"""

VARIANTS = {
    "masked_softmax_zeroed_after_softmax_not_renormalised": {
        "cell": "masked_softmax_impl",
        "replace": [("scores = scores.masked_fill(~mask, -1e30)", "pass")],
        "breaks": ["test_masked_softmax", "test_additive_attention", "test_scaled_dot_product_attention",
                   "test_decoder_step", "test_greedy_decode"],
    },
    "masked_softmax_minus_inf_gives_nan_rows": {
        "cell": "masked_softmax_impl",
        "replace": [("scores = scores.masked_fill(~mask, -1e30)", "scores = scores.masked_fill(~mask, float('-inf'))")],
        "breaks": ["test_masked_softmax"],
    },
    "additive_attention_relu_instead_of_tanh": {
        "cell": "additive_attention_impl",
        "replace": [("features = torch.tanh(", "features = torch.relu(")],
        "breaks": ["test_additive_attention", "test_decoder_step", "test_greedy_decode"],
    },
    "sdpa_without_sqrt_d_scaling": {
        "cell": "sdpa_impl",
        "replace": [("scores = Q @ K.transpose(1, 2) / math.sqrt(d)", "scores = Q @ K.transpose(1, 2)")],
        "breaks": ["test_scaled_dot_product_attention"],
    },
    "mha_heads_split_in_wrong_order": {
        "cell": "mha_impl",
        "replace": [("return x.view(B, T, h, d).transpose(1, 2)", "return x.view(B, T, d, h).permute(0, 3, 1, 2)")],
        "breaks": ["test_multi_head_attention"],
    },
    "mha_key_padding_mask_inverted": {
        "cell": "mha_impl",
        "replace": [("scores.masked_fill(key_padding_mask[:, None, None, :], float(\"-inf\"))",
                     "scores.masked_fill(~key_padding_mask[:, None, None, :], float(\"-inf\"))")],
        "breaks": ["test_multi_head_attention"],
    },
    "decoder_concatenates_context_first": {
        "cell": "decoder_impl",
        "replace": [("x = torch.cat([self.embedding(y_prev), context.squeeze(1)], dim=-1)",
                     "x = torch.cat([context.squeeze(1), self.embedding(y_prev)], dim=-1)")],
        "breaks": ["test_decoder_step", "test_greedy_decode", "test_train_dates"],
    },
    "greedy_does_not_stop_at_eos": {
        "cell": "greedy_impl",
        "replace": [("            if token == EOS:\n                done[b] = True\n            else:\n"
                     "                outputs[b].append(token)",
                     "            outputs[b].append(token)")],
        "breaks": ["test_greedy_decode", "test_train_dates"],
    },
    "bleu_without_brevity_penalty": {
        "cell": "bleu_impl",
        "replace": [("brevity = 1.0 if c > r else math.exp(1 - r / c)", "brevity = 1.0")],
        "breaks": ["test_bleu"],
    },
    "bleu_unclipped_counts": {
        "cell": "bleu_impl",
        "replace": [("matches = sum(min(count, ref[g]) for g, count in cand.items())",
                     "matches = sum(count for g, count in cand.items() if g in ref)")],
        "breaks": ["test_bleu"],
    },
    "train_without_shifting_the_decoder_input": {
        "cell": "train_impl",
        "replace": [("tgt_in = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], dim=1)", "tgt_in = tgt")],
        "breaks": ["test_train_dates"],
    },

    # ---- Wrong variants that only the process tests and the stricter checks catch.
    # <pad> targets count in the loss.
    "train_pad_not_ignored": {
        "cell": "train_impl",
        "replace": [("loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)", "loss_fn = nn.CrossEntropyLoss()")],
        "breaks": ["test_train_dates"],
    },
    # One update more than asked: num_steps=0 is already trained.
    "train_one_step_too_many": {
        "cell": "train_impl",
        "replace": [("    for step in range(num_steps):", "    for step in range(num_steps + 1):")],
        "breaks": ["test_train_dates"],
    },
    # The loss of the last decoder step only.
    "train_loss_last_step_only": {
        "cell": "train_impl",
        "replace": [("loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tgt[idx].reshape(-1))",
                     "loss = loss_fn(logits[:, -1], tgt[idx][:, -1])")],
        "breaks": ["test_train_dates"],
    },
    # The seed is not used: the initial weights depend on whatever ran before.
    "train_seed_ignored": {
        "cell": "train_impl",
        "replace": [("    torch.manual_seed(seed)\n", "")],
        "breaks": ["test_train_dates"],
    },
    # The decoder step returns a list instead of the tuple (logits, new_state, weights).
    "decoder_returns_a_list": {
        "cell": "decoder_impl",
        "replace": [("        return self.dense(state), state, weights.squeeze(1)",
                     "        return [self.dense(state), state, weights.squeeze(1)]")],
        "breaks": ["test_decoder_step"],
    },
    # Caches the projected keys and values of the first call, as for incremental decoding.
    "mha_caches_keys_and_values": {
        "cell": "mha_impl",
        "replace": [("        q, k, v = split_heads(q), split_heads(k), split_heads(v)\n",
                     "        if getattr(self, 'cache', None) is None or self.cache[0].shape[0] != query.shape[0]:\n"
                     "            self.cache = (k, v)\n        k, v = self.cache\n"
                     "        q, k, v = split_heads(q), split_heads(k), split_heads(v)\n")],
        "breaks": ["test_multi_head_attention"],
    },
    # Keeps appending the tokens of a finished sequence while the others still run.
    "greedy_writes_after_eos": {
        "cell": "greedy_impl",
        "replace": [("            if done[b]:\n                continue\n", "")],
        "breaks": ["test_greedy_decode"],
    },
    # Decodes one step even when max_len is 0.
    "greedy_max_len_zero_decodes_once": {
        "cell": "greedy_impl",
        "replace": [("    for _ in range(max_len):", "    for _ in range(max(max_len, 1)):")],
        "breaks": ["test_greedy_decode"],
    },

    # ---- Correct variants: other code for the same specification; they keep full marks.
    # Other sizes, learning rate, batch size and random stream.
    "correct_train_other_hyperparameters": {
        "cell": "train_impl",
        "replace": [("embed_size=16, hidden_size=48", "embed_size=24, hidden_size=64"),
                    ("lr=1e-2", "lr=8e-3"),
                    ("gen = torch.Generator().manual_seed(seed)", "gen = torch.Generator().manual_seed(seed + 12345)"),
                    ("(64,), generator=gen)", "(48,), generator=gen)")],
        "breaks": [],
    },
    # Decodes with tensors until every sequence has an <eos> (or max_len), then cuts at the first <eos>.
    "correct_greedy_cut_afterwards": {
        "cell": "greedy_impl",
        "replace": [("    outputs = [[] for _ in range(B)]\n    done = [False] * B\n    for _ in range(max_len):\n"
                     "        logits, state, _ = model.decoder(y, state, enc_outputs, src_valid_lens)  # (B, V)\n"
                     "        y = logits.argmax(dim=-1)  # (B,)\n        for b, token in enumerate(y.tolist()):\n"
                     "            if done[b]:\n                continue\n            if token == EOS:\n"
                     "                done[b] = True\n            else:\n                outputs[b].append(token)\n"
                     "        if all(done):\n            break\n    return outputs\n",
                     "    steps = []\n    finished = torch.zeros(B, dtype=torch.bool, device=src.device)\n"
                     "    while len(steps) < max_len and not bool(finished.all()):\n"
                     "        logits, state, _ = model.decoder(y, state, enc_outputs, src_valid_lens)  # (B, V)\n"
                     "        y = logits.argmax(dim=-1)  # (B,)\n        steps.append(y)\n        finished |= y == EOS\n"
                     "    rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(B)]\n"
                     "    return [row[: row.index(EOS)] if EOS in row else row for row in rows]\n")],
        "breaks": [],
    },
}
