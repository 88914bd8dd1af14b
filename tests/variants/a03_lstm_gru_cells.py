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
}
