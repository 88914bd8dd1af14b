"""Architecture diagrams for the book, drawn with plain matplotlib.

Every function returns a new :class:`matplotlib.figure.Figure` and touches no
global state: figures are built with ``Figure()`` rather than ``pyplot``, so
nothing is registered with pyplot, nothing is shown, and no style is changed.
In a notebook, a figure returned as the last expression of a cell is displayed
once.

One visual language for all diagrams:

* :data:`PALETTE` gives one colour per role (input, hidden state, gate, ...);
  boxes of a role always have that fill and the matching edge colour.
* Solid dark arrows are the forward computation; dashed red arrows
  (:data:`GRADIENT_COLOR`) are gradients.
* Every figure is :data:`WIDTH` inches wide, and no text is smaller than
  :data:`SMALL_FONT` points.

The axes of each figure are measured in inches (``xlim = (0, width)``), so
that the positions in the code read as distances on the page.
"""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.lines import Line2D

# One fill (face) and one edge colour per role. Every diagram takes its colours
# from here, so a hidden state looks the same in every chapter.
PALETTE = {
    "input": {"face": "#d6e6f7", "edge": "#2f6fad", "label": "input"},
    "hidden": {"face": "#d8efd3", "edge": "#3b8a32", "label": "hidden state"},
    "hidden_backward": {"face": "#c9ece8", "edge": "#23827a", "label": "hidden state (backward)"},
    "cell": {"face": "#e7dcf3", "edge": "#7a4fa8", "label": "memory cell"},
    "gate": {"face": "#fde4c2", "edge": "#c77a12", "label": "gate / layer"},
    "output": {"face": "#f8d7da", "edge": "#b23a48", "label": "output"},
    "attention": {"face": "#fff2a8", "edge": "#a88a00", "label": "attention"},
    "weight": {"face": "#e6e6e6", "edge": "#5a5a5a", "label": "weights"},
    "loss": {"face": "#f3c6a5", "edge": "#a8501c", "label": "loss"},
    "op": {"face": "#ffffff", "edge": "#333333", "label": "element-wise operation"},
}
FORWARD_COLOR = "#333333"
GRADIENT_COLOR = "#c0392b"
WIDTH = 7.5  # inches: about 750 px at the figure's 100 dpi, the page's width
DPI = 100
FONT = 11  # points, for labels inside boxes
SMALL_FONT = 9.5  # points, for annotations; nothing is smaller
_BOX_LW = 1.3
_ARROW_LW = 1.3


# ---------------------------------------------------------------- primitives

class Diagram(Figure):
    """A matplotlib ``Figure`` that shows itself as a PNG in a notebook, without pyplot.

    A figure made with ``Figure()`` is unknown to pyplot, so the notebook's
    inline backend does not display it; ``_repr_png_`` lets IPython display it
    when it is the value of a cell.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        FigureCanvasAgg(self).print_png(buffer)
        return buffer.getvalue()


def _canvas(height: float, width: float = WIDTH):
    """A figure with one frameless axes whose data units are inches."""
    fig = Diagram(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _check_int(name: str, value, low: int, high: int) -> int:
    """Reject non-integers and values outside ``[low, high]`` with a clear message."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high} so that the diagram stays readable, "
                         f"got {value}")
    return value


def _box(ax, x, y, w, h, text, role, fontsize=FONT, lw=_BOX_LW, **text_kw):
    """A rounded box of ``role``'s colours centred at ``(x, y)``, with ``text`` in it."""
    colors = PALETTE[role]
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                facecolor=colors["face"], edgecolor=colors["edge"], linewidth=lw, zorder=2))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=4, **text_kw)
    return (x, y, w, h)


def _circle(ax, x, y, text, role="op", r=0.16, fontsize=FONT):
    """A small circle (an element-wise operation such as ⊙ or +) centred at ``(x, y)``."""
    colors = PALETTE[role]
    ax.add_patch(Circle((x, y), r, facecolor=colors["face"], edgecolor=colors["edge"], linewidth=_BOX_LW,
                        zorder=2))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=4)


def _arrow(ax, start, end, kind="forward", rad=0.0, lw=_ARROW_LW, color=None, zorder=1.5):
    """An arrow from ``start`` to ``end``; ``kind`` is "forward" (solid) or "gradient" (dashed red)."""
    if kind not in ("forward", "gradient"):
        raise ValueError(f"kind must be 'forward' or 'gradient', got {kind!r}")
    color = color or (FORWARD_COLOR if kind == "forward" else GRADIENT_COLOR)
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11,
                                 connectionstyle=f"arc3,rad={rad}", color=color, linewidth=lw,
                                 linestyle="--" if kind == "gradient" else "-", shrinkA=0, shrinkB=0,
                                 zorder=zorder))


def _line(ax, xs, ys, color=FORWARD_COLOR, lw=_ARROW_LW, zorder=1.5):
    """A polyline without arrow head (wires that join or split)."""
    ax.add_line(Line2D(xs, ys, color=color, linewidth=lw, zorder=zorder, solid_capstyle="round"))


def _note(ax, x, y, text, ha="center", va="center", color="#222222", fontsize=SMALL_FONT, **kw):
    """An annotation in the small font."""
    ax.text(x, y, text, ha=ha, va=va, fontsize=fontsize, color=color, zorder=4, **kw)


def _legend(fig, roles, extra=(), ncol=None, y=0.0):
    """A legend of the colour roles used, plus ``extra`` (label, Line2D) entries, at the bottom."""
    handles = [Patch(facecolor=PALETTE[r]["face"], edgecolor=PALETTE[r]["edge"], label=PALETTE[r]["label"])
               for r in roles]
    handles += list(extra)
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, y), ncol=ncol or len(handles),
               fontsize=SMALL_FONT, frameon=False, handlelength=1.6, columnspacing=1.2)


def _forward_handle(label="forward computation"):
    return Line2D([], [], color=FORWARD_COLOR, lw=_ARROW_LW, label=label)


def _gradient_handle(label="gradient"):
    return Line2D([], [], color=GRADIENT_COLOR, lw=_ARROW_LW, linestyle="--", label=label)


def _shown(token: str) -> str:
    """How a character token is drawn: a visible mark for the space."""
    return "␣" if token == " " else token


# ------------------------------------------------------------------ diagrams

def char_lm_shift(text: str = "the time machine", num_steps: int = 8) -> Figure:
    """Inputs and targets of a character language model: the targets are the inputs shifted by one.

    Args:
        text: a string of at least ``num_steps + 1`` characters; its first
            ``num_steps + 1`` characters are drawn.
        num_steps: ``T``, the number of time steps in one row of a minibatch
            ``X`` of shape ``(B, T)`` (1 to 12).

    Returns:
        A figure with the corpus characters ``x_1 ... x_{T+1}``, the input row
        ``X`` and the target row ``Y``, and the prediction made at each step.
    """
    T = _check_int("num_steps", num_steps, 1, 12)
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if len(text) < T + 1:
        raise ValueError(f"text has {len(text)} characters but num_steps={T} needs at least {T + 1}; "
                         "pass a longer text or a smaller num_steps")
    chars = text[: T + 1]
    fig, ax = _canvas(3.3)
    left, step = 1.55, min(0.62, (WIDTH - 1.75) / (T + 1))
    ys = {"corpus": 2.75, "X": 1.8, "Y": 0.85}
    _note(ax, 0.1, ys["corpus"], "text", ha="left", fontsize=FONT)
    _note(ax, 0.1, ys["X"], "input $X$", ha="left", fontsize=FONT)
    _note(ax, 0.1, ys["Y"], "target $Y$", ha="left", fontsize=FONT)
    for i, ch in enumerate(chars):
        x = left + i * step
        _box(ax, x, ys["corpus"], 0.46, 0.4, _shown(ch), "weight", family="monospace")
        _note(ax, x, ys["corpus"] + 0.36, f"$x_{{{i + 1}}}$")
    for t in range(T):
        x_in, x_out = left + t * step, left + (t + 1) * step
        _box(ax, x_in, ys["X"], 0.46, 0.4, _shown(chars[t]), "input", family="monospace")
        _box(ax, x_out, ys["Y"], 0.46, 0.4, _shown(chars[t + 1]), "output", family="monospace")
        _arrow(ax, (x_in, ys["X"] - 0.21), (x_out - 0.08, ys["Y"] + 0.21))
    _note(ax, WIDTH / 2, 0.28,
          f"at step $t$ the model reads $x_1, \\ldots, x_t$ and is scored on $x_{{t+1}}$ ($T = {T}$);\n"
          f"a minibatch stacks $B$ such rows: $X$ and $Y$ of shape $(B, T)$")
    return fig


