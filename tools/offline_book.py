"""Sphinx extension (loaded from _config.yml): a self-contained book with notebook downloads.

Two things the stock Jupyter Book setup does not do for this course:

- **Download as a notebook.** Chapters are MyST Markdown, so the theme's download
  menu only offers the ``.md`` source. MyST-NB already writes every executed
  chapter as a notebook (``_build/jupyter_execute/<page>.ipynb``); we copy it next
  to the other sources (``_build/html/_sources/<page>.ipynb``) and tell the theme,
  which then adds an ``.ipynb`` entry to the menu. The reader gets the notebook
  exactly as the page shows it, outputs included.
- **Nothing from outside the built folder.** The book has no launch buttons, so
  sphinx-thebe's loader (which names a CDN URL in every page) is never used; we
  drop its script and stylesheet. MathJax itself comes from the
  ``sphinx-mathjax-offline`` extension (see _config.yml).
"""

import shutil
from pathlib import Path

# sphinx-book-theme adds its header buttons at priority 501; we must run first.
_BEFORE_HEADER_BUTTONS = 400


def add_notebook_download(app, pagename, templatename, context, doctree):
    """Copy the executed notebook of `pagename` into _sources/ and offer it for download."""
    if doctree is None:  # generated pages (search, genindex) have no source
        return
    executed = Path(app.env.mystnb_config.output_folder) / f"{pagename}.ipynb"
    if not executed.is_file():  # not a notebook page
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def _is_thebe_asset(asset) -> bool:
    """True for sphinx-thebe's files: its loader script, its config snippet and its CSS."""
    filename = getattr(asset, "filename", None) or str(asset)
    body = (getattr(asset, "attributes", None) or {}).get("body", "")
    return "thebe" in filename or "THEBE_JS_URL" in body


def drop_thebe(app, pagename, templatename, context, doctree):
    """Remove sphinx-thebe's assets: unused (no launch buttons) and they point at a CDN."""
    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [asset for asset in context[key] if not _is_thebe_asset(asset)]


def setup(app):
    app.connect("html-page-context", add_notebook_download, priority=_BEFORE_HEADER_BUTTONS)
    # Late, after every extension has added its files to the page.
    app.connect("html-page-context", drop_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
