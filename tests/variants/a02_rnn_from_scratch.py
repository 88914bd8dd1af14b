"""Realistic wrong answers to a02_rnn_from_scratch (see tests/variants/__init__.py).

rnn_forward calls rnn_step, rnn_backward and CharRNN call rnn_forward, so a
mistake in an early part also costs the parts built on it.
"""

EVERYTHING_ON_THE_RNN = ["test_rnn_step", "test_rnn_forward", "test_rnn_backward", "test_char_rnn"]

VARIANTS = {
    # ReLU instead of tanh.
    "step_relu": {
        "cell": "rnn_step_impl",
        "replace": [("torch.tanh(x @ W_xh + h @ W_hh + b_h)", "torch.relu(x @ W_xh + h @ W_hh + b_h)")],
        "breaks": EVERYTHING_ON_THE_RNN,
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
        "breaks": EVERYTHING_ON_THE_RNN,
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
        "breaks": ["test_clip_grad_norm"],
    },
    # Goes through a generator twice: the second pass is empty, nothing is clipped.
    "clip_iterates_generator_twice": {
        "cell": "clip_impl",
        "replace": [("    if coef < 1:\n        for g in grads:\n            g.mul_(coef)",
                     "    if coef < 1:\n        for p in parameters:\n            if p.grad is not None:\n                p.grad.mul_(coef)")],
        "breaks": ["test_clip_grad_norm"],
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
}