def rnn_unrolled(num_steps: int = 4) -> Figure:
    """A vanilla RNN, folded (one cell with a loop) and unrolled over ``num_steps`` time steps.

    Symbols as in the RNN chapter: inputs ``x_t``, hidden states ``h_t``
    (``h_0`` the initial state), outputs ``o_t``, and the three weight
    matrices ``W_xh``, ``W_hh``, ``W_hq`` shared by every step.

    Args:
        num_steps: ``T``, the number of unrolled steps (1 to 6).
    """
    T = _check_int("num_steps", num_steps, 1, 6)
    fig, ax = _canvas(3.9)
    y_x, y_h, y_o = 0.95, 2.05, 3.15
    bw, bh = 0.52, 0.42
    # folded form on the left
    fx = 0.7
    _box(ax, fx, y_x, bw, bh, r"$\mathbf{x}_t$", "input")
    _box(ax, fx, y_h, bw, bh, r"$\mathbf{h}_t$", "hidden")
    _box(ax, fx, y_o, bw, bh, r"$\mathbf{o}_t$", "output")
    _arrow(ax, (fx, y_x + bh / 2), (fx, y_h - bh / 2))
    _arrow(ax, (fx, y_h + bh / 2), (fx, y_o - bh / 2))
    _arrow(ax, (fx + bw / 2, y_h + 0.08), (fx + bw / 2, y_h - 0.08), rad=-2.6)
    _note(ax, fx + 0.62, y_h + 0.33, r"$\mathbf{W}_{hh}$")
    _note(ax, 1.62, y_h, "=", fontsize=16)
    # unrolled form on the right
    x0, step = 2.35, min(1.2, (WIDTH - 2.75) / T)
    _box(ax, x0, y_h, bw, bh, r"$\mathbf{h}_0$", "hidden")
    for t in range(1, T + 1):
        x = x0 + t * step
        _box(ax, x, y_x, bw, bh, rf"$\mathbf{{x}}_{{{t}}}$", "input")
        _box(ax, x, y_h, bw, bh, rf"$\mathbf{{h}}_{{{t}}}$", "hidden")
        _box(ax, x, y_o, bw, bh, rf"$\mathbf{{o}}_{{{t}}}$", "output")
        _arrow(ax, (x, y_x + bh / 2), (x, y_h - bh / 2))
        _arrow(ax, (x, y_h + bh / 2), (x, y_o - bh / 2))
        _arrow(ax, (x - step + bw / 2, y_h), (x - bw / 2, y_h))
        _note(ax, x + 0.08, (y_x + y_h) / 2, r"$\mathbf{W}_{xh}$", ha="left")
        _note(ax, x + 0.08, (y_h + y_o) / 2, r"$\mathbf{W}_{hq}$", ha="left")
        _note(ax, x - step / 2, y_h + 0.2, r"$\mathbf{W}_{hh}$")
    _note(ax, (x0 + x0 + T * step) / 2 + 0.2, 0.38,
          r"the same $\mathbf{W}_{xh}$, $\mathbf{W}_{hh}$, $\mathbf{W}_{hq}$ (and biases) at every step")
    _legend(fig, ["input", "hidden", "output"], y=0.9)
    return fig


def bptt_graph(num_steps: int = 4) -> Figure:
    """The computational graph of backpropagation through time, with the gradient paths to ``W_hh``.

    Forward: ``x_t`` and ``h_{t-1}`` give ``h_t``; each ``h_t`` gives a loss
    ``ℓ_t``; ``L = Σ_t ℓ_t``. Backward (dashed red): ``∂ℓ_t/∂h_t`` enters at
    every step, ``J_{t+1}^T`` carries ``∂L/∂h_{t+1}`` back to ``h_t``, and
    every step adds its local contribution to ``∂L/∂W_hh``.

    Args:
        num_steps: ``T``, the number of time steps drawn (2 to 6).
    """
    T = _check_int("num_steps", num_steps, 2, 6)
    fig, ax = _canvas(5.0)
    y_w, y_x, y_h, y_l, y_L = 0.75, 1.65, 2.65, 3.65, 4.55
    bw, bh = 0.5, 0.4
    x0, step = 0.75, min(1.35, (WIDTH - 1.3) / T)
    xs = [x0 + t * step for t in range(T + 1)]
    _box(ax, xs[0], y_h, bw, bh, r"$\mathbf{h}_0$", "hidden")
    _box(ax, (xs[1] + xs[-1]) / 2, y_L, 1.0, bh, "$L$", "loss")
    for t in range(1, T + 1):
        x = xs[t]
        _box(ax, x, y_x, bw, bh, rf"$\mathbf{{x}}_{{{t}}}$", "input")
        _box(ax, x, y_h, bw, bh, rf"$\mathbf{{h}}_{{{t}}}$", "hidden")
        _box(ax, x, y_l, bw, bh, rf"$\ell_{{{t}}}$", "loss")
        _arrow(ax, (x, y_x + bh / 2), (x, y_h - bh / 2))
        # forward h -> loss on the left half, gradient loss -> h on the right half
        _arrow(ax, (x - 0.1, y_h + bh / 2), (x - 0.1, y_l - bh / 2))
        _arrow(ax, (x + 0.1, y_l - bh / 2), (x + 0.1, y_h + bh / 2), kind="gradient")
        _arrow(ax, (x, y_l + bh / 2), ((xs[1] + xs[-1]) / 2 + (x - (xs[1] + xs[-1]) / 2) * 0.35, y_L - bh / 2),
               lw=0.9)
        _arrow(ax, (xs[t - 1] + bw / 2, y_h + 0.07), (x - bw / 2, y_h + 0.07))
        _arrow(ax, (x - bw / 2, y_h - 0.07), (xs[t - 1] + bw / 2, y_h - 0.07), kind="gradient")
        _note(ax, x - step / 2, y_h + 0.26, rf"$\mathbf{{J}}_{{{t}}}^\top$", color=GRADIENT_COLOR)
        # each step's local contribution to dL/dW_hh
        _arrow(ax, (x - step / 2, y_h - 0.12), (x - step / 2, y_w + 0.2), kind="gradient", lw=1.0)
    _note(ax, xs[1] + 0.34, (y_h + y_l) / 2, r"$\partial\ell_1/\partial\mathbf{h}_1$", ha="left",
          color=GRADIENT_COLOR)
    _box(ax, (xs[0] + xs[-1]) / 2, y_w, xs[-1] - xs[0] + 0.2, 0.4,
         r"$\mathbf{W}_{hh}$ (shared):  $\partial L/\partial\mathbf{W}_{hh}$ = sum of one term per step",
         "weight", fontsize=SMALL_FONT + 0.5)
    _note(ax, (xs[1] + xs[-1]) / 2 + 0.62, y_L, r"$= \sum_t \ell_t$", ha="left")
    _legend(fig, [], extra=[_forward_handle(), _gradient_handle("gradient (backward pass)")], y=0.0)
    return fig


