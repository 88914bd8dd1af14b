"""Realistic wrong solutions of a04_attention_seq2seq (see tests/variants/__init__.py)."""

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
        "breaks": ["test_decoder_step", "test_greedy_decode"],
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
}
