"""The architecture diagrams: each draws, with the chapter's symbols, one palette, no overlapping text."""

import itertools

import matplotlib
import matplotlib.colors as mcolors
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch
from matplotlib.text import Text

from seqcourse import diagrams

# Each diagram with the symbols (substrings of its text artists) that must appear in it.
CASES = {
    "char_lm_shift": (lambda: diagrams.char_lm_shift("the time machine", 8),
                      ["input $X$", "target $Y$", "$x_{9}$", "(B, T)"]),
    "rnn_unrolled": (lambda: diagrams.rnn_unrolled(4),
                     [r"\mathbf{x}_{4}", r"\mathbf{h}_0", r"\mathbf{o}_{1}", r"\mathbf{W}_{xh}",
                      r"\mathbf{W}_{hh}", r"\mathbf{W}_{hq}"]),
    "bptt_graph": (lambda: diagrams.bptt_graph(4),
                   [r"\ell_{4}", r"\mathbf{J}_{2}^\top", r"\partial L/\partial\mathbf{W}_{hh}", "$L$"]),
    "lstm_cell": (diagrams.lstm_cell, ["$c_{t-1}$", "$c_t$", "$h_{t-1}$", "$x_t$", "$f_t$", "$i_t$", "$g_t$",
                                       "$o_t$", "gradient highway", "forget", "output"]),
    "gru_cell": (diagrams.gru_cell, ["$h_{t-1}W_{hn} + b_{hn}$", "$x_t W_{xn} + b_{xn}$", "$r_t$", "$z_t$",
                                     "$1-z_t$", "$n_t$", "reset", "update"]),
    "deep_rnn": (lambda: diagrams.deep_rnn(2, 4),
                 ["h_n[0]", "h_n[1]", "output (B, T, H)", "h_n (L, B, H)", r"\mathbf{h}^{(2)}_{4}"]),
    "bidirectional_rnn": (lambda: diagrams.bidirectional_rnn(4, 2),
                          ["h_n[0]", "h_n[1]", "h_n[2]", "h_n[3]", "output (B, T, 2H)", "output[..., :H]",
                           "output[..., H:]", "= output[:, -1, :H]", "= output[:, 0, H:]", "2*l + direction",
                           r"\overleftarrow{\mathbf{h}}_{1}"]),
    "skip_gram_negative_sampling": (lambda: diagrams.skip_gram_negative_sampling(2),
                                    [r"\mathbf{v}_c", r"\mathbf{u}_o", r"\mathbf{u}_{n_2}",
                                     r"\log\sigma(-\mathbf{u}_{n_1}^\top\mathbf{v}_c)", "0.75", r"\ell(c, o)"]),
    "attention_qkv": (lambda: diagrams.attention_qkv(4),
                      [r"\mathbf{q}", r"\mathbf{k}_{4}", r"\mathbf{v}_{1}", r"\alpha_{3}", "softmax",
                       r"\sum_i \alpha_i \mathbf{v}_i"]),
    "multi_head_attention": (lambda: diagrams.multi_head_attention(4),
                             ["(B, T, D)", "(B, h, T, D/h)", "split_heads", "merge_heads", "head 4",
                              r"\mathbf{W}_o", r"\mathbf{W}_q"]),
    "encoder_decoder": (lambda: diagrams.encoder_decoder(attention=False),
                        [r"\mathbf{c} = \mathbf{h}_S", r"\mathbf{s}_0 = \mathbf{c}", "<bos>", r"\mathbf{s}_{3}",
                         r"\mathbf{e}(y_{t'-1})"]),
    "encoder_decoder_attention": (lambda: diagrams.encoder_decoder(attention=True),
                                  [r"\mathbf{c}_{1}", r"\alpha_{t't}", r"\mathbf{s}_0 = \mathbf{h}_S"]),
    "path_lengths": (lambda: diagrams.path_lengths(8, 3),
                     ["CNN, $k = 3$: 4 layers", "RNN: 7 state updates", "self-attention: 1 layer", "$O(n/k)$"]),
    "transformer_block": (lambda: diagrams.transformer_block(norm_first=False),
                          ["multi-head\nself-attention", "add & LayerNorm", "feed-forward", "norm_first=False"]),
    "transformer_block_pre": (lambda: diagrams.transformer_block(norm_first=True),
                              ["LayerNorm", "norm_first=True"]),
    "transformer_block_decoder": (lambda: diagrams.transformer_block(decoder=True),
                                  ["masked multi-head", "cross-attention", "encoder output"]),
}