def lstm_cell() -> Figure:
    """One LSTM step: four gate layers and the memory-cell path, highlighted as the gradient highway.

    Symbols as in the LSTM chapter: ``x_t``, ``h_{t-1}``, ``c_{t-1}``; the
    gates ``f_t``, ``i_t``, ``o_t`` (sigmoid) and the candidate ``g_t``
    (tanh); ``c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t`` and ``h_t = o_t ⊙ tanh(c_t)``.
    """
    fig, ax = _canvas(4.6)
    y_c, y_gate, y_bus = 3.55, 2.0, 1.0
    x_f, x_i, x_g, x_o, x_plus, x_out = 2.1, 3.1, 3.95, 5.05, 3.95, 5.95
    # the cell-state path, drawn thick in the cell colour: only ⊙ f_t and + on it
    cell = PALETTE["cell"]["edge"]
    _line(ax, [0.75, 6.75], [y_c, y_c], color=cell, lw=4.0, zorder=1)
    _arrow(ax, (6.5, y_c), (6.85, y_c), color=cell, lw=4.0)
    _note(ax, 0.55, y_c, "$c_{t-1}$", ha="right", fontsize=FONT)
    _note(ax, 6.95, y_c, "$c_t$", ha="left", fontsize=FONT)
    _note(ax, 3.0, y_c + 0.52, "gradient highway: along this path, $c_t$ to $c_{t-1}$ is only a multiplication by $f_t$",
          color=cell)
    _circle(ax, x_f, y_c, r"$\odot$")
    _circle(ax, x_plus, y_c, "$+$")
    # input bus: h_{t-1} from the left, x_t from below, fed to the four layers
    _line(ax, [0.75, x_o], [y_bus, y_bus])
    _note(ax, 0.55, y_bus, "$h_{t-1}$", ha="right", fontsize=FONT)
    _line(ax, [1.3, 1.3], [0.55, y_bus])
    _note(ax, 1.18, 0.6, "$x_t$", ha="right", fontsize=FONT)
    gates = [(x_f, r"$\sigma$", "forget"), (x_i, r"$\sigma$", "input"),
             (x_g, r"$\tanh$", "candidate"), (x_o, r"$\sigma$", "output")]
    for x, fn, name in gates:
        _arrow(ax, (x, y_bus), (x, y_gate - 0.22))
        _box(ax, x, y_gate, 0.62, 0.44, fn, "gate")
        _note(ax, x, y_gate - 0.4, name)
    # f_t scales the old cell
    _arrow(ax, (x_f, y_gate + 0.22), (x_f, y_c - 0.16))
    _note(ax, x_f + 0.08, 2.8, "$f_t$", ha="left", fontsize=FONT)
    # i_t ⊙ g_t is written into the cell
    y_ig = 2.85
    _circle(ax, x_g, y_ig, r"$\odot$")
    _line(ax, [x_i, x_i, x_g - 0.16], [y_gate + 0.22, y_ig, y_ig])
    _note(ax, x_i - 0.08, 2.55, "$i_t$", ha="right", fontsize=FONT)
    _arrow(ax, (x_g, y_gate + 0.22), (x_g, y_ig - 0.16))
    _note(ax, x_g + 0.08, 2.45, "$g_t$", ha="left", fontsize=FONT)
    _arrow(ax, (x_g, y_ig + 0.16), (x_plus, y_c - 0.16))
    # h_t = o_t ⊙ tanh(c_t)
    y_tanh, y_h = 2.75, 2.0
    _arrow(ax, (x_out, y_c), (x_out, y_tanh + 0.2))
    _box(ax, x_out, y_tanh, 0.62, 0.38, r"$\tanh$", "op")
    _arrow(ax, (x_out, y_tanh - 0.19), (x_out, y_h + 0.16))
    _circle(ax, x_out, y_h, r"$\odot$")
    _arrow(ax, (x_o + 0.31, y_gate), (x_out - 0.16, y_h))
    _note(ax, (x_o + x_out) / 2 + 0.05, y_gate + 0.17, "$o_t$", fontsize=FONT)
    _arrow(ax, (x_out + 0.16, y_h), (6.85, y_h))
    _note(ax, 6.95, y_h, "$h_t$", ha="left", fontsize=FONT)
    _note(ax, 6.2, 0.95, "each layer: $\\sigma$ or $\\tanh$ of\n$x_t W_{x\\cdot} + h_{t-1} W_{h\\cdot} + b_\\cdot$")
    _legend(fig, ["gate", "op"], extra=[Line2D([], [], color=cell, lw=4.0, label="memory cell path")], y=0.0)
    return fig


