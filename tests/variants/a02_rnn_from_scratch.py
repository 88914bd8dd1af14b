"""Realistic wrong answers to a02_rnn_from_scratch (see tests/variants/__init__.py).

rnn_forward calls rnn_step, rnn_backward and CharRNN call rnn_forward, and
train_char_lm uses CharRNN and clip_grad_norm, so a mistake in an early part
also costs the parts built on it (the training loop's process tests compare
its history with a reference loop, so any wrong step or clipping shows there).
"""

EVERYTHING_ON_THE_RNN = ["test_rnn_step", "test_rnn_forward", "test_rnn_backward", "test_char_rnn"]

VARIANTS = {
    # ReLU instead of tanh.
    "step_relu": {
        "cell": "rnn_step_impl",
        "replace": [("torch.tanh(x @ W_xh + h @ W_hh + b_h)", "torch.relu(x @ W_xh + h @ W_hh + b_h)")],
        "breaks": EVERYTHING_ON_THE_RNN + ["test_train_char_lm"],
    },
    # The recurrent term is missing: the "RNN" has no memory (a bigram model).
    "step_missing_W_hh": {
        "cell": "rnn_step_impl",
        "replace": [("torch.tanh(x @ W_xh + h @ W_hh + b_h)", "torch.tanh(x @ W_xh + b_h)")],
        "breaks": EVERYTHING_ON_THE_RNN + ["test_train_char_lm"],
    },
    # nn.RNN's (out, in) layout used with this assignment's (in, out) weights.
    "step_transposed_weights": {
        "cell": "rnn_step_impl",
        "replace": [("torch.tanh(x @ W_xh + h @ W_hh + b_h)", "torch.tanh(x @ W_xh + h @ W_hh.T + b_h)")],
        "breaks": EVERYTHING_ON_THE_RNN + ["test_train_char_lm"],
    },
    # Stores the state before the update: H_all holds h_0 .. h_{T-1}, so the language
    # model never sees the current character.
    "forward_states_shifted": {
        "cell": "rnn_forward_impl",
        "replace": [("        h = rnn_step(X[t], h, W_xh, W_hh, b_h)  # (B, H)\n        states.append(h)",
                     "        states.append(h)\n        h = rnn_step(X[t], h, W_xh, W_hh, b_h)  # (B, H)")],
        "breaks": ["test_rnn_forward", "test_rnn_backward", "test_char_rnn", "test_train_char_lm"],
    },
    # Forgets the tanh derivative (1 - h^2) in BPTT.
    "backward_missing_tanh_derivative": {
        "cell": "rnn_backward_impl",
        "replace": [("da = dh * (1 - H_all[t] ** 2)", "da = dh")],
        "breaks": ["test_rnn_backward"],
    },
    # Truncates BPTT to one step: the gradient from step t + 1 is not carried back.
    "backward_no_carry": {
        "cell": "rnn_backward_impl",
        "replace": [("dh = dH_all[t] + dh_next", "dh = dH_all[t]")],
        "breaks": ["test_rnn_backward"],
    },
    # Uses h_t instead of h_{t-1} in the gradient of W_hh.
    "backward_W_hh_uses_current_state": {
        "cell": "rnn_backward_impl",
        "replace": [('grads["W_hh"] += h_prev.T @ da', 'grads["W_hh"] += H_all[t].T @ da')],
        "breaks": ["test_rnn_backward"],
    },
    # Feeds the batch-first ids to the sequence-first rnn_forward: the recurrence runs over the batch.
    "char_rnn_batch_as_time": {
        "cell": "char_rnn_impl",
        "replace": [("F.one_hot(X.T, V)", "F.one_hot(X, V)"),
                    ("return logits.transpose(0, 1), h_T", "return logits, h_T")],
        "breaks": ["test_char_rnn", "test_train_char_lm"],
    },
    # Clips each tensor's gradient on its own instead of the global norm.
    "clip_per_parameter": {
        "cell": "clip_impl",
        "replace": [("    if coef < 1:\n        for g in grads:\n            g.mul_(coef)",
                     "    for g, n in zip(grads, norms):\n        if n > max_norm:\n            g.mul_(max_norm / (n + 1e-6))")],
        "breaks": ["test_clip_grad_norm", "test_train_char_lm"],
    },
    # Goes through a generator twice: the second pass is empty, nothing is clipped.
    "clip_iterates_generator_twice": {
        "cell": "clip_impl",
        "replace": [("    if coef < 1:\n        for g in grads:\n            g.mul_(coef)",
                     "    if coef < 1:\n        for p in parameters:\n            if p.grad is not None:\n                p.grad.mul_(coef)")],
        "breaks": ["test_clip_grad_norm", "test_train_char_lm"],
    },
    # Carries the state across unrelated random batches without detaching it.
    "train_state_not_detached": {
        "cell": "train_impl",
        "replace": [("    for _ in range(num_updates):", "    h = None\n    for _ in range(num_updates):"),
                    ("logits, _ = model(X)", "logits, h = model(X, h)")],
        "breaks": ["test_train_char_lm"],
    },
    # Flattens the targets in sequence-first order: every logit gets someone else's target.
    "train_targets_transposed": {
        "cell": "train_impl",
        "replace": [("Y.reshape(-1))", "Y.T.reshape(-1))")],
        "breaks": ["test_train_char_lm"],
    },

    # ---- Wrong variants that only the process tests and the stricter checks catch.
    # A new Adam for every update: its moment estimates restart each time.
    "train_new_optimiser_every_update": {
        "cell": "train_impl",
        "replace": [("        optimizer.zero_grad()\n",
                     "        optimizer = torch.optim.Adam(model.parameters(), lr=lr)\n        optimizer.zero_grad()\n")],
        "breaks": ["test_train_char_lm"],
    },
    # Clips after the optimiser step: the step uses the unclipped gradient.
    "train_clip_after_step": {
        "cell": "train_impl",
        "replace": [("        norm = clip_grad_norm(model.parameters(), max_norm)\n        optimizer.step()\n",
                     "        optimizer.step()\n        norm = clip_grad_norm(model.parameters(), max_norm)\n")],
        "breaks": ["test_train_char_lm"],
    },
    # The loss of the last time step only.
    "train_loss_last_step_only": {
        "cell": "train_impl",
        "replace": [("loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))",
                     "loss = F.cross_entropy(logits[:, -1], Y[:, -1])")],
        "breaks": ["test_train_char_lm"],
    },
    # One update too few.
    "train_one_update_too_few": {
        "cell": "train_impl",
        "replace": [("    for _ in range(num_updates):", "    for _ in range(1, num_updates):")],
        "breaks": ["test_train_char_lm"],
    },
    # Never draws the last window start (an exclusive bound taken as inclusive).
    "train_never_draws_the_last_window": {
        "cell": "train_impl",
        "replace": [("torch.randint(0, len(train_ids) - seq_len, ", "torch.randint(0, len(train_ids) - seq_len - 1, ")],
        "breaks": ["test_train_char_lm"],
    },
    # Returns a list instead of the tuple (H_all, h_T).
    "forward_returns_a_list": {
        "cell": "rnn_forward_impl",
        "replace": [("    return H_all, h\n", "    return [H_all, h]\n")],
        "breaks": ["test_rnn_forward"],
    },
    # Keeps the last state in the module and reuses it when h0 is None.
    "char_rnn_remembers_the_last_state": {
        "cell": "char_rnn_impl",
        "replace": [("        V = self.W_xh.shape[0]\n",
                     "        V = self.W_xh.shape[0]\n        if h0 is None:\n            h0 = getattr(self, 'last_state', None)\n"),
                    ("        return logits.transpose(0, 1), h_T",
                     "        self.last_state = h_T.detach()\n        return logits.transpose(0, 1), h_T")],
        "breaks": ["test_char_rnn", "test_train_char_lm"],
    },
    # Returns None, not 0.0, when no tensor has a gradient.
    "clip_no_gradient_returns_none": {
        "cell": "clip_impl",
        "replace": [("        return 0.0\n", "        return None\n")],
        "breaks": ["test_clip_grad_norm"],
    },

    # ---- Correct variants: other code for the same specification; they keep full marks.
    # The literal reading of the threshold rule: clip when g > max_norm.
    "correct_clip_literal_threshold": {
        "cell": "clip_impl",
        "replace": [("    if coef < 1:\n", "    if total > max_norm:\n")],
        "breaks": [],
    },
    # Returns the norm as a Python float, computed as a sum of squares.
    "correct_clip_float_from_sum_of_squares": {
        "cell": "clip_impl",
        "replace": [("    norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])  # one norm per tensor\n"
                     "    total = torch.linalg.vector_norm(norms)  # the global norm\n",
                     "    total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))\n"),
                    ("    return total\n", "    return float(total)\n")],
        "breaks": [],
    },
    # Another random stream for the windows, a summed loss divided by B*T, and zero_grad first.
    "correct_train_other_stream_and_layout": {
        "cell": "train_impl",
        "replace": [("    for _ in range(num_updates):",
                     "    gen = torch.Generator(device=train_ids.device).manual_seed(1234)\n    for _ in range(num_updates):\n"
                     "        optimizer.zero_grad()"),
                    ("torch.randint(0, len(train_ids) - seq_len, (batch_size, 1), device=train_ids.device)",
                     "torch.randint(0, len(train_ids) - seq_len, (batch_size, 1), device=train_ids.device, generator=gen)"),
                    ("loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))",
                     "loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1), reduction='sum') / Y.numel()"),
                    ("        optimizer.zero_grad()\n        loss.backward()", "        loss.backward()")],
        "breaks": [],
    },
}