def _texts(fig):
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.fixture(scope="module")
def figures():
    return {name: make() for name, (make, _) in CASES.items()}


def test_every_public_diagram_is_covered():
    for name, fn in diagrams.DIAGRAMS.items():
        assert any(case == name or case.startswith(name + "_") for case in CASES), f"{name} is not tested"
        assert fn.__doc__ and len(fn.__doc__) > 40, f"{name} lacks a docstring"


@pytest.mark.parametrize("name", list(CASES))
def test_diagram_returns_figure_with_its_symbols(figures, name):
    fig = figures[name]
    assert isinstance(fig, Figure)
    text = "\n".join(t.get_text() for t in _texts(fig))
    for symbol in CASES[name][1]:
        assert symbol in text, f"{name}: {symbol!r} missing"


@pytest.mark.parametrize("name", list(CASES))
def test_page_width_and_readable_fonts(figures, name):
    fig = figures[name]
    width, height = fig.get_size_inches()
    assert width == pytest.approx(diagrams.WIDTH)
    assert 1.5 <= height <= 7.0
    sizes = [t.get_fontsize() for t in _texts(fig)]
    assert sizes and min(sizes) >= 9.0, f"{name}: smallest font {min(sizes)} pt"


@pytest.mark.parametrize("name", list(CASES))
def test_no_text_overlaps_another_and_all_text_is_on_the_page(figures, name):
    fig = figures[name]
    canvas = FigureCanvasAgg(fig)  # off screen
    canvas.draw()
    renderer = canvas.get_renderer()
    page = fig.bbox
    boxes = []
    for t in _texts(fig):
        bb = t.get_window_extent(renderer)
        assert bb.x0 >= page.x0 - 1 and bb.x1 <= page.x1 + 1 and bb.y0 >= page.y0 - 1 and bb.y1 <= page.y1 + 1, \
            f"{name}: {t.get_text()!r} leaves the page"
        boxes.append((t.get_text(), bb.expanded(1.0, 1.0).padded(-1.0)))
    for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
        assert not ba.overlaps(bb), f"{name}: {a!r} overlaps {b!r}"


EXTREMES = {
    "char_lm_shift_12": lambda: diagrams.char_lm_shift("the time machine by h g wells", 12),
    "char_lm_shift_1": lambda: diagrams.char_lm_shift("ab", 1),
    "rnn_unrolled_1": lambda: diagrams.rnn_unrolled(1),
    "rnn_unrolled_6": lambda: diagrams.rnn_unrolled(6),
    "bptt_graph_2": lambda: diagrams.bptt_graph(2),
    "bptt_graph_6": lambda: diagrams.bptt_graph(6),
    "deep_rnn_1_2": lambda: diagrams.deep_rnn(1, 2),
    "deep_rnn_4_6": lambda: diagrams.deep_rnn(4, 6),
    "bidirectional_rnn_2_1": lambda: diagrams.bidirectional_rnn(2, 1),
    "bidirectional_rnn_5_3": lambda: diagrams.bidirectional_rnn(5, 3),
    "skip_gram_1_1": lambda: diagrams.skip_gram_negative_sampling(1, 1),
    "skip_gram_4_3": lambda: diagrams.skip_gram_negative_sampling(4, 3),
    "attention_qkv_1": lambda: diagrams.attention_qkv(1),
    "attention_qkv_6": lambda: diagrams.attention_qkv(6),
    "multi_head_attention_1": lambda: diagrams.multi_head_attention(1),
    "multi_head_attention_8": lambda: diagrams.multi_head_attention(8),
    "encoder_decoder_init_3_2": lambda: diagrams.encoder_decoder(False, "init", 3, 2),
    "encoder_decoder_input_5_4": lambda: diagrams.encoder_decoder(False, "input", 5, 4),
    "encoder_decoder_attention_5_4": lambda: diagrams.encoder_decoder(True, source_len=5, target_len=4),
    "path_lengths_3_3": lambda: diagrams.path_lengths(3, 3),
    "path_lengths_10_7": lambda: diagrams.path_lengths(10, 7),
    "path_lengths_10_3": lambda: diagrams.path_lengths(10, 3),
    "transformer_block_pre_decoder": lambda: diagrams.transformer_block(norm_first=True, decoder=True),
}