def gru_cell() -> Figure:
    """One GRU step with PyTorch's placement of the reset gate.

    Symbols as in the GRU chapter: ``r_t`` and ``z_t`` (sigmoid gates), the
    candidate ``n_t = tanh(x_t W_xn + b_xn + r_t ⊙ (h_{t-1} W_hn + b_hn))`` —
    the reset gate multiplies the hidden product *after* ``W_hn`` and its bias
    ``b_hn`` — and ``h_t = z_t ⊙ h_{t-1} + (1 − z_t) ⊙ n_t``.
    """
    fig, ax = _canvas(4.75)
    y_top, y_gate, y_bus = 4.15, 1.55, 0.9
    x_r, x_c, x_z, x_plus = 1.75, 3.2, 5.0, 5.95
    hid = PALETTE["hidden"]["edge"]
    # the state path at the top: h_{t-1} -> ⊙ z_t -> + -> h_t
    _line(ax, [0.75, 6.75], [y_top, y_top], color=hid, lw=2.5, zorder=1)
    _arrow(ax, (6.5, y_top), (6.85, y_top), color=hid, lw=2.5)
    _note(ax, 0.55, y_top, "$h_{t-1}$", ha="right", fontsize=FONT)
    _note(ax, 6.95, y_top, "$h_t$", ha="left", fontsize=FONT)
    _circle(ax, x_z, y_top, r"$\odot$")
    _circle(ax, x_plus, y_top, "$+$")
    # input bus: h_{t-1} comes down on the left, x_t from below
    _line(ax, [0.75, 0.75, x_z], [y_top, y_bus, y_bus])
    _line(ax, [1.15, 1.15], [0.45, y_bus])
    _note(ax, 1.05, 0.5, "$x_t$", ha="right", fontsize=FONT)
    for x, name in [(x_r, "reset"), (x_z, "update")]:
        _arrow(ax, (x, y_bus), (x, y_gate - 0.22))
        _box(ax, x, y_gate, 0.62, 0.44, r"$\sigma$", "gate")
        _note(ax, x + 0.38, y_gate, name, ha="left")
    # candidate: the hidden product first, then the reset gate, then the input product is added
    y_hn, y_rst, y_sum = 3.45, 2.8, 2.1
    _arrow(ax, (x_c, y_top), (x_c, y_hn + 0.21))
    _box(ax, x_c, y_hn, 1.55, 0.42, "$h_{t-1}W_{hn} + b_{hn}$", "weight", fontsize=SMALL_FONT + 0.5)
    _arrow(ax, (x_c, y_hn - 0.21), (x_c, y_rst + 0.16))
    _circle(ax, x_c, y_rst, r"$\odot$")
    _line(ax, [x_r, x_r], [y_gate + 0.22, y_rst])
    _arrow(ax, (x_r, y_rst), (x_c - 0.16, y_rst))
    _note(ax, x_r + 0.1, (y_gate + y_rst) / 2 + 0.1, "$r_t$", ha="left", fontsize=FONT)
    _circle(ax, x_c, y_sum, "$+$")
    _arrow(ax, (x_c, y_rst - 0.16), (x_c, y_sum + 0.16))
    _line(ax, [x_c, x_c], [y_bus, y_gate - 0.21])
    _box(ax, x_c, y_gate, 1.4, 0.42, "$x_t W_{xn} + b_{xn}$", "weight", fontsize=SMALL_FONT + 0.5)
    _arrow(ax, (x_c, y_gate + 0.21), (x_c, y_sum - 0.16))
    x_tanh = 4.1
    _box(ax, x_tanh, y_sum, 0.62, 0.38, r"$\tanh$", "gate")
    _arrow(ax, (x_c + 0.16, y_sum), (x_tanh - 0.31, y_sum))
    # update gate: z_t keeps the old state, 1 - z_t lets the candidate in
    _arrow(ax, (x_z, y_gate + 0.22), (x_z, y_top - 0.16))
    _note(ax, x_z - 0.1, 3.5, "$z_t$", ha="right", fontsize=FONT)
    y_mix = 2.8
    _circle(ax, x_plus, y_mix, r"$\odot$")
    x_one = (x_z + x_plus) / 2
    _circle(ax, x_one, y_mix, "$1-$", r=0.2, fontsize=SMALL_FONT)
    _arrow(ax, (x_z, y_mix), (x_one - 0.2, y_mix))
    _arrow(ax, (x_one + 0.2, y_mix), (x_plus - 0.16, y_mix))
    _note(ax, x_one + 0.05, y_mix + 0.36, "$1-z_t$")
    _arrow(ax, (x_plus, y_mix + 0.16), (x_plus, y_top - 0.16))
    _line(ax, [x_tanh + 0.31, x_plus, x_plus], [y_sum, y_sum, y_mix - 0.16])
    _arrow(ax, (x_plus, y_sum), (x_plus, y_mix - 0.16))
    _note(ax, x_plus + 0.1, (y_sum + y_mix) / 2 - 0.1, "$n_t$", ha="left", fontsize=FONT)
    _note(ax, 6.35, 1.0, "PyTorch: $r_t$ multiplies\n$h_{t-1}W_{hn} + b_{hn}$,\nafter the hidden product")
    _legend(fig, ["gate", "weight", "op"], extra=[Line2D([], [], color=hid, lw=2.5, label="hidden state path")],
            y=0.0)
    return fig


def deep_rnn(num_layers: int = 2, num_steps: int = 4) -> Figure:
    """A stacked RNN, and which states ``nn.RNN``/``nn.LSTM`` return in ``output`` and ``h_n``.

    ``h^{(l)}_t`` is the state of layer ``l`` (1 to ``L``) at step ``t``;
    ``h^{(0)}_t = x_t``. With ``batch_first=True``, ``output`` is ``(B, T, H)``:
    the top layer at every step; ``h_n`` is ``(L, B, H)``: the last step of
    every layer, ``h_n[l - 1]`` for layer ``l``.

    Args:
        num_layers: ``L`` (1 to 4).
        num_steps: ``T`` (2 to 6).
    """
    L = _check_int("num_layers", num_layers, 1, 4)
    T = _check_int("num_steps", num_steps, 2, 6)
    row, bw, bh = 0.95, 0.62, 0.44
    y_x = 0.85
    height = y_x + row * L + 1.4
    fig, ax = _canvas(height)
    x0, step = 0.6, min(1.1, (WIDTH - 2.7) / T)
    xs = [x0 + t * step for t in range(T + 1)]
    for t in range(1, T + 1):
        _box(ax, xs[t], y_x, bw, bh, rf"$\mathbf{{x}}_{{{t}}}$", "input")
    for l in range(1, L + 1):
        y = y_x + l * row
        _box(ax, xs[0], y, bw, bh, rf"$\mathbf{{h}}^{{({l})}}_{{0}}$", "hidden", fontsize=SMALL_FONT + 0.5)
        for t in range(1, T + 1):
            _box(ax, xs[t], y, bw, bh, rf"$\mathbf{{h}}^{{({l})}}_{{{t}}}$", "hidden")
            _arrow(ax, (xs[t - 1] + bw / 2, y), (xs[t] - bw / 2, y))
            _arrow(ax, (xs[t], y - row + bh / 2), (xs[t], y - bh / 2))
        # h_n collects the last step of every layer
        _arrow(ax, (xs[T] + bw / 2, y), (xs[T] + 0.85, y), color=PALETTE["output"]["edge"])
        _box(ax, xs[T] + 1.3, y, 0.8, bh, f"h_n[{l - 1}]", "output", fontsize=SMALL_FONT + 0.5,
             family="monospace")
    y_top = y_x + L * row
    # output: the top layer at every step
    y_out = y_top + 0.72
    _line(ax, [xs[1] - bw / 2, xs[1] - bw / 2, xs[T] + bw / 2, xs[T] + bw / 2],
          [y_top + bh / 2 + 0.08, y_out - 0.1, y_out - 0.1, y_top + bh / 2 + 0.08],
          color=PALETTE["output"]["edge"], lw=1.6)
    _note(ax, (xs[1] + xs[T]) / 2, y_out + 0.2, "output (B, T, H):\ntop layer, every step", fontsize=SMALL_FONT,
          family="monospace", color=PALETTE["output"]["edge"])
    _note(ax, xs[T] + 1.3, y_out + 0.1, "h_n (L, B, H):\nlast step,\nevery layer", fontsize=SMALL_FONT,
          family="monospace", color=PALETTE["output"]["edge"])
    _legend(fig, ["input", "hidden", "output"], y=0.0)
    return fig


