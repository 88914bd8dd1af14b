"""Realistic wrong solutions of a03_lstm_gru_cells (see tests/variants/__init__.py)."""

_LSTM_MATH = ["test_lstm_cell", "test_recurrent_layer", "test_lstm_forward"]
_GRU_MATH = ["test_gru_cell", "test_recurrent_layer"]

VARIANTS = {
    "lstm_forget_gate_tanh": {
        "cell": "lstm_cell_impl",
        "replace": [("f = torch.sigmoid(f)", "f = torch.tanh(f)")],
        "breaks": _LSTM_MATH,
    },
    "lstm_gate_order_ifog": {
        "cell": "lstm_cell_impl",
        "replace": [("i, f, g, o = gates.chunk(4, dim=1)", "i, f, o, g = gates.chunk(4, dim=1)")],
        "breaks": _LSTM_MATH,
    },
    "lstm_cell_update_uses_output_gate": {
        "cell": "lstm_cell_impl",
        "replace": [("c_new = f * c + i * g", "c_new = f * c + o * g")],
        "breaks": _LSTM_MATH,
    },
    "lstm_init_bound_from_input_size": {
        "cell": "lstm_cell_impl",
        "replace": [("bound = 1.0 / math.sqrt(self.hidden_size)", "bound = 1.0 / math.sqrt(self.input_size)")],
        "breaks": ["test_lstm_cell"],
    },
    "gru_update_gate_swapped": {
        "cell": "gru_cell_impl",
        "replace": [("return (1 - z) * n + z * h", "return z * n + (1 - z) * h")],
        "breaks": _GRU_MATH,
    },
    "gru_reset_before_matmul": {
        "cell": "gru_cell_impl",
        "replace": [("n = torch.tanh(i_n + r * h_n)",
                     "n = torch.tanh(i_n + (r * h) @ weight_hh[2 * H:].T"
                     " + (bias_hh[2 * H:] if bias_hh is not None else 0))")],
        "breaks": _GRU_MATH,
    },
    "layer_batch_first_output_not_transposed_back": {
        "cell": "recurrent_layer_impl",
        "replace": [("output = output.transpose(0, 1)  # (B, T, H)", "pass")],
        "breaks": ["test_recurrent_layer"],
    },
    "lstm_higher_layers_sized_for_one_direction": {
        "cell": "lstm_impl",
        "replace": [("layer_input = input_size if k == 0 else D * hidden_size",
                     "layer_input = input_size if k == 0 else hidden_size")],
        "breaks": ["test_lstm_params", "test_lstm_forward"],
    },
    "lstm_backward_direction_not_reversed_back": {
        "cell": "lstm_impl",
        "replace": [("y = y.flip(0)  # back to time order", "pass")],
        "breaks": ["test_lstm_forward"],
    },
    "lstm_h_n_from_output_last_step": {
        "cell": "lstm_impl",
        "replace": [("h_n.append(h)", "h_n.append(y[-1])")],
        "breaks": ["test_lstm_forward"],
    },
    "gate_trace_chunks_in_order_ifog": {
        "cell": "gate_trace_impl",
        "replace": [("a_i, a_f, a_g, a_o = a.chunk(4, dim=1)", "a_i, a_f, a_o, a_g = a.chunk(4, dim=1)")],
        "breaks": ["test_lstm_gate_trace"],
    },

    # ---- Wrong variants that only the stricter checks catch.
    # The cell keeps its last state and reuses it when hx is None (for the same batch size).
    "lstm_cell_remembers_the_last_state": {
        "cell": "lstm_cell_impl",
        "replace": [("        if hx is None:\n            zeros = input.new_zeros(input.shape[0], self.hidden_size)  # (B, H)\n"
                     "            hx = (zeros, zeros)\n        h, c = hx\n"
                     "        return lstm_cell_step(input, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)",
                     "        if hx is None:\n            hx = getattr(self, 'last_state', None)\n"
                     "        if hx is None or hx[0].shape[0] != input.shape[0]:\n"
                     "            zeros = input.new_zeros(input.shape[0], self.hidden_size)  # (B, H)\n"
                     "            hx = (zeros, zeros)\n        h, c = hx\n"
                     "        out = lstm_cell_step(input, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)\n"
                     "        self.last_state = tuple(t.detach() for t in out)\n        return out")],
        "breaks": ["test_lstm_cell", "test_recurrent_layer"],
    },
    # The layer carries its final state over to the next call when hx is None.
    "recurrent_layer_carries_state_across_calls": {
        "cell": "recurrent_layer_impl",
        "replace": [("        state = hx\n", "        state = hx if hx is not None else getattr(self, 'carry', None)\n"),
                    ("        return output, state", "        if self.batch_first is False:\n            self.carry = state\n        return output, state")],
        "breaks": ["test_recurrent_layer"],
    },
    # lstm_cell_step returns a list: the layer then takes the LSTM state for a GRU state.
    "lstm_step_returns_a_list": {
        "cell": "lstm_cell_impl",
        "replace": [("    return h_new, c_new\n", "    return [h_new, c_new]\n")],
        "breaks": ["test_lstm_cell", "test_recurrent_layer"],
    },
    # With batch_first=True the given hx is transposed too (it is (L*D, B, H) in every layout).
    "lstm_transposes_hx_when_batch_first": {
        "cell": "lstm_impl",
        "replace": [("            hx = (zeros, zeros)\n        h0, c0 = hx\n",
                     "            hx = (zeros, zeros)\n        elif self.batch_first:\n"
                     "            hx = tuple(t.transpose(0, 1).contiguous() for t in hx)\n        h0, c0 = hx\n")],
        "breaks": ["test_lstm_forward"],
    },
    # The LSTM reuses its last final states when hx is None.
    "lstm_reuses_final_states": {
        "cell": "lstm_impl",
        "replace": [("        if hx is None:\n            zeros = x.new_zeros(self.num_layers * D, B, H)  # (L*D, B, H)\n",
                     "        last = getattr(self, 'last', None)\n        if hx is None and last is not None and last[0].shape[1] == B:\n"
                     "            hx = last\n        if hx is None:\n            zeros = x.new_zeros(self.num_layers * D, B, H)  # (L*D, B, H)\n"),
                    ("        return output, (torch.stack(h_n), torch.stack(c_n))",
                     "        self.last = (torch.stack(h_n).detach(), torch.stack(c_n).detach())\n"
                     "        return output, (torch.stack(h_n), torch.stack(c_n))")],
        "breaks": ["test_lstm_forward"],
    },

    # ---- Correct variants: other code for the same specification; they keep full marks.
    # Gates sliced by hand, zero state from torch.zeros.
    "correct_lstm_cell_sliced_gates": {
        "cell": "lstm_cell_impl",
        "replace": [("    i, f, g, o = gates.chunk(4, dim=1)  # each (B, H)\n",
                     "    H = h.shape[1]\n    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))\n"),
                    ("            zeros = input.new_zeros(input.shape[0], self.hidden_size)  # (B, H)\n",
                     "            zeros = torch.zeros(input.shape[0], self.hidden_size, dtype=input.dtype, device=input.device)\n")],
        "breaks": [],
    },
    # The layer writes the outputs into a preallocated tensor, indexing time explicitly.
    "correct_recurrent_layer_preallocated": {
        "cell": "recurrent_layer_impl",
        "replace": [("        outputs = []\n        for x_t in x:  # (B, I)\n            state = self.cell(x_t, state)\n"
                     "            outputs.append(state[0] if isinstance(state, tuple) else state)  # (B, H)\n"
                     "        output = torch.stack(outputs)  # (T, B, H)\n",
                     "        output = None\n        for t in range(x.shape[0]):\n            state = self.cell(x[t], state)\n"
                     "            h = state[0] if isinstance(state, tuple) else state\n"
                     "            if output is None:\n                output = h.new_zeros(x.shape[0], *h.shape)\n"
                     "            output = output.index_copy(0, torch.tensor([t], device=h.device), h[None])\n")],
        "breaks": [],
    },
}