@pytest.mark.parametrize("name", list(EXTREMES))
def test_the_extreme_arguments_still_draw_cleanly(name):
    test_no_text_overlaps_another_and_all_text_is_on_the_page({name: EXTREMES[name]()}, name)


@pytest.mark.parametrize("name", list(CASES))
def test_colours_come_from_the_one_palette(figures, name):
    allowed = {mcolors.to_hex(v[k]) for v in diagrams.PALETTE.values() for k in ("face", "edge")}
    fig = figures[name]
    patches = [p for p in fig.findobj(lambda a: isinstance(a, (FancyBboxPatch, Circle))) if p.get_visible()]
    assert patches, f"{name} draws no boxes"
    for p in patches:
        assert mcolors.to_hex(p.get_facecolor()) in allowed, f"{name}: fill {p.get_facecolor()} not in PALETTE"
        assert mcolors.to_hex(p.get_edgecolor()) in allowed, f"{name}: edge {p.get_edgecolor()} not in PALETTE"


def test_roles_have_distinct_colours():
    faces = [v["face"] for v in diagrams.PALETTE.values()]
    assert len(set(faces)) == len(faces)
    for role in ("input", "hidden", "gate", "output", "cell", "attention", "loss"):
        assert role in diagrams.PALETTE


def test_drawing_leaves_pyplot_and_rcparams_alone():
    import matplotlib.pyplot as plt

    before_figs = plt.get_fignums()
    before_rc = dict(matplotlib.rcParams)
    diagrams.rnn_unrolled(2)
    diagrams.transformer_block()
    assert plt.get_fignums() == before_figs
    assert dict(matplotlib.rcParams) == before_rc


def test_shape_of_the_drawing_follows_the_arguments():
    def count_boxes(fig):
        return len([p for p in fig.findobj(FancyBboxPatch)])

    assert count_boxes(diagrams.rnn_unrolled(5)) - count_boxes(diagrams.rnn_unrolled(3)) == 6  # 3 boxes a step
    assert count_boxes(diagrams.deep_rnn(3, 4)) - count_boxes(diagrams.deep_rnn(2, 4)) == 6  # h_0..h_4 + h_n
    text = "\n".join(t.get_text() for t in _texts(diagrams.bidirectional_rnn(3, 3)))
    assert "h_n[5]" in text and "h_n[6]" not in text
    text = "\n".join(t.get_text() for t in _texts(diagrams.path_lengths(9, 5)))
    assert "CNN, $k = 5$: 2 layers" in text and "RNN: 8 state updates" in text


@pytest.mark.parametrize("call, error", [
    (lambda: diagrams.rnn_unrolled(0), ValueError),
    (lambda: diagrams.rnn_unrolled(2.5), TypeError),
    (lambda: diagrams.rnn_unrolled(True), TypeError),
    (lambda: diagrams.bptt_graph(1), ValueError),
    (lambda: diagrams.char_lm_shift("abc", 3), ValueError),
    (lambda: diagrams.char_lm_shift(123, 3), TypeError),
    (lambda: diagrams.char_lm_shift("abcdef", 0), ValueError),
    (lambda: diagrams.deep_rnn(0, 3), ValueError),
    (lambda: diagrams.deep_rnn(2, 1), ValueError),
    (lambda: diagrams.bidirectional_rnn(1), ValueError),
    (lambda: diagrams.bidirectional_rnn(3, 0), ValueError),
    (lambda: diagrams.skip_gram_negative_sampling(0), ValueError),
    (lambda: diagrams.attention_qkv(0), ValueError),
    (lambda: diagrams.multi_head_attention(0), ValueError),
    (lambda: diagrams.encoder_decoder(attention="yes"), TypeError),
    (lambda: diagrams.encoder_decoder(context="every"), ValueError),
    (lambda: diagrams.encoder_decoder(source_len=2), ValueError),
    (lambda: diagrams.encoder_decoder(target_len=5), ValueError),
    (lambda: diagrams.path_lengths(8, 4), ValueError),
    (lambda: diagrams.path_lengths(2, 3), ValueError),
    (lambda: diagrams.transformer_block(norm_first="pre"), TypeError),
])
def test_bad_arguments_are_rejected_with_a_clear_error(call, error):
    with pytest.raises(error, match=r"must|needs"):
        call()


def test_a_diagram_displays_itself_as_a_page_wide_png_without_pyplot():
    import struct

    png = diagrams.rnn_unrolled(3)._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert width == round(diagrams.WIDTH * diagrams.DPI) and height > 100