def bidirectional_rnn(num_steps: int = 4, num_layers: int = 1) -> Figure:
    """A bidirectional RNN and the layout of ``output`` and ``h_n`` (``batch_first=True``).

    At step ``t`` the forward state ``→h_t`` and the backward state ``←h_t`` are
    concatenated: ``output[:, t]`` is ``[→h_t ; ←h_t]``, forward half
    ``[..., :H]`` then backward half ``[..., H:]``, so ``output`` is
    ``(B, T, 2H)`` (top layer). ``h_n`` is ``(2L, B, H)``: row ``2*l + d`` is the
    final state of layer ``l`` (from 0) in direction ``d`` (0 forward,
    1 backward). The backward direction ends at the first step, so its final
    state is ``output[:, 0, H:]``.

    Args:
        num_steps: ``T`` (2 to 5).
        num_layers: ``L`` (1 to 3).
    """
    T = _check_int("num_steps", num_steps, 2, 5)
    L = _check_int("num_layers", num_layers, 1, 3)
    bw, bh, gap = 0.62, 0.4, 0.62
    pair = 2 * bh + 0.04
    y_x = 0.9
    height = y_x + L * (pair + gap) + 1.05
    fig, ax = _canvas(height)
    x0, step = 2.1, min(1.0, 3.0 / (T - 1))
    xs = [x0 + t * step for t in range(T)]
    out_color = PALETTE["output"]["edge"]
    for t in range(T):
        _box(ax, xs[t], y_x, bw, bh, rf"$\mathbf{{x}}_{{{t + 1}}}$", "input")
    y_below = y_x + bh / 2
    for l in range(L):
        y_f = y_below + gap + bh / 2
        y_b = y_f + bh + 0.04
        for t in range(T):
            _box(ax, xs[t], y_f, bw, bh, rf"$\overrightarrow{{\mathbf{{h}}}}_{{{t + 1}}}$", "hidden")
            _box(ax, xs[t], y_b, bw, bh, rf"$\overleftarrow{{\mathbf{{h}}}}_{{{t + 1}}}$", "hidden_backward")
            # both directions read the same input: x_t, or the 2H features of the layer below
            _arrow(ax, (xs[t], y_below), (xs[t], y_f - bh / 2))
            if t:
                _arrow(ax, (xs[t - 1] + bw / 2, y_f), (xs[t] - bw / 2, y_f))
                _arrow(ax, (xs[t] - bw / 2, y_b), (xs[t - 1] + bw / 2, y_b))
        # final states: forward at the last step, backward at the first step
        top = l == L - 1
        _arrow(ax, (xs[-1] + bw / 2, y_f), (xs[-1] + 0.7, y_f), color=out_color)
        _box(ax, xs[-1] + 1.2, y_f, 1.0, bh, f"h_n[{2 * l}]", "output", fontsize=SMALL_FONT, family="monospace")
        _arrow(ax, (xs[0] - bw / 2, y_b), (xs[0] - 0.7, y_b), color=out_color)
        _box(ax, xs[0] - 1.2, y_b, 1.0, bh, f"h_n[{2 * l + 1}]", "output", fontsize=SMALL_FONT,
             family="monospace")
        if top:
            _note(ax, xs[-1] + 1.2, y_f - 0.38, "= output[:, -1, :H]", family="monospace", color=out_color)
            _note(ax, xs[0] - 1.2, y_b + 0.38, "= output[:, 0, H:]", family="monospace", color=out_color)
        y_below = y_b + bh / 2
    # output: the top layer's two halves at every step
    y_br = y_below + 0.12
    _line(ax, [xs[0] - bw / 2, xs[0] - bw / 2, xs[-1] + bw / 2, xs[-1] + bw / 2],
          [y_br - 0.06, y_br + 0.12, y_br + 0.12, y_br - 0.06], color=out_color, lw=1.6)
    _note(ax, (xs[0] + xs[-1]) / 2 + 0.6, y_br + 0.45,
          "output (B, T, 2H): at each step [forward ; backward],\n"
          "forward half output[..., :H], backward half output[..., H:]",
          family="monospace", color=out_color)
    _note(ax, xs[-1] + 1.2, y_x, "h_n (2L, B, H):\nrow 2*l + direction\n(0 forward, 1 backward)",
          family="monospace", color=out_color)
    _legend(fig, ["input", "hidden", "hidden_backward", "output"], y=0.0)
    return fig


def skip_gram_negative_sampling(num_negatives: int = 2, window: int = 2) -> Figure:
    """Skip-gram with negative sampling for one (center, context) pair.

    The center word ``c`` is looked up in the center table (``v_c``), the
    observed context word ``o`` and ``K`` noise words ``n_1 ... n_K`` in the
    context table (``u_o``, ``u_{n_k}``). The loss is
    ``-log σ(u_o^T v_c) - Σ_k log σ(-u_{n_k}^T v_c)``.

    Args:
        num_negatives: ``K``, the noise words drawn (1 to 4).
        window: how many words on each side of the center are drawn (1 to 3).
    """
    K = _check_int("num_negatives", num_negatives, 1, 4)
    m = _check_int("window", window, 1, 3)
    rows, row = 1 + K, 0.95
    top = 1.0 + row * rows + 0.35
    fig, ax = _canvas(top + 0.45)
    # the text window
    n_words = 2 * m + 1
    step = 0.78
    xw0 = WIDTH / 2 - (n_words - 1) * step / 2
    for j in range(n_words):
        off = j - m
        x = xw0 + j * step
        if off == 0:
            _box(ax, x, top, 0.66, 0.42, "$c$", "input")
        elif off == 1:
            _box(ax, x, top, 0.66, 0.42, "$o$", "output")
        else:
            _box(ax, x, top, 0.66, 0.42, f"$w_{{t{off:+d}}}$", "weight")
    _note(ax, xw0 - 0.5, top, "text", ha="right", fontsize=FONT)
    _note(ax, xw0 + (n_words - 1) * step + 0.45, top, f"window of $\\pm{m}$", ha="left")
    x_c = xw0 + m * step
    # the center vector feeds every row through a vertical bus
    ys = [0.95 + row * (rows - 1 - r) for r in range(rows)]
    x_v, x_bus, x_dot, x_score = 1.0, 2.25, 3.35, 4.85
    y_v = (ys[0] + ys[-1]) / 2
    _box(ax, x_v, y_v, 1.55, 0.55, "$\\mathbf{v}_c$\ncenter_emb[c]", "input", fontsize=SMALL_FONT + 0.5)
    _line(ax, [x_c, x_c, x_v, x_v], [top - 0.21, top - 0.45, top - 0.45, y_v + 0.28])
    _arrow(ax, (x_v, top - 0.5), (x_v, y_v + 0.28))
    _line(ax, [x_v + 0.78, x_bus], [y_v, y_v])
    _line(ax, [x_bus, x_bus], [ys[-1], ys[0]])
    for r, y in enumerate(ys):
        if r == 0:
            u, score, target, role = "$\\mathbf{u}_o$", r"$\log\sigma(\mathbf{u}_o^\top\mathbf{v}_c)$", \
                "observed pair: 1", "output"
        else:
            u = f"$\\mathbf{{u}}_{{n_{r}}}$"
            score = rf"$\log\sigma(-\mathbf{{u}}_{{n_{r}}}^\top\mathbf{{v}}_c)$"
            target, role = f"noise word $n_{r}$: 0", "weight"
        _box(ax, x_dot, y + 0.5, 0.7, 0.36, u, role)
        _arrow(ax, (x_dot, y + 0.32), (x_dot, y + 0.16))
        _circle(ax, x_dot, y, r"$\cdot$")
        _arrow(ax, (x_bus, y), (x_dot - 0.16, y))
        _box(ax, x_score, y, 1.75, 0.42, score, "gate", fontsize=SMALL_FONT + 0.5)
        _arrow(ax, (x_dot + 0.16, y), (x_score - 0.875, y))
        _note(ax, x_score + 0.98, y, target, ha="left")
    _note(ax, WIDTH / 2, 0.2, "$\\mathbf{u}$: rows of context_emb; noise words drawn with "
          "$P(w) \\propto \\mathrm{count}(w)^{0.75}$\n$\\ell(c, o) = -$(sum of the log terms above)")
    return fig


