"""Realistic wrong solutions of a05_transformer, and correct ones written differently
(``"breaks": []``: they must keep full marks). See tests/variants/__init__.py.

The language model of Parts 5-7 is built from the student's Parts 1-4, so a wrong positional
encoding, mask, attention or layer also costs the model's points where the model uses it
(``forward``; the solution's cached path has its own attention code).
"""

LM = ["test_causal_lm", "test_kv_cache", "test_generate"]
FORWARD = ["test_causal_lm", "test_generate"]  # the model's forward (generate without a cache uses it)

VARIANTS = {
    # -- Part 1 ---------------------------------------------------------------------------------
    "pe_sin_and_cos_swapped": {
        "cell": "pe_impl",
        "replace": [("pe[:, 0::2] = torch.sin(angles)", "pe[:, 0::2] = torch.cos(angles)"),
                    ("pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])",
                     "pe[:, 1::2] = torch.sin(angles[:, : d_model // 2])")],
        "breaks": ["test_positional_encoding", *LM],
    },
    "pe_frequency_uses_i_instead_of_2i": {
        "cell": "pe_impl",
        "replace": [("two_i = torch.arange(0, d_model, 2, dtype=torch.float64)",
                     "two_i = torch.arange((d_model + 1) // 2, dtype=torch.float64)")],
        "breaks": ["test_positional_encoding", *LM],
    },
    # Class 2 (the type the task names): float64 instead of float32; the model casts it anyway.
    "pe_returns_float64": {
        "cell": "pe_impl",
        "replace": [("return pe.float()", "return pe")],
        "breaks": ["test_positional_encoding"],
    },
    # Class 5 (a stated boundary): an odd d_model fails.
    "pe_odd_width_not_handled": {
        "cell": "pe_impl",
        "replace": [("pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])", "pe[:, 1::2] = torch.cos(angles)")],
        "breaks": ["test_positional_encoding"],
    },
    # -- Part 2 ---------------------------------------------------------------------------------
    "mask_also_blocks_the_diagonal": {
        "cell": "mask_impl",
        "replace": [("triu(diagonal=1)", "triu(diagonal=0)")],
        "breaks": ["test_causal_mask", *FORWARD],
    },
    "mask_is_float_zeros_and_ones": {
        "cell": "mask_impl",
        "replace": [("return torch.ones(T, T, dtype=torch.bool, device=device).triu(diagonal=1)",
                     "return torch.ones(T, T, device=device).triu(diagonal=1)")],
        "breaks": ["test_causal_mask", *FORWARD],
    },
    # -- Part 3 ---------------------------------------------------------------------------------
    # Class 6 (ambiguous wording read the other way): True = may attend.
    "mha_attn_mask_true_means_keep": {
        "cell": "mha_impl",
        "replace": [('scores = scores.masked_fill(attn_mask, float("-inf"))',
                     'scores = scores.masked_fill(~attn_mask, float("-inf"))')],
        "breaks": ["test_multi_head_attention", "test_encoder_layer", *FORWARD],
    },
    "mha_attn_mask_ignored_when_padding_mask_given": {
        "cell": "mha_impl",
        "replace": [("        if attn_mask is not None:\n", "        if attn_mask is not None and key_padding_mask is None:\n")],
        "breaks": ["test_multi_head_attention", "test_encoder_layer"],
    },
    # Class 3 (state across calls): the mask of the first call is kept and reused when none is given.
    "mha_reuses_the_last_mask": {
        "cell": "mha_impl",
        "replace": [("        if attn_mask is not None:\n",
                     "        if attn_mask is None:\n"
                     "            attn_mask = getattr(self, '_last_mask', None)\n"
                     "        self._last_mask = attn_mask\n"
                     "        if attn_mask is not None:\n")],
        "breaks": ["test_multi_head_attention", "test_encoder_layer"],
    },
    "mha_scaled_by_model_width": {
        "cell": "mha_impl",
        "replace": [("scores = q @ k.transpose(-2, -1) / math.sqrt(d)", "scores = q @ k.transpose(-2, -1) / math.sqrt(D)")],
        "breaks": ["test_multi_head_attention", "test_encoder_layer", *FORWARD],
    },
    # -- Part 4 ---------------------------------------------------------------------------------
    "layer_ignores_norm_first": {
        "cell": "encoder_layer_impl",
        "replace": [("        if self.norm_first:\n", "        if False:\n")],
        "breaks": ["test_encoder_layer", *FORWARD],
    },
    # Class 4 (a rule the usual inputs never exercise): layer_norm_eps is dropped.
    "layer_ignores_layer_norm_eps": {
        "cell": "encoder_layer_impl",
        "replace": [("self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)", "self.norm1 = nn.LayerNorm(d_model)"),
                    ("self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)", "self.norm2 = nn.LayerNorm(d_model)")],
        "breaks": ["test_encoder_layer"],
    },
    "layer_pre_norm_skips_norm2": {
        "cell": "encoder_layer_impl",
        "replace": [("x = x + self._ff(self.norm2(x))", "x = x + self._ff(x)")],
        "breaks": ["test_encoder_layer", *FORWARD],
    },
    "layer_gelu_instead_of_relu": {
        "cell": "encoder_layer_impl",
        "replace": [("return self.linear2(torch.relu(self.linear1(x)))", "return self.linear2(F.gelu(self.linear1(x)))")],
        "breaks": ["test_encoder_layer", *FORWARD],
    },
    # -- Part 5 ---------------------------------------------------------------------------------
    "lm_without_final_norm": {
        "cell": "lm_impl",
        "replace": [("return self.lm_head(self.norm(x))  # (B, T, V)", "return self.lm_head(x)  # (B, T, V)")],
        "breaks": FORWARD,
    },
    "lm_positional_encoding_in_state_dict": {
        "cell": "lm_impl",
        "replace": [("sinusoidal_positional_encoding(max_len, d_model), persistent=False)",
                     "sinusoidal_positional_encoding(max_len, d_model))")],
        "breaks": LM,
    },
    "lm_without_causal_mask": {
        "cell": "lm_impl",
        "replace": [("x = layer(x, src_mask=mask)", "x = layer(x)")],
        "breaks": FORWARD,
    },
    # -- Part 6 ---------------------------------------------------------------------------------
    "cache_positions_restart_at_zero": {
        "cell": "cache_impl",
        "replace": [("x = self.embedding(ids) + self.pe[t : t + T]  # (B, T, D)",
                     "x = self.embedding(ids) + self.pe[:T]  # (B, T, D)")],
        "breaks": ["test_kv_cache", "test_generate"],
    },
    # Class 4: a chunk of several tokens after a cache is not masked (generate never sends one).
    "cache_chunk_after_cache_not_masked": {
        "cell": "cache_impl",
        "replace": [("scores = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(blocked, float(\"-inf\"))",
                     "scores = q @ k.transpose(-2, -1) / math.sqrt(d)\n"
                     "    if past is None:\n"
                     "        scores = scores.masked_fill(blocked, float(\"-inf\"))")],
        "breaks": ["test_kv_cache"],
    },
    "cache_keys_from_unnormalised_input": {
        "cell": "cache_impl",
        "replace": [("a, kv = _attend_with_cache(layer.self_attn, layer.norm1(x),",
                     "a, kv = _attend_with_cache(layer.self_attn, x,")],
        "breaks": ["test_kv_cache", "test_generate"],
    },
    # -- Part 7 ---------------------------------------------------------------------------------
    # Class 3: the cache is kept on the model and reused by the next call.
    "generate_keeps_the_cache_on_the_model": {
        "cell": "generate_impl",
        "replace": [("        logits, cache = self.forward_with_cache(ids)  # (B, T, V)\n",
                     "        if getattr(self, '_cache', None) is not None and self._cache[0][0].shape[0] == B:\n"
                     "            logits, cache = self.forward_with_cache(ids[:, -1:], self._cache)\n"
                     "        else:\n"
                     "            logits, cache = self.forward_with_cache(ids)  # (B, T, V)\n"),
                    ("                logits, cache = self.forward_with_cache(nxt, cache)  # (B, 1, V)\n",
                     "                logits, cache = self.forward_with_cache(nxt, cache)  # (B, 1, V)\n"
                     "        self._cache = cache\n")],
        "breaks": ["test_generate"],
    },
    # Class 5: a total of exactly max_len is refused.
    "generate_refuses_exactly_max_len": {
        "cell": "generate_impl",
        "replace": [("if T + max_new_tokens > self.max_len:", "if T + max_new_tokens >= self.max_len:")],
        "breaks": ["test_generate"],
    },
    "generate_returns_only_the_new_tokens": {
        "cell": "generate_impl",
        "replace": [("    return out\n    ### END SOLUTION", "    return out[:, T:]\n    ### END SOLUTION")],
        "breaks": ["test_generate"],
    },
    # Class 2: a list of lists instead of a long tensor.
    "generate_returns_a_list": {
        "cell": "generate_impl",
        "replace": [("    return out\n    ### END SOLUTION", "    return out.tolist()\n    ### END SOLUTION")],
        "breaks": ["test_generate"],
    },
    "generate_cache_one_token_late": {
        "cell": "generate_impl",
        "replace": [("logits, cache = self.forward_with_cache(nxt, cache)  # (B, 1, V)",
                     "logits, cache = self.forward_with_cache(out[:, -2:-1], cache)  # (B, 1, V)")],
        "breaks": ["test_generate"],
    },
    # ---------------------------------------------------------------------------------------------
    # Correct answers written differently: they must keep full marks.
    # ---------------------------------------------------------------------------------------------
    "correct_pe_float32_exp_log": {
        "cell": "pe_impl",
        "replace": [(
            "    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (T, 1)\n"
            "    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(D/2),): the even column indices\n"
            "    angles = pos / 10000.0 ** (two_i / d_model)  # (T, ceil(D/2))\n"
            "    pe = torch.zeros(max_len, d_model, dtype=torch.float64)\n"
            "    pe[:, 0::2] = torch.sin(angles)\n"
            "    pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])  # an odd width has one sine more than cosines\n"
            "    return pe.float()",
            "    position = torch.arange(max_len).float().unsqueeze(1)\n"
            "    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))\n"
            "    both = torch.stack([torch.sin(position * div_term), torch.cos(position * div_term)], dim=-1)\n"
            "    return both.reshape(max_len, -1)[:, :d_model].contiguous()")],
        "breaks": [],
    },
    "correct_mask_by_comparison": {
        "cell": "mask_impl",
        "replace": [("return torch.ones(T, T, dtype=torch.bool, device=device).triu(diagonal=1)",
                     "i = torch.arange(T, device=device)\n    return i[None, :] > i[:, None]")],
        "breaks": [],
    },
    "correct_mha_additive_masks_and_einsum": {
        "cell": "mha_impl",
        "replace": [
            ("scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, h, Tq, Tk)",
             "scores = torch.einsum('bhqd,bhkd->bhqk', q / math.sqrt(d), k)  # (B, h, Tq, Tk)\n"
             "        bias = torch.zeros(scores.shape[0], 1, scores.shape[2], scores.shape[3], dtype=scores.dtype,\n"
             "                           device=scores.device)\n"
             "        if attn_mask is not None:\n"
             "            bias = bias.masked_fill(attn_mask, float('-inf'))\n"
             "        if key_padding_mask is not None:\n"
             "            bias = bias.masked_fill(key_padding_mask[:, None, None, :], float('-inf'))\n"
             "        scores = scores + bias"),
            ('        if attn_mask is not None:\n            scores = scores.masked_fill(attn_mask, float("-inf"))  # (Tq, Tk) broadcasts\n'
             '        if key_padding_mask is not None:\n            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))\n',
             ""),
        ],
        "breaks": [],
    },
    "correct_layer_functional_norms": {
        "cell": "encoder_layer_impl",
        "replace": [
            ("        x = src\n        if self.norm_first:",
             "        x = src\n"
             "        n1 = lambda y: F.layer_norm(y, y.shape[-1:], self.norm1.weight, self.norm1.bias, self.norm1.eps)\n"
             "        n2 = lambda y: F.layer_norm(y, y.shape[-1:], self.norm2.weight, self.norm2.bias, self.norm2.eps)\n"
             "        if self.norm_first:"),
            ("x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask)", "x = x + self._sa(n1(x), src_mask, src_key_padding_mask)"),
            ("x = x + self._ff(self.norm2(x))", "x = x + self._ff(n2(x))"),
            ("x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask))", "x = n1(x + self._sa(x, src_mask, src_key_padding_mask))"),
            ("x = self.norm2(x + self._ff(x))", "x = n2(x + self._ff(x))"),
        ],
        "breaks": [],
    },
    "correct_cache_pe_computed_on_the_fly_lists_in_cache": {
        "cell": "cache_impl",
        "replace": [
            ("x = self.embedding(ids) + self.pe[t : t + T]  # (B, T, D)",
             "pe = sinusoidal_positional_encoding(t + T, self.embedding.embedding_dim)[t:]\n"
             "    x = self.embedding(ids) + pe.to(ids.device, self.embedding.weight.dtype)  # (B, T, D)"),
            ("new_cache.append(kv)", "new_cache.append([kv[0], kv[1]])"),
        ],
        "breaks": [],
    },
}