def attention_qkv(num_keys: int = 4) -> Figure:
    """Attention as a soft lookup: one query scored against ``n`` keys, softmax, weighted sum of values.

    Symbols as in the attention chapter: query ``q``, keys ``k_i``, values
    ``v_i``, scores ``a(q, k_i)``, weights ``α_i``, output ``Σ_i α_i v_i``.

    Args:
        num_keys: ``n`` (1 to 6).
    """
    n = _check_int("num_keys", num_keys, 1, 6)
    row = 0.62
    height = 1.15 + row * n + 0.35
    fig, ax = _canvas(height)
    ys = [1.0 + row * (n - 1 - i) for i in range(n)]
    y_mid = (ys[0] + ys[-1]) / 2
    x_q, x_k, x_s, x_sm, x_a, x_v, x_sum = 0.55, 1.9, 3.0, 4.0, 4.85, 5.75, 6.85
    _box(ax, x_q, y_mid, 0.55, 0.44, r"$\mathbf{q}$", "input")
    _box(ax, x_sm, y_mid, 0.75, ys[0] - ys[-1] + 0.5, "softmax", "attention", fontsize=SMALL_FONT + 0.5,
         rotation=90)
    for i, y in enumerate(ys, start=1):
        _box(ax, x_k, y, 0.55, 0.42, rf"$\mathbf{{k}}_{{{i}}}$", "hidden")
        _box(ax, x_s, y, 0.9, 0.42, rf"$a(\mathbf{{q}}, \mathbf{{k}}_{{{i}}})$", "gate", fontsize=SMALL_FONT + 0.5)
        _arrow(ax, (x_q + 0.28, y_mid), (x_s - 0.45, y + 0.08), lw=0.9, zorder=1)
        _arrow(ax, (x_k + 0.28, y), (x_s - 0.45, y - 0.05))
        _arrow(ax, (x_s + 0.45, y), (x_sm - 0.375, y))
        _circle(ax, x_a, y, rf"$\alpha_{{{i}}}$", role="attention", r=0.19, fontsize=SMALL_FONT + 0.5)
        _arrow(ax, (x_sm + 0.375, y), (x_a - 0.19, y))
        _box(ax, x_v, y, 0.55, 0.42, rf"$\mathbf{{v}}_{{{i}}}$", "hidden")
        _arrow(ax, (x_a + 0.19, y), (x_v - 0.28, y))
        _arrow(ax, (x_v + 0.28, y), (x_sum - 0.45, y_mid), lw=0.9)
    _box(ax, x_sum, y_mid, 0.9, 0.5, r"$\sum_i \alpha_i \mathbf{v}_i$", "output", fontsize=SMALL_FONT + 0.5)
    top = ys[0] + 0.45
    for x, name in [(x_q, "query"), (x_k, "keys"), (x_s, "scores"), (x_a, "weights"), (x_v, "values"),
                    (x_sum, "output")]:
        _note(ax, x, top if name not in ("query", "output") else y_mid + 0.5, name)
    _note(ax, WIDTH / 2, 0.3, r"weights $\alpha_i \geq 0$ sum to 1; $\alpha_i$ scales value $\mathbf{v}_i$")
    return fig


def multi_head_attention(num_heads: int = 4) -> Figure:
    """Multi-head attention: project, split into heads, attend per head, merge, project, with shapes.

    Shapes as in the attention chapter: ``X`` is ``(B, T, D)``; after the
    projections ``W_q``, ``W_k``, ``W_v``, ``split_heads`` gives
    ``(B, h, T, D/h)``; each head runs scaled dot-product attention;
    ``merge_heads`` gives back ``(B, T, D)``; ``W_o`` mixes the heads.

    Args:
        num_heads: ``h`` (1 to 8).
    """
    h = _check_int("num_heads", num_heads, 1, 8)
    fig, ax = _canvas(3.25)
    y_mid = 1.85
    x_x, x_proj, x_split, x_head, x_merge, x_o, x_out = 0.45, 1.45, 2.55, 3.75, 4.95, 5.95, 6.9
    _box(ax, x_x, y_mid, 0.6, 0.46, r"$\mathbf{X}$", "input")
    ys = [y_mid + 0.62, y_mid, y_mid - 0.62]
    for y, w in zip(ys, ["q", "k", "v"]):
        _box(ax, x_proj, y, 0.72, 0.42, rf"$\mathbf{{W}}_{w}$", "weight")
        _arrow(ax, (x_x + 0.3, y_mid), (x_proj - 0.36, y), lw=1.0)
    # split: the D features of each projection become h slices of D/h
    sw = 0.7 / h
    for y, name in zip(ys, ["Q", "K", "V"]):
        _arrow(ax, (x_proj + 0.36, y), (x_split - 0.36, y))
        for j in range(h):
            _box(ax, x_split - 0.35 + sw * (j + 0.5), y, sw * 0.92, 0.38, "", "attention", lw=0.9)
        _note(ax, x_split - 0.47, y + 0.3, rf"$\mathbf{{{name}}}$")
    # heads
    sp = min(0.42, 1.7 / h)  # vertical spacing of the head boxes, so that up to 8 fit
    hy = [y_mid + (h - 1) / 2 * sp - j * sp for j in range(h)]
    hh = sp * 0.82
    for j, y in enumerate(hy):
        _box(ax, x_head, y, 1.1, hh, f"head {j + 1}", "attention", fontsize=SMALL_FONT)
    for y in ys:  # every head reads its slice of Q, K and V
        _arrow(ax, (x_split + 0.37, y), (x_head - 0.56, y_mid + (y - y_mid) * 0.25), lw=1.0)
    _arrow(ax, (x_head + 0.56, y_mid), (x_merge - 0.36, y_mid))
    for j in range(h):
        _box(ax, x_merge - 0.35 + sw * (j + 0.5), y_mid, sw * 0.92, 0.38, "", "attention", lw=0.9)
    _arrow(ax, (x_merge + 0.36, y_mid), (x_o - 0.36, y_mid))
    _box(ax, x_o, y_mid, 0.72, 0.42, r"$\mathbf{W}_o$", "weight")
    _arrow(ax, (x_o + 0.36, y_mid), (x_out - 0.3, y_mid))
    _box(ax, x_out, y_mid, 0.6, 0.46, "MHA", "output", fontsize=SMALL_FONT + 0.5)
    # shapes, below
    y_shape = 0.65
    shapes = [(x_x, "(B, T, D)"), (x_proj, "(B, T, D)"), (x_split, "(B, h, T, D/h)"),
              (x_head, "(B, h, T, D/h)"), (x_merge, "(B, T, D)"), (x_out, "(B, T, D)")]
    for k, (x, s) in enumerate(shapes):
        _note(ax, x, y_shape - 0.3 * (k % 2), s, family="monospace")
    labels = [(x_proj, "project"), (x_split, "split_heads"), (x_head, "attend\nper head"), (x_merge, "merge_heads"),
              (x_o, "mix heads")]
    for x, s in labels:
        _note(ax, x, 2.95, s)
    _note(ax, x_merge, y_mid - 0.55, f"$h = {h}$ slices\nof $D/h$", fontsize=SMALL_FONT)
    return fig


def encoder_decoder(attention: bool = False, context: str = "both", source_len: int = 4,
                    target_len: int = 3) -> Figure:
    """An RNN encoder–decoder, with one fixed context ``c`` or with attention.

    Symbols as in the seq2seq chapter: encoder states ``h_1 ... h_S``, context
    ``c = h_S``, decoder states ``s_{t'}`` reading the previous token
    ``y_{t'-1}`` (``<bos>`` first). Without attention, ``context`` says where
    ``c`` enters, as ``ContextDecoder``: ``"init"`` (``s_0 = c``), ``"input"``
    (concatenated to every decoder input) or ``"both"``. With attention,
    decoder step ``t'`` builds its own context ``c_{t'} = Σ_t α_{t't} h_t``
    from all encoder states, and ``s_0 = h_S``.

    Args:
        attention: draw the attention decoder.
        context: ``"init"``, ``"input"`` or ``"both"`` (ignored with attention).
        source_len: ``S`` (3 to 5).
        target_len: the decoder steps drawn (2 to 4).
    """
    if not isinstance(attention, bool):
        raise TypeError(f"attention must be a bool, got {type(attention).__name__}")
    if context not in ("init", "input", "both"):
        raise ValueError(f"context must be 'init', 'input' or 'both', got {context!r}")
    S = _check_int("source_len", source_len, 3, 5)
    Tt = _check_int("target_len", target_len, 2, 4)
    fig, ax = _canvas(4.25 if attention else 3.75)
    y_in, y_h, y_out, y_ctx = 0.95, 2.0, 2.95, 3.75
    y_label = 0.3 if attention else 3.5
    y_enc_label = y_label if attention else y_h + 0.5
    bw, bh = 0.52, 0.42
    shrink = min(1.0, (WIDTH - 2.4) / ((S - 1) * 0.72 + Tt * 0.95))  # keep long inputs on the page
    ex = [0.45 + t * 0.72 * shrink for t in range(S)]
    dx0 = ex[-1] + 1.5
    dx = [dx0 + t * 0.95 * shrink for t in range(Tt + 1)]  # dx[0] is s_0
    ctx_color, att_color = PALETTE["cell"]["edge"], PALETTE["attention"]["edge"]
    for t, x in enumerate(ex, start=1):
        _box(ax, x, y_in, bw, bh, rf"$x_{{{t}}}$", "input")
        _box(ax, x, y_h, bw, bh, rf"$\mathbf{{h}}_{{{t}}}$", "hidden")
        _arrow(ax, (x, y_in + bh / 2), (x, y_h - bh / 2))
        if t > 1:
            _arrow(ax, (ex[t - 2] + bw / 2, y_h), (x - bw / 2, y_h))
    _note(ax, (ex[0] + ex[-1]) / 2, y_enc_label, "encoder", fontsize=FONT)
    _note(ax, (dx[1] + dx[-1]) / 2, y_label, "decoder", fontsize=FONT)
    _box(ax, dx[0], y_h, bw, bh, r"$\mathbf{s}_0$", "hidden")
    tokens = ["<bos>"] + [f"$y_{{{t}}}$" for t in range(1, Tt)]
    for t in range(1, Tt + 1):
        x = dx[t]
        _box(ax, x, y_in, 0.62, bh, tokens[t - 1], "input", fontsize=SMALL_FONT if t == 1 else FONT)
        _box(ax, x, y_h, bw, bh, rf"$\mathbf{{s}}_{{{t}}}$", "hidden")
        _box(ax, x, y_out, bw, bh, rf"$y_{{{t}}}$", "output")
        _arrow(ax, (x, y_in + bh / 2), (x, y_h - bh / 2))
        _arrow(ax, (x, y_h + bh / 2), (x, y_out - bh / 2))
        _arrow(ax, (dx[t - 1] + bw / 2, y_h), (x - bw / 2, y_h))
    if not attention:
        cx, cy = (ex[-1] + dx[0]) / 2, y_in
        _box(ax, cx, cy, 0.5, bh, r"$\mathbf{c}$", "cell")
        _arrow(ax, (ex[-1] + bw / 2, y_h - 0.1), (cx - 0.1, cy + bh / 2))
        _note(ax, cx - 0.2, cy - 0.4, r"$\mathbf{c} = \mathbf{h}_S$")
        if context in ("init", "both"):
            _arrow(ax, (cx + 0.1, cy + bh / 2), (dx[0] - bw / 2, y_h - 0.1), color=ctx_color)
            _note(ax, dx[0], y_h + 0.42, r"$\mathbf{s}_0 = \mathbf{c}$", color=ctx_color)
        if context in ("input", "both"):
            y_bus = y_in - 0.5
            _line(ax, [cx + 0.25, cx + 0.45, cx + 0.45, dx[-1] + 0.2], [cy, cy, y_bus, y_bus], color=ctx_color)
            for t in range(1, Tt + 1):
                _arrow(ax, (dx[t] + 0.2, y_bus), (dx[t] + 0.2, y_in - bh / 2), color=ctx_color)
            _note(ax, dx[-1] + 0.2, y_bus - 0.25, r"decoder input $[\mathbf{e}(y_{t'-1}); \mathbf{c}]$", ha="right",
                  color=ctx_color)
        _note(ax, 0.2, y_label, "one fixed-size context $\\mathbf{c}$ for every output step", ha="left")
    else:
        _arrow(ax, (ex[-1] + bw / 2, y_h - 0.1), (dx[0] - bw / 2, y_h - 0.1), color=ctx_color)
        _note(ax, (ex[-1] + dx[0]) / 2, y_h - 0.35, r"$\mathbf{s}_0 = \mathbf{h}_S$", color=ctx_color)
        for t in range(1, Tt + 1):
            cx = dx[t] - 0.5
            for x in ex:
                _line(ax, [x, cx - 0.2], [y_h + bh / 2, y_ctx - 0.05], color=att_color, lw=0.7, zorder=1)
            _circle(ax, cx, y_ctx, rf"$\mathbf{{c}}_{{{t}}}$", role="attention", r=0.2, fontsize=SMALL_FONT)
            _arrow(ax, (cx, y_ctx - 0.2), (dx[t] - 0.2, y_h + bh / 2), color=att_color, lw=1.0)
        _note(ax, (ex[0] + ex[-1]) / 2 + 0.2, y_ctx + 0.25,
              r"step $t'$: $\mathbf{c}_{t'} = \sum_t \alpha_{t't}\mathbf{h}_t$, query $\mathbf{s}_{t'-1}$")
    return fig


def path_lengths(num_positions: int = 8, kernel_size: int = 3) -> Figure:
    """The path between the first and the last of ``n`` positions in a CNN, an RNN and self-attention.

    A stack of convolutions with kernel ``k`` needs ``ceil((n-1)/(k-1))``
    layers to connect positions 1 and ``n``; an RNN needs ``n - 1`` state
    updates; one self-attention layer connects every pair directly.

    Args:
        num_positions: ``n`` (3 to 10).
        kernel_size: ``k``, odd, 3 to 7.
    """
    n = _check_int("num_positions", num_positions, 3, 10)
    k = _check_int("kernel_size", kernel_size, 3, 7)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd (a window centred on each position), got {k}")
    layers = math.ceil((n - 1) / (k - 1))
    pw = WIDTH / 3
    sp = min(0.27, (pw - 0.35) / (n - 1))
    rows = layers + 1
    height = 0.7 + rows * 0.42 + 0.8
    fig, ax = _canvas(height)
    path = PALETTE["attention"]["edge"]
    r = 0.075
    grey = "#bbbbbb"

    def xpos(panel, i):
        return panel * pw + (pw - (n - 1) * sp) / 2 + i * sp

    y0 = 0.85
    # CNN: receptive field grows by k - 1 per layer; the path climbs from position 1 to position n
    reach = (k - 1) // 2
    for l in range(rows):
        for i in range(n):
            _circle(ax, xpos(0, i), y0 + l * 0.42, "", role="input" if l == 0 else "hidden", r=r)
    # position 1 climbs right and position n climbs left until both reach one top-layer node
    top_node = min(layers * reach, n - 1)
    for l in range(1, rows):
        for i in range(n):  # every node reads a window of k positions in the layer below: drawn faintly
            for j in range(max(0, i - reach), min(n, i + reach + 1)):
                _line(ax, [xpos(0, j), xpos(0, i)], [y0 + (l - 1) * 0.42 + r, y0 + l * 0.42 - r], color=grey,
                      lw=0.5, zorder=1)
        for before, after in [(min((l - 1) * reach, top_node), min(l * reach, top_node)),
                              (max(n - 1 - (l - 1) * reach, top_node), max(n - 1 - l * reach, top_node))]:
            _line(ax, [xpos(0, before), xpos(0, after)], [y0 + (l - 1) * 0.42 + r, y0 + l * 0.42 - r],
                  color=path, lw=2.2)
    _note(ax, pw / 2, height - 0.3, f"CNN, $k = {k}$: {layers} layers", fontsize=FONT)
    # RNN: a chain of n - 1 updates
    yr = y0 + 0.42
    for i in range(n):
        _circle(ax, xpos(1, i), y0, "", role="input", r=r)
        _circle(ax, xpos(1, i), yr, "", role="hidden", r=r)
        _line(ax, [xpos(1, i), xpos(1, i)], [y0 + r, yr - r], color=path if i == 0 else grey, lw=2.2 if i == 0 else 0.8)
        if i:
            _line(ax, [xpos(1, i - 1) + r, xpos(1, i) - r], [yr, yr], color=path, lw=2.2)
    _note(ax, 1.5 * pw, height - 0.3, f"RNN: {n - 1} state updates", fontsize=FONT)
    # self-attention: every output reads every input in one layer
    for i in range(n):
        _circle(ax, xpos(2, i), y0, "", role="input", r=r)
        _circle(ax, xpos(2, i), yr, "", role="attention", r=r)
        for j in range(n):
            _line(ax, [xpos(2, j), xpos(2, i)], [y0 + r, yr - r], color=grey, lw=0.5, zorder=1)
    _line(ax, [xpos(2, 0), xpos(2, n - 1)], [y0 + r, yr - r], color=path, lw=2.2)
    _note(ax, 2.5 * pw, height - 0.3, "self-attention: 1 layer", fontsize=FONT)
    for p, s in enumerate([f"path $O(n/k)$", "path $O(n)$", "path $O(1)$"]):
        _note(ax, (p + 0.5) * pw, 0.2, f"{s}; here $n = {n}$")
        _note(ax, xpos(p, 0), y0 - 0.25, "1")
        _note(ax, xpos(p, n - 1), y0 - 0.25, "$n$")
    return fig


def transformer_block(norm_first: bool = False, decoder: bool = False) -> Figure:
    """A Transformer encoder (or decoder) block: attention, add & norm, feed-forward, add & norm.

    ``norm_first=False`` is the original post-norm block (and PyTorch's
    default): ``x = LayerNorm(x + Sublayer(x))``. ``norm_first=True`` is the
    pre-norm block: ``x = x + Sublayer(LayerNorm(x))``, so the residual path
    from input to output passes through no normalisation. A decoder block
    adds masked self-attention and cross-attention over the encoder output.
    Shapes: ``(B, T, D)`` in and out.

    Args:
        norm_first: pre-norm (True) or post-norm (False), as in ``nn.TransformerEncoderLayer``.
        decoder: draw a decoder block (masked self-attention, cross-attention, feed-forward).
    """
    if not isinstance(norm_first, bool):
        raise TypeError(f"norm_first must be a bool, got {type(norm_first).__name__}")
    if not isinstance(decoder, bool):
        raise TypeError(f"decoder must be a bool, got {type(decoder).__name__}")
    subs = ([("masked multi-head\nself-attention", "attention"), ("multi-head\ncross-attention", "attention")]
            if decoder else [("multi-head\nself-attention", "attention")])
    subs.append(("feed-forward\n(D → 4D → D)", "gate"))
    unit = 1.45
    height = 1.35 + unit * len(subs) + 0.5
    fig, ax = _canvas(height)
    xc, bw = 3.6 if decoder else 3.2, 2.1
    y = 0.55
    _box(ax, xc, y, 1.2, 0.4, "input $(B, T, D)$", "input", fontsize=SMALL_FONT + 0.5)
    y += 0.2
    x_res = xc + bw / 2 + 0.35
    for name, role in subs:
        y_start = y
        if norm_first:
            _arrow(ax, (xc, y), (xc, y + 0.2))
            _box(ax, xc, y + 0.38, bw * 0.7, 0.36, "LayerNorm", "op", fontsize=SMALL_FONT + 0.5)
            _arrow(ax, (xc, y + 0.56), (xc, y + 0.7))
            _box(ax, xc, y + 0.98, bw, 0.56, name, role, fontsize=SMALL_FONT + 0.5)
            _arrow(ax, (xc, y + 1.26), (xc, y + 1.38 - 0.16))
            _circle(ax, xc, y + 1.38, "$+$")
            y_top = y + 1.54
        else:
            _arrow(ax, (xc, y), (xc, y + 0.2))
            _box(ax, xc, y + 0.48, bw, 0.56, name, role, fontsize=SMALL_FONT + 0.5)
            _arrow(ax, (xc, y + 0.76), (xc, y + 0.9))
            _box(ax, xc, y + 1.1, bw * 0.85, 0.4, "add & LayerNorm", "op", fontsize=SMALL_FONT + 0.5)
            y_top = y + 1.3
        # residual connection around the sublayer
        y_join = y + 1.38 if norm_first else y + 1.1
        x_join = xc + 0.16 if norm_first else xc + bw * 0.425
        _line(ax, [xc, x_res, x_res], [y_start + 0.08, y_start + 0.08, y_join], color=PALETTE["hidden"]["edge"],
              lw=1.6)
        _arrow(ax, (x_res, y_join), (x_join, y_join), color=PALETTE["hidden"]["edge"], lw=1.6)
        if "cross" in name:
            y_cross = y_start + (0.98 if norm_first else 0.48)
            _arrow(ax, (xc - bw / 2 - 0.9, y_cross), (xc - bw / 2, y_cross))
            _note(ax, xc - bw / 2 - 0.95, y_cross, "encoder output\n(keys, values)", ha="right")
        y = y_top
    _arrow(ax, (xc, y), (xc, y + 0.2))
    _box(ax, xc, y + 0.36, bw * 0.7, 0.32, "output $(B, T, D)$", "output", fontsize=SMALL_FONT + 0.5)
    title = "pre-norm (norm_first=True)" if norm_first else "post-norm (norm_first=False)"
    _note(ax, 6.1, height - 0.6, ("decoder" if decoder else "encoder") + " block,\n" + title, fontsize=FONT)
    _note(ax, x_res + 0.1, 1.2, "residual\nconnection", ha="left", color=PALETTE["hidden"]["edge"])
    return fig


DIAGRAMS = {
    "char_lm_shift": char_lm_shift,
    "rnn_unrolled": rnn_unrolled,
    "bptt_graph": bptt_graph,
    "lstm_cell": lstm_cell,
    "gru_cell": gru_cell,
    "deep_rnn": deep_rnn,
    "bidirectional_rnn": bidirectional_rnn,
    "skip_gram_negative_sampling": skip_gram_negative_sampling,
    "attention_qkv": attention_qkv,
    "multi_head_attention": multi_head_attention,
    "encoder_decoder": encoder_decoder,
    "path_lengths": path_lengths,
    "transformer_block": transformer_block,
}
